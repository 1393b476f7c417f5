"""selective_scan: every fast path against the token-by-token loop in float64 (flash-linear-attention style).

Relative error ‖x − ref‖ / ‖ref‖ on the output, the last state and every gradient, with random upstream gradients on
both the output and the returned last state. The chunked implementation has two algorithms (cumulative sums, and a
log-depth scan for steep decays); every test that means to exercise one checks with `plan_segments` that it does.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio.kernels import selective_scan, selective_scan_chunked, selective_scan_naive
from mamba_bio_audio.kernels.selective_scan.chunked import MIN_SPLIT, plan_segments
from mamba_bio_audio.kernels.selective_scan.common import check_inputs, compute_dtype, discretize_delta, to_grouped

F64 = torch.float64
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 1e-2}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
# which B/C layouts a case uses: (B kind, C kind)
BC_KINDS = {
    "var": ("var", "var"),
    "grouped": ("grouped", "grouped"),
    "const": ("const", "const"),
    "var_const": ("var", "const"),
    "const_grouped": ("const", "grouped"),
}
HIGH, MID, LOW = 1.0, 0.6, 0.05  # Δ levels of the steep regime (times |A|max = 20: 20, 12 and 1 per step)
STEEP_BLOCK = 16                   # the steep regime cycles HIGH, MID, LOW blocks of this many tokens


# ----------------------------------------------------------------------------------------------------------- helpers
def rel_err(x: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """‖x − ref‖ / max(‖ref‖, floor) in float64 (complex128 if either is complex); the absolute norm if that is 0.
    NaN stays NaN (and fails every `<=`). `floor` only matters for a reference far below the input scale."""
    wide = torch.complex128 if (x.is_complex() or ref.is_complex()) else F64
    x, ref = x.detach().to(wide), ref.detach().to(wide)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    num = (x - ref).abs().norm()
    den = max(float(ref.abs().norm()), floor)
    return float(num) / den if den > 0 else float(num)


def make_case(batch=2, dim=4, n=3, length=37, *, complex_a=False, bc="var", groups=2, real_bc=False,
              z=False, D=False, bias=False, softplus=False, init=False, regime="small", dtype=F64,
              param_dtype=None):
    """Random inputs for one call, as a dict of keyword arguments (tensors are leaves without grad).

    regime "small": Δ·|A| ≤ 0.75 per step, every chunk fits the cumulative-sum form.
    regime "flat<k>": Δ·|A|max ≈ k at every token (k = 5, 10, 14 keep every segment, halved or not, in the
    cumulative-sum form with chunks of 16).
    regime "steep": Δ·|A|max cycles through blocks of 16 tokens at ≈20, ≈12 and ≈1 per step: chunks of 16 are halved,
    the 20-per-step halves go to the log-depth scan and the 12-per-step halves to the cumulative-sum form.
    Δ is made positive and exactly controlled; with softplus the raw delta is its inverse softplus (minus the bias).
    `dtype` is the dtype of u, delta, B, C, z; `param_dtype` (default dtype, fp32 for bf16) that of A, D, bias, state.
    """
    if param_dtype is None:
        param_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    if regime == "small":
        dl = torch.empty(batch, dim, length, dtype=F64).uniform_(0.05, 0.5)
        re_a = -torch.empty(dim, n, dtype=F64).uniform_(0.5, 1.5)
    elif regime.startswith("flat"):  # "flat<k>": every token at Δ·|A|max ≈ k (within 5 %)
        dl = float(regime[4:]) / 20.0 * torch.empty(batch, dim, length, dtype=F64).uniform_(0.95, 1.0)
        re_a = -20.0 * torch.empty(dim, n, dtype=F64).uniform_(0.9, 1.0)  # every state decays that fast
    elif regime == "steep":
        levels = torch.tensor([HIGH, MID, LOW], dtype=F64)
        block = (torch.arange(length) // STEEP_BLOCK) % 3
        dl = levels[block] * torch.empty(batch, dim, length, dtype=F64).uniform_(0.95, 1.0)
        re_a = -20.0 * torch.empty(dim, n, dtype=F64).uniform_(0.3, 1.0)
        re_a[:, 0] = -20.0
    else:
        raise AssertionError(regime)
    A = torch.complex(re_a, 2.0 * torch.randn(dim, n, dtype=F64)) if complex_a else re_a
    delta_bias = 0.5 * torch.randn(dim, dtype=F64) if bias else None
    raw = torch.log(torch.expm1(dl)) if softplus else dl
    if bias:
        raw = raw - delta_bias[:, None]

    cplx_bc = complex_a and not real_bc

    def bc_tensor(kind):
        shape = {"var": (batch, n, length), "grouped": (batch, groups, n, length), "const": (dim, n)}[kind]
        if cplx_bc:
            return torch.randn(shape, dtype=torch.complex128)
        return torch.randn(shape, dtype=F64)

    b_kind, c_kind = BC_KINDS[bc]
    state_dtype = param_dtype if not complex_a else (torch.complex128 if param_dtype == F64 else torch.complex64)
    case = dict(
        u=torch.randn(batch, dim, length, dtype=F64).to(dtype),
        delta=raw.to(dtype),
        A=A.to(state_dtype if complex_a else param_dtype),
        B=bc_tensor(b_kind),
        C=bc_tensor(c_kind),
        D=torch.randn(dim, dtype=F64).to(param_dtype) if D else None,
        z=torch.randn(batch, dim, length, dtype=F64).to(dtype) if z else None,
        delta_bias=delta_bias.to(param_dtype) if bias else None,
        delta_softplus=softplus,
        initial_state=(torch.randn(batch, dim, n, dtype=torch.complex128 if complex_a else F64).to(state_dtype)
                       if init else None),
    )
    for name in ("B", "C"):
        X = case[name]
        case[name] = X.to(state_dtype) if X.is_complex() else X.to(dtype if X.dim() > 2 else param_dtype)
    return case


def full_extras(**kw):
    return dict(z=True, D=True, bias=True, softplus=True, init=True, **kw)


def tensors(case):
    return {k: v for k, v in case.items() if isinstance(v, torch.Tensor)}


def to_f64(case):
    """The same call with every tensor widened to float64 / complex128 (exactly: the values are unchanged)."""
    out = dict(case)
    for k, v in tensors(case).items():
        out[k] = v.detach().to(torch.complex128 if v.is_complex() else F64)
    return out


def plan_of(case, chunk):
    """The segments `selective_scan_chunked` plans for `case` (recomputed the way it does)."""
    c = case
    groups = check_inputs(c["u"], c["delta"], c["A"], c["B"], c["C"], c["D"], c["z"], c["delta_bias"],
                          c["initial_state"])
    dtype = compute_dtype(c["u"], c["delta"], c["A"], c["B"], c["C"], c["D"], c["z"], c["delta_bias"],
                          c["initial_state"])
    dlt = discretize_delta(c["delta"].detach(), None if c["delta_bias"] is None else c["delta_bias"].detach(),
                           c["delta_softplus"], dtype)
    _, dg, Ag, *_ = to_grouped(c["u"].detach(), dlt, c["A"].detach(), c["B"].detach(), c["C"].detach(), None,
                               groups, dtype)
    return plan_segments(dg, Ag, chunk)


def assert_regime(case, chunk, regime):
    """Fail unless the chunked scan will really run the algorithm(s) `regime` is meant to exercise."""
    plan = plan_of(case, chunk)
    length = case["u"].shape[-1]
    assert plan[0][0] == 0 and plan[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:])), plan
    fits = [f for _, _, f in plan]
    if regime.startswith("flat"):
        assert all(fits), plan
    elif regime == "small":
        assert all(fits), plan
        assert all(e - s == min(chunk, length - s) for s, e, _ in plan), plan  # no halving either
    else:
        if length >= 7:  # ≥ 7 tokens at ≈20 per step exceed the cumulative-sum range: log-depth scan
            assert not all(fits), plan
            assert all(e - s <= MIN_SPLIT for s, e, f in plan if not f), plan
        if length > 2 * STEEP_BLOCK:  # the MID block: a chunk halved into two cumulative-sum pieces
            assert any(f and e - s == chunk // 2 for s, e, f in plan), plan
            assert any(not f for f in fits) and any(fits), plan
    return plan


def state_loss(h, g):
    """Re(Σ conj(g)·h): the real pairing of an upstream gradient g with the (possibly complex) last state."""
    if h.is_complex():
        return (g.conj() * h.to(g.dtype)).real.sum()
    return (g * h.to(g.dtype)).sum()


def run_and_grad(fn, case, g_out, g_h, **kw):
    """out, last state and the gradient of Σ g_out·out + Re(Σ conj(g_h)·h) w.r.t. every tensor input."""
    case = dict(case)
    leaves = {}
    for name, v in tensors(case).items():
        leaves[name] = case[name] = v.detach().clone().requires_grad_()
    out, h = fn(**case, return_last_state=True, **kw)
    loss = 0
    if g_out is not None:
        loss = loss + (out.to(F64) * g_out).sum()
    if g_h is not None:
        loss = loss + state_loss(h, g_h)
    # inputs that cannot reach the differentiated quantity (D or z when only the last state is) get zeros
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves.values(), grads)]
    return out.detach(), h.detach(), dict(zip(leaves, grads))


def upstream(case, out_grad=True, state_grad=True):
    batch, dim, _ = case["u"].shape
    n = case["A"].shape[1]
    g_out = torch.randn(case["u"].shape, dtype=F64) if out_grad else None
    g_h = None
    if state_grad:
        g_h = torch.randn(batch, dim, n, dtype=torch.complex128 if case["A"].is_complex() else F64)
    return g_out, g_h


def check_against_naive(case, tol, chunk, out_grad=True, state_grad=True, fn=None):
    """Run the chunked scan on `case` and the naive loop on its float64 widening; compare everything."""
    g_out, g_h = upstream(case, out_grad, state_grad)
    if g_out is not None:  # the output's gradient arrives in the output's dtype: give the reference the same one
        g_out = g_out.to(case["u"].dtype).to(F64)
    fn = fn or (lambda **kw: selective_scan_chunked(**kw, chunk_size=chunk))
    out, h, grads = run_and_grad(fn, case, g_out, g_h)
    ref_out, ref_h, ref_grads = run_and_grad(selective_scan_naive, to_f64(case), g_out, g_h)
    assert out.dtype == case["u"].dtype
    assert out.shape == ref_out.shape and h.shape == ref_h.shape
    # a reference below 1e-30 (e.g. ∂L/∂h0 after e^-300 of decay) is 0 for fp32/bf16: compare it absolutely
    floor = 0.0 if case["u"].dtype == F64 else 1e-30
    errors = {"out": rel_err(out, ref_out), "last_state": rel_err(h, ref_h)}
    for name, g in grads.items():
        assert g.dtype == case[name].dtype and g.shape == case[name].shape, name
        errors["d" + name] = rel_err(g, ref_grads[name], floor)
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"
    # the reference must not be trivially zero: these are genuine comparisons
    assert ref_out.abs().max() > 0 and ref_h.abs().max() > 0
    return errors


# ---------------------------------------------------------------------------------------- float64 exactness grid
@pytest.mark.parametrize("extras", ["bare", "full"])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("bc", list(BC_KINDS))
@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("length", [1, 7, 37, 130])
def test_chunked_matches_naive_f64(length, regime, bc, complex_a, extras):
    opts = full_extras() if extras == "full" else {}
    case = make_case(length=length, regime=regime, bc=bc, complex_a=complex_a, **opts)
    chunk = 8 if regime == "small" else 16
    assert_regime(case, chunk, regime)
    check_against_naive(case, TOL[F64], chunk)


@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("extra", ["z", "D", "bias", "softplus", "bias_softplus", "init"])
def test_chunked_single_options_f64(extra, complex_a, regime):
    opts = {"bias_softplus": dict(bias=True, softplus=True)}.get(extra, {extra: True})
    case = make_case(dim=6, n=4, length=37, regime=regime, bc="grouped", complex_a=complex_a, **opts)
    chunk = 8 if regime == "small" else 16
    assert_regime(case, chunk, regime)
    check_against_naive(case, TOL[F64], chunk)


@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("bc", ["var", "const", "var_const"])
def test_complex_A_with_real_B_C_f64(bc, regime):
    case = make_case(length=37, regime=regime, bc=bc, complex_a=True, real_bc=True, **full_extras())
    assert not case["B"].is_complex() and not case["C"].is_complex()
    chunk = 8 if regime == "small" else 16
    assert_regime(case, chunk, regime)
    check_against_naive(case, TOL[F64], chunk)


@pytest.mark.parametrize("chunk", [1, 3, 8, 64, 1000])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_any_chunk_size_f64(chunk, complex_a):
    case = make_case(length=37, regime="steep", bc="grouped", complex_a=complex_a, **full_extras())
    check_against_naive(case, TOL[F64], chunk)


# ---------------------------------------------------------------------------------------- reduced precision
@pytest.mark.parametrize("length", [37, 130])
@pytest.mark.parametrize("bc", ["var", "grouped", "const"])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("regime", ["small", "steep"])
def test_chunked_fp32(regime, complex_a, bc, length):
    case = make_case(length=length, regime=regime, bc=bc, complex_a=complex_a, dtype=torch.float32, **full_extras())
    chunk = 8 if regime == "small" else 16
    assert_regime(case, chunk, regime)
    out, h = selective_scan_chunked(**case, return_last_state=True, chunk_size=chunk)
    assert out.dtype == torch.float32
    assert h.dtype == (torch.complex64 if complex_a else torch.float32)
    check_against_naive(case, TOL[torch.float32], chunk)


@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("regime", ["flat5", "flat10", "flat14"])
def test_chunked_fp32_steep_decays_in_cumsum_form(regime, complex_a):
    """Every token at Δ·|A| ≈ 5, 10 or 14: all segments use the cumulative-sum form (halved to 8 tokens for 10 and
    14). The fp32 gradients must still be within 1e-4 of float64 (the naive loop in fp32 is, by far)."""
    case = make_case(length=64, regime=regime, bc="var", complex_a=complex_a, dtype=torch.float32, **full_extras())
    plan = assert_regime(case, 16, regime)
    assert [e - s for s, e, _ in plan] == ([16] * 4 if regime == "flat5" else [8] * 8), plan
    check_against_naive(case, TOL[torch.float32], 16, fn=selective_scan_naive)  # the bound is attainable in fp32
    check_against_naive(case, TOL[torch.float32], 16)


@pytest.mark.parametrize("bc", ["var", "grouped"])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("regime", ["small", "steep"])
def test_chunked_bf16(regime, complex_a, bc):
    case = make_case(length=130, regime=regime, bc=bc, complex_a=complex_a, real_bc=True, dtype=torch.bfloat16,
                     **full_extras())
    for name in ("u", "delta", "B", "C", "z"):
        assert case[name].dtype == torch.bfloat16, name
    chunk = 8 if regime == "small" else 16
    assert_regime(case, chunk, regime)
    out, h = selective_scan_chunked(**case, return_last_state=True, chunk_size=chunk)
    assert out.dtype == torch.bfloat16
    assert h.dtype == (torch.complex64 if complex_a else torch.float32)
    check_against_naive(case, TOL[torch.bfloat16], chunk)


@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_naive_fp32_agrees_with_naive_f64(complex_a):
    """The definition itself in fp32 (fp32 state) is close to its float64 run."""
    case = make_case(length=37, complex_a=complex_a, dtype=torch.float32, **full_extras())
    out, h = selective_scan_naive(**case, return_last_state=True)
    ref, ref_h = selective_scan_naive(**to_f64(case), return_last_state=True)
    assert out.dtype == torch.float32 and h.dtype == (torch.complex64 if complex_a else torch.float32)
    assert rel_err(out, ref) <= 1e-5 and rel_err(h, ref_h) <= 1e-5


# ---------------------------------------------------------------------------------------- gradient paths
@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_grad_through_last_state_only(dtype, complex_a, regime):
    """loss = f(last state): the output receives a zero gradient; every input gradient, initial state included."""
    case = make_case(length=37, regime=regime, bc="var", complex_a=complex_a, dtype=dtype, **full_extras())
    chunk = 8 if regime == "small" else 16
    assert_regime(case, chunk, regime)
    check_against_naive(case, TOL[dtype], chunk, out_grad=False, state_grad=True)


@pytest.mark.parametrize("regime", ["small", "steep"])
@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_grad_through_output_only(complex_a, regime):
    """loss = f(out) with the last state returned but unused; gradient w.r.t. the initial state included."""
    case = make_case(length=37, regime=regime, bc="grouped", complex_a=complex_a, **full_extras())
    chunk = 8 if regime == "small" else 16
    check_against_naive(case, TOL[F64], chunk, out_grad=True, state_grad=False)


@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_grad_without_returning_last_state(complex_a):
    case = make_case(length=37, regime="steep", bc="var", complex_a=complex_a, **full_extras())
    g_out = torch.randn(case["u"].shape, dtype=F64)

    def grads(fn):
        leaves = {k: v.clone().requires_grad_() for k, v in tensors(case).items()}
        out = fn(**{**case, **leaves})
        return out, torch.autograd.grad((out * g_out).sum(), list(leaves.values()))

    out, g = grads(lambda **kw: selective_scan_chunked(**kw, chunk_size=16))
    ref, g_ref = grads(selective_scan_naive)
    assert rel_err(out, ref) <= 1e-9
    for name, a, b in zip(tensors(case), g, g_ref):
        assert rel_err(a, b) <= 1e-9, name


@pytest.mark.parametrize("wanted", ["u", "A", "B", "initial_state", "delta_bias"])
def test_grad_of_a_subset_of_inputs(wanted):
    """Only one input requires grad (the others are plain tensors): its gradient is still right."""
    case = make_case(length=37, regime="steep", bc="grouped", complex_a=True, **full_extras())
    g_out = torch.randn(case["u"].shape, dtype=F64)
    x = case[wanted].clone().requires_grad_()
    out = selective_scan_chunked(**{**case, wanted: x}, chunk_size=16)
    (g,) = torch.autograd.grad((out * g_out).sum(), x)
    x_ref = case[wanted].clone().requires_grad_()
    ref = selective_scan_naive(**{**case, wanted: x_ref})
    (g_ref,) = torch.autograd.grad((ref * g_out).sum(), x_ref)
    assert rel_err(g, g_ref) <= 1e-9


def _gradcheck_inputs(complex_a, regime, bc, length):
    case = make_case(batch=1, dim=2, n=2, length=length, regime=regime, bc=bc, complex_a=complex_a, **full_extras())
    names = list(tensors(case))
    return case, names, tuple(case[k].clone().requires_grad_() for k in names)


@pytest.mark.parametrize("regime,complex_a,bc", [
    ("small", False, "var"), ("small", False, "const_grouped"), ("small", True, "var"),
    ("steep", False, "var"), ("steep", False, "const_grouped"), ("steep", True, "const_grouped")])
def test_gradcheck_chunked(regime, complex_a, bc):
    # small: 5 tokens in chunks of 2 (3 cumulative-sum segments); steep: 11 tokens in chunks of 8, a log-depth
    # segment (7+ tokens at 20 per step) followed by a cumulative-sum one
    length, chunk = (5, 2) if regime == "small" else (11, 8)
    case, names, inputs = _gradcheck_inputs(complex_a, regime, bc, length)
    plan = plan_of(case, chunk)
    if regime == "steep":
        assert [f for *_, f in plan] == [False, True], plan
    else:
        assert len(plan) == 3 and all(f for *_, f in plan), plan

    def fn(*xs):
        return selective_scan_chunked(**{**case, **dict(zip(names, xs))}, return_last_state=True, chunk_size=chunk)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("complex_a", [False, True], ids=["realA", "complexA"])
def test_gradcheck_naive(complex_a):
    case, names, inputs = _gradcheck_inputs(complex_a, "small", "var", 4)

    def fn(*xs):
        return selective_scan_naive(**{**case, **dict(zip(names, xs))}, return_last_state=True)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------- layouts, API, dtypes
def test_non_contiguous_inputs():
    """Transposed views (the usual (batch, L, dim) layout in a model) and expanded constant B give the same result."""
    case = make_case(length=37, regime="steep", bc="var", **full_extras())
    views = dict(case)
    for name in ("u", "delta", "z", "B", "C"):
        views[name] = case[name].transpose(1, 2).contiguous().transpose(1, 2)
        assert not views[name].is_contiguous()
    out, h = selective_scan_chunked(**views, return_last_state=True, chunk_size=16)
    ref, ref_h = selective_scan_naive(**case, return_last_state=True)
    assert rel_err(out, ref) <= 1e-9 and rel_err(h, ref_h) <= 1e-9
    check_against_naive(views, TOL[F64], 16)


def test_grouped_channel_assignment():
    """Channel d uses group d // (dim/G): a grouped B/C with G=2 equals the per-channel computation."""
    case = make_case(dim=6, length=20, bc="grouped", groups=2, **full_extras())
    out = selective_scan_chunked(**case, chunk_size=8)
    per_group = 6 // 2
    for d in range(6):
        sub = dict(case)
        for name in ("u", "delta", "z"):
            sub[name] = case[name][:, d:d + 1]
        for name in ("A", "D", "delta_bias"):
            sub[name] = case[name][d:d + 1]
        sub["initial_state"] = case["initial_state"][:, d:d + 1]
        sub["B"] = case["B"][:, d // per_group]
        sub["C"] = case["C"][:, d // per_group]
        ref = selective_scan_naive(**sub)
        assert rel_err(out[:, d:d + 1], ref) <= 1e-9, d


def test_constant_B_C_equal_broadcast_variable():
    """Constant (dim, N) B and C equal the same values repeated over time with one group per channel."""
    case = make_case(dim=4, length=20, bc="const", **full_extras())
    batch, dim, length = case["u"].shape
    expanded = dict(case)
    for name in ("B", "C"):
        expanded[name] = case[name][None, :, :, None].expand(batch, dim, -1, length)  # G = dim
    out, h = selective_scan_chunked(**case, return_last_state=True, chunk_size=8)
    ref, ref_h = selective_scan_naive(**expanded, return_last_state=True)
    assert rel_err(out, ref) <= 1e-9 and rel_err(h, ref_h) <= 1e-9


def test_naive_matches_explicit_recurrence():
    """The reference itself against a direct, scalar-per-channel transcription of the documented math."""
    case = make_case(batch=2, dim=4, n=3, length=9, complex_a=True, bc="grouped", **full_extras())
    out, h_last = selective_scan_naive(**case, return_last_state=True)
    u, delta, A, B, C = (case[k] for k in "u delta A B C".split())
    D, z, bias, h0 = case["D"], case["z"], case["delta_bias"], case["initial_state"]
    batch, dim, length = u.shape
    G = B.shape[1]
    expected = torch.empty_like(out)
    for b in range(batch):
        for d in range(dim):
            g = d // (dim // G)
            h = h0[b, d].clone()
            for t in range(length):
                dt = F.softplus(delta[b, d, t] + bias[d])
                h = torch.exp(dt * A[d]) * h + dt * B[b, g, :, t] * u[b, d, t]
                y = 2 * (h * C[b, g, :, t]).sum().real
                expected[b, d, t] = (y + D[d] * u[b, d, t]) * F.silu(z[b, d, t])
            assert rel_err(h_last[b, d], h) <= 1e-12
    assert rel_err(out, expected) <= 1e-12


def test_public_api_defaults_to_chunked_on_cpu(monkeypatch):
    monkeypatch.delenv("MBA_SCAN_BACKEND", raising=False)
    case = make_case(length=130, regime="steep", bc="grouped", complex_a=True, **full_extras())
    check_against_naive(case, TOL[F64], 64, fn=selective_scan)


@pytest.mark.parametrize("fn", [selective_scan_naive, selective_scan_chunked], ids=["naive", "chunked"])
@pytest.mark.parametrize("dtype,complex_a,state_dtype", [
    (F64, False, F64), (F64, True, torch.complex128), (torch.float32, False, torch.float32),
    (torch.float32, True, torch.complex64), (torch.bfloat16, False, torch.float32),
    (torch.bfloat16, True, torch.complex64)])
def test_output_and_state_dtypes(fn, dtype, complex_a, state_dtype):
    case = make_case(length=7, complex_a=complex_a, real_bc=True, dtype=dtype, **full_extras())
    out, h = fn(**case, return_last_state=True)
    assert out.dtype == dtype and out.shape == case["u"].shape
    assert h.dtype == state_dtype and h.shape == (2, 4, 3)
    ref, ref_h = selective_scan_naive(**to_f64(case), return_last_state=True)
    assert rel_err(out, ref) <= TOL[dtype] and rel_err(h, ref_h) <= TOL[dtype]
    assert fn(**case).dtype == dtype  # and without the state: a single tensor


def test_inference_without_grad():
    case = make_case(length=130, regime="steep", bc="var", complex_a=True, **full_extras())
    with torch.no_grad():
        out, h = selective_scan_chunked(**case, return_last_state=True, chunk_size=16)
    ref, ref_h = selective_scan_naive(**case, return_last_state=True)
    assert out.grad_fn is None
    assert rel_err(out, ref) <= 1e-9 and rel_err(h, ref_h) <= 1e-9


def test_inputs_not_modified():
    case = make_case(length=37, regime="steep", bc="grouped", complex_a=True, **full_extras())
    before = {k: v.clone() for k, v in tensors(case).items()}
    check_against_naive(case, TOL[F64], 16)
    for k, v in tensors(case).items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------------------------------- shape validation
def _base(batch=2, dim=4, n=3, length=5):
    return make_case(batch=batch, dim=dim, n=n, length=length, bc="var", **full_extras())


BAD_SHAPES = [
    ("u", "u", lambda c: c["u"][0]),
    ("u", "u", lambda c: c["u"][None]),
    ("delta", "delta", lambda c: c["delta"][..., :-1]),
    ("delta", "delta", lambda c: c["delta"][:1]),
    ("z", "z", lambda c: c["z"][:, :-1]),
    ("A", "A", lambda c: c["A"][:-1]),
    ("A", "A", lambda c: c["A"][None]),
    ("A", "A", lambda c: c["A"][:, 0]),
    ("B", "B", lambda c: c["B"][..., :-1]),
    ("B", "B", lambda c: c["B"][:, :-1]),
    ("B", "B", lambda c: c["B"][:1]),
    ("B", "B", lambda c: c["B"][:, None].expand(-1, 3, -1, -1)),          # G = 3 does not divide dim = 4
    ("B", "B", lambda c: c["B"][:, None, None]),                           # 5-D
    ("B", "B", lambda c: torch.randn(4, 2, dtype=F64)),                     # constant with the wrong N
    ("C", "C", lambda c: c["C"][..., :-1]),
    ("C", "C", lambda c: c["C"][:, 1:]),
    ("C", "C", lambda c: torch.randn(3, 3, dtype=F64)),                     # constant with the wrong dim
    ("C", "C", lambda c: c["C"][:, None].expand(-1, 3, -1, -1)),
    ("D", "D", lambda c: c["D"][:-1]),
    ("D", "D", lambda c: c["D"][None]),
    ("delta_bias", "delta_bias", lambda c: c["delta_bias"][:-1]),
    ("initial_state", "initial_state", lambda c: c["initial_state"][..., :-1]),
    ("initial_state", "initial_state", lambda c: c["initial_state"][:1]),
    ("initial_state", "initial_state", lambda c: c["initial_state"][0]),
]


@pytest.mark.parametrize("fn", [selective_scan_naive, selective_scan_chunked, selective_scan],
                         ids=["naive", "chunked", "public"])
@pytest.mark.parametrize("arg,name,bad", BAD_SHAPES, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_SHAPES)])
def test_wrong_shapes_raise_value_error_naming_argument(fn, arg, name, bad, monkeypatch):
    monkeypatch.delenv("MBA_SCAN_BACKEND", raising=False)
    case = _base()
    case[arg] = bad(case)
    with pytest.raises(ValueError, match=rf"\b{name} must"):
        fn(**case)


