"""Stage two end to end on small synthetic caches written with stage one's writer."""

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import spearmanr

from udaqa_pipeline.cache import open_cache
from udaqa_pipeline.cli import main as cli
from udaqa_pipeline.config import ConfigError
from udaqa_pipeline.datasets.rules import apply_rule
from udaqa_pipeline.evaluation.evaluate import evaluate
from udaqa_pipeline.evaluation.report import write_report
from udaqa_pipeline.metrics import fisher_z_mean
from udaqa_pipeline.testing import write_toy_cache
from udaqa_pipeline.inference.run import load_run
from udaqa_pipeline.runs.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from udaqa_pipeline.engine.recipe import PAPER_RECIPE
from udaqa_pipeline.engine.run import train
from udaqa_pipeline.inference.predict import predict
from udaqa_pipeline.runs.layout import RunSpec
from udaqa_pipeline.data.trainset import CacheSource, Labels, from_cache

SMALL = ["train.batch_size=8", "train.lr=1e-3", "train.wa_hidden=32", "train.video_channels=[4,8,8,8]",
         "train.eval_samples=2", "train.dropout=0.0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_cache(tmp_path_factory.mktemp("c") / "toy", n=48, n_views=2)


def _log(run):
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def test_overfits_tiny_cache(toy, tmp_path):
    run = train("mtl", cache=toy, run_dir=tmp_path / "r", progress=False, spec=RunSpec("mtl", protocol="paper"),
                overrides=SMALL + ["train.epochs=40", "train.use_curriculum=false"])
    r = load_run(run)
    from udaqa_pipeline.cache import open_cache

    c = open_cache(toy)
    lab = Labels.from_table(c.samples)
    rows = np.flatnonzero(lab.fold == -1)
    p = predict(r.model, CacheSource(c), lab, rows, r.scaling, n_samples=4)
    from udaqa_pipeline.metrics import spearman

    assert spearman(lab.final[rows], p["final"]) > 0.9
    judge_mean = np.array([lab.judges[i].mean() for i in rows])
    pred_mean = np.array([pan.mean() for pan in p["panels"]])
    assert spearman(judge_mean, pred_mean) > 0.9  # learned the judges, not only the difficulty


def test_same_seed_same_numbers_and_resume(toy, tmp_path):
    ov = SMALL + ["train.epochs=6", "train.curriculum_patience=1"]
    a = train("mtl", cache=toy, run_dir=tmp_path / "a", overrides=ov, progress=False)
    b = train("mtl", cache=toy, run_dir=tmp_path / "b", overrides=ov, progress=False)
    assert _log(a) == _log(b)
    # killed after 2 epochs, then resumed: identical to the uninterrupted run
    c = train("mtl", cache=toy, run_dir=tmp_path / "c", overrides=ov, progress=False, stop_after=2)
    assert len(_log(c)) == 2
    train("mtl", cache=toy, run_dir=tmp_path / "c", overrides=ov, progress=False)
    assert _log(c) == _log(a)
    ca, cc = load_checkpoint(a / CHECKPOINT), load_checkpoint(c / CHECKPOINT)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cc["model"][k]), k
    assert ca["best"]["epoch"] == cc["best"]["epoch"]
    # curriculum share went below 1 and grew (patience 1)
    fr = [r["train_fraction"] for r in _log(a)]
    assert fr[0] == 1.0 and fr[1] == 0.4 and max(fr[2:]) > 0.4


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_refusals(toy, tmp_path):
    run = train("mtl", cache=toy, run_dir=tmp_path / "r", overrides=SMALL + ["train.epochs=1"],
                progress=False)
    ck = run / CHECKPOINT
    good = ck.read_bytes()
    # a flipped byte inside the payload fails the digest (or the unpickler)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    ck.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=str(ck)):
        load_run(run)
    # not a checkpoint at all: an arbitrary pickle with a global is refused by weights_only
    import pickle

    ck.write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(CheckpointError, match="not a readable"):
        load_run(run)
    # another version
    ck.write_bytes(good)
    outer = torch.load(ck, weights_only=True)
    outer["version"] = 99
    torch.save(outer, ck)
    with pytest.raises(CheckpointError, match="version 99"):
        load_run(run)
    # resume against another cache or other settings
    ck.write_bytes(good)
    other = write_toy_cache(tmp_path / "other", n=48, seed=5)
    with pytest.raises(CheckpointError, match="cache"):
        train("mtl", cache=other, run_dir=run, overrides=SMALL + ["train.epochs=1"], progress=False)
    with pytest.raises(CheckpointError, match="train.lr"):
        train("mtl", cache=toy, run_dir=run, overrides=SMALL + ["train.epochs=2", "train.lr=0.5"],
              progress=False)


