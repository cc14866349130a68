"""Loaders for the data sets TAM released for its evaluation (COCO 2014 caption split, GranDf, OpenPSG).

Layouts (as xmed-lab/TAM's ``eval.py`` ``prepare_input`` reads them):

- **COCO 2014** (a folder holding ``annotations/instances_minival2014.json``): one sample per entry of that
  file's ``images`` list, in its order; image ``image/<id:012d>.jpg``, mask ``seg_label/<id:012d>.png``,
  reference captions from ``annotations/captions_val2014.json`` (only kept in the records; TAM uses them for
  ROUGE-L / METEOR, which we do not compute). The category dict is TAM's hard-coded COCO dict
  (:data:`COCO_CATEGORIES`: COCO's ids with ``sports ball`` -> ``ball`` and ``wine glass`` -> ``glass``), in
  its order (order matters: the last matching category wins). Prompt: ``"Write a one-sentence caption for
  this image:"``.
- **GranDf / OpenPSG** (a folder holding ``anno.json``): a JSON list of
  ``[image path, caption, mask path, {category name: mask value}]``, paths relative to the folder. Prompt:
  ``"Write a description for this image using around two sentences:"`` (GranDf) or ``"... three
  sentences:"`` (OpenPSG). TAM picks the data set by the substring ``GranDf`` / ``OpenPSG`` in the path; we
  do the same (case-insensitively, on the folder's name first, then its whole path), or take ``layout=``
  explicitly.

Masks (``seg_label/*.png``, the anno.json masks) are class-id maps: the pixel value is the category id
(TAM: ``gt = (mask == label)`` on ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``). :func:`load_mask` reads 8-bit
grayscale (``L``), bilevel (``1``) and palette (``P``: the palette *indices*; OpenCV would convert the palette
colours to gray, which is meaningless for class ids) PNGs, and RGB(A) ones whose three channels are equal;
other encodings raise ``ValueError`` naming the file.

Missing files are never skipped silently: the loader lists every sample whose image or mask is missing
(:attr:`EvalDataset.missing_images`, :attr:`EvalDataset.missing_masks`) and every missing side file
(:attr:`EvalDataset.problems`); the runner records a sample with a missing image as ``missing_image`` and
evaluates a sample with a missing mask as TAM does (an empty mask: no Obj-IoU, Func-IoU still counts),
flagging it, and the report counts both.

Sample ids (:func:`sample_id`): the COCO image id (``str``), or for anno.json the image path, with every
``%`` written ``%25`` and every ``#`` written ``%23``, and ``#2``, ``#3``, ... appended to the 2nd, 3rd, ...
entry with the same image (COCO: the same image id). The escaped part never holds ``#``, so an id names
exactly one entry (a file literally named ``0.jpg#2`` gets ``0.jpg%232``, the second ``0.jpg`` entry
``0.jpg#2``): results are merged and resumed by id, none used twice or lost.

Malformed annotation files (not JSON, not UTF-8/16/32, larger than :data:`MAX_ANNOTATION_BYTES`, nested too
deeply, entries of the wrong shape or type, image ids that are not non-negative integers) raise
``ValueError`` naming the file and the entry; nothing is read from them silently.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LAYOUTS = ("auto", "coco", "grandf", "openpsg")

COCO_PROMPT = "Write a one-sentence caption for this image:"
GRANDF_PROMPT = "Write a description for this image using around two sentences:"
OPENPSG_PROMPT = "Write a description for this image using around three sentences:"
PROMPTS = {"coco": COCO_PROMPT, "grandf": GRANDF_PROMPT, "openpsg": OPENPSG_PROMPT}

# TAM's hard-coded COCO category dict (eval.py prepare_input), in TAM's order.
COCO_CATEGORIES: dict[str, int] = {
    "person": 1,
    "bicycle": 2,
    "car": 3,
    "motorcycle": 4,
    "airplane": 5,
    "bus": 6,
    "train": 7,
    "truck": 8,
    "boat": 9,
    "traffic light": 10,
    "fire hydrant": 11,
    "stop sign": 13,
    "parking meter": 14,
    "bench": 15,
    "bird": 16,
    "cat": 17,
    "dog": 18,
    "horse": 19,
    "sheep": 20,
    "cow": 21,
    "elephant": 22,
    "bear": 23,
    "zebra": 24,
    "giraffe": 25,
    "backpack": 27,
    "umbrella": 28,
    "handbag": 31,
    "tie": 32,
    "suitcase": 33,
    "frisbee": 34,
    "skis": 35,
    "snowboard": 36,
    "ball": 37,
    "kite": 38,
    "baseball bat": 39,
    "baseball glove": 40,
    "skateboard": 41,
    "surfboard": 42,
    "tennis racket": 43,
    "bottle": 44,
    "glass": 46,
    "cup": 47,
    "fork": 48,
    "knife": 49,
    "spoon": 50,
    "bowl": 51,
    "banana": 52,
    "apple": 53,
    "sandwich": 54,
    "orange": 55,
    "broccoli": 56,
    "carrot": 57,
    "hot dog": 58,
    "pizza": 59,
    "donut": 60,
    "cake": 61,
    "chair": 62,
    "couch": 63,
    "potted plant": 64,
    "bed": 65,
    "dining table": 67,
    "toilet": 70,
    "tv": 72,
    "laptop": 73,
    "mouse": 74,
    "remote": 75,
    "keyboard": 76,
    "cell phone": 77,
    "microwave": 78,
    "oven": 79,
    "toaster": 80,
    "sink": 81,
    "refrigerator": 82,
    "book": 84,
    "clock": 85,
    "vase": 86,
    "scissors": 87,
    "teddy bear": 88,
    "hair drier": 89,
    "toothbrush": 90,
}

COCO_INSTANCES = "annotations/instances_minival2014.json"
COCO_CAPTIONS = "annotations/captions_val2014.json"
# the largest annotation file read (COCO's captions_val2014.json is 10 MB, instances_val2014.json 160 MB)
MAX_ANNOTATION_BYTES = 1 << 30


def sample_id(key: str, occurrence: int) -> str:
    """The id of the ``occurrence``-th (1-based) entry with image ``key``: ``key`` with ``%`` -> ``%25`` and
    ``#`` -> ``%23``, then ``#<occurrence>`` from the second one on. Distinct (key, occurrence) pairs give
    distinct ids, and an id without ``%`` is the key itself (ids from before the escaping are unchanged)."""
    esc = key.replace("%", "%25").replace("#", "%23")
    return esc if occurrence == 1 else f"{esc}#{occurrence}"


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Sample:
    """One evaluation item. Paths are absolute; ``categories`` maps category names to mask values."""

    id: str
    index: int
    image: str
    prompt: str
    mask: str
    categories: Mapping[str, int]
    captions: tuple[str, ...] = ()

    @property
    def image_exists(self) -> bool:
        return os.path.isfile(self.image)

    @property
    def mask_exists(self) -> bool:
        return os.path.isfile(self.mask)


@dataclass
class EvalDataset:
    """A loaded data set: its samples (in the data set's order) and every missing file."""

    name: str
    layout: str
    root: str
    prompt: str
    samples: list[Sample]
    missing_images: list[str] = field(default_factory=list)
    missing_masks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layout": self.layout,
            "root": self.root,
            "prompt": self.prompt,
            "samples": len(self.samples),
            "missing_images": len(self.missing_images),
            "missing_masks": len(self.missing_masks),
            "problems": list(self.problems),
        }


