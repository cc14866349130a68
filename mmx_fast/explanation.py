"""The result type shared by ``reference.explain`` and ``explain_fast``."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a result file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Explanation:
    """One explained answer, built once by ``mmx_fast.pipeline.build_result`` and never changed afterwards
    (``dataclasses.replace`` gives a changed copy).

    maps:          float32 [T, Hc, Wc] in [0, 1], one map per answer token, on the canonical grid.
    answer_ids:    the T answer token ids (stop token excluded).
    answer_tokens: one display string per answer id.
    grid:          (Hc, Wc), the scale-1.0 visual-token grid.
    scale_maps:    on request (``keep_scale_maps``): {scale: float32 [T, h_s, w_s]} raw clipped logit-lens maps.
    raw_maps:      on request: float32 [T, Hc, Wc], the MSEA map A_t before mitigation / filter.
    view_box:      the part of the image the grid shows, as fractions (x0, y0, x1, y1) of its width and
                   height; None for the whole image. LLaVA's processor centre-crops, so its grid covers
                   only the central square of a non-square photo, and overlays put the map there.
    """

    maps: torch.Tensor
    answer_ids: list[int]
    answer_tokens: list[str]
    grid: tuple[int, int]
    prompt: str = ""
    config: Any = None
    image: Image.Image | None = None
    scale_maps: dict[float, torch.Tensor] | None = None
    raw_maps: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    view_box: tuple[float, float, float, float] | None = None

    def __len__(self) -> int:
        return len(self.answer_ids)

    @property
    def answer_text(self) -> str:
        return "".join(self.answer_tokens)

    def map_uint8(self, i: int) -> np.ndarray:
        """Map i as TAM stores it, ``(map * 255).astype(uint8)`` (truncation); the 1e-4 nudge makes maps
        that are already k / 255 (the ``tam`` preset) come back as exactly k despite float32 rounding."""
        i = self._check_index(i)
        return np.floor(self.maps[i].numpy().astype(np.float64) * 255 + 1e-4).clip(0, 255).astype(np.uint8)

    def _check_index(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"token index {i!r} must be an integer")
        t = len(self.answer_ids)
        if not -t <= i < t:
            raise IndexError(
                f"token index {i} is out of range; this answer has {t} tokens (valid: 0..{t - 1})"
            )
        return int(i) % t

    def heatmap(self, i: int, size: tuple[int, int] | None = None) -> Image.Image:
        """Map i as an RGB heatmap (jet-like colour map), resized bilinearly to ``size`` (W, H) if given."""
        i = self._check_index(i)
        m = self.maps[i].clamp(0, 1).numpy()
        rgb = (_jet(m) * 255).astype(np.uint8)
        img = Image.fromarray(rgb, mode="RGB")
        if size is not None:
            img = img.resize(size, Image.BILINEAR)
        return img

    def box_pixels(self) -> tuple[int, int, int, int]:
        """``view_box`` in pixels of the image (left, top, right, bottom); the whole image when None."""
        w, h = self.image.size
        x0, y0, x1, y1 = self.view_box or (0.0, 0.0, 1.0, 1.0)
        left, top = round(x0 * w), round(y0 * h)
        return left, top, max(left + 1, round(x1 * w)), max(top + 1, round(y1 * h))

    def overlay(self, i: int, alpha: float = 0.5) -> Image.Image:
        """Map i over the image, at the image's size, on the part of the image the grid shows
        (``view_box``; outside it the image is left as it is)."""
        if self.image is None:
            raise ValueError("this Explanation carries no image; pass the image to explain() to get overlays")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha={alpha} is not allowed; expected a number in [0, 1]")
        base = self.image.convert("RGB")
        left, top, right, bottom = self.box_pixels()
        heat = self.heatmap(i, size=(right - left, bottom - top))
        out = base.copy()
        out.paste(Image.blend(base.crop((left, top, right, bottom)), heat, alpha), (left, top))
        return out

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else self.config
        return {
            "prompt": self.prompt,
            "answer_ids": list(map(int, self.answer_ids)),
            "answer_tokens": list(self.answer_tokens),
            "grid": list(self.grid),
            "view_box": list(self.view_box) if self.view_box else None,
            "config": cfg,
            "timings": dict(self.timings),
        }

    def to_html(self, path, title=None, note=None):
        from .report import write_report

        return write_report(self, path, title=title, note=note)

    def save(self, out_dir: str | os.PathLike, overlays: bool = True) -> Path:
        """Write ``maps.npz``, ``explanation.json`` and (optionally) one PNG overlay per token, atomically."""
        import io

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        arrays = {
            "maps": self.maps.numpy().astype(np.float32),
            "grid": np.asarray(self.grid, dtype=np.int64),
            "answer_ids": np.asarray(self.answer_ids, dtype=np.int64),
        }
        if self.raw_maps is not None:
            arrays["raw_maps"] = self.raw_maps.numpy().astype(np.float32)
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(out / "maps.npz", buf.getvalue())
        atomic_write_bytes(out / "explanation.json", json.dumps(self.to_dict(), indent=2).encode())
        if overlays and self.image is not None:
            for i in range(len(self)):
                b = io.BytesIO()
                self.overlay(i).save(b, format="PNG")
                atomic_write_bytes(out / f"token_{i:03d}.png", b.getvalue())
        return out


def _jet(x: np.ndarray) -> np.ndarray:
    """The classic jet colour map, [H, W] in [0, 1] -> [H, W, 3] in [0, 1]."""
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return np.stack([r, g, b], -1)
