"""Labels are not features: the cache is keyed by what changes the features, and
every ``features`` run refreshes the label table from the annotation files.

A label fix extracts nothing; an added sample extracts only itself; a removed one leaves the label table
and keeps its store row; ``--limit`` is a prefix of the full run; a cache written before the change
(schema 1, named by a hash that held the labels) opens, and ``features`` adopts it instead of
extracting again. I3D work is counted with a forward hook on the model's first unit (one call per
batch of clips), and ``stats["processed"]`` counts extracted rows.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from legacy_cache import write_legacy_cache
from test_cache_util import TINY, make_dataset, tiny_model, write_video
from udaqa_pipeline.cache import open_cache
from udaqa_pipeline.cache.extract import base_rows, extract_features, state_fingerprint
from udaqa_pipeline.config import resolve
from udaqa_pipeline.cache.legacy import legacy_key
from udaqa_pipeline.cache.manifest import extraction_key, key_hash, read_manifest
from udaqa_pipeline.cache.store import rows_table
from udaqa_pipeline.cache.verify import cache_info, verify_cache
from udaqa_pipeline.datasets import load_stage_samples
from udaqa_pipeline.data.trainset import Labels

BS = 4  # clips per forward; a sample is K = 2 clips (TINY), so one sample is one forward
VIDEOS = {"a": 14, "b": 13, "c": 16}


def _logged(caplog) -> str:
    """The log records since the last call, as text."""
    text = caplog.text
    caplog.clear()
    return text


class Counted:
    """A seeded tiny I3D whose first unit counts forwards (batches) and clips."""

    def __init__(self) -> None:
        self.model = tiny_model()
        self.batches = 0
        self.model.Conv3d_1a_7x7.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.batches += 1


def _extract(root: Path, cache_root: Path, counted: Counted | None = None, **kw):
    stats: dict = {}
    cfg = resolve("folder", TINY, {f"cache.{k}": kw.pop(k) for k in ("backend", "views", "dtype") if k in kw})
    p = extract_features("folder", cfg, root, cache_root=cache_root, progress=False, batch_size=BS,
                         model=(counted or Counted()).model, stats=stats, **kw)
    return p, stats


def _rows(root: Path) -> list[dict]:
    with (root / "annotations.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(root: Path, rows: list[dict]) -> None:
    with (root / "annotations.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _by_id(cache) -> dict[str, np.ndarray]:
    ids = cache.samples.column("id").to_pylist()
    return {i: cache.features[k] for k, i in enumerate(ids)}


def _store_rows(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path / "features.h5", "r") as f:
        return f["features"][()]


def test_label_fix_extracts_nothing_and_train_reads_the_new_label(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", VIDEOS)
    p, _ = _extract(root, tmp_path / "cache")
    before = open_cache(p)
    feats, store = before.features.copy(), _store_rows(p)
    assert Labels.from_table(before.samples).final.tolist() == [10.0, 11.0, 12.0]

    rows = _rows(root)
    rows[1]["final_score"] = "17.5"  # a corrected score
    rows[2]["split"] = "test"  # and a sample moved to the test fold
    rows[0]["judge_scores"] = "9;9"
    _write_rows(root, rows)
    counted = Counted()
    caplog.clear()
    p2, stats = _extract(root, tmp_path / "cache", counted)

    assert p2 == p  # same directory: the key has no labels
    assert counted.batches == 0 and stats["processed"] == 0 and stats["reused"] is True
    after = open_cache(p)
    labels = Labels.from_table(after.samples)  # what `train` reads
    assert labels.final.tolist() == [10.0, 17.5, 12.0]
    assert labels.fold.tolist() == [0, -1, 0] and labels.judges[0].tolist() == [9.0, 9.0]
    assert after.features.tobytes() == feats.tobytes() and _store_rows(p).tobytes() == store.tobytes()
    m = read_manifest(p)
    assert m["labels"]["changes"] == {"added": 0, "removed": 0, "changed": 3,
                                      "ids": {"added": [], "removed": [], "changed": ["a", "b", "c"]}}
    assert m["labels"]["refreshed"] == m["updated"] and m["labels"]["n_samples"] == 3
    assert m["config_hash"] == before.manifest["config_hash"] and m["finished"] == before.manifest["finished"]
    err = _logged(caplog)
    assert "reusing it (nothing extracted); label table refreshed from the annotation files: 3 changed (a, b, c)" in err
    assert verify_cache(p)["ok"], verify_cache(p)["problems"]

    # an unchanged rerun writes nothing at all
    before_bytes = {f.name: f.read_bytes() for f in p.iterdir() if f.is_file() and f.suffix != ".lock"}
    _, stats = _extract(root, tmp_path / "cache")
    assert stats["processed"] == 0 and "labels unchanged" in _logged(caplog)
    assert {f.name: f.read_bytes() for f in p.iterdir() if f.is_file() and f.suffix != ".lock"} == before_bytes


def test_added_sample_extracts_only_it_in_both_stores(tmp_path):
    root = make_dataset(tmp_path / "data", VIDEOS)
    p, _ = _extract(root, tmp_path / "cache", backend="hdf5")
    _extract(root, tmp_path / "cache", backend="zarr")  # a second store of the same rows
    store = _store_rows(p)
    assert store.shape[0] == 3

    write_video(root / "videos" / "new.mkv", 15, seed=7)
    rows = _rows(root)
    rows.insert(1, {"id": "new", "path": "videos/new.mkv", "final_score": "20.0", "judge_scores": "5;6",
                    "split": "train"})  # in the middle of the annotation file
    _write_rows(root, rows)
    counted = Counted()
    p2, stats = _extract(root, tmp_path / "cache", counted)
    assert p2 == p
    assert stats["processed"] == 1 and counted.batches == 1  # one sample: K = 2 clips, one forward

    c = open_cache(p)
    assert c.n_rows == 4 and c.samples.column("id").to_pylist() == ["a", "new", "b", "c"]
    assert c.samples.column("feature_row").to_pylist() == [0, 3, 1, 2]  # appended to the store
    assert _store_rows(p)[:3].tobytes() == store.tobytes()  # old rows bit-identical
    z = open_cache(p, backend="zarr")
    assert z.features.tobytes() == c.features.tobytes() and z.video.tobytes() == c.video.tobytes()
    np.testing.assert_array_equal(c.read([1, 0])["features"], c.features[[1, 0]])  # rows read through the label table
    assert Labels.from_table(c.samples).final.tolist() == [10.0, 20.0, 11.0, 12.0]

    # the same four samples extracted from scratch give the same features, sample by sample
    fresh, _ = _extract(root, tmp_path / "fresh")
    ref = open_cache(fresh)
    assert ref.in_store_order and ref.samples.column("feature_row").to_pylist() == [0, 1, 2, 3]
    assert c.features.tobytes() == ref.features.tobytes() and c.video.tobytes() == ref.video.tobytes()
    assert verify_cache(p)["ok"], verify_cache(p)["problems"]


def test_removed_sample_keeps_its_row_and_comes_back_free(tmp_path):
    root = make_dataset(tmp_path / "data", VIDEOS)
    p, _ = _extract(root, tmp_path / "cache")
    full = _by_id(open_cache(p))
    rows = _rows(root)
    _write_rows(root, [r for r in rows if r["id"] != "b"])
    counted = Counted()
    _, stats = _extract(root, tmp_path / "cache", counted)
    c = open_cache(p)
    assert counted.batches == 0 and stats["processed"] == 0
    assert c.samples.column("id").to_pylist() == ["a", "c"] and c.n_rows == 3 and not c.in_store_order
    assert c.features.shape[0] == 2 and c.features[1].tobytes() == full["c"].tobytes()
    info = cache_info(p)
    assert info["n_samples"] == 2 and info["n_rows"] == 3 and info["unused_rows"] == 1
    assert info["labels"]["changes"]["ids"]["removed"] == ["b"]
    assert verify_cache(p)["ok"], verify_cache(p)["problems"]

    _write_rows(root, rows)  # put it back: its row is still there
    counted = Counted()
    _, stats = _extract(root, tmp_path / "cache", counted)
    c = open_cache(p)
    assert counted.batches == 0 and stats["processed"] == 0 and c.in_store_order
    assert _by_id(c)["b"].tobytes() == full["b"].tobytes()


def test_limit_is_a_prefix_of_the_full_run(tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 14, "b": 13, "c": 16, "d": 12})
    p, stats = _extract(root, tmp_path / "cache", limit=2)
    c = open_cache(p)
    assert stats["processed"] == 2 and c.samples.column("id").to_pylist() == ["a", "b"] and c.n_rows == 2
    assert read_manifest(p)["labels"]["limit"] == 2
    p2, stats = _extract(root, tmp_path / "cache")
    assert p2 == p and stats["processed"] == 2  # only c and d
    c = open_cache(p)
    assert c.samples.column("id").to_pylist() == ["a", "b", "c", "d"] and read_manifest(p)["labels"]["limit"] is None
    counted = Counted()
    _, stats = _extract(root, tmp_path / "cache", counted, limit=3)  # back to a prefix: no work
    assert counted.batches == 0 and open_cache(p).samples.column("id").to_pylist() == ["a", "b", "c"]


def test_other_data_under_the_same_names_is_extracted_not_reused(tmp_path):
    """The content fingerprint tells another dataset root's videos apart; the same bytes under
    another root are the same rows; the first root's rows stay."""
    import shutil

    a = make_dataset(tmp_path / "one", VIDEOS)
    p, _ = _extract(a, tmp_path / "cache")
    first = _by_id(open_cache(p))
    b = tmp_path / "two"
    shutil.copytree(a, b)  # a copy: the same bytes (copytree keeps modification times too)
    write_video(b / "videos" / "b.mkv", 20, seed=11)  # same relative path, other video
    counted = Counted()
    p2, stats = _extract(b, tmp_path / "cache", counted)
    assert p2 == p and stats["processed"] == 1 and counted.batches == 1
    c = open_cache(p)
    assert c.n_rows == 4 and c.samples.column("feature_row").to_pylist() == [0, 3, 2]
    assert _by_id(c)["b"].tobytes() != first["b"].tobytes()
    _, stats = _extract(a, tmp_path / "cache")  # back to the first root: its row is still there
    assert stats["processed"] == 0 and _by_id(open_cache(p))["b"].tobytes() == first["b"].tobytes()


