"""Stage one: decode -> L frames -> K clips -> frozen I3D -> staged samples -> merged cache.

:func:`extract_features` is the whole stage (``udaqa-pipeline features`` is a thin shell over it); what
goes into I3D and how (clip layout, views, the batched forward) is :mod:`udaqa_pipeline.features`,
whose :func:`~udaqa_pipeline.features.featurize` is the same computation for one already-sampled video.

Design choices:

- Labels are not features. The cache directory is named by the feature settings alone
  (:func:`.manifest.extraction_key`); every run reads the annotation files, extracts only the store
  rows the cache lacks (a new source, frame window or source size), adopts rows from a schema-1
  cache of the same settings, and rewrites the label table (``samples.parquet``: labels, folds,
  groups, judge panels) when it changed. A label fix is no I3D work and loads no model (:mod:`.plan`).
- Frozen I3D in inference mode (``prepare_for_inference``: eval, BatchNorm folded, channels-last)
  under ``torch.inference_mode``, on the device the caller gives (the CLI picks the GPU when present,
  ``cuda:LOCAL_RANK`` under torchrun, else CPU).
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
  the message; the run goes on and logs a summary. :class:`ExtractionError` is raised only with
  ``strict=True`` (any failure) or when no sample succeeded.
- The summary counts plain ``ok`` samples apart from ``short`` ones (padded with their last frame;
  the shortest is named with its length) and gap-filled ones (``frames.gap_policy = "nearest"``,
  noted in the ``error`` column of an ``ok`` row as ``filled: ...``); ``cache info`` shows the same
  under ``padded`` (:func:`~.verify.padding_summary`).
- Nothing lost: see :mod:`.merge` (atomic staged samples, merge by rename) and :mod:`.lock`; the
  rows of samples removed from the annotation files stay in the store (:mod:`.plan`).
- A cut (``cache.cut``, :mod:`.cut`): the same forward stops at the cut, stages the activation and
  runs the top of I3D from it (bit for bit the features of the whole forward). Rows already in the
  store that lack the cut are decoded and run once more after the features are complete, staging
  the cut alone; the cut store is then written beside the features, which are not touched.
"""

from __future__ import annotations

import copy

import hashlib
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from ..config import Config, cache_root as _cache_root
from ..features import (activations_at, default_batch_size, failure_status, features_from, forward_clips, layout_of,
                        make_views, video_size_of, view_input)
from .cut import below, encode, write_staged_cut
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
from .plan import (base_rows, build_plan, describe_changes, keep_staged, label_changes, read_fingerprints,
                   write_fingerprints)
from .shard import Shard, parse_shard, shard_indices, torchrun_env
from .staging import cleanup_staging, drop_failed_staged, shard_dir, staged_files, write_staged
from .store import add_backend, now_iso, present_stores
from .verify import DAMAGED_NOTE, FILLED_NOTE, padding_summary

log = logging.getLogger(__name__)



class ExtractionError(CacheError):
    """Raised after the summary when ``strict`` and a sample failed, or when nothing succeeded."""

    def __init__(self, message: str, path: Path, counts: Mapping[str, int]) -> None:
        super().__init__(message)
        self.path = path
        self.counts = dict(counts)


# ----------------------------------------------------------------------------- pure helpers


def damaged_note(sf: Any) -> str:
    """The sample-table note for a window kept with frames decoded from damaged data ("" when none)."""
    if not sf.damaged:
        return ""
    used = int(np.isin(sf.indices, sf.damaged).sum())
    return (f"{DAMAGED_NOTE} {used} of the window's {len(sf.indices)} frames decode from damaged data, kept "
            f"(frames.damaged = \"keep\")")


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


# ----------------------------------------------------------------------------- the run


@dataclass
class _Pending:
    xs: list[torch.Tensor]
    video: np.ndarray
    record: dict[str, Any]
    feats: np.ndarray
    remaining: int
    cut: np.ndarray | None = None


@dataclass(frozen=True)
class CutJob:
    """Also stage the input of I3D block ``block`` (``cache.cut``) as ``dtype`` into ``directory``
    (:mod:`.cut`); ``only``: stage nothing else (a cut added to rows already in the store)."""

    block: str
    dtype: str
    directory: Path
    only: bool = False


