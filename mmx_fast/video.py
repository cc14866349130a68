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

MAX_FRAMES = 256  # bound on a request (docs: bound every request-sized resource before expensive work)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_FILE_FRAMES = 16  # frames sampled evenly from a video file


@dataclass(frozen=True)
class Video:
    """A checked video: RGB frames of one size; ``fps`` (frames per second) where known (Qwen2.5-VL's temporal
    positions use it; default 2.0, the rate Qwen's processors sample at)."""

    frames: tuple[Image.Image, ...]
    fps: float = 2.0

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
    frames = []
    for i, f in enumerate(x):
        if isinstance(f, (list, tuple)):
            raise TypeError(
                f"frame {i} is a {type(f).__name__}; expected an image (nested videos are not allowed)"
            )
        try:
            frames.append(load_image(f))
        except (TypeError, ValueError) as e:
            raise type(e)(f"frame {i}: {e}") from None
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        bad = next(i for i, f in enumerate(frames) if f.size != frames[0].size)
        raise ValueError(
            f"frame {bad} is {frames[bad].size[0]}x{frames[bad].size[1]} but frame 0 is "
            f"{frames[0].size[0]}x{frames[0].size[1]}; expected every frame of a video to have the same size"
        )
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps={fps!r} is not allowed; expected a finite number > 0")
    return Video(tuple(frames), float(fps) if fps is not None else 2.0)


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


def read_video_file(path: str | os.PathLike, max_frames: int = DEFAULT_FILE_FRAMES) -> Video:
    """Frames of a video file read with PyAV (``pip install av`` or the ``video`` extra), sampled evenly to at
    most ``max_frames``; ``fps`` is the rate of the sampled frames."""
    try:
        import av
    except ImportError:
        raise ImportError(
            "reading a video file needs PyAV (pip install av); or pass the frames as a list of images"
        ) from None
    if not 1 <= max_frames <= MAX_FRAMES:
        raise ValueError(f"max_frames={max_frames} is not allowed; expected 1 to {MAX_FRAMES}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else None
        frames = [fr.to_image().convert("RGB") for fr in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no video frames could be decoded")
    idx = np.linspace(0, len(frames) - 1, num=min(max_frames, len(frames))).round().astype(int)
    fps = None if rate is None else rate * len(idx) / len(frames)
    return load_video([frames[i] for i in idx], fps=fps)