def test_mixed_group_counts_raise_value_error():
    case = _base()
    case["B"] = torch.randn(2, 2, 3, 5, dtype=F64)
    case["C"] = torch.randn(2, 4, 3, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"B and C"):
        selective_scan_chunked(**case)


def test_valid_mixed_layouts_accepted():
    """Grouped + constant and plain + constant mixtures are valid (and computed right)."""
    for bc in ("var_const", "const_grouped"):
        case = make_case(length=5, bc=bc, **full_extras())
        ref = selective_scan_naive(**case)
        assert rel_err(selective_scan_chunked(**case, chunk_size=2), ref) <= 1e-9


# ---------------------------------------------------------------------------------------- long sequences
def _long_case(length, spiky, generator_seed=0):
    """batch 1, dim 2, N 4, fp32. Mild Δ·|A| ≲ 2 everywhere; with `spiky`, blocks of 12 tokens at Δ·|A|max ≈ 20."""
    g = torch.Generator().manual_seed(generator_seed)
    dl = torch.empty(1, 2, length, dtype=F64).uniform_(0.001, 0.1, generator=g)
    A = -torch.empty(2, 4, dtype=F64).uniform_(0.5, 20.0, generator=g)
    A[:, 0] = -20.0
    if spiky:
        starts = torch.arange(1000, length - 12, 4093)
        for s in starts.tolist():
            dl[..., s:s + 12] = torch.empty(1, 2, 12, dtype=F64).uniform_(0.95, 1.0, generator=g)
    return dict(
        u=torch.randn(1, 2, length, generator=g, dtype=F64).float(),
        delta=dl.float(),
        A=A.float(),
        B=torch.randn(1, 4, length, generator=g, dtype=F64).float(),
        C=torch.randn(1, 4, length, generator=g, dtype=F64).float(),
        D=torch.randn(2, generator=g, dtype=F64).float(),
        z=torch.randn(1, 2, length, generator=g, dtype=F64).float(),
    )


