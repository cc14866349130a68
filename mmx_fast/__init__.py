"""mmx_fast: token-level visual attribution for multimodal LLMs (MSEA + ARC on TAM), fast.

from mmx_fast import ExplainConfig, explain_fast
exp = explain_fast(model, processor, image, "Describe the image.")
exp.maps  # [T, Hc, Wc] in [0, 1], one map per answer token

model, processor = mmx_fast.load("path/to/model")  # offline; dtype follows the checkpoint
"""

from .config import METHODS, ExplainConfig
from .explanation import Explanation
from .version import __version__


def __getattr__(name):  # lazy: importing the package must not import transformers or triton
    if name in ("explain_fast", "Explainer"):
        from . import fast

        return getattr(fast, name)
    if name == "load":
        from .loading import load

        return load
    raise AttributeError(f"module 'mmx_fast' has no attribute {name!r}")


__all__ = ["METHODS", "ExplainConfig", "Explainer", "Explanation", "explain_fast", "load", "__version__"]
