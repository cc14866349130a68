"""``mmx_fast.load``: the one model loader, shared by the Python API, the CLI and ``mmx-fast eval``.

    model, processor = mmx_fast.load("path/to/Qwen2-VL-2B-Instruct")             # a local folder
    model, processor = mmx_fast.load("Qwen/Qwen2-VL-2B-Instruct", device="cuda")  # already in the HF cache
    model, processor = mmx_fast.load("tiny:llava")                                # tiny, RANDOM weights
    model, processor = mmx_fast.load("grounded")       # the tiny Qwen2-VL trained in the repo (design §9)

Nothing is ever downloaded (``local_files_only=True``). Supported families: those the adapters support,
``mmx_fast.adapters.supported_model_types()`` (README, "Models").

- ``dtype="auto"`` follows the checkpoint's own dtype (``dtype`` / ``torch_dtype`` in its config.json): a
  bf16 checkpoint stays bf16, also on the CPU. A checkpoint that declares none loads as bfloat16 on a CUDA GPU
  that supports it, else float32. ``tiny:`` models are float32 checkpoints.
- ``device_map`` is passed to ``from_pretrained`` as is (e.g. ``"auto"`` to spread a model over several GPUs);
  the model is then not moved, and ``device`` must stay ``"auto"``.
- ``attn_implementation="auto"`` picks ``flash_attention_2`` only when flash-attn is installed, the device is
  CUDA and the dtype is float16 / bfloat16 (:func:`choose_attn_implementation`); otherwise ``sdpa``. An
  explicit ``"flash_attention_2"`` that cannot run here is refused (:func:`resolve_attn_implementation`).
  ``Explainer(model, processor, attn_implementation=...)`` applies the same rules to a caller's model, on
  request only.
- Processors load without torchvision: transformers' ``AutoProcessor`` needs torchvision for the video
  processor of Qwen2-VL / InternVL; when it fails, the processor is built from its tokenizer and image
  processor (public Auto classes, ``get_processor_dict`` and ``from_dict``) with no video processor
  (``mmx_fast/processors.py``: ``accept_missing_video_processor`` is the one place that relies on a
  transformers internal).

Bad input raises :class:`ModelLoadError` (a ``ValueError``) whose message starts with ``model '<spec>'``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processors import processor_without_video

TINY_PREFIX = "tiny:"
# Built-in trained models shipped inside the package: name -> folder (a local folder of the same name wins).
BUILTIN_MODELS = {"grounded": ("grounded", "weights")}
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
OFFLINE_HINT = (
    "mmx-fast works offline and never downloads a model: pass a local model folder "
    "(one with config.json, e.g. saved with save_pretrained), or tiny:qwen2_vl for a random-weight test model"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message names it (``model '<spec>' ...``) and what is allowed."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, found without loading any weights."""

    spec: str  # what the user passed
    family: str  # config.model_type
    location: str | None  # folder or cached hub id; None for tiny models
    tiny: bool
    checkpoint_dtype: str | None = None  # the dtype the checkpoint declares (float32 for tiny models)


def builtin_model_path(name: str) -> Path:
    """The folder of a built-in model (``BUILTIN_MODELS``) inside the installed package."""
    return Path(__file__).parent.joinpath(*BUILTIN_MODELS[name])


def supported_families() -> list[str]:
    from .adapters import supported_model_types

    return list(supported_model_types())


def _declared_dtype(cfg: dict[str, Any]) -> str | None:
    """The dtype a config.json declares (top level, else its text config), as a torch dtype name."""
    for d in (cfg, cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}):
        for key in ("dtype", "torch_dtype"):
            value = d.get(key)
            if isinstance(value, str) and value:
                return value.removeprefix("torch.")
    return None


#: The JSON files of a model folder that transformers reads (config first); each is bounded and checked for
#: ``auto_map`` (custom code) before transformers sees it.
_JSON_FILES = (
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
)
MAX_CONFIG_BYTES = 16 << 20  # a real config.json is a few kB; tokenizer_config.json at most a few MB


