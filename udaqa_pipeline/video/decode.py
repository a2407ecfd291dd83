"""Video input shared by every stage: a video file (PyAV) or a folder of frame images (Pillow).

Small interface in the pytorchvideo spirit: :func:`open_video` returns a backend object with
``n_frames()``, ``read(indices)`` and ``close()``; :func:`read_frames`, :func:`iter_frames` and
:func:`count_frames` are the one-call forms everything else uses. Frames come back as ``uint8``
arrays of shape ``(T, H, W, 3)`` in RGB order, **as players show them**.

Design choices:

- Video files decode through PyAV with ``stream.thread_type = "AUTO"`` (frame + slice threads), so
  anything FFmpeg reads works (mp4, avi, mkv, webm, gif, ...). Decoding always starts at the first
  frame and stops at the last frame requested: frame-accurate seeking is unreliable across codecs
  and containers, and the AQA windows (first 103 frames, or frames spread over a short clip) need
  the early part anyway. Frames that are not requested are decoded but never converted to RGB.
- Display rotation: a stream whose display matrix rotates (phones store a portrait video landscape
  with a -90 / 90 / 180 matrix) or mirrors it comes back the way players show it, with FFmpeg's own
  rule (``ffmpeg``'s autorotate: ``transpose`` / ``hflip`` / ``vflip`` from the matrix, see
  :func:`display_transform`). The matrix is read from the first decoded frame's side data and
  applied to every frame. A rotation that is not a multiple of 90 degrees is refused
  (``unsupported``): resampling it would invent pixels.
- Frame counts (:meth:`VideoFile.container_count`): the stream header's frame count, cross-checked
  with the container's packet index (or, where the index is missing or disagrees, with a count of
  demuxed packets; no decoding either way). A count the two sources agree on is *trusted*:
  :meth:`VideoFile.read` then decodes once and, for the MPEG-1/2/4 family, skips the B-frames
  nobody asked for (see :data:`SKIP_SAFE_CODECS`). An untrusted count is checked by decoding: when
  a window reaches the end of the file, decoding continues to the end and
  :attr:`VideoFile.decoded_frames` holds the exact count the caller compares with its own.
- Truncated files: when the container states ``N`` frames and decoding ends at ``M < N`` frames
  with a decode error, or the container's index points past the end of the file, or its trailer
  (index) is gone with packets missing, reading a frame past ``M`` raises ``truncated`` naming both
  counts. A header that states more frames than an index listing every packet is a wrong header,
  not a cut: the frames that decode are the video. A complete file with fewer frames than a window
  is not an error here: the caller's short-video policy pads it (:mod:`udaqa_pipeline.video.clips`).
- One frame size per read: a video whose frame size changes mid-stream (a concatenated recording)
  or a frame folder with an image of another size is refused (``unsupported``), naming the frame and
  both sizes (:func:`stack_frames`); scaling would change the picture the features are made from.
- Frame folders: every file with an image extension, *naturally* sorted by name (``img_2`` before
  ``img_10``), so both zero-padded and unpadded numbering work. Only requested images are opened.
  Greyscale / RGBA / palette images are converted to RGB; all frames must share one size. When
  every name carries a frame number (its last run of digits, increasing in name order), the folder
  is addressed **by number**: index ``i`` is frame number ``first + i`` and ``n_frames()`` spans
  ``first..last``, so a missing file is a gap, never a silent shift of every later frame. Reading
  a gap raises ``gap`` naming the missing numbers, or with ``gap_policy="nearest"`` takes the
  nearest existing frame (earlier on a tie) and records the numbers it filled. Names without
  numbers keep plain name order. A gap before the first file cannot be seen. A folder whose names
  do not say one frame order is refused (``ambiguous``), never read in some order: two image types
  (``00001.jpg`` and ``00001.png``), numbered and unnumbered names side by side, a number used
  twice, or numbers that do not increase in name order (two numbering schemes, ``cam1_0002`` /
  ``cam2_0001``).
- ``start``/``stop`` follow Python slice rules (a ``stop`` past the end gives fewer frames, the
  caller sees it in ``len``). ``indices`` are strict: an index past the end raises
  :class:`VideoError`, because a window that silently shrinks would misalign clips.
- Every failure (missing, empty, corrupt, unreadable, not a video) raises :class:`VideoError`, which
  names the file, the reason and what to do; PyAV / Pillow exceptions are wrapped, never leaked.
  Its ``kind`` (:data:`VIDEO_ERROR_KINDS`) says the same for code, so callers never parse messages.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Iterable, NamedTuple, Protocol, Sequence

import numpy as np

from ..errors import UdaqaError

#: File extensions read as frames of a frame folder (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

#: Frame-folder gap policies (``frames.gap_policy``): refuse a window over a missing frame number,
#: or fill it from the nearest existing frame (and report which numbers were filled).
GAP_POLICIES = ("error", "nearest")

#: Decoders that output a B-frame (never a reference) at the packet step that decodes it and hold
#: every reference frame back by a fixed delay. Skipping an unneeded B-frame (``skip_frame =
#: NONREF``) then removes only that frame and leaves every other frame at the packet step where a
#: full decode outputs it, so a frame's position is its packet step minus the delay: exact frames
#: from one pass that decodes only what the wanted frames depend on. DivX files whose packed
#: B-frames make FFmpeg decode them a packet late, or with dropped (not-coded) frames, are refused
#: packet by packet (:func:`_mpeg4_step_safe`). H.264/HEVC reorder through a picture buffer whose
#: output timing can change when frames are skipped; they decode every frame.
SKIP_SAFE_CODECS = frozenset({"mpeg4", "mpeg1video", "mpeg2video"})

#: ``VideoError.kind`` values: what went wrong, for code (the message is for people).
VIDEO_ERROR_KINDS: dict[str, str] = {
    "missing": "the file or folder does not exist",
    "unreadable": "it exists but the OS refuses to read it (permissions, I/O error)",
    "empty": "nothing to decode: a 0-byte file, no video stream, no decodable frame, a folder without images",
    "corrupt": "damaged or not a video: FFmpeg cannot open or decode it, a frame image is unreadable",
    "truncated": "cut short: the container states N frames but decoding ends at M < N with a decode error, "
                 "or its index points past the end of the file (an interrupted download or copy)",
    "gap": "a numbered frame folder lacks frame numbers inside the window (frames.gap_policy = \"error\")",
    "unsupported": "a valid video the pipeline cannot read faithfully: a display rotation that is not a "
                   "multiple of 90 degrees, a frame size that changes between frames",
    "too_short": "fewer frames than asked for: an index past the end, a span ending past the source, a span "
                 "shorter than the window under frames.short_policy = \"error\"",
    "bad_request": "no file could satisfy the request: a negative index, an empty annotation span, bad window "
                   "settings",
    "damaged": "decoded, but FFmpeg reports frames of the window as damaged (their data did not decode and "
               "error concealment painted over it; frames.damaged = \"fail\")",
    "ambiguous": "a frame folder whose names do not say one frame order: two image types, numbered and "
                 "unnumbered names, a repeated number or two numbering schemes",
}


class VideoError(UdaqaError):
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


_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def frame_numbers(names: Sequence[str | os.PathLike]) -> tuple[int, ...] | None:
    """The frame number of each name (the last run of digits of its stem), given in natural name
    order; ``None`` when no name carries a number (the folder keeps name order). Raises
    ``ValueError`` saying why when the names do not say one order: some names numbered and others
    not, a repeated number, or numbers that do not increase in name order (two numbering schemes)."""
    found = [_LAST_NUMBER.search(Path(name).stem) for name in names]
    if not any(found):
        return None
    if not all(found):
        bare = [Path(n).name for n, m in zip(names, found) if m is None]
        raise ValueError(f"{len(bare)} name(s) without a frame number beside numbered ones (e.g. {bare[0]})")
    nums = [int(m.group(1)) for m in found]
    for (a, na), (b, nb) in zip(zip(nums, names), zip(nums[1:], names[1:])):
        if b <= a:
            what = "the frame number is used twice" if a == b else "the numbers do not increase in name order"
            raise ValueError(f"{Path(na).name} and {Path(nb).name}: {what} (two numbering schemes in one folder)")
    return tuple(nums)


def _cached_listing(folder: str | os.PathLike) -> tuple[tuple[Path, ...], tuple[int, ...] | None]:
    folder = Path(folder)
    try:
        mtime = folder.stat().st_mtime_ns
    except OSError as exc:
        kind = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        raise VideoError(folder, f"cannot read frame folder ({exc.strerror or exc})", "check the path and permissions",
                         kind=kind) from exc
    return _listing(str(folder), mtime)


@functools.lru_cache(maxsize=16)
def _listing(folder: str, mtime_ns: int) -> tuple[tuple[Path, ...], tuple[int, ...] | None]:
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
    types = sorted({os.path.splitext(n)[1].lower() for n in names})
    fix = "keep one set of frames per folder: move the other files out, or extract the video again"
    if len(types) > 1:
        raise VideoError(folder, f"frame folder mixes image types ({', '.join(types)}): which files are the "
                                 f"frames is ambiguous", fix, kind="ambiguous")
    try:
        numbers = frame_numbers(names)
    except ValueError as exc:
        raise VideoError(folder, f"frame folder names do not say one frame order: {exc}", fix,
                         kind="ambiguous") from exc
    base = Path(folder)
    return tuple(base / n for n in names), numbers


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


SIZE_FIX_VIDEO = "re-encode it at one frame size (e.g. ffmpeg -i IN -vf scale=W:H OUT.mp4)"
SIZE_FIX_FOLDER = "re-extract the folder so every frame has the same size"


def size_change_error(path: str | os.PathLike, index: int, shape: tuple, first_index: int, first_shape: tuple,
                      fix: str = SIZE_FIX_VIDEO) -> VideoError:
    """The ``unsupported`` error of a frame whose size differs from an earlier frame of the same read."""
    return VideoError(path, f"the frame size changes: frame {index} is {shape[1]}x{shape[0]} but frame {first_index} "
                            f"is {first_shape[1]}x{first_shape[0]}", fix, kind="unsupported")


def stack_frames(path: str | os.PathLike, frames: Sequence[np.ndarray], indices: Sequence[int] | None = None,
                 fix: str = SIZE_FIX_VIDEO) -> np.ndarray:
    """``np.stack`` of decoded frames (``indices``: their frame indices, default 0..), refusing frames
    of different sizes with :func:`size_change_error` instead of numpy's anonymous shape error."""
    idx = list(range(len(frames))) if indices is None else list(indices)
    if frames:
        k0 = min(range(len(frames)), key=idx.__getitem__)  # the earliest frame is the reference
        first = frames[k0].shape
        bad = [k for k in range(len(frames)) if frames[k].shape != first]
        if bad:
            k = min(bad, key=idx.__getitem__)
            raise size_change_error(path, idx[k], frames[k].shape, idx[k0], first, fix)
    return np.stack(frames)


