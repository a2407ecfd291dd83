"""Typed stage config: every value of a defaulted section is checked against its key's type once,
from a stage file or from ``--set``; defaulted keys a stage file leaves out can be set."""

from __future__ import annotations

import pytest

from udaqa_pipeline.cache.extract import resolve_config as stage_one_config
from udaqa_pipeline.config import DEFAULTS, ConfigError, apply_overrides, check_value, load_stage
from udaqa_pipeline.train import resolve_config as stage_two_config


@pytest.mark.parametrize("spelling, value", [("False", False), ("false", False), ("True", True), ("true", True)])
def test_booleans_in_toml_and_python_spelling(spelling, value):
    cfg = stage_two_config("demo", [f"train.use_wa={spelling}", f"train.per_group={spelling}"])
    assert cfg["train"]["use_wa"] is value and cfg["train"]["per_group"] is value


@pytest.mark.parametrize("item, needs", [
    ("train.epochs=2.5", "whole number"), ("train.epochs=two", "whole number"), ("train.epochs=2.0", "whole number"),
    ("train.use_wa=yes", "boolean"), ("train.use_wa=1", "boolean"), ("train.lr=fast", "a number"),
    ("train.label_range=3", "list"), ("cache.views=true", "whole number"), ("train.select=1", "string"),
])
def test_wrong_types_are_refused_in_one_line(item, needs):
    key, value = item.split("=")
    with pytest.raises(ConfigError) as e:
        stage_two_config("demo", [item])
    msg = str(e.value)
    assert key in msg and value in msg and needs in msg and "\n" not in msg


def test_floats_take_integers_as_written():
    assert stage_two_config("demo", ["train.lr=1"])["train"]["lr"] == 1
    assert check_value("train.weight_decay", 0) == 0


def test_defaulted_keys_the_stage_leaves_out_can_be_set():
    demo = load_stage("demo")
    assert "view_shift" not in demo["cache"] and "dtype" not in demo["cache"]
    one = stage_one_config("demo", ["cache.view_shift=2", "cache.dtype=bf16"])
    assert one["cache"]["view_shift"] == 2 and one["cache"]["dtype"] == "bf16"
    two = stage_two_config("demo", ["cache.view_shift=2", "cache.dtype=bf16"])
    assert two["cache"]["view_shift"] == 2
    assert apply_overrides(demo, ["finetune.lr_scale=0.3"])["finetune"] == {"lr_scale": 0.3}


def test_unknown_keys_and_sections_are_still_refused():
    with pytest.raises(ConfigError, match="unknown key 'view_shfit'"):
        stage_one_config("demo", ["cache.view_shfit=2"])
    with pytest.raises(ConfigError, match="no section 'trian'"):
        stage_two_config("demo", ["trian.lr=1"])


def test_a_stage_file_with_a_wrong_type_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[dataset]\nname = "mtl"\n[train]\nepochs = "ten"\n')
    with pytest.raises(ConfigError) as e:
        load_stage(p)
    assert str(p) in str(e.value) and "train.epochs" in str(e.value)


def test_stage_one_keyword_settings_are_checked_too():
    with pytest.raises(ConfigError, match="cache.views"):
        stage_one_config("demo", views="2")


@pytest.mark.parametrize("stage", ["mtl", "demo", "jigsaws", "aqa7", "finediving", "folder"])
def test_every_shipped_stage_passes_its_own_types(stage):
    cfg = stage_two_config(stage)
    for key in DEFAULTS["train"]:
        check_value(f"train.{key}", cfg["train"][key])
