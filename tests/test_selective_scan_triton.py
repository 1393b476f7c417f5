"""The fused Triton scan (real and complex A) against the token-by-token loop in float64: output, last state, every
gradient.

Without a GPU this runs in Triton's interpreter (set up in conftest), at small shapes. Reuses the case generator
and comparison of test_selective_scan."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.kernels.selective_scan.triton_support import triton_available
from test_selective_scan import BC_KINDS, TOL, check_against_naive, full_extras, make_case

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton (and CUDA or TRITON_INTERPRET=1)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fused(**kw):
    from mamba_bio_audio.kernels.selective_scan.fused import selective_scan_fused

    on_device = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    out = selective_scan_fused(**on_device)
    if isinstance(out, tuple):
        return tuple(o.cpu() for o in out)
    return out.cpu()




@pytest.mark.parametrize("bc", list(BC_KINDS))
@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("extras", ["bare", "full"])
def test_fused_fp32_matches_naive(bc, regime, extras):
    opts = full_extras() if extras == "full" else {}
    case = make_case(length=45, regime=regime, bc=bc, dtype=torch.float32, **opts)
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("length", [1, 8, 33])
def test_fused_odd_lengths_and_single_options(length):
    for opts in ({"z": True}, {"D": True}, {"bias": True, "softplus": True}, {"init": True}):
        case = make_case(length=length, regime="small", bc="grouped", dtype=torch.float32, **opts)
        check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 32 tokens, L split into 3 chunks: several tiles and chunks per call at test sizes (sequence
    parallelism: summaries, folding, carries across tiles and chunks)."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (32, 1), "bwd": (32, 1)})
    monkeypatch.setenv("MBA_SCAN_CHUNKS", "3")


@pytest.mark.parametrize("bc", list(BC_KINDS))
@pytest.mark.parametrize("regime", ["small", "steep"])
def test_fused_chunked_sequence_matches_naive(small_tiles, bc, regime):
    case = make_case(length=90, regime=regime, bc=bc, dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("length", [1, 17, 70])
def test_fused_chunked_sequence_bare_and_short(small_tiles, length):
    case = make_case(length=length, regime="small", bc="grouped", dtype=torch.float32)
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


def test_fused_chunk_count_does_not_change_the_result(monkeypatch):
    """Sequence parallelism changes the order of operations only: 1 chunk and 4 chunks agree to rounding."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (32, 1), "bwd": (32, 1)})
    case = make_case(length=128, regime="small", bc="var", dtype=torch.float32, **full_extras())
    results = []
    for chunks in ("1", "4"):
        monkeypatch.setenv("MBA_SCAN_CHUNKS", chunks)
        results.append(fused(**case, return_last_state=True))
    for one, four in zip(results[0], results[1]):
        assert (one - four).norm() <= 1e-5 * one.norm()


