"""Stage one: decode -> L frames -> K clips -> frozen I3D -> staged samples -> merged cache.

:func:`extract_features` is the whole stage (``udaqa-pipeline features`` is a thin shell over it);
:func:`featurize` is the same computation for one already-sampled video (scoring a user's video).

Design choices:

- Labels are not features. The cache directory is named by the feature settings alone
  (:func:`.manifest.extraction_key`); every run reads the annotation files, extracts only the store
  rows the cache lacks (a new source, frame window or source size), adopts rows from a schema-1
  cache of the same settings, and rewrites the label table (``samples.parquet``: labels, folds,
  groups, judge panels) when it changed. A label fix is no I3D work and loads no model (:mod:`.plan`).
- Frozen I3D in inference mode (``prepare_for_inference``: eval, BatchNorm folded, channels-last)
  under ``torch.inference_mode``; the GPU when present (``cuda:LOCAL_RANK`` under torchrun), else CPU.
- Clips are batched *across videos*: every forward is exactly ``batch_size`` clips (default 16 on
  CPU, 64 on GPU), the last batch padded with zero clips. A fixed batch shape makes each clip's
  feature independent of which other clips share its batch (the kernels are picked by shape; with
  a varying batch, CPU results differ at ~1e-11), so a resumed or sharded run gives bit-identical
  features. ``batch_size`` is recorded in the manifest and a resumed run reuses it.
  The same holds for the CPU thread count (oneDNN picks other kernels for 1 thread than for several),
  so ``torch_threads`` is recorded too: bit-identical resumes/merges need the same device, batch
  size and thread count (torchrun sets ``OMP_NUM_THREADS=1`` per rank unless you set it); otherwise
  features agree to ~1e-6 relative, far below anything stage two can see.
- Decoding + preprocessing (``sample_frames``, ``i3d_input``, ``downsample_video``) run in
  ``threads`` threads (default: half the cores, 2 to 8) (PyAV, Pillow and torch resizing release the GIL) up to ``threads + 2``
  videos ahead of the model, so decoding hides behind the forward passes; the staged writes run in
  one more thread.
- ``dtype="fp32"`` by default; ``"bf16"`` runs the forward under bfloat16 autocast (faster on
  recent GPUs, features differ at ~1e-2 relative, so dtype is part of the cache hash).
- Views (``views`` V, default 1): view 0 is the plain centre view used for testing; extra views
  are, in order, horizontal flip, window shifted +s / -s frames, flip with +s / -s, then 2s, ...
  (``s = cache.view_shift``, default 3 as CoRe's +-3 frame temporal jitter). A shift moves the L
  sampled frames by s with the edge frame repeated (the clip layout stays the same), so it needs no
  extra decoding. **Cost: V times the I3D work** (decoding is shared), V times the feature bytes.
  Stage two draws one view per sample per epoch to recover the augmentation a frozen cache loses.
- Failure isolation: a missing, corrupt, truncated or too-short video, a frame folder with a gap in
  the window (or any other error while reading one sample) is staged with ``status`` = ``missing`` /
  ``corrupt`` / ``too_short`` / ``error`` (from ``VideoError.kind``, see :data:`STATUS_OF_KIND`) and
  the message; the run goes on and prints a summary. :class:`ExtractionError` is raised only with
  ``strict=True`` (any failure) or when no sample succeeded.
- The summary counts plain ``ok`` samples apart from ``short`` ones (padded with their last frame;
  the shortest is named with its length) and gap-filled ones (``frames.gap_policy = "nearest"``,
  noted in the ``error`` column of an ``ok`` row as ``filled: ...``); ``cache info`` shows the same
  under ``padded`` (:func:`~.verify.padding_summary`).
- Nothing lost: see :mod:`.merge` (atomic staged samples, merge by rename) and :mod:`.lock`; the
  rows of samples removed from the annotation files stay in the store (:mod:`.plan`).
"""