def detect_layout(root: str | os.PathLike) -> str:
    """``coco`` when ``annotations/instances_minival2014.json`` exists; for an ``anno.json`` folder
    ``grandf`` / ``openpsg`` by the folder's name, else its path (TAM: the substring ``GranDf`` / ``OpenPSG`` in
    the path), case-insensitively; ambiguous or neither: ``ValueError`` asking for the layout."""
    root = Path(root)
    if (root / COCO_INSTANCES).is_file():
        return "coco"
    if (root / "anno.json").is_file():
        # the folder's own name first, then the whole path (TAM tests the path string)
        for name in (root.resolve().name.lower(), str(root.resolve()).lower()):
            has_g, has_o = "grandf" in name, "openpsg" in name
            if has_g != has_o:
                return "grandf" if has_g else "openpsg"
        raise ValueError(
            f"{str(root)!r} holds anno.json but its path names neither GranDf nor OpenPSG (or both); "
            "pass the layout explicitly (--dataset grandf or --dataset openpsg): it selects the prompt"
        )
    raise ValueError(
        f"{str(root)!r} is not a TAM-format data set: expected {COCO_INSTANCES} (COCO 2014) or anno.json "
        "(GranDf / OpenPSG) inside it"
    )


def _read_json(path: Path) -> Any:
    """The parsed JSON of an annotation file (UTF-8 with or without BOM, UTF-16 or UTF-32, as ``json.loads``
    detects on bytes); every failure is a ``ValueError`` naming the file."""
    try:
        size = path.stat().st_size
        if size > MAX_ANNOTATION_BYTES:
            raise ValueError(
                f"{str(path)!r} is {size} bytes; annotation files larger than {MAX_ANNOTATION_BYTES} bytes "
                "are not read"
            )
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{str(path)!r} cannot be read: {e.strerror or e}") from None
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 (or UTF-16/32) text: {e}") from None
    except RecursionError:
        raise ValueError(f"{str(path)!r} is nested too deeply to be an annotation file") from None


