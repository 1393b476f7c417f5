"""`mba bench`: training throughput of Mamba language models on this machine (CPU or GPU).

Times full training steps (forward, backward, AdamW) on random DNA tokens after warm-up and prints
tokens/s per model size, the numbers quoted in BENCHMARKS.md."""
from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="128x8,192x4,256x2,64x4",
                        help="comma-separated d_model x n_layer list (default: about 1M-parameter models and the demo's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per size (after 1 warm-up step)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from . import MambaConfig, MambaLMHeadModel
    from .kernels import active_backend

    device = torch.device(args.device)
    print(f"device {device}, scan backend {active_backend(device)}, {torch.get_num_threads()} CPU threads, "
          f"batch {args.batch_size} x {args.seq_len} tokens")
    print(f"{'d_model':>8} {'n_layer':>8} {'params':>9} {'step s':>8} {'tokens/s':>10}")
    for size in args.sizes.split(","):
        d_model, n_layer = (int(v) for v in size.lower().split("x"))
        torch.manual_seed(0)
        model = MambaLMHeadModel(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=12)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(7, 11, (args.batch_size, args.seq_len + 1), device=device)
        times = []
        for step in range(args.steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            logits = model(ids[:, :-1])
            F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step warms up allocators and caches
                times.append(time.perf_counter() - start)
        step_time = sorted(times)[len(times) // 2]
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{d_model:>8} {n_layer:>8} {n_params / 1e6:>8.2f}M {step_time:>8.2f} "
              f"{args.batch_size * args.seq_len / step_time:>10,.0f}")
    return 0