from __future__ import annotations

import copy

import hashlib
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from ..config import DEFAULTS, DTYPES, apply_overrides, cache_root as _cache_root, check_value, load_stage
from ..features import (default_batch_size, failure_status, forward_clips, layout_of, make_views, video_size_of,
                        view_input)
from .lock import CacheLock
from .manifest import (
    FEATURE_DIM,
    SAMPLES,
    SCHEMA_VERSION,
    STORE_NAMES,
    CacheError,
    extraction_key,
    key_hash,
    read_manifest,
    write_manifest,
)
from .legacy import find_legacy
from .merge import existing_rows, merge_cache, missing_jobs, refresh_labels, write_plan
from .plan import base_rows, build_plan, describe_changes, keep_staged, label_changes
from .shard import Shard, parse_shard, shard_indices, torchrun_env
from .staging import cleanup_staging, drop_failed_staged, shard_dir, staged_files, write_staged
from .store import add_backend, now_iso
from .verify import FILLED_NOTE, padding_summary



class ExtractionError(CacheError):
    """Raised after the summary when ``strict`` and a sample failed, or when nothing succeeded."""

    def __init__(self, message: str, path: Path, counts: Mapping[str, int]) -> None:
        super().__init__(message)
        self.path = path
        self.counts = dict(counts)


# ----------------------------------------------------------------------------- pure helpers


def filled_note(filled) -> str:
    """The sample-table note for frame numbers filled from a neighbour ("" when none were)."""
    if not filled:
        return ""
    from ..video.decode import number_ranges

    return (f"{FILLED_NOTE} frame numbers {number_ranges(filled)} missing from the folder, each taken from its nearest "
            f"frame (frames.gap_policy = \"nearest\")")


