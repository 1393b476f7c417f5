"""The PyTorch paths on a GPU (skipped without CUDA): the chunked scan and the models match the CPU."""
import pytest
import torch

from mamba_bio_audio import MambaConfig, MambaLMHeadModel
from mamba_bio_audio.kernels import selective_scan, selective_scan_naive

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("complex_a", [False, True])
def test_scan_on_cuda_matches_float64_naive(complex_a):
    torch.manual_seed(0)
    b, d, n, L = 2, 16, 8, 1000
    A = -torch.rand(d, n) - 0.5
    if complex_a:
        A = torch.complex(A, torch.randn(d, n))
    args = [torch.randn(b, d, L), torch.rand(b, d, L), A, torch.randn(b, n, L, dtype=A.dtype),
            torch.randn(b, n, L, dtype=A.dtype)]
    wide = [x.to(torch.complex128 if x.is_complex() else torch.float64).requires_grad_() for x in args]
    ref, ref_h = selective_scan_naive(*wide, return_last_state=True)
    (ref.sum() + ref_h.abs().sum()).backward()
    gpu = [x.cuda().requires_grad_() for x in args]
    out, h = selective_scan(*gpu, return_last_state=True)
    (out.sum() + h.abs().sum()).backward()
    assert out.is_cuda and (out.double().cpu() - ref).norm() / ref.norm() < 1e-4
    for x, r in zip(gpu, wide):
        assert (x.grad.cpu().to(r.grad.dtype) - r.grad).norm() / r.grad.norm() < 1e-4


def test_model_on_cuda_matches_cpu_and_steps_match_parallel():
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=12)).eval()
    ids = torch.randint(0, 12, (2, 256))
    with torch.no_grad():
        cpu = model(ids)
        model.cuda()
        gpu = model(ids.cuda())
        cache = model.allocate_inference_cache(2)
        parts = [model(ids[:, :10].cuda(), cache=cache)]
        parts += [model(ids[:, t:t + 1].cuda(), cache=cache) for t in range(10, 256)]
    assert (gpu.cpu() - cpu).abs().max() < 1e-4
    assert (torch.cat(parts, 1) - gpu).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["unet", "complex-unet", "mamba", "transformer"])
def test_generation_replaying_cuda_graphs_matches_eager_steps_and_the_parallel_forward(arch):
    """The same seed gives the same clips with and without graphs (a replay runs the same kernels on the same state
    and noise), also from a sampler's graphs recorded in an earlier call, and the sampled log-likelihood is the
    parallel forward's."""
    from mamba_bio_audio.audio.codec import shift_right
    from mamba_bio_audio.audio.generate import AudioSampler, sample_audio
    from mamba_bio_audio.pipelines.audio_lm import build_audio_model

    torch.manual_seed(0)
    config = {"unet": {"d_model": 16, "pools": (4, 4), "n_layers": 2},
              "complex-unet": {"d_model": 16, "pools": (4, 4), "n_layers": 2, "complex_ssm": True},
              "mamba": {"d_model": 32, "n_layer": 2}, "transformer": {"d_model": 32, "n_layer": 2, "n_head": 2}}[arch]
    unet = arch.endswith("unet")
    model = build_audio_model("unet" if unet else arch, None, config).cuda().eval()
    prompt = torch.randint(0, 256, (3, 20))
    sampler = AudioSampler(model, 3)  # the graphs recorded by its first call serve the second
    for length in (90, 96):  # 90: the last chunk of 16 partial, replayed whole with its last 6 positions dropped
        eager, eager_ll = sample_audio(model, 3, length, prompt, seed=3, cuda_graphs=False, persistent=False)
        graphed, graphed_ll = sampler(length, prompt, seed=3)
        assert torch.equal(eager, graphed) and torch.equal(eager_ll, graphed_ll)
    if unet:  # the coarse steps on side streams (the default here) or on one stream: the same clips
        one_stream, one_stream_ll = sample_audio(model, 3, 96, prompt, seed=3, persistent=False, concurrent=False)
        assert torch.equal(one_stream, graphed) and torch.equal(one_stream_ll, graphed_ll)
    runs = [(graphed, graphed_ll)]
    if unet:  # and in the persistent kernel (its own noise stream)
        runs.append(sample_audio(model, 3, 96, prompt, seed=3, persistent=True))
    for codes, loglik in runs:
        assert torch.equal(codes[:, :20].cpu(), prompt)
        with torch.no_grad():
            logp = torch.log_softmax(model(shift_right(codes)).double(), -1).gather(-1, codes[..., None])[..., 0]
        torch.testing.assert_close(loglik, logp[:, 20:].sum(-1), rtol=1e-3, atol=1e-2)


