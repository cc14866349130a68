"""Video input for the Qwen-VL families (docs/design.md §1.2, video): frames in place of the image.

A video is given as a list of frames (PIL images, H x W x 3 uint8 arrays or image paths), as a ``Video``, or as
the path of a video file (read with PyAV when installed: ``read_video_file``, 16 frames sampled evenly).
Qwen's vision tower merges ``temporal_patch_size`` (2) consecutive frames into one temporal patch, so the
visual-token grid is (t, h, w) with ``t = ceil(frames / 2)``: map ``k`` covers frames ``2k`` and ``2k + 1`` (as
in TAM, which explains the frame pair). An odd frame count is padded by repeating the last frame, as Qwen's own
video processor does. Every frame must have the same size.

transformers builds Qwen video processors only with torchvision, which mmx_fast does not need (docs/design.md
§7), so ``qwen_video_inputs`` builds ``pixel_values_videos`` / ``video_grid_thw`` from the frames with
the IMAGE processor's resize, normalisation and patching: each frame is patched as an image (whose patch
repeats the frame over the temporal slots) and the temporal slots are then filled from the frame pair. Two
identical frames therefore give exactly the image's pixel values (tested). The frames are resized by the
image processor's smart-resize (its min / max pixels), not by the video processor's own pixel budget.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

#: Frame rates a ``Video`` may declare: Qwen2.5-VL's temporal positions grow as 1 / fps (a tiny rate would
#: overflow them; fps 0 divides by zero).
MIN_FPS, MAX_FPS = 0.01, 1000.0
#: Most pixels of all a video's frames together (256 frames of 1920 x 2034; 3 GB as RGB).
MAX_VIDEO_PIXELS = 1_000_000_000
MAX_FRAMES = 256  # bound on a request (docs: bound every request-sized resource before expensive work)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_FILE_FRAMES = 16  # frames sampled evenly from a video file
#: Most frames x pixels a video file may make us decode (each is decoded and dropped unless sampled), e.g.
#: 4,340 frames of 1280x720 (2.4 min at 30 fps); checked from the container before any frame is decoded.
MAX_DECODED_PIXELS = 4_000_000_000
#: Most frames a video file may have (each decode has a fixed cost, however small the frame): 55 min at 30 fps.
MAX_DECODED_FRAMES = 100_000


@dataclass(frozen=True)
class Video:
    """A checked video: RGB frames of one size; ``fps`` (frames per second) where known (Qwen2.5-VL's temporal
    positions use it; default 2.0, the rate Qwen's processors sample at)."""

    frames: tuple[Image.Image, ...]
    fps: float = 2.0

    def __post_init__(self) -> None:
        """Every ``Video`` is checked, however it was made: 1..MAX_FRAMES PIL frames of one size within the
        image bounds (converted to RGB), and ``fps`` a number in [MIN_FPS, MAX_FPS]."""
        from .images import check_size, to_rgb

        frames = self.frames
        if not isinstance(frames, (list, tuple)):
            raise TypeError(
                f"Video frames of type {type(frames).__name__} are not supported; expected a tuple of PIL images"
            )
        if not 1 <= len(frames) <= MAX_FRAMES:
            raise ValueError(
                f"a video of {len(frames)} frames is not allowed; expected 1 to {MAX_FRAMES} frames"
            )
        for i, f in enumerate(frames):
            if not isinstance(f, Image.Image):
                raise TypeError(
                    f"Video frame {i} is a {type(f).__name__}; expected a PIL image (mmx_fast.video.load_video "
                    "also takes arrays and image paths)"
                )
        w, h = frames[0].size
        check_size(w, h, what="video frame 0")
        check_video_pixels(w * h * len(frames), f"a video of {len(frames)} frames of {w}x{h}")
        for i, f in enumerate(frames):
            if f.size != (w, h):
                raise ValueError(
                    f"frame {i} is {f.size[0]}x{f.size[1]} but frame 0 is {w}x{h}; expected every frame of a "
                    "video to have the same size"
                )
        fps = self.fps
        ok = isinstance(fps, (int, float, np.integer, np.floating)) and not isinstance(fps, bool)
        if not (ok and np.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
            raise ValueError(f"fps={fps!r} is not allowed; expected a number from {MIN_FPS:g} to {MAX_FPS:g}")
        object.__setattr__(self, "frames", tuple(to_rgb(f) for f in frames))
        object.__setattr__(self, "fps", float(fps))

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size

    def padded(self, multiple: int) -> tuple[Image.Image, ...]:
        """The frames, the last one repeated up to a multiple of ``multiple`` (Qwen's video processor does so)."""
        pad = -len(self.frames) % multiple
        return self.frames + (self.frames[-1],) * pad


def is_video(x: Any) -> bool:
    """A ``Video``, a list / tuple of frames, or the path of a video file (by its suffix: ``VIDEO_SUFFIXES``)."""
    if isinstance(x, (str, os.PathLike)):
        return str(x).lower().endswith(VIDEO_SUFFIXES)
    return isinstance(x, Video) or isinstance(x, (list, tuple))


def load_video(x: Any, fps: float | None = None) -> Video:
    """``x`` (a ``Video`` or a list of frames) as a checked ``Video``: 1..MAX_FRAMES frames, all RGB and of one
    size. Errors name the bad frame and what is allowed."""
    from .images import load_image

    if isinstance(x, Video):
        return x
    if isinstance(x, (str, os.PathLike)):
        return read_video_file(x)
    if not isinstance(x, (list, tuple)):
        raise TypeError(
            f"video of type {type(x).__name__} is not supported; expected a list of frames (PIL images, "
            "H x W x 3 uint8 arrays or image paths)"
        )
    if not 1 <= len(x) <= MAX_FRAMES:
        raise ValueError(f"a video of {len(x)} frames is not allowed; expected 1 to {MAX_FRAMES} frames")
    total = 0
    for i, f in enumerate(x):  # sizes from headers / shapes first: nothing decoded yet
        if isinstance(f, (list, tuple)):
            raise TypeError(
                f"frame {i} is a {type(f).__name__}; expected an image (nested videos are not allowed)"
            )
        try:
            w, h = _frame_size(f)
        except (TypeError, ValueError) as e:
            raise type(e)(f"frame {i}: {e}") from None
        total += w * h
        check_video_pixels(total, f"a video of {len(x)} frames (frames 0..{i})")
    frames, total = [], 0
    for i, f in enumerate(x):
        try:
            frames.append(load_image(f))
        except (TypeError, ValueError) as e:
            raise type(e)(f"frame {i}: {e}") from None
        total += frames[-1].width * frames[-1].height  # URL frames are sized only once fetched
        check_video_pixels(total, f"a video of {len(x)} frames (frames 0..{i})")
    return Video(tuple(frames), 2.0 if fps is None else fps)


def check_video_pixels(total: int, what: str) -> None:
    """Refuse frames whose pixels add up to more than ``MAX_VIDEO_PIXELS`` (each frame alone may be within
    ``images.MAX_PIXELS``; 256 of them would not be)."""
    if total > MAX_VIDEO_PIXELS:
        raise ValueError(
            f"{what} has more than {MAX_VIDEO_PIXELS} pixels in all, above the limit "
            "(mmx_fast.video.MAX_VIDEO_PIXELS); use fewer or smaller frames"
        )


def _frame_size(f: Any) -> tuple[int, int]:
    """(width, height) of a frame as given, without decoding it: a PIL image's size, an array's or tensor's
    shape, an image file's header. Anything else is left to ``load_image`` (counted as 0 here)."""
    from .images import _is_url, check_image_file

    if isinstance(f, Image.Image):
        return f.size
    if isinstance(f, (str, os.PathLike)) and not (isinstance(f, str) and _is_url(f)):
        return check_image_file(f)
    shape = getattr(f, "shape", None)
    if isinstance(shape, tuple) or isinstance(shape, torch.Size):
        dims = [int(d) for d in shape]
        if len(dims) == 3 and dims[0] in (1, 3, 4) and isinstance(f, torch.Tensor):
            return dims[2], dims[1]
        if len(dims) >= 2:
            return dims[1], dims[0]
    return 0, 0


def qwen_video_inputs(
    image_processor: Any, frames: Sequence[Image.Image]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values_videos [t*gh*gw, C*tp*p*p], video_grid_thw [1, 3]) of ``frames`` (a multiple of the
    processor's ``temporal_patch_size`` tp), laid out as Qwen's video processor does: temporal patch k holds
    frames tp*k .. tp*k + tp - 1 in its tp slots; patches are t-major, then the image processor's own (merged
    block) order within each frame."""
    tp = int(getattr(image_processor, "temporal_patch_size", 2))
    p = int(image_processor.patch_size)
    if len(frames) % tp:
        raise ValueError(f"{len(frames)} frames is not a multiple of temporal_patch_size={tp}")
    per_frame = []
    grid = None
    for f in frames:
        out = image_processor(images=[f], return_tensors="pt")
        thw = tuple(int(v) for v in out["image_grid_thw"].reshape(-1))
        if grid is None:
            grid = thw
        elif thw != grid:  # frames of one size resize alike; anything else is a bug, never a silent mix
            raise ValueError(f"frame grids differ: {thw} vs {grid}")
        px = out["pixel_values"]
        n = px.shape[0]
        per_frame.append(px.reshape(n, -1, tp, p, p)[:, :, 0])  # [N, C, p, p]: the frame itself
    assert grid is not None
    pairs = [
        torch.stack(per_frame[k : k + tp], dim=2) for k in range(0, len(per_frame), tp)
    ]  # [N, C, tp, p, p]
    pixel_values = torch.cat([x.reshape(x.shape[0], -1) for x in pairs], 0)
    thw = torch.tensor([[len(pairs), grid[1], grid[2]]], dtype=torch.long)
    return pixel_values, thw


def _video_path(path: str | os.PathLike) -> str:
    """``path`` as a string after checking it names a regular file (not a folder, pipe or device)."""
    from .images import regular_file

    return str(regular_file(path, "video file", "a video file", missing=FileNotFoundError))


def read_video_file(path: str | os.PathLike, max_frames: int = DEFAULT_FILE_FRAMES) -> Video:
    """Frames of a video file read with PyAV (``pip install av`` or the ``video`` extra), sampled evenly to at
    most ``max_frames``; ``fps`` is the rate of the sampled frames.

    Bounded before any frame is decoded: the frames are counted from the container's packets (no decoding),
    each frame's size is checked against ``images.check_size`` and frames x pixels against
    ``MAX_DECODED_PIXELS``; then the frames are decoded in one pass and only the sampled ones are kept (one
    decoded frame in memory at a time besides them)."""
    from .images import check_size

    try:
        import av
    except ImportError:
        raise ImportError(
            "reading a video file needs PyAV (pip install av); or pass the frames as a list of images"
        ) from None
    if not (
        isinstance(max_frames, int) and not isinstance(max_frames, bool) and 1 <= max_frames <= MAX_FRAMES
    ):
        raise ValueError(f"max_frames={max_frames!r} is not allowed; expected 1 to {MAX_FRAMES}")
    name = f"video file {str(path)!r}"
    path = _video_path(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise ValueError(f"{name} has no video stream (its streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
            check_size(width, height, what=f"{name}'s frame size")
            rate = float(stream.average_rate) if stream.average_rate else None
            count = 0
            for packet in container.demux(stream):  # counting packets decodes nothing
                if packet.size:
                    count += 1
                    if count > MAX_DECODED_FRAMES or count * width * height > MAX_DECODED_PIXELS:
                        raise ValueError(
                            f"{name} has more than {count - 1} frames of {width}x{height}: decoding them would "
                            f"exceed the limit of {MAX_DECODED_PIXELS} pixels (mmx_fast.video.MAX_DECODED_PIXELS) "
                            f"or {MAX_DECODED_FRAMES} frames (MAX_DECODED_FRAMES); cut the clip, or pass sampled "
                            "frames as a list of images"
                        )
            if count == 0:
                raise ValueError(f"{name}: no video frames could be decoded")
            wanted = np.linspace(0, count - 1, num=min(max_frames, count)).round().astype(int).tolist()
            check_video_pixels(
                len(wanted) * width * height, f"{name}'s {len(wanted)} sampled frames of {width}x{height}"
            )
            keep = set(wanted)
            container.seek(0, stream=stream)
            frames: dict[int, Image.Image] = {}
            for i, frame in enumerate(container.decode(stream)):
                if i > wanted[-1]:
                    break
                if i in keep:
                    if (frame.width, frame.height) != (width, height):
                        check_size(frame.width, frame.height, what=f"{name}'s frame {i}")
                    frames[i] = frame.to_image().convert("RGB")
    except av.FFmpegError as e:  # PyAV's errors: not a video, corrupt data
        raise ValueError(f"{name} cannot be read as a video ({e})") from None
    if not frames:
        raise ValueError(f"{name}: no video frames could be decoded")
    picked = [
        frames[i] for i in wanted if i in frames
    ]  # a stream may decode fewer frames than it has packets
    fps = None if rate is None else rate * len(picked) / count
    return load_video(picked, fps=fps)
