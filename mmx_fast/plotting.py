"""``Explanation.plot``: maps over the image with matplotlib (the optional ``plot`` extra).

One token on one Axes, or a grid of tokens (or of the word-level maps) in a new figure. The maps are the
image-size ones of ``Explanation.upsampled`` (the eval harness's resize, NaN where the model saw nothing, drawn
transparent); the region the model saw is outlined when it is not the whole image. The four built-in colour
maps (``mmx_fast.io.COLORMAPS``) are drawn with exactly the colours of the overlays and heatmaps; any other
name is matplotlib's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import io as _io


def _matplotlib():
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"Explanation.plot needs matplotlib ({_io.PLOT_EXTRA_HINT})") from None
    return matplotlib, plt


def mpl_colormap(name: str):
    """A matplotlib colour map for ``name``: the built-in ones as 256-entry tables of our own colours (so a plot
    matches ``overlay``), any other name matplotlib's; NaN (outside what the model saw) transparent."""
    matplotlib, _ = _matplotlib()
    from matplotlib.colors import ListedColormap

    _io.check_colormap(name)
    if name in _io.COLORMAPS:
        cmap = ListedColormap(_io.colorize(np.linspace(0.0, 1.0, 256)[None], name)[0], name=f"mmx-{name}")
    else:
        cmap = matplotlib.colormaps[name]
    return cmap.with_extremes(bad=(0, 0, 0, 0))


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} is not allowed; expected a number in [0, 1]")
    return float(alpha)


def _one(exp: Any, i: int, frame: int | None) -> tuple[np.ndarray, Any]:
    """(upsampled map [H, W], the image under it or None) of token i (a video: temporal patch ``frame``)."""
    k = _io.frame_index(exp, frame)
    single = _io._Single(exp, exp.maps[i] if k is None else exp.maps[i, k])
    image = None
    if exp.image is not None:
        image = exp.image if k is None else exp.frames[min(2 * k, len(exp.frames) - 1)]
        image = image.convert("RGB")
    return _io.upsampled(single, None, None)[0], image


def draw(ax: Any, exp: Any, i: int, cmap: Any, alpha: float, frame: int | None, colorbar: bool) -> Any:
    """Token i's map over the image on ``ax``: the image, the map (transparent outside what the model saw),
    the outline of that region, the token as the title and (``colorbar``) a colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    u, image = _one(exp, i, frame)
    if image is not None:
        ax.imshow(np.asarray(image), interpolation="nearest")
    ax.imshow(
        np.ma.masked_invalid(u),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        alpha=alpha if image is not None else 1.0,
        interpolation="nearest",
    )
    if image is not None and exp.view_box is not None:
        left, top, right, bottom = _io.box_at(exp.view_box, image.size)
        ax.add_patch(
            Rectangle(
                (left - 0.5, top - 0.5),
                right - left,
                bottom - top,
                fill=False,
                edgecolor="white",
                linewidth=1.5,
            )
        )
    ax.set_title(_io.token_label(exp, i), fontsize=9)
    ax.set_axis_off()
    if colorbar:
        ax.figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=ax, fraction=0.046, pad=0.02)
    return ax


def _as_words(exp: Any) -> Any:
    """The word-level maps as an explanation of one 'token' per word (for labels and drawing)."""
    words, maps = exp.word_maps()
    return dataclasses.replace(
        exp,
        maps=maps,
        answer_ids=list(range(len(words))),
        answer_tokens=list(words),
        answer_text=" ".join(words),
    )


def plot(
    exp: Any,
    i: int | Sequence[int] | None = None,
    *,
    ax: Any = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    words: bool = False,
    frame: int | None = None,
    colorbar: bool = True,
    max_maps: int = 24,
    ncols: int | None = None,
) -> Any:
    """See ``Explanation.plot``."""
    _, plt = _matplotlib()
    cm = mpl_colormap(cmap)
    alpha = _check_alpha(alpha)
    if words:
        exp = _as_words(exp)
    if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
        idx = _io.token_index(exp, i)
        if ax is None:
            _, ax = plt.subplots(figsize=(4, 4))
        return draw(ax, exp, idx, cm, alpha, frame, colorbar)
    if ax is not None:
        raise ValueError("ax= is for one map (i an int); a grid of maps makes its own figure")
    if i is None:
        chosen = list(range(len(exp)))
    elif isinstance(i, (list, tuple, range)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in i
    ):
        chosen = [_io.token_index(exp, v) for v in i]
    else:
        raise TypeError(f"i={i!r} is not supported; expected None, an int or a list of ints")
    if not isinstance(max_maps, int) or isinstance(max_maps, bool) or max_maps < 1:
        raise ValueError(f"max_maps={max_maps!r} is not allowed; expected an integer >= 1")
    if not chosen:
        raise ValueError("there is no map to plot: the answer is empty")
    if len(chosen) > max_maps:
        raise ValueError(
            f"{len(chosen)} maps asked for, more than max_maps={max_maps}; pick some with i=[...] or raise max_maps"
        )
    cols = ncols if ncols is not None else min(6, len(chosen))
    if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1:
        raise ValueError(f"ncols={ncols!r} is not allowed; expected None or an integer >= 1")
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for a in axes.flat[len(chosen) :]:
        a.set_axis_off()
    for a, k in zip(axes.flat, chosen):
        draw(a, exp, k, cm, alpha, frame, colorbar)
    return fig