def test_missing_video_put_in_place_is_extracted_into_its_own_row(tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 14, "late": "missing"})
    p, _ = _extract(root, tmp_path / "cache")
    assert open_cache(p).samples.column("status").to_pylist() == ["ok", "missing"]
    write_video(root / "videos" / "late.mkv", 15, seed=9)
    _, stats = _extract(root, tmp_path / "cache")  # no --retry-failed needed: the source changed
    c = open_cache(p)
    assert stats["processed"] == 1 and c.n_rows == 2 and c.samples.column("status").to_pylist() == ["ok", "ok"]
    assert np.isfinite(c.features).all()


def test_retry_failed_reextracts_in_place(tmp_path, monkeypatch):
    """A failure that is not the file's (same stamp) stays until --retry-failed, which re-extracts that
    row in its own place and leaves the others' bytes alone."""
    import udaqa_pipeline.cache.extract as ex

    root = make_dataset(tmp_path / "data", VIDEOS)
    real = ex._prepare

    def flaky(sample, cfg, views):
        if sample.id == "b":
            return {"id": "b", "status": "error", "error": "OSError: [Errno 5] Input/output error"}, None, None
        return real(sample, cfg, views)

    monkeypatch.setattr(ex, "_prepare", flaky)
    p, _ = _extract(root, tmp_path / "cache")
    monkeypatch.undo()
    store = _store_rows(p)
    assert open_cache(p).samples.column("status").to_pylist() == ["ok", "error", "ok"]
    _, stats = _extract(root, tmp_path / "cache")
    assert stats["processed"] == 0 and open_cache(p).samples.column("status").to_pylist()[1] == "error"
    counted = Counted()
    _, stats = _extract(root, tmp_path / "cache", counted, retry_failed=True)
    c = open_cache(p)
    assert stats["processed"] == 1 and counted.batches == 1 and c.n_rows == 3 and c.in_store_order
    assert c.samples.column("status").to_pylist() == ["ok", "ok", "ok"] and np.isfinite(c.features).all()
    now = _store_rows(p)
    assert now[[0, 2]].tobytes() == store[[0, 2]].tobytes()