def _short_repr(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _read_json(spec: str, path: Path) -> Any:
    """A model folder's JSON file, bounded in size and nesting; ModelLoadError naming the file otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelLoadError(
                f"model {spec!r}: {path.name} is {size} bytes, over the limit of {MAX_CONFIG_BYTES} bytes for a "
                "model's JSON file"
            )
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ModelLoadError(
            f"model {spec!r}: {path.name} is nested too deeply to be a model's configuration"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"model {spec!r}: cannot read {path.name} ({e})") from None


def _check_special_files(spec: str, folder: Path) -> None:
    """Refuse a model folder holding a pipe, device or socket (directly or through a symbolic link):
    transformers would open it and wait forever (a FIFO named tokenizer_config.json), or read a device."""
    try:
        entries = list(itertools.islice(os.scandir(folder), 100_000))
    except OSError as e:
        raise ModelLoadError(f"model {spec!r}: cannot list the folder ({e.strerror or e})") from None
    for entry in entries:
        try:
            mode = os.stat(entry.path).st_mode
        except OSError:
            continue  # a broken link: transformers reports it if it needs the file
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ModelLoadError(
                f"model {spec!r}: {entry.name} is not a regular file (a pipe, device or socket); expected a "
                "model folder of regular files"
            )


def remote_code_files(folder: str | Path) -> list[tuple[str, str]]:
    """(JSON file, what its ``auto_map`` asks to run) for every custom-code entry in a model folder: the
    classes transformers would import from the folder's own ``.py`` files with ``trust_remote_code=True``."""
    found = []
    for name in _JSON_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_bytes()[: MAX_CONFIG_BYTES + 1].decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # _read_json reports it
        if not isinstance(cfg, dict):
            continue
        maps = [cfg.get("auto_map")]
        for sub in cfg.values():  # e.g. processor_config.json's nested image processor dict
            if isinstance(sub, dict):
                maps.append(sub.get("auto_map"))
        for auto_map in maps:
            if isinstance(auto_map, dict):
                found += [(name, f"{k} -> {v}") for k, v in auto_map.items()]
            elif isinstance(auto_map, (list, str)) and auto_map:
                found.append((name, _short_repr(auto_map)))
    return found


def check_no_remote_code(source: ModelSource) -> None:
    """Refuse a model folder that asks to run its own Python code (an ``auto_map``): transformers would import
    it. Loading it needs an explicit ``trust_remote_code=True`` (CLI ``--trust-remote-code``)."""
    if source.tiny or source.location is None or not Path(source.location).is_dir():
        return
    found = remote_code_files(source.location)
    if found:
        file, entry = found[0]
        module = entry.split("-> ")[-1].split("--")[-1].split(".")[0].strip("'[] ")
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ModelLoadError(
            f"model {source.spec!r}: {file} asks to run the folder's own Python code (auto_map: {entry}, "
            f"from {module}.py){more}; mmx-fast never runs a model folder's code unless you trust it: pass "
            "trust_remote_code=True (CLI --trust-remote-code)"
        )


def resolve_model(spec: str) -> ModelSource:
    """Where the model ``spec`` comes from and its family, checked without loading any weights."""
    families = supported_families()
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"model {spec!r} is empty; pass a local model folder or tiny:qwen2_vl")
    if spec.startswith(TINY_PREFIX):
        from .adapters.registry import tiny_model_types  # the model types with a tiny declaration

        family = spec[len(TINY_PREFIX) :]
        tiny = tiny_model_types()
        if family not in tiny:
            choices = ", ".join(TINY_PREFIX + f for f in tiny)
            raise ModelLoadError(
                f"model {spec!r}: unsupported tiny model family {family!r}; choose one of {choices}"
            )
        return ModelSource(spec, family, None, True, "float32")

    path = Path(spec).expanduser()
    if not path.exists() and spec in BUILTIN_MODELS:
        path = builtin_model_path(spec)
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model {spec!r}: the built-in model's files are missing from {path} (a broken install?); "
                "retrain it with `make train-grounded`"
            )
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model {spec!r} is a file; expected a model folder containing config.json")
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ModelLoadError(
                f"model {spec!r} has no config.json; expected a transformers model folder "
                "(as written by save_pretrained)"
            )
        _check_special_files(spec, path)
        cfg = _read_json(spec, cfg_path)
        if not isinstance(cfg, dict) or not cfg.get("model_type"):
            raise ModelLoadError(
                f"model {spec!r}: config.json has no model_type; expected a transformers model folder"
            )
        model_type, declared, location = cfg["model_type"], _declared_dtype(cfg), str(path)
        if not isinstance(model_type, str):
            raise ModelLoadError(
                f"model {spec!r}: config.json's model_type is a {type(model_type).__name__} "
                f"({_short_repr(model_type)}); expected a string such as 'qwen2_vl'"
            )
        for name in _JSON_FILES[1:]:  # transformers reads these too: the same bounds before it does
            if (path / name).is_file():
                _read_json(spec, path / name)
    else:
        if not _HUB_ID.match(spec) or spec.startswith((".", "~")):
            raise ModelLoadError(f"model {spec!r}: no such folder; {OFFLINE_HINT}")
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(spec, local_files_only=True, trust_remote_code=False)
        except Exception:  # not in the local cache (OSError), a cached config transformers cannot read,
            # or one that names custom code (trust_remote_code is never passed here)
            raise ModelLoadError(
                f"model {spec!r} is not a local folder and is not available offline in the Hugging Face "
                f"cache; {OFFLINE_HINT}"
            ) from None
        model_type, declared, location = config.model_type, _declared_dtype(config.to_dict()), spec
    if model_type not in families:
        from .adapters.registry import REFUSED

        if model_type in REFUSED:
            raise ModelLoadError(
                f"model {spec!r}: model type {model_type!r} cannot be explained: {REFUSED[model_type]}"
            )
        raise ModelLoadError(
            f"model {spec!r}: unsupported model family {model_type!r}; supported families: {', '.join(families)}"
        )
    return ModelSource(spec, model_type, location, False, declared)


