"""``make demo``: the whole pipeline on the built-in synthetic diving set, on a CPU, in minutes.

``python -m udaqa_pipeline.experiments.demo [--n N] [--seed S] [--epochs E] [--fresh] [--set SECTION.KEY=VALUE]``

1. Dataset: :mod:`udaqa_pipeline.synth` writes ``N`` dives in the MTL-AQA layout under
   ``<cache root>/demo-data`` (reused when a complete set of the same size, seed and generator
   version is there).
2. Stage one: :func:`udaqa_pipeline.cache.extract.extract_features` with ``stages/demo.toml`` (the
   MTL-AQA frame/clip/preprocess settings, the ``mtl`` adapter, the real Kinetics I3D); reused when
   the cache for these settings is complete, and the output says so.
3. Stage two: :func:`udaqa_pipeline.engine.run.train` with the demo's short schedule (``[train]`` of
   ``stages/demo.toml``) into ``<runs root>/demo/fold0``; a finished run of the same cache and config
   is reused (the trainer resumes to its last epoch and has nothing left to do), a run left by
   another cache or config is replaced.
4. :func:`udaqa_pipeline.evaluation.evaluate.evaluate` on the test split (and the
   :mod:`~udaqa_pipeline.evaluation.report` files), then the printout: Spearman and
   R-l2 x100 of the model, R-l2 x100 of the trivial baseline (predict the mean final score of the
   training split), the execution-only Spearman (predicted vs real middle-3 sums, i.e. with the
   known difficulty factored out, so the number cannot come from DD alone), one test dive's sampled
   panel beside its real panel with the predicted uncertainty, and the paths of plots and
   predictions.

The default size (``DEFAULT_DIVES``) is set by the 10-minute budget of a fresh ``make demo`` on 2
CPU cores, venv and weights included: stage one costs about 10 I3D clips per dive.
Exit status: 0 when every stage ran (the success criterion is printed, not enforced), 1 when a stage
failed (its error is printed with the stage's name).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import cache_root as _cache_root, runs_root as _runs_root
from ..logs import log_to_stderr

log = logging.getLogger(__name__)

STAGE = "demo"
DEFAULT_DIVES = 72
DEFAULT_SEED = 0
DATA_DIR = "demo-data"


class StageFailed(RuntimeError):
    def __init__(self, stage: str, exc: BaseException) -> None:
        super().__init__(f"{stage} failed: {type(exc).__name__}: {exc}")
        self.stage = stage


def _stage(name: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failed stage of the demo is reported, not re-raised
        raise StageFailed(name, exc) from exc


def trivial_baseline(train_finals: np.ndarray, test_finals: np.ndarray) -> float:
    """R-l2 x100 of predicting the training mean for every test dive (R-l2 with the test range)."""
    from ..metrics import relative_l2

    pred = np.full(len(test_finals), float(np.mean(train_finals)))
    return relative_l2(np.asarray(test_finals, float), pred)


def execution_spearman(true_final: np.ndarray, pred_final: np.ndarray, difficulty: np.ndarray) -> float:
    """Spearman of predicted vs real execution (final / DD = the middle-3 sum under the MTL rule)."""
    from ..metrics import spearman

    d = np.asarray(difficulty, float)
    return spearman(np.asarray(true_final, float) / d, np.asarray(pred_final, float) / d)


def pick_dive(uncertainty: np.ndarray) -> int:
    """The test dive to show: the one with the median predicted uncertainty (neither the model's
    most confident nor its least: a typical case)."""
    order = np.argsort(np.asarray(uncertainty, float), kind="stable")
    return int(order[len(order) // 2])


def _fmt_panel(p: list[float] | np.ndarray) -> str:
    return " ".join(f"{x:4.1f}" for x in p)


def _train_stage(cache_dir: Path, run_dir: Path, overrides: list[str], progress: bool,
                 say: Callable[[str], None]) -> tuple[Path, bool]:
    """Train (or reuse) the demo run; returns (run_dir, reused)."""
    from .. import config
    from ..engine.run import train
    from ..runs.checkpoint import CheckpointError, load_checkpoint
    from ..runs.layout import CHECKPOINT

    ckpt = run_dir / CHECKPOINT
    epochs = config.resolve(STAGE, overrides).train.epochs
    before = None
    if ckpt.exists():
        try:
            before = int(load_checkpoint(ckpt)["epoch"]) + 1
        except Exception:  # noqa: BLE001 - an unreadable old checkpoint is replaced below
            before = None
    try:
        train(STAGE, cache=cache_dir, run_dir=run_dir, overrides=overrides, progress=progress)
    except CheckpointError as exc:
        say(f"stage two: the previous demo run in {run_dir} cannot be resumed ({exc}); starting a fresh one")
        shutil.rmtree(run_dir)
        before = None
        train(STAGE, cache=cache_dir, run_dir=run_dir, overrides=overrides, progress=progress)
    return run_dir, before is not None and before >= epochs


def run_demo(*, n_dives: int = DEFAULT_DIVES, seed: int = DEFAULT_SEED, epochs: int | None = None,
             fresh: bool = False, cache_root: str | Path | None = None, runs_root: str | Path | None = None,
             progress: bool = True, samples: int = 50, overrides: tuple[str, ...] = (),
             synth_config: Any = None, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run the demo; returns a dict of what it reported (paths, metrics, timings, reuse flags) and
    writes it (less the metrics and the dive) to ``<run>/eval/demo.json``.

    ``overrides`` (``section.key=value``) go to both stages; ``synth_config`` (a
    :class:`~udaqa_pipeline.synth.SynthConfig`) replaces the default set of ``n_dives``/``seed``
    (the end-to-end test uses a short one). ``say`` gets each line of the report as it is known
    (default: this module's logger; :func:`main` prints them). Raises :class:`StageFailed` naming
    the stage when one fails.
    """
    from .. import synth

    t_all = time.perf_counter()
    croot = _cache_root(cache_root).resolve()
    run_dir = _runs_root(runs_root).resolve() / STAGE / "fold0"
    data_dir = croot / DATA_DIR
    ov = list(overrides) + ([f"train.epochs={int(epochs)}"] if epochs is not None else [])
    timings: dict[str, float] = {}
    res: dict[str, Any] = {"data": str(data_dir), "run": str(run_dir), "timings": timings}
    gen = generate_step(data_dir, synth_config or synth.SynthConfig(n_dives=n_dives, seed=seed), fresh, res, say)
    cache_dir = stage_one_step(data_dir, croot, ov, progress, gen["n_dives"], res, say)
    stage_two_step(cache_dir, run_dir, ov, progress, res, say)
    m, base_m = evaluate_step(run_dir, cache_dir, samples, res)
    for line in summary_lines(res, m, base_m, cache_dir, run_dir, samples):
        say(line)
    timings["total"] = time.perf_counter() - t_all
    say(f"  demo took {timings['total']:.0f} s (dataset {timings['dataset']:.0f}, stage one "
        f"{timings['stage_one']:.0f}, stage two {timings['stage_two']:.0f}, evaluation {timings['evaluate']:.0f})")
    (run_dir / "eval" / "demo.json").write_text(json.dumps(
        {k_: v for k_, v in res.items() if k_ not in ("metrics", "dive")}, indent=1, default=float) + "\n")
    return res