def number_ranges(numbers: Iterable[int]) -> str:
    """``[100, 101, 102, 150]`` -> ``"100-102, 150"`` (sorted, unique)."""
    out: list[str] = []
    nums = sorted(set(int(n) for n in numbers))
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(out)


class FrameFolder:
    """A folder of frame images, addressed by frame number when every name carries one (see the module
    docstring), else by natural name order.

    ``filled`` holds the frame numbers the last :meth:`read` took from a neighbour under
    ``gap_policy="nearest"`` (empty otherwise).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        files, numbers = _cached_listing(self.path)
        self.files = list(files)
        self.numbers = numbers
        self.filled: tuple[int, ...] = ()
        if not self.files:
            raise VideoError(
                self.path,
                "frame folder holds no images (" + "/".join(sorted(IMAGE_EXTENSIONS)) + ")",
                "extract the frames into this folder or point --root at the right place",
                kind="empty",
            )

    @property
    def first_number(self) -> int | None:
        """Frame number of index 0, or ``None`` for a folder ordered by name alone."""
        return None if self.numbers is None else self.numbers[0]

    def n_frames(self) -> int:
        """Frames the folder spans: ``last - first + 1`` by number (gaps included), else the image count."""
        if self.numbers is None:
            return len(self.files)
        return self.numbers[-1] - self.numbers[0] + 1

    def locate(self, indices: Sequence[int], gap_policy: str = "error") -> tuple[np.ndarray, tuple[int, ...]]:
        """File positions (into ``files``) of frame indices, and the frame numbers filled from a neighbour.

        Raises ``gap`` when an index falls on a missing frame number under ``gap_policy="error"``.
        """
        if gap_policy not in GAP_POLICIES:
            raise ValueError(f"unknown gap_policy {gap_policy!r}; use one of {', '.join(GAP_POLICIES)}")
        idx = _check_indices(self.path, indices, self.n_frames())
        if self.numbers is None:
            return idx, ()
        nums = np.asarray(self.numbers, np.int64)
        want = nums[0] + idx
        pos = np.searchsorted(nums, want)  # first file numbered >= want; equal unless want is missing
        missing = nums[np.minimum(pos, len(nums) - 1)] != want
        if not missing.any():
            return pos, ()
        gone = sorted(set(want[missing].tolist()))
        if gap_policy == "error":
            jumps = dict.fromkeys(
                f"{self.files[int(j) - 1].name} -> {self.files[int(j)].name}" for j in np.searchsorted(nums, gone))
            many = len(gone) > 1
            raise VideoError(
                self.path,
                f"frame number{'s' if many else ''} {number_ranges(gone)} needed by the window {int(want.min())}-"
                f"{int(want.max())} {'are' if many else 'is'} missing (the files jump {', '.join(jumps)})",
                "re-extract the frames of this folder, or set frames.gap_policy = \"nearest\" to take each missing "
                "frame from its nearest neighbour (the sample is flagged in the table)",
                kind="gap",
            )
        # nearest existing number; the earlier one on a tie (it is what a player would still show)
        after = np.minimum(pos, len(nums) - 1)
        before = np.maximum(pos - 1, 0)
        take_before = np.abs(want - nums[before]) <= np.abs(nums[after] - want)
        return np.where(missing & take_before, before, after), tuple(gone)

    def read(self, indices: Sequence[int], gap_policy: str = "error") -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        pos, self.filled = self.locate(indices, gap_policy)
        cache: dict[int, np.ndarray] = {}
        shape = None
        for i in dict.fromkeys(pos.tolist()):  # each needed image opened once, even if repeated
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
                shape, first = arr.shape, i
            elif arr.shape != shape:
                raise size_change_error(f, self._index_of(i), arr.shape, self._index_of(first), shape,
                                        SIZE_FIX_FOLDER)
            cache[i] = arr
        if not pos.size:
            return np.zeros((0, 0, 0, 3), np.uint8)
        return np.stack([cache[i] for i in pos.tolist()])

    def _index_of(self, pos: int) -> int:
        """The frame index of the file at position ``pos``."""
        return pos if self.numbers is None else self.numbers[pos] - self.numbers[0]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- display rotation


def _rotation_degrees(m: np.ndarray) -> float:
    """FFmpeg's ``av_display_rotation_get``: the counter-clockwise angle of a 16.16 display matrix."""
    sx, sy = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if sx == 0 or sy == 0:
        return float("nan")
    return -math.degrees(math.atan2(m[1] / sy, m[0] / sx))