_DIGITS = re.compile(r"[0-9]+")


def _image_id(value: Any, where: str) -> int:
    """A COCO image id: a non-negative integer (also written as an integral float such as ``139.0`` or a
    string of digits); anything else is a ``ValueError`` naming ``where``."""
    if isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if value >= 0:
            return value
    elif isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and value >= 0:
            return int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise ValueError(f"{where} is {_show(value)}; expected a non-negative integer image id")


def load_dataset(root: str | os.PathLike, layout: str = "auto", prompt: str | None = None) -> EvalDataset:
    """Load a TAM-format data set (see the module docstring). ``prompt`` overrides the layout's prompt."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not allowed; expected one of {', '.join(LAYOUTS)}")
    rootp = Path(root)
    if not rootp.is_dir():
        raise ValueError(f"data set folder {str(root)!r} does not exist or is not a folder")
    if layout == "auto":
        layout = detect_layout(rootp)
    if prompt is not None and not prompt.strip():
        raise ValueError("prompt override is empty; expected a non-empty instruction")
    text = prompt if prompt is not None else PROMPTS[layout]
    if layout == "coco":
        ds = _load_coco(rootp, text)
    else:
        ds = _load_anno(rootp, layout, text)
    for s in ds.samples:
        if not s.image_exists:
            ds.missing_images.append(s.id)
        if not s.mask_exists:
            ds.missing_masks.append(s.id)
    return ds


def _load_coco(root: Path, prompt: str) -> EvalDataset:
    inst_path = root / COCO_INSTANCES
    if not inst_path.is_file():
        raise ValueError(f"COCO layout needs {str(inst_path)!r}, which does not exist")
    inst = _read_json(inst_path)
    images = inst.get("images") if isinstance(inst, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{str(inst_path)!r} has no 'images' list; expected COCO instances annotations")
    problems: list[str] = []
    captions: dict[int, list[str]] = {}
    cap_path = root / COCO_CAPTIONS
    if cap_path.is_file():
        captions = _read_captions(cap_path)
    else:
        problems.append(f"missing {COCO_CAPTIONS} (reference captions; not needed for the IoU metrics)")
    samples = []
    no_caption = 0
    seen: dict[int, int] = {}
    for k, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im:
            raise ValueError(
                f"{str(inst_path)!r}: images[{k}] is {_show(im)}; expected an object with an 'id'"
            )
        iid = _image_id(im["id"], f"{str(inst_path)!r}: images[{k}]['id']")
        n = seen.get(iid, 0) + 1
        seen[iid] = n
        fn = str(iid).zfill(12)
        caps = captions.get(iid, [])
        if cap_path.is_file() and not caps:
            no_caption += 1
        samples.append(
            Sample(
                id=sample_id(str(iid), n),
                index=k,
                image=str(root / "image" / f"{fn}.jpg"),
                prompt=prompt,
                mask=str(root / "seg_label" / f"{fn}.png"),
                categories=COCO_CATEGORIES,
                captions=tuple(caps),
            )
        )
    if no_caption:
        problems.append(f"{no_caption} images have no reference caption in {COCO_CAPTIONS}")
    repeats = sum(n - 1 for n in seen.values())
    if repeats:
        problems.append(
            f"{repeats} repeated image ids in {COCO_INSTANCES} (each entry evaluated, as TAM does)"
        )
    return EvalDataset(
        name=root.name, layout="coco", root=str(root), prompt=prompt, samples=samples, problems=problems
    )


def _read_captions(path: Path) -> dict[int, list[str]]:
    """image id -> reference captions, from a COCO captions file (``{"annotations": [{"image_id", "caption"}]}``)."""
    caps = _read_json(path)
    if not isinstance(caps, dict) or not isinstance(caps.get("annotations"), list):
        raise ValueError(
            f"{str(path)!r} has no 'annotations' list; expected COCO captions "
            '({"annotations": [{"image_id": ..., "caption": ...}, ...]})'
        )
    captions: dict[int, list[str]] = {}
    for k, a in enumerate(caps["annotations"]):
        where = f"{str(path)!r}: annotations[{k}]"
        if not isinstance(a, dict) or "image_id" not in a or "caption" not in a:
            raise ValueError(f"{where} is {_show(a)}; expected an object with 'image_id' and 'caption'")
        iid = _image_id(a["image_id"], f"{where}['image_id']")
        if not isinstance(a["caption"], str):
            raise ValueError(f"{where}['caption'] is {_show(a['caption'])}; expected a string")
        captions.setdefault(iid, []).append(a["caption"])
    return captions


def _load_anno(root: Path, layout: str, prompt: str) -> EvalDataset:
    path = root / "anno.json"
    if not path.is_file():
        raise ValueError(f"{layout} layout needs {str(path)!r}, which does not exist")
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{str(path)!r} must hold a JSON list of [image, caption, mask, categories]")
    samples = []
    seen: dict[str, int] = {}
    for k, item in enumerate(data):
        where = f"{str(path)!r}: entry {k}"
        if not isinstance(item, (list, tuple)) or len(item) < 4:
            raise ValueError(f"{where} is {_show(item)}; expected [image, caption, mask, categories]")
        img, cap, mask, cats = item[0], item[1], item[2], item[3]
        for what, p in (("image", img), ("mask", mask)):
            if not isinstance(p, str) or not p.strip() or "\x00" in p:
                raise ValueError(f"{where} has {what} path {_show(p)}; expected a non-empty relative path")
        if not isinstance(cats, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in cats.values()
        ):
            raise ValueError(
                f"{where} categories {_show(cats)}; expected a dict name -> mask value (an integer 0..255)"
            )
        if any(not name.strip() for name in cats):
            raise ValueError(f"{where} categories {_show(cats)} have an empty name")
        if isinstance(cap, str):
            caps: tuple[str, ...] = (cap,)
        elif isinstance(cap, list) and all(isinstance(c, str) for c in cap):
            caps = tuple(cap)
        else:
            raise ValueError(f"{where} has caption {_show(cap)}; expected a string or a list of strings")
        n = seen.get(img, 0) + 1
        seen[img] = n
        samples.append(
            Sample(
                id=sample_id(img, n),
                index=k,
                image=str(root / img),
                prompt=prompt,
                mask=str(root / mask),
                categories=dict(cats),
                captions=caps,
            )
        )
    return EvalDataset(name=root.name, layout=layout, root=str(root), prompt=prompt, samples=samples)


def _rgb_to_gray_equal(arr: np.ndarray, path: str) -> np.ndarray:
    if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
        raise ValueError(
            f"mask {path!r} is a colour image; expected a class-id mask (8-bit grayscale or palette PNG whose "
            "pixel values are the category ids)"
        )
    return np.ascontiguousarray(arr[..., 0])


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A class-id mask as uint8 [H, W] (see the module docstring for the accepted encodings)."""
    path = str(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"mask {path!r} is not a readable image: {e}") from e
    if mode in ("L", "P"):
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if mode == "1":
        return arr.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        return _rgb_to_gray_equal(arr[..., :3], path)
    if mode == "LA":
        return np.ascontiguousarray(arr[..., 0])
    if mode in ("I;16", "I;16B", "I;16L", "I", "F") and arr.size and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    raise ValueError(
        f"mask {path!r} has PIL mode {mode!r}; expected an 8-bit class-id mask (L, P, 1, or equal RGB channels)"
    )
