"""`udaqa-pipeline datasets inspect/list` through click."""

from __future__ import annotations

import json

from click.testing import CliRunner
from fixtures.annotations import EXPECTED, write_aqa7, write_jigsaws

from udaqa_pipeline.cli import main


def test_inspect_json(tmp_path):
    root = write_aqa7(tmp_path / "a", x100=True)
    r = CliRunner().invoke(main, ["datasets", "inspect", "aqa7", "--root", str(root), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    for k, v in EXPECTED["aqa7"].items():
        assert info[k] == v
    assert info["dataset"] == "aqa7" and any("x100" in w for w in info["warnings"])


def test_inspect_text_and_overrides(tmp_path):
    root = write_jigsaws(tmp_path / "j", "meta")
    r = CliRunner().invoke(main, ["datasets", "inspect", "jigsaws", "--root", str(root)])
    assert r.exit_code == 0, r.output
    assert "samples          103" in r.output and "fold Suturing/3" in r.output
    r = CliRunner().invoke(main, ["datasets", "inspect", "jigsaws", "--root", str(root), "--set",
                                  "dataset.tasks=['Suturing']", "--json"])
    assert json.loads(r.output)["n_samples"] == 39


def test_inspect_errors_name_the_file(tmp_path):
    r = CliRunner().invoke(main, ["datasets", "inspect", "finediving", "--root", str(tmp_path)])
    assert r.exit_code != 0 and "FineDiving_coarse_annotation.pkl" in r.output and "--root" in r.output
    r = CliRunner().invoke(main, ["datasets", "inspect", "mtl", "--root", str(tmp_path / "no")])
    assert r.exit_code != 0 and "does not exist" in r.output


def test_list():
    r = CliRunner().invoke(main, ["datasets", "list"])
    assert r.exit_code == 0 and all(n in r.output for n in ("mtl", "finediving", "jigsaws", "aqa7", "folder"))
