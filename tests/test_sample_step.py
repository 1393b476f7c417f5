"""One position of sampling: the fused Triton kernel against the PyTorch step (Triton's interpreter without a GPU)."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.kernels import sample_step_naive
from mamba_bio_audio.kernels.selective_scan.triton_support import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton (and CUDA or TRITON_INTERPRET=1)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run(step, logits, uniform, forced, temperature=1.0, top_p=1.0):
    n = logits.shape[0]
    forced_tokens = torch.arange(n, device=logits.device) * 3
    token = torch.full((n,), -1, dtype=torch.int64, device=logits.device)
    codes = torch.full((n, 4), -1, dtype=torch.int64, device=logits.device)
    loglik = torch.full((n,), 0.5, dtype=torch.float64, device=logits.device)
    flags = torch.ones(n, 3, dtype=torch.bool, device=logits.device)  # a column of FiniteWatch.flags
    step(logits, uniform, torch.tensor(forced, device=logits.device), forced_tokens, token, codes[:, 2], loglik,
         flags[:, 1], temperature, top_p)
    assert flags[:, [0, 2]].all()  # only its column is written
    run.nonfinite = flags[:, 1].cpu()
    return token.cpu(), codes.cpu(), loglik.cpu()


@pytest.mark.parametrize("temperature,top_p,forced", [(1.0, 1.0, False), (0.7, 1.0, False), (0.0, 1.0, False),
                                                       (1.0, 1.0, True), (1.0, 0.9, False)])
def test_fused_sample_step_matches_the_pytorch_step(temperature, top_p, forced):
    from mamba_bio_audio.kernels.sample_step.fused import sample_step_fused

    torch.manual_seed(0)
    logits = (torch.randn(37, 256) * 3).to(DEVICE)  # 256 codes; 37 rows
    uniform = torch.rand(37, 256).to(DEVICE)
    token, codes, loglik = run(sample_step_fused, logits, uniform, forced, temperature, top_p)
    assert not run.nonfinite.any()
    ref_token, ref_codes, ref_loglik = run(sample_step_naive, logits, uniform, forced, temperature, top_p)
    assert torch.equal(token, ref_token) and torch.equal(codes, ref_codes)
    assert (codes[:, 2] == token).all() and (codes[:, [0, 1, 3]] == -1).all()  # only its column is written
    torch.testing.assert_close(loglik, ref_loglik, rtol=1e-12, atol=1e-9)
    if forced:
        assert token.tolist() == [3 * i for i in range(37)] and (loglik == 0.5).all()
    else:
        expected = torch.log_softmax(logits.double().cpu(), -1).gather(1, token[:, None])[:, 0] + 0.5
        torch.testing.assert_close(loglik, expected, rtol=1e-12, atol=1e-9)
    if temperature == 0:
        assert torch.equal(token, logits.argmax(-1).cpu())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf − inf
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_rows_with_a_nan_or_an_infinite_logit_are_flagged(temperature):
    from mamba_bio_audio.kernels.sample_step.fused import sample_step_fused

    torch.manual_seed(1)
    logits = torch.randn(6, 200)  # 200 codes: masked columns in the kernel's block of 256
    logits[1, 7], logits[3, 199], logits[4, 0] = float("nan"), float("inf"), -float("inf")
    expected = torch.tensor([False, True, False, True, True, False])
    for step in (sample_step_fused, sample_step_naive):
        run(step, logits.to(DEVICE), torch.rand(6, 200).to(DEVICE), False, temperature)
        assert torch.equal(run.nonfinite, expected), step.__name__
