"""The transformers internals mmx_fast overrides or sets still exist in the installed release.

pyproject's upper bound on transformers is the newest minor release the suite passed on, because these are
private: a release that drops one must fail here, naming the release and the hook, before it breaks a user.
CI's drift jobs (.ci/drift newest|lowest) run this file under the newest and the lowest allowed versions.
"""

from __future__ import annotations

import inspect

import pytest
import transformers
from transformers import PretrainedConfig, ProcessorMixin

# name -> where mmx_fast relies on it
PROCESSOR_HOOKS = {
    "check_argument_for_proper_class": "processors.accept_missing_video_processor overrides it (no video processor)",
    "get_attributes": "processors.accept_missing_video_processor overrides it while saving",
    "save_pretrained": "processors.accept_missing_video_processor wraps it",
    "get_processor_dict": "processors.processor_without_video reads the saved processor settings",
    "from_dict": "processors.processor_without_video builds the processor (from_args_and_dict is deprecated)",
}


@pytest.mark.parametrize("name", sorted(PROCESSOR_HOOKS))
def test_processor_hooks_exist(name):
    hook = getattr(ProcessorMixin, name, None)
    assert callable(hook), (
        f"transformers {transformers.__version__} has no ProcessorMixin.{name}, which mmx_fast relies on "
        f"({PROCESSOR_HOOKS[name]}); pyproject's range for transformers must exclude {transformers.__version__}"
    )


def test_processor_hook_signatures():
    v = transformers.__version__
    params = inspect.signature(ProcessorMixin.check_argument_for_proper_class).parameters
    assert list(params)[:3] == ["self", "argument_name", "argument"], (v, list(params))
    assert isinstance(inspect.getattr_static(ProcessorMixin, "get_attributes"), classmethod), v
    assert isinstance(inspect.getattr_static(ProcessorMixin, "from_dict"), classmethod), v


def test_config_attn_implementation_is_settable():
    """mmx_fast.testing sets ``config._attn_implementation`` on tiny configs."""
    cfg = PretrainedConfig()
    cfg._attn_implementation = "eager"
    assert cfg._attn_implementation == "eager", transformers.__version__
