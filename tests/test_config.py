"""The typed configuration: one precedence (defaults < stage file after what it extends < --set <
flags), every value checked against its field's type once, the saved form reads back equal."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from udaqa_pipeline.config import (SECTIONS, Config, ConfigError, apply_overrides, check_value, read_stage, resolve,
                                   STAGES_DIR)


@pytest.mark.parametrize("spelling, value", [("False", False), ("false", False), ("True", True), ("true", True)])
def test_booleans_in_toml_and_python_spelling(spelling, value):
    cfg = resolve("demo", [f"train.use_wa={spelling}", f"train.per_group={spelling}"])
    assert cfg.train.use_wa is value and cfg.train.per_group is value


@pytest.mark.parametrize("item, needs", [
    ("train.epochs=2.5", "whole number"), ("train.epochs=two", "whole number"), ("train.epochs=2.0", "whole number"),
    ("train.use_wa=yes", "boolean"), ("train.use_wa=1", "boolean"), ("train.lr=fast", "a number"),
    ("train.label_range=3", "list"), ("cache.views=true", "whole number"), ("train.select=1", "string"),
])
def test_wrong_types_are_refused_in_one_line(item, needs):
    key, value = item.split("=")
    with pytest.raises(ConfigError) as e:
        resolve("demo", [item])
    msg = str(e.value)
    assert key in msg and value in msg and needs in msg and "\n" not in msg


@pytest.mark.parametrize("item", ["train.select=best", "train.regressors=3", "cache.backend=parquet",
                                  "cache.dtype=fp16", "train.optimizer=sgd"])
def test_values_outside_their_choices_are_refused(item):
    key, value = item.split("=")
    with pytest.raises(ConfigError, match=f"{key} must be one of"):
        resolve("demo", [item])


def test_floats_take_integers():
    lr = resolve("demo", ["train.lr=1"]).train.lr
    assert lr == 1.0 and isinstance(lr, float)
    assert check_value("train.weight_decay", 0) == 0


def test_defaulted_keys_the_stage_leaves_out_can_be_set(tmp_path):
    p = tmp_path / "bare.toml"
    p.write_text('[dataset]\nname = "mtl"\n')
    assert "cache" not in read_stage(p)
    cfg = resolve(p, ["cache.view_shift=2", "cache.dtype=bf16", "finetune.lr_scale=0.3"])
    assert (cfg.cache.view_shift, cfg.cache.dtype, cfg.finetune.lr_scale) == (2, "bf16", 0.3)
    assert cfg.train == SECTIONS["train"]()  # everything else is the defaults
    demo = resolve("demo", ["cache.view_shift=2", "cache.dtype=bf16"])
    assert (demo.cache.view_shift, demo.cache.dtype) == (2, "bf16")


def test_flags_win_over_set_which_wins_over_the_file():
    assert resolve("demo").cache.backend == "hdf5"
    assert resolve("demo", ["cache.backend=zarr"]).cache.backend == "zarr"
    assert resolve("demo", ["cache.backend=zarr"], {"cache.backend": "hdf5", "cache.views": None}).cache.backend == "hdf5"
    with pytest.raises(ConfigError, match="cache.views"):
        resolve("demo", flags={"cache.views": "2"})


def test_unknown_keys_and_sections_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'view_shfit'"):
        resolve("demo", ["cache.view_shfit=2"])
    with pytest.raises(ConfigError, match="no section 'trian'"):
        resolve("demo", ["trian.lr=1"])
    p = tmp_path / "typo.toml"
    p.write_text('[dataset]\nname = "mtl"\n[train]\nepoch = 3\n')
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch .*typo\.toml"):
        resolve(p)


def test_a_stage_file_with_a_wrong_type_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[dataset]\nname = "mtl"\n[train]\nepochs = "ten"\n')
    with pytest.raises(ConfigError) as e:
        read_stage(p)
    assert str(p) in str(e.value) and "train.epochs" in str(e.value)


def test_extends_merges_key_by_key_over_the_named_stage(tmp_path):
    demo, mtl = read_stage("demo"), read_stage("mtl")
    own = tomllib.loads((STAGES_DIR / "demo.toml").read_text())
    for section, body in mtl.items():
        for k, v in body.items():
            assert demo[section][k] == own.get(section, {}).get(k, v)
    (tmp_path / "base.toml").write_text('extends = "child.toml"\n[dataset]\nname = "mtl"\n')
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n')
    with pytest.raises(ConfigError, match="loops"):
        read_stage(tmp_path / "child.toml")


@pytest.mark.parametrize("stage", ["mtl", "demo", "jigsaws", "aqa7", "finediving", "folder"])
def test_the_saved_form_reads_back_equal(stage):
    cfg = resolve(stage)
    assert Config.from_dict(cfg.to_dict()) == cfg
    for name in SECTIONS:  # every field present in the saved form, lists as lists
        saved = cfg.to_dict()[name]
        assert set(saved) == {f.name for f in dataclasses.fields(SECTIONS[name])}
        assert not any(isinstance(v, tuple) for v in saved.values())


def test_a_config_saved_before_every_default_was_written_reads_as_the_full_one():
    old = read_stage("mtl")  # what a run saved: the stage file with [train] filled, no [finetune]
    old["train"] = dict(resolve("mtl").to_dict()["train"])
    del old["cache"]["dtype"]
    assert Config.from_dict(old) == resolve("mtl")


def test_apply_overrides_refuses_a_malformed_item():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="one key"):
        apply_overrides({}, ["train=1"])
