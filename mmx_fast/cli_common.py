"""What both command lines (``mmx-fast`` in ``mmx_fast.cli`` and ``mmx-fast eval`` in ``mmx_fast.eval.cli``)
share: the one-line user error, the argument parser that raises it, and the output-folder check.

It imports nothing else from mmx_fast at import time (``mmx_fast.loading`` is imported inside the model
options), so ``cli`` and ``eval`` both depend on it and never on each other.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path


class CliError(Exception):
    """A user-facing error: printed as one line, ``<prog>: error: <message>``, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """argparse, with usage errors raised as ``CliError`` (one line on stderr) instead of usage + exit."""

    def error(self, message: str):  # type: ignore[override]
        hint = f" (see {self.prog} --help)"
        raise CliError(message + hint)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return re.sub(r"\s+", " ", str(text)).strip()


def check_out_dir(text: str) -> Path:
    """The output folder must be a folder we can create files in (or be creatable); nothing is created.
    Raises ``CliError`` naming ``--out`` otherwise."""
    if not text.strip():
        raise CliError(f"--out {text!r} is empty; expected a folder (--out . for the current one)")
    out = Path(text).expanduser()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {text!r} exists and is not a directory")
    probe = out
    while not probe.exists():
        if os.path.lexists(probe):
            where = "" if probe == out else f" (its parent {str(probe)!r} is)"
            raise CliError(
                f"--out {text!r} is a broken symbolic link{where}, pointing to {os.readlink(probe)!r} which does "
                "not exist; expected a directory"
            )
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise CliError(f"--out {text!r} cannot be created: {str(probe)!r} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".mmx-fast-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        where = "" if probe == out else f" (its nearest existing parent {str(probe)!r} is not writable)"
        raise CliError(f"--out {text!r} is not writable{where}: {e.strerror or e}") from None
    return out


# ---------------------------------------------------------------------------------------------------
# options shared by the subcommands that load a model (explain, demo, serve)
def positive_int(name: str, maximum: int | None = None):
    allowed = "a positive integer" if maximum is None else f"an integer in [1, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {name} {text!r}; expected {allowed}") from None
        if value < 1 or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"invalid {name} {text!r}; expected {allowed}")
        return value

    return parse


def resolve_device_option(device: str, dtype: str, source):
    """(device, dtype name, torch dtype) for ``--device`` / ``--dtype`` (``mmx_fast.loading`` decides "auto")."""
    from .loading import resolve_device, resolve_dtype

    try:
        device = resolve_device(device)
    except ValueError as e:
        why = str(e).split(": ", 1)[-1].replace("use cpu or auto", "use --device cpu or auto")
        raise CliError(f"--device {device}: {why}") from None
    torch_dtype = resolve_dtype(dtype, device.split(":")[0], source.checkpoint_dtype)
    return device, str(torch_dtype).removeprefix("torch."), torch_dtype


class ModelOptionError(CliError, ValueError):
    """A ``--model`` that cannot be used: a ``CliError`` for the command lines and a ``ValueError`` for
    ``mmx_fast.eval.run.run_eval``'s Python callers."""


def resolve_model_option(spec: str):
    """``mmx_fast.loading.resolve_model``, its errors phrased for the ``--model`` option."""
    from .loading import ModelLoadError, resolve_model

    try:
        return resolve_model(spec)
    except ModelLoadError as e:
        raise ModelOptionError(f"--{e}") from None


def load_model_option(
    source, device: str, torch_dtype, *, trust_remote_code: bool = False, allow_missing_weights: bool = False
):
    """(model, processor) in eval mode on ``device``, through ``mmx_fast.load``, quietly: the one model-loading
    wrapper of the command lines (explain, demo, eval, serve); errors as ``ModelOptionError`` (options named
    as the CLI spells them)."""
    from .loading import ModelLoadError, load, quiet_transformers

    try:
        with quiet_transformers():
            return load(
                source,
                device=device,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
                allow_missing_weights=allow_missing_weights,
            )
    except ModelLoadError as e:
        text = str(e).replace("trust_remote_code=True (CLI --trust-remote-code)", "--trust-remote-code")
        text = text.replace(
            "allow_missing_weights=True (CLI --allow-missing-weights)", "--allow-missing-weights"
        )
        raise ModelOptionError(f"--{text}") from None
