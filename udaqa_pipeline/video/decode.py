"""Video input shared by every stage: a video file (PyAV) or a folder of frame images (Pillow).

Small interface in the pytorchvideo spirit: :func:`open_video` returns a backend object with
``n_frames()``, ``read(indices)`` and ``close()``; :func:`read_frames` and :func:`count_frames` are
the one-call forms everything else uses. Frames come back as ``uint8`` arrays of shape
``(T, H, W, 3)`` in RGB order.

Design choices:

- Video files decode through PyAV with ``stream.thread_type = "AUTO"`` (frame + slice threads), so
  anything FFmpeg reads works (mp4, avi, mkv, webm, gif, ...). Decoding always starts at the first
  frame and stops at the last frame requested: frame-accurate seeking is unreliable across codecs
  and containers, and the AQA windows (first 103 frames, or frames spread over a short clip) need
  the early part anyway. Frames that are not requested are decoded but never converted to RGB.
- Frame folders: every file with an image extension, *naturally* sorted by name (``img_2`` before
  ``img_10``), so both zero-padded and unpadded numbering work. Only requested images are opened.
  Greyscale / RGBA / palette images are converted to RGB; all frames must share one size.
- ``start``/``stop`` follow Python slice rules (a ``stop`` past the end gives fewer frames, the
  caller sees it in ``len``). ``indices`` are strict: an index past the end raises
  :class:`VideoError`, because a window that silently shrinks would misalign clips.
- Every failure (missing, empty, corrupt, unreadable, not a video) raises :class:`VideoError`, which
  names the file, the reason and what to do; PyAV / Pillow exceptions are wrapped, never leaked.
  Its ``kind`` (:data:`VIDEO_ERROR_KINDS`) says the same for code, so callers never parse messages.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

#: File extensions read as frames of a frame folder (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


#: ``VideoError.kind`` values: what went wrong, for code (the message is for people).
VIDEO_ERROR_KINDS: dict[str, str] = {
    "missing": "the file or folder does not exist",
    "unreadable": "it exists but the OS refuses to read it (permissions, I/O error)",
    "empty": "nothing to decode: a 0-byte file, no video stream, no decodable frame, a folder without images",
    "corrupt": "damaged or not a video: FFmpeg cannot open or decode it, a frame image is unreadable or "
               "differs in size from the others",
    "too_short": "fewer frames than asked for: an index past the end, a span ending past the source, a span "
                 "shorter than the window under frames.short_policy = \"error\"",
    "bad_request": "no file could satisfy the request: a negative index, an empty annotation span, bad window "
                   "settings",
}


class VideoError(Exception):
    """A video or frame folder that cannot be read; ``str()`` names the file, the reason and a fix.

    ``kind`` is one of :data:`VIDEO_ERROR_KINDS` (machine-readable; stage one maps it to a sample's
    status). It defaults to ``"corrupt"``, the generic "this cannot be decoded"."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str = "", *, kind: str = "corrupt") -> None:
        if kind not in VIDEO_ERROR_KINDS:
            raise ValueError(f"unknown VideoError kind {kind!r}; use one of {', '.join(VIDEO_ERROR_KINDS)}")
        self.path = Path(path)
        self.reason = reason
        self.kind = kind
        self.fix = fix or "check that the file is a complete video FFmpeg can play (try `ffprobe FILE`)"
        super().__init__(f"{self.path}: {self.reason}; {self.fix}")


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value (``img_2`` < ``img_10``)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a frame folder, naturally sorted by name (hidden files skipped).

    Listings are cached by (folder, modification time): an untrimmed MTL-AQA folder holds ~15k
    frames shared by ~90 dives, and listing + sorting it costs ~0.3 s each time.
    """
    folder = Path(folder)
    try:
        mtime = folder.stat().st_mtime_ns
    except OSError as exc:
        kind = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        raise VideoError(folder, f"cannot read frame folder ({exc.strerror or exc})", "check the path and permissions",
                         kind=kind) from exc
    return list(_listing(str(folder), mtime))


@functools.lru_cache(maxsize=16)
def _listing(folder: str, mtime_ns: int) -> tuple[Path, ...]:
    try:
        names = [
            e.name
            for e in os.scandir(folder)
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        ]
    except OSError as exc:
        kind = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        raise VideoError(folder, f"cannot list frame folder ({exc.strerror or exc})", "check permissions",
                         kind=kind) from exc
    names.sort(key=natural_key)
    base = Path(folder)
    return tuple(base / n for n in names)


class VideoSource(Protocol):
    """What a decoding backend offers."""

    path: Path

    def n_frames(self) -> int: ...

    def read(self, indices: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...


def _check_indices(path: Path, indices: Sequence[int], n: int | None = None) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise VideoError(path, f"negative frame index {int(idx.min())}", "pass 0-based frame indices",
                         kind="bad_request")
    if n is not None and idx.size and idx.max() >= n:
        raise VideoError(
            path,
            f"frame {int(idx.max())} requested but the source has only {n} frames",
            "check the annotation's frame range against the video, or use a shorter window",
            kind="too_short",
        )
    return idx


class FrameFolder:
    """A folder of frame images (one image per frame, order = natural sort of the names)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.files = list_frame_files(self.path)
        if not self.files:
            raise VideoError(
                self.path,
                "frame folder holds no images (" + "/".join(sorted(IMAGE_EXTENSIONS)) + ")",
                "extract the frames into this folder or point --root at the right place",
                kind="empty",
            )

    def n_frames(self) -> int:
        return len(self.files)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        idx = _check_indices(self.path, indices, len(self.files))
        cache: dict[int, np.ndarray] = {}
        shape = None
        for i in dict.fromkeys(idx.tolist()):  # each needed image opened once, even if repeated
            f = self.files[i]
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                kind = "missing" if isinstance(exc, FileNotFoundError) else (
                    "unreadable" if isinstance(exc, PermissionError) else "corrupt")
                raise VideoError(f, f"cannot read frame image ({exc})", "replace or re-extract this frame",
                                 kind=kind) from exc
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise VideoError(
                    f, f"frame size {arr.shape[1]}x{arr.shape[0]} differs from {shape[1]}x{shape[0]}",
                    "re-extract the folder so every frame has the same size",
                    kind="corrupt",
                )
            cache[i] = arr
        if not idx.size:
            return np.zeros((0, 0, 0, 3), np.uint8)
        return np.stack([cache[i] for i in idx.tolist()])

    def close(self) -> None:
        pass


