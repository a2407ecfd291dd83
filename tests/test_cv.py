"""Cross-validation (udaqa_pipeline.experiments.cv), leave-one-surgeon-out folds, the small-data training
options (selection by inner CV / end of training with weight averaging, cosine schedule, feature
standardisation) and the non-finite-loss stop, on small JIGSAWS-like synthetic caches."""

import dataclasses
import importlib
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from udaqa_pipeline.cache import open_cache, write_cache
from udaqa_pipeline.cli import main as cli
from udaqa_pipeline.config import ConfigError
from udaqa_pipeline.experiments.cv import cross_validate, ridge_predict, seed_statistics, summarize
from udaqa_pipeline.testing import toy_arrays
from udaqa_pipeline.inference.run import load_run
from udaqa_pipeline.runs.checkpoint import CHECKPOINT, load_checkpoint
from udaqa_pipeline.engine.fit import TrainingError, average_weights
from udaqa_pipeline.config import Train
from udaqa_pipeline.engine.recipe import learning_rate
from udaqa_pipeline.engine.run import train
from udaqa_pipeline.inference.predict import predict
from udaqa_pipeline.runs.layout import RunSpec
from udaqa_pipeline.data.trainset import CacheSource, Labels, split_folds, subject_folds

pytestmark = pytest.mark.usefixtures("one_thread")

SURGEONS = "BCDE"
FAST = ["dataset.tasks=[\"Suturing\"]", "train.batch_size=8", "train.wa_hidden=16", "train.eval_samples=2",
        "train.latent_input=\"feature\"", "train.regressor_hidden=[16]", "train.epochs=3"]


def write_jigsaws_like(path, n=24, seed=0, nan_row=None):
    """A cache shaped like JIGSAWS Suturing: 4 surgeons x n/4 trials, 6 GRS items (rule sum), the
    4 official folds crossing the surgeons; features carry the GRS along one direction."""
    a = toy_arrays(n=n, n_folds=4, seed=seed, n_frames=8, size=(8, 8))
    rng = np.random.default_rng(seed)
    feats = a["features"]
    for i, r in enumerate(a["rows"]):
        s, t = SURGEONS[i % 4], i // 4 + 1
        items = np.clip(np.round(1 + 4 * a["quality"][i] + rng.normal(0, 0.4, 6)), 1, 5)
        r.update(id=f"Suturing_{s}{t:03d}", group="Suturing", action="Suturing", rule="sum",
                 judge_scores=items.tolist(), final_score=float(items.sum()), difficulty=None, fold=t % 4)
    if nan_row is not None:
        feats[nan_row] = np.nan
    return write_cache(path, features=feats, video=a["video"], samples=a["rows"], clip_starts=a["clip_starts"],
                       views=a["views"], dataset="jigsaws", config={"toy": {"n": n, "seed": seed}})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_jigsaws_like(tmp_path_factory.mktemp("c") / "jig")


def _labels(cache):
    return Labels.from_table(open_cache(cache).samples)


def test_louo_folds_keep_each_surgeon_on_one_side(cache):
    lab = _labels(cache)
    folds, names = subject_folds(lab)
    assert names == list(SURGEONS) and sorted(set(folds.tolist())) == [0, 1, 2, 3]
    for k, s in enumerate(names):
        tr, te = split_folds(lab, k, None, 0, "louo")
        assert {lab.ids[i][len("Suturing_")] for i in te} == {s}
        assert s not in {lab.ids[i][len("Suturing_")] for i in tr}
        assert len(tr) + len(te) == len(lab.ids)
    with pytest.raises(ConfigError, match="0..3"):
        split_folds(lab, 4, None, 0, "louo")
    lab.ids[0] = "no_surgeon_here"
    with pytest.raises(ConfigError, match="no_surgeon_here"):
        subject_folds(lab)


def test_dev_split_scores_inside_the_official_training_sets_only(cache):
    lab = _labels(cache)
    for outer in range(4):
        test_rows = set(np.flatnonzero(lab.fold == outer).tolist())
        seen = []
        for i in range(3):
            tr, te = split_folds(lab, 3 * outer + i, None, 0, "dev")
            assert not (set(tr) | set(te)) & test_rows  # the official test fold is never read
            assert not set(tr) & set(te)
            seen += te.tolist()
        assert sorted(seen) == sorted(set(range(len(lab.ids))) - test_rows)
    with pytest.raises(ConfigError, match="0..11"):
        split_folds(lab, 12, None, 0, "dev")


def test_learning_rate_and_weight_average():
    t = Train(lr=1.0, epochs=4, lr_schedule="cosine")
    assert [round(learning_rate(e, t), 6) for e in range(4)] == [1.0, 0.853553, 0.5, 0.146447]
    assert learning_rate(3, dataclasses.replace(t, lr_schedule="constant")) == 1.0
    states = [{"w": torch.tensor([float(i), 2.0 * i]), "n": torch.tensor(i)} for i in range(1, 4)]
    avg = None
    for n, s in enumerate(states, 1):
        avg = average_weights(avg, s, n)
    assert torch.allclose(avg["w"], torch.tensor([2.0, 4.0])) and int(avg["n"]) == 3