def generate_step(data_dir: Path, scfg: Any, fresh: bool, res: dict[str, Any], say: Callable[[str], None]) -> dict:
    """Step 1: the synthetic set in ``data_dir`` (reused unless ``fresh``); :func:`synth.generate`'s dict."""
    from .. import synth

    t = time.perf_counter()
    gen = _stage("dataset generation", synth.generate, data_dir, scfg, reuse=not fresh)
    res["timings"]["dataset"] = time.perf_counter() - t
    res["data_reused"] = bool(gen["reused"])
    how = "reusing the existing set" if gen["reused"] else f"generated in {res['timings']['dataset']:.1f} s"
    say(f"[1/4] dataset: {gen['n_dives']} synthetic dives ({gen['n_train']} train / {gen['n_test']} test) "
        f"in the MTL-AQA layout at {data_dir} - {how}")
    return gen


def stage_one_step(data_dir: Path, croot: Path, ov: list[str], progress: bool, n_dives: int, res: dict[str, Any],
                   say: Callable[[str], None]) -> Path:
    """Step 2: the frozen-I3D feature cache of the set (reused when complete); its directory."""
    from .. import config, resolve
    from ..cache.extract import extract_features

    t = time.perf_counter()
    st: dict[str, Any] = {}
    cache_dir = Path(_stage("stage one (features)", lambda: extract_features(
        STAGE, config.resolve(STAGE, ov), data_dir, cache_root=croot, device=resolve.device(), progress=progress,
        stats=st, strict=True)))
    res["timings"]["stage_one"] = elapsed = time.perf_counter() - t
    res["cache"] = str(cache_dir)
    res["cache_reused"] = bool(st.get("reused"))
    if res["cache_reused"]:
        say(f"[2/4] stage one: reusing the feature cache {cache_dir} (complete for these settings; "
            f"nothing extracted)")
    else:
        per = elapsed / max(n_dives, 1)
        say(f"[2/4] stage one: frozen I3D features of {n_dives} dives in {elapsed:.0f} s "
            f"({per:.1f} s per dive) -> {cache_dir}")
    return cache_dir