def test_interrupted_commit_of_an_update_is_finished_by_the_next_run(tmp_path, monkeypatch):
    """Killed after the new store replaced the old one but before the tables and the manifest: the
    cache is refused until the next run finishes the merge, which then equals an uninterrupted one."""
    import udaqa_pipeline.cache.merge as mg
    from udaqa_pipeline.cache import CacheError

    root = make_dataset(tmp_path / "data", VIDEOS)
    p, _ = _extract(root, tmp_path / "cache")
    write_video(root / "videos" / "d.mkv", 15, seed=8)
    rows = _rows(root) + [{"id": "d", "path": "videos/d.mkv", "final_score": "3", "judge_scores": "1;2",
                           "split": "train"}]
    _write_rows(root, rows)

    class Killed(BaseException):
        pass

    def die(*a, **k):
        raise Killed

    monkeypatch.setattr(mg, "write_rows", die)
    with pytest.raises(Killed):
        _extract(root, tmp_path / "cache")
    monkeypatch.undo()
    assert read_manifest(p)["merging"] is True and _store_rows(p).shape[0] == 4
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(p)
    counted = Counted()
    _, stats = _extract(root, tmp_path / "cache", counted)
    assert counted.batches == 0 and stats["processed"] == 0
    ref, _ = _extract(root, tmp_path / "ref")
    a, b = open_cache(p), open_cache(ref)
    assert a.samples.equals(b.samples) and a.features.tobytes() == b.features.tobytes()
    assert a.rows.equals(b.rows) and "merging" not in read_manifest(p)


