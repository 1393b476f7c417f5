"""The backend switch MBA_SCAN_BACKEND: which implementation each public function routes to."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio import kernels
from mamba_bio_audio.kernels.selective_scan.numba_cpu import numba_available
from mamba_bio_audio.kernels.selective_scan.triton_support import triton_available

if triton_available():
    from mamba_bio_audio.kernels.selective_scan.fused import selective_scan_fused
from mamba_bio_audio.kernels import (active_backend, available_backends, causal_conv1d, causal_conv1d_update,
                                     selective_scan, selective_scan_chunked, selective_scan_naive,
                                     selective_state_update)

ENV = "MBA_SCAN_BACKEND"


def scan_args(length=5):
    u = torch.randn(2, 4, length, dtype=torch.float64)
    return dict(u=u, delta=torch.rand_like(u), A=-torch.rand(4, 3, dtype=torch.float64),
                B=torch.randn(2, 3, length, dtype=torch.float64), C=torch.randn(2, 3, length, dtype=torch.float64),
                D=torch.randn(4, dtype=torch.float64), z=torch.randn_like(u))


def spy(monkeypatch, table, key):
    """Wrap table[key] so that calls are recorded (and still computed by the real function)."""
    calls = []
    real = table[key]

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setitem(table, key, wrapper)
    return calls


@pytest.fixture
def spies(monkeypatch):
    """A spy on every implementation of every op: spies[(op, backend)] is its list of calls."""
    tables = {"scan": kernels._SCAN, "state_update": kernels._STATE_UPDATE, "conv": kernels._CONV,
              "conv_update": kernels._CONV_UPDATE}
    return {(op, key): spy(monkeypatch, table, key) for op, table in tables.items() for key in list(table)}


def call_all_ops():
    args = scan_args()
    out = selective_scan(**args)
    state = torch.zeros(2, 4, 3, dtype=torch.float64)
    selective_state_update(state, args["u"][..., 0], args["delta"][..., 0], args["A"], args["B"][..., 0],
                           args["C"][..., 0])
    causal_conv1d(args["u"], torch.randn(4, 3, dtype=torch.float64))
    causal_conv1d_update(args["u"][..., 0], torch.zeros(2, 4, 3, dtype=torch.float64),
                         torch.randn(4, 3, dtype=torch.float64))
    return args, out


CPU_DEFAULT = "numba" if numba_available() else "torch"


def test_available_backends():
    expected = {"naive", "torch"} | ({"numba"} if numba_available() else set())
    assert set(available_backends()) == expected | ({"triton"} if triton_available() else set())


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_numba_routes_to_the_compiled_scan(monkeypatch, spies):
    monkeypatch.setenv(ENV, "numba")
    assert active_backend() == "numba"
    args, out = call_all_ops()
    assert len(spies[("scan", "numba")]) == 1 and len(spies[("scan", "torch")]) == 0
    assert torch.allclose(out, selective_scan_naive(**args), rtol=1e-9, atol=1e-12)


def test_cpu_default_without_numba_is_torch(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delitem(kernels._SCAN, "numba", raising=False)
    assert active_backend("cpu") == "torch"


@pytest.mark.parametrize("value", ["naive", "NAIVE", " naive "])
def test_naive_routes_to_naive(value, monkeypatch, spies):
    monkeypatch.setenv(ENV, value)
    assert active_backend() == "naive"
    args, out = call_all_ops()
    for op in ("scan", "state_update", "conv", "conv_update"):
        assert len(spies[(op, "naive")]) == 1, op
        assert len(spies[(op, "torch")]) == 0, op
    assert torch.equal(out, selective_scan_naive(**args))


@pytest.mark.parametrize("value", ["torch", "Torch"])
def test_torch_routes_to_chunked(value, monkeypatch, spies):
    monkeypatch.setenv(ENV, value)
    assert active_backend() == "torch"
    args, out = call_all_ops()
    for op in ("scan", "state_update", "conv", "conv_update"):
        assert len(spies[(op, "torch")]) == 1, op
        assert len(spies[(op, "naive")]) == 0, op
    assert torch.equal(out, selective_scan_chunked(**args))


def test_torch_backend_is_the_chunked_implementation():
    assert kernels._SCAN["torch"] is selective_scan_chunked
    assert kernels._SCAN["naive"] is selective_scan_naive


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_on_cpu_uses_the_cpu_default(value, monkeypatch, spies):
    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    assert active_backend() == CPU_DEFAULT
    assert active_backend("cpu") == CPU_DEFAULT
    assert active_backend(torch.device("cpu")) == CPU_DEFAULT
    call_all_ops()
    assert len(spies[("scan", CPU_DEFAULT)]) == 1 and len(spies[("scan", "naive")]) == 0


def test_unset_on_cuda_without_triton_uses_torch(monkeypatch):
    """Without a triton backend registered, CUDA tensors fall back to torch (no tensor needed to ask)."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delitem(kernels._SCAN, "triton", raising=False)
    assert active_backend("cuda") == "torch"