def display_transform(matrix: Sequence[int] | None) -> tuple[str, ...]:
    """The operations that turn a decoded frame into the displayed one, for a 3x3 display matrix
    (FFmpeg's ``AV_FRAME_DATA_DISPLAYMATRIX``: 9 int32, 16.16 fixed point; ``None`` = none).

    Returns a tuple of ``"clock"``, ``"cclock"``, ``"transpose"``, ``"antitranspose"``, ``"hflip"``,
    ``"vflip"``, applied in order by :func:`apply_display_transform`; ``()`` when nothing changes.
    The choice is the one the ``ffmpeg`` tool makes when it autorotates (fftools ``get_rotation``
    and its ``transpose``/``hflip``/``vflip`` filters), so frames match what players show.
    Raises ``ValueError`` for an angle that is not a multiple of 90 degrees.
    """
    if matrix is None:
        return ()
    m = np.asarray(matrix, np.float64).reshape(-1)
    if m.size != 9:
        raise ValueError(f"a display matrix has 9 entries, got {m.size}")
    rot = _rotation_degrees(m)
    if math.isnan(rot):
        raise ValueError("degenerate display matrix (zero scale)")
    theta = -round(rot)  # fftools get_rotation: clockwise degrees in [0, 360)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return ("transpose",) if m[3] > 0 else ("clock",)
    if abs(theta - 180) < 1:
        return (("hflip",) if m[0] < 0 else ()) + (("vflip",) if m[4] < 0 else ())
    if abs(theta - 270) < 1:
        return ("antitranspose",) if m[3] < 0 else ("cclock",)
    if abs(theta) < 1 or abs(theta - 360) < 1:
        return ("vflip",) if m[4] < 0 else ()
    raise ValueError(f"display rotation of {theta:g} degrees is not a multiple of 90")


def apply_display_transform(frame: np.ndarray, ops: Sequence[str]) -> np.ndarray:
    """Apply :func:`display_transform` operations to an ``(H, W, C)`` frame (returns a view)."""
    for op in ops:
        if op == "clock":
            frame = np.rot90(frame, -1)
        elif op == "cclock":
            frame = np.rot90(frame, 1)
        elif op == "transpose":  # ffmpeg transpose=cclock_flip: out[i, j] = in[j, i]
            frame = frame.swapaxes(0, 1)
        elif op == "antitranspose":  # ffmpeg transpose=clock_flip: out[i, j] = in[H-1-j, W-1-i]
            frame = frame[::-1, ::-1].swapaxes(0, 1)
        elif op == "hflip":
            frame = frame[:, ::-1]
        elif op == "vflip":
            frame = frame[::-1]
        else:
            raise ValueError(f"unknown display operation {op!r}")
    return frame


def frame_display_matrix(frame) -> np.ndarray | None:
    """The display matrix (9 int32) of a decoded PyAV frame, or ``None`` when it carries none."""
    sd = frame.side_data.get("DISPLAYMATRIX")
    if sd is None:
        return None
    return np.frombuffer(bytes(sd), dtype=np.int32)[:9].copy()


# ----------------------------------------------------------------------------- video files


