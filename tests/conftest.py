"""Shared test setup: a fresh, reproducible torch seed per test, and a thread cap under pytest-xdist."""
from __future__ import annotations

import os
import zlib

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter; this must be set before they are imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist every worker would otherwise start one intra-op thread per core: cap the total at the core count,
# in the workers and in the processes tests start (notebook kernels, DDP ranks, `mba` runs), which read the variables.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _workers > 1:
    _threads = max(1, (os.cpu_count() or 1) // _workers)
    torch.set_num_threads(_threads)
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_variable, str(_threads))


@pytest.fixture(autouse=True)
def seed_torch(request):
    """Seed torch from the test's node id: every test gets its own inputs, identical from run to run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed
