"""``make bench-calibration``: the judge-panel calibration table on the demo, over seeds.

The demo's synthetic set and feature cache (``make demo``; made here when missing, reused when
there) and the demo stage (``stages/demo.toml``, honest protocol: the epoch and the calibration are
chosen on the training dives only, never on the test dives) trained with ``train.seed`` = 0 ..
``--seeds``-1 (seed 0 is the demo's own run, ``runs/demo/fold0``; the others go to
``runs/demo-calibration/seed<k>``). Each run's test dives are scored by three samplers, the rows of
the issue's table: the calibrated sampler (the default), the paper's prior draws, and baseline (b)
(the model's judge mean plus residuals of the training rows, :func:`udaqa_pipeline.evaluation.evaluate.
residual_prediction`). Writes ``bench/calibration.json``: per sampler and measure, the per-seed
values and their mean and sd (:func:`udaqa_pipeline.experiments.cv.mean_sd`); the generator's spread ceiling
(:func:`udaqa_pipeline.synth.judges.spread_ceiling`); the issue's targets checked on the means.

``--generator-seed 1`` or ``2`` (each with its own ``--cache-root``/``--runs-root``/``--out``)
measures the same on another synthetic set, the dev sets on which the calibration's fit was chosen
(``bench/calibration_dev.json``, ``bench/calibration_dev2.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
SAMPLERS = {"calibrated (default)": "calibrated", "paper's prior draws": "paper",
            "baseline (b): mean + training residuals": "residual"}
#: measure -> (where in evaluate's metrics, digits)
MEASURES = {
    "Spearman": (("overall", "spearman"), 4),
    "R-l2 x100": (("overall", "rl2x100"), 3),
    "panel coverage": (("panel", "coverage"), 3),
    "expected coverage": (("panel", "coverage_expected"), 3),
    "judge CRPS": (("panel", "crps"), 3),
    "sampled panel sd": (("panel", "sampled_sd"), 2),
    "real panel sd": (("panel", "real_sd"), 2),
    "rho(sampled sd, real sd)": (("panel", "spread_rho"), 3),
    "rho(u, real panel sd)": (("panel", "uncertainty_vs_spread_rho"), 3),
    "judge NLL (KDE)": (("panel", "nll"), 3),
    "final 80% coverage": (("final", "0.8"), 3),
}


def _measures(m: dict) -> dict[str, float]:
    panel = next(iter(m["panel"].values()))
    src = {"overall": m["overall"], "panel": panel, "final": m["final_calibration"]["interval_coverage"]}
    return {name: float(src[a][b]) for name, ((a, b), _) in MEASURES.items()}


def targets(table: dict) -> dict[str, dict]:
    """The calibration targets on the demo (README "Judge panels and intervals"), each {"target", "value", "met"} on seed means."""
    cal, paper, base = (table[k] for k in SAMPLERS)
    mean = lambda row, k: row[k]["mean"]  # noqa: E731
    cov, crps = mean(cal, "panel coverage"), mean(cal, "judge CRPS")
    return {
        "panel coverage within 0.05 of 0.75": {"value": cov, "met": abs(cov - 0.75) <= 0.05},
        "panel coverage within 0.05 of the sampler's expected coverage": {
            "value": cov - mean(cal, "expected coverage"), "met": abs(cov - mean(cal, "expected coverage")) <= 0.05},
        "judge CRPS <= 0.75 x the paper sampler's": {"value": crps / mean(paper, "judge CRPS"),
                                                     "met": crps <= 0.75 * mean(paper, "judge CRPS")},
        "judge CRPS below baseline (b)": {"value": crps - mean(base, "judge CRPS"), "met": crps < mean(base, "judge CRPS")},
        "rho(u, real panel sd) >= 0.4": {"value": mean(cal, "rho(u, real panel sd)"),
                                         "met": mean(cal, "rho(u, real panel sd)") >= 0.4},
        "final 80% coverage in 0.70-0.90": {"value": mean(cal, "final 80% coverage"),
                                            "met": 0.70 <= mean(cal, "final 80% coverage") <= 0.90},
        "Spearman no worse than the paper sampler's - 0.01": {
            "value": mean(cal, "Spearman") - mean(paper, "Spearman"),
            "met": mean(cal, "Spearman") >= mean(paper, "Spearman") - 0.01},
    }


#: The README's columns (the JSON holds every measure).
README_COLUMNS = ["Spearman", "R-l2 x100", "panel coverage", "expected coverage", "judge CRPS", "sampled panel sd",
                  "final 80% coverage", "judge NLL (KDE)"]


def markdown(res: dict, columns: list[str] = README_COLUMNS) -> str:
    """The README's table: one row per sampler, one column per measure, mean +- sd over seeds."""
    from udaqa_pipeline.experiments.cv import mean_sd_text

    names = list(columns)
    lines = ["| sampler | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row, ms in res["table"].items():
        cells = [mean_sd_text(ms[k], MEASURES[k][1]) for k in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.calibration", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="training seeds 0..K-1 (default 5)")
    ap.add_argument("--samples", type=int, default=50, help="sampled panels per test dive (default 50)")
    ap.add_argument("--generator-seed", type=int, default=None,
                    help="the synthetic set's seed (default: the demo's); another seed is the dev set the "
                         "sampler's design was chosen on: give it its own --cache-root and --runs-root")
    ap.add_argument("--cache-root", type=Path, default=None, help="cache root (default: the demo's)")
    ap.add_argument("--runs-root", type=Path, default=None, help="runs root (default: the demo's)")
    ap.add_argument("--out", type=Path, default=HERE / "calibration.json")
    args = ap.parse_args(argv)

    from udaqa_pipeline.config import runs_root
    from udaqa_pipeline.experiments.cv import mean_sd
    from udaqa_pipeline.evaluation.evaluate import evaluate
    from udaqa_pipeline.evaluation.report import write_report
    from udaqa_pipeline.experiments.demo import DEFAULT_SEED, STAGE, run_demo
    from udaqa_pipeline.fileutil import strict_json
    from udaqa_pipeline.synth.judges import spread_ceiling
    from udaqa_pipeline.engine.run import train

    t0 = time.perf_counter()
    gseed = DEFAULT_SEED if args.generator_seed is None else args.generator_seed
    # the set, its cache and training seed 0's run (all reused when there)
    demo = run_demo(progress=False, seed=gseed, cache_root=args.cache_root, runs_root=args.runs_root)
    per_seed: dict[str, list[dict]] = {k: [] for k in SAMPLERS}
    fits = []
    for seed in range(args.seeds):
        t = time.perf_counter()
        rd = Path(demo["run"]) if seed == 0 else train(
            STAGE, cache=demo["cache"], run_dir=runs_root(args.runs_root) / f"{STAGE}-calibration" / f"seed{seed}",
            overrides=[f"train.seed={seed}"], progress=False)
        train_s = time.perf_counter() - t  # small when a finished run was reused (seed 0: the demo's)
        for name, sampler in SAMPLERS.items():
            m = write_report(evaluate(rd, cache=demo["cache"], samples=args.samples, sampler=sampler), make_plots=False)
            per_seed[name].append(_measures(m))
            if sampler == "calibrated":
                cal = next(iter(m["runs"].values()))["calibration"]
                fits.append({"seed": seed, "run": str(rd), "train_s": round(train_s, 1),
                             **{k: cal[k] for k in ("mu", "tau", "sigma")}})
        print(f"seed {seed}: " + "; ".join(f"{n.split(':')[0]} CRPS {per_seed[n][-1]['judge CRPS']:.3f}"
                                           for n in SAMPLERS), flush=True)
    table = {name: {k: mean_sd([r[k] for r in rows]) for k in MEASURES} for name, rows in per_seed.items()}
    res = {"protocol": "honest", "stage": STAGE, "data": demo["data"], "n_test": demo["n_test"],
           "seeds": list(range(args.seeds)), "samples": args.samples, "table": table,
           "fits": fits,  # each run's calibration, fractions of the label range
           "generator_seed": gseed,
           "spread_ceiling": {"rho": spread_ceiling(gseed), "generator_seed": gseed,
                              "what": "Spearman(expected panel sd, one panel's sd) of an oracle, 1000 dives"}}
    res["targets"] = targets(table)
    res["command"] = f"python -m bench.calibration --seeds {args.seeds} --samples {args.samples}" + (
        f" --generator-seed {gseed}" if args.generator_seed is not None else "")
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(strict_json(res, indent=1) + "\n")
    print(markdown(res))
    print(f"spread ceiling on the generator: rho {res['spread_ceiling']['rho']:.3f}")
    for k, v in res["targets"].items():
        print(f"  {'met    ' if v['met'] else 'NOT met'}  {k}  ({v['value']:.3f})")
    print(f"-> {args.out} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
