"""One token through a whole Mamba block: the PyTorch definition against the model's layers, and the fused Triton
kernel against that definition in float64 (Triton's interpreter without a GPU). An inference-only op: no gradients."""
from __future__ import annotations

import copy

import pytest
import torch

from mamba_bio_audio.generation import InferenceCache
from mamba_bio_audio.kernels import mamba_block_step_naive
from mamba_bio_audio.kernels.selective_scan.triton_support import triton_available
from mamba_bio_audio.modules import Block
from mamba_bio_audio.modules.mamba import Mamba

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def block(d_model=16, d_state=5, d_conv=4, expand=2, bias=False, conv_bias=True, dtype=torch.float32, seed=0,
          complex_ssm=False):
    torch.manual_seed(seed)
    mixer = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, bias=bias, conv_bias=conv_bias, layer_idx=0,
                  complex_ssm=complex_ssm)
    layer = Block(d_model, mixer).to(dtype)
    with torch.no_grad():  # away from the initial values, so that every weight matters
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return layer


def step_args(layer: Block) -> tuple:
    m = layer.mixer
    return (layer.norm.weight, layer.norm.eps, m.in_proj.weight, m.conv1d.weight[:, 0], m.conv1d.bias, m.x_proj.weight,
            m.dt_proj.weight, m.dt_proj.bias, m.A_log, m.D, m.out_proj.weight)


def optional_args(layer: Block) -> dict:
    """The projections' biases, and A_imag for a complex SSM."""
    m = layer.mixer
    return dict(in_proj_bias=m.in_proj.bias, out_proj_bias=m.out_proj.bias, A_imag=m.A_imag if m.complex_ssm else None)


def random_states(layer: Block, batch: int, dtype=torch.float32):
    conv_state, ssm_state = layer.mixer.allocate_inference_cache(batch, dtype=dtype)
    conv_state.normal_()
    ssm_state.normal_()
    return conv_state, ssm_state


@pytest.mark.parametrize("complex_ssm", [False, True])
def test_the_definition_is_the_blocks_own_step_in_float64(complex_ssm):
    layer = block(dtype=torch.float64, bias=True, complex_ssm=complex_ssm)
    layer.residual_in_fp32 = False
    batch = 3
    cache = InferenceCache(batch, {0: random_states(layer, batch, torch.float64)})
    cache.seqlen_offset = 5  # a single token after the first goes through Mamba.step
    states = tuple(s.clone() for s in cache.states[0])
    hidden, residual = torch.randn(batch, 1, 16, dtype=torch.float64), torch.randn(batch, 1, 16, dtype=torch.float64)
    with torch.no_grad():
        out, res = layer(hidden, residual, cache=cache)
        ref_out, ref_res = mamba_block_step_naive(hidden[:, 0], residual[:, 0], *step_args(layer), *states,
                                                  **optional_args(layer), residual_in_fp32=False)
    torch.testing.assert_close(ref_out, out[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref_res, res[:, 0], rtol=1e-12, atol=1e-12)
    for new, ref in zip(states, cache.states[0]):
        torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)


def widened(state: torch.Tensor) -> torch.Tensor:
    return state.to(torch.complex128 if state.is_complex() else torch.float64)


def relative_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    """‖value − ref‖ / ‖ref‖ in float64 (complex128 for complex tensors)."""
    return ((widened(value) - ref).norm() / ref.norm()).item()


def fused_steps(layer, hidden_seq, residual_seq, conv_state, ssm_state):
    """The fused kernel over a few tokens in a row (states carried in place) → outputs and residuals per token."""
    from mamba_bio_audio.kernels.mamba_block_step.fused import mamba_block_step_kernel

    moved = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in step_args(layer)]
    extra = {k: None if v is None else v.to(DEVICE) for k, v in optional_args(layer).items()}
    conv_state, ssm_state = conv_state.to(DEVICE), ssm_state.to(DEVICE)
    outs = []
    for hidden, residual in zip(hidden_seq, residual_seq):
        outs.append(mamba_block_step_kernel(hidden.to(DEVICE), None if residual is None else residual.to(DEVICE),
                                           *moved, conv_state, ssm_state, **extra))
    return [(o.cpu(), r.cpu()) for o, r in outs], conv_state.cpu(), ssm_state.cpu()


triton_only = pytest.mark.skipif(not triton_available(), reason="needs triton (and CUDA or TRITON_INTERPRET=1)")