@pytest.mark.parametrize("chunks", ["1", "2"])
def test_fused_backward_tiles_inside_the_forward_tiles(monkeypatch, chunks):
    """Forward tiles of 64 tokens, backward tiles of 32: the forward saves two states per tile; L = 90 leaves the
    last forward tile half padding (its second save falls past the end and must not be written) and, split, the
    chunk boundaries of the passes differ."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (64, 1), "bwd": (32, 1)})
    monkeypatch.setenv("MBA_SCAN_CHUNKS", chunks)
    monkeypatch.setenv("MBA_SCAN_ROWS", "0")
    for length in (90, 128):
        case = make_case(length=length, regime="small", bc="var", dtype=torch.float32, **full_extras())
        check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_fused_gradient_through_the_last_state_only(complex_a):
    """loss = f(last state), the output unused: autograd gives the backward no output gradient (None), which must
    count as zeros; batch 1 in one chunk, where the per-channel gradients are views instead of sums over rows."""
    case = make_case(batch=1, length=37, regime="small", bc="var_const", complex_a=complex_a, dtype=torch.float32,
                     **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, out_grad=False, state_grad=True, fn=fused)
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


def test_fused_last_state_is_the_callers_own():
    """The last state returned with return_last_state is a copy: changing it in place (a streaming caller may) leaves
    the backward, which reads the saved states it came from, unaffected. Without return_last_state the Function
    keeps a view of them (no copy kernel at short L)."""
    from mamba_bio_audio.kernels.selective_scan.fused import selective_scan_fused

    case = make_case(batch=1, length=37, regime="small", bc="var", dtype=torch.float32, **full_extras())
    leaves = {k: (v.to(DEVICE).requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    out, last = selective_scan_fused(**leaves, return_last_state=True)
    reference = torch.autograd.grad(out.sum(), leaves["u"], retain_graph=True)[0]
    last.mul_(0.0)
    assert torch.equal(torch.autograd.grad(out.sum(), leaves["u"])[0], reference)


@pytest.mark.parametrize("bc", ["grouped", "var_const"])
def test_fused_blocked_reverse_scan_matches_naive(monkeypatch, bc):
    """The backward's blocked reverse scan: all options in the steep regime on one tile of 64 tokens (8 segments of
    8), then L split into 3 chunks of 32-token tiles."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    case = make_case(length=45, regime="steep", bc=bc, dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)
    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (32, 1), "bwd": (32, 1)})
    monkeypatch.setenv("MBA_SCAN_CHUNKS", "3")
    case = make_case(length=90, regime="small", bc=bc, dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("chunks", ["1", "3"])
@pytest.mark.parametrize("bc", ["grouped", "var_const"])
def test_fused_backward_two_channels_per_program_matches_naive(monkeypatch, bc, chunks):
    """The backward in [2 channels, tokens] tiles (dB and dC summed over the two before their atomic adds; constant
    B or C per channel), over tiles of 16 tokens, L = 90 whole or split into 3 chunks, all options, steep decays."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (32, 1), "bwd": (32, 1)})
    monkeypatch.setenv("MBA_SCAN_BWD_CHANNELS", "2")
    monkeypatch.setenv("MBA_SCAN_CHUNKS", chunks)
    case = make_case(length=90, regime="steep", bc=bc, dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("bc", list(BC_KINDS))
@pytest.mark.parametrize("states", ["1", "2"])
@pytest.mark.parametrize("chunks", ["1", "3"])
def test_fused_forward_one_or_two_states_per_scan_matches_naive(monkeypatch, bc, states, chunks):
    """The forward's scan over 1 or 2 states at once ([states, tokens] tiles, one set of shuffles and barriers), N = 6,
    L = 90 whole or split into 3 chunks, all options, steep decays; one state in tiles of 64 tokens, two in tiles of
    32 (half the tokens: the backward's tiles of 32 still divide them)."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (64, 2), "bwd": (32, 1)})
    monkeypatch.setenv("MBA_SCAN_FWD_STATES", states)
    monkeypatch.setenv("MBA_SCAN_CHUNKS", chunks)
    case = make_case(n=6, length=90, regime="steep", bc=bc, dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("channels", ["1", "2"])
def test_fused_summaries_carry_several_tiles_per_chunk(monkeypatch, channels):
    """The summary passes (L split) over chunks of several tiles, each thread holding several tokens: the forward's
    and the 2-channel backward's per-thread sums decay from tile to tile (`_carry_sums`), the 1-channel backward
    updates its carry per tile. Forward tiles of 256 tokens on 2 warps, backward tiles of 256 (128 for 2 channels):
    4 fp32 tokens per thread; L = 1100 in 2 chunks of 3 forward and 3 or 5 backward tiles; N = 3, so the summaries'
    fourth state (BLOCK_N = 4) must not reach memory."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (256, 2), "bwd": (256, 1)})
    monkeypatch.setenv("MBA_SCAN_ROWS", "0")
    monkeypatch.setenv("MBA_SCAN_BWD_CHANNELS", channels)
    monkeypatch.setenv("MBA_SCAN_CHUNKS", "2")
    case = make_case(length=1100, regime="small", bc="var", dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


def test_forward_states_per_scan_and_register_cap_follow_the_h100_measurements(monkeypatch):
    """2 states per scan capped at 128 registers wherever N is even (faster at every configuration timed on an
    H100); N odd: 1 state, uncapped up to 5 programs per SM, capped at 64 up to 8, at 80 beyond;
    MBA_SCAN_FWD_STATES forces the count where N allows it. The caps apply on a GPU only."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.delenv("MBA_SCAN_FWD_STATES", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(fused_module, "sm_count", lambda device: 132)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    for programs in (512, 1024, 4 * 1536):
        assert fused_module._fwd_shape(programs, 16, gpu) == (2, {"maxnreg": 128})
    assert fused_module._fwd_shape(512, 15, gpu) == (1, {})
    assert fused_module._fwd_shape(1024, 15, gpu) == (1, {"maxnreg": 64})
    assert fused_module._fwd_shape(4 * 1536, 15, gpu) == (1, {"maxnreg": 80})
    assert fused_module._fwd_shape(1024, 16, cpu) == (2, {})
    monkeypatch.setenv("MBA_SCAN_FWD_STATES", "1")
    assert fused_module._fwd_shape(1024, 16, gpu) == (1, {"maxnreg": 64})
    monkeypatch.setenv("MBA_SCAN_FWD_STATES", "2")
    assert fused_module._fwd_shape(4 * 1536, 15, gpu) == (1, {"maxnreg": 80})


def test_chunks_of_l_stay_within_the_programs_per_sm_target(monkeypatch):
    """Below 3 programs per SM L is split into as many chunks as keep the programs within 16 per SM of an H100's 132
    SMs (the backward's waves: 9 chunks of 256 programs ran in three, 8 in two; BENCHMARKS.md), 32 for the backward
    (4 waves), into at most half the tiles; MBA_SCAN_CHUNKS forces the count."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module
    from mamba_bio_audio.kernels.selective_scan.triton_tiles import split_tiles

    cpu = torch.device("cpu")  # counted as 132 SMs
    monkeypatch.delenv("MBA_SCAN_CHUNKS", raising=False)
    assert split_tiles(256, 2048, cpu) == (256, 8)
    assert split_tiles(128, 2048, cpu) == (128, 16)
    assert split_tiles(512, 2048, cpu) == (2048, 1)
    assert split_tiles(128, 10, cpu) == (2, 5)
    # the backward's own target, 32 per SM (BWD_PROGRAMS_PER_SM): 33 chunks of 128 two-channel programs at 1 × 256
    assert split_tiles(128, 4096, cpu, per_sm=32) == (125, 33)
    assert fused_module._plan("bwd", 1, 256, 2 ** 20, cpu, channels=2)[3:] == (125, 33)
    assert fused_module._plan("fwd", 1, 256, 2 ** 20, cpu)[3:] == (128, 8)
    monkeypatch.setenv("MBA_SCAN_CHUNKS", "9")
    assert split_tiles(256, 2048, cpu) == (228, 9)


def test_backward_channels_per_program_follow_the_h100_measurements(monkeypatch):
    """2 channels per backward program where B and C vary, the group's channels are even and half as many programs
    still fill the GPU (8 × 2048 and 4 × 1536 on an H100's 132 SMs) or, behind the rows forward, are so few that L is
    split (1 × 256), else 1 (1 × 1024: too few warps; 1 × 512 behind `fused`; BENCHMARKS.md); MBA_SCAN_BWD_CHANNELS
    forces a count that divides the group."""
    from mamba_bio_audio.kernels.selective_scan.fused import bwd_channels

    cpu = torch.device("cpu")  # counted as 132 SMs
    var, const = torch.zeros(1, 1, 16, 8), torch.zeros(4, 16)
    monkeypatch.delenv("MBA_SCAN_BWD_CHANNELS", raising=False)
    assert bwd_channels(8, 2048, 1, var, var, cpu) == 2
    assert bwd_channels(4, 1536, 1, var, var, cpu) == 2
    assert bwd_channels(1, 1024, 1, var, var, cpu) == 1
    assert bwd_channels(1, 1024, 1, var, var, cpu, rows_forward=True) == 1  # 512 programs: L not split
    assert bwd_channels(1, 256, 1, var, var, cpu, rows_forward=True) == 2
    assert bwd_channels(1, 256, 1, var, var, cpu) == 1
    assert bwd_channels(8, 2048, 1, const, var, cpu) == 1
    assert bwd_channels(8, 2049, 1, var, var, cpu) == 1
    monkeypatch.setenv("MBA_SCAN_BWD_CHANNELS", "4")
    assert bwd_channels(1, 12, 2, var, var, cpu) == 2


@pytest.fixture
def rows_forward(monkeypatch):
    """The rows forward forced (the backward of `fused` after it), the backward's tiles of 32 tokens so that the rows
    kernel saves states every 2 tiles and splits L into 3 chunks at length 90."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (32, 1), "bwd": (32, 1)})
    monkeypatch.setenv("MBA_SCAN_ROWS", "1")


@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("extras", ["bare", "full"])
def test_rows_forward_matches_naive(rows_forward, regime, extras):
    opts = full_extras() if extras == "full" else {}
    case = make_case(length=90, regime=regime, bc="var", dtype=torch.float32, **opts)
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


def test_rows_forward_with_more_states_than_a_carry_tile(rows_forward):
    """17 states: the last one is carried in the second [BLOCK_D, Q] tile."""
    case = make_case(length=40, n=17, regime="small", bc="var", dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("length", [1, 17])
def test_rows_forward_short_lengths(rows_forward, length):
    for opts in ({"z": True}, {"init": True}, {"bias": True, "softplus": True, "D": True}):
        case = make_case(length=length, regime="small", bc="var", dtype=torch.float32, **opts)
        check_against_naive(case, TOL[torch.float32], 16, fn=fused)


def test_rows_forward_bf16_and_the_same_states_as_fused(monkeypatch):
    """bf16 inputs; and the rows forward leaves the backward the same tile-start states as `fused` (so gradients and
    the last state agree to rounding whichever forward ran)."""
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module

    monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (64, 1), "bwd": (64, 1)})
    case = make_case(length=100, n=4, regime="small", bc="var", dtype=torch.bfloat16, **full_extras())
    monkeypatch.setenv("MBA_SCAN_ROWS", "1")
    check_against_naive(case, TOL[torch.bfloat16], 16, fn=fused)
    case32 = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in case.items()}
    results = []
    for rows in ("1", "0"):
        monkeypatch.setenv("MBA_SCAN_ROWS", rows)
        results.append(fused(**case32, return_last_state=True))
    for by_rows, by_fused in zip(*results):
        assert (by_rows - by_fused).norm() <= 1e-5 * by_fused.norm()


def test_forward_choice_follows_the_h100_sweep(monkeypatch):
    """The rows forward where it was faster on an H100 (BENCHMARKS.md), `fused` elsewhere and for B/C it does not
    handle; MBA_SCAN_ROWS forces it."""
    from mamba_bio_audio.kernels.selective_scan.fused import forward_kind

    monkeypatch.delenv("MBA_SCAN_ROWS", raising=False)
    cpu = torch.device("cpu")  # counted as an H100's 132 SMs

    def kind(batch, dim, L, B_shape=None, backward=False):
        B = torch.empty(B_shape or (batch, 1, 16, 1))
        return forward_kind(batch, dim, L, B, B, 16, cpu, backward)

    assert kind(8, 2048, 8192) == "rows" and kind(1, 256, 2 ** 20) == "rows"
    assert kind(1, 1024, 2 ** 15) == "fused" and kind(4, 1536, 2 ** 16) == "fused"
    assert kind(8, 2048, 512) == "fused"                                       # shorter than a backward tile
    # where only the backward of 2 channels per program splits L: rows when a backward follows
    assert kind(1, 512, 2 ** 20) == "fused" and kind(1, 512, 2 ** 20, backward=True) == "rows"
    assert kind(1, 1024, 2 ** 19, backward=True) == "fused" and kind(1, 511, 2 ** 20, backward=True) == "fused"
    assert kind(8, 2048, 8192, (8, 2, 16, 1)) == "fused"                      # two groups
    assert kind(8, 2048, 8192, (2048, 16)) == "fused"                         # constant B, C
    monkeypatch.setenv("MBA_SCAN_ROWS", "0")
    assert kind(8, 2048, 8192) == "fused"
    monkeypatch.setenv("MBA_SCAN_ROWS", "1")
    assert kind(1, 1024, 2 ** 15) == "rows"


def test_fused_bf16_inputs():
    case = make_case(length=40, regime="small", bc="var", dtype=torch.bfloat16, **full_extras())
    out, h = fused(**case, return_last_state=True)
    assert out.dtype == torch.bfloat16 and h.dtype == torch.float32
    check_against_naive(case, TOL[torch.bfloat16], 16, fn=fused)


@pytest.fixture
def small_complex_tiles(monkeypatch):
    """Tiles of 32 tokens on one warp for the complex-A kernels: several tiles (and the carries between them) at test
    lengths, 4 segments of 8 in the blocked reverse scan."""
    from mamba_bio_audio.kernels.selective_scan import fused_complex

    monkeypatch.setattr(fused_complex, "SHAPES", {"fwd": (32, 1), "bwd": (32, 1)})


@pytest.mark.parametrize("bc", ["var", "grouped", "const", "var_const"])
@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("extras", ["bare", "full"])
def test_fused_complex_A_matches_naive(small_complex_tiles, bc, regime, extras):
    """Three tiles, the last one partial."""
    opts = full_extras() if extras == "full" else {}
    case = make_case(length=70, regime=regime, bc=bc, complex_a=True, dtype=torch.float32, **opts)
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("bc", ["var", "const"])
@pytest.mark.parametrize("regime", ["small", "steep"])
def test_fused_complex_A_chunked_sequence_matches_naive(small_complex_tiles, monkeypatch, bc, regime):
    """L split into 3 chunks of one or two tiles: the summaries of both passes, their folding, the carries across
    chunks, per-chunk parameter gradients."""
    monkeypatch.setenv("MBA_SCAN_CHUNKS", "3")
    case = make_case(length=150, regime=regime, bc=bc, complex_a=True, dtype=torch.float32, **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


@pytest.mark.parametrize("length", [1, 33, 600])
def test_fused_complex_A_with_real_B_C(length):
    """The default tiles: one short one, and at 600 tokens two of 512."""
    case = make_case(length=length, regime="small", bc="var", complex_a=True, real_bc=True, dtype=torch.float32,
                     **full_extras())
    check_against_naive(case, TOL[torch.float32], 16, fn=fused)


def test_fused_fp16_inputs():
    case = make_case(length=40, regime="small", bc="grouped", dtype=torch.float16, **full_extras())
    out, h = fused(**case, return_last_state=True)
    assert out.dtype == torch.float16 and h.dtype == torch.float32
    check_against_naive(case, TOL[torch.bfloat16], 16, fn=fused)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2 ** 30,
                    reason="needs a GPU with 40 GiB")
@pytest.mark.parametrize("channels", ["1", "2"])
@pytest.mark.parametrize("rows", ["0", "1"])
def test_fused_offsets_past_2_31(monkeypatch, rows, channels):
    """batch·dim·L = 2^31 (and ·N far beyond): the last channels live past 2^31 elements. Channels are independent
    (B and C shared), so they must match the same channels scanned on their own, forward and backward; with either
    forward (`fused`, rows) forced, the backward's channels per program and `fused`'s states per scan forced, and L
    never split (the same arithmetic for 8 channels as for 2048)."""
    from mamba_bio_audio.kernels.selective_scan import fused_rows
    from mamba_bio_audio.kernels.selective_scan.fused import selective_scan_fused

    monkeypatch.setenv("MBA_SCAN_ROWS", rows)
    monkeypatch.setenv("MBA_SCAN_CHUNKS", "1")
    monkeypatch.setenv("MBA_SCAN_BWD_CHANNELS", channels)
    monkeypatch.setenv("MBA_SCAN_FWD_STATES", channels)  # the forward's states per scan, 1 or 2, forced the same way
    monkeypatch.setattr(fused_rows, "SPLIT_TARGET_THREADS", 0)
    g = torch.Generator(device="cuda").manual_seed(0)
    dim, length, n = 2048, 2 ** 20, 16
    bf = dict(device="cuda", dtype=torch.bfloat16)
    u = torch.randn(1, dim, length, generator=g, **bf)
    delta = torch.randn(1, dim, length, generator=g, **bf)
    A = -torch.rand(dim, n, device="cuda", generator=g) * n
    B = torch.randn(1, n, length, generator=g, **bf)
    C = torch.randn(1, n, length, generator=g, **bf)
    bias = torch.full((dim,), -4.0, device="cuda")
    tail = slice(dim - 8, dim)
    u_tail = u[:, tail].clone().requires_grad_()
    out_tail, h_tail = selective_scan_fused(u_tail, delta[:, tail].clone(), A[tail], B, C, delta_bias=bias[tail],
                                            delta_softplus=True, return_last_state=True)
    u.requires_grad_()
    out, h = selective_scan_fused(u, delta, A, B, C, delta_bias=bias, delta_softplus=True, return_last_state=True)
    assert torch.equal(out[:, tail], out_tail) and torch.equal(h[:, tail], h_tail)
    weight = torch.randn(1, 8, length, generator=g, device="cuda")
    (out[:, tail].float() * weight).sum().backward()
    (out_tail.float() * weight).sum().backward()
    assert torch.equal(u.grad[:, tail], u_tail.grad)
    assert u.grad[:, : dim - 8].abs().max() == 0


def test_fused_inference_keeps_nothing_for_backward():
    """Without autograd the forward skips the pre-gate output it keeps for dz; the output is the same."""
    case = make_case(length=40, regime="small", bc="var", dtype=torch.float32, **full_extras())
    with torch.no_grad():
        inference = fused(**case)
    training = fused(**{k: (v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in case.items()})
    assert training.requires_grad and torch.equal(inference, training.detach())


@pytest.mark.parametrize("forward", ["fused", "rows"])
def test_host_time_stubs_the_launches_it_says_it_stubs(monkeypatch, forward):
    """`bench.host_time` (make bench's host table): four figures; with the launches stubbed no kernel runs, so only the
    first two phases launch (2 warm-up and 2 timed calls each: one forward launch per forward, and one backward launch
    per fwd+bwd), whichever forward runs, and the counters are back in place afterwards."""
    from mamba_bio_audio.kernels import bench
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module
    from mamba_bio_audio.kernels.selective_scan import fused_rows

    launches = {"fused": 0, "rows": 0}
    counters = {}
    for name, module in (("fused", fused_module), ("rows", fused_rows)):
        def counter(*a, _name=name, _real=module.launch_passes, **k):
            launches[_name] += 1
            return _real(*a, **k)
        counters[name] = counter
        monkeypatch.setattr(module, "launch_passes", counter)
    if forward == "rows":  # as the rows tests force it: one group, the backward's tiles of 32 tokens
        monkeypatch.setattr(fused_module, "SHAPES", {"fwd": (32, 1), "bwd": (32, 1)})
        monkeypatch.setenv("MBA_SCAN_ROWS", "1")
    case = make_case(batch=1, length=40, regime="small", bc="var", groups=1 if forward == "rows" else 2,
                     dtype=torch.float32, z=True, D=True, bias=True)
    inputs = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in case.items()
              if k not in ("delta_softplus", "initial_state")}
    times = bench.host_time(fused_module.selective_scan_fused, inputs, calls=2)
    assert set(times) == {"fwd", "fwd_bwd", "fwd_no_launch", "fwd_bwd_no_launch"}
    assert all(0 < t < float("inf") for t in times.values())
    forward_launches = 4 + 4  # the forwards of the fwd phase and of the fwd+bwd phase
    assert launches == ({"fused": forward_launches + 4, "rows": 0} if forward == "fused"
                        else {"fused": 4, "rows": forward_launches})
    assert fused_module.launch_passes is counters["fused"] and fused_rows.launch_passes is counters["rows"]


if triton_available():
    import triton
    import triton.language as tl

    from mamba_bio_audio.kernels.selective_scan.triton_tiles import _cos_sin, _sigmoid, _softplus

    @triton.jit
    def _softplus_and_sigmoid(x_ptr, softplus_ptr, sigmoid_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
        tl.store(softplus_ptr + offs, _softplus(x), mask=offs < n)
        tl.store(sigmoid_ptr + offs, _sigmoid(x), mask=offs < n)

    @triton.jit
    def _cos_sin_kernel(x_ptr, cos_ptr, sin_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cos, sin = _cos_sin(tl.load(x_ptr + offs, mask=offs < n, other=0.0))
        tl.store(cos_ptr + offs, cos, mask=offs < n)
        tl.store(sin_ptr + offs, sin, mask=offs < n)


def test_softplus_and_sigmoid_match_float64_at_every_magnitude():
    """The kernels' Δ = softplus(raw) and z gate (`_softplus`, `_sigmoid`: exp2, a reciprocal and a series) against
    float64 on x from −80 to 80: relative error below 1e-5 everywhere (fp32 log(1 + exp(x)) has none left below
    x ≈ −17, where Δ is still a valid, tiny step)."""
    x = torch.cat([torch.linspace(-80, 80, 4001), torch.randn(999) * 5]).to(DEVICE)
    softplus, sigmoid = torch.empty_like(x), torch.empty_like(x)
    _softplus_and_sigmoid[(triton.cdiv(x.numel(), 1024),)](x, softplus, sigmoid, x.numel(), BLOCK=1024)
    x64 = x.double()
    for got, want in ((softplus, torch.nn.functional.softplus(x64)), (sigmoid, torch.sigmoid(x64))):
        assert ((got.double() - want).abs() / want).max().item() < 1e-5


def test_cos_sin_match_float64_over_the_angles_of_complex_decays():
    """The complex scan's rotations (`_cos_sin`: a reduction by π/2 in three parts and short polynomials) against
    float64 at fp32 angles from −1e4 to 1e4 (Δ·Im A and ΣΔ·Im A: S4D-Lin's Im A = π·n reaches ~47 at N = 16), every
    quadrant boundary near 0 included: absolute error below 1e-6."""
    quarter = torch.pi / 2 * torch.arange(-8, 9, dtype=torch.float64)
    x = torch.cat([torch.linspace(-1e4, 1e4, 200001, dtype=torch.float64), torch.randn(5000, dtype=torch.float64) * 50,
                   quarter, quarter + 1e-4, quarter - 1e-4]).float().to(DEVICE)
    cos, sin = torch.empty_like(x), torch.empty_like(x)
    _cos_sin_kernel[(triton.cdiv(x.numel(), 1024),)](x, cos, sin, x.numel(), BLOCK=1024)
    x64 = x.double()
    assert (cos.double() - torch.cos(x64)).abs().max().item() < 1e-6
    assert (sin.double() - torch.sin(x64)).abs().max().item() < 1e-6



COMPILE_ALL_OPTIONS = """
import itertools, sys
sys.path.insert(0, "benchmarks")
from sass_counts import compile_sm90
from mamba_bio_audio.kernels.selective_scan import fused, fused_complex, fused_rows
bf16 = {"u_ptr", "dt_ptr", "z_ptr", "pre_ptr", "dout_ptr", "du_ptr", "ddt_ptr", "dz_ptr"}
for b_const, c_const, summary in itertools.product((False, True), repeat=3):
    on = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, B_CONST=b_const, C_CONST=c_const, BLOCK_N=16,
              SUMMARY=summary)
    kernels = [(fused._fwd_kernel, dict(on, HAS_H0=True, SAVE_PRE=True, BLOCK_T=64, SAVE_T=32, STATES=states,
                                        PER_THREAD=2, EVEN_L=False, STAGES=2 * states - 1), 1) for states in (1, 2)]
    kernels += [(fused._bwd_kernel, dict(on, HAS_DHLAST=True, PTX=True, BLOCK_C=channels, BLOCK_T=32 * warps,
                                         PER_THREAD=1, WARPS=warps, EVEN_L=channels == 1), warps)
                for channels, warps in ((1, 1), (2, 1), (1, 2))]
    kernels += [(fused_complex._fwd_kernel_complex, dict(on, HAS_H0=True, BLOCK_T=32, PER_THREAD=1), 1),
                (fused_complex._bwd_kernel_complex, dict(on, HAS_DHLAST=True, BLOCK_T=32), 1)]
    if not b_const and not c_const:
        kernels.append((fused_rows._rows_fwd_kernel, dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True,
                                                          SUMMARY=summary, HAS_H0=True, SAVE_PRE=True, N=16,
                                                          BLOCK_D=32, Q=16, SAVE_EVERY=2, STAGES=3), 2))
    for kernel, constexprs, warps in kernels:
        try:
            compile_sm90(kernel, constexprs, warps, bf16)
        except Exception as error:
            sys.exit(f"{kernel.fn.__name__} {constexprs}: {error}")
"""


def test_scan_kernels_compile_for_sm90_at_every_option_set():
    """The interpreter (these tests on a CPU) runs a kernel without type-checking it: two branches of a compile-time
    `if` returning tiles of different shapes ran there and failed to compile on the H100 (`_load_state_row` with
    constant B or C and 2 channels per program). So every scan kernel is compiled for sm_90 here, in a process
    without the interpreter, at small tiles: constant or variable B and C, summary and full passes, 1 and 2 states or
    channels, the backward on 1 and 2 warps, the rows forward (on its 2 warps), every option on."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", COMPILE_ALL_OPTIONS], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def test_scan_variants_times_a_copy_of_the_rows_forward_and_refuses_a_wrong_one(rows_forward, tmp_path):
    """benchmarks/scan_variants.py (the GPU A/B of edited kernel copies): a copy of `fused_rows.py` imported from
    outside the package runs in place of the package's rows forward and agrees with it; a copy whose output
    is 10% off is found to disagree (so the copy, not the package's own kernel, is what ran)."""
    import shutil
    import sys
    from pathlib import Path

    from mamba_bio_audio.kernels.bench import make_inputs
    from mamba_bio_audio.kernels.selective_scan import fused as fused_module
    from mamba_bio_audio.kernels.selective_scan import fused_rows

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import scan_variants

    inputs = make_inputs(1, 4, 4, 64, True, device=DEVICE)
    copy, wrong = tmp_path / "rows_copy.py", tmp_path / "rows_wrong.py"
    shutil.copy(fused_rows.__file__, copy)
    source = Path(fused_rows.__file__).read_text()
    needle = "_store_output(out_ptr, pre_ptr, z_ptr, row * L + t, y, m, HAS_Z, SAVE_PRE)"
    assert source.count(needle) == 1
    wrong.write_text(source.replace(needle, needle.replace(", y,", ", 1.1 * y,")))
    own = fused_module.selective_scan_fused
    for name, path, agrees in (("copy", copy, True), ("wrong", wrong, False)):
        fn = scan_variants.scan_function("rows", scan_variants.load_variant(name, path))
        difference = scan_variants.largest_difference(fn, own, inputs)
        assert (difference < 1e-5) if agrees else (difference > scan_variants.AGREE)  # 1e-5: atomic adds' order
    assert fused_module.rows_forward is fused_rows.rows_forward  # put back after each call
