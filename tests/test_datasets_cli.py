"""`udaqa-pipeline datasets inspect/list` through click."""

from __future__ import annotations

import json
import warnings

from click.testing import CliRunner
from fixtures.annotations import EXPECTED, NONFINITE_FOLDER_ROWS, write_aqa7, write_finediving, write_folder, write_jigsaws

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


def test_inspect_refuses_nan_and_inf_without_leaking_numpy_warnings(tmp_path):
    root = write_folder(tmp_path, NONFINITE_FOLDER_ROWS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from numpy would fail the command here
        r = CliRunner().invoke(main, ["datasets", "inspect", "folder", "--root", str(root)])
    assert r.exit_code == 1 and "Warning" not in r.output
    assert "annotations.csv: 3 row(s) hold a non-finite score" in r.output and "row 3 (id nan_final)" in r.output


def test_inspect_lists_judge_outliers(tmp_path):
    root = write_finediving(tmp_path)
    r = CliRunner().invoke(main, ["datasets", "inspect", "finediving", "--root", str(root)])
    assert r.exit_code == 0, r.output
    assert "judge outliers   3 (" in r.output and "55.5 -> dropped" in r.output and "45 -> 4.5" in r.output
    r = CliRunner().invoke(main, ["datasets", "inspect", "finediving", "--root", str(root), "--json"])
    odd = json.loads(r.output)["judge_outliers"]
    assert sorted(o["value"] for o in odd) == [8.9, 45.0, 55.5] and [o["used"] for o in odd].count(None) == 2
    r = CliRunner().invoke(main, ["datasets", "inspect", "finediving", "--root", str(root), "--set",
                                  "dataset.judge_scale=[5, 0]"])
    assert r.exit_code == 1 and "dataset.judge_scale" in r.output and "lo < hi" in r.output


def test_inspect_reads_a_transposed_aqa7_split(tmp_path):
    root = write_aqa7(tmp_path, layout="transposed")
    r = CliRunner().invoke(main, ["datasets", "inspect", "aqa7", "--root", str(root), "--json"])
    info = json.loads(r.output)
    assert info["n_samples"] == 1106 and info["folds"] == EXPECTED["aqa7"]["folds"]
    assert any("stored transposed" in w for w in info["warnings"])