def _prepare(sample: Any, cfg: Config, views: Sequence[Mapping[str, Any]]):
    """Worker: decode + preprocess one sample -> (record, [view inputs], video) or (record, None, None)."""
    from ..datasets.frames import sample_frames
    from ..video.transforms import downsample_video

    try:
        sf = sample_frames(sample, cfg.frames)
        frames = sf.frames
        L = cfg.frames.n_frames
        if frames.shape[0] != L:
            raise ValueError(f"sample_frames returned {frames.shape[0]} frames, the config asks for {L}")
        xs = [view_input(frames, cfg, v) for v in views]
        video = downsample_video(frames, video_size_of(cfg))
        record = {"id": str(sample.id), "status": "ok", "error": filled_note(sf.filled) or damaged_note(sf),
                  "n_source_frames": int(sf.n_source_frames), "short": bool(sf.short),
                  "frame_indices": [int(i) for i in np.asarray(sf.indices).tolist()]}
        return record, xs, video
    except Exception as e:  # noqa: BLE001 - one bad video must never stop the run; recorded below
        return {"id": str(sample.id), "status": failure_status(e), "error": f"{type(e).__name__}: {e}"}, None, None


class _Stager:
    """Hands finished rows to the one staged-write thread and keeps the counts and the progress bar."""

    def __init__(self, out_dir: Path, writer: ThreadPoolExecutor, bar: Any,
                 records: Mapping[int, Mapping[str, Any]] | None, on_sample: Callable[[int, dict], None] | None):
        self.out_dir, self.writer, self.bar, self.records, self.on_sample = out_dir, writer, bar, records, on_sample
        self.writes: deque[Future] = deque()
        self.counts: dict[str, int] = {}
        self.n_done = 0

    def finish(self, i: int, record: dict, feats: np.ndarray | None = None, video: np.ndarray | None = None,
               cut: np.ndarray | None = None, cut_job: "CutJob | None" = None) -> None:
        record.update(self.records[i] if self.records is not None else {"name": f"{i:07d}"})
        if cut is not None:
            self.writes.append(self.writer.submit(write_staged_cut, cut_job.directory, record["name"], cut))
        if cut_job is None or not cut_job.only:
            self.writes.append(self.writer.submit(write_staged, self.out_dir, record["name"], record, feats, video))
        while len(self.writes) > 8 or (self.writes and self.writes[0].done()):
            self.writes.popleft().result()  # surfaces write errors; bounds memory held by queued writes
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        self.n_done += 1
        self.bar.update(1)
        self.bar.set_postfix({k: v for k, v in sorted(self.counts.items())}, refresh=False)
        if self.on_sample is not None:
            self.on_sample(i, record)

    def drain(self) -> None:
        while self.writes:
            self.writes.popleft().result()


