"""`mba bench`: speed of the selective scan backends and training throughput of Mamba LMs on this machine.

The scan table times `selective_scan` forward and forward+backward for every available backend (the naive loop
excluded) at one shape; the model table times full training steps (forward, backward, AdamW) on random DNA tokens
after warm-up and prints tokens/s per model size. These are the numbers quoted in BENCHMARKS.md."""
from __future__ import annotations

import argparse
import functools
import itertools
import time


GEN_VARIANTS = "default; stages=1; warps=4 tile=4096; rows=2; dtype=bf16; dtype=bf16 warps=4 tile=4096"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="128x8,192x4,256x2,64x4",
                        help="comma-separated d_model x n_layer list "
                             "(default: about 1M-parameter models and the demo's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per size (after 1 warm-up step)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--scan-shape", default="8x256x16x1024",
                        help="batch x dim x N x L of the scan table (default: a 1M-parameter model's layer)")
    parser.add_argument("--loading", metavar="FASTA",
                        help="instead: the DNA pretraining data loader's windows/s on this genome, per worker count")
    parser.add_argument("--workers", default="0,1,2,4", help="worker counts of the --loading table (default 0,1,2,4)")
    parser.add_argument("--batches", type=int, default=50, help="batches timed per worker count of --loading")
    parser.add_argument("--generation", action="store_true",
                        help="instead: audio generation speed (samples/s) of the SC09 Mamba U-Net (fp32 and bf16, CUDA "
                             "graphs and eager) and of a flat Mamba and a Transformer++ (KV cache) of the same size, "
                             "per batch size; on the GPU first the time of one Mamba block step, fused and unfused")
    parser.add_argument("--gen-batches", default="1,64,256", help="batch sizes of --generation (default 1,64,256)")
    parser.add_argument("--gen-seconds", type=float, default=1.0, help="clip length of --generation (default 1 s)")
    parser.add_argument("--gen-variants", default=GEN_VARIANTS,
                        help="launch shapes of the persistent generation kernel to time, ';'-separated, each as "
                             "key=value fields changing its defaults ('default': none): rows (per program), stages "
                             "(software-pipelined walks over E; 1: none), warps, tile (a broadcast product's "
                             f"elements), dtype (fp32|bf16 weights); default {GEN_VARIANTS!r}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _median_seconds(fn, device, repeats: int) -> float:
    import torch

    times = []
    for i in range(repeats + 1 if repeats else 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i or not repeats:  # the first call warms up (and compiles, for numba), unless repeats is 0
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def generation_table(device, batches: list[int], seconds: float) -> None:
    """Samples per second (all rows together) to generate one clip of `seconds` per row from random weights, and the
    ratio to real time (16,000 samples/s): the SC09 Mamba U-Net (fp32 and bf16), the same-size flat Mamba and
    Transformer++ (static KV cache) baselines, and the YouTubeMix U-Net (complex A); on the GPU each 16-sample
    chunk of steps and draws (256 for the YouTubeMix U-Net, its pooling period) is one CUDA graph for every model,
    and the bf16 SC09 U-Net runs with its coarse steps on side streams (the default) and on one stream. Each row is
    one AudioSampler: "first call" is its first clip (warm-up and the graphs' recording included; kernels compiled
    before, on a 512-sample clip), the rate that of the clips after it (as a sampler kept in use gives them)."""
    import copy

    import torch

    from .audio import SAMPLE_RATE
    from .audio.generate import AudioSampler, sample_audio
    from . import MambaConfig, MambaLMHeadModel
    from .models.audio_unet import AudioUNet, audio_unet_config
    from .models.transformer import TransformerConfig, TransformerLM

    torch.manual_seed(0)
    unet = AudioUNet(audio_unet_config("sc09")).to(device).eval()
    flat = MambaLMHeadModel(MambaConfig(d_model=256, n_layer=14, vocab_size=256)).to(device).eval()
    transformer = TransformerLM(TransformerConfig(d_model=256, n_layer=8, n_head=4, vocab_size=256)).to(device).eval()
    piano = AudioUNet(audio_unet_config("youtubemix")).to(device).eval()
    length = round(seconds * SAMPLE_RATE)
    cuda = device.type == "cuda"
    unet_bf16 = copy.deepcopy(unet).bfloat16()
    rows = [("Mamba U-Net (sc09)", unet, cuda, batches, False, None),
            ("Mamba U-Net (sc09), bf16", unet_bf16, cuda, batches if cuda else [], False, None),
            ("Mamba U-Net (sc09), bf16, one stream", unet_bf16, cuda, batches if cuda else [], False, False),
            ("Mamba U-Net (sc09), persistent kernel", unet, False, batches if cuda else [], True, None),
            ("flat Mamba 14 x 256", flat, cuda, batches, False, None),
            ("Transformer++ 8 x 256, KV cache", transformer, cuda, batches, False, None),
            ("Mamba U-Net (youtubemix, complex A)", piano, cuda, batches, False, None),
            ("Mamba U-Net (youtubemix, complex A), bf16", copy.deepcopy(piano).bfloat16(), cuda,
             batches if cuda else [], False, None)]
    sizes = ", ".join(f"{name} {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"
                      for name, model in (("U-Net", unet), ("flat Mamba", flat), ("Transformer++", transformer),
                                          ("YouTubeMix U-Net", piano)))
    print(f"generation of {seconds:g} s clips ({length} samples) on {device}; parameters: {sizes}")
    print(f"{'model':<46}{'batch':>7}{'first call s':>14}{'seconds':>10}{'samples/s':>14}{'x real time':>13}")
    for name, model, graphs, row_batches, persistent, concurrent in rows:
        name += "" if persistent else ", graphs" if graphs else ", eager"
        for batch in row_batches:
            if persistent:  # nothing is kept between calls: one call compiles
                generate = warm_up = functools.partial(sample_audio, model, batch, persistent=True)
            else:  # another sampler compiles, so that this one's first call includes its recording
                generate, warm_up = (AudioSampler(model, batch, cuda_graphs=graphs, concurrent=concurrent)
                                     for _ in range(2))
            warm_up(min(length, 2 * 256), seed=0)
            first, seconds_taken = (_median_seconds(lambda: generate(length, seed=0), device, 0) for _ in range(2))
            rate = batch * length / seconds_taken
            print(f"{name:<46}{batch:>7}{first:>14.2f}{seconds_taken:>10.2f}{rate:>14,.0f}{rate / SAMPLE_RATE:>13.2f}",
                  flush=True)


def persistent_table(device, batches: list[int], seconds: float, variants: str) -> None:
    """Samples per second of the persistent generation kernel alone (`UNetGenerator.run`, one launch per clip) for
    the SC09 U-Net (random weights) at each batch and launch shape (`variants`: see --gen-variants): one clip timed
    after a 256-sample launch that compiles it; every clip is checked for non-finite logits."""
    import copy

    import torch

    from .audio import SAMPLE_RATE
    from .audio.codec import START_TOKEN
    from .kernels.unet_generate.fused import UNetGenerator
    from .models.audio_unet import AudioUNet, audio_unet_config

    torch.manual_seed(0)
    models = {"fp32": AudioUNet(audio_unet_config("sc09")).to(device).eval()}
    models["bf16"] = copy.deepcopy(models["fp32"]).bfloat16()
    length = round(seconds * SAMPLE_RATE)
    print(f"persistent generation kernel, SC09 U-Net, {length}-sample clips, one launch per clip, on {device}")
    print(f"{'batch':>7}{'weights':>9}{'rows/program':>14}{'stages':>8}{'warps':>7}{'tile':>7}"
          f"{'programs':>10}{'seconds':>10}{'samples/s':>14}{'x real time':>13}")
    for batch in batches:
        seen = set()
        for variant in variants.split(";"):
            spec = dict(field.split("=", 1) for field in variant.split() if field != "default")
            dtype = spec.pop("dtype", "fp32")
            names = {"rows": "block_rows", "stages": "stages", "warps": "num_warps", "tile": "tile_elements"}
            kernel = UNetGenerator(models[dtype], batch, START_TOKEN, **{names[k]: int(v) for k, v in spec.items()})
            key = (kernel.block_b, kernel.stages, kernel.num_warps, kernel.tile_elements, dtype)
            if key in seen or kernel.block_b > max(batch, 1):  # the same launch again, or rows that are all padding
                continue
            seen.add(key)
            codes = torch.empty(batch, length, dtype=torch.int64, device=device)
            kernel.run(min(length, 256), codes, seed=1)  # compiles; the timed run goes on from there
            seconds_taken = _median_seconds(lambda: kernel.run(length, codes, seed=1), device, 0)
            if bool((kernel.first_bad >= 0).any()):
                raise RuntimeError(f"persistent generation at batch {batch}: non-finite logits")
            rate = batch * length / seconds_taken
            print(f"{batch:>7}{dtype:>9}{kernel.block_b:>14}{kernel.stages:>8}{kernel.num_warps:>7}"
                  f"{kernel.tile_elements:>7}{-(-batch // kernel.block_b):>10}{seconds_taken:>10.3f}{rate:>14,.0f}"
                  f"{rate / SAMPLE_RATE:>13.2f}", flush=True)


def block_step_table(device, batches: list[int], calls: int = 100) -> None:
    """Microseconds per token of one Mamba block's recurrent step (fp32 and bf16; real A as in the SC09 U-Net,
    complex A as in the YouTubeMix one) at the U-Nets' three widths: the fused Triton kernel against the same step as
    separate PyTorch ops, each timed as a CUDA graph of `calls` steps (`Block` steps through the kernels for fp32,
    bf16 and fp16 models alike)."""
    import torch

    from .kernels.mamba_block_step import mamba_block_step_naive
    from .kernels.mamba_block_step.fused import mamba_block_step_kernel
    from .modules import Block
    from .modules.mamba import Mamba

    print(f"one Mamba block step on {device}, µs per token (CUDA graph of {calls} steps)")
    print(f"{'A':>8}{'d_model':>8}{'dtype':>10}{'batch':>7}{'fused':>10}{'PyTorch ops':>13}")
    for complex_ssm, d_model, dtype in itertools.product((False, True), (64, 128, 256),
                                                         (torch.float32, torch.bfloat16)):
        layer = Block(d_model, Mamba(d_model, layer_idx=0, complex_ssm=complex_ssm)).to(device=device,
                                                                                        dtype=dtype).eval()
        m = layer.mixer
        weights = (layer.norm.weight, layer.norm.eps, m.in_proj.weight, m.conv1d.weight[:, 0], m.conv1d.bias,
                   m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias, m.A_log, m.D, m.out_proj.weight)
        a_imag = dict(A_imag=m.A_imag) if complex_ssm else {}
        for batch in batches:
            states = m.allocate_inference_cache(batch)
            hidden = torch.randn(batch, d_model, device=device, dtype=dtype)
            residual = torch.randn(batch, d_model, device=device)
            times = []
            for fn in (mamba_block_step_kernel, mamba_block_step_naive):
                with torch.no_grad():
                    fn(hidden, residual, *weights, *states, **a_imag)  # compiles
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        for _ in range(calls):
                            fn(hidden, residual, *weights, *states, **a_imag)
                    times.append(_median_seconds(graph.replay, device, 5) / calls * 1e6)
            name = str(dtype).removeprefix("torch.")
            print(f"{'complex' if complex_ssm else 'real':>8}{d_model:>8}{name:>10}{batch:>7}{times[0]:>10.1f}"
                  f"{times[1]:>13.1f}", flush=True)


def scan_table(device, shape: list[int], repeats: int) -> None:
    """selective_scan forward and forward+backward per backend, fp32, real A, variable B/C, z and D."""
    import torch

    from .kernels import _SCAN

    batch, dim, n_state, length = shape
    g = torch.Generator().manual_seed(0)
    inputs = dict(u=torch.randn(batch, dim, length, generator=g),
                  delta=torch.randn(batch, dim, length, generator=g),
                  A=-torch.rand(dim, n_state, generator=g) * n_state,
                  B=torch.randn(batch, n_state, length, generator=g),
                  C=torch.randn(batch, n_state, length, generator=g), D=torch.ones(dim),
                  z=torch.randn(batch, dim, length, generator=g), delta_bias=torch.full((dim,), -4.0))
    inputs = {k: v.to(device).requires_grad_() for k, v in inputs.items()}
    print(f"\nselective_scan, batch {batch}, dim {dim}, N {n_state}, L {length}, fp32")
    print(f"{'backend':>8} {'fwd ms':>9} {'fwd+bwd ms':>11} {'Mtokens·ch/s':>13}")
    for name, fn in _SCAN.items():
        if name == "naive" or (name == "numba" and device.type != "cpu"):
            continue

        def forward():
            with torch.no_grad():
                fn(**inputs, delta_softplus=True)

        def forward_backward():
            fn(**inputs, delta_softplus=True).sum().backward()

        fwd, fwd_bwd = _median_seconds(forward, device, repeats), _median_seconds(forward_backward, device, repeats)
        print(f"{name:>8} {fwd * 1e3:>9.1f} {fwd_bwd * 1e3:>11.1f} {batch * dim * length / fwd_bwd / 1e6:>13.1f}")


def loading_table(fasta: str, seq_len: int, batch_size: int, workers: list[int], batches: int) -> None:
    """Training batches of DNAPretrainData (shuffled windows read through pysam, tokenized, labelled) per second with
    0, 1, 2, … DataLoader workers: time to the first batch (worker start-up, paid every epoch since loaders are
    rebuilt each epoch) and the steady rate over the next `batches` batches."""
    from .pipelines.dna_pretrain import DNAPretrainData

    print(f"\nDNA training loader, {fasta}, batch {batch_size} x {seq_len} bases, {batches} batches timed")
    print(f"{'workers':>8} {'first batch s':>14} {'batches/s':>10} {'Mbases/s':>9} {'speed-up':>9}")
    base = None
    for count in workers:
        data = DNAPretrainData(fasta, seq_len=seq_len, batch_size=batch_size, num_workers=count,
                               split_fractions=(1.0, 0.0, 0.0))
        data.setup()
        loader = iter(data.train_dataloader())
        start = time.perf_counter()
        next(loader)
        first = time.perf_counter() - start
        start = time.perf_counter()
        done = 0
        for done, _ in enumerate(loader, 1):
            if done == batches:
                break
        rate = done / (time.perf_counter() - start)
        base = base or rate
        print(f"{count:>8} {first:>14.2f} {rate:>10.1f} {rate * batch_size * seq_len / 1e6:>9.2f} "
              f"{rate / base:>8.2f}x")
        del loader


def run(args: argparse.Namespace) -> int:
    if args.loading:
        loading_table(args.loading, args.seq_len, args.batch_size, [int(v) for v in args.workers.split(",")],
                      args.batches)
        return 0
    import torch
    import torch.nn.functional as F

    if args.generation:
        device, batches = torch.device(args.device), [int(v) for v in args.gen_batches.split(",")]
        if device.type == "cuda":
            block_step_table(device, batches)
            persistent_table(device, batches, args.gen_seconds, args.gen_variants)
        generation_table(device, batches, args.gen_seconds)
        return 0

    from . import MambaConfig, MambaLMHeadModel
    from .kernels import active_backend

    device = torch.device(args.device)
    print(f"device {device}, default scan backend {active_backend(device)}, {torch.get_num_threads()} CPU threads")
    scan_table(device, [int(v) for v in args.scan_shape.lower().split("x")], args.steps)
    print(f"\ntraining steps, batch {args.batch_size} x {args.seq_len} tokens, default scan backend")
    print(f"{'d_model':>8} {'n_layer':>8} {'params':>9} {'step s':>8} {'tokens/s':>10}")
    for size in args.sizes.split(","):
        d_model, n_layer = (int(v) for v in size.lower().split("x"))
        torch.manual_seed(0)
        model = MambaLMHeadModel(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=12)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(7, 11, (args.batch_size, args.seq_len + 1), device=device)

        def train_step():
            logits = model(ids[:, :-1])
            F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step_time = _median_seconds(train_step, device, args.steps)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{d_model:>8} {n_layer:>8} {n_params / 1e6:>8.2f}M {step_time:>8.2f} "
              f"{args.batch_size * args.seq_len / step_time:>10,.0f}")
    return 0
