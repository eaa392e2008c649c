"""Recipe loading: YAML files that may `extends:` one another, dotted command-line overrides,
and validation against a pydantic schema with errors a person can act on.

The schema is passed in, so this file knows nothing about models or training. Every leaf value
remembers where it came from (a file or the command line) so an error can say which one to edit.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

CLI = "the command line"


class Config(BaseModel):
    """Base of every config class: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
}


def size_bytes(value: str | int) -> int:
    """'64MB', '512KiB', '20GB', 1000000 -> bytes; anything else is a ValueError."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    unit = (match.group(2) or "").lower().removesuffix("b") if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"expected a size like 64MB or 512KiB, got {value!r}")
    return int(float(match.group(1)) * _UNITS[unit])


class ConfigError(ValueError):
    """A recipe problem, phrased as one line that names the key, its source and the fix."""


def load(schema: type[BaseModel], path: str | Path, overrides: list[str] = ()) -> BaseModel:
    data, sources = _read_with_extends(Path(path), seen=())
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        sources[key] = CLI
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, schema, data, sources, Path(path))) from None


def dump(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `extends` forms a cycle through {[str(p) for p in seen]}")
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    data: dict = {}
    sources: dict[str, str] = {}
    if parent is not None:
        data, sources = _read_with_extends(path.parent / parent, seen + (path,))
    _merge(data, raw)
    for key in _leaf_keys(raw):
        sources[key] = str(path)
    return data, sources


def _merge(base: dict, update: dict) -> None:
    """Deep merge; a mapping whose `kind` differs from the base's replaces it (a baseline recipe
    extending a BLT recipe swaps the whole model, not a mix of both)."""
    for key, value in update.items():
        old = base.get(key)
        same_kind = (
            isinstance(old, dict)
            and isinstance(value, dict)
            and value.get("kind", old.get("kind")) == old.get("kind")
        )
        if same_kind:
            _merge(base[key], value)
        else:
            base[key] = value


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys += _leaf_keys(value, dotted + ".") if isinstance(value, dict) and value else [dotted]
    return keys


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} on {CLI}: expected KEY=VALUE, e.g. train.steps=100")
    # YAML parsing gives numbers, booleans, null and [lists] their natural types.
    return key.strip(), yaml.safe_load(text) if text.strip() else ""


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _explain(err: ValidationError, schema: type[BaseModel], data: dict, sources, path: Path) -> str:
    messages = []
    for e in err.errors():
        loc = _strip_union_tags(e["loc"], schema, data)
        key = ".".join(str(p) for p in loc)
        source = _source_of(key, sources, path)
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(schema, loc[:-1], data)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
            messages.append(
                f"unknown key {key!r} set {source}; {hint or 'valid keys here: ' + ', '.join(valid)}"
            )
        elif e["type"] == "missing":
            messages.append(f"missing required key {key!r} (recipe {path})")
        elif isinstance(
            e.get("input"), dict
        ):  # a section's own check across its keys: its message names them
            section = f", section {key!r}" if key else ""
            messages.append(f"{e['msg'].removeprefix('Value error, ')} (recipe {path}{section})")
        else:
            messages.append(f"bad value for {key!r} set {source}: {e['msg']}, got {e.get('input')!r}")
    return "; ".join(messages)


def _source_of(key: str, sources: dict[str, str], path: Path) -> str:
    """Where the key was set, phrased to follow the word 'set'. A section that is no leaf (a typo
    such as model.golbal, set through model.golbal.dim=8) comes from where its keys were set."""
    below = [source for k, source in sources.items() if k.startswith(key + ".")]
    if below:
        return f"on {CLI}" if CLI in below else f"in {below[-1]}"
    while key:
        if key in sources:
            return f"on {CLI}" if sources[key] == CLI else f"in {sources[key]}"
        key = key.rpartition(".")[0]
    return f"in {path}"


def _submodel(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation stands for, resolving unions by their `kind` tag."""
    args = typing.get_args(annotation)
    candidates = [a for a in (args or (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
    for arg in args:  # Annotated[Union[...], Field(discriminator=...)]
        candidates += [a for a in typing.get_args(arg) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(candidates) > 1 and isinstance(value, dict):
        tagged = [
            c for c in candidates if value.get("kind") in typing.get_args(c.model_fields["kind"].annotation)
        ]
        candidates = tagged or candidates
    return candidates[0] if candidates else None


def _walk(schema: type[BaseModel], loc: tuple, data: Any) -> type[BaseModel] | None:
    model = schema
    for part in loc:
        if model is None:
            return None
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        data = data.get(part) if isinstance(data, dict) else None
        model = _submodel(field.annotation, data)
    return model


def _valid_keys(schema: type[BaseModel], loc: tuple, data: dict) -> list[str]:
    model = _walk(schema, loc, data)
    return [f.alias or n for n, f in model.model_fields.items()] if model else []


def _strip_union_tags(loc: tuple, schema: type[BaseModel], data: dict) -> tuple:
    """Pydantic puts a discriminated union's tag into the error location; users never wrote it."""
    out: list = []
    for part in loc:
        if (
            out
            and _walk(schema, tuple(out), data) is not None
            and part not in _valid_keys(schema, tuple(out), data)
        ):
            node = data
            for p in out:
                node = node.get(p, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict) and node.get("kind") == part:
                continue
        out.append(part)
    return tuple(out)