def run_shard(
    samples: Sequence[Any] | Mapping[int, Any],
    indices: Sequence[int],
    out_dir: Path,
    model: torch.nn.Module,
    cfg: Config,
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
    cut: CutJob | None = None,
) -> dict[str, Any]:
    """Extract ``samples[i]`` for ``i`` in ``indices`` into staged files in ``out_dir``, each named
    ``records[i]["name"]`` (default: ``i`` on 7 digits), its record holding ``records[i]`` too (the
    row identity: a staged row is found again whatever the plan becomes). ``cut``: also stage the
    activation at a cut (:mod:`.cut`), from the same forward.

    Returns stats: processed count, seconds, videos/s, status counts.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=total if total is not None else len(indices), initial=initial, unit="video",
               disable=not progress, dynamic_ncols=True, smoothing=0.1, desc=out_dir.name)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="stage-write") as writer:
        stager = _Stager(out_dir, writer, bar, records, on_sample)
        ahead = _Prefetch(pool, samples, indices, cfg, views, max(1, workers) + 2)
        _clip_loop(ahead, stager, model, layout_of(cfg), len(views), batch_size, dtype, cut)
        stager.drain()
    bar.close()
    secs = time.perf_counter() - t0
    n_done = stager.n_done
    return {"processed": n_done, "seconds": secs, "videos_per_s": n_done / secs if secs > 0 else 0.0,
            "counts": stager.counts}


class _Prefetch:
    """Samples being decoded and preprocessed ``prefetch`` ahead of the model, in ``indices`` order."""

    def __init__(self, pool: ThreadPoolExecutor, samples: Sequence[Any] | Mapping[int, Any], indices: Sequence[int],
                 cfg: Config, views: Sequence[Mapping[str, Any]], prefetch: int):
        self.pool, self.samples, self.cfg, self.views, self.prefetch = pool, samples, cfg, views, prefetch
        self.todo = iter(indices)
        self.ahead: deque[tuple[int, Future]] = deque()
        self.refill()

    def refill(self) -> None:
        while len(self.ahead) < self.prefetch:
            i = next(self.todo, None)
            if i is None:
                return
            self.ahead.append((i, self.pool.submit(_prepare, self.samples[i], self.cfg, self.views)))

    def __bool__(self) -> bool:
        return bool(self.ahead)

    def next(self) -> tuple[int, tuple]:
        i, fut = self.ahead.popleft()
        self.refill()
        return i, fut.result()


def _clip_loop(ahead: _Prefetch, stager: _Stager, model: torch.nn.Module, layout: Any, V: int, batch_size: int,
               dtype: str, cut: CutJob | None = None) -> None:
    """Fill batches of exactly ``batch_size`` clips across videos, run them, and stage each video when
    the last of its V x K clips is done (failed samples are staged as they come). With ``cut`` the
    forward stops at the cut, keeps the activation and runs the top from it: the same features."""
    K, T = len(layout.starts), layout.clip_len
    pending: dict[int, _Pending] = {}
    clip_queue: deque[tuple[int, int, int]] = deque()
    while ahead or clip_queue:
        while len(clip_queue) < batch_size and ahead:
            i, (record, xs, video) = ahead.next()
            if xs is None:
                stager.finish(i, record)
                continue
            pending[i] = _Pending(xs, video, record, np.empty((V, K, FEATURE_DIM), np.float32), V * K)
            clip_queue.extend((i, v, k) for v in range(V) for k in range(K))
        if not clip_queue:
            break
        take = [clip_queue.popleft() for _ in range(min(batch_size, len(clip_queue)))]
        batch = torch.stack([pending[i].xs[v][:, layout.starts[k] : layout.starts[k] + T] for i, v, k in take])
        if cut is None:
            out, acts = forward_clips(model, batch, batch_size, dtype), None
        else:
            acts = activations_at(model, batch, below(cut.block), batch_size, dtype)
            out = features_from(model, torch.from_numpy(acts), below(cut.block), batch_size, dtype)
            acts = encode(acts, cut.dtype)
        for j, ((i, v, k), f) in enumerate(zip(take, out)):
            p = pending[i]
            p.feats[v, k] = f
            if acts is not None:
                if p.cut is None:
                    p.cut = np.empty((V, K) + acts.shape[1:], acts.dtype)
                p.cut[v, k] = acts[j]
            p.remaining -= 1
            if p.remaining == 0:
                del pending[i]
                stager.finish(i, p.record, p.feats, p.video, p.cut, cut)


def extract_features(
    stage: str | Path,
    cfg: Config,
    root: str | Path | None = None,
    *,
    cache_root: str | Path | None = None,
    limit: int | None = None,
    shard: str | Shard | None = None,
    device: str | torch.device | None = None,
    model: torch.nn.Module | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    strict: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    stats: dict | None = None,
) -> Path:
    """Build, extend, finish or reuse the feature cache of ``stage``, and refresh its label table
    from the annotation files; returns its directory.

    ``stage`` is a stage name (``mtl``) or a stage TOML path, ``cfg`` its config as
    :func:`resolve_config` returns it (``[cache]`` complete); ``root`` the data folder (default
    ``dataset.root`` of the stage). ``limit`` N: the label table holds the first N samples and only
    their features are extracted (same cache directory: features extracted under a limit are reused
    by a run without it). ``shard`` "i/n" extracts only the rows ``i % n`` of those to extract (under
    torchrun the rank/world size are used instead and rank 0 merges). ``device``: where I3D runs
    (default CPU; the caller picks the GPU, as the CLI does); ``model`` replaces the cached Kinetics
    I3D (its state dict is hashed instead of the weights file, and its device is used).
    ``batch_size`` clips per forward (default: the cache's recorded one, else 16 CPU / 64 GPU),
    ``threads`` decoding threads (default half the cores, 2 to 8). ``retry_failed``: extract again
    the rows recorded as failed (after fixing their videos); the others are kept. ``stats``, if
    given, receives the run's figures (``processed``: rows extracted by this process, ``adopted``,
    ``labels``: the label changes). Raises :class:`ExtractionError` after the summary when nothing
    succeeded, or with ``strict`` when a sample failed.

    Only rows whose identity (source, frame window, source size) the cache lacks are extracted; a run
    that finds every row there loads no model and only rewrites the label table if the annotation
    files changed (:mod:`.plan`).
    """
    run, samples = _open_run(stage, cfg, root, cache_root=cache_root, limit=limit, shard=shard, model=model)
    manifest = _settle(run, retry_failed)
    plan, said = _plan(run, samples, manifest, limit=limit, retry_failed=retry_failed)
    if stats is not None:
        stats.update(labels=plan.changes)
    if not plan.store_work:  # every sample's features are in the store
        if run.lead:
            _refresh_only(run, plan, manifest, len(samples), said)
        if stats is not None:
            stats.update(processed=0, reused=True, adopted=0)
        out = finish_cache(run.cache_dir, strict, quiet=not run.lead)
        _cut_phase(run, plan, samples, model=model, device=device, batch_size=batch_size, threads=threads,
                   progress=progress, stats=stats)
        return out
    if manifest is None:
        manifest = _start_manifest(run, plan, len(samples))
    if run.lead or run.tr is None:
        write_plan(run.cache_dir, plan)
    if run.lead:
        for name, n in plan.adopted.items():
            log.info(f"{run.cache_dir}: {n} samples' features copied from {run.croot / name} (an older cache with "
                     f"these feature settings; it is left as it was)")
    st = _extract_mine(run, manifest, plan, samples, model=model, device=device, batch_size=batch_size,
                       threads=threads, progress=progress)
    if stats is not None:  # reused: no row of the plan is extracted (all in this store or adopted)
        stats.update(st, cache=str(run.cache_dir), adopted=sum(plan.adopted.values()), reused=not plan.jobs)
    out = _merge_run(run, plan, said, strict)
    _cut_phase(run, plan, samples, model=model, device=device, batch_size=batch_size, threads=threads,
               progress=progress, stats=stats)
    return out


def _cut_job(run: _Run, only: bool = False) -> CutJob | None:
    from .cut import staging_dir

    c = run.cfg.cache
    return None if c.cut == "none" else CutJob(c.cut, c.cut_dtype, staging_dir(run.cache_dir, c.cut, c.cut_dtype), only)


def _cut_phase(run: _Run, plan: Any, samples: Sequence[Any], *, model: torch.nn.Module | None,
               device: str | torch.device | None, batch_size: int | None, threads: int | None, progress: bool,
               stats: dict | None) -> None:
    """With ``cache.cut``, once the features are complete (the lead process): stage the cut of the
    rows that lack it (decode + I3D again; the features are not rewritten) and write the cut store."""
    from .cut import missing, write_cut_store

    job = _cut_job(run, only=True)
    m = _read_manifest_if_any(run.cache_dir)
    if job is None or not run.lead or m is None or not m.get("complete"):
        return
    todo = missing(run.cache_dir, job.block, job.dtype)
    if todo:
        from .cut import row_names

        names = row_names(run.cache_dir)
        by_name = {r["name"]: i for i, r in enumerate(plan.rows)}
        row_sample: dict[int, Any] = {}
        for s, lab in zip(samples, plan.samples):
            row_sample.setdefault(lab["feature_row"], s)
        job_sample = {r: row_sample[by_name[names[r]]] for r in todo if by_name.get(names[r]) in row_sample}
        rows = [r for r in todo if r in job_sample]
        log.info(f"{run.cache_dir}: adding the {job.block} cut ({job.dtype}) of {len(rows)} rows (decoding and I3D "
                 f"once more; the features are kept as they are)")
        mdl = _load_model(model, device, run.cfg.cache.dtype)
        dev = next(mdl.parameters()).device
        bs = int(batch_size or m.get("extraction", {}).get("batch_size") or default_batch_size(dev))
        records = {r: {"name": names[r]} for r in rows}
        st = run_shard(job_sample, rows, job.directory, mdl, run.cfg, run.views, batch_size=bs,
                       workers=threads or default_workers(), dtype=run.cfg.cache.dtype, progress=progress,
                       records=records, cut=job)
        if stats is not None:
            stats.update(cut_processed=st["processed"], cut_seconds=st["seconds"])
    write_cut_store(run.cache_dir, job.block, job.dtype, m.get("backend", "hdf5"))


@dataclass
class _Run:
    """What every step of one ``extract_features`` call shares: the stage, its config, where the
    cache is, its key, its views and clip layout, and this process's shard."""

    stage: str
    cfg: Config
    root: Path
    croot: Path
    cache_dir: Path
    key: dict[str, Any]
    wsha: str
    views: list[dict[str, Any]]
    layout: Any
    sh: Shard
    tr: Shard | None  # torchrun's rank/world size, None outside torchrun
    lead: bool  # the process that writes state shared by all shards
    fingerprints: dict | None = None  # the sources' content fingerprints (.plan.source_fingerprint)