@pytest.mark.skipif(not triton_available(), reason="needs triton (and CUDA or TRITON_INTERPRET=1)")
def test_unset_on_cuda_with_triton_uses_triton(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert kernels._SCAN["triton"] is selective_scan_fused
    assert active_backend("cuda") == "triton"


def test_forced_backend_overrides_device(monkeypatch):
    monkeypatch.setenv(ENV, "naive")
    assert active_backend("cuda") == "naive"


@pytest.mark.parametrize("value", ["cuda", "fast", "naiv", "torch2"])
def test_unknown_backend_raises_value_error_naming_variable(value, monkeypatch):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV) as info:
        active_backend()
    assert value in str(info.value)
    for fn in (lambda: selective_scan(**scan_args()),
               lambda: causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2))):
        with pytest.raises(ValueError, match=ENV):
            fn()


def test_triton_unavailable_raises_runtime_error(monkeypatch):
    monkeypatch.setenv(ENV, "triton")
    for table in (kernels._SCAN, kernels._STATE_UPDATE, kernels._CONV, kernels._CONV_UPDATE):
        monkeypatch.delitem(table, "triton", raising=False)
    assert "triton" not in available_backends()
    with pytest.raises(RuntimeError, match=ENV) as info:
        active_backend()
    message = str(info.value)
    assert "triton" in message and "not available" in message
    assert not isinstance(info.value, ValueError)
    args = scan_args()
    state = torch.zeros(2, 4, 3, dtype=torch.float64)
    calls = [
        lambda: selective_scan(**args),
        lambda: selective_state_update(state, args["u"][..., 0], args["delta"][..., 0], args["A"],
                                       args["B"][..., 0], args["C"][..., 0]),
        lambda: causal_conv1d(args["u"], torch.randn(4, 3, dtype=torch.float64)),
        lambda: causal_conv1d_update(args["u"][..., 0], torch.zeros(2, 4, 3, dtype=torch.float64),
                                     torch.randn(4, 3, dtype=torch.float64)),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="triton"):
            call()


def test_backend_read_per_call(monkeypatch, spies):
    """The variable is read at every call, not once at import."""
    monkeypatch.setenv(ENV, "naive")
    selective_scan(**scan_args())
    monkeypatch.setenv(ENV, "torch")
    selective_scan(**scan_args())
    assert len(spies[("scan", "naive")]) == 1 and len(spies[("scan", "torch")]) == 1


def test_backends_agree(monkeypatch):
    args = scan_args(37)
    results = {}
    for name in ("naive", "torch"):
        monkeypatch.setenv(ENV, name)
        results[name] = selective_scan(**args, delta_softplus=True, return_last_state=True)
    for a, b in zip(results["naive"], results["torch"]):
        assert ((a - b).norm() / b.norm()) <= 1e-12
