"""Generation from a causal Mamba U-Net in one persistent kernel (`kernels/unet_generate`) against the model's own
step and draw in float64 (Triton's interpreter without a GPU): every position's logits, the drawn and forced codes,
the log-likelihood, real and complex A, launches split anywhere, seeds, `sample_audio`'s use of it, and the models it
refuses."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.errors import GenerationDiverged
from mamba_bio_audio.generation import sample_with_noise
from mamba_bio_audio.kernels.selective_scan.triton_support import triton_available
from mamba_bio_audio.kernels.unet_generate import unet_generate_naive
from mamba_bio_audio.models.audio_unet import AudioUNet, AudioUNetConfig

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
START = 128


def unet(d_model=8, n_layers=1, seed=0, **overrides) -> AudioUNet:
    """A small causal U-Net (pools 2 × 2: the centre steps every 4th sample) in float64 on the CPU, its weights moved
    away from their initial values so that every one matters."""
    torch.manual_seed(seed)
    model = AudioUNet(AudioUNetConfig(d_model=d_model, pools=(2, 2), n_layers=n_layers, d_state=4, **overrides))
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def generator(model, n, block_rows=1, stages=1):
    from mamba_bio_audio.kernels.unet_generate.fused import UNetGenerator

    return UNetGenerator(model.to(DEVICE), n, START, block_rows=block_rows, stages=stages)


@pytest.mark.parametrize("d_model, n, block_rows, stages, temperature, top_p, prompt_len, n_layers, complex_ssm", [
    (8, 3, 2, 1, 0.9, 1.0, 0, 2, False),      # rows past the batch in the last program; two blocks per stage
    (16, 17, 16, 1, 1.0, 1.0, 0, 1, False),   # 16 rows per program
    (8, 2, 1, 2, 1.3, 0.5, 5, 1, False),      # top-p, a prompt across the first coarse steps, pipelined walks
    (8, 2, 2, 1, 0.0, 1.0, 3, 1, False),      # greedy
    (8, 3, 2, 1, 1.0, 0.9, 2, 2, True),       # complex A (the YouTubeMix preset's SSM)
    (8, 3, 1, 2, 1.0, 1.0, 0, 1, True),       # complex A, one row per program, pipelined walks (the defaults)
])
def test_kernel_generates_what_the_models_step_generates(d_model, n, block_rows, stages, temperature, top_p,
                                                         prompt_len, n_layers, complex_ssm):
    model, length = unet(d_model, n_layers, complex_ssm=complex_ssm), 12
    torch.manual_seed(1)
    uniform = torch.rand(length, n, 256)
    prompt = torch.randint(0, 256, (n, prompt_len)) if prompt_len else None
    kernel = generator(model, n, block_rows, stages)
    codes = torch.zeros(n, length, dtype=torch.int64, device=DEVICE)
    logits = torch.zeros(length, n, 256, device=DEVICE)
    kernel.run(length, codes, prompt.to(DEVICE) if prompt is not None else None, temperature, top_p,
               uniform=uniform.to(DEVICE), logits_out=logits)
    codes, logits, loglik = codes.cpu(), logits.cpu().double(), kernel.loglik.cpu()
    model = model.cpu()

    # the model's logits at the kernel's codes: every position, through all three levels
    _, _, expected = unet_generate_naive(model, n, length, uniform.double(), START, prompt=codes)
    assert ((logits - expected).norm() / expected.norm()).item() < 1e-5
    # the draws: the kernel's own logits through the PyTorch draw with the same noise; the prompt where given
    drawn = torch.stack([sample_with_noise(logits[t].float(), uniform[t], temperature, top_p) for t in range(length)],
                        1)
    assert torch.equal(codes[:, prompt_len:], drawn[:, prompt_len:])
    if prompt is not None:
        assert torch.equal(codes[:, :prompt_len], prompt)
    assert len(set(codes.flatten().tolist())) > 4  # an actual sampling, not a constant
    # end to end: the model's own generation with that noise gives the same clips and log-likelihoods
    free, free_loglik, _ = unet_generate_naive(model, n, length, uniform.double(), START, prompt, temperature, top_p)
    assert torch.equal(free, codes)
    torch.testing.assert_close(loglik, free_loglik, rtol=1e-6, atol=1e-5)
    assert (loglik < 0).all()


def test_a_bf16_models_weights_are_read_in_bf16_and_the_rest_in_fp32():
    """The weight matrices of a bf16 model stay bf16 (half the bytes); the kernel's logits are those of the same
    weights in float64, to fp32 accuracy."""
    import copy

    model = unet(8, 2, complex_ssm=True).bfloat16()
    reference = copy.deepcopy(model).double()
    n, length = 2, 12
    uniform = torch.rand(length, n, 256)
    kernel = generator(model, n, block_rows=2)
    assert {m.dtype for m in kernel.mats} == {torch.bfloat16} and {v.dtype for v in kernel.vecs} == {torch.float32}
    codes = torch.zeros(n, length, dtype=torch.int64, device=DEVICE)
    logits = torch.zeros(length, n, 256, device=DEVICE)
    kernel.run(length, codes, uniform=uniform.to(DEVICE), logits_out=logits)
    _, _, expected = unet_generate_naive(reference, n, length, uniform.double(), START, prompt=codes.cpu())
    assert ((logits.cpu().double() - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("dtype, complex_ssm", [
    (torch.float16, False), (torch.float16, True),
    pytest.param(torch.bfloat16, False, marks=pytest.mark.skipif(
        DEVICE == "cpu", reason="Triton's interpreter does not support bf16 tl.dot: it multiplies the raw bit "
                                "patterns (triton-lang/triton#11584); the bf16 tensor-core products are checked on a "
                                "GPU")),
])
def test_sixteen_rows_of_a_16_bit_model_take_the_tensor_cores(dtype, complex_ssm):
    """With 16-bit weights and 16 rows per program the products run as `tl.dot` (x rounded to the weights' dtype,
    fp32 sums). The logits stay those of the same weights in float64 to that rounding, and the draws are the PyTorch
    draw's from the kernel's own logits. Scaling the `tl.dot` results by 1.01 takes the error from 3e-4 to 1.7e-2."""
    import copy

    model = unet(16, 1, complex_ssm=complex_ssm).to(dtype)
    reference = copy.deepcopy(model).double()
    n, length = 17, 12  # two programs, the second with 15 rows past the batch
    uniform = torch.rand(length, n, 256)
    kernel = generator(model, n, block_rows=16)
    chunks = kernel._chunks()
    assert kernel.uses_dot() and min(chunks["EC0"], chunks["VC"]) >= 16
    codes = torch.zeros(n, length, dtype=torch.int64, device=DEVICE)
    logits = torch.zeros(length, n, 256, device=DEVICE)
    kernel.run(length, codes, uniform=uniform.to(DEVICE), logits_out=logits)
    codes, logits = codes.cpu(), logits.cpu().double()
    _, _, expected = unet_generate_naive(reference, n, length, uniform.double(), START, prompt=codes)
    error = ((logits - expected).norm() / expected.norm()).item()
    assert error < (2e-3 if dtype == torch.float16 else 1.5e-2), error
    drawn = torch.stack([sample_with_noise(logits[t].float(), uniform[t], 1.0, 1.0) for t in range(length)], 1)
    assert torch.equal(codes, drawn)


def test_the_launch_shape_follows_the_number_of_programs_unless_given():
    """On a GPU of 132 SMs (the count assumed off a GPU): the batch-1 shape up to 132 programs, MANY_PROGRAMS from
    133; explicit warps and tiles win."""
    from mamba_bio_audio.kernels.selective_scan.triton_tiles import sm_count
    from mamba_bio_audio.kernels.unet_generate import fused

    if DEVICE == "cuda" and sm_count(torch.device(DEVICE)) != 132:
        pytest.skip("the counts below are an H100's")
    model = unet(8, 1)
    shape = {n: (g.num_warps, g.tile_elements) for n in (1, 132, 133) for g in [generator(model, n)]}
    assert shape == {1: (fused.WARPS, fused.TILE_ELEMENTS), 132: (fused.WARPS, fused.TILE_ELEMENTS),
                     133: fused.MANY_PROGRAMS}
    assert (generator(model, 266, block_rows=2).num_warps, generator(model, 264, block_rows=2).num_warps) == (4, 8)
    given = fused.UNetGenerator(model.to(DEVICE), 133, START, num_warps=2, tile_elements=1024)
    assert (given.num_warps, given.tile_elements) == (2, 1024)


def test_launches_split_anywhere_and_seeds_fix_the_draws():
    """Philox noise seeded per position: positions in launches of 5 + 7 give exactly the one launch's codes, log-
    likelihoods and states; another seed gives other codes."""
    model, n, length = unet(), 3, 12
    runs = {}
    for name, splits, seed in (("one", [12], 7), ("split", [5, 7], 7), ("other seed", [12], 8)):
        kernel = generator(model, n, block_rows=2)
        codes = torch.zeros(n, length, dtype=torch.int64, device=DEVICE)
        start = 0
        for steps in splits:
            kernel.run(steps, codes[:, start:], seed=seed)
            start += steps
        runs[name] = (codes.cpu(), kernel.loglik.cpu(), [s.cpu() for s in kernel.state_tensors()])
    assert torch.equal(runs["one"][0], runs["split"][0])
    assert torch.equal(runs["one"][1], runs["split"][1])
    assert all(torch.equal(a, b) for a, b in zip(runs["one"][2], runs["split"][2]))
    assert not torch.equal(runs["one"][0], runs["other seed"][0])


@pytest.mark.skipif(DEVICE != "cuda", reason="compiles only on a GPU")
def test_seeds_positions_and_batch_sizes_reuse_the_compiled_kernel():
    """Seeds, positions and batch sizes are runtime values: after the first launch, launches at seed 1, at odd
    positions and at batches of 1 and 17 compile nothing (a compile of this kernel takes over 5 s on an H100; the
    first GPU timing took one for the run itself)."""
    import time

    model = unet().float()
    codes = torch.zeros(17, 64, dtype=torch.int64, device=DEVICE)
    kernel = generator(model, 16, block_rows=1)
    kernel.run(16, codes[:16])  # compiles
    for n, steps, seed in ((16, 1, 1), (16, 7, 3), (1, 5, 1), (17, 3, 0)):
        launch = kernel if n == 16 else generator(model, n, block_rows=1)
        torch.cuda.synchronize()
        start = time.perf_counter()
        launch.run(steps, codes[:n], seed=seed)
        torch.cuda.synchronize()
        assert time.perf_counter() - start < 1.0, (n, steps, seed)


def test_sample_audio_takes_the_persistent_kernel():
    from mamba_bio_audio.audio.generate import sample_audio

    model = unet().float().to(DEVICE)
    stats = {}
    a, loglik_a = sample_audio(model, 3, 12, seed=5, persistent=True, check_every=5, stats=stats)
    b, loglik_b = sample_audio(model, 3, 12, seed=5, persistent=True)
    assert torch.equal(a, b) and torch.equal(loglik_a, loglik_b)
    assert stats["checks"] == 3 and 0 < stats["state_max_abs"] < 100
    prompt = torch.randint(0, 256, (3, 4))
    c, _ = sample_audio(model, 3, 12, seed=5, persistent=True, prompt=prompt)
    assert torch.equal(c[:, :4].cpu(), prompt)
    with torch.no_grad():
        model.head.bias[7] = float("nan")
    with pytest.raises(GenerationDiverged, match="non-finite logits at sample 0 of clip 0"):
        sample_audio(model, 3, 12, seed=5, persistent=True)


@pytest.mark.parametrize("overrides, reason", [
    (dict(bidirectional=True), "causal"),
    (dict(pools=(2, 2, 2)), "two pooling levels"),
    (dict(d_model=12), "powers of two"),
])
def test_models_it_cannot_run_are_refused_with_the_reason(overrides, reason):
    from mamba_bio_audio.kernels.unet_generate.fused import UNetGenerator, unsupported

    config = dict(d_model=8, pools=(2, 2), n_layers=1, d_state=4)
    model = AudioUNet(AudioUNetConfig(**{**config, **overrides}))
    assert reason in unsupported(model)
    with pytest.raises(ValueError, match=reason):
        UNetGenerator(model, 2, START)
    assert unsupported(AudioUNet(AudioUNetConfig(**config))) is None


def test_on_the_cpu_without_the_interpreter_it_says_where_it_runs(monkeypatch):
    from mamba_bio_audio.kernels.unet_generate.fused import UNetGenerator

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="runs on a CUDA device"):
        UNetGenerator(unet().float(), 2, START)