class VideoFile:
    """A video file decoded with PyAV (threaded), first frame to the last one needed."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise VideoError(self.path, "no such file or folder", "check the path (and --root / the stage TOML)",
                              kind="missing")
        if self.path.stat().st_size == 0:
            raise VideoError(self.path, "file is empty (0 bytes)", "re-download or re-export the video", kind="empty")
        self._container = self._open()

    def _open(self):
        import av

        try:
            container = av.open(str(self.path), mode="r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            kind = ("missing" if isinstance(exc, FileNotFoundError) else
                    "unreadable" if isinstance(exc, PermissionError) else "corrupt")
            raise VideoError(self.path, f"FFmpeg cannot open it ({_av_reason(exc)})", kind=kind) from exc
        if not container.streams.video:
            container.close()
            raise VideoError(self.path, "no video stream in the file", "pass a video file or a folder of frames",
                             kind="empty")
        return container

    def _stream(self):
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threading: several times faster on long videos
        return stream

    def _rewind(self) -> None:
        # Reopen rather than seek(0): seeking is not reliable for every container (e.g. some avi).
        self._container.close()
        self._container = self._open()

    def n_frames(self) -> int:
        """Exact count, by decoding (container headers are often missing or wrong, e.g. in mkv)."""
        n = 0
        for _ in self._frames():
            n += 1
        self._rewind()
        if n == 0:
            raise VideoError(self.path, "no frames could be decoded", "re-export the video", kind="empty")
        return n

    def n_frames_fast(self) -> int:
        """Count by demuxing packets without decoding; may differ from decoding for odd codecs."""
        import av

        stream = self._container.streams.video[0]
        n = 0
        try:
            for pkt in self._container.demux(stream):
                if pkt.size:
                    n += 1
        except av.FFmpegError as exc:
            raise VideoError(self.path, f"corrupt data while demuxing ({_av_reason(exc)})", kind="corrupt") from exc
        finally:
            self._rewind()
        return n

    def _frames(self) -> Iterable:
        import av

        try:
            for frame in self._container.decode(self._stream()):
                yield frame
        except av.FFmpegError as exc:
            raise VideoError(self.path, f"corrupt data while decoding ({_av_reason(exc)})", kind="corrupt") from exc

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(self.path, indices)
        if not idx.size:
            return np.zeros((0, 0, 0, 3), np.uint8)
        wanted = set(idx.tolist())
        last = int(idx.max())
        got: dict[int, np.ndarray] = {}
        n = 0
        for i, frame in enumerate(self._frames()):
            n = i + 1
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break  # stop decoding as soon as the last needed frame is in
        self._rewind()
        if n == 0:
            raise VideoError(self.path, "no frames could be decoded", "re-export the video", kind="empty")
        if last >= n:
            raise VideoError(
                self.path,
                f"frame {last} requested but only {n} frames could be decoded",
                "the video is shorter than the annotation/window expects, or truncated: check its frame range "
                "or re-download it",
                kind="too_short",
            )
        return np.stack([got[i] for i in idx.tolist()])

    def read_range(self, start: int, stop: int | None) -> np.ndarray:
        out = []
        n = 0
        for i, frame in enumerate(self._frames()):
            if stop is not None and i >= stop:
                break
            n = i + 1
            if i >= start:
                out.append(frame.to_ndarray(format="rgb24"))
        self._rewind()
        if n == 0 and stop != 0:
            raise VideoError(self.path, "no frames could be decoded", "re-export the video", kind="empty")
        if not out:
            return np.zeros((0, 0, 0, 3), np.uint8)
        return np.stack(out)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _av_reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # PyAV messages repeat the path; keep only the reason, the path is in VideoError already.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return re.sub(r":\s*'[^']*'$", "", text)


def open_video(source: str | os.PathLike) -> FrameFolder | VideoFile:
    """A :class:`FrameFolder` for a directory, a :class:`VideoFile` otherwise."""
    p = Path(source)
    if p.is_dir():
        return FrameFolder(p)
    if not p.exists():
        raise VideoError(p, "no such file or folder", "check the path (and --root / the stage TOML)",
                              kind="missing")
    return VideoFile(p)


def read_frames(
    source: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Frames of a video file or frame folder as ``uint8 (T, H, W, 3)`` RGB.

    With ``indices`` (0-based, any order, repeats allowed) exactly those frames are returned in that
    order; an index past the end raises :class:`VideoError`. Otherwise frames ``start:stop`` (slice
    rules; ``stop=None`` = to the end). Decoding stops at the last frame needed.
    """
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"bad frame range start={start} stop={stop}: need 0 <= start <= stop")
    src = open_video(source)
    try:
        if indices is not None:
            return src.read(indices)
        if isinstance(src, FrameFolder):
            n = src.n_frames()
            return src.read(range(start, min(n, stop) if stop is not None else n))
        return src.read_range(start, stop)
    finally:
        src.close()