@triton_only
@pytest.mark.parametrize("batch,d_model,d_state,bias,first,complex_ssm", [
    (1, 16, 5, False, False, False),   # a batch of 1: one row per program; dt_rank 1, N padded to 16; one E tile
    (3, 16, 16, True, True, False),    # projection biases; the first block of a stage (no residual in)
    (19, 32, 4, False, False, False),  # two row blocks, the second mostly masked; d_inner 64 = two E tiles of shares
    (2, 24, 7, True, False, False),    # fp32 at a batch of 2: two rows per program; d_model not a power of two
                                       # (masked columns), d_inner 48: a partial E tile
    (17, 40, 3, True, False, False),   # out_proj fused over 3 E tiles, in two row blocks, with a bias
    (17, 136, 4, True, False, False),  # d_model > 128: out_proj as a product after the kernels (`_fuse_out`); E tiles
    (3, 16, 5, True, False, True),     # complex A: (Re, Im) halves of B and C in x_proj, N padded to 16
    (1, 24, 6, True, False, True),     # complex A at a batch of 1 (one row per program), d_inner 48: partial E tile
    (2, 16, 4, False, True, True),     # complex A at a batch of 2 (two rows per program, strided state)
    (1, 128, 4, False, False, True),   # complex A at a batch of 1 over 16 E tiles: shares read at once
    (1, 136, 3, True, False, False),   # a batch of 1 over 17 E tiles (of 32 loaded, masked), out_proj after the kernels
    (19, 32, 4, False, True, True),    # complex A over two row blocks and two E tiles of shares
    (17, 136, 3, True, False, True),   # complex A with out_proj after the kernels
])
def test_fused_step_matches_the_definition_in_float64(batch, d_model, d_state, bias, first, complex_ssm):
    torch.manual_seed(batch + d_model)
    layer = block(d_model=d_model, d_state=d_state, bias=bias, complex_ssm=complex_ssm)
    if complex_ssm:  # Im A away from its init (π·n, all channels alike), in the range training reaches
        with torch.no_grad():
            layer.mixer.A_imag.copy_(torch.randn_like(layer.mixer.A_imag) * 20)
    wide = copy.deepcopy(layer).double()
    conv_state, ssm_state = random_states(layer, batch)
    ref_conv, ref_ssm = conv_state.double(), widened(ssm_state)
    tokens = 3
    hidden_seq = [torch.randn(batch, d_model) for _ in range(tokens)]
    residual_seq = [None if first else torch.randn(batch, d_model) for _ in range(tokens)]
    with torch.no_grad():
        outs, conv_state, ssm_state = fused_steps(layer, hidden_seq, residual_seq, conv_state, ssm_state)
        for (out, res), hidden, residual in zip(outs, hidden_seq, residual_seq):
            ref_out, ref_res = mamba_block_step_naive(hidden.double(), None if residual is None else residual.double(),
                                                      *step_args(wide), ref_conv, ref_ssm, **optional_args(wide),
                                                      residual_in_fp32=False)
            assert out.dtype == torch.float32 and res.dtype == torch.float32
            assert relative_error(out, ref_out) < 2e-5  # ≤ 2.3e-6 measured (fp32 in the interpreter)
            torch.testing.assert_close(res.double(), ref_res, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(conv_state.double(), ref_conv, rtol=1e-5, atol=1e-5)
    assert relative_error(ssm_state, ref_ssm) < 2e-5


def test_the_e_tile_keeps_the_second_kernel_to_one_program_per_sm():
    """Up to d_model 128, tiles of 16 channels while row blocks × tiles ≤ SMs, else 32; above, 32 past one row block."""
    from mamba_bio_audio.kernels.mamba_block_step.fused import _block_e

    assert _block_e(64, 256, 128, 132) == 16    # 16 row blocks × 8 tiles = 128 programs
    assert _block_e(128, 128, 256, 132) == 16   # 8 × 16 = 128
    assert _block_e(128, 256, 256, 132) == 32   # 16 × 16 = 256 would be two waves
    assert _block_e(128, 256, 256, 264) == 16   # a GPU with twice the SMs
    assert _block_e(256, 16, 512, 132) == 16 and _block_e(256, 17, 512, 132) == 32


@triton_only
def test_a_16_bit_step_in_tiles_of_32_channels_matches_the_definition(monkeypatch):
    """fp16 weights in E tiles of 32 (`_block_e` takes them for more than one block of rows above d_model 128, and up
    to it where tiles of 16 need more programs than SMs; forced here at d_model 32) round where the model does: within
    0.2% of the same weights' step in float64 over 3 tokens, the states too."""
    from mamba_bio_audio.kernels.mamba_block_step import fused

    monkeypatch.setattr(fused, "_block_e", lambda block_dm, batch, d_inner, sms: 32)
    torch.manual_seed(5)
    layer = block(d_model=32, d_state=16, bias=True)
    half, wide = copy.deepcopy(layer).half(), copy.deepcopy(layer).half().double()
    conv_state, ssm_state = random_states(layer, 18)
    ref_conv, ref_ssm = conv_state.half().double(), ssm_state.double()
    hidden_seq = [torch.randn(18, 32).half() for _ in range(3)]
    residual_seq = [torch.randn(18, 32) for _ in range(3)]
    with torch.no_grad():
        outs, conv_state, ssm_state = fused_steps(half, hidden_seq, residual_seq, conv_state.half(), ssm_state)
        for (out, _), hidden, residual in zip(outs, hidden_seq, residual_seq):
            ref, _ = mamba_block_step_naive(hidden.double(), residual.double(), *step_args(wide), ref_conv, ref_ssm,
                                            **optional_args(wide))
            assert out.dtype == torch.float16
            assert ((out.double() - ref).norm() / ref.norm()).item() < 2e-3  # 6e-4 measured; D·x 2% off: 3e-3
    assert ((ssm_state.double() - ref_ssm).norm() / ref_ssm.norm()).item() < 2e-3


@triton_only
def test_a_wrong_shape_is_named():
    from mamba_bio_audio.kernels.mamba_block_step.fused import mamba_block_step_kernel

    layer = block()
    conv_state, ssm_state = random_states(layer, 2)
    with pytest.raises(ValueError, match=r"ssm_state has shape \(2, 32, 5\), expected \(3, 32, 5\)"):
        mamba_block_step_kernel(torch.randn(3, 16), None, *step_args(layer), torch.zeros(3, 32, 4), ssm_state)
    with pytest.raises(ValueError, match=r"x_proj_weight has shape"):
        args = list(step_args(layer))
        args[5] = args[5][:-1]
        mamba_block_step_kernel(torch.randn(2, 16), None, *args, conv_state, ssm_state)


@triton_only
def test_fp64_models_take_the_pytorch_step_and_a_state_that_does_not_match_a_imag_is_refused(monkeypatch):
    from mamba_bio_audio.kernels.mamba_block_step import fused

    launched = []
    kernel = fused.mamba_block_step_kernel
    monkeypatch.setattr(fused, "mamba_block_step_kernel", lambda *a, **k: launched.append(1) or kernel(*a, **k))
    layer = block(dtype=torch.float64)
    conv_state, ssm_state = random_states(layer, 2, torch.float64)
    ref_conv, ref_ssm = conv_state.clone(), ssm_state.clone()
    hidden = torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        out, _ = fused.mamba_block_step_fused(hidden, None, *step_args(layer), conv_state, ssm_state)
        ref, _ = mamba_block_step_naive(hidden, None, *step_args(layer), ref_conv, ref_ssm)
    assert torch.equal(out, ref) and torch.equal(ssm_state, ref_ssm) and not launched
    layer = block()
    conv_state, ssm_state = (s.to(DEVICE) for s in random_states(layer, 2))
    with torch.no_grad():  # fp32 takes the kernels
        fused.mamba_block_step_fused(torch.randn(2, 16, device=DEVICE), None,
                                     *[a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in step_args(layer)],
                                     conv_state, ssm_state)
    assert launched
    complex_layer = block(complex_ssm=True)
    conv_state, ssm_state = complex_layer.mixer.allocate_inference_cache(2)
    with pytest.raises(ValueError, match=r"a complex ssm_state \(torch.complex64\) needs A_imag"):
        fused.mamba_block_step_fused(torch.randn(2, 16), None, *step_args(complex_layer), conv_state, ssm_state)
    conv_state, ssm_state = layer.mixer.allocate_inference_cache(2)
    with pytest.raises(ValueError, match=r"a real ssm_state \(torch.float32\) takes no A_imag"):
        fused.mamba_block_step_fused(torch.randn(2, 16), None, *step_args(layer), conv_state, ssm_state,
                                     A_imag=complex_layer.mixer.A_imag)
    with pytest.raises(ValueError, match="ssm_state is torch.float32; the kernels take complex64 with A_imag"):
        fused.mamba_block_step_kernel(torch.randn(2, 16), None, *step_args(layer), conv_state, ssm_state,
                                      A_imag=complex_layer.mixer.A_imag)


@pytest.mark.parametrize("first,complex_ssm", [(False, False), (True, False), (False, True)])
def test_block_steps_through_mamba_block_step_with_the_same_result(monkeypatch, first, complex_ssm):
    """`Block.forward` hands a single recurrent step to `mamba_block_step` (on CUDA by default; forced here, so on the
    CPU it is the PyTorch definition): outputs, residual and both states equal the block's own step."""
    layer = block(bias=True, complex_ssm=complex_ssm)
    batch = 3
    hidden = torch.randn(batch, 1, 16, device=DEVICE)
    residual = None if first else torch.randn(batch, 1, 16, device=DEVICE)
    layer = layer.to(DEVICE)
    results = []
    for fused in (False, True):
        monkeypatch.setattr(Block, "_fused_step", lambda self, h: fused)
        torch.manual_seed(1)
        cache = InferenceCache(batch, {0: tuple(s.to(DEVICE) for s in random_states(layer, batch))})
        cache.seqlen_offset = 3
        with torch.no_grad():
            out, res = layer(hidden, residual, cache=cache)
        results.append((out, res, *cache.states[0]))
    for own, stepped in zip(*results):
        torch.testing.assert_close(stepped, own, rtol=2e-5, atol=2e-5)