def test_select_last_keeps_the_average_of_the_last_epochs(cache, tmp_path):
    ov = FAST + ["train.select=last", "train.average_last=2", "train.epochs=4"]
    run = train("jigsaws", cache=cache, run_dir=tmp_path / "r", overrides=ov, progress=False)
    ck = load_checkpoint(run / "Suturing" / CHECKPOINT)
    assert ck["best"]["averaged"] == 2 and ck["best"]["epoch"] == 3 and ck["split"]["select"] == []
    # the kept model is the mean of epochs 3 and 4: rerun epoch by epoch to get both states
    step = tmp_path / "s"
    train("jigsaws", cache=cache, run_dir=step, overrides=ov, progress=False, stop_after=3)
    w3 = load_checkpoint(step / "Suturing" / CHECKPOINT)["model"]
    train("jigsaws", cache=cache, run_dir=step, overrides=ov, progress=False)
    w4 = load_checkpoint(step / "Suturing" / CHECKPOINT)["model"]
    k = "regressor.net.0.weight"
    assert torch.allclose(ck["best"]["model"][k], (w3[k] + w4[k]) / 2, atol=1e-7)
    assert not torch.equal(ck["best"]["model"][k], w4[k])


def test_select_inner_cv_picks_an_epoch_count_from_training_rows_only(cache, tmp_path, monkeypatch):
    ov = FAST + ["train.select=inner_cv", "train.inner_folds=2", "train.epochs=4", "train.inner_smooth=1"]
    run = train("jigsaws", cache=cache, run_dir=tmp_path / "r", spec=RunSpec("jigsaws", fold=1), overrides=ov, progress=False)
    ck = load_checkpoint(run / "Suturing" / CHECKPOINT)
    inner = ck["inner_cv"]
    assert len(inner["curve"]) == 4 and inner["epochs"] == int(np.nanargmax(inner["curve"])) + 1
    assert ck["epoch"] + 1 == inner["epochs"] == ck["epochs_planned"]
    # a rerun resumes from the checkpoint and never repeats the inner cross-validation
    S = importlib.import_module("udaqa_pipeline.engine.selection")

    monkeypatch.setattr(S, "inner_cv_epochs", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rerun")))
    train("jigsaws", cache=cache, run_dir=tmp_path / "r", spec=RunSpec("jigsaws", fold=1), overrides=ov, progress=False)


def test_inner_cv_never_reads_the_test_fold(cache, tmp_path, monkeypatch):
    """Scramble the test fold's labels: the inner-CV curve and the kept model do not change."""
    ov = FAST + ["train.select=inner_cv", "train.inner_folds=2", "train.epochs=3"]
    a = train("jigsaws", cache=cache, run_dir=tmp_path / "a", spec=RunSpec("jigsaws", fold=2), overrides=ov, progress=False)
    real = Labels.from_table

    def scrambled(table):
        lab = real(table)
        te = lab.fold == 2
        lab.final[te] = lab.final[te][::-1] + 7
        lab.judges = [j[::-1] + 1 if t else j for j, t in zip(lab.judges, te)]
        return lab

    monkeypatch.setattr(Labels, "from_table", staticmethod(scrambled))
    b = train("jigsaws", cache=cache, run_dir=tmp_path / "b", spec=RunSpec("jigsaws", fold=2), overrides=ov, progress=False)
    ca, cb = (load_checkpoint(x / "Suturing" / CHECKPOINT) for x in (a, b))
    assert ca["inner_cv"] == cb["inner_cv"]
    for k in ca["best"]["model"]:
        assert torch.equal(ca["best"]["model"][k], cb["best"]["model"][k]), k


def test_feature_norm_makes_the_model_blind_to_feature_scale(cache, tmp_path):
    ov = FAST + ["train.feature_norm=true", "train.select=last", "train.clip_l2=false"]  # raw features in
    run = train("jigsaws", cache=cache, run_dir=tmp_path / "r", overrides=ov, progress=False)
    r = load_run(run / "Suturing")
    c = open_cache(cache)
    lab = Labels.from_table(c.samples)
    fit = np.asarray([lab.ids.index(i) for i in r.checkpoint["split"]["fit"]])
    x = c.features[np.sort(fit)].reshape(-1, c.features.shape[-1]).astype(np.float64)
    np.testing.assert_allclose(r.model.feat_mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.model.feat_std.numpy(), x.std(0, ddof=1), rtol=1e-4)
    src = CacheSource(c)
    rows = np.arange(6)
    p1 = predict(r.model, src, lab, rows, r.scaling, n_samples=3)
    src.features = src.features * 10.0
    r.model.set_feature_norm(r.model.feat_mean * 10, r.model.feat_std * 10)
    p2 = predict(r.model, src, lab, rows, r.scaling, n_samples=3)
    np.testing.assert_allclose(p1["final"], p2["final"], rtol=1e-4)


def test_non_finite_loss_stops_naming_epoch_batch_and_samples(tmp_path):
    bad = write_jigsaws_like(tmp_path / "bad", nan_row=5)
    with pytest.raises(TrainingError, match=r"epoch 1, batch \d+ \(samples .*Suturing_C002"):
        train("jigsaws", cache=bad, run_dir=tmp_path / "r", overrides=FAST, progress=False)


def test_seed_statistics_and_summary_by_hand():
    rows = []
    for fold, (y, p) in enumerate([([1, 2, 3], [1, 2, 3]), ([1, 2, 3], [3, 2, 1])]):
        rows += [{"method": "udaqa", "protocol": "honest", "seed": 0, "fold": fold, "group": "g", "id": f"{fold}{i}",
                  "true_final": float(a), "pred_final": float(b), "selected_epoch": 2} for i, (a, b) in enumerate(zip(y, p))]
    st = seed_statistics(rows, group_range=2.0)
    assert st["fold_spearman"] == {0: 1.0, 1: -1.0} and st["mean_fold_spearman"] == 0.0
    assert st["rl2x100"] == pytest.approx(100 * (0 + (4 + 0 + 4) / 3 / 4) / 2)
    # a second seed that is perfect everywhere: mean and sd over seeds
    rows2 = [{**r, "seed": 1, "pred_final": r["true_final"]} for r in rows]
    res = summarize(rows + rows2, {"g": 2.0})["results"][0]
    assert res["mean_fold_spearman"]["per_seed"] == [0.0, 1.0]
    assert res["mean_fold_spearman"]["sd"] == pytest.approx(np.std([0.0, 1.0], ddof=1))
    assert res["folds"]["1"]["mean"] == 0.0 and res["folds"]["1"]["n"] == 3


def test_ridge_baseline_recovers_a_linear_signal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5, 16))
    y = x.mean(1) @ rng.normal(size=16)
    pred = ridge_predict(x, y, np.arange(30), np.arange(30, 40))
    assert np.corrcoef(pred, y[30:])[0, 1] > 0.95