def _open_run(stage_arg: str | Path, cfg: Config, root: str | Path | None, *,
              cache_root: str | Path | None, limit: int | None, shard: str | Shard | None,
              model: torch.nn.Module | None) -> tuple[_Run, list[Any]]:
    """The run's shared state and the samples of the annotation files (the first ``limit``)."""
    from ..datasets import load_stage_samples

    stage = stage_name(stage_arg)
    c = cfg.cache
    samples, root = load_stage_samples(cfg, stage, root)
    if not samples:
        raise CacheError(f"dataset {stage!r} under {root} has no samples; check --root and the annotation files")
    if limit is not None and int(limit) < len(samples):
        log.info(f"{stage}: --limit {int(limit)}: the label table holds the first {int(limit)} of the {len(samples)} "
                 f"samples of the annotation files (a run without --limit adds the rest and reuses these)")
        samples = samples[: int(limit)]
    view_list = make_views(c.views, c.view_shift)
    if model is None:
        from ..backbone.weights import weights_sha256

        wsha = weights_sha256()
    else:
        wsha = "state:" + state_fingerprint(model)
    key = extraction_key(dataset=stage, cfg=cfg, views=view_list, dtype=c.dtype, weights_sha256=wsha)
    croot = _cache_root(cache_root)
    tr = torchrun_env()
    sh = tr if tr is not None else (shard if isinstance(shard, Shard) else parse_shard(shard))
    run = _Run(stage=stage, cfg=cfg, root=root, croot=croot, cache_dir=croot / f"{stage}-{key_hash(key)}", key=key,
               wsha=wsha, views=view_list, layout=layout_of(cfg), sh=sh, tr=tr, lead=tr is None or tr.index == 0)
    return run, samples