# ----------------------------------------------------------------------------- caches of schema 1


def test_legacy_key_is_the_pre_change_key():
    """``legacy_key`` and ``extraction_key`` hash a resolved config to what the code before the typed
    configuration named caches (values computed with that code on the same settings)."""
    cfg = resolve("folder", ["frames.n_frames=12", "clips.n_clips=2", "preprocess.crop=193", "cache.video_size=[8, 8]"])
    view = [{"flip": False, "shift": 0}]
    key = legacy_key(dataset="folder", cfg=cfg, views=view, dtype="fp32", weights_sha256="w", samples_fingerprint="s")
    assert key_hash(key) == "ef682c5361cd"
    assert key_hash(extraction_key(dataset="folder", cfg=cfg, views=view, dtype="fp32", weights_sha256="w")) == "fbad9d578be5"
    # frames.damaged chooses which samples are kept, not their numbers: outside the key
    kept = cfg.replace({"frames.damaged": "keep"})
    assert extraction_key(dataset="folder", cfg=kept, views=view, dtype="fp32", weights_sha256="w") == \
        extraction_key(dataset="folder", cfg=cfg, views=view, dtype="fp32", weights_sha256="w")


def _legacy(tmp_path: Path, root: Path, cache_root: Path, scores: dict[str, float] | None = None, **kw) -> Path:
    """A schema-1 cache of ``root``'s samples as the old code wrote it (features from a scratch extraction)."""
    scratch, _ = _extract(root, tmp_path / "scratch")
    c = open_cache(scratch)
    cfg = resolve("folder", TINY)
    samples, _ = load_stage_samples(cfg, "folder", root)
    rows = base_rows(samples, "folder", root)
    for r, e in zip(rows, c.samples.to_pylist()):
        r.update({k: e[k] for k in ("status", "error", "n_source_frames", "short", "frame_indices")})
        if scores and r["id"] in scores:
            r["final_score"] = scores[r["id"]]
    return write_legacy_cache(cache_root, "folder", cfg, rows, c.features, c.video, root=root, batch_size=BS,
                              weights_sha256="state:" + state_fingerprint(tiny_model()), **kw)