def stage_two_step(cache_dir: Path, run_dir: Path, ov: list[str], progress: bool, res: dict[str, Any],
                   say: Callable[[str], None]) -> None:
    """Step 3: train the demo run into ``run_dir`` (a finished one of the same cache and config is reused)."""
    t = time.perf_counter()
    _, train_reused = _stage("stage two (training)", _train_stage, cache_dir, run_dir, ov, progress, say)
    res["timings"]["stage_two"] = time.perf_counter() - t
    res["run_reused"] = train_reused
    if train_reused:
        say(f"[3/4] stage two: reusing the finished run {run_dir} (same cache and config)")
    else:
        say(f"[3/4] stage two: trained in {res['timings']['stage_two']:.0f} s -> {run_dir}")


def evaluate_step(run_dir: Path, cache_dir: Path, samples: int, res: dict[str, Any]) -> tuple[dict, dict[str, dict]]:
    """Step 4: evaluate the run with the calibrated sampler (``<run>/eval``, with plots) and with the
    calibration table's two baselines (``<run>/eval-paper``, ``<run>/eval-residual``, no plots), on the
    same run and test dives; (the calibrated metrics, {sampler: metrics})."""
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import write_report

    def metrics(sampler: str, plots: bool) -> dict:
        return write_report(evaluate(run_dir, cache=cache_dir, samples=samples, sampler=sampler), make_plots=plots)

    t = time.perf_counter()
    m = _stage("evaluation", metrics, "calibrated", True)
    base_m = {s: _stage("evaluation", metrics, s, False) for s in ("paper", "residual")}
    res["timings"]["evaluate"] = time.perf_counter() - t
    return m, base_m


def summary_lines(res: dict[str, Any], m: dict, base_m: dict[str, dict], cache_dir: Path, run_dir: Path,
                  samples: int) -> list[str]:
    """The report of the evaluation (model against the trivial baseline, the samplers' panel
    calibration, one test dive, the output paths); fills ``res`` with its numbers."""
    import pyarrow.parquet as pq

    from ..cache import open_cache

    pred_path = run_dir / "eval" / "predictions.parquet"
    pred = pq.read_table(pred_path).to_pylist()
    tab = open_cache(cache_dir).samples.to_pylist()
    by_id = {r["id"]: r for r in tab}
    train_finals = np.array([r["final_score"] for r in tab if r["fold"] != 0 and r["status"] == "ok"])
    y = np.array([p["true_final"] for p in pred])
    base = trivial_baseline(train_finals, y)
    rho, rl2 = float(m["overall"]["spearman"]), float(m["overall"]["rl2x100"])
    exe = execution_spearman(y, np.array([p["pred_final"] for p in pred]), np.array([by_id[p["id"]]["difficulty"]
                                                                                      for p in pred]))
    res.update(spearman=rho, rl2x100=rl2, baseline_rl2x100=base, execution_spearman=exe,
               n_test=len(pred), protocol=m["protocol"], metrics=m)
    ok = rho > 0.5 and rl2 < base
    res["criterion_met"] = ok
    d = pred[pick_dive(np.array([p["uncertainty"] for p in pred]))]
    res["dive"] = d
    lines = [f"[4/4] evaluation on the {len(pred)} test dives ({m['protocol']} protocol: epoch chosen on a "
             f"validation split of the training dives)", "",
             f"  Spearman                      {rho:7.4f}",
             f"  R-l2 x100                     {rl2:7.4f}",
             f"  R-l2 x100, trivial baseline   {base:7.4f}   (predict the training mean, {train_finals.mean():.2f})",
             f"  Spearman of execution only    {exe:7.4f}   (final / DD: what the model adds to the known DD)"]
    if "panel" in m:
        lines += _calibration_lines(res, m, base_m, len(pred))
    lines.append(f"  success criterion (Spearman > 0.5 and R-l2 below the baseline): {'met' if ok else 'NOT met'}")
    row = by_id[d["id"]]
    lines += ["", f"  test dive {d['id']} ({row['action']}, DD {row['difficulty']:.1f}):",
              f"    sampled panel  {_fmt_panel(d['pred_judges'])}   -> final {d['pred_final']:6.2f} "
              f"+- {d['pred_final_std']:.2f}, 80% interval {d['pred_final_lo80']:.2f}-{d['pred_final_hi80']:.2f} "
              f"({samples} sampled panels)",
              f"    real panel     {_fmt_panel(d['real_judges'])}   -> final {d['true_final']:6.2f}",
              f"    uncertainty    {d['uncertainty']:.4f}", "", "  outputs:"]
    lines += [f"    plot         {p}" for p in m.get("plots", [])]
    lines += [f"    predictions  {pred_path}", f"    metrics      {run_dir / 'eval' / 'metrics.json'}"]
    return lines