def test_save_load_roundtrip(tmp_path):
    p = tmp_path / "x.pt"
    save_checkpoint(p, {"a": torch.arange(3), "b": {"c": [1, 2.5, None, "s"]}})
    d = load_checkpoint(p)
    assert torch.equal(d["a"], torch.arange(3)) and d["b"] == {"c": [1, 2.5, None, "s"]}


def test_a_checkpoint_without_a_spec_resumes_and_is_refused_by_another_spec(toy, tmp_path):
    """Checkpoints written before the run spec was stored carry protocol/fold/cv/split_name/group
    only: they resume as the same run, and another spec is refused naming the field."""
    ov = SMALL + ["train.epochs=3"]
    a = train("mtl", cache=toy, run_dir=tmp_path / "a", overrides=ov, progress=False)
    c = train("mtl", cache=toy, run_dir=tmp_path / "c", overrides=ov, progress=False, stop_after=1)
    ck = load_checkpoint(c / CHECKPOINT)
    assert RunSpec.from_checkpoint(ck) == RunSpec("mtl")
    del ck["spec"]
    save_checkpoint(c / CHECKPOINT, ck)
    assert RunSpec.from_checkpoint(ck) == RunSpec("mtl")
    with pytest.raises(CheckpointError, match="protocol='honest', this run asks for 'paper'"):
        train("mtl", cache=toy, run_dir=c, spec=RunSpec("mtl", protocol="paper"), overrides=ov, progress=False)
    train("mtl", cache=toy, run_dir=c, overrides=ov, progress=False)
    assert _log(c) == _log(a)
    assert load_run(c).checkpoint["spec"] == RunSpec("mtl").to_dict()


def test_folds_and_cv(toy, tmp_path):
    with pytest.raises(ConfigError, match="only fold 0.*--cv"):
        train("mtl", cache=toy, spec=RunSpec("mtl", fold=1), run_dir=tmp_path / "x", overrides=SMALL, progress=False)
    run = train("mtl", cache=toy, spec=RunSpec("mtl", fold=2, cv=3), run_dir=tmp_path / "cv", progress=False,
                overrides=SMALL + ["train.epochs=1"])
    ck = load_checkpoint(run / CHECKPOINT)
    assert len(ck["split"]["test"]) == 16 and ck["cv"] == 3
    assert not set(ck["split"]["test"]) & set(ck["split"]["fit"] + ck["split"]["select"])


