"""The packages stack: each imports only the ones below it. The order is written once, here."""

import ast
from pathlib import Path

import blt_scale

# Bottom to top. `base` is the top-level modules every layer uses (config.py: recipes and their
# errors; files.py: JSONL and atomic writes). A checkpoint on disk is read by data prep (entropy
# models) and by strategies, so it sits below both.
LAYERS = ["base", "model", "checkpoint", "data", "parallel", "train", "launch", "sweep", "cli"]
BASE = {"blt_scale", "blt_scale.config", "blt_scale.files"}
PACKAGE = Path(blt_scale.__file__).parent


def layer_of(module: str) -> int:
    if module in BASE:
        return 0
    name = module.split(".")[1]
    assert name in LAYERS, f"{module}: not in any layer of {LAYERS}; place it in tests/test_layering.py"
    return LAYERS.index(name)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> set[str]:
    """Every blt_scale module the file imports, at the top or inside a function."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "blt_scale"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] == "blt_scale":
                found.add(base)
    return found


def upward_imports(root: Path = PACKAGE) -> list[str]:
    arrows = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        for dep in imported_modules(path, module):
            if layer_of(dep) > layer_of(module):
                arrows.append(f"{module} -> {dep}")
    return arrows


def test_no_package_imports_one_above_it():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    # A model file reaching into training, at function level: the walk must catch it.
    fake = tmp_path / "blt_scale"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "bad.py").write_text("def f():\n    from blt_scale.train.loop import Trainer\n")
    (fake / "model" / "rel.py").write_text("from ..parallel import strategy\n")
    assert upward_imports(fake) == [
        "blt_scale.model.bad -> blt_scale.train.loop",
        "blt_scale.model.rel -> blt_scale.parallel",
    ]
