"""Log-log line plots drawn with Pillow (no matplotlib needed): one PNG, one or more panels side by side."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

PALETTE = {
    "reference": (214, 39, 40),
    "fast": (31, 119, 180),
    "torch": (255, 127, 14),
    "floor": (44, 160, 44),
    "generate": (148, 103, 189),
    "tam-official": (188, 189, 34),
    "ours-tam": (23, 190, 207),
    "ours-default": (31, 119, 180),
}
# the same providers for a second model shape (drawn dashed)
SECOND_MODEL = {"reference": (148, 103, 189), "fast": (44, 160, 44), "torch": (140, 86, 75)}
EXTRA_COLORS = [(140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34)]


@dataclass
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    color: tuple[int, int, int] = (0, 0, 0)
    dashed: bool = False


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str = "median time (s)"
    series: list[Series] = field(default_factory=list)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _decades(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    return [10.0**e for e in range(a, b + 1)]


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    if v >= 1:
        return f"{v:g}"
    if v >= 1e-3:
        return f"{v * 1e3:g}m"
    return f"{v * 1e6:g}u"


def _dashed_line(draw: ImageDraw.ImageDraw, pts, color, width: int, dash: int = 8) -> None:
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        n = max(1, int(length // dash))
        for i in range(0, n, 2):
            a, b = i / n, min(1.0, (i + 1) / n)
            draw.line(
                [(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                fill=color,
                width=width,
            )


def _panel(draw: ImageDraw.ImageDraw, box, panel: Panel, fonts) -> None:
    x0, y0, x1, y1 = box
    small, normal, big = fonts
    draw.text(((x0 + x1) / 2, y0 + 4), panel.title, fill=(0, 0, 0), font=big, anchor="mt")
    left, top, right, bottom = x0 + 70, y0 + 36, x1 - 12, y1 - 110
    pts = [(x, y) for s in panel.series for x, y in zip(s.xs, s.ys) if x > 0 and y > 0]
    if not pts:
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=(120, 120, 120), font=normal, anchor="mm")
        return
    xlo, xhi = min(p[0] for p in pts), max(p[0] for p in pts)
    ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
    if xhi / xlo < 1.5:
        xlo, xhi = xlo / 1.5, xhi * 1.5
    xlo, xhi = xlo / 1.15, xhi * 1.15
    ylo, yhi = ylo / 1.6, yhi * 1.6

    def px(x: float) -> float:
        return left + (math.log10(x) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo)) * (right - left)

    def py(y: float) -> float:
        return bottom - (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * (
            bottom - top
        )

    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0), width=1)
    for d in _decades(ylo, yhi):
        for m in range(1, 10):
            v = d * m
            if ylo <= v <= yhi:
                y = py(v)
                draw.line([(left, y), (right, y)], fill=(225, 225, 225) if m > 1 else (190, 190, 190))
                if m == 1 or (yhi / ylo < 30 and m in (2, 5)):
                    draw.text((left - 6, y), _fmt(v) + "s", fill=(0, 0, 0), font=small, anchor="rm")
    xticks = sorted({x for s in panel.series for x in s.xs if x > 0})
    for d in _decades(xlo, xhi):
        if xlo <= d <= xhi:
            draw.line([(px(d), top), (px(d), bottom)], fill=(215, 215, 215))
    for x in xticks:
        draw.line([(px(x), bottom), (px(x), bottom + 5)], fill=(0, 0, 0))
        draw.text((px(x), bottom + 8), _fmt(x), fill=(0, 0, 0), font=small, anchor="mt")
    draw.text(((left + right) / 2, bottom + 26), panel.xlabel, fill=(0, 0, 0), font=normal, anchor="mt")
    draw.text((x0 + 4, top - 18), panel.ylabel, fill=(0, 0, 0), font=small, anchor="lm")
    for s in panel.series:
        p = [(px(x), py(y)) for x, y in zip(s.xs, s.ys) if x > 0 and y > 0]
        if len(p) > 1:
            if s.dashed:
                _dashed_line(draw, p, s.color, 2)
            else:
                draw.line(p, fill=s.color, width=2)
        for cx, cy in p:
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=s.color)
    # legend below the axes, two columns
    ly = bottom + 48
    col_w = (right - left) // 2
    for i, s in enumerate(panel.series):
        lx = left + (i % 2) * col_w
        yy = ly + (i // 2) * 18
        if s.dashed:
            _dashed_line(draw, [(lx, yy), (lx + 26, yy)], s.color, 2, dash=6)
        else:
            draw.line([(lx, yy), (lx + 26, yy)], fill=s.color, width=2)
        draw.text((lx + 32, yy), s.label, fill=(0, 0, 0), font=small, anchor="lm")


def loglog(path, title: str, panels: list[Panel], panel_w: int = 560, height: int = 520) -> None:
    """Write a PNG with ``panels`` side by side (log x, log y) under ``title``."""
    w = panel_w * max(1, len(panels))
    img = Image.new("RGB", (w, height + 34), "white")
    draw = ImageDraw.Draw(img)
    fonts = (_font(12), _font(14), _font(15))
    draw.text((w / 2, 6), title, fill=(0, 0, 0), font=_font(17), anchor="mt")
    for i, panel in enumerate(panels):
        _panel(draw, (i * panel_w, 34, (i + 1) * panel_w, height + 34), panel, fonts)
    img.save(path)