def _final80(mm: dict) -> float:
    """The final score's 80% interval coverage; nan when there were too few draws for one."""
    return (mm.get("final_calibration") or {}).get("interval_coverage", {}).get("0.8", float("nan"))


def _calibration_lines(res: dict[str, Any], m: dict, base_m: dict[str, dict], n_test: int) -> list[str]:
    """The judge-panel table of the three samplers; sets ``res["calibration"]``."""
    cal = next(iter(m["runs"].values())).get("calibration")
    lines = [f"  judge panels, {n_test} test dives ({m['protocol']} protocol; calibration fitted on the "
             f"{cal['fitted_on'] if cal else 'nothing: none fitted'}):",
             f"    {'sampler':<34s}{'coverage':>10s}{'expected':>10s}{'CRPS':>8s}{'panel sd':>10s}{'final 80%':>11s}"]
    rows = [("calibrated (default)", m), ("paper's prior draws", base_m["paper"]),
            ("mean + training residuals", base_m["residual"])]
    for name, mm in rows:
        for pm in mm["panel"].values():
            lines.append(f"    {name:<34s}{pm['coverage']:>10.2f}{pm['coverage_expected']:>10.2f}{pm['crps']:>8.3f}"
                         f"{pm['sampled_sd']:>10.2f}{_final80(mm):>11.2f}")
    pm = next(iter(m["panel"].values()))
    res["calibration"] = {name: {"coverage": p_["coverage"], "expected_coverage": p_["coverage_expected"],
                                 "crps": p_["crps"], "final_coverage80": _final80(mm)}
                          for name, mm in rows for p_ in [next(iter(mm["panel"].values()))]}
    lines += [f"    coverage: share of real judges inside a sampled panel; expected: the sampler's own share "
              f"(of its other panels' judges), {pm['coverage_nominal']:.2f} for i.i.d. judges",
              f"    real panel sd {pm['real_sd']:.2f}; rho(uncertainty u, real judge spread) "
              f"{pm['uncertainty_vs_spread_rho']:.3f}"]
    return lines


def parser() -> argparse.ArgumentParser:
    """The demo's options, spelled as in the ``udaqa-pipeline`` commands (``--set``,
    ``--progress/--no-progress``, ``--cache-root``)."""
    ap = argparse.ArgumentParser(prog="python -m udaqa_pipeline.experiments.demo", description=__doc__.split("\n\n")[0],
                                 allow_abbrev=False)
    ap.add_argument("--n", type=int, default=DEFAULT_DIVES, help=f"dives to generate (default {DEFAULT_DIVES})")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs of stages/demo.toml")
    ap.add_argument("--fresh", action="store_true", help="regenerate the dataset even if a matching one exists")
    ap.add_argument("--cache-root", default=None, help="cache root (default <repo>/cache or $UDAQA_CACHE)")
    ap.add_argument("--runs-root", default=None, help="runs root (default <repo>/runs or $UDAQA_RUNS)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="progress bars (default: on)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="stage config override for both stages, e.g. --set train.lr=3e-4 (repeatable)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit status 1 when a stage failed (the error in one line, with the traceback
    when it is not an error raised on purpose, i.e. a bug)."""
    import traceback

    from ..errors import UdaqaError

    a = parser().parse_args(argv)
    log_to_stderr()
    try:
        run_demo(n_dives=a.n, seed=a.seed, epochs=a.epochs, fresh=a.fresh, cache_root=a.cache_root,
                 runs_root=a.runs_root, progress=a.progress, overrides=tuple(a.overrides),
                 say=lambda line: print(line, flush=True))
    except StageFailed as exc:
        if not isinstance(exc.__cause__, UdaqaError):
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