def test_per_group_runs_and_evaluate(tmp_path):
    # noisy enough that the two groups' Spearman differ and neither is 1, so the Fisher-z average is
    # told apart from their plain mean and from the pooled rho
    cache = write_toy_cache(tmp_path / "g", n=64, groups=("Suturing", "Knot_Tying"), n_folds=4, noise=0.3)
    # pinned to the paper's recipe so the stage file's recipe (stages/jigsaws.toml) can change under it
    run = train("jigsaws", cache=cache, spec=RunSpec("jigsaws", fold=1), run_dir=tmp_path / "run", progress=False,
                overrides=[*PAPER_RECIPE, *SMALL, "train.epochs=2"])
    assert (run / "Suturing" / CHECKPOINT).exists() and (run / "Knot_Tying" / CHECKPOINT).exists()
    # one draw per sample from the paper's sampler (the panel's locations, which the point prediction
    # is made of): predictions.parquet then holds every sampled judge the metrics saw
    m = write_report(evaluate(run, cache=cache, fold=1, samples=1, sampler="paper"), run / "eval")
    assert set(m["groups"]) == {"Suturing", "Knot_Tying"}
    assert m["protocol"] == "honest" and m["groups"]["Suturing"]["protocol"] == "honest"
    t = pq.read_table(run / "eval" / "predictions.parquet").to_pydict()
    assert {"id", "group", "true_final", "pred_final", "pred_judges", "real_judges", "uncertainty"} <= set(t)
    truth = {r["id"]: r for r in open_cache(cache).samples.to_pylist()}
    assert sorted(t["id"]) == sorted(i for i, r in truth.items() if r["fold"] == 1) and len(t["id"]) == 16
    assert t["group"] == [truth[i]["group"] for i in t["id"]]
    assert t["true_final"] == pytest.approx([truth[i]["final_score"] for i in t["id"]])
    assert t["real_judges"] == [pytest.approx(truth[i]["judge_scores"]) for i in t["id"]]
    assert all(len(j) == 7 for j in t["pred_judges"])
    # the predicted final is the rule on the drawn panel
    assert t["pred_final"] == pytest.approx([float(apply_rule("mtl_middle3", j, truth[i]["difficulty"]))
                                             for i, j in zip(t["id"], t["pred_judges"])], abs=1e-9)
    # headline: Spearman within each group, then the Fisher-z average of the two (not a pooled rho)
    rho = {}
    for g in ("Suturing", "Knot_Tying"):
        k = [n for n, x in enumerate(t["group"]) if x == g]
        rho[g] = spearmanr([t["true_final"][n] for n in k], [t["pred_final"][n] for n in k]).statistic
        assert m["groups"][g]["spearman"] == pytest.approx(rho[g]), g
    assert abs(rho["Suturing"] - rho["Knot_Tying"]) > 0.01 and max(rho.values()) < 1
    assert m["fisher_z_spearman"]["value"] == pytest.approx(fisher_z_mean(list(rho.values())))
    # panel coverage: share of the real judges inside [min, max] of the drawn panel, over all 16 samples
    cov = np.mean([np.mean([min(p) <= r <= max(p) for r in real])
                   for p, real in zip(t["pred_judges"], t["real_judges"])])
    assert m["panel"]["T7"]["coverage"] == pytest.approx(cov) and m["panel"]["T7"]["n"] == 16
    for png in ("pred_vs_true.png", "error_vs_uncertainty.png", "curriculum_share.png"):
        assert (run / "eval" / png).stat().st_size > 1000
    with pytest.raises(CheckpointError, match="fold 1, not 0"):
        evaluate(run, cache=cache, fold=0)


