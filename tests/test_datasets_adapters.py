"""Every adapter on full-size fixtures in the published formats; inspect gives REFERENCE counts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from fixtures.annotations import (
    EXPECTED,
    MTL_TYPO_KEY,
    mtl_records,
    write_aqa7,
    write_finediving,
    write_folder,
    write_jigsaws,
    write_mtl,
)

from udaqa_pipeline.config import resolve
from udaqa_pipeline.datasets import TRAIN_ONLY, AnnotationError, inspect_dataset, load_dataset, read_index
from udaqa_pipeline.datasets.rules import apply_rule


def _subset(info: dict, expected: dict) -> dict:
    return {k: info[k] for k in expected}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    t = tmp_path_factory.mktemp("ann")
    return {
        "core": write_mtl(t / "mtl_core", "core"),
        "musdl": write_mtl(t / "mtl_musdl", "musdl"),
        "original": write_mtl(t / "mtl_orig", "original"),
        "fd": write_finediving(t / "fd"),
        "jig_pkl": write_jigsaws(t / "jig_pkl", "pkl"),
        "jig_meta": write_jigsaws(t / "jig_meta", "meta"),
        "jig_meta_nosplit": write_jigsaws(t / "jig_meta_ns", "meta", splits=False),
        "aqa7": write_aqa7(t / "aqa7"),
        "aqa7_x100": write_aqa7(t / "aqa7_x100", x100=True),
    }


# ------------------------------------------------------------------------------------------ MTL-AQA
@pytest.mark.parametrize("variant", ["core", "musdl"])
def test_mtl_inspect_counts(roots, variant):
    info = inspect_dataset("mtl", roots[variant])
    assert _subset(info, EXPECTED["mtl"]) == EXPECTED["mtl"]
    assert info["dataset"] == "mtl"


def test_mtl_samples_core(roots):
    samples = load_dataset("mtl", roots["core"])
    ann, train, test = mtl_records("core")
    by_id = {s.id: s for s in samples}
    s = by_id["05_12"]
    rec = ann[MTL_TYPO_KEY]
    assert s.judge_scores == tuple(rec["judge_scores"].tolist()) and all(type(j) is float for j in s.judge_scores)
    assert type(s.final_score) is float and type(s.difficulty) is float
    assert s.rule == "mtl_middle3" and s.group == "mtl" and s.action == rec["dive_number"]
    assert s.fold == (0 if MTL_TYPO_KEY in test else TRAIN_ONLY)
    # no frames on disk: untrimmed layout, the window ends at end_frame
    assert s.source == roots["core"] / "new_total_frames_256s" / "05"
    assert s.frame_end == int(rec["end_frame"]) and s.frame_start is None
    assert s.extra["start_frame"] == int(rec["start_frame"])
    assert sum(x.fold == 0 for x in samples) == 353


def test_mtl_trimmed_folder_wins(roots, tmp_path):
    (roots["core"] / "frames" / "01_03").mkdir(parents=True)
    try:
        s = {x.id: x for x in load_dataset("mtl", roots["core"])}
        assert s["01_03"].source == roots["core"] / "frames" / "01_03" and s["01_03"].frame_end is None
        assert s["01_04"].frame_end is not None
    finally:
        (roots["core"] / "frames" / "01_03").rmdir()


def test_mtl_musdl_typo_reported_and_corrected_for_training(roots):
    index = read_index("mtl", roots["musdl"])
    s = {x.id: x for x in index.samples}["05_12"]
    # training gets 4.5 (on the scale, and the rule then gives the stored score); the file's value is kept aside
    assert 45.0 not in s.judge_scores and s.judge_scores.count(4.5) == 1
    assert 45.0 in s.extra["published_judges"]
    assert any("45 -> 4.5" in w and "05_12" in w for w in index.warnings)
    assert index.judge_outliers == [{"id": "05_12", "file": "augmented_final_annotations_dict.pkl", "judge": 1,
                                     "value": 45.0, "used": 4.5}]
    assert apply_rule(s.rule, s.judge_scores, s.difficulty) == pytest.approx(s.final_score)
    # the CoRe copy of the same dive has no typo: nothing reported
    assert read_index("mtl", roots["core"]).judge_outliers == []


def test_mtl_original_is_judge_less(roots):
    info = inspect_dataset("mtl", roots["original"])
    assert _subset(info, EXPECTED["mtl_original"]) == EXPECTED["mtl_original"]
    s = load_dataset("mtl", roots["original"])[0]
    assert s.rule == "identity" and s.judge_scores == (s.final_score,)
    assert any("no judge scores" in w for w in info["warnings"])


def test_mtl_annotation_file_preference(roots, tmp_path):
    # CoRe's file is preferred when several copies sit in info/
    root = write_mtl(tmp_path, "original")
    write_mtl(tmp_path, "core")
    assert load_dataset("mtl", root)[0].rule == "mtl_middle3"


def test_mtl_errors(tmp_path):
    (tmp_path / "info").mkdir()
    with pytest.raises(AnnotationError, match="final_annotations_dict_with_dive_number.pkl"):
        load_dataset("mtl", tmp_path)
    write_mtl(tmp_path, "core")
    (tmp_path / "info" / "test_split_0.pkl").unlink()
    with pytest.raises(AnnotationError, match="test_split_0.pkl.*missing test split.*dataset.test_split"):
        load_dataset("mtl", tmp_path)
    (tmp_path / "info" / "test_split_0.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(AnnotationError, match="damaged"):
        load_dataset("mtl", tmp_path)


def test_unsafe_pickle_refused_without_running(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    write_mtl(tmp_path, "core")
    with (tmp_path / "info" / "train_split_0.pkl").open("wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(AnnotationError, match="refused"):
        load_dataset("mtl", tmp_path)
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------------------- FineDiving
def test_finediving_inspect_counts(roots):
    info = inspect_dataset("finediving", roots["fd"])
    assert _subset(info, EXPECTED["finediving"]) == EXPECTED["finediving"]
    assert 3000 - info["rule_mismatches"] == 2876
    assert info["rules"] == {"mtl_middle3": 1369, "sum_dd": 1024, "sum_dd_0.6": 607}


def test_finediving_samples(roots):
    samples = load_dataset("finediving", roots["fd"])
    rule_of = {7: "mtl_middle3", 3: "sum_dd", 5: "sum_dd_0.6"}
    assert all(s.rule == rule_of[len(s.extra.get("published_judges", s.judge_scores))] for s in samples)
    s = samples[0]
    event, index = s.id.split("/")
    assert s.source == roots["fd"] / "FINADiving_MTL_256s" / event / index
    assert s.group == "finediving" and s.action and s.difficulty is not None
    assert {x.fold for x in samples} == {0, TRAIN_ONLY}


def test_finediving_fine_grained_only(tmp_path):
    info = inspect_dataset("finediving", write_finediving(tmp_path, coarse_file=False))
    assert info["n_samples"] == 3000 and info["judges_per_sample"] == {"1": 3000}
    assert info["warnings"] and info["score_range"] == EXPECTED["finediving"]["score_range"]


# ------------------------------------------------------------------------------------------ JIGSAWS
@pytest.mark.parametrize("fmt", ["jig_pkl", "jig_meta"])
def test_jigsaws_inspect_counts(roots, fmt):
    info = inspect_dataset("jigsaws", roots[fmt])
    assert _subset(info, EXPECTED["jigsaws"]) == EXPECTED["jigsaws"]
    per_task = {"Suturing": 39, "Knot_Tying": 36, "Needle_Passing": 28}
    for task, n in per_task.items():
        keys = [f"{task}/{k}" for k in range(4)]
        assert all(info["folds"][k]["train"] + info["folds"][k]["test"] == n for k in keys)
        assert sum(info["folds"][k]["test"] for k in keys) == n
    assert len(info["folds"]) == 12
    assert all(6 <= lo <= hi <= 30 for lo, hi in info["score_range"].values())


def test_jigsaws_formats_agree(roots):
    a = {s.id: s for s in load_dataset("jigsaws", roots["jig_pkl"])}
    b = {s.id: s for s in load_dataset("jigsaws", roots["jig_meta"])}
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].final_score, a[k].judge_scores, a[k].fold, a[k].group) == \
               (b[k].final_score, b[k].judge_scores, b[k].fold, b[k].group)
    s = a["Suturing_B001"] if "Suturing_B001" in a else next(iter(a.values()))
    assert s.rule == "sum" and s.final_score == sum(s.judge_scores) and s.group == s.action
    assert s.source == roots["jig_pkl"] / s.group / "video" / f"{s.id}_capture1.avi"
    assert b[s.id].extra["skill"] in "NIE"


def test_jigsaws_surgeon_folds_without_splits(roots):
    index = read_index("jigsaws", roots["jig_meta_nosplit"])
    assert any("not MUSDL's folds" in w for w in index.warnings)
    for task in ("Suturing", "Knot_Tying", "Needle_Passing"):
        folds_of_surgeon: dict[str, set] = {}
        for s in index.samples:
            if s.group == task:
                folds_of_surgeon.setdefault(s.id.rsplit("_", 1)[1][0], set()).add(s.fold)
        assert all(len(f) == 1 for f in folds_of_surgeon.values())  # no surgeon in train and test
        assert set().union(*folds_of_surgeon.values()) == {0, 1, 2, 3}


def test_jigsaws_frames_folder_preferred(roots):
    trial = load_dataset("jigsaws", roots["jig_pkl"])[0].id
    d = roots["jig_pkl"] / "frames" / f"{trial}_capture1"
    d.mkdir(parents=True)
    try:
        assert load_dataset("jigsaws", roots["jig_pkl"])[0].source == d
    finally:
        d.rmdir()


# -------------------------------------------------------------------------------------------- AQA-7
def test_aqa7_inspect_counts(roots):
    info = inspect_dataset("aqa7", roots["aqa7"])
    assert _subset(info, EXPECTED["aqa7"]) == EXPECTED["aqa7"]
    assert not info["warnings"]


def test_aqa7_x100_detected(roots):
    info = inspect_dataset("aqa7", roots["aqa7_x100"])
    assert _subset(info, EXPECTED["aqa7"]) == EXPECTED["aqa7"]
    assert len(info["warnings"]) == 2 and all("x100" in w for w in info["warnings"])
    plain = load_dataset("aqa7", roots["aqa7"])
    scaled = load_dataset("aqa7", roots["aqa7_x100"])
    np.testing.assert_allclose([s.final_score for s in scaled], [s.final_score for s in plain], atol=1e-9)
    forced = resolve("aqa7", ["dataset.score_scale=1"])
    assert max(s.final_score for s in load_dataset("aqa7", roots["aqa7_x100"], forced)) > 1000


def test_aqa7_samples(roots):
    s = load_dataset("aqa7", roots["aqa7"])[0]
    action, n = s.id.split("/")
    assert s.group == s.action == action and s.rule == "identity" and s.judge_scores == (s.final_score,)
    assert s.source == roots["aqa7"] / f"{action}-out" / n and len(n) == 3


# ------------------------------------------------------------------------------------------- folder
def test_folder_adapter(tmp_path):
    root = write_folder(tmp_path)
    s = {x.id: x for x in load_dataset("folder", root)}
    assert s["a"].rule == "mean" and s["a"].judge_scores == (7.0, 7.5, 8.0) and s["a"].fold == TRAIN_ONLY
    assert s["b"].rule == "identity" and s["b"].judge_scores == (6.0,) and s["b"].fold == 0
    assert s["c"].source == root / "frames" / "c" and s["c"].action == "spin"
    info = inspect_dataset("folder", root)
    assert info["folds"] == {"0": {"train": 2, "test": 1}} and info["rule_mismatches"] == 0


def test_folder_errors(tmp_path):
    write_folder(tmp_path, [{"id": "a", "path": "a.mp4"}])
    with pytest.raises(AnnotationError, match="missing column.*final_score"):
        load_dataset("folder", tmp_path)
    write_folder(tmp_path, [{"id": "a", "path": "a.mp4", "final_score": "x"}])
    with pytest.raises(AnnotationError, match="row 2.*not a number"):
        load_dataset("folder", tmp_path)
    write_folder(tmp_path, [{"id": "a", "path": "a.mp4", "final_score": "3", "judge_scores": "1;2"}])
    cfg = resolve("folder", ["dataset.rule=sum_dd"])
    with pytest.raises(AnnotationError, match="needs 3 judge scores"):
        load_dataset("folder", tmp_path, cfg)
    with pytest.raises(AnnotationError, match="annotations.csv"):
        load_dataset("folder", tmp_path / "nothing-here" if (tmp_path / "nothing-here").mkdir() is None else tmp_path)
