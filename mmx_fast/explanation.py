"""The result type shared by ``reference.explain`` and ``explain_fast``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import io as _io


@dataclass(frozen=True)
class Explanation:
    """One explained answer, built once by ``mmx_fast.pipeline.build_result`` and never changed afterwards
    (``dataclasses.replace`` gives a changed copy).

    maps:          float32 [T, Hc, Wc] in [0, 1], one map per answer token, on the canonical grid. A video
                   (``frames`` set) has a time axis: [T, t, Hc, Wc], t = the model's temporal grid (Qwen-VL:
                   ceil(frames / 2); map [i, k] covers frames 2k and 2k + 1, see ``mmx_fast.video``).
    answer_ids:    the T answer token ids (stop token excluded).
    answer_tokens: one display string per answer id (a token holding only part of a character shows its bytes,
                   e.g. ``<0xE2>``).
    answer_text:   the answer text, the tokenizer's decode of the whole id sequence (characters split over
                   several tokens come out whole); by default the tokens joined.
    grid:          (Hc, Wc), the scale-1.0 visual-token grid (of one frame for a video).
    frames:        a video's frames (``image`` is then its first frame); None for an image.
    scale_maps:    on request (``keep_scale_maps``): {scale: float32 [T, h_s, w_s]} raw clipped logit-lens maps
                   (tiled models: that scale's views combined on the canonical grid, [T, Hc, Wc]; video:
                   [T, t, h_s, w_s]).
    raw_maps:      on request: float32 [T, Hc, Wc], the MSEA map A_t before mitigation / filter (video:
                   [T, t, Hc, Wc]).
    answer_pieces: the tokenizer's raw token strings of the answer ids (``convert_ids_to_tokens``: ``"Ġcat"``,
                   ``"▁cat"``), used to group tokens into words (:meth:`word_maps`); None when not known.
    view_box:      the part of the image the grid shows, as fractions (x0, y0, x1, y1) of its width and
                   height; None for the whole image. LLaVA's processor centre-crops, so its grid covers
                   only the central square of a non-square photo, and overlays put the map there.
    token_positions: with ``targets=``: where each explained token sits in the whole answer (``answer_ids``,
                   ``answer_tokens`` and ``maps`` then hold only the targets, ``answer_text`` the whole answer);
                   None when every answer token is explained.
    random_weights: True when the model was a random-weight test model (``mmx_fast.testing.tiny_model``):
                   the notebook view and ``to_html`` then say so.
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
    frames: tuple[Image.Image, ...] | None = None
    answer_text: str | None = None
    answer_pieces: list[str] | None = None
    random_weights: bool = False
    token_positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.answer_text is None:
            object.__setattr__(self, "answer_text", "".join(self.answer_tokens))

    def __len__(self) -> int:
        return len(self.answer_ids)

    def __repr__(self) -> str:
        """A one-line summary (the tensors are not printed): method, tokens, grid, image size, answer."""
        method = getattr(self.config, "method", None)
        parts = [f"method={method!r}"] if method else []
        parts.append(f"tokens={len(self)}")
        parts.append(f"grid={self.grid[0]}x{self.grid[1]}")
        if self.image is not None:
            parts.append(f"image={self.image.size[0]}x{self.image.size[1]}")
        if self.frames is not None:
            parts.append(f"frames={len(self.frames)}")
        text = self.answer_text or ""
        parts.append(f"answer={(text if len(text) <= 40 else text[:39] + '…')!r}")
        if self.random_weights:
            parts.append("random_weights=True")
        return f"Explanation({', '.join(parts)})"

    def map_uint8(self, i: int) -> np.ndarray:
        """Map i as TAM stores it, ``(map * 255).astype(uint8)`` (truncation; see ``mmx_fast.io.map_uint8``)."""
        return _io.map_uint8(self, i)

    def _check_index(self, i: int) -> int:
        return _io.token_index(self, i)

    def upsampled(self, i: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
        """The maps as float32 arrays at the input image's size, as grad-cam and TAM give them: [T, H, W]
        (``i`` None) or [H, W] (token ``i``); a video: [T, t, H, W] / [t, H, W] at its frames' size.

        ``size`` (W, H) picks another size. The resize is the eval harness's (bilinear, pixel-centre sampling,
        OpenCV's ``INTER_LINEAR`` in float; ``mmx_fast.io.resize_maps``), onto the part of the image the model
        saw (``view_box``). Pixels the model did not see (LLaVA's centre crop leaves the sides of a wide photo)
        are NaN, never 0: use ``np.nan_to_num(m)`` for 0 there, ``~np.isnan(m)`` for the mask."""
        return _io.upsampled(self, i, size)

    def heatmap(
        self, i: int, size: tuple[int, int] | None = None, colormap: str = "jet", frame: int | None = None
    ) -> Image.Image:
        """Map i as an RGB heatmap at the image's size (``size`` (W, H) picks another; without an image, the
        grid's size), from :meth:`upsampled`; what the model did not see is grey. ``colormap``: ``"jet"``
        (default, as TAM), ``"viridis"``, ``"gray"``, ``"hot"`` (built in) or any matplotlib colormap name;
        a video needs ``frame`` (the temporal patch, 0..t-1)."""
        return _io.heatmap(self, i, size, colormap=colormap, frame=frame)

    def box_pixels(self) -> tuple[int, int, int, int]:
        """``view_box`` in pixels of the image (left, top, right, bottom); the whole image when None."""
        return _io.box_pixels(self)

    def overlay(
        self,
        i: int,
        alpha: float = 0.5,
        colormap: str = "jet",
        frame: int | None = None,
        *,
        outline: bool = True,
        label: bool | str = False,
        colorbar: bool = False,
    ) -> Image.Image:
        """Map i over the image, at the image's size, on the part of the image the grid shows
        (``view_box``; outside it the image is left as it is, and ``outline`` draws a white line just inside
        that part's border), coloured with ``colormap`` (see :meth:`heatmap`). ``label``: True writes
        ``token i: 'text'`` in the top-left corner (a str: that text); ``colorbar``: a colour bar appended on
        the right (the image gets wider). A video: map [i, frame] over the first frame of that frame pair."""
        return _io.overlay(
            self, i, alpha, colormap=colormap, frame=frame, outline=outline, label=label, colorbar=colorbar
        )

    def plot(
        self,
        i: int | Sequence[int] | None = None,
        ax: Any = None,
        cmap: str = "jet",
        alpha: float = 0.5,
        *,
        words: bool = False,
        frame: int | None = None,
        colorbar: bool = True,
        max_maps: int = 24,
        ncols: int | None = None,
    ) -> Any:
        """Plot maps over the image with matplotlib (``pip install 'mmx-fast[plot]'``), as captum's
        ``visualize_image_attr`` / grad-cam's ``show_cam_on_image`` do.

        ``i`` an int: that token on ``ax`` (a new figure when None); returns the Axes. ``i`` None or a list of
        ints: a grid of those tokens (None: every token, at most ``max_maps``) in a new figure; returns the
        Figure. ``words=True``: the word-level maps of :meth:`word_maps` instead of tokens (``i`` then
        indexes words). ``cmap``: a built-in name (the same colours as :meth:`overlay`) or any matplotlib
        colormap; ``alpha``: the map's opacity. The part of the image the model saw is outlined when it is not
        the whole image; outside it nothing is drawn (the maps are NaN there, see :meth:`upsampled`). A video
        needs ``frame``."""
        from .plotting import plot

        return plot(
            self,
            i,
            ax=ax,
            cmap=cmap,
            alpha=alpha,
            words=words,
            frame=frame,
            colorbar=colorbar,
            max_maps=max_maps,
            ncols=ncols,
        )

    def word_maps(self, reduce: str = "max") -> tuple[list[str], torch.Tensor]:
        """Word-level maps from the sub-word token maps: ``(words, maps)``, maps float32 [W, Hc, Wc].

        Tokens are grouped into words by the rule ``mmx-fast eval`` uses (``mmx_fast.words.group_words``,
        TAM's: a token starting with a space or ``"▁"``, punctuation and CJK characters start a new word;
        words are shown with their spaces removed). A word's map is the element-wise ``reduce`` over its
        tokens' maps: ``"max"`` (default; the evaluation scores a noun by its best token) or ``"mean"``.
        Each word map stays in [0, 1]."""
        from .words import combine_maps, group_words

        pieces = self.answer_pieces if self.answer_pieces is not None else [""] * len(self.answer_tokens)
        words, groups = group_words(pieces, self.answer_tokens)
        return words, combine_maps(self.maps, groups, reduce)

    def _repr_html_(self) -> str:
        """A compact HTML view for Jupyter: every answer token as a chip with a small overlay of its map
        (``mmx_fast.report.notebook_html``; bounded in size, every string escaped)."""
        from .report import notebook_html

        return notebook_html(self)

    def to_dict(self) -> dict[str, Any]:
        """What ``explanation.json`` holds: prompt, answer, ids, tokens, grid, view box, config, timings (and
        ``frames`` / ``token_positions`` when set), as plain JSON values."""
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else self.config
        out = {
            "prompt": self.prompt,
            "answer": self.answer_text,
            "answer_ids": list(map(int, self.answer_ids)),
            "answer_tokens": list(self.answer_tokens),
            "grid": list(self.grid),
            "view_box": list(self.view_box) if self.view_box else None,
            "config": cfg,
            "timings": dict(self.timings),
        }
        if self.frames is not None:  # a video: maps carry a time axis
            out["frames"] = len(self.frames)
        if self.token_positions is not None:  # targets=: only these answer tokens were explained
            out["token_positions"] = list(self.token_positions)
        return out

    def to_html(
        self,
        path: str | os.PathLike,
        title: str | None = None,
        note: str | None = None,
        colormap: str = "jet",
    ) -> Path:
        """Write the self-contained HTML report (``mmx_fast.report``) to ``path``, its heatmaps coloured with
        ``colormap`` (see :meth:`heatmap`); returns the path. ``note`` defaults to a warning when the model had
        random weights."""
        from .report import RANDOM_WEIGHTS_NOTE, write_report

        if note is None and self.random_weights:
            note = RANDOM_WEIGHTS_NOTE
        return write_report(self, path, title=title, note=note, colormap=colormap)

    def save(
        self,
        out_dir: str | os.PathLike,
        overlays: bool = True,
        colormap: str = "jet",
        annotate: bool = False,
    ) -> Path:
        """Write ``maps.npz``, ``explanation.json`` and (optionally) one PNG overlay per token coloured with
        ``colormap``, atomically (``mmx_fast.io.save``); ``annotate`` puts each token's label and a colour bar
        on its overlay."""
        return _io.save(self, out_dir, overlays, colormap=colormap, annotate=annotate)
