"""`udaqa-pipeline features` and `cache info|verify` end to end, with the real Kinetics I3D weights
(`make test` fetches them first) on tiny generated videos and a small stage config."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from test_cache_util import TINY, make_dataset
from udaqa_pipeline.backbone.weights import weights_sha256
from udaqa_pipeline.cache import open_cache
from udaqa_pipeline.cli import main


def _sets() -> list[str]:
    return [x for kv in TINY for x in ("--set", kv)]


def test_features_cli_real_weights_info_verify(tmp_path):
    root = make_dataset(tmp_path / "data", {"good": 14, "broken": "corrupt"})
    base = ["features", "folder", "--root", str(root), "--cache-root", str(tmp_path / "cache"), "--batch-size", "2",
            "--no-progress", *_sets()]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path / "cache" and path.name.startswith("folder-")
    c = open_cache(path)
    assert c.manifest["weights_sha256"] == weights_sha256() and c.manifest["dtype"] == "fp32"
    f = c.features[0, 0]
    assert f.shape == (2, 1024) and np.isfinite(f).all() and f.std() > 0 and (f >= 0).all()  # post-ReLU pool
    assert c.samples.column("status").to_pylist() == ["ok", "corrupt"]

    r = CliRunner().invoke(main, ["cache", "info", str(path), "--json"])
    info = json.loads(r.stdout)
    assert info["complete"] and info["counts"] == {"ok": 1, "corrupt": 1} and info["features_shape"] == [2, 1, 2, 1024]

    # --strict fails on the recorded failure; --backend zarr adds a store to the same (complete) cache
    assert CliRunner().invoke(main, base + ["--strict"]).exit_code == 1
    assert CliRunner().invoke(main, base + ["--backend", "zarr"]).exit_code == 0
    assert open_cache(path, backend="zarr").features.tobytes() == c.features.tobytes()

    assert CliRunner().invoke(main, ["cache", "verify", str(path)]).exit_code == 0
    with h5py.File(path / "features.h5", "r") as h:
        off = h["video"].id.get_chunk_info(0).byte_offset
    with open(path / "features.h5", "r+b") as fh:
        fh.seek(off + 5)
        b = fh.read(1)
        fh.seek(off + 5)
        fh.write(bytes([b[0] ^ 0x80]))
    r = CliRunner().invoke(main, ["cache", "verify", str(path), "--json"])
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert len(report["problems"]) == 1, report["problems"]  # the flipped chunk, nothing else
    assert report["problems"][0].startswith("features.h5/video: row 0 (good): chunk checksum")
    assert report["checked"]["features.h5"] == {"samples": 2, "bad_chunks": 1}