def _read_manifest_if_any(cache_dir: Path) -> dict[str, Any] | None:
    return read_manifest(cache_dir) if (cache_dir / "manifest.json").exists() else None


def _settle(run: _Run, retry_failed: bool) -> dict[str, Any] | None:
    """Finish a merge that was interrupted and drop staged failures to retry (the lead process), then
    the cache's manifest (None for a new cache)."""
    if run.tr is not None:
        _init_gloo()
    manifest = _read_manifest_if_any(run.cache_dir)
    if run.lead and manifest is not None and manifest.get("merging"):
        log.info(f"{run.cache_dir}: finishing a merge that was interrupted")
        merge_cache(run.cache_dir)
    if run.lead and manifest is not None and manifest.get("complete"):
        _forget_lost_stores(run.cache_dir, manifest)
    if run.lead and manifest is not None and retry_failed:
        n = drop_failed_staged(run.cache_dir)
        if n:
            log.info(f"{run.cache_dir}: {n} staged failed samples will be extracted again")
    if run.tr is not None:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has finished any interrupted merge before anyone reads the cache's state
    return _read_manifest_if_any(run.cache_dir)


def _forget_lost_stores(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """A store deleted from a complete cache: with another store left, the manifest stops listing
    it (this run copies it back when ``cache.backend`` asks for it); with none left, the cache is
    started again (every row is extracted; staged rows are kept and reused)."""
    stores = manifest.get("stores", {})
    have = present_stores(cache_dir, manifest)
    lost = [STORE_NAMES.get(b, b) for b in stores if b not in have]
    if not lost:
        return
    if have:
        log.warning(f"{cache_dir}: {', '.join(lost)} is missing; the {have[0]} store is there and is copied when "
                    f"another store is asked for")
        manifest["stores"] = {b: stores[b] for b in have}
        if manifest.get("backend") not in manifest["stores"]:
            manifest["backend"] = have[0]
        write_manifest(cache_dir, manifest)
        return
    log.warning(f"{cache_dir}: its feature store {', '.join(lost)} is missing: extracting the features again")
    (cache_dir / "manifest.json").unlink()


def _plan(run: _Run, samples: Sequence[Any], manifest: Mapping[str, Any] | None, *, limit: int | None,
          retry_failed: bool) -> tuple[Any, str | None]:
    """The plan of this run (:func:`.plan.build_plan`) and the description of its label changes
    (None for a new cache, which has no labels to compare with)."""
    cache_dir = run.cache_dir
    labels = base_rows(samples, run.stage, run.root)
    existing = existing_rows(cache_dir, manifest) if manifest is not None else []
    old_labels = (pq.read_table(cache_dir / SAMPLES).to_pylist()
                  if manifest is not None and manifest.get("complete") and (cache_dir / SAMPLES).exists() else [])
    said_to = log.info if run.lead else None
    fingerprints = read_fingerprints(cache_dir)
    plan = build_plan(samples, labels, existing, root=run.root, retry_failed=retry_failed,
                      legacy=lambda: find_legacy(run.croot, run.stage, run.key, run.root, said_to),
                      fingerprints=fingerprints)
    run.fingerprints = fingerprints
    if run.lead:
        if cache_dir.is_dir():
            write_fingerprints(cache_dir, fingerprints)
        for note in plan.notes:
            log.info(f"{cache_dir}: {note}")
    stray = keep_staged(cache_dir, plan)
    if stray and run.lead:
        log.info(f"{cache_dir}: {stray} extracted samples staged by an earlier run are no longer in the annotation "
                 f"files; they are kept in the store")
    plan.limit = None if limit is None else int(limit)
    plan.dataset_config = dict(run.cfg.dataset)
    plan.changes = label_changes(old_labels, plan.samples)
    return plan, (describe_changes(plan.changes) if old_labels else None)


def _refresh_only(run: _Run, plan: Any, manifest: Mapping[str, Any], n_samples: int, said: str | None) -> None:
    """Commit a plan without store work: add a missing backend's store, rewrite the label table."""
    cache_dir, backend = run.cache_dir, run.cfg.cache.backend
    if backend not in manifest.get("stores", {}):
        log.info(f"cache {cache_dir} is complete; adding a {backend} store from the existing one")
        add_backend(cache_dir, backend)
    wrote = refresh_labels(cache_dir, plan)
    cleanup_staging(cache_dir)  # staging left by an earlier plan: nothing in it is needed
    log.info(f"cache {cache_dir} has the features of all {n_samples} samples: reusing it (nothing extracted); "
             + (f"label table refreshed from the annotation files: {said}" if wrote else "labels unchanged"))


def _start_manifest(run: _Run, plan: Any, n_samples: int) -> dict[str, Any]:
    """The manifest of a new cache (written by the lead process), marked incomplete."""
    run.cache_dir.mkdir(parents=True, exist_ok=True)
    if run.lead and run.fingerprints:
        write_fingerprints(run.cache_dir, run.fingerprints)
    c, layout = run.cfg.cache, run.layout
    h, w = video_size_of(run.cfg)
    manifest = {
        "schema_version": SCHEMA_VERSION, "dataset": run.stage, "adapter": run.cfg.dataset.name,
        "config_hash": key_hash(run.key), "hashed": run.key, "config": run.cfg.to_dict(), "complete": False,
        "backend": c.backend, "stores": {}, "n_samples": n_samples, "n_rows": 0, "n_views": len(run.views),
        "n_clips": len(layout.starts), "clip_len": layout.clip_len, "n_frames": layout.n_frames,
        "clip_layout": layout.kind, "clip_starts": list(layout.starts), "video_size": [h, w],
        "feature_dim": FEATURE_DIM, "views": run.views, "weights_sha256": run.wsha, "dtype": c.dtype,
        "root": str(run.root), "extraction": {"started": now_iso()},
    }
    if plan.adopted:  # rows added later use the batch size and threads the adopted rows were made with
        first = read_manifest(run.croot / next(iter(plan.adopted))).get("extraction", {})
        manifest["extraction"].update({k: first[k] for k in ("batch_size", "device", "torch", "torch_threads")
                                       if k in first})
    if run.lead:
        write_manifest(run.cache_dir, manifest)
    return manifest


def _extract_mine(run: _Run, manifest: dict[str, Any], plan: Any, samples: Sequence[Any], *,
                  model: torch.nn.Module | None, device: str | torch.device | None, batch_size: int | None,
                  threads: int | None, progress: bool) -> dict[str, Any]:
    """Extract the plan's jobs of this shard that are not staged yet, under the shard's writer lock;
    returns the run's figures (``processed`` 0 when there was nothing to do)."""
    jobs, cache_dir, sh = plan.jobs, run.cache_dir, run.sh
    job_sample: dict[int, Any] = {}
    for s, lab in zip(samples, plan.samples):
        job_sample.setdefault(lab["feature_row"], s)
    mine = [jobs[j] for j in shard_indices(len(jobs), sh)]
    if not mine:
        return {"processed": 0}
    with CacheLock(cache_dir / f"writer-{sh.name}.lock", "cache") as lock:  # before any slow step: fail fast
        if lock.previous and lock.previous.get("pid"):
            log.info(f"previous writer pid {lock.previous.get('pid')} on {lock.previous.get('host')} is gone; resuming")
        done = staged_files(cache_dir)
        todo = [i for i in mine if plan.rows[i]["name"] not in done]
        if len(todo) < len(mine):
            log.info(f"{run.stage} [{sh.name}]: {len(mine) - len(todo)} of {len(mine)} samples already done, "
                     f"{len(todo)} to go")
        elif plan.n_before:
            log.info(f"{run.stage}: {len(jobs)} of {len(samples)} samples to extract; the features of the others "
                     f"are in {cache_dir} already")
        if not todo:
            return {"processed": 0}
        return _extract_rows(run, manifest, plan, todo, job_sample, len(mine), model=model, device=device,
                             batch_size=batch_size, threads=threads, progress=progress)


def _merge_run(run: _Run, plan: Any, said: str | None, strict: bool) -> Path:
    """Merge the staged rows into the cache once every shard is done (rank 0 under torchrun; else
    this process when no rows of other shards are missing), then the summary."""
    cache_dir, backend = run.cache_dir, run.cfg.cache.backend
    if run.tr is not None:
        import torch.distributed as dist

        dist.barrier()
        if run.tr.index == 0:
            merge_cache(cache_dir, backend=backend)
            if said:
                log.info(f"{cache_dir}: label table refreshed from the annotation files: {said}")
        dist.barrier()
        if run.tr.index != 0:
            return finish_cache(cache_dir, strict, quiet=True)  # rank 0 gives the summary
        return finish_cache(cache_dir, strict)
    left = missing_jobs(cache_dir, plan)
    if left:
        log.info(f"{run.sh.name} done; {len(left)} samples belong to other shards. When all shards have finished, "
                 f"run `udaqa-pipeline cache merge {cache_dir}` (copy other hosts' cache folders there first, "
                 f"or pass them as extra arguments)")
        return cache_dir
    merge_cache(cache_dir, backend=backend)
    if said:
        log.info(f"{cache_dir}: label table refreshed from the annotation files: {said}")
    return finish_cache(cache_dir, strict)


def _init_gloo() -> None:
    import datetime as _dt

    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo only carries barriers; a long extraction must not hit the default 30 min timeout.
        dist.init_process_group("gloo", timeout=_dt.timedelta(days=7))


def _load_model(model: torch.nn.Module | None, device: str | torch.device | None, dtype: str) -> torch.nn.Module:
    """The I3D to extract with (the cached Kinetics one on ``device``, default CPU, unless ``model`` is
    given), prepared for inference. Raises :class:`CacheError` when bf16 cannot run on the device."""
    dev = torch.device(device if device is not None else "cpu") if model is None else next(model.parameters()).device
    if dtype == "bf16":
        from ..backbone import bf16_supported

        if not bf16_supported(dev):
            raise CacheError(f"--dtype bf16: {dev} cannot run bfloat16 convolutions (a CPU needs AVX512-BW/VL/DQ, "
                             f"AVX-NE-CONVERT or AMX); extract with --dtype fp32 or on a GPU")
    if model is None:
        from ..backbone.weights import load_i3d

        model = load_i3d(device=dev)
    if hasattr(model, "prepare_for_inference"):
        model.prepare_for_inference()
    else:
        model.eval()
    return model


def _extract_rows(run: _Run, manifest: dict[str, Any], plan: Any, todo: list[int], job_sample: Mapping[int, Any],
                  n_mine: int, *, model: torch.nn.Module | None, device: str | torch.device | None,
                  batch_size: int | None, threads: int | None, progress: bool) -> dict[str, Any]:
    """Load and prepare I3D, then extract the plan rows ``todo`` of this shard (``n_mine`` rows in all)
    into its staging folder (the caller holds the shard's writer lock)."""
    cache_dir, cfg, c = run.cache_dir, run.cfg, run.cfg.cache
    model = _load_model(model, device, c.dtype)
    dev = next(model.parameters()).device
    recorded = manifest.get("extraction", {})
    recorded_bs = recorded.get("batch_size")
    bs = int(batch_size or recorded_bs or default_batch_size(dev))
    if recorded_bs and bs != recorded_bs:
        log.warning(f"warning: batch size {bs} differs from the {recorded_bs} this cache was started with; its new "
                    f"features may differ from an uninterrupted run in the last bits")
    recorded_threads = recorded.get("torch_threads")
    if dev.type == "cpu" and recorded_threads and recorded_threads != torch.get_num_threads():
        log.warning(f"warning: {torch.get_num_threads()} torch threads, this cache was started with {recorded_threads} "
                    f"(set OMP_NUM_THREADS={recorded_threads} for bit-identical features)")
    if not recorded_bs and run.lead:
        manifest = read_manifest(cache_dir)
        manifest["extraction"] = {**recorded, "batch_size": bs, "device": str(dev), "torch": torch.__version__,
                                  "torch_threads": torch.get_num_threads()}
        write_manifest(cache_dir, manifest)
    records = {i: {k: plan.rows[i][k] for k in ("name", "source", "frame_start", "frame_end", "stamp")} for i in todo}
    st = run_shard(job_sample, todo, shard_dir(cache_dir, run.sh.name), model, cfg, run.views, batch_size=bs,
                   workers=threads or default_workers(), dtype=c.dtype, progress=progress,
                   initial=n_mine - len(todo), total=n_mine, records=records, cut=_cut_job(run))
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
    plain = ok - pad["short"] - pad["filled"] - pad.get("damaged", 0)
    line = f"{plain} of {n} samples ok"
    if pad["short"]:
        line += (f", {pad['short']} short (padded to {pad['window_frames']} frames; shortest "
                 f"{pad['shortest_frames']} frames: {pad['shortest_id']})")
    if pad["filled"]:
        line += f", {pad['filled']} with frame-folder gaps filled from the nearest frame"
    if pad.get("damaged"):
        line += f", {pad['damaged']} kept with frames decoded from damaged data (frames.damaged = \"keep\")"
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
        log.info("\n".join(lines))
    if ok == 0:
        raise ExtractionError(f"no sample of {cache_dir} was extracted successfully; see the errors above", cache_dir, counts)
    if strict and failed:
        raise ExtractionError(f"{len(failed)} samples failed (--strict); see the errors above", cache_dir, counts)
    return cache_dir
