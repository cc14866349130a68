import os

import torch

# Triton kernels can only run on CPU through the interpreter, and it must be switched on before any
# @triton.jit decorator runs, i.e. before mmx_fast.kernels is imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