@pytest.mark.parametrize("spiky", [False, True], ids=["mild", "spiky"])
def test_long_sequence_2_14_matches_naive_fp32(spiky):
    case = _long_case(2 ** 14, spiky)
    case["delta_softplus"] = False
    case["delta_bias"] = case["initial_state"] = None
    plan = plan_of(case, 64)
    assert any(not f for *_, f in plan) == spiky, "the spiky sequence must use the log-depth scan somewhere"
    with torch.no_grad():
        out, h = selective_scan_chunked(**case, return_last_state=True)
        ref, ref_h = selective_scan_naive(**to_f64(case), return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(h).all()
    assert rel_err(out, ref) <= 1e-4 and rel_err(h, ref_h) <= 1e-4


def test_long_sequence_2_20_finite_and_chains():
    """L = 2^20 in fp32, mild Δ·|A| with blocks at ≈20 per step: finite, and equal to two halves with the state
    carried through initial_state."""
    length = 2 ** 20
    case = _long_case(length, spiky=True)
    plan = plan_of({**case, "delta_bias": None, "delta_softplus": False, "initial_state": None}, 64)
    assert any(f for *_, f in plan) and any(not f for *_, f in plan)
    half = length // 2
    with torch.no_grad():
        out, h = selective_scan_chunked(**case, return_last_state=True)
        first = {k: v[..., :half] if v.dim() == 3 else v for k, v in case.items()}
        second = {k: v[..., half:] if v.dim() == 3 else v for k, v in case.items()}
        out1, h1 = selective_scan_chunked(**first, return_last_state=True)
        out2, h2 = selective_scan_chunked(**second, initial_state=h1, return_last_state=True)
    assert out.dtype == torch.float32 and h.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(h).all()
    assert h.abs().max() > 0 and out.abs().max() > 0
    assert rel_err(h2, h) <= 1e-5
    assert rel_err(torch.cat([out1, out2], -1), out) <= 1e-5


# ---------------------------------------------------------------------------------------- memory
def test_autograd_graph_keeps_no_per_token_state():
    """The graph saves O(batch·dim·(L + N·L/chunk)) elements, not O(batch·dim·N·L): the backward recomputes the
    states from the chunk starts. Fails if the custom Function is replaced by plain autograd over the chunks."""
    batch, dim, n, length, chunk = 1, 8, 64, 4096, 64
    case = make_case(batch=batch, dim=dim, n=n, length=length, bc="var", dtype=torch.float32, **full_extras())
    for k, v in tensors(case).items():
        case[k] = v.requires_grad_()
    saved: dict[int, int] = {}  # storage pointer -> elements: every tensor autograd keeps, counted once

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = max(saved.get(st.data_ptr(), 0), st.nbytes() // t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, h = selective_scan_chunked(**case, return_last_state=True, chunk_size=chunk)

    # 1. the scan's own node saves the inputs and the chunk-start states only
    seen, stack, node = set(), [out.grad_fn], None
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == "_ChunkedScanBackward":
            node = fn
            break
        stack.extend(f for f, _ in fn.next_functions)
    assert node is not None, "no _ChunkedScanBackward node in the graph of the output"
    node_elems = sum(t.numel() for t in node.saved_tensors)
    per_token = batch * dim * n * length  # what one stored state sequence would cost
    bound = 2 * batch * dim * length + 2 * batch * n * length + batch * dim * n * (length // chunk + 2) + dim * n
    assert node_elems <= bound < per_token, (node_elems, bound, per_token)

    # 2. the whole graph (gating, casts, softplus included): a few (batch, dim, L) tensors, the inputs B and C and the
    # chunk-start states; below the size of a single per-token state tensor
    total = sum(saved.values())
    graph_bound = 12 * batch * dim * length + 2 * batch * n * length + 2 * batch * dim * n * (length // chunk + 2)
    assert total <= graph_bound < per_token, (total, graph_bound, per_token)

    # and it still differentiates correctly at this length (against float64 chunked, itself tested against naive)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [case["A"], case["B"]])
    ref_case = to_f64(case)
    ref_leaves = [ref_case["A"].requires_grad_(), ref_case["B"].requires_grad_()]
    ref_out = selective_scan_chunked(**ref_case, chunk_size=chunk)
    ref_grads = torch.autograd.grad((ref_out * g.double()).sum(), ref_leaves)
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) <= 1e-4


def test_complex_B_with_real_A_is_rejected():
    u = torch.randn(1, 2, 5)
    B = torch.randn(1, 3, 5, dtype=torch.complex64)
    with pytest.raises(ValueError, match="complex B/C need a complex A"):
        selective_scan_chunked(u, u.abs(), -torch.rand(2, 3), B, torch.randn(1, 3, 5))
