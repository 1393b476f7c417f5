"""When the Triton kernels can run: triton is installed and there is a CUDA device, or TRITON_INTERPRET=1 asks
for Triton's interpreter (any device; slow: for tests at small shapes)."""
from __future__ import annotations

import importlib.util
import os

import torch


def triton_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"
