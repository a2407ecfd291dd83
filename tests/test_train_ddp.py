"""DDP through torchrun: 2 CPU processes with gloo train one run; ranks must end identical
(train() all-gathers a parameter checksum and raises on divergence) and rank 0 writes the run."""

import json
import os
import socket
import subprocess
import sys

from udaqa_pipeline.testing import write_toy_cache
from udaqa_pipeline.inference.run import load_run
from udaqa_pipeline.runs.checkpoint import CHECKPOINT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tmp_path):
    cache = write_toy_cache(tmp_path / "c", n=24)
    run = tmp_path / "run"
    sets = []
    for s in ["train.epochs=2", "train.batch_size=8", "train.wa_hidden=16",
              "train.video_channels=[4,4,8,8]", "train.eval_samples=2"]:
        sets += ["--set", s]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "udaqa_pipeline", "train", "mtl", "--cache", str(cache), "--run-dir", str(run),
           "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # rank 0 alone wrote the log
    assert (run / CHECKPOINT).exists()
    assert load_run(run).checkpoint["epoch"] == 1
