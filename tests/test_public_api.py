"""Issue 25: the public API is typed and documented. Every name in ``mmx_fast.__all__`` (and every public method
of its classes) has a docstring; ``method`` is a ``Literal`` of the presets; ``Explainer.from_pretrained`` is the
one-call entry."""

from __future__ import annotations

import inspect
import os
import typing

import pytest
import torch
from PIL import Image

import mmx_fast
from mmx_fast import METHODS, Explainer


def _public_callables():
    for name in mmx_fast.__all__:
        obj = getattr(mmx_fast, name)
        if inspect.isclass(obj):
            yield name, obj
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in ("__init__", "__repr__"):
                    continue
                fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                if inspect.isfunction(fn):
                    yield f"{name}.{attr}", fn
        elif callable(obj):
            yield name, obj


def test_every_public_function_has_a_docstring():
    seen = dict(_public_callables())
    assert {"explain_fast", "Explainer.explain", "Explainer.from_pretrained", "Explanation.upsampled"} <= set(
        seen
    )
    assert {"Explanation.plot", "Explainer.explain_batch", "load"} <= set(seen)
    missing = [n for n, f in seen.items() if not (inspect.getdoc(f) or "").strip()]
    assert missing == []


def test_public_signatures_are_typed():
    from mmx_fast.api_types import ConfigLike, ImageLike, MethodName

    assert set(typing.get_args(MethodName)) == set(METHODS)
    assert Image.Image in typing.get_args(ImageLike) and torch.Tensor in typing.get_args(ImageLike)
    assert os.PathLike in typing.get_args(ImageLike)
    for fn in (mmx_fast.explain_fast, Explainer.explain, Explainer.explain_batch, Explainer.__init__):
        hints = typing.get_type_hints(fn)
        params = [p for p in inspect.signature(fn).parameters if p not in ("self",)]
        assert set(params) <= set(hints), (fn.__qualname__, set(params) - set(hints))
    assert typing.get_type_hints(mmx_fast.explain_fast)["config"] == ConfigLike
    hints = typing.get_type_hints(mmx_fast.Explanation.to_html)
    assert hints["path"] == str | os.PathLike


def test_from_pretrained_loads_and_explains(tmp_path):
    ex = Explainer.from_pretrained("tiny:qwen2_vl", "logit-lens", device="cpu", dtype="float32")
    assert isinstance(ex, Explainer) and ex.config.method == "logit-lens"
    exp = ex.explain(Image.new("RGB", (56, 56), (200, 10, 10)), "What is it?", answer="A red square.")
    assert exp.maps.shape[0] == len(exp.answer_ids) > 0 and exp.random_weights
    with pytest.raises(ValueError, match="dtype"):
        Explainer.from_pretrained("tiny:qwen2_vl", dtype="float8")


def test_config_method_is_a_literal_of_the_presets():
    from mmx_fast import ExplainConfig

    hint = typing.get_type_hints(ExplainConfig)["method"]
    assert typing.get_origin(hint) is typing.Literal and set(typing.get_args(hint)) == set(METHODS)
