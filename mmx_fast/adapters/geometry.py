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
        grid = (int(thw[0, 1]) // merge, int(thw[0, 2]) // merge)  # the count is checked by the adapter
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


# --------------------------------------------------------------------------------------------------
# Tiled inputs (docs/design.md §1.2, "Tiled models"): several views per scale, each on a known box
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileView:
    """One view of a tiled input: a run of visual tokens on its own grid, covering a box of the image.

    start, stop: the half-open slice of ``PromptInputs.visual_positions`` holding this view's tokens, row-major
                 over ``grid``.
    grid:        (h, w) of this view's tokens.
    box:         (x0, y0, x1, y1), the part of the canonical grid's image region this view shows, as fractions.
    name:        "thumbnail", "tile r,c" or "stitched" (for messages and tests).
    """

    start: int
    stop: int
    grid: tuple[int, int]
    box: Box
    name: str = ""


@dataclass(frozen=True)
class TiledLayout:
    """Where a tiled input's visual tokens go, as the model's own geometry predicts it.

    expected: how many image tokens the sequence must hold (separators such as LLaVA-NeXT's ``image_newline``
              included); a different count is an error.
    keep:     indices (into the image-token positions in sequence order) of the tokens that are grid cells;
              None: all of them. Separators are left out here.
    views:    the views, each a slice of the kept tokens.
    grid:     the stitched grid of this scale (at scale 1.0: the canonical grid).
    model_hw: (height, width) in pixels of the stitched image the model saw.
    """

    expected: int
    keep: torch.Tensor | None
    views: tuple[TileView, ...]
    grid: tuple[int, int]
    model_hw: tuple[int, int]


def canonical_box(box: Box, grid: tuple[int, int]) -> tuple[int, int, int, int]:
    """A view's fractional ``box`` (x0, y0, x1, y1) as whole canonical cells (y0, x0, y1, x1), half-open, each
    edge rounded to the nearest cell edge, at least one cell, inside the grid."""
    hc, wc = grid
    x0, y0, x1, y1 = box
    r0 = min(hc - 1, max(0, round(y0 * hc)))
    c0 = min(wc - 1, max(0, round(x0 * wc)))
    r1 = min(hc, max(r0 + 1, round(y1 * hc)))
    c1 = min(wc, max(c0 + 1, round(x1 * wc)))
    return r0, c0, r1, c1


class Tiled(Geometry):
    """Several views per scale (a global thumbnail plus tiles that each cover a box of the image). The image is
    resized by alpha and handed to the processor, which picks its own tile layout; every view of every scale is
    then resized onto the canonical cells its box covers. The canonical grid is the stitched tile grid at scale
    1.0. A family implements ``layout`` from the processor outputs and the model config, never from the number
    of tokens found (that number is checked against it)."""

    dynamic_resolution = True

    def view(self, image_processor, image, scale, kwargs):
        return ScaledView(image=resize_by(image, scale), coverage=(1.0, 1.0))

    def layout(self, adapter: Any, inputs: dict[str, torch.Tensor], view: ScaledView) -> TiledLayout:
        raise NotImplementedError


class AnyResUnpad(Tiled):
    """LLaVA-NeXT / LLaVA-OneVision any-res: the processor picks the best pinpoint resolution (rows x cols tiles
    of the vision input size), resizes the image into it keeping its aspect and pads the rest; the model
    stitches the tiles' features, removes the padded rows / columns (``unpad_image``), for OneVision shrinks a
    grid larger than ``anyres_max_N`` tiles (bilinear), appends ``image_newline`` after every row, and puts the
    base (thumbnail: the whole image squashed to one tile) first.

    Token order: thumbnail g*g, then for each of the uh unpadded rows uw cells and one newline. The kept rows and
    columns are found by running the model's own ``unpad_image`` on a grid of cell indices, so they are exact.
    The unpadded grid is the image (the model's own definition; the processor's pixel padding differs from the
    token-level unpadding by less than one cell): both views cover the whole canonical grid."""

    def layout(self, adapter, inputs, view):
        from transformers.models.llava_next.modeling_llava_next import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        cfg = adapter.model.config
        size = int(cfg.vision_config.image_size)
        g = size // int(cfg.vision_config.patch_size)
        oh, ow = (int(v) for v in inputs["image_sizes"].reshape(-1, 2)[0].tolist())
        rows, cols = get_anyres_image_grid_shape((oh, ow), cfg.image_grid_pinpoints, size)
        cells = torch.arange(rows * g * cols * g).reshape(1, rows * g, cols * g)
        uh, uw = unpad_image(cells, torch.tensor([oh, ow])).shape[1:]
        aspect = getattr(cfg, "vision_aspect_ratio", None)  # OneVision: "anyres_max_N"
        if aspect is not None:
            max_tiles = int(str(aspect).removeprefix("anyres_max_"))
            ratio = math.sqrt(uh * uw / (max_tiles * g * g))
            if ratio > 1.1:
                uh, uw = int(uh // ratio), int(uw // ratio)
        base = g * g
        keep = torch.cat(
            [torch.arange(base), base + (torch.arange(uh)[:, None] * (uw + 1) + torch.arange(uw)).reshape(-1)]
        )
        whole = (0.0, 0.0, 1.0, 1.0)
        views = (
            TileView(0, base, (g, g), whole, "thumbnail"),
            TileView(base, base + uh * uw, (int(uh), int(uw)), whole, "stitched"),
        )
        return TiledLayout(base + uh * (uw + 1), keep, views, (int(uh), int(uw)), (rows * size, cols * size))


class InternVLTiles(Tiled):
    """InternVL dynamic tiling (``crop_to_patches``): the processor picks rows x cols tiles with the aspect
    closest to the image's (``min_patches`` .. ``max_patches`` tiles), resizes the image to exactly that many
    tiles (no padding) and cuts it; with more than one tile a thumbnail (the whole image at tile size) follows.
    Token order: tile (0,0), (0,1), ... row-major, then the thumbnail; each tile is an s x s grid
    (s^2 = ``image_seq_length``). Tile (r, c) covers the box [c/cols, r/rows, (c+1)/cols, (r+1)/rows]."""

    def tile_tokens(self, adapter) -> int:
        """Visual tokens per tile (InternVL: the processor's ``image_seq_length``)."""
        return int(adapter.processor.image_seq_length)

    def layout(self, adapter, inputs, view):
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        ip = adapter.image_processor
        kw = adapter.processor_kwargs
        size = ip.size
        th, tw = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        lo = int(kw.get("min_patches", ip.min_patches))
        hi = int(kw.get("max_patches", ip.max_patches))
        w, h = view.image.size
        cols, rows = get_optimal_tiled_canvas((h, w), (th, tw), lo, hi)
        seq = self.tile_tokens(adapter)
        s = math.isqrt(seq)
        if s * s != seq:
            raise ValueError(f"image_seq_length={seq} is not a square; expected s*s tokens per InternVL tile")
        n = rows * cols
        views = [
            TileView(
                i * seq,
                (i + 1) * seq,
                (s, s),
                (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows),
                f"tile {r},{c}",
            )
            for i, (r, c) in enumerate((i // cols, i % cols) for i in range(n))
        ]
        if n != 1:
            views.append(TileView(n * seq, (n + 1) * seq, (s, s), (0.0, 0.0, 1.0, 1.0), "thumbnail"))
        tiles = int(inputs["pixel_values"].shape[0])
        if tiles != len(views):
            raise ValueError(
                f"the processor gave {tiles} InternVL tiles but the layout {rows}x{cols} predicts {len(views)}"
            )
        return TiledLayout(len(views) * seq, None, tuple(views), (rows * s, cols * s), (rows * th, cols * tw))


class SplitImage(Tiled):
    """Idefics3 / SmolVLM image splitting (``do_image_splitting``): the processor resizes the image to its
    ``size["longest_edge"]``, then up to whole multiples of the vision tile (``max_image_size``), and cuts it into
    rows x cols tiles (no padding) followed by a global image (the whole image at tile size); an image that fits
    one tile is not split (the global image only). The layout comes from the image processor's own
    ``get_number_of_image_patches``. Token order: tile (0,0), (0,1), ... row-major, then the global image, each
    ``image_seq_len`` tokens row-major over an s x s grid (text separators such as ``<row_1_col_1>`` between them
    are not image tokens)."""

    def layout(self, adapter, inputs, view):
        ip = adapter.image_processor
        w, h = view.image.size
        n_patches, rows, cols = ip.get_number_of_image_patches(h, w, dict(adapter.processor_kwargs))
        seq = int(adapter.processor.image_seq_len)
        s = math.isqrt(seq)
        if s * s != seq:
            raise ValueError(f"image_seq_len={seq} is not a square; expected s*s tokens per image tile")
        tile = int(ip.max_image_size["longest_edge"])
        whole = (0.0, 0.0, 1.0, 1.0)
        if rows == 0 or cols == 0:
            views = [TileView(0, seq, (s, s), whole, "global")]
            rows = cols = 1
        else:
            views = [
                TileView(
                    i * seq,
                    (i + 1) * seq,
                    (s, s),
                    (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows),
                    f"tile {r},{c}",
                )
                for i, (r, c) in enumerate((i // cols, i % cols) for i in range(rows * cols))
            ]
            views.append(TileView(rows * cols * seq, (rows * cols + 1) * seq, (s, s), whole, "global"))
        given = int(inputs["pixel_values"].reshape(-1, *inputs["pixel_values"].shape[-3:]).shape[0])
        if given != len(views):
            raise ValueError(
                f"the processor gave {given} image tiles but the layout {rows}x{cols} predicts {len(views)}"
            )
        return TiledLayout(
            len(views) * seq, None, tuple(views), (rows * s, cols * s), (rows * tile, cols * tile)
        )