def test_cv_command_end_to_end(cache, tmp_path):
    out = tmp_path / "cv"
    args = ["cv", "jigsaws", "--cache", str(cache), "--seeds", "2", "--protocol", "both", "--jobs", "1",
            "--methods", "udaqa,ridge", "--samples", "4", "--run", str(out), "--no-progress", "--json"]
    for o in FAST:
        args += ["--set", o]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["folds"] == [0, 1, 2, 3] and m["protocols"] == ["honest", "paper"]
    rows = {(r["method"], r["protocol"]): r for r in m["results"]}
    assert set(rows) == {("udaqa", "honest"), ("udaqa", "paper"), ("ridge", "honest"), ("ridge", "paper")}
    assert rows[("ridge", "honest")]["mean_fold_spearman"]["sd"] == 0.0
    assert len(rows[("udaqa", "honest")]["mean_fold_spearman"]["per_seed"]) == 2
    assert [v["n"] for v in rows[("udaqa", "paper")]["folds"].values()] == [4, 8, 8, 4]  # trial t of each surgeon is in fold t % 4
    pred = pq.read_table(out / "predictions.parquet").to_pylist()
    assert len(pred) == 2 * 2 * 24 + 2 * 24  # udaqa: protocols x seeds x samples; ridge once per protocol
    assert all(len(r["pred_finals"]) == 4 for r in pred if r["method"] == "udaqa")
    assert json.loads((out / "cv.json").read_text())["results"] == m["results"]
    # leave-one-surgeon-out through the library call, reusing nothing of the above
    louo = cross_validate("jigsaws", cache=cache, seeds=1, split="louo", methods=["ridge"], run_dir=tmp_path / "l",
                          overrides=FAST, progress=False)
    assert louo["folds"] == [0, 1, 2, 3] and louo["split"] == "louo"
    assert all(math.isfinite(v["mean"]) for v in louo["results"][0]["folds"].values())


def test_groups_without_any_video_are_skipped_in_one_line(tmp_path, capsys):
    from udaqa_pipeline.datasets import Sample, skip_absent_groups

    (tmp_path / "Suturing_B001.avi").write_bytes(b"x")
    s = [Sample(id=f"{g}_{i}", dataset="jigsaws", source=tmp_path / f"{g}_{i}.avi", final_score=10.0, group=g)
         for g in ("Suturing", "Knot_Tying", "Needle_Passing") for i in ("B001", "B002")]
    kept = skip_absent_groups(s, "jigsaws", tmp_path)
    assert [x.id for x in kept] == ["Suturing_B001", "Suturing_B002"]  # B002's missing file is stage one's to report
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Knot_Tying (2 samples), Needle_Passing (2 samples): skipped" in err[0]
    nothing = [x for x in s if x.group != "Suturing"]
    assert skip_absent_groups(nothing, "jigsaws", tmp_path) == nothing  # nothing on disk: each is reported
