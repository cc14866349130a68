"""Image geometry: how a family turns an image at MSEA scale alpha into its visual-token grid (docs/design.md
§1.2), and which part of the image that grid shows.

A family picks one ``Geometry`` (a class attribute of its adapter):

- ``DynamicResolution`` (Qwen2-VL family): the image resized by alpha, then the processor's own resizing; the
  grid is read from ``image_grid_thw`` and always shows the whole image.
- ``FixedCanvas`` (LLaVA-1.5, single-tile InternVL): the image as the processor feeds it at scale 1.0, resized by
  alpha and pasted top-left on a mean-coloured canvas of the model's input size; the grid is square.

Tiled and video families (docs/design.md §1.2: every view of every scale covers a known box of the image) add a
``Geometry`` here that returns one ``ScaledView`` per view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ScaledView:
    """What the processor gets for one image at one scale.

    image:       the image handed to the processor.
    coverage:    (fy, fx) of ``PromptInputs.coverage``.
    base_image:  fixed-size families: the processed scale-1.0 image the canvas was built from; else None.
    overrides:   keyword arguments for this processor call (e.g. resizing switched off for a canvas).
    """

    image: Image.Image
    coverage: tuple[float, float]
    base_image: Image.Image | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def side(size: Any) -> int:
    """One side of a square size given as an int, a (h, w) pair or a {"height", "width"} dict (the height)."""
    if isinstance(size, dict):
        return int(size["height"])
    if isinstance(size, (list, tuple)):
        return int(size[0])
    return int(size)


def check_scale(scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale!r} is not allowed; expected a finite number > 0")
    return scale


def rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB (see ``mmx_fast.images.to_rgb``); anything but a PIL image is a TypeError."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image of type {type(image).__name__} is not supported; expected an RGB PIL image")
    if image.mode != "RGB":
        from ..images import to_rgb

        image = to_rgb(image)
    return image


def resize_by(image: Image.Image, scale: float) -> Image.Image:
    """``image`` resized by ``scale`` (PIL bilinear, at least 1 px per side); the image itself at 1.0."""
    if scale == 1.0:
        return image
    w, h = image.size
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def processed_image(
    image_processor: Any, image: Image.Image, processor_kwargs: dict[str, Any]
) -> Image.Image:
    """The image exactly as ``image_processor`` feeds it to the model (after its own resize / centre-crop /
    padding), as uint8 RGB, by running it with rescaling and normalisation switched off."""
    out = image_processor(
        images=[rgb(image)],
        do_rescale=False,
        do_normalize=False,
        return_tensors=None,
        **processor_kwargs,
    )
    first = out["pixel_values"][0]
    arr = first.cpu().numpy() if torch.is_tensor(first) else np.asarray(first)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def canvas_fill(image_processor: Any) -> tuple[int, int, int]:
    """The processor's mean colour as uint8 RGB (``round(mean * 255)``)."""
    mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
    if isinstance(mean, (int, float)):
        mean = (mean,) * 3
    return tuple(int(round(float(m) * 255)) for m in mean)  # type: ignore[return-value]


def paste_on_canvas(base: Image.Image, scale: float, fill: tuple[int, int, int]) -> Image.Image:
    """``base`` resized by ``scale``, pasted top-left on a ``fill``-coloured canvas of ``base``'s size
    (cropped top-left for scale > 1); ``base`` itself at 1.0."""
    if scale == 1.0:
        return base
    w, h = base.size
    small = resize_by(base, scale)
    canvas = Image.new("RGB", (w, h), fill)
    canvas.paste(small.crop((0, 0, min(w, small.width), min(h, small.height))), (0, 0))
    return canvas


def centre_crop_box(
    image_processor: Any, size: tuple[int, int], processor_kwargs: dict[str, Any]
) -> Box | None:
    """The centre crop of an image of ``size`` (w, h) that ``image_processor`` keeps, as fractions (x0, y0, x1,
    y1), found by running its resize (crop off) on a blank image of that size; None when nothing is cut."""
    crop = image_processor.crop_size
    ch = crop["height"] if isinstance(crop, dict) else crop.height
    cw = crop["width"] if isinstance(crop, dict) else crop.width
    out = image_processor(
        images=[Image.new("RGB", size)],
        do_center_crop=False,
        do_rescale=False,
        do_normalize=False,
        return_tensors=None,
        **processor_kwargs,
    )
    arr = np.asarray(out["pixel_values"][0])
    chw = arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3)
    h, w = (arr.shape[1], arr.shape[2]) if chw else arr.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    box = (max(0.0, left / w), max(0.0, top / h), min(1.0, (left + cw) / w), min(1.0, (top + ch) / h))
    return None if box == (0.0, 0.0, 1.0, 1.0) else box


