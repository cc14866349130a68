"""Seeded grounded scenes: coloured, patterned shapes on a plain background, a mask per object, questions whose
one-word answer must be read from the image, and which object each answer token names (docs/design.md §9).

    scene = make_scene(np.random.default_rng(0))
    scene.image            # PIL RGB, IMAGE_SIZE x IMAGE_SIZE
    scene.masks            # [n_objects, H, W] bool, one per object
    for q in scene.questions:  q.prompt, q.answer, q.named   # named: index of the object the answer names

Every scene has 1-3 objects (circles, squares, triangles) with pairwise different colours and different fill
patterns (plain, striped, dotted), so each question has exactly one answer: "What colour is the striped
object?" -> "red" (names the striped object), "What pattern is the blue object?" -> "dotted" (names the blue
object). Why patterns, not shapes, are asked about: a pattern is visible in every 14 px patch of an object,
while a shape is visible only along its outline; with shape questions a 1.2 M-parameter model trained for
20 minutes stayed at chance (it named a colour present in the scene, ~37%), see docs/design.md §9. Colours, shapes, sizes and positions are drawn from ``rng``
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
PATTERNS = ("plain", "striped", "dotted")
BACKGROUND = (118, 118, 118)
DIAMETER = (36, 50)  # px, inclusive range of an object's bounding-box side
GAP = 4  # px between bounding boxes
QUESTION_KINDS = ("colour", "pattern")


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: str  # one word, one token of the grounded tokenizer
    named: int  # index into Scene.objects / Scene.masks of the object the answer names
    kind: str  # "colour" or "pattern"


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    pattern: str
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
        out.append(Question(f"What colour is the {o.pattern} object?", o.colour, i, "colour"))
        out.append(Question(f"What pattern is the {o.colour} object?", o.pattern, i, "pattern"))
    return out


def _fill(rgb: tuple[int, int, int], pattern: str, size: int, phase: int) -> np.ndarray:
    """[size, size, 3] uint8: the object's colour with its pattern (stripes / dots in a darker shade)."""
    out = np.empty((size, size, 3), dtype=np.uint8)
    out[:] = rgb
    dark = tuple(int(v * 0.35) for v in rgb)
    yy, xx = np.mgrid[0:size, 0:size]
    if pattern == "striped":  # diagonal stripes, 8 px period
        out[((xx + yy + phase) // 4) % 2 == 1] = dark
    elif pattern == "dotted":  # 3x3 px dots on a 7 px lattice
        out[(((xx + phase) % 7) < 3) & (((yy + phase) % 7) < 3)] = dark
    elif pattern != "plain":
        raise ValueError(f"pattern={pattern!r} is not allowed; expected one of {', '.join(PATTERNS)}")
    return out


def make_scene(rng: np.random.Generator, n_objects: int | None = None, size: int = IMAGE_SIZE) -> Scene:
    """One scene with ``n_objects`` objects (None: 1-3, one object in 1 of 5 scenes, else 2 or 3 evenly)."""
    if n_objects is None:
        n_objects = 1 if rng.random() < 0.2 else int(rng.integers(2, 4))
    if not 1 <= n_objects <= len(PATTERNS):
        raise ValueError(f"n_objects={n_objects} is not allowed; expected 1..{len(PATTERNS)}")
    colours = rng.choice(list(COLOURS), size=n_objects, replace=False)
    patterns = rng.choice(list(PATTERNS), size=n_objects, replace=False)
    shapes = rng.choice(list(SHAPES), size=n_objects, replace=True)
    boxes = _place(rng, n_objects, size)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    masks = np.zeros((n_objects, size, size), dtype=bool)
    objects = []
    for i, (c, p, s, b) in enumerate(zip(colours, patterns, shapes, boxes, strict=True)):
        # a little per-object shade jitter so colour is a range, not one RGB value
        rgb = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in COLOURS[str(c)])
        m = Image.new("L", (size, size), 0)
        _draw(ImageDraw.Draw(m), str(s), b, 255)
        masks[i] = np.asarray(m) > 0
        fill = _fill(rgb, str(p), size, int(rng.integers(0, 8)))
        canvas[masks[i]] = fill[masks[i]]
        objects.append(SceneObject(str(c), str(s), str(p), b))
    image = Image.fromarray(canvas)
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
    for p in PATTERNS:
        lines.append(f"What colour is the {p} object?")
    for c in COLOURS:
        lines.append(f"What pattern is the {c} object?")
    lines += list(COLOURS) + list(PATTERNS)
    return lines


DEMO_SEED = 30_000  # the demo scenes (mmx_fast/grounded/demo/), disjoint from training and evaluation
DEMO_DIR_NAME = "demo"


def demo_scenes(n: int = 3) -> list[tuple[Scene, Question]]:
    """The demo's scenes and the question asked about each (3 objects; colour and shape questions alternate)."""
    rng = np.random.default_rng(DEMO_SEED)
    out = []
    for i in range(n):
        scene = make_scene(rng, 3)
        kind = QUESTION_KINDS[i % 2]
        q = [q for q in scene.questions if q.kind == kind][int(rng.integers(3))]
        out.append((scene, q))
    return out


def write_demo_scenes(folder) -> None:
    """Write the demo scenes (``scene-K.png``) and their questions (``scenes.json``) into ``folder``
    (how mmx_fast/grounded/demo/ was made)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for k, (scene, q) in enumerate(demo_scenes()):
        name = f"scene-{k + 1}.png"
        scene.image.save(folder / name)
        o = scene.objects[q.named]
        index.append(
            {
                "image": name,
                "prompt": q.prompt,
                "answer": q.answer,
                "names": f"the {o.pattern} {o.colour} {o.shape}",
            }
        )
    (folder / "scenes.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