def _files(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def test_legacy_cache_opens_and_features_adopts_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", VIDEOS)
    croot = tmp_path / "cache"
    old = _legacy(tmp_path, root, croot, scores={"b": 99.0})  # extracted before a label fix
    c = open_cache(old)  # still readable as it is
    assert c.manifest["schema_version"] == 1 and c.in_store_order and c.features.shape == (3, 1, 2, 1024)
    assert Labels.from_table(c.samples).final.tolist() == [10.0, 99.0, 12.0]
    old_files = _files(old)

    counted = Counted()
    caplog.clear()
    p, stats = _extract(root, croot, counted)
    assert counted.batches == 0 and stats["processed"] == 0 and stats["adopted"] == 3 and stats["reused"] is True
    assert p != old and p.name.startswith("folder-")
    new = open_cache(p)
    assert new.features.tobytes() == c.features.tobytes() and new.video.tobytes() == c.video.tobytes()
    assert Labels.from_table(new.samples).final.tolist() == [10.0, 11.0, 12.0]  # labels from the annotation file
    assert read_manifest(p)["adopted_from"] == [old.name]
    assert read_manifest(p)["extraction"]["batch_size"] == BS  # what later rows are extracted with
    assert f"3 samples' features copied from {old}" in _logged(caplog)
    assert _files(old) == old_files  # the old cache is left as it was (runs trained on it still find it)
    assert verify_cache(p)["ok"] and verify_cache(old)["ok"]
    from udaqa_pipeline.cache import find_cache

    assert find_cache("folder", croot) == p  # the one `features` wrote last


def test_stopped_legacy_extraction_gives_its_staged_samples(tmp_path):
    """A schema-1 extraction killed (or still running under the old code) after 2 of 3 samples: the
    2 staged samples are adopted, only the third is extracted."""
    root = make_dataset(tmp_path / "data", VIDEOS)
    croot = tmp_path / "cache"
    old = _legacy(tmp_path, root, croot, stopped_after=[0, 2])
    old_files = _files(old)
    counted = Counted()
    p, stats = _extract(root, croot, counted)
    assert stats["adopted"] == 2 and stats["processed"] == 1 and counted.batches == 1
    ref = open_cache(tmp_path / "scratch" / p.name)  # the scratch extraction of all three
    c = open_cache(p)
    assert c.features.tobytes() == ref.features.tobytes() and c.samples.equals(ref.samples)
    assert _files(old) == old_files


def test_legacy_cache_of_another_root_is_not_adopted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", VIDEOS)
    croot = tmp_path / "cache"
    old = _legacy(tmp_path, root, croot)
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    caplog.clear()
    counted = Counted()
    _, stats = _extract(moved, croot, counted)
    assert stats["adopted"] == 0 and stats["processed"] == 3 and counted.batches == 2  # 6 clips in batches of 4
    err = _logged(caplog)
    assert f"{old}: an older cache with these feature settings, extracted from another data root" in err


def test_cli_features_after_a_label_fix_never_loads_i3d(tmp_path, monkeypatch):
    """`udaqa-pipeline features` on a complete cache with a changed label: the label table is rewritten
    and the Kinetics I3D is never built (loading it here fails the test)."""
    from click.testing import CliRunner

    import udaqa_pipeline.backbone.weights as weights
    from udaqa_pipeline.cli import main

    root = make_dataset(tmp_path / "data", {"a": 14, "b": 13})
    args = ["features", "folder", "--root", str(root), "--cache-root", str(tmp_path / "cache"), "--batch-size", "2",
            "--no-progress", *[x for kv in TINY for x in ("--set", kv)]]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    path = Path(r.stdout.strip().splitlines()[-1])
    rows = _rows(root)
    rows[0]["final_score"] = "42"
    _write_rows(root, rows)

    def no_i3d(*a, **k):
        raise AssertionError("I3D loaded for a label fix")

    monkeypatch.setattr(weights, "load_i3d", no_i3d)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert Path(r.stdout.strip().splitlines()[-1]) == path
    assert Labels.from_table(open_cache(path).samples).final.tolist() == [42.0, 11.0]
    assert json.loads((path / "manifest.json").read_text())["labels"]["changes"]["ids"]["changed"] == ["a"]
    assert pq.read_table(path / "samples.parquet").column("final_score").to_pylist() == [42.0, 11.0]


@pytest.mark.parametrize("cv", [None, 2])
def test_the_same_video_in_training_and_test_is_refused(tmp_path, cv):
    """Two annotation rows naming one video share one feature row; when a fold puts one in training
    and the other in test (the official split, or a seeded --cv split), training refuses the fold."""
    from udaqa_pipeline.config import ConfigError
    from udaqa_pipeline.data.trainset import shared_sources, split_folds
    from udaqa_pipeline.engine.run import train
    from udaqa_pipeline.runs.layout import RunSpec

    root = make_dataset(tmp_path / "data", {k: 14 for k in "abcdefgh"})  # a, d, g test; the rest train
    text = (root / "annotations.csv").read_text().replace("videos/b.mkv", "videos/a.mkv")
    (root / "annotations.csv").write_text(text)
    path, _ = _extract(root, tmp_path / "c")
    labels = Labels.from_table(open_cache(path).samples)
    i = {sid: k for k, sid in enumerate(labels.ids)}
    assert labels.feature_row[i["a"]] == labels.feature_row[i["b"]] != labels.feature_row[i["c"]]
    fold = next(f for f in range(cv or 1) if shared_sources(labels, *split_folds(labels, f, cv, 0)))
    with pytest.raises(ConfigError, match=r"read the same video and frames as a training sample \((a = b|b = a)\)"):
        train("folder", cache=path, run_dir=tmp_path / "run", overrides=list(TINY) + ["train.epochs=1"],
              spec=RunSpec("folder", fold=fold, cv=cv), progress=False)


@pytest.mark.parametrize("change", ["score", "moved"])
def test_a_run_is_not_resumed_on_changed_labels(tmp_path, change):
    """Train; fix the annotations (a score changed, or a sample moved from training to test); stage
    one refreshes the label table without I3D work; the same train command refuses to reuse the run
    (it would evaluate the old test set), naming what moved and the flag that retrains."""
    from udaqa_pipeline.engine.run import train
    from udaqa_pipeline.runs.checkpoint import CheckpointError

    root = make_dataset(tmp_path / "data", {k: 14 for k in "abcdefgh"})  # a, d, g test; the rest train
    path, _ = _extract(root, tmp_path / "c")
    kw = dict(run_dir=tmp_path / "run", overrides=list(TINY) + ["train.epochs=1", "train.batch_size=2"], progress=False)
    train("folder", cache=path, **kw)
    train("folder", cache=path, **kw)  # unchanged labels: the finished run is reused
    rows = list(csv.DictReader((root / "annotations.csv").open()))
    for r in rows:
        if r["id"] == "b":
            r.update({"final_score": "99.0"} if change == "score" else {"split": "test"})
    with (root / "annotations.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    again, _ = _extract(root, tmp_path / "c")
    assert again == path
    # evaluate says the run's labels differ from the cache's, naming the moved sample
    import logging

    from udaqa_pipeline.evaluation.evaluate import evaluate

    with caplog_at(logging.WARNING) as records:
        evaluate(tmp_path / "run", cache=path)
    said = " ".join(r.getMessage() for r in records)
    assert "changed since it was trained" in said and "--no-resume" in said
    assert ("moved into or out of its test fold: b" in said) == (change == "moved")
    with pytest.raises(CheckpointError, match="other labels or another split.*--no-resume") as e:
        train("folder", cache=path, **kw)
    assert ("moved into or out of test: b" in str(e.value)) == (change == "moved")
    train("folder", cache=path, resume=False, **kw)
    with caplog_at(logging.WARNING) as records:
        evaluate(tmp_path / "run", cache=path)
    assert not any("changed since it was trained" in r.getMessage() for r in records)


class caplog_at:
    """The ``udaqa_pipeline`` log records at ``level`` and up while inside."""

    def __init__(self, level: int) -> None:
        self.level, self.records = level, []

    def __enter__(self) -> list:
        import logging

        class _H(logging.Handler):
            def emit(h, record):  # noqa: N805
                self.records.append(record)
        self.handler = _H(self.level)
        logging.getLogger("udaqa_pipeline").addHandler(self.handler)
        return self.records

    def __exit__(self, *exc) -> None:
        import logging

        logging.getLogger("udaqa_pipeline").removeHandler(self.handler)


def _flip_byte_in_place(path: Path, at: int) -> None:
    """Change one byte of ``path`` keeping its size and modification time (the worst case: only the
    content tells it apart)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_same_size_edit_is_extracted_again_and_named(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", VIDEOS)
    p, _ = _extract(root, tmp_path / "cache")
    before = _by_id(open_cache(p))
    video = root / "videos" / "b.mkv"
    size = video.stat().st_size
    # a byte of the last frame's payload: the file still decodes, its pixels differ
    _flip_byte_in_place(video, size - 600)
    # the memo is still there and the modification time was put back: the change time tells
    _logged(caplog)
    _, stats = _extract(root, tmp_path / "cache")
    text = _logged(caplog)
    assert stats["processed"] == 1 and "1 source(s) changed" in text and "b (videos/b.mkv)" in text
    c = open_cache(p)
    assert c.n_rows == 4 and video.stat().st_size == size
    assert _by_id(c)["a"].tobytes() == before["a"].tobytes()
    # variant: a frame folder whose one frame changed in place, same size
    from PIL import Image

    frames = tmp_path / "frames" / "f"
    frames.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(14):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(frames / f"{i:05d}.png")
    from udaqa_pipeline.cache.plan import source_fingerprint

    memo: dict = {}
    fp = source_fingerprint(frames, memo)
    assert source_fingerprint(frames, memo) == fp  # memo hit
    _flip_byte_in_place(frames / "00007.png", 60)
    assert source_fingerprint(frames, {}) != fp


def test_the_same_files_through_another_root_or_a_link_extract_nothing(tmp_path, caplog):
    import logging
    import shutil

    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", VIDEOS)
    p, _ = _extract(root, tmp_path / "cache")
    # a copy elsewhere without the modification times (another mount, a fresh checkout): hashed once
    other = tmp_path / "mnt" / "data"
    shutil.copytree(root, other, copy_function=shutil.copyfile)
    _, stats = _extract(other, tmp_path / "cache")
    assert stats["processed"] == 0 and open_cache(p).n_rows == 3
    # the videos folder a link to another disk: sources stay relative to the root
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(root / "annotations.csv", linked / "annotations.csv")
    (linked / "videos").symlink_to(other / "videos")
    _, stats = _extract(linked, tmp_path / "cache")
    assert stats["processed"] == 0
    assert open_cache(p).rows.column("source").to_pylist() == ["videos/a.mkv", "videos/b.mkv", "videos/c.mkv"]


def test_rows_from_before_fingerprints_get_one_on_their_next_run(tmp_path, caplog):
    import logging

    import pyarrow.parquet as pq

    from udaqa_pipeline.cache.store import write_rows

    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", VIDEOS)
    p, _ = _extract(root, tmp_path / "cache")
    rows = pq.read_table(p / "rows.parquet").to_pylist()
    for r in rows:  # as a cache of the previous release wrote them
        r["stamp"], r["fingerprint"] = r["stamp"].split("|")[0], ""
    write_rows(p, rows_table(rows))
    (p / "fingerprints.json").unlink()
    _logged(caplog)
    _, stats = _extract(root, tmp_path / "cache")
    assert stats["processed"] == 0 and "3 row(s) recorded before content fingerprints" in _logged(caplog)
    got = pq.read_table(p / "rows.parquet").to_pylist()
    assert all(len(r["fingerprint"]) == 16 for r in got) and [r["stamp"] for r in got] == [r["stamp"] for r in rows]
    _, stats = _extract(root, tmp_path / "cache")  # and now they are found by their fingerprint
    assert stats["processed"] == 0 and "recorded before" not in _logged(caplog)


def test_a_copy_of_a_training_video_under_another_name_in_test_is_refused(tmp_path):
    """The same bytes under two paths: two feature rows, one content fingerprint; a fold with one
    in training and the other in test is refused like one path in both."""
    import shutil

    from udaqa_pipeline.config import ConfigError
    from udaqa_pipeline.data.trainset import from_cache, shared_sources, split_folds
    from udaqa_pipeline.engine.run import train

    root = make_dataset(tmp_path / "data", {k: 14 for k in "abcdefgh"})  # a, d, g test; the rest train
    shutil.copy(root / "videos" / "b.mkv", root / "videos" / "a.mkv")  # test "a" is training "b"'s video
    path, _ = _extract(root, tmp_path / "c")
    labels = from_cache(open_cache(path)).labels
    i = {sid: k for k, sid in enumerate(labels.ids)}
    assert labels.feature_row[i["a"]] != labels.feature_row[i["b"]] and labels.content[i["a"]] == labels.content[i["b"]]
    assert shared_sources(labels, *split_folds(labels, 0, None, 0)) == [("a", "b")]
    with pytest.raises(ConfigError, match=r"read the same video and frames as a training sample \(a = b\)"):
        train("folder", cache=path, run_dir=tmp_path / "run", overrides=list(TINY) + ["train.epochs=1"],
              progress=False)