class Geometry:
    """How one family maps an image at scale alpha to the processor's input and the visual-token grid."""

    dynamic_resolution: bool = False

    def view(
        self, image_processor: Any, image: Image.Image, scale: float, kwargs: dict[str, Any]
    ) -> ScaledView:
        """The processor input for the RGB ``image`` at the checked ``scale``."""
        raise NotImplementedError

    def grid(
        self, image_processor: Any, inputs: dict[str, torch.Tensor], n_visual: int, view: ScaledView
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """((h, w) of the visual-token grid, (height, width) in pixels of the image the model saw)."""
        raise NotImplementedError

    def view_box(
        self, image_processor: Any, size: tuple[int, int], kwargs: dict[str, Any], cache: dict
    ) -> Box | None:
        """The part of an image of ``size`` the scale-1.0 grid shows (fractions x0, y0, x1, y1); None for the
        whole image. ``cache`` (per adapter, keyed by size) holds what was computed before."""
        return None


class DynamicResolution(Geometry):
    """Resize by alpha, then the processor (its smart-resize rounding and min / max pixel clamps apply); the grid
    of ``image_grid_thw`` (merged by ``merge_size``) covers the whole image: coverage (1, 1)."""

    dynamic_resolution = True

    def view(self, image_processor, image, scale, kwargs):
        return ScaledView(image=resize_by(image, scale), coverage=(1.0, 1.0))

    def grid(self, image_processor, inputs, n_visual, view):
        thw = inputs["image_grid_thw"].reshape(-1, 3)
        if thw.shape[0] != 1:
            raise ValueError(f"expected one image grid, got image_grid_thw={thw.tolist()}")
        merge = int(getattr(image_processor, "merge_size", 1))
        grid = (int(thw[0, 1]) // merge, int(thw[0, 2]) // merge)
        if n_visual != grid[0] * grid[1]:
            raise ValueError(f"{n_visual} visual tokens do not fill the {grid[0]}x{grid[1]} grid")
        patch = int(getattr(image_processor, "patch_size", 1))
        return grid, (int(thw[0, 1]) * patch, int(thw[0, 2]) * patch)


class FixedCanvas(Geometry):
    """The processed scale-1.0 image, resized by alpha, pasted top-left on a mean-coloured canvas of the model's
    input size (cropped top-left for alpha > 1): coverage (alpha, alpha). The processor then only rescales /
    normalises the canvas (its resize / crop are switched off: the canvas already has the input size). Scale 1.0
    gives the processor's own pixel values. The grid is square."""

    def view(self, image_processor, image, scale, kwargs):
        base = processed_image(image_processor, image, kwargs)
        canvas = paste_on_canvas(base, scale, canvas_fill(image_processor))
        overrides: dict[str, Any] = {"do_resize": False}
        if hasattr(image_processor, "do_center_crop"):
            overrides["do_center_crop"] = False
        return ScaledView(image=canvas, coverage=(scale, scale), base_image=base, overrides=overrides)

    def grid(self, image_processor, inputs, n_visual, view):
        side = math.isqrt(n_visual)
        if side * side != n_visual or side == 0:
            raise ValueError(f"{n_visual} visual tokens do not form a square grid")
        assert view.base_image is not None
        return (side, side), (view.base_image.height, view.base_image.width)

    def view_box(self, image_processor, size, kwargs, cache):
        """A processor that centre-crops (LLaVA's CLIP: resize the shortest edge, crop the centre) shows the
        crop; one that only resizes shows the whole image."""
        if image_processor is None or not getattr(image_processor, "do_center_crop", False):
            return None
        if size not in cache:  # the box depends only on the image size
            cache[size] = centre_crop_box(image_processor, size, kwargs)
        return cache[size]