def test_an_audio_sampler_follows_its_model_to_another_device():
    """A sampler made while its model was on the GPU generates where the model is after a move (CPU, then the GPU
    again), each time with a fresh sampler's clips: its states and graphs are rebuilt on the new device."""
    from mamba_bio_audio.audio.generate import AudioSampler
    from mamba_bio_audio.pipelines.audio_lm import build_audio_model

    torch.manual_seed(0)
    model = build_audio_model("unet", None, {"d_model": 16, "pools": (4, 4), "n_layers": 1}).cuda().eval()
    sampler = AudioSampler(model, 2)
    for device in ("cuda", "cpu", "cuda"):
        model.to(device)
        codes, loglik = sampler(40, seed=1)
        fresh_codes, fresh_loglik = AudioSampler(model, 2)(40, seed=1)
        assert codes.device.type == device
        assert torch.equal(codes, fresh_codes) and torch.equal(loglik, fresh_loglik)


def test_unet_coarse_steps_on_side_streams_give_the_one_stream_logits():
    """The coarser levels' steps on side streams (the default on CUDA) give the logits of the one-stream step, bit for
    bit, eagerly and replayed from a CUDA graph of whole pooling periods (whose side streams rejoin it)."""
    from mamba_bio_audio.models.audio_unet import AudioUNet, AudioUNetConfig

    torch.manual_seed(0)
    model = AudioUNet(AudioUNetConfig(d_model=16, pools=(4, 4), n_layers=2)).cuda().eval()
    tokens = torch.randint(0, 256, (3, 64), device="cuda")

    def run(state, positions):
        return torch.stack([model.step(tokens[:, t], state) for t in positions], 1)

    with torch.no_grad():
        one_stream = run(model.allocate_step_state(3, concurrent=False), range(64))
        state = model.allocate_step_state(3)
        assert len(state.streams) == 2
        eager = run(state, range(32))
        model.join_step(state)
        replayed, graph = torch.empty_like(one_stream[:, 32:]), torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            replayed.copy_(run(state, range(32, 64)))
            model.join_step(state)
        graph.replay()
    assert torch.equal(eager, one_stream[:, :32]) and torch.equal(replayed, one_stream[:, 32:])


@pytest.mark.parametrize("settings", [dict(temperature=1.0, top_k=3, repetition_penalty=1.3), dict(temperature=0.0)])
def test_dna_generation_in_cuda_graphs_matches_eager_steps(settings):
    """`generate` replays one graph per 64-position chunk: the same seed gives the same tokens as eager steps, and
    greedy decoding picks the parallel forward's argmax at every position."""
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=12)).cuda().eval()
    prompt = torch.randint(0, 12, (3, 7), device="cuda")
    kwargs = dict(seed=4, allowed_token_ids=[7, 8, 9, 10], **settings)
    eager = model.generate(prompt, 200, cuda_graphs=False, **kwargs)
    graphed = model.generate(prompt, 200, cuda_graphs=True, **kwargs)
    assert torch.equal(eager, graphed) and set(graphed[:, 7:].unique().tolist()) <= {7, 8, 9, 10}
    if settings["temperature"] == 0.0:
        with torch.no_grad():
            logits = model(graphed[:, :-1])[:, 6:]
        allowed = torch.full_like(logits, float("-inf"))
        allowed[..., 7:11] = 0
        assert torch.equal((logits + allowed).argmax(-1), graphed[:, 7:])


