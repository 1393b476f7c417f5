"""Shared test setup: a fresh, reproducible torch seed per test, and a thread cap under pytest-xdist."""
from __future__ import annotations

import os
import zlib

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter; this must be set before they are imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist every worker would otherwise start one intra-op thread per core: cap the total at the core count.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(autouse=True)
def seed_torch(request):
    """Seed torch from the test's node id: every test gets its own inputs, identical from run to run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed
