"""Recipes: extends, dotted overrides, and errors that name the key, the source and the fix."""

from pathlib import Path

import pytest

from blt_scale import config
from blt_scale.config import ConfigError
from blt_scale.train.recipe import RunConfig, load_recipe


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_override_reaches_aliased_and_nested_keys():
    cfg = load_recipe("cpu_tiny", ["model.global.dim=512", "train.steps=7", "optim.betas=[0.8, 0.9]"])
    assert cfg.model.global_.dim == 512
    assert cfg.train.steps == 7
    assert cfg.optim.betas == (0.8, 0.9)


def test_extends_merges_and_child_wins(tmp_path):
    child = write(
        tmp_path, "child.yaml", f"extends: {Path('recipes/cpu_tiny.yaml').resolve()}\ntrain: {{steps: 3}}\n"
    )
    cfg = load_recipe(child)
    base = load_recipe("cpu_tiny")
    assert cfg.train.steps == 3
    assert cfg.train.global_batch == base.train.global_batch  # inherited sibling key
    assert cfg.model == base.model


def test_extending_with_another_model_kind_replaces_the_model():
    cfg = load_recipe("cpu_tiny_baseline")
    assert cfg.model.kind == "byte_lm" and cfg.data == load_recipe("cpu_tiny").data


def test_unknown_key_on_command_line_names_key_source_and_closest():
    with pytest.raises(ConfigError) as err:
        load_recipe("cpu_tiny", ["train.stepz=5"])
    msg = str(err.value)
    assert "'train.stepz'" in msg and "command line" in msg and "'train.steps'" in msg


def test_typo_in_file_names_the_file_and_the_closest_key(tmp_path):
    recipe = write(
        tmp_path,
        "typo.yaml",
        f"extends: {Path('recipes/cpu_tiny.yaml').resolve()}\nmodel:\n  encoder: {{dimm: 64}}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    msg = str(err.value)
    assert "'model.encoder.dimm'" in msg and str(recipe) in msg and "'model.encoder.dim'" in msg


def test_unknown_top_level_key_lists_valid_keys_when_nothing_is_close(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_recipe("cpu_tiny", ["zzzzqq=1"])
    assert "'zzzzqq'" in str(err.value) and "run_dir" in str(err.value)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_recipe("cpu_tiny", ["train.steps=many"])
    msg = str(err.value)
    assert "'train.steps'" in msg and "integer" in msg and "'many'" in msg


def test_wrong_type_inside_a_file_names_that_file(tmp_path):
    recipe = write(
        tmp_path, "bad.yaml", f"extends: {Path('recipes/cpu_tiny.yaml').resolve()}\ndata: {{seq_len: long}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    assert "'data.seq_len'" in str(err.value) and str(recipe) in str(err.value)


def test_checks_across_keys_give_their_own_message_and_the_recipe():
    with pytest.raises(ConfigError) as err:
        load_recipe("cpu_tiny", ["train.global_batch=7", "train.micro_batch=2"])
    assert str(err.value) == (
        f"global_batch (7) must be a multiple of micro_batch (2) "
        f"(recipe {Path('recipes/cpu_tiny.yaml').resolve()}, section 'train')"
    )
    with pytest.raises(
        ConfigError,
        match=r"^data.seq_len \(12\) must be data.brain.text_bytes \+ 1 \(9\) for brain data \(recipe ",
    ):
        load_recipe("brain_aware_blt_tiny", ["data.seq_len=12"])


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_recipe("cpu_tiny", ["train.steps"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_recipe("blt_1b", ["train.steps=11"])
    path = write(tmp_path, "resolved.yaml", config.dump(cfg))
    assert config.load(RunConfig, path) == cfg