class ContainerCount(NamedTuple):
    """What a video container states about its frame count, without decoding (see ``container_count``)."""

    frames: int  #: the count a window is laid out on (0: the container says nothing usable)
    header: int  #: frames in the stream header (0: not stated, e.g. Matroska)
    index: int  #: entries of the container's packet index loaded at open (0: none)
    packets: int | None  #: non-empty packets demuxed (None: header and index agreed, no demuxing needed)
    trusted: bool  #: two independent sources agree: decode once, verify nothing more
    truncated: bool  #: the index points past the end of the file, or it is gone and packets are missing


class VideoFile:
    """A video file decoded with PyAV (threaded), first frame to the last one needed.

    ``decoded_frames`` is the exact frame count once a :meth:`read` decoded to the end of the file
    (it does when a window reaches the last frame the container states, or when frames run out);
    ``None`` until then.

    ``damaged`` holds the indices, among those the last :meth:`read` returned, of frames FFmpeg
    decoded from damaged data: a frame it flags corrupt (``AV_FRAME_FLAG_CORRUPT``, PyAV's
    ``is_corrupt``: its error concealment painted over what it could not decode) and every frame
    after it up to the next clean key frame, which predict from it and carry the damage on (FFmpeg
    flags only the first). ``corrupt_frames`` are the flagged frames themselves.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise VideoError(self.path, "no such file or folder", "check the path (and --root / the stage TOML)",
                              kind="missing")
        if self.path.stat().st_size == 0:
            raise VideoError(self.path, "file is empty (0 bytes)", "re-download or re-export the video", kind="empty")
        self._container = self._open()
        from av.video.reformatter import VideoReformatter

        self._rgb = VideoReformatter()
        self._ops: tuple[str, ...] | None = None  # display transform, known after the first decoded frame
        self._count: ContainerCount | None = None
        self.decoded_frames: int | None = None
        self.damaged: tuple[int, ...] = ()
        self.corrupt_frames: tuple[int, ...] = ()

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

    # -- counting

    def container_count(self) -> ContainerCount:
        """The frame count the container states, cross-checked, without decoding (cached).

        Trusted when the stream header's count equals the packet index's entries (all non-empty and
        inside the file), else when it equals a count of demuxed packets. Without a header count
        (Matroska/WebM) the packet count is used untrusted. ``truncated`` marks a file whose index
        points past its end, or whose header states more frames than there are packets while the
        index is incomplete (an AVI cut before its trailing index). A header that overstates the
        count of a file whose index lists every packet is not trusted: the packets are counted and
        decoding gives the exact count.
        """
        if self._count is not None:
            return self._count
        stream = self._container.streams.video[0]
        header = max(int(stream.frames or 0), 0)
        entries = stream.index_entries
        n_index = len(entries)
        size = self.path.stat().st_size
        sizes_ok, index_end = True, 0
        for e in entries:
            sizes_ok = sizes_ok and e.size > 0 and not e.is_discard  # dropped / edit-list frames decode to nothing
            index_end = max(index_end, e.pos + e.size)
        past_eof = n_index > 0 and index_end > size
        if header and n_index == header and sizes_ok and not past_eof:
            self._count = ContainerCount(header, header, n_index, None, True, False)
            return self._count
        packets = self._packet_count()
        # An index with an entry for every packet is whole: a header that states more frames than it
        # lists is a wrong header (some muxers and editors overstate it), not a cut file. A cut AVI
        # loses its trailing index, so its entries fall short of the packets that remain.
        index_whole = n_index >= packets > 0
        truncated = bool(header) and (past_eof or (packets < header and not index_whole))
        if truncated:  # lay the window out on what the container promised; decoding will show the cut
            count = ContainerCount(header, header, n_index, packets, False, True)
        elif header and packets == header:
            count = ContainerCount(header, header, n_index, packets, True, False)
        else:
            count = ContainerCount(packets, header, n_index, packets, False, False)
        self._count = count
        return count

    def _packet_count(self) -> int:
        # Its own handle, so counting works whatever state the decoding container is in.
        import av

        container = self._open()
        n = 0
        try:
            for pkt in container.demux(container.streams.video[0]):
                if pkt.size:
                    n += 1
        except av.FFmpegError as exc:
            raise VideoError(self.path, f"corrupt data while demuxing ({_av_reason(exc)})", kind="corrupt") from exc
        finally:
            container.close()
        return n

    def n_frames(self) -> int:
        """Exact count, by decoding (container headers are often missing or wrong, e.g. in mkv).

        A file the container says is longer than what decodes (see :meth:`container_count`) raises
        ``truncated``; a decode error elsewhere ``corrupt``."""
        n, err = 0, None
        try:
            for _ in self._frames():
                n += 1
        except VideoError as exc:
            err = exc
        finally:
            self._rewind()
        if err is not None or self._cut_short(n):
            raise self._stopped_error(n, err)
        if n == 0:
            raise VideoError(self.path, "no frames could be decoded", "re-export the video", kind="empty")
        self.decoded_frames = n
        return n

    def n_frames_fast(self) -> int:
        """The container's own count (:meth:`container_count`): no decoding, equal to decoding for the
        usual files, not guaranteed for every file (``count_frames(exact=True)`` is)."""
        return self.container_count().frames

    # -- decoding

    def _frames(self) -> Iterable:
        import av

        try:
            for frame in self._container.decode(self._stream()):
                yield frame
        except av.FFmpegError as exc:
            raise VideoError(self.path, f"corrupt data while decoding ({_av_reason(exc)})", kind="corrupt") from exc

    def to_rgb(self, frame) -> np.ndarray:
        """One decoded PyAV frame as ``uint8 (H, W, 3)`` RGB, turned the way players show it."""
        if self._ops is None:
            try:
                self._ops = display_transform(frame_display_matrix(frame))
            except ValueError as exc:
                raise VideoError(self.path, f"cannot apply its display matrix: {exc}",
                                 "re-encode it upright (ffmpeg applies the rotation: ffmpeg -i IN OUT.mp4)",
                                 kind="unsupported") from exc
        # One converter per file: frame.to_ndarray(format=...) builds a new swscale context per frame.
        arr = self._rgb.reformat(frame, format="rgb24").to_ndarray()
        return apply_display_transform(arr, self._ops) if self._ops else arr

    def _header_frames(self) -> int:
        return max(int(self._container.streams.video[0].frames or 0), 0)

    def _cut_short(self, n: int) -> bool:
        """The container states more than ``n`` frames and its index shows the file was cut."""
        return self._header_frames() > n and self.container_count().truncated

    def _stopped_error(self, n: int, err: VideoError | None) -> VideoError:
        """The error for decoding that ended (EOF or ``err``) after ``n`` frames, short of what was needed."""
        header = self._header_frames()
        if header > n and (err is not None or self._cut_short(n)):
            count = self.container_count()
            why = err.reason if err is not None else (
                "its index points past the end of the file" if count.index >= count.header
                else "its index is gone and packets are missing")
            return VideoError(
                self.path,
                f"truncated: the container states {header} frames but decoding stops after {n} ({why})",
                "the file is cut short (an interrupted download or copy): fetch or copy it again",
                kind="truncated",
            )
        if err is not None:
            return err
        return VideoError(self.path, "no frames could be decoded", "re-export the video", kind="empty")

    def read(self, indices: Sequence[int], *, count: ContainerCount | None = None) -> np.ndarray:
        """Frames at ``indices`` (0-based, any order, repeats allowed) as ``uint8 (T, H, W, 3)``.

        ``count``: the :meth:`container_count` the indices were laid out on. With it, a read whose
        last index is the last frame the container states decodes to the end of the file and sets
        :attr:`decoded_frames` (the caller compares it with ``count.frames``), and a trusted count
        of a :data:`SKIP_SAFE_CODECS` stream skips the B-frames no index needs. Raises
        ``too_short`` for an index past the end (``decoded_frames`` then holds the exact count),
        ``truncated`` when the container promised the missing frames, ``corrupt`` / ``empty``.
        """
        idx = _check_indices(self.path, indices)
        self.damaged, self.corrupt_frames = (), ()
        if not idx.size:
            return np.zeros((0, 0, 0, 3), np.uint8)
        got = None
        if count is not None and count.trusted and self._skip_worthwhile(idx, count.frames):
            got = self._read_skipping(idx, count.frames)
        if got is None:
            got = self._read_in_order(idx, None if count is None else count.frames)
        order = idx.tolist()
        return stack_frames(self.path, [got[i] for i in order], order)

    def _skip_worthwhile(self, idx: np.ndarray, n: int) -> bool:
        codec = self._container.streams.video[0].codec_context.name
        return codec in SKIP_SAFE_CODECS and int(idx.max()) < n and len(_decode_steps(idx, n)) < 0.75 * n

    def _read_in_order(self, idx: np.ndarray, expect: int | None) -> dict[int, np.ndarray]:
        wanted = set(idx.tolist())
        last = int(idx.max())
        to_end = expect is not None and last >= expect - 1
        got: dict[int, np.ndarray] = {}
        damage = _Damage()
        n, err = 0, None
        try:
            for i, frame in enumerate(self._frames()):
                n = i + 1
                damage.see(i, frame, i in wanted)
                if i in wanted:
                    got[i] = self.to_rgb(frame)
                if i >= last and not to_end:
                    break  # stop decoding as soon as the last needed frame is in
        except VideoError as exc:
            if exc.kind != "corrupt":
                raise
            err = exc  # a decode error; whether it matters depends on what was still needed
        finally:
            self._rewind()
        if err is None and to_end:
            self.decoded_frames = n
        self.damaged, self.corrupt_frames = damage.result()
        if last >= n or (err is not None and not (to_end and n == expect)):
            if err is not None or n == 0 or self._cut_short(n):
                raise self._stopped_error(n, err)
            self.decoded_frames = n
            raise VideoError(
                self.path,
                f"frame {last} requested but only {n} frames could be decoded",
                "the video is shorter than the annotation/window expects: check its frame range",
                kind="too_short",
            )
        return got

    def _read_skipping(self, idx: np.ndarray, n: int) -> dict[int, np.ndarray] | None:
        """One pass that skips unneeded B-frames (see :data:`SKIP_SAFE_CODECS`); ``None`` when anything
        disagrees with that model (the caller then decodes every frame in order)."""
        import av

        wanted = set(idx.tolist())
        full = _decode_steps(idx, n)  # packet steps decoded in full: every frame there is output
        stream = self._stream()
        ctx = stream.codec_context
        step_of: dict[int, int] = {}  # packet dts -> packet step
        got: dict[int, np.ndarray] = {}
        emitted: set[int] = set()
        flushed: list = []
        delay, prev, k, current = None, -1, 0, None
        packed_before, is_mpeg4 = False, ctx.name == "mpeg4"
        damage = _Damage()
        try:
            for pkt in self._container.demux(stream):
                if pkt.size:
                    if pkt.dts is None or pkt.dts in step_of or pkt.is_discard or pkt.is_corrupt:
                        return None  # no packet clock to place frames by, or a packet that outputs nothing
                    if is_mpeg4:
                        data = bytes(pkt)
                        if not _mpeg4_step_safe(data, packed_before):
                            return None
                        packed_before = data.count(_MPEG4_VOP) >= 2
                    step_of[pkt.dts] = k
                    mode = "DEFAULT" if k in full else "NONREF"
                    if mode != current:
                        ctx.skip_frame = current = mode
                    k += 1
                for frame in stream.decode(pkt):  # the final empty packet flushes the decoder
                    if frame.dts is None:
                        flushed.append(frame)
                        continue
                    s = step_of.get(frame.dts)
                    if s is None or (delay is None and not frame.key_frame):
                        return None
                    delay = s if delay is None else delay
                    i = s - delay
                    if i <= prev:
                        return None
                    prev = i
                    emitted.add(s)
                    damage.see(i, frame, i in wanted)
                    if i in wanted:
                        got[i] = self.to_rgb(frame)
        except av.FFmpegError:
            return None  # decoding in order classifies the damage
        finally:
            self._rewind()
        if k != n or delay is None or len(flushed) != delay:
            return None
        for j, frame in enumerate(flushed):  # the last `delay` frames, held back until the flush
            i = n - delay + j
            if i <= prev:
                return None
            prev = i
            damage.see(i, frame, i in wanted)
            if i in wanted:
                got[i] = self.to_rgb(frame)
        # Inside the fully decoded steps nothing was skipped, so each step past the delay output a frame;
        # a silent one is a packet that decodes to nothing (a dropped frame), which would shift every
        # later frame. Outside them such a packet cannot be told from a skipped B-frame: AVI marks
        # dropped frames with empty index entries (the count is then untrusted and this path never
        # runs) and MPEG-4 not-coded VOPs are refused packet by packet (_mpeg4_step_safe).
        if any(delay <= s < n and s not in emitted for s in full) or not wanted <= got.keys():
            return None
        self.damaged, self.corrupt_frames = damage.result()
        return got

    def read_range(self, start: int, stop: int | None) -> np.ndarray:
        """Frames ``start:stop`` (slice rules on a complete file: a ``stop`` past the end gives fewer).
        A range that runs into the cut of a truncated file raises ``truncated``."""
        out = []
        n, err, reached_stop = 0, None, False
        try:
            for i, frame in enumerate(self._frames()):
                if stop is not None and i >= stop:
                    reached_stop = True
                    break
                n = i + 1
                if i >= start:
                    out.append(self.to_rgb(frame))
        except VideoError as exc:
            if exc.kind != "corrupt":
                raise
            err = exc
        finally:
            self._rewind()
        if not reached_stop and (stop is None or n < stop):  # decoding ended before the range did
            if err is not None or self._cut_short(n):
                raise self._stopped_error(n, err)
            self.decoded_frames = n
        if n == 0 and stop != 0:
            raise VideoError(self.path, "no frames could be decoded", "re-export the video", kind="empty")
        if not out:
            return np.zeros((0, 0, 0, 3), np.uint8)
        return stack_frames(self.path, out, range(start, start + len(out)))

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Damage:
    """Which decoded frames carry decoder damage: a frame FFmpeg flags corrupt taints itself and the
    frames after it until a clean key frame (an approximation of the reference chain that errs on
    the side of counting: a B-frame of the next group that references the damaged one is counted,
    one whose references are all clean still is until the key frame)."""

    def __init__(self) -> None:
        self.tainted = False
        self.hit: list[int] = []
        self.flagged: list[int] = []

    def see(self, i: int, frame, wanted: bool) -> None:
        if frame.is_corrupt:
            self.tainted = True
            self.flagged.append(i)
        elif frame.key_frame:
            self.tainted = False
        if wanted and self.tainted:
            self.hit.append(i)

    def result(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(sorted(set(self.hit))), tuple(self.flagged)


_MPEG4_VOP = b"\x00\x00\x01\xb6"  # MPEG-4 Part 2 VOP start code
_MPEG4_MAX_NVOP = 19  # FFmpeg's MAX_NVOP_SIZE: a packet this small is a not-coded VOP


def _mpeg4_step_safe(data: bytes, packed_before: bool) -> bool:
    """Whether one MPEG-4 packet keeps frames at their packet steps when B-frames are skipped.

    DivX "packed" files put a P- and a B-VOP in one packet and a not-coded N-VOP in the next, where
    FFmpeg decodes the held B-VOP: fine. A packed packet followed by a coded one makes FFmpeg decode
    every later B-VOP one packet late until the next N-VOP, and a skipped B-frame breaks that chain
    (seen in 5 of the 38 JIGSAWS Suturing videos); an N-VOP with no packed packet before it is a
    dropped frame that decodes to nothing. Either way skipping could shift frames: decode in order.
    """
    tiny = len(data) <= _MPEG4_MAX_NVOP
    return tiny == packed_before


def _decode_steps(idx: np.ndarray, n: int) -> set[int]:
    """Packet steps decoded in full when skipping: around each wanted frame ``w``, steps ``w-1..w+2``
    (a B-frame is decoded at step ``w + delay``, delay 0 or 1 for :data:`SKIP_SAFE_CODECS`, one step
    of margin either side), and the first two (the first key frame and the delay)."""
    steps = {0, 1}
    for w in set(idx.tolist()):
        steps.update(range(max(0, w - 1), min(n, w + 3)))
    return {s for s in steps if s < n}


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
    :func:`read_frames` (a truncated file raises ``truncated``); ``exact=False`` is what the
    container states (header cross-checked with its index or packets, no decoding: equal for the
    usual files, not guaranteed for every file). A numbered frame folder counts ``last - first + 1``.
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
    front to back; errors are the same :class:`VideoError` as ``read_frames`` (``unsupported`` for a
    frame whose size differs from the first, :func:`stack_frames`).
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: need at least 1 frame per chunk")
    if stop is not None and stop < 0:
        raise ValueError(f"bad frame range stop={stop}: need stop >= 0")
    src = open_video(source)
    try:
        if isinstance(src, FrameFolder):
            n = src.n_frames() if stop is None else min(src.n_frames(), stop)
            for a in range(0, n, chunk):
                # frame 0 read first in every chunk: read() measures each image against it, so the odd
                # image is named whichever chunk it falls in
                yield src.read([0, *range(a, min(n, a + chunk))])[1:]
            return
        if stop == 0:
            return
        out, k, n = None, 0, 0
        for frame in src._frames():
            arr = src.to_rgb(frame)
            if out is None:
                shape = arr.shape
                out = np.empty((chunk, *shape), np.uint8)  # filled in place: no list + stack double copy
            elif arr.shape != shape:
                raise size_change_error(src.path, n, arr.shape, 0, shape)
            out[k] = arr
            k, n = k + 1, n + 1
            if k == chunk:
                yield out
                out, k = np.empty_like(out), 0
            if stop is not None and n >= stop:
                break
        else:
            if src._cut_short(n):  # decoding ran out where the container promised more frames
                raise src._stopped_error(n, None)
        if n == 0:
            raise VideoError(src.path, "no frames could be decoded", "re-export the video", kind="empty")
        if k:
            yield out[:k]
    finally:
        src.close()