# ---------------------------------------------------------------------------------------------------
# device, dtype, attention
def resolve_device(device: Any = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; a CUDA device without a GPU is an
    error. Returns the device as a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not allowed; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r}: no CUDA GPU is available to torch on this machine; use cpu or auto"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not allowed; expected auto, cpu, cuda or cuda:N")
    return str(dev)


def resolve_dtype(dtype: Any, device_type: str, checkpoint_dtype: str | None = None):
    """The torch dtype to load with: an explicit dtype as given; ``"auto"`` -> the checkpoint's declared dtype
    (float32 / bfloat16 / float16), else bfloat16 on a CUDA GPU that supports it, else float32."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if checkpoint_dtype in ("float32", "bfloat16", "float16"):
            return getattr(torch, checkpoint_dtype)
        if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype in DTYPES:
        return getattr(torch, dtype)
    raise ValueError(f"dtype={dtype!r} is not allowed; expected one of {', '.join(DTYPES)} or a torch.dtype")


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_attn_implementation(requested: str, *, device_type: str, dtype, flash_attn: bool) -> str:
    """The attention implementation to load with. ``"auto"``: ``flash_attention_2`` when flash-attn is
    installed (``flash_attn``), ``device_type`` is ``"cuda"`` and ``dtype`` is float16 / bfloat16 (flash-attn
    supports nothing else); otherwise ``sdpa``. Any other allowed value is returned as is."""
    import torch

    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={requested!r} is not allowed; expected one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if requested != "auto":
        return requested
    if flash_attn and device_type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return "flash_attention_2"
    return "sdpa"


def flash_attn_problem(*, device_type: str, dtype, flash_attn: bool) -> str | None:
    """Why flash-attention 2 cannot run here (None when it can): it must be installed, on CUDA, in float16 or
    bfloat16 (the rules ``"auto"`` follows in :func:`choose_attn_implementation`)."""
    import torch

    if not flash_attn:
        return "flash-attn is not installed (pip install flash-attn, on a machine with a CUDA build of torch)"
    if device_type != "cuda":
        return f"the model is on {device_type!r}; flash-attention 2 runs only on CUDA"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"the model's dtype is {str(dtype).removeprefix('torch.')}; flash-attention 2 needs float16 or bfloat16"
    return None


def resolve_attn_implementation(requested: str, *, device_type: str, dtype, flash_attn: bool) -> str:
    """:func:`choose_attn_implementation`, and a ValueError saying why when ``"flash_attention_2"`` is
    requested explicitly but cannot run here (:func:`flash_attn_problem`)."""
    chosen = choose_attn_implementation(
        requested, device_type=device_type, dtype=dtype, flash_attn=flash_attn
    )
    if chosen == "flash_attention_2":
        problem = flash_attn_problem(device_type=device_type, dtype=dtype, flash_attn=flash_attn)
        if problem is not None:
            raise ValueError(
                f"attn_implementation='flash_attention_2' cannot be used: {problem}; "
                "use 'auto' (flash-attention 2 where it can run, else sdpa), 'sdpa' or 'eager'"
            )
    return chosen


# ---------------------------------------------------------------------------------------------------
# processors (without torchvision: mmx_fast/processors.py)
def load_processor(source: ModelSource, trust_remote_code: bool = False):
    """The processor of a model folder / cached hub id: ``AutoProcessor``, or without torchvision
    :func:`processor_without_video`. ``trust_remote_code`` is passed to transformers explicitly (False unless
    the caller opted in), so transformers never asks on stdin."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(
            source.location, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as first:  # typically: the video processor needs torchvision
        try:
            return processor_without_video(source.location, source.family, trust_remote_code)
        except Exception:
            raise ModelLoadError(f"model {source.spec!r}: cannot load the processor ({first})") from None


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings and progress bars inside the block (the CLI's output stays clean)."""
    import transformers

    log = transformers.utils.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()


def check_loading_info(source: ModelSource, info: dict, allow_missing_weights: bool) -> None:
    """Refuse a checkpoint that lacks some of the model's tensors or holds them in another shape
    (``from_pretrained``'s loading info), naming them: transformers only logs these and the CLI quiets its log,
    so those layers would silently keep random values. With ``allow_missing_weights`` a warning instead."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(
        str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ()
    )
    if (missing or mismatched) and not allow_missing_weights:
        bad = missing or mismatched
        what = "lacks" if missing else "has wrongly shaped"
        names = ", ".join(bad[:5]) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
        raise ModelLoadError(
            f"model {source.spec!r}: the checkpoint {what} {len(bad)} of the model's tensors ({names}); "
            "they would keep random values. Pass allow_missing_weights=True (CLI --allow-missing-weights) to "
            "load it anyway"
        )
    if missing or mismatched:
        import warnings

        warnings.warn(
            f"model {source.spec!r}: {len(missing) + len(mismatched)} tensors are missing or mismatched in the "
            f"checkpoint and keep random values (allow_missing_weights=True): {', '.join((missing + mismatched)[:5])}",
            stacklevel=3,  # the caller of mmx_fast.load
        )


# ---------------------------------------------------------------------------------------------------
def load(
    model_id_or_path: str | ModelSource,
    device: Any = "auto",
    dtype: Any = "auto",
    device_map: Any = None,
    attn_implementation: str = "auto",
    *,
    trust_remote_code: bool = False,
    allow_missing_weights: bool = False,
):
    """``(model, processor)`` for a local model folder, a Hugging Face id already in the local cache, or
    ``tiny:<family>`` (a tiny random-weight test model); the model is in eval mode on ``device``.

    Args:
        model_id_or_path: folder (with config.json), cached hub id, ``tiny:<family>``, or a ``ModelSource``
            from :func:`resolve_model`.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"auto"`` (the checkpoint's dtype; see the module docstring), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a ``torch.dtype``.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"``); the model is then left where it is placed.
        attn_implementation: ``"auto"`` (:func:`choose_attn_implementation`), ``"sdpa"``, ``"eager"``,
            ``"flash_attention_2"`` (a ValueError saying why when it cannot run here,
            :func:`resolve_attn_implementation`).
        trust_remote_code: run the Python code a model folder names in an ``auto_map`` (its own ``.py``
            files). Off by default: such a folder is refused with a ModelLoadError naming the file; transformers
            is always called with ``trust_remote_code=False`` unless this is True, so it never asks.
        allow_missing_weights: load a checkpoint that lacks some of the model's tensors (they keep random
            values). Off by default: a ModelLoadError names the missing tensors.

    Raises ``ModelLoadError`` (bad model) or ``ValueError`` (bad option). Nothing is downloaded.
    """
    import torch

    source = (
        model_id_or_path if isinstance(model_id_or_path, ModelSource) else resolve_model(model_id_or_path)
    )
    if device_map is not None and device not in (None, "auto"):
        raise ValueError(f"pass device={device!r} or device_map={device_map!r}, not both")
    if device_map is not None and source.tiny:
        raise ValueError(
            f"device_map={device_map!r} is only for checkpoints loaded from disk, not {source.spec!r}"
        )
    if device_map is None:
        device = resolve_device(device)
        device_type = torch.device(device).type
    else:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = resolve_dtype(dtype, device_type, source.checkpoint_dtype)
    attn = resolve_attn_implementation(
        attn_implementation, device_type=device_type, dtype=torch_dtype, flash_attn=flash_attn_installed()
    )
    for name, flag in (
        ("trust_remote_code", trust_remote_code),
        ("allow_missing_weights", allow_missing_weights),
    ):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}={flag!r} is not allowed; expected True or False")
    if not trust_remote_code:
        check_no_remote_code(source)
    if source.tiny:
        from .tiny import tiny_model

        model, processor = tiny_model(source.family, dtype=torch_dtype, attn_implementation=attn)
        return model.to(device).eval(), processor

    from transformers import AutoModelForImageTextToText

    processor = load_processor(source, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "dtype": torch_dtype,
        "attn_implementation": attn,
        "trust_remote_code": trust_remote_code,
        "output_loading_info": True,
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(source.location, **kwargs)
    except Exception as e:
        raise ModelLoadError(f"model {source.spec!r}: cannot load the model ({e})") from None
    check_loading_info(source, info, allow_missing_weights)
    if device_map is None:
        model = model.to(device)
    return model.eval(), processor
