"""Run every benchmark part in one process and write ``bench/results.json``.

Each part is a module in this folder with ``run(quick: bool) -> dict``. Figures that are compared
(e.g. I3D vs a dense conv3d, extraction vs model-only) are always measured inside the same part,
back to back, because these machines are shared and noisy: report ratios, not absolute seconds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path

import torch

PARTS = ("bench_i3d", "bench_extract", "bench_decode", "bench_train", "bench_finetune", "bench_adapt",
         "bench_classify")
OUT = Path(__file__).resolve().parent / "results.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=PARTS, help="run only these parts")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = ap.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results["machine"] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in args.only or PARTS:
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            continue
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        part = mod.run(quick=args.quick)
        part["wall_s"] = round(time.perf_counter() - t0, 1)
        results[name] = part
        print(json.dumps(part, indent=2), flush=True)
        OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
