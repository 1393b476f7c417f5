"""causal_conv1d (depthwise, left-padded) against torch's conv1d, and the single-step update against the full conv."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio.kernels import causal_conv1d, causal_conv1d_update

F64 = torch.float64


def rel_err(x, ref):
    x, ref = x.detach().to(F64), ref.detach().to(F64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    den = ref.norm()
    return float((x - ref).norm() / den) if den > 0 else float((x - ref).norm())


def reference(x, weight, bias, activation):
    channels, width = weight.shape
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight[:, None, :], bias, groups=channels)
    return F.silu(out) if activation == "silu" else out


@pytest.fixture(autouse=True)
def default_backend(monkeypatch):
    monkeypatch.delenv("MBA_SCAN_BACKEND", raising=False)


@pytest.mark.parametrize("length", [1, 3, 37])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_matches_conv1d_with_grads(width, with_bias, activation, length):
    batch, channels = 2, 5
    x = torch.randn(batch, channels, length, dtype=F64, requires_grad=True)
    weight = torch.randn(channels, width, dtype=F64, requires_grad=True)
    bias = torch.randn(channels, dtype=F64, requires_grad=True) if with_bias else None
    inputs = [t for t in (x, weight, bias) if t is not None]
    out = causal_conv1d(x, weight, bias, activation)
    ref = reference(x, weight, bias, activation)
    assert out.dtype == F64 and out.shape == (batch, channels, length)
    assert rel_err(out, ref) <= 1e-12
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((out * g).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * g).sum(), inputs)
    for name, a, b in zip(("x", "weight", "bias"), grads, ref_grads):
        assert rel_err(a, b) <= 1e-12, name


def test_is_causal():
    """Changing x at t0 leaves every output before t0 unchanged and changes the outputs t0 .. t0+W-1."""
    x = torch.randn(1, 3, 20, dtype=F64)
    weight = torch.randn(3, 4, dtype=F64)
    out = causal_conv1d(x, weight, None, "silu")
    x2 = x.clone()
    x2[..., 10] += 1.0
    out2 = causal_conv1d(x2, weight, None, "silu")
    assert torch.equal(out[..., :10], out2[..., :10])
    assert (out[..., 10:14] != out2[..., 10:14]).all()
    assert torch.equal(out[..., 14:], out2[..., 14:])


def test_gradcheck():
    x = torch.randn(1, 2, 6, dtype=F64, requires_grad=True)
    weight = torch.randn(2, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, activation="silu"), (x, weight, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduced_precision(dtype):
    x = torch.randn(2, 4, 33).to(dtype)
    weight, bias = torch.randn(4, 3), torch.randn(4)
    out = causal_conv1d(x, weight, bias, "silu")
    assert out.dtype == dtype
    ref = reference(x.double(), weight.double(), bias.double(), "silu")
    assert rel_err(out, ref) <= (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_update_stepping_equals_full_conv(width, with_bias, activation):
    batch, channels, length = 2, 5, 11
    x = torch.randn(batch, channels, length, dtype=F64)
    weight = torch.randn(channels, width, dtype=F64)
    bias = torch.randn(channels, dtype=F64) if with_bias else None
    state = torch.zeros(batch, channels, width, dtype=F64)
    ptr = state.data_ptr()
    outs = []
    for t in range(length):
        o = causal_conv1d_update(x[..., t], state, weight, bias, activation)
        assert o.shape == (batch, channels) and o.dtype == F64
        assert state.data_ptr() == ptr
        outs.append(o)
    assert rel_err(torch.stack(outs, -1), reference(x, weight, bias, activation)) <= 1e-12
    # the state holds the last `width` inputs, oldest first
    assert torch.equal(state, x[..., length - width:])


@pytest.mark.parametrize("width", [2, 4])
def test_update_continues_from_a_filled_state(width):
    """Starting from a state of earlier inputs equals the full conv over (history, new inputs)."""
    batch, channels = 2, 3
    history = torch.randn(batch, channels, width, dtype=F64)
    x = torch.randn(batch, channels, 6, dtype=F64)
    weight, bias = torch.randn(channels, width, dtype=F64), torch.randn(channels, dtype=F64)
    state = history.clone()
    outs = torch.stack([causal_conv1d_update(x[..., t], state, weight, bias, "silu") for t in range(6)], -1)
    full = reference(torch.cat([history, x], -1), weight, bias, "silu")[..., width:]
    assert rel_err(outs, full) <= 1e-12


def test_update_bf16_input_fp32_state():
    x = torch.randn(2, 4, 5)
    weight, bias = torch.randn(4, 3), torch.randn(4)
    state = torch.zeros(2, 4, 3)
    outs = torch.stack([causal_conv1d_update(x[..., t].bfloat16(), state, weight, bias, "silu")
                        for t in range(5)], -1)
    assert outs.dtype == torch.bfloat16 and state.dtype == torch.float32
    ref = reference(x.bfloat16().double(), weight.double(), bias.double(), "silu")
    assert rel_err(outs, ref) <= 1e-2


def test_invalid_arguments():
    x, weight = torch.randn(2, 4, 5), torch.randn(4, 3)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, weight, None, "relu")
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d(torch.randn(2, 3, 5), weight)
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d(torch.randn(4, 5), weight)