def default_workers() -> int:
    """Decoding threads: half the cores, 2 to 8 (the model's own threads need the rest on CPU; on a
    GPU, raise ``--threads`` until videos/s stops growing)."""
    return min(8, max(2, (os.cpu_count() or 2) // 2))


def state_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (sorted keys), for caches made with a model passed in directly."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def stage_name(dataset: str | Path) -> str:
    p = Path(dataset)
    return p.stem if p.suffix == ".toml" else str(dataset)


def resolve_config(
    dataset: str | Path,
    overrides: Iterable[str] = (),
    *,
    backend: str | None = None,
    views: int | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Stage config with ``section.key=value`` overrides, then the explicit keyword settings."""
    cfg = apply_overrides(load_stage(dataset), list(overrides))
    c = cfg.setdefault("cache", {})
    for key, value in (("backend", backend), ("views", views), ("dtype", dtype)):
        if value is not None:
            c[key] = check_value(f"cache.{key}", value, source="argument")
    for key, value in DEFAULTS["cache"].items():
        c.setdefault(key, copy.deepcopy(value))
    if c["backend"] not in STORE_NAMES:
        raise CacheError(f"cache.backend {c['backend']!r}: use one of {', '.join(STORE_NAMES)}")
    if c["dtype"] not in DTYPES:
        raise CacheError(f"cache.dtype {c['dtype']!r}: use one of {', '.join(DTYPES)}")
    return cfg


# ----------------------------------------------------------------------------- the run


@dataclass
class _Pending:
    xs: list[torch.Tensor]
    video: np.ndarray
    record: dict[str, Any]
    feats: np.ndarray
    remaining: int


def _prepare(sample: Any, cfg: Mapping[str, Any], views: Sequence[Mapping[str, Any]]):
    """Worker: decode + preprocess one sample -> (record, [view inputs], video) or (record, None, None)."""
    from ..datasets.frames import sample_frames
    from ..video.transforms import downsample_video

    try:
        sf = sample_frames(sample, cfg)
        frames = sf.frames
        L = int(cfg["frames"]["n_frames"])
        if frames.shape[0] != L:
            raise ValueError(f"sample_frames returned {frames.shape[0]} frames, the config asks for {L}")
        xs = [view_input(frames, cfg, v) for v in views]
        video = downsample_video(frames, video_size_of(cfg))
        record = {"id": str(sample.id), "status": "ok", "error": filled_note(sf.filled),
                  "n_source_frames": int(sf.n_source_frames), "short": bool(sf.short),
                  "frame_indices": [int(i) for i in np.asarray(sf.indices).tolist()]}
        return record, xs, video
    except Exception as e:  # noqa: BLE001 - one bad video must never stop the run; recorded below
        return {"id": str(sample.id), "status": failure_status(e), "error": f"{type(e).__name__}: {e}"}, None, None


def run_shard(
    samples: Sequence[Any] | Mapping[int, Any],
    indices: Sequence[int],
    out_dir: Path,
    model: torch.nn.Module,
    cfg: Mapping[str, Any],
    views: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    workers: int = 2,
    dtype: str = "fp32",
    progress: bool = True,
    initial: int = 0,
    total: int | None = None,
    records: Mapping[int, Mapping[str, Any]] | None = None,
    on_sample: Callable[[int, dict], None] | None = None,
) -> dict[str, Any]:
    """Extract ``samples[i]`` for ``i`` in ``indices`` into staged files in ``out_dir``, each named
    ``records[i]["name"]`` (default: ``i`` on 7 digits), its record holding ``records[i]`` too (the
    row identity: a staged row is found again whatever the plan becomes).

    Returns stats: processed count, seconds, videos/s, status counts.
    """
    from tqdm import tqdm

    layout = layout_of(cfg)
    K, T, V = len(layout.starts), layout.clip_len, len(views)
    pending: dict[int, _Pending] = {}
    clip_queue: deque[tuple[int, int, int]] = deque()
    counts: dict[str, int] = {}
    writes: deque[Future] = deque()
    todo = iter(indices)
    ahead: deque[tuple[int, Future]] = deque()
    prefetch = max(1, workers) + 2
    t0 = time.perf_counter()
    n_done = 0
    bar = tqdm(total=total if total is not None else len(indices), initial=initial, unit="video",
               disable=not progress, dynamic_ncols=True, smoothing=0.1, desc=out_dir.name)

    def finish(i: int, record: dict, feats: np.ndarray | None = None, video: np.ndarray | None = None) -> None:
        nonlocal n_done
        record.update(records[i] if records is not None else {"name": f"{i:07d}"})
        writes.append(writer.submit(write_staged, out_dir, record["name"], record, feats, video))
        while len(writes) > 8 or (writes and writes[0].done()):
            writes.popleft().result()  # surfaces write errors; bounds memory held by queued writes
        counts[record["status"]] = counts.get(record["status"], 0) + 1
        n_done += 1
        bar.update(1)
        bar.set_postfix({k: v for k, v in sorted(counts.items())}, refresh=False)
        if on_sample is not None:
            on_sample(i, record)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="stage-write") as writer:

        def refill() -> None:
            while len(ahead) < prefetch:
                i = next(todo, None)
                if i is None:
                    return
                ahead.append((i, pool.submit(_prepare, samples[i], cfg, views)))

        refill()
        while ahead or clip_queue:
            while len(clip_queue) < batch_size and ahead:
                i, fut = ahead.popleft()
                refill()
                record, xs, video = fut.result()
                if xs is None:
                    finish(i, record)
                    continue
                pending[i] = _Pending(xs, video, record, np.empty((V, K, FEATURE_DIM), np.float32), V * K)
                clip_queue.extend((i, v, k) for v in range(V) for k in range(K))
            if not clip_queue:
                break
            take = [clip_queue.popleft() for _ in range(min(batch_size, len(clip_queue)))]
            batch = torch.stack([pending[i].xs[v][:, layout.starts[k] : layout.starts[k] + T] for i, v, k in take])
            out = forward_clips(model, batch, batch_size, dtype)
            for (i, v, k), f in zip(take, out):
                p = pending[i]
                p.feats[v, k] = f
                p.remaining -= 1
                if p.remaining == 0:
                    del pending[i]
                    finish(i, p.record, p.feats, p.video)
        while writes:
            writes.popleft().result()
    bar.close()
    secs = time.perf_counter() - t0
    return {"processed": n_done, "seconds": secs, "videos_per_s": n_done / secs if secs > 0 else 0.0,
            "counts": counts}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def extract_features(
    dataset: str | Path,
    root: str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    cache_root: str | Path | None = None,
    backend: str | None = None,
    views: int | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    dtype: str | None = None,
    shard: str | Shard | None = None,
    strict: bool = False,
    limit: int | None = None,
    device: str | torch.device | None = None,
    model: torch.nn.Module | None = None,
    progress: bool = True,
    merge: bool = True,
    retry_failed: bool = False,
    stats: dict | None = None,
) -> Path:
    """Build, extend, finish or reuse the feature cache of ``dataset``, and refresh its label table
    from the annotation files; returns its directory.

    ``dataset`` is a stage name (``mtl``) or a stage TOML path; ``root`` the data folder (default
    ``dataset.root`` of the stage). ``overrides`` are ``section.key=value`` strings. ``backend``
    (hdf5|zarr), ``views`` (V; V times the I3D work), ``dtype`` (fp32|bf16) override ``[cache]``.
    ``batch_size`` clips per forward (default: the cache's recorded one, else 16 CPU / 64 GPU),
    ``threads`` decoding threads (default half the cores, 2 to 8). ``shard`` "i/n" extracts only the
    rows ``i % n`` of those to extract (under torchrun the rank/world size are used instead and rank 0
    merges). ``limit`` N: the label table holds the first N samples and only their features are
    extracted (same cache directory: features extracted under a limit are reused by a run without it).
    ``model`` replaces the cached Kinetics I3D (its state dict is hashed instead of the weights file).
    ``retry_failed``: extract again the rows recorded as failed (after fixing their videos); the others
    are kept. ``stats``, if given, receives the run's figures (``processed``: rows extracted by this
    process, ``adopted``, ``labels``: the label changes).

    Only rows whose identity (source, frame window, source size) the cache lacks are extracted; a run
    that finds every row there loads no model and only rewrites the label table if the annotation
    files changed (:mod:`.plan`).
    """
    from ..datasets import load_stage_samples

    cfg = resolve_config(dataset, overrides, backend=backend, views=views, dtype=dtype)
    stage = stage_name(dataset)
    c = cfg["cache"]
    samples, root = load_stage_samples(cfg, stage, root)
    if not samples:
        raise CacheError(f"dataset {stage!r} under {root} has no samples; check --root and the annotation files")
    if limit is not None and int(limit) < len(samples):
        _log(f"{stage}: --limit {int(limit)}: the label table holds the first {int(limit)} of the {len(samples)} samples "
             f"of the annotation files (a run without --limit adds the rest and reuses these)")
        samples = samples[: int(limit)]
    view_list = make_views(int(c["views"]), int(c["view_shift"]))
    layout = layout_of(cfg)

    if model is None:
        from ..backbone.weights import weights_sha256

        wsha = weights_sha256()
    else:
        wsha = "state:" + state_fingerprint(model)
    key = extraction_key(dataset=stage, cfg=cfg, views=view_list, dtype=c["dtype"], weights_sha256=wsha)
    chash = key_hash(key)
    croot = _cache_root(cache_root)
    cache_dir = croot / f"{stage}-{chash}"
    tr = torchrun_env()
    sh = tr if tr is not None else (shard if isinstance(shard, Shard) else parse_shard(shard))
    lead = tr is None or tr.index == 0  # the process that writes state shared by all shards

    if tr is not None:
        _init_gloo()
    manifest = read_manifest(cache_dir) if (cache_dir / "manifest.json").exists() else None
    if lead and manifest is not None and manifest.get("merging"):
        _log(f"{cache_dir}: finishing a merge that was interrupted")
        merge_cache(cache_dir)
    if lead and manifest is not None and retry_failed:
        n = drop_failed_staged(cache_dir)
        if n:
            _log(f"{cache_dir}: {n} staged failed samples will be extracted again")
    if tr is not None:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has finished any interrupted merge before anyone reads the cache's state
    manifest = read_manifest(cache_dir) if (cache_dir / "manifest.json").exists() else None

    labels = base_rows(samples, stage, root)
    existing = existing_rows(cache_dir, manifest) if manifest is not None else []
    old_labels = (pq.read_table(cache_dir / SAMPLES).to_pylist()
                  if manifest is not None and manifest.get("complete") and (cache_dir / SAMPLES).exists() else [])
    plan = build_plan(samples, labels, existing, root=root, retry_failed=retry_failed,
                      legacy=lambda: find_legacy(croot, stage, key, root, _log if lead else None))
    stray = keep_staged(cache_dir, plan)
    if stray and lead:
        _log(f"{cache_dir}: {stray} extracted samples staged by an earlier run are no longer in the annotation "
             f"files; they are kept in the store")
    plan.limit = None if limit is None else int(limit)
    plan.dataset_config = dict(cfg.get("dataset", {}))
    plan.changes = label_changes(old_labels, plan.samples)
    if stats is not None:
        stats.update(labels=plan.changes)
    said = describe_changes(plan.changes) if old_labels else None  # a new cache has no labels to compare with

    if not plan.store_work:  # every sample's features are in the store
        if lead:
            if c["backend"] not in manifest.get("stores", {}):
                _log(f"cache {cache_dir} is complete; adding a {c['backend']} store from the existing one")
                add_backend(cache_dir, c["backend"])
            wrote = refresh_labels(cache_dir, plan)
            cleanup_staging(cache_dir)  # staging left by an earlier plan: nothing in it is needed
            _log(f"cache {cache_dir} has the features of all {len(samples)} samples: reusing it (nothing extracted); "
                 + (f"label table refreshed from the annotation files: {said}" if wrote else "labels unchanged"))
        if stats is not None:
            stats.update(processed=0, reused=True, adopted=0)
        return finish_cache(cache_dir, strict, quiet=not lead)

    if manifest is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        h, w = video_size_of(cfg)
        manifest = {
            "schema_version": SCHEMA_VERSION, "dataset": stage, "adapter": cfg["dataset"]["name"],
            "config_hash": chash, "hashed": key, "config": cfg, "complete": False, "backend": c["backend"],
            "stores": {}, "n_samples": len(samples), "n_rows": 0, "n_views": len(view_list),
            "n_clips": len(layout.starts), "clip_len": layout.clip_len, "n_frames": layout.n_frames,
            "clip_layout": layout.kind, "clip_starts": list(layout.starts), "video_size": [h, w],
            "feature_dim": FEATURE_DIM, "views": view_list, "weights_sha256": wsha, "dtype": c["dtype"],
            "root": str(root), "extraction": {"started": now_iso()},
        }
        if plan.adopted:  # rows added later use the batch size and threads the adopted rows were made with
            first = read_manifest(croot / next(iter(plan.adopted))).get("extraction", {})
            manifest["extraction"].update({k: first[k] for k in ("batch_size", "device", "torch", "torch_threads")
                                           if k in first})
        if lead:
            write_manifest(cache_dir, manifest)
    if lead or tr is None:
        write_plan(cache_dir, plan)
    adopted = plan.adopted
    if lead:
        for name, n in adopted.items():
            _log(f"{cache_dir}: {n} samples' features copied from {croot / name} (an older cache with these "
                 f"feature settings; it is left as it was)")
    jobs = plan.jobs
    job_sample: dict[int, Any] = {}
    for s, lab in zip(samples, plan.samples):
        job_sample.setdefault(lab["feature_row"], s)
    mine = [jobs[j] for j in shard_indices(len(jobs), sh)]
    st: dict[str, Any] = {"processed": 0}
    if mine:
        with CacheLock(cache_dir / f"writer-{sh.name}.lock", "cache") as lock:  # before any slow step: fail fast
            if lock.previous and lock.previous.get("pid"):
                _log(f"previous writer pid {lock.previous.get('pid')} on {lock.previous.get('host')} is gone; resuming")
            done = staged_files(cache_dir)
            todo = [i for i in mine if plan.rows[i]["name"] not in done]
            if len(todo) < len(mine):
                _log(f"{stage} [{sh.name}]: {len(mine) - len(todo)} of {len(mine)} samples already done, "
                     f"{len(todo)} to go")
            elif plan.n_before:
                _log(f"{stage}: {len(jobs)} of {len(samples)} samples to extract; the features of the others are in "
                     f"{cache_dir} already")
            if todo:
                st = _extract_rows(cache_dir, manifest, plan, todo, job_sample, cfg, view_list, sh, len(mine),
                                   model=model, device=device, batch_size=batch_size, threads=threads,
                                   progress=progress)
    if stats is not None:  # reused: no row of the plan is extracted (all in this store or adopted)
        stats.update(st, cache=str(cache_dir), adopted=sum(adopted.values()), reused=not jobs)
    if tr is not None:
        import torch.distributed as dist

        dist.barrier()
        if tr.index == 0:
            merge_cache(cache_dir, backend=c["backend"])
            if said:
                _log(f"{cache_dir}: label table refreshed from the annotation files: {said}")
        dist.barrier()
        if tr.index != 0:
            return finish_cache(cache_dir, strict, quiet=True)  # rank 0 prints the summary
    elif merge:
        left = missing_jobs(cache_dir, plan)
        if not left:
            merge_cache(cache_dir, backend=c["backend"])
            if said:
                _log(f"{cache_dir}: label table refreshed from the annotation files: {said}")
        else:
            _log(f"{sh.name} done; {len(left)} samples belong to other shards. When all shards have finished, "
                 f"run `udaqa-pipeline cache merge {cache_dir}` (copy other hosts' cache folders there first, "
                 f"or pass them as extra arguments)")
            return cache_dir
    return finish_cache(cache_dir, strict)


def _init_gloo() -> None:
    import datetime as _dt

    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo only carries barriers; a long extraction must not hit the default 30 min timeout.
        dist.init_process_group("gloo", timeout=_dt.timedelta(days=7))


def _extract_rows(cache_dir: Path, manifest: dict[str, Any], plan, todo: list[int], job_sample: Mapping[int, Any],
                  cfg: dict[str, Any], view_list: list[dict[str, Any]], sh: Shard, n_mine: int, *,
                  model: torch.nn.Module | None, device: str | torch.device | None, batch_size: int | None,
                  threads: int | None, progress: bool) -> dict[str, Any]:
    """Load and prepare I3D, then extract the plan rows ``todo`` of this shard into its staging folder
    (the caller holds the shard's writer lock)."""
    c = cfg["cache"]
    from .. import resolve

    dev = torch.device(resolve.device(device))
    if c["dtype"] == "bf16":
        from ..backbone import bf16_supported

        if not bf16_supported(dev):
            raise CacheError(f"--dtype bf16: {dev} cannot run bfloat16 convolutions (a CPU needs AVX512-BW/VL/DQ, "
                             f"AVX-NE-CONVERT or AMX); extract with --dtype fp32 or on a GPU")
    if model is None:
        from ..backbone.weights import load_i3d

        model = load_i3d(device=dev)
    else:
        dev = next(model.parameters()).device
    if hasattr(model, "prepare_for_inference"):
        model.prepare_for_inference()
    else:
        model.eval()
    recorded = manifest.get("extraction", {})
    recorded_bs = recorded.get("batch_size")
    bs = int(batch_size or recorded_bs or default_batch_size(dev))
    if recorded_bs and bs != recorded_bs:
        _log(f"warning: batch size {bs} differs from the {recorded_bs} this cache was started with; its new "
             f"features may differ from an uninterrupted run in the last bits")
    recorded_threads = recorded.get("torch_threads")
    if dev.type == "cpu" and recorded_threads and recorded_threads != torch.get_num_threads():
        _log(f"warning: {torch.get_num_threads()} torch threads, this cache was started with {recorded_threads} "
             f"(set OMP_NUM_THREADS={recorded_threads} for bit-identical features)")
    if not recorded_bs and (torchrun_env() is None or torchrun_env().index == 0):
        manifest = read_manifest(cache_dir)
        manifest["extraction"] = {**recorded, "batch_size": bs, "device": str(dev), "torch": torch.__version__,
                                  "torch_threads": torch.get_num_threads()}
        write_manifest(cache_dir, manifest)
    records = {i: {k: plan.rows[i][k] for k in ("name", "source", "frame_start", "frame_end", "stamp")} for i in todo}
    st = run_shard(job_sample, todo, shard_dir(cache_dir, sh.name), model, cfg, view_list, batch_size=bs,
                   workers=threads or default_workers(), dtype=c["dtype"], progress=progress,
                   initial=n_mine - len(todo), total=n_mine, records=records)
    st.update(batch_size=bs, device=str(dev))
    return st


def summarize(cache_dir: Path) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """Status counts and (id, status, error) of failed samples of a complete cache."""
    m = read_manifest(cache_dir)
    t = pq.read_table(cache_dir / "samples.parquet", columns=["id", "status", "error"]).to_pylist()
    failed = [(r["id"], r["status"], r["error"]) for r in t if r["status"] != "ok"]
    return dict(m.get("counts", {})), failed


def summary_line(n: int, ok: int, failed: int, pad: Mapping[str, Any]) -> str:
    """``"30 of 40 samples ok, 3 short (padded to 160 frames; shortest 57 frames: S003), 7 failed"``:
    ``ok`` samples split into plain, short and gap-filled, so padded ones never pass as plain."""
    plain = ok - pad["short"] - pad["filled"]
    line = f"{plain} of {n} samples ok"
    if pad["short"]:
        line += (f", {pad['short']} short (padded to {pad['window_frames']} frames; shortest "
                 f"{pad['shortest_frames']} frames: {pad['shortest_id']})")
    if pad["filled"]:
        line += f", {pad['filled']} with frame-folder gaps filled from the nearest frame"
    return line + (f", {failed} failed" if failed else "")


def finish_cache(cache_dir: Path, strict: bool, quiet: bool = False) -> Path:
    m = read_manifest(cache_dir)
    if not m.get("complete"):
        return cache_dir
    counts, failed = summarize(cache_dir)
    n = sum(counts.values())
    ok = counts.get("ok", 0)
    lines = [f"{cache_dir}: {summary_line(n, ok, len(failed), padding_summary(cache_dir))}"]
    for sid, status, err in failed[:20]:
        lines.append(f"  {sid}: {status}: {err}")
    if len(failed) > 20:
        lines.append(f"  ... and {len(failed) - 20} more (see samples.parquet, column error)")
    if not quiet:
        _log("\n".join(lines))
    if ok == 0:
        raise ExtractionError(f"no sample of {cache_dir} was extracted successfully; see the errors above", cache_dir, counts)
    if strict and failed:
        raise ExtractionError(f"{len(failed)} samples failed (--strict); see the errors above", cache_dir, counts)
    return cache_dir
