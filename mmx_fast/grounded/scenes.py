"""Seeded grounded scenes: coloured shapes on a plain background, a mask per object, questions whose one-word
answer must be read from the image, and which object each answer token names (docs/design.md §7).

    scene = make_scene(np.random.default_rng(0))
    scene.image            # PIL RGB, IMAGE_SIZE x IMAGE_SIZE
    scene.masks            # [n_objects, H, W] bool, one per object
    for q in scene.questions:  q.prompt, q.answer, q.named   # named: index of the object the answer names

Every scene has 1-3 objects with pairwise different colours and different shapes, so each question has
exactly one answer: "What colour is the circle?" -> "red" (names the circle), "What shape is the blue
object?" -> "square" (names the blue object). Colours, shapes, sizes and positions are drawn from ``rng``
only: the same seed gives the same scenes on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 112  # px: Qwen2-VL patch 14, merge 2 -> a 4x4 grid of visual tokens
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (118, 118, 118)
DIAMETER = (36, 50)  # px, inclusive range of an object's bounding-box side
GAP = 4  # px between bounding boxes
QUESTION_KINDS = ("colour", "shape")


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: str  # one word, one token of the grounded tokenizer
    named: int  # index into Scene.objects / Scene.masks of the object the answer names
    kind: str  # "colour" or "shape"


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    masks: np.ndarray  # [n, H, W] bool
    questions: list[Question] = field(default_factory=list)


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
    else:
        raise ValueError(f"shape={shape!r} is not allowed; expected one of {', '.join(SHAPES)}")


def _place(rng: np.random.Generator, n: int, size: int) -> list[tuple[int, int, int, int]]:
    """``n`` square boxes with sides in DIAMETER, inside the image, at least GAP px apart: objects placed one
    by one (up to 100 tries each), starting over when one does not fit."""

    def apart(a, b) -> bool:
        return a[0] >= b[2] + GAP or b[0] >= a[2] + GAP or a[1] >= b[3] + GAP or b[1] >= a[3] + GAP

    for _ in range(1000):
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n):
            d = int(rng.integers(DIAMETER[0], DIAMETER[1] + 1))
            for _ in range(100):
                x0, y0 = (int(v) for v in rng.integers(1, size - d, size=2))
                box = (x0, y0, x0 + d, y0 + d)
                if all(apart(box, b) for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == n:
            return boxes
    raise RuntimeError(f"could not place {n} objects in a {size} px image")  # never with the ranges above


def questions_for(objects: list[SceneObject]) -> list[Question]:
    """Both questions about every object (each answerable only by finding that object)."""
    out = []
    for i, o in enumerate(objects):
        out.append(Question(f"What colour is the {o.shape}?", o.colour, i, "colour"))
        out.append(Question(f"What shape is the {o.colour} object?", o.shape, i, "shape"))
    return out


def make_scene(rng: np.random.Generator, n_objects: int | None = None, size: int = IMAGE_SIZE) -> Scene:
    """One scene with ``n_objects`` objects (None: 1-3, one object in 1 of 5 scenes, else 2 or 3 evenly)."""
    if n_objects is None:
        n_objects = 1 if rng.random() < 0.2 else int(rng.integers(2, 4))
    if not 1 <= n_objects <= len(SHAPES):
        raise ValueError(f"n_objects={n_objects} is not allowed; expected 1..{len(SHAPES)}")
    colours = rng.choice(list(COLOURS), size=n_objects, replace=False)
    shapes = rng.choice(list(SHAPES), size=n_objects, replace=False)
    boxes = _place(rng, n_objects, size)
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    masks = np.zeros((n_objects, size, size), dtype=bool)
    objects = []
    for i, (c, s, b) in enumerate(zip(colours, shapes, boxes, strict=True)):
        # a little per-object shade jitter so colour is a range, not one RGB value
        rgb = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in COLOURS[str(c)])
        _draw(draw, str(s), b, rgb)
        m = Image.new("L", (size, size), 0)
        _draw(ImageDraw.Draw(m), str(s), b, 255)
        masks[i] = np.asarray(m) > 0
        objects.append(SceneObject(str(c), str(s), b))
    # mild pixel noise on the background and objects (a scene is never a flat colour lookup)
    arr = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, size=(size, size, 3), dtype=np.int16)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return Scene(image, objects, masks, questions_for(objects))


def held_out_scenes(n: int, seed: int = 10_000, n_objects: tuple[int, ...] = (2, 3)) -> list[Scene]:
    """``n`` evaluation scenes from ``seed`` (training uses seeds < 10_000: disjoint streams) with 2-3 objects
    (a named-object share means something only with at least two objects)."""
    rng = np.random.default_rng(seed)
    return [make_scene(rng, int(n_objects[i % len(n_objects)])) for i in range(n)]


def vocabulary_lines() -> list[str]:
    """Every question and answer the generator can write (the grounded tokenizer is trained on these)."""
    lines = []
    for s in SHAPES:
        lines.append(f"What colour is the {s}?")
    for c in COLOURS:
        lines.append(f"What shape is the {c} object?")
    lines += list(COLOURS) + list(SHAPES)
    return lines