def test_cli_train_evaluate(toy, tmp_path):
    r = CliRunner()
    args = ["--cache", str(toy), "--run", str(tmp_path / "run")]
    sets = sum((["--set", s] for s in SMALL + ["train.epochs=2"]), [])
    res = r.invoke(cli, ["train", "mtl", *args, "--protocol", "paper", "--no-progress", *sets])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["evaluate", "mtl", *args, "--samples", "3", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["protocol"] == "paper" and m["overall"]["n"] == 12
    res = r.invoke(cli, ["evaluate", "mtl", *args, "--samples", "2"])
    assert "[paper protocol]" in res.output and "selected on test" in res.output


def test_batch_slices_never_leave_a_single_sample():
    from udaqa_pipeline.engine.fit import batch_slices

    assert [(s.start, s.stop) for s in batch_slices(17, 8)] == [(0, 8), (8, 17)]
    assert [(s.start, s.stop) for s in batch_slices(16, 8)] == [(0, 8), (8, 16)]
    assert [(s.start, s.stop) for s in batch_slices(5, 8)] == [(0, 5)]


@pytest.mark.gpu
def test_trains_and_evaluates_on_cuda(toy, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    run = train("mtl", cache=toy, run_dir=tmp_path / "r", overrides=SMALL + ["train.epochs=2"],
                progress=False, device="cuda")
    ck = load_checkpoint(run / CHECKPOINT)
    assert all(v.device.type == "cpu" for v in ck["model"].values())  # checkpoints load anywhere
    m = evaluate(run, cache=toy, samples=2).metrics
    assert m["overall"]["n"] == 12


class _AdaptedSource(CacheSource):
    """A feature source with its own trainable part, as a backbone fine-tuning wrapper has."""

    def __init__(self, cache):
        super().__init__(cache)
        self.module = torch.nn.Linear(1024, 1024)
        torch.nn.init.eye_(self.module.weight)
        torch.nn.init.zeros_(self.module.bias)

    def batch(self, indices, views):
        f, v = super().batch(indices, views)
        return self.module(f), v


def test_custom_feature_source_is_trained_and_checkpointed(toy, tmp_path):
    from udaqa_pipeline.cache import open_cache

    src = _AdaptedSource(open_cache(toy))
    run = train("mtl", data=from_cache(open_cache(toy), "mtl", src), run_dir=tmp_path / "r", progress=False,
                overrides=SMALL + ["train.epochs=2"])
    r = load_run(run)
    assert not torch.equal(r.source_state["weight"], torch.eye(1024))  # the source was optimised
    src2 = _AdaptedSource(open_cache(toy))
    src2.module.load_state_dict(r.source_state)
    m = evaluate(run, cache=toy, source=src2, samples=2).metrics
    assert m["overall"]["n"] == 12


def test_no_selected_epoch_falls_back_to_last_heads_and_source(toy, tmp_path, caplog):
    """A one-sample validation split gives a NaN Spearman every epoch, so no epoch is selected:
    the run says both (too few rows, no defined score), and load_run falls back to the last epoch's
    heads AND the last epoch's source state."""
    from udaqa_pipeline.cache import open_cache

    caplog.set_level(logging.WARNING, logger="udaqa_pipeline")
    src = _AdaptedSource(open_cache(toy))
    run = train("mtl", data=from_cache(open_cache(toy), "mtl", src), run_dir=tmp_path / "r", progress=False,
                overrides=SMALL + ["train.epochs=2", "train.val_fraction=0.01"])
    assert "selected on 1 val row(s), too few to rank epochs" in caplog.text
    assert "no epoch had a defined val spearman" in caplog.text and "the last epoch is kept" in caplog.text
    assert "1 held-out row(s) to be calibrated on" in caplog.text and "none is fitted" in caplog.text
    ck = load_checkpoint(run / CHECKPOINT)
    assert ck["calibration"] is None  # the paper's sampler, as the warning says
    assert ck["best"]["model"] is None and ck["best"]["source"] is None
    r = load_run(run)
    assert r.source_state is not None
    for k, v in ck["source"].items():
        assert torch.equal(r.source_state[k], v), k
    for k, v in r.model.state_dict().items():
        assert torch.equal(v, ck["model"][k]), k
    assert not torch.equal(r.source_state["weight"], torch.eye(1024))  # the trained, not the initial, state


def test_checkpoint_carries_feature_config_and_scoring_rules(tmp_path):
    """What scoring needs without the cache: the manifest's frames/clips/preprocess/cache sections and
    {rule: panel size}, in the checkpoint and in config.json."""
    from udaqa_pipeline.cache import open_cache, write_cache
    from udaqa_pipeline.testing import toy_arrays
    from udaqa_pipeline.data.trainset import feature_config, Labels, scoring_rules

    a = toy_arrays(n=24)
    a["rows"][0].update(judge_scores=[], rule="sum")  # a single-label sample: identity over its final score
    sections = {"frames": {"n_frames": 16, "mode": "first"}, "clips": {"n_clips": 10, "clip_len": 16},
                "preprocess": {"resize": 256, "crop": 224}, "cache": {"video_size": [64, 64]}}
    cache = write_cache(tmp_path / "c", features=a["features"], video=a["video"], samples=a["rows"],
                        clip_starts=a["clip_starts"], views=a["views"], dataset="toy",
                        config={**sections, "toy": {"n": 24}})
    labels = Labels.from_table(open_cache(cache).samples)
    assert scoring_rules(labels, range(24)) == {"mtl_middle3": 7, "identity": 1}
    assert list(scoring_rules(labels, range(24))) == ["mtl_middle3", "identity"]  # most common first
    assert feature_config(open_cache(cache)) == sections
    run = train("mtl", cache=cache, run_dir=tmp_path / "r", progress=False, overrides=SMALL + ["train.epochs=1"])
    ck = load_checkpoint(run / CHECKPOINT)
    assert ck["feature_config"] == sections
    assert ck["scoring_rules"] == {"mtl_middle3": 7, "identity": 1}
    conf = json.loads((run / "config.json").read_text())
    assert conf["feature_config"] == sections and conf["scoring_rules"] == {"mtl_middle3": 7, "identity": 1}
    assert load_run(run).checkpoint["scoring_rules"] == ck["scoring_rules"]


_DDP_SCRIPT = '''
import os, sys
import torch
from udaqa_pipeline.cache import open_cache
from udaqa_pipeline.engine.run import train
from udaqa_pipeline.data.trainset import CacheSource, from_cache


class Source(CacheSource):
    """A trainable source with parameters and BatchNorm buffers, as a fine-tuned I3D has."""

    def __init__(self, cache):
        super().__init__(cache)
        lin = torch.nn.Linear(1024, 1024)
        torch.nn.init.eye_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        self.module = torch.nn.Sequential(lin, torch.nn.BatchNorm1d(1024))

    def batch(self, indices, views):
        f, v = super().batch(indices, views)
        b, k, m = f.shape
        return self.module(f.reshape(b * k, m)).reshape(b, k, m), v


cache, run = sys.argv[1], sys.argv[2]
src = Source(open_cache(cache))
train("mtl", data=from_cache(open_cache(cache), "mtl", src), run_dir=run, progress=False,
      overrides=["train.epochs=2", "train.batch_size=8", "train.wa_hidden=16", "train.video_channels=[4,4,8,8]",
                 "train.eval_samples=2", "train.use_curriculum=false"])
torch.save(src.module.state_dict(), os.path.join(run, "rank%s.pt" % os.environ["RANK"]))
'''


@pytest.mark.slow  # ~11 s: three Python processes importing torch
def test_ddp_trainable_source_buffers_and_weights_agree_across_ranks(tmp_path):
    """2 gloo ranks see different samples, so a source's BatchNorm statistics differ per rank unless
    broadcast after each epoch, and its weights unless its gradients are averaged (DDP wraps the heads
    only); train() itself raises if the ranks' heads or source diverged."""
    import os
    import socket
    import subprocess
    import sys

    cache = write_toy_cache(tmp_path / "c", n=24)
    script = tmp_path / "ddp_source.py"
    script.write_text(_DDP_SCRIPT)
    run = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), str(cache), str(run)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s0 = torch.load(run / "rank0.pt", weights_only=True)
    s1 = torch.load(run / "rank1.pt", weights_only=True)
    assert s0["1.running_mean"].abs().sum() > 0 and s0["1.num_batches_tracked"] > 0  # BN statistics were updated
    assert not torch.equal(s0["0.weight"], torch.eye(1024))  # and the source trained
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    ck = load_checkpoint(run / CHECKPOINT)
    assert torch.equal(ck["source"]["1.running_var"], s0["1.running_var"])


def test_evaluate_finds_the_run_cache_by_hash_whatever_the_stage_name(tmp_path):
    # Stage one names a cache <stage>-<hash>; a stage may read another adapter (stages/demo.toml
    # reads the mtl adapter), so evaluate must not look the cache up by dataset.name.
    from udaqa_pipeline.cache import open_cache
    from udaqa_pipeline.engine.run import train
    from udaqa_pipeline.evaluation.evaluate import evaluate
    from udaqa_pipeline.runs.layout import RunSpec

    probe = write_toy_cache(tmp_path / "probe", n=24)
    h = open_cache(probe).manifest["config_hash"]
    root = tmp_path / "cache_root"
    cache = write_toy_cache(root / f"somestage-{h}", n=24)
    run = train("mtl", cache=cache, run_dir=tmp_path / "run", overrides=SMALL + ["train.epochs=1"],
                spec=RunSpec("mtl", protocol="paper"), progress=False)
    m = evaluate(run, cache_root=root, samples=2).metrics
    assert m["overall"]["n"] == 6  # toy_arrays' test fold: the last n // 4 of 24 rows


def test_inner_partition_deals_rows_or_whole_subjects():
    from udaqa_pipeline.config import ConfigError
    from udaqa_pipeline.engine.selection import inner_partition

    rows = np.arange(10, 31)
    plain = inner_partition(rows, 3, seed=4)
    perm = np.random.default_rng(6).permutation(rows)
    assert all(np.array_equal(f, np.sort(perm[i::3])) for i, f in enumerate(plain))  # the seeded deal
    groups = np.repeat(np.arange(7), 3)  # 7 subjects of 3 rows each
    folds = inner_partition(rows, 3, seed=4, groups=groups)
    assert np.array_equal(np.sort(np.concatenate(folds)), rows)
    for f in folds:  # every subject on one side only
        inside = set(groups[np.isin(rows, f)])
        assert all(set(groups[np.isin(rows, g)]).isdisjoint(inside) for g in folds if g is not f)
    assert sorted(len(f) for f in folds) == [6, 6, 9]
    with pytest.raises(ConfigError, match="2 subjects are too few for 3"):
        inner_partition(rows[:4], 3, seed=0, groups=np.asarray([0, 0, 1, 1]))


def test_calibration_on_few_rows_warns(toy, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="udaqa_pipeline")
    run = train("mtl", cache=toy, run_dir=tmp_path / "r", progress=False,
                overrides=SMALL + ["train.epochs=1", "train.val_fraction=0.15"])
    assert "too few for its interval widths to be trusted" in caplog.text
    assert load_checkpoint(run / CHECKPOINT)["calibration"] is not None