def count_frames(source: str | os.PathLike, *, exact: bool = True) -> int:
    """Number of frames: images in a folder, or frames of a video file.

    ``exact=True`` (default) decodes the whole file, the only count that always agrees with
    :func:`read_frames`; ``exact=False`` counts demuxed packets (no decoding, several times faster,
    equal for the usual intra/P-frame codecs but not guaranteed for every file).
    """
    src = open_video(source)
    try:
        if isinstance(src, VideoFile) and not exact:
            return src.n_frames_fast()
        return src.n_frames()
    finally:
        src.close()


def iter_frames(source: str | os.PathLike, chunk: int = 64, stop: int | None = None) -> Iterable[np.ndarray]:
    """Frames ``0:stop`` of a video file or frame folder, ``chunk`` at a time, as ``uint8 (t, H, W, 3)`` RGB.

    The streaming form of :func:`read_frames` for callers that must not hold a whole video (a minute
    of 1080p60 is ~22 GB of RGB): every array holds ``chunk`` consecutive frames except possibly the
    last, and concatenated they equal ``read_frames(source, stop=stop)``. The file is decoded once,
    front to back; errors are the same :class:`VideoError` as ``read_frames``, plus ``corrupt`` for a
    frame whose size differs from the first (``read_frames`` cannot stack those either).
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: need at least 1 frame per chunk")
    if stop is not None and stop < 0:
        raise ValueError(f"bad frame range stop={stop}: need stop >= 0")
    src = open_video(source)
    try:
        if isinstance(src, FrameFolder):
            n = src.n_frames() if stop is None else min(src.n_frames(), stop)
            first = None
            for a in range(0, n, chunk):
                part = src.read(range(a, min(n, a + chunk)))
                first = part.shape[1:] if first is None else first
                if part.shape[1:] != first:
                    # read() checks sizes within one chunk; across chunks the odd one is the chunk's first.
                    raise VideoError(
                        src.files[a], f"frame size {part.shape[2]}x{part.shape[1]} differs from {first[1]}x{first[0]}",
                        "re-extract the folder so every frame has the same size", kind="corrupt",
                    )
                yield part
            return
        if stop == 0:
            return
        out, k, n = None, 0, 0
        for frame in src._frames():
            arr = frame.to_ndarray(format="rgb24")
            if out is None:
                shape = arr.shape
                out = np.empty((chunk, *shape), np.uint8)  # filled in place: no list + stack double copy
            elif arr.shape != shape:
                raise VideoError(
                    src.path, f"frame {n} is {arr.shape[1]}x{arr.shape[0]} but the first is {shape[1]}x{shape[0]}",
                    "re-encode the video at one resolution (e.g. ffmpeg -i IN -vf scale=W:H OUT)", kind="corrupt",
                )
            out[k] = arr
            k, n = k + 1, n + 1
            if k == chunk:
                yield out
                out, k = np.empty_like(out), 0
            if stop is not None and n >= stop:
                break
        if n == 0:
            raise VideoError(src.path, "no frames could be decoded", "re-export the video", kind="empty")
        if k:
            yield out[:k]
    finally:
        src.close()
