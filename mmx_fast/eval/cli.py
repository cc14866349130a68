"""``mmx-fast eval`` / ``python -m mmx_fast.eval``: TAM's Obj-IoU / Func-IoU / F1-IoU on a TAM-format data set.

    mmx-fast eval --model ID_OR_PATH --data DIR --methods msea-arc tam logit-lens [--limit N] --out DIR
    torchrun --nproc_per_node N -m mmx_fast.eval --model ... --data DIR --out DIR   (shards by rank)

``mmx_fast.cli`` registers the ``eval`` subcommand with :func:`add_arguments` and :func:`run`; ``python -m
mmx_fast.eval`` takes the same arguments (:func:`main`). See ``mmx_fast.eval.run`` for the output files and
the resume / merge rules, and ``mmx_fast.eval.metrics`` for the metrics.

Exit status: 0 when every selected sample was evaluated (missing images are data problems: reported, not
failures), 1 when some samples failed or are unfinished, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..adapters.registry import supported_model_types
from ..cli_common import CliError, OneLineParser, check_out_dir, one_line, positive_int
from ..config import MAX_NEW_TOKENS
from .datasets import LAYOUTS
from .metrics import MERGES, PLACEMENTS

PROG = "mmx-fast eval"
GROUNDED = "grounded"  # --dataset grounded: mmx_fast.grounded.evaluate, no data folder
DEFAULT_METHODS = ("msea-arc", "tam", "logit-lens")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the eval arguments to ``parser`` (the ``eval`` subparser of ``mmx-fast``, or a standalone one).

    Long: one argparse declaration per option, read top to bottom as the command line's reference.
    """
    from ..config import METHODS

    parser.description = (
        "Evaluate attribution methods with TAM's plausibility metrics (Obj-IoU, Func-IoU, F1-IoU, precision, "
        "recall) on a TAM-format data set (COCO 2014 / GranDf / OpenPSG). Each answer is generated once and "
        "explained by every method; one JSON line per sample is appended to OUT (re-runs resume); the table "
        "is printed and written to OUT/table.md. Under torchrun the samples are sharded by rank."
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="ID_OR_PATH",
        help="a local model folder, a Hugging Face id already in the local cache, grounded (the model trained in "
        "the repo), or tiny:<model type> "
        f"(random-weight test models: {', '.join(supported_model_types())}); nothing is downloaded. "
        "Required, except with --dataset grounded (default: grounded)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="the data set folder (TAM's released layout); not used with --dataset grounded",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (created; re-using it resumes); with --dataset grounded optional (table.md)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(DEFAULT_METHODS),
        metavar="METHOD",
        help=f"methods to evaluate, from: {', '.join(METHODS)} (default: all three)",
    )
    parser.add_argument(
        "--limit", type=positive_int("--limit"), default=None, metavar="N", help="only the first N samples"
    )
    parser.add_argument(
        "--dataset",
        choices=LAYOUTS + (GROUNDED,),
        default="auto",
        help="data set layout; auto: COCO if annotations/instances_minival2014.json exists, else GranDf / OpenPSG "
        "from the folder name (it selects TAM's prompt); grounded: the held-out grounded scenes generated in "
        "the package (no --data; accuracy, pointing, named-object share, Obj-IoU; docs/design.md §9)",
    )
    parser.add_argument("--prompt", default=None, help="override the data set's prompt (default: TAM's)")
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int("--max-new-tokens", MAX_NEW_TOKENS),
        default=256,
        metavar="N",
        help=f"generation budget (TAM: 256; at most {MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="stretch",
        help="stretch: the map covers the whole image (TAM, default); crop: the map covers the part of the image "
        "the model saw (LLaVA's centre crop)",
    )
    parser.add_argument(
        "--word-typer",
        default="auto",
        metavar="SPEC",
        help="auto (NLTK when its tagger and WordNet data are installed, else the offline fallback), nltk, "
        "fallback, or module:function (a function word -> function/noun/others; module:attribute may also name "
        "a WordTyper or its class); checked before the model loads",
    )
    parser.add_argument(
        "--merge",
        choices=MERGES,
        default="tam",
        help="merging of consecutive same-category words: tam (TAM's code, default) or strict (see metrics.py)",
    )
    parser.add_argument(
        "--include-stop-token",
        action="store_true",
        help="also explain the generated stop token, as TAM does (it joins the preceding word)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (the checkpoint's own dtype from its config.json; when it declares none, bfloat16 on a "
        "bf16-capable CUDA GPU, else float32), float32, bfloat16, float16",
    )
    parser.add_argument(
        "--backend", default="auto", help="kernel backend of the fast path (auto, triton, torch, native)"
    )
    parser.add_argument(
        "--save-maps", action="store_true", help="also write each sample's uint8 maps to OUT/maps/"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument(
        "--dist-timeout-min",
        type=float,
        default=360.0,
        metavar="MIN",
        help="torch.distributed timeout, i.e. how long ranks wait for each other at the final barrier (default 360)",
    )
    return parser


def options_from_args(args: argparse.Namespace):
    from .options import EvalOptions

    return EvalOptions(
        model=args.model,
        data=args.data,
        out=args.out,
        methods=tuple(args.methods),
        limit=args.limit,
        layout=args.dataset,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        placement=args.placement,
        word_typer=args.word_typer,
        merge=args.merge,
        include_stop_token=args.include_stop_token,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        save_maps=args.save_maps,
        progress=not args.quiet,
        dist_timeout_min=args.dist_timeout_min,
    )


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; returns the exit status (see the module docstring)."""
    from .run import run_eval

    if args.dataset == GROUNDED:
        return run_grounded(args)
    for name in ("model", "data", "out"):
        if getattr(args, name) is None:
            raise CliError(f"--{name} is required (except with --dataset grounded)")
    opts = options_from_args(args)
    try:
        opts.check()
        if not os.path.isdir(opts.data):
            raise ValueError(f"--data {opts.data!r} is not a folder")
        try:
            check_out_dir(opts.out)
        except CliError as e:
            raise ValueError(str(e)) from None
    except ValueError as e:
        raise CliError(str(e)) from None
    try:
        summary = run_eval(opts)
    except ValueError as e:  # set-up problems: the data set, the output folder's settings, the word typer
        raise CliError(str(e)) from None
    if summary is None:  # not rank 0
        return 0
    c = summary["counts"]
    return 1 if c["error"] or c["unfinished"] or c["incomplete"] else 0


def run_grounded(args: argparse.Namespace) -> int:
    """``--dataset grounded``: the grounded model's accuracy and localisation table (printed; OUT/table.md)."""
    from ..grounded.evaluate import evaluate, table

    if args.data is not None:
        raise CliError("--data is not used with --dataset grounded (its scenes are generated in the package)")
    out_dir = check_out_dir(args.out) if args.out is not None else None
    n = args.limit if args.limit is not None else 60  # --limit: localisation scenes (~5 named tokens each)
    try:
        result = evaluate(
            n_scenes=n,
            n_accuracy_scenes=n if args.limit is not None else 200,
            methods=tuple(args.methods),
            model_spec=args.model or GROUNDED,
        )
    except ValueError as e:
        raise CliError(str(e)) from None
    body = table(result)
    print(body, flush=True)
    if out_dir is not None:
        from ..io import atomic_write_bytes

        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / "table.md", (body + "\n").encode("utf-8"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mmx_fast.eval``: the same arguments as ``mmx-fast eval``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = OneLineParser(prog="python -m mmx_fast.eval")  # usage errors as one line, like `mmx-fast eval`
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("MMX_FAST_DEBUG", "").strip() not in ("", "0"):
            raise
        code = getattr(e, "code", None)
        msg = one_line(str(e))
        if not isinstance(code, int):
            msg = f"{type(e).__name__}: {msg} (set MMX_FAST_DEBUG=1 for a traceback)"
            code = 1
        print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
        return code
