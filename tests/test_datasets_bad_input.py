"""Impossible labels and odd annotation files, each test writing its own input.

Non-finite scores are refused when the file is read, naming the rows; judge values off the judge
scale go through one policy (value/10 when on the scale and the rule then gives the published
final score, else dropped) and are reported the same way by every adapter; a file whose shape or
columns differ from the published format is refused with what was expected and found (an AQA-7
list stored 3 x N, or a MATLAB v7.3 file, is read).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from fixtures.annotations import (
    FD_ODD,
    NONFINITE_FOLDER_ROWS,
    aqa7_lists,
    finediving_odd_keys,
    finediving_records,
    jigsaws_records,
    mtl_records,
    write_aqa7,
    write_finediving,
    write_folder,
    write_jigsaws,
    write_mtl,
)

from udaqa_pipeline.cache.extract import base_rows
from udaqa_pipeline.config import Config, ConfigError, resolve
from udaqa_pipeline.datasets import AnnotationError, load_dataset, load_stage_samples, read_index
from udaqa_pipeline.datasets.common import DIVING_SCALE, JudgeScale, judge_scale, settle_judges
from udaqa_pipeline.datasets.rules import apply_rule


def _dump(obj, path: Path) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _cfg(stage: str, *overrides: str) -> Config:
    return resolve(stage, overrides)


# ----------------------------------------------------------------------------- the judge policy
def test_policy_corrects_a_slipped_decimal_only_when_the_rule_confirms_it():
    # 4.5 sits among the trimmed judges, so the stored score is the rule over the corrected panel
    panel = (8.0, 45.0, 8.0, 8.0, 9.0, 8.0, 8.0)
    used, fixes = settle_judges(panel, DIVING_SCALE, "mtl_middle3", 3.0, 72.0)
    assert used == (8.0, 4.5, 8.0, 8.0, 9.0, 8.0, 8.0)
    assert [(f.judge, f.value, f.used) for f in fixes] == [(1, 45.0, 4.5)]
    # the stored score was computed with 45 itself: 4.5 is not confirmed, the judge is dropped
    used, fixes = settle_judges((8.0, 45.0, 8.0), DIVING_SCALE, "sum_dd", 2.0, 122.0)
    assert used == (8.0, 8.0) and fixes[0].used is None
    # no published final score: nothing can confirm a correction
    used, fixes = settle_judges((8.0, 45.0, 8.0), DIVING_SCALE, "sum_dd", 2.0, None)
    assert used == (8.0, 8.0)


@pytest.mark.parametrize("value", [55.5, 8.9, -1.0, 10.5])
def test_policy_drops_values_no_decimal_slip_explains(value):
    panel = (7.0, 7.5, value, 7.0, 7.5, 8.0, 7.0)
    used, fixes = settle_judges(panel, DIVING_SCALE, "mtl_middle3", 2.0, 44.0)
    assert used == (7.0, 7.5, 7.0, 7.5, 8.0, 7.0)
    assert [(f.judge, f.value, f.used) for f in fixes] == [(2, value, None)]


def test_policy_leaves_a_clean_panel_alone_and_treats_a_mixed_panel_as_one():
    panel = (0.0, 10.0, 5.5, 6.0, 6.5, 7.0, 9.5)
    assert settle_judges(panel, DIVING_SCALE, "mtl_middle3", 2.0, 1.0) == (panel, ())
    # 45 alone would be corrected, but 8.9 is not a slip: both are dropped, not half-fixed
    used, fixes = settle_judges((8.0, 45.0, 8.9), DIVING_SCALE, "sum_dd", 1.0, 21.4)
    assert used == (8.0,) and all(f.used is None for f in fixes)


def test_judge_scale_from_the_stage_config():
    assert judge_scale(_cfg("mtl").dataset, None, "mtl") == DIVING_SCALE
    assert judge_scale(_cfg("folder").dataset, None, "folder") is None
    d = _cfg("folder", "dataset.judge_scale=[0, 10]", "dataset.judge_step=0.5").dataset
    assert judge_scale(d, None, "folder") == JudgeScale(0.0, 10.0, 0.5)
    d = _cfg("jigsaws", "dataset.judge_step=0").dataset
    assert judge_scale(d, None, "jigsaws") == JudgeScale(1.0, 5.0, None)
    with pytest.raises(ConfigError, match=r"dataset.judge_scale.*lo < hi.*stages/folder.toml"):
        judge_scale(_cfg("folder", "dataset.judge_scale=[10, 0]").dataset, None, "folder")
    with pytest.raises(ConfigError, match=r"dataset.judge_scale.*not \[lo, hi\]"):
        judge_scale(_cfg("folder", "dataset.judge_scale=[1, 2, 3]").dataset, None, "folder")
    with pytest.raises(ConfigError, match="judge_step = 0.5 is set but there is no judge scale"):
        judge_scale(_cfg("folder", "dataset.judge_step=0.5").dataset, None, "folder")


# ------------------------------------------------------------------ FineDiving's 55.5, 45.0, 8.9
@pytest.fixture(scope="module")
def fd_root(tmp_path_factory) -> Path:
    return write_finediving(tmp_path_factory.mktemp("fd"))


def test_finediving_outliers_reported_by_key_and_never_trained_on(fd_root, caplog):
    index = read_index("finediving", fd_root)
    by_id = {s.id: s for s in index.samples}
    odd = finediving_odd_keys()
    assert set(odd) == set(FD_ODD)
    ids = {v: f"{k[0]}/{k[1]}" for v, (k, _) in odd.items()}
    assert sorted((o["id"], o["value"], o["used"]) for o in index.judge_outliers) == sorted(
        [(ids[55.5], 55.5, None), (ids[45.0], 45.0, 4.5), (ids[8.9], 8.9, None)])
    assert sum("off the judge scale" in w for w in index.warnings) == 1

    s45 = by_id[ids[45.0]]
    assert s45.judge_scores[odd[45.0][1]] == 4.5 and 45.0 in s45.extra["published_judges"]
    assert apply_rule(s45.rule, s45.judge_scores, s45.difficulty) == pytest.approx(s45.final_score)
    s55, s89 = by_id[ids[55.5]], by_id[ids[8.9]]
    assert len(s55.judge_scores) == 6 and 55.5 not in s55.judge_scores and s55.rule == "mtl_middle3"
    assert len(s89.judge_scores) == 4 and 8.9 not in s89.judge_scores and s89.rule == "sum_dd_0.6"
    coarse = finediving_records()[0]
    assert s55.final_score == coarse[odd[55.5][0]]["dive_score"]  # the published score is kept

    # what stage one writes into the cache's sample table: every judge on the scale
    samples, _ = load_stage_samples(resolve("finediving"), "finediving", fd_root)
    assert "3 judge value(s) off the judge scale were corrected or dropped" in caplog.text
    rows = base_rows(samples, "finediving", fd_root)
    assert all(DIVING_SCALE.allows(j) for r in rows for j in r["judge_scores"])


def test_finediving_scale_is_configurable(fd_root):
    # a wider scale without a step: 8.9 is then a legal value, 45.0 and 55.5 still are not
    index = read_index("finediving", fd_root, _cfg("finediving", "dataset.judge_scale=[0, 20]", "dataset.judge_step=0"))
    assert sorted(o["value"] for o in index.judge_outliers) == [45.0, 55.5]
    index = read_index("finediving", fd_root, _cfg("finediving", "dataset.judge_scale=[]", "dataset.judge_step=0"))
    assert index.judge_outliers == [] and any(55.5 in s.judge_scores for s in index.samples)


# ------------------------------------------------------- the same report from every adapter
def _mtl_with(tmp: Path, value: float, final_with: float) -> tuple[Path, str]:
    ann, train, test = mtl_records("core")
    key = train[3]
    j = ann[key]["judge_scores"].copy()
    j[np.argmin(j)] = final_with  # lowest stays lowest: trimmed either way
    ann[key]["final_score"] = float(np.sort(j)[2:5].sum() * ann[key]["difficulty"])
    j[np.argmin(j)] = value
    ann[key]["judge_scores"] = j
    root = write_mtl(tmp, "core")
    _dump(ann, root / "info" / "final_annotations_dict_with_dive_number.pkl")
    return root, f"{key[0]:02d}_{key[1]:02d}"


def _finediving_with(tmp: Path, value: float, final_with: float) -> tuple[Path, str]:
    coarse, _, train, test = finediving_records()
    for v, (k, j) in finediving_odd_keys().items():  # only this test's outlier in the file
        coarse[k]["judge_scores"][j] = 8.0
    key = next(k for k in train if len(coarse[k]["judge_scores"]) == 3)
    rec = coarse[key]
    rec["judge_scores"] = [final_with, 8.0, 8.0]
    rec["dive_score"] = round((final_with + 16.0) * float(rec["difficulty"]), 2)
    rec["judge_scores"][0] = value
    root = write_finediving(tmp)
    _dump(coarse, root / "Annotations" / "FineDiving_coarse_annotation.pkl")
    return root, f"{key[0]}/{key[1]}"


def _jigsaws_meta_with(tmp: Path, value: float, final_with: float) -> tuple[Path, str]:
    root = write_jigsaws(tmp, "meta")
    p = root / "Suturing" / "meta_file_Suturing.txt"
    lines = p.read_text().splitlines()
    parts = lines[0].split()
    items = [final_with] + [float(x) for x in parts[4:9]]
    parts[2], parts[3] = f"{sum(items):g}", f"{value:g}"
    lines[0] = "\t".join(parts)
    p.write_text("\n".join(lines) + "\n")
    return root, parts[0]


def _folder_with(tmp: Path, value: float, final_with: float) -> tuple[Path, str]:
    root = write_folder(tmp, [
        {"id": "a", "path": "a.mp4", "final_score": str((final_with + 8 + 9) / 3), "judge_scores": f"{value:g};8;9"},
        {"id": "b", "path": "b.mp4", "final_score": "8", "judge_scores": "8;8;8"},
    ])
    return root, "a"


WRITERS = {
    "mtl": (_mtl_with, ()),
    "finediving": (_finediving_with, ()),
    "jigsaws": (_jigsaws_meta_with, ()),
    "folder": (_folder_with, ("dataset.judge_scale=[0, 10]", "dataset.judge_step=0.5")),
}


@pytest.mark.parametrize("stage", sorted(WRITERS))
def test_every_adapter_reports_and_settles_outliers_the_same_way(stage, tmp_path):
    write, overrides = WRITERS[stage]
    legal = 4.0  # on every scale here: diving 0..10 / 0.5, GRS items 1..5 / 1
    # 1) a slipped decimal the published final score confirms: corrected
    root, sid = write(tmp_path / "slip", legal * 10, legal)
    index = read_index(stage, root, _cfg(stage, *overrides))
    assert [(o["id"], o["value"], o["used"]) for o in index.judge_outliers] == [(sid, legal * 10, legal)]
    s = {x.id: x for x in index.samples}[sid]
    assert legal in s.judge_scores and legal * 10 not in s.judge_scores
    assert legal * 10 in s.extra["published_judges"]
    # 2) a value nothing explains: dropped, the published final score kept
    root, sid = write(tmp_path / "drop", 55.5, legal)
    index = read_index(stage, root, _cfg(stage, *overrides))
    assert [(o["id"], o["value"], o["used"]) for o in index.judge_outliers] == [(sid, 55.5, None)]
    s = {x.id: x for x in index.samples}[sid]
    assert 55.5 not in s.judge_scores and len(s.judge_scores) == len(s.extra["published_judges"]) - 1
    line = [w for w in index.warnings if "off the judge scale" in w]
    assert len(line) == 1 and re.match(rf"\S+: 1 judge value\(s\) off the judge scale .*{re.escape(sid)} judge \d: "
                                       r"55\.5 -> dropped \(policy: value/10", line[0])


def test_jigsaws_label_pkl_without_a_published_grs_leaves_the_trial_out(tmp_path):
    labels, _ = jigsaws_records()
    flat = {t: items for task in labels.values() for t, items in task.items()}
    trial = next(iter(flat))
    flat[trial] = np.array([50, 3, 3, 3, 3, 3])  # 5 with a slipped digit? label.pkl has no GRS to confirm it
    root = write_jigsaws(tmp_path, "pkl")
    _dump(flat, root / "info" / "label.pkl")
    index = read_index("jigsaws", root)
    assert trial not in {s.id for s in index.samples} and len(index.samples) == 102
    assert index.judge_outliers == [{"id": trial, "file": "label.pkl", "judge": 0, "value": 50.0, "used": None}]
    assert any("left out" in w and trial in w for w in index.warnings)


def test_aqa7_scores_off_a_configured_scale_are_left_out(tmp_path):
    root = write_aqa7(tmp_path)
    assert read_index("aqa7", root).judge_outliers == []  # default: no common scale for six actions
    index = read_index("aqa7", root, _cfg("aqa7", "dataset.judge_scale=[10, 100]"))
    odd = {o["id"] for o in index.judge_outliers}
    assert odd and all(o["used"] is None for o in index.judge_outliers)
    kept = {s.id for s in index.samples}
    assert not odd & kept and len(kept) + len(odd) == 1106
    assert all(10 <= s.final_score <= 100 for s in index.samples)


# ------------------------------------------------------------------------- non-finite scores
def test_folder_nan_and_inf_refused_naming_the_rows(tmp_path):
    root = write_folder(tmp_path, NONFINITE_FOLDER_ROWS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning on the way
        with pytest.raises(AnnotationError) as err:
            load_dataset("folder", root)
    msg = str(err.value)
    assert msg.startswith(str(root / "annotations.csv")) and "3 row(s) hold a non-finite score" in msg
    for where in ("row 3 (id nan_final) final_score=nan", "row 4 (id inf_judge) judge_scores=[8, inf, 8]",
                  "row 5 (id neg_inf_dd) difficulty=-inf"):
        assert where in msg
    assert "fill in the real scores or remove those rows" in msg


def test_pickled_nan_refused_naming_the_entry(tmp_path):
    ann, train, test = mtl_records("core")
    ann[train[0]]["final_score"] = float("nan")
    ann[test[0]]["judge_scores"] = np.array([8.0, np.inf, 8.0, 8.0, 8.0, 8.0, 8.0])
    root = write_mtl(tmp_path / "mtl", "core")
    _dump(ann, root / "info" / "final_annotations_dict_with_dive_number.pkl")
    with pytest.raises(AnnotationError, match=rf"2 row\(s\).*entry {re.escape(str(train[0]))} final_score=nan"):
        load_dataset("mtl", root)

    coarse, _, train, _ = finediving_records()
    coarse[train[5]]["difficulty"] = float("inf")
    root = write_finediving(tmp_path / "fd")
    _dump(coarse, root / "Annotations" / "FineDiving_coarse_annotation.pkl")
    with pytest.raises(AnnotationError, match=r"FineDiving_coarse_annotation.pkl: 1 row\(s\).*difficulty=inf"):
        load_dataset("finediving", root)


def test_jigsaws_meta_nan_refused(tmp_path):
    root = write_jigsaws(tmp_path, "meta")
    p = root / "Knot_Tying" / "meta_file_Knot_Tying.txt"
    lines = p.read_text().splitlines()
    parts = lines[0].split()
    lines[0] = "\t".join(parts[:2] + ["nan"] + parts[3:])  # an empty GRS cell exported as "nan"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=rf"meta_file_Knot_Tying.txt: 1 row\(s\).*trial {parts[0]} GRS=nan"):
        load_dataset("jigsaws", root)


def test_aqa7_nan_refused_before_any_cast(tmp_path):
    train, test = aqa7_lists()
    test[7, 2] = np.nan
    test[9, 0] = np.inf
    root = write_aqa7(tmp_path, lists=(train, test))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AnnotationError, match=r"split_4_test_list.mat: 2 row\(s\).*NaN or inf: rows 8, 10"):
            load_dataset("aqa7", root)


# ---------------------------------------------------------------------------- odd files: AQA-7
@pytest.mark.parametrize("layout", ["transposed", "v73"])
def test_aqa7_transposed_and_v73_lists_read_as_published(layout, tmp_path):
    plain = load_dataset("aqa7", write_aqa7(tmp_path / "v7"))
    index = read_index("aqa7", write_aqa7(tmp_path / layout, layout=layout))
    assert [(s.id, s.final_score, s.fold) for s in index.samples] == [(s.id, s.final_score, s.fold) for s in plain]
    assert sum("stored transposed (3 x 803" in w for w in index.warnings) == 1
    assert not any("trampoline" in w for w in index.warnings)
    assert any("v7.3" in w for w in index.warnings) == (layout == "v73")


def test_aqa7_shapes_that_are_not_the_published_one_are_refused(tmp_path):
    train, test = aqa7_lists()
    wide = np.hstack([train, np.ones((len(train), 1))])
    root = write_aqa7(tmp_path / "wide", lists=(wide, test))
    with pytest.raises(AnnotationError, match=r"split_4_train_list.mat: .*shape \(803, 4\), expected \(N, 3\)"):
        load_dataset("aqa7", root)
    frac = train.copy()
    frac[4, 1] = 12.5
    root = write_aqa7(tmp_path / "frac", lists=(frac, test))
    with pytest.raises(AnnotationError, match=r"must be integers.*row 5 is \[1.0, 12.5, "):
        load_dataset("aqa7", root)


def test_aqa7_three_rows_read_by_their_content(tmp_path):
    rows = np.array([[1, 5, 80.0], [2, 9, 14.5], [6, 3, 70.0]])
    for lists, name in (((rows, rows), "as_is"), ((rows.T, rows.T), "t")):
        root = write_aqa7(tmp_path / name, lists=lists)
        s = load_dataset("aqa7", root)
        assert [x.id for x in s][:3] == ["diving/005", "gym_vault/009", "sync_diving_10m/003"]


# ------------------------------------------------------------------ odd files: MTL, FineDiving
def test_mtl_odd_shapes_refused(tmp_path):
    ann, train, test = mtl_records("core")
    root = write_mtl(tmp_path, "core")
    info = root / "info"
    _dump(np.array(test).T, info / "test_split_0.pkl")  # 2 x 353
    with pytest.raises(AnnotationError, match=r"test_split_0.pkl: test split is a 2 x 353 array.*transpose"):
        load_dataset("mtl", root)
    _dump([f"{v:02d}_{d:02d}" for v, d in test], info / "test_split_0.pkl")
    with pytest.raises(AnnotationError, match=r"test split key \('01_01',\) is not a \(video, dive\) pair"):
        load_dataset("mtl", root)
    _dump(test, info / "test_split_0.pkl")
    ann[test[0]]["judge_scores"] = ann[test[0]]["judge_scores"][:6]
    _dump(ann, info / "final_annotations_dict_with_dive_number.pkl")
    with pytest.raises(AnnotationError, match=r"judge_scores holds 6 values, expected 7"):
        load_dataset("mtl", root)
    ann[test[0]] = [1, 2, 3]
    _dump(ann, info / "final_annotations_dict_with_dive_number.pkl")
    with pytest.raises(AnnotationError, match=r"entry .* holds a list, expected a dict"):
        load_dataset("mtl", root)


def test_finediving_odd_entries_refused(tmp_path):
    coarse, fine, train, _ = finediving_records()
    root = write_finediving(tmp_path, coarse_file=False)
    fine[train[0]] = fine[train[0]][:4]
    _dump(fine, root / "Annotations" / "fine-grained_annotation_aqa.pkl")
    with pytest.raises(AnnotationError, match=r"holds 4 items, expected the 5 items \[action_type, dive_score"):
        load_dataset("finediving", root)
    coarse[train[0]] = fine[train[1]]  # a fine-grained entry in the coarse file
    _dump(coarse, root / "Annotations" / "FineDiving_coarse_annotation.pkl")
    with pytest.raises(AnnotationError, match=r"FineDiving_coarse_annotation.pkl: entry .* holds a list, expected a dict"):
        load_dataset("finediving", root)


# ---------------------------------------------------------------------- odd files: JIGSAWS, CSV
def test_jigsaws_odd_files_refused(tmp_path):
    labels, folds = jigsaws_records()
    root = write_jigsaws(tmp_path / "pkl", "pkl")
    flat = {t: items for task in labels.values() for t, items in task.items()}
    flat[next(iter(flat))] = np.array([3, 3, 3, 3, 3])
    _dump(flat, root / "info" / "label.pkl")
    with pytest.raises(AnnotationError, match=r"label.pkl: trial .* has 5 values, expected 6 GRS items"):
        load_dataset("jigsaws", root)
    root = write_jigsaws(tmp_path / "folds", "pkl")
    folds["Suturing"] = folds["Suturing"][:3]
    _dump(folds, root / "info" / "splits.pkl")
    with pytest.raises(AnnotationError, match=r"splits.pkl: task 'Suturing' has 3 folds, expected 4"):
        load_dataset("jigsaws", root)
    root = write_jigsaws(tmp_path / "meta", "meta", splits=False)
    p = root / "Needle_Passing" / "meta_file_Needle_Passing.txt"
    p.write_text(p.read_text().replace("\n", "\t1\n", 1))
    with pytest.raises(AnnotationError, match=r"meta_file_Needle_Passing.txt: line 1 has 10 fields, expected 9"):
        load_dataset("jigsaws", root)


def test_folder_odd_csv_refused(tmp_path):
    write_folder(tmp_path, [{"id": "a", "path": "a.mp4", "final_score": "3", "judge_score": "1;2;3"}])
    with pytest.raises(AnnotationError, match=r"annotations.csv: unknown column\(s\) judge_score.*rename or remove"):
        load_dataset("folder", tmp_path)
    (tmp_path / "annotations.csv").write_text("id;path;final_score\na;a.mp4;3\n")
    with pytest.raises(AnnotationError, match=r"missing column.*not comma-separated"):
        load_dataset("folder", tmp_path)
    (tmp_path / "annotations.csv").write_text("id,path,final_score\na,a.mp4,3\nb,b.mp4,3,7.5\n")
    with pytest.raises(AnnotationError, match=r"row 3 has 4 fields, the header 3"):
        load_dataset("folder", tmp_path)


@pytest.mark.parametrize("column, meaning, test_ids", [
    (["1", "0", "0", "1"], "is_test", {"a", "d"}),   # "is test", as common as the opposite
    (["0", "1", "1", "0"], "is_train", {"a", "d"}),  # "is train"
])
def test_folder_bare_zero_one_split_is_refused_unless_named(tmp_path, column, meaning, test_ids):
    rows = [{"id": i, "path": f"{i}.mp4", "final_score": "3", "split": s} for i, s in zip("abcd", column)]
    write_folder(tmp_path, rows)
    with pytest.raises(AnnotationError, match=r"only 0 and 1.*split_integers=is_test"):
        load_dataset("folder", tmp_path)
    samples = load_dataset("folder", tmp_path, resolve("folder", [f"dataset.split_integers={meaning}"]))
    assert {s.id for s in samples if s.fold == 0} == test_ids and all(s.fold in (0, -1) for s in samples)
    folds = load_dataset("folder", tmp_path, resolve("folder", ["dataset.split_integers=fold"]))
    assert sorted({s.fold for s in folds}) == [0, 1]
    # folds beyond 0/1 are folds, as before
    write_folder(tmp_path, [dict(r, split=str(k % 3)) for k, r in enumerate(rows)])
    assert sorted({s.fold for s in load_dataset("folder", tmp_path)}) == [0, 1, 2]


@pytest.mark.parametrize("text", ["id,path,final_score\ncaf\xe9,a.mp4,3\n", "id,path,final_score,action\na,a.mp4,3,\u2013 pike\n"])
def test_folder_csv_in_another_encoding_is_named(tmp_path, text):
    (tmp_path / "annotations.csv").write_bytes(text.encode("cp1252"))
    with pytest.raises(AnnotationError, match=r"annotations.csv: not valid utf-8-sig text \(byte 0x[0-9a-f]{2}.*dataset.encoding=cp1252"):
        load_dataset("folder", tmp_path)
    samples = load_dataset("folder", tmp_path, resolve("folder", ["dataset.encoding=cp1252"]))
    assert len(samples) == 1