@pytest.mark.parametrize("d_model", [64, 128, 256])   # the SC09 U-Net's three widths
@pytest.mark.parametrize("batch", [1, 37, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("complex_ssm", [False, True])  # SC09's real A, YouTubeMix's complex A
def test_fused_block_step_at_the_unets_sizes_matches_the_pytorch_step(d_model, batch, dtype, complex_ssm):
    import copy

    from mamba_bio_audio.kernels import mamba_block_step_naive
    from mamba_bio_audio.kernels.mamba_block_step.fused import mamba_block_step_kernel
    from mamba_bio_audio.modules import Block
    from mamba_bio_audio.modules.mamba import Mamba
    from test_mamba_block_step import optional_args, relative_error, step_args, widened

    torch.manual_seed(d_model + batch)
    layer = Block(d_model, Mamba(d_model, layer_idx=0, complex_ssm=complex_ssm)).cuda().to(dtype)
    wide = copy.deepcopy(layer).double()

    conv_state, ssm_state = layer.mixer.allocate_inference_cache(batch)
    conv_state.normal_()
    ssm_state.normal_()
    ref_conv, ref_ssm = conv_state.double(), widened(ssm_state)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 2e-3  # bf16 rounding; fp32 products in tf32 where allowed
    with torch.no_grad():
        for _ in range(3):
            hidden, residual = torch.randn(batch, d_model, device="cuda", dtype=dtype), torch.randn(batch, d_model,
                                                                                                   device="cuda")
            out, res = mamba_block_step_kernel(hidden, residual, *step_args(layer), conv_state, ssm_state,
                                               **optional_args(layer))
            ref, ref_res = mamba_block_step_naive(hidden.double(), residual.double(), *step_args(wide), ref_conv,
                                                  ref_ssm, residual_in_fp32=False, **optional_args(wide))
            assert relative_error(out, ref) < tolerance
            assert torch.allclose(res.double(), ref_res, atol=1e-2)
    assert relative_error(ssm_state, ref_ssm) < tolerance


def test_bench_times_the_scan_from_cuda_graphs():
    """`make bench`'s graph timings: the fused scan's forward and its fwd+bwd (autograd backward included) capture
    into CUDA graphs and replay."""
    from mamba_bio_audio.kernels.bench import make_inputs, time_graphs
    from mamba_bio_audio.kernels.selective_scan.fused import selective_scan_fused

    fwd, fwd_bwd = time_graphs(selective_scan_fused, make_inputs(1, 64, 16, 2048, True))
    assert 0 < fwd < fwd_bwd < 50


def test_species_training_logs_each_epochs_peak_memory(tmp_path):
    """On CUDA every training epoch logs train/peak_memory_gib; with the length warm-up doubling the window (batch
    kept), the longer epoch's peak is the larger."""
    import csv

    pytest.importorskip("pysam")
    from mamba_bio_audio.cli import main
    from mamba_bio_audio.data_recipes.apes import simulate_apes

    simulate_apes(tmp_path / "apes", scale=1000, chromosomes=["2", "5", "21"], progress=False)
    run = tmp_path / "run"
    assert main(["dna", "species", "--data-dir", str(tmp_path / "apes"), "--seq-len", "4096", "--batch-size", "8",
                 "--max-steps", "8", "--out", str(run), "--model.model_size", "null", "--model.config",
                 '{"d_model": 64, "n_layer": 2, "vocab_size": 12}', "--data.split_names",
                 '{"train": ["2"], "valid": ["21"], "test": ["5"]}', "--data.samples_per_epoch", "32",
                 "--data.eval_samples", "8", "--length_warmup.start_len", "2048",
                 "--trainer.enable_progress_bar", "false"]) == 0
    with open(next((run / "logs").glob("version_*/metrics.csv"))) as handle:
        peaks = [float(r["train/peak_memory_gib"]) for r in csv.DictReader(handle) if r.get("train/peak_memory_gib")]
    assert len(peaks) == 2 and 0 < peaks[0] < peaks[1]
