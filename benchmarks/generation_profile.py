"""Where one generated position's time goes: a kept `AudioSampler` (random weights) timed, then one call profiled.

    python3 benchmarks/generation_profile.py [--preset sc09] [--dtype bf16] [--batch 1,256] [--positions 512]
                                             [--device cuda] [--top 20] [--trace DIR]

Per batch: the wall time per position of a long call (after two calls that compile and record the CUDA graphs),
then a table of the kernels of one call of `--positions` positions under `torch.profiler`: launches per position,
mean µs per launch and µs per position. On CUDA the kernels inside the graph replays are listed (their durations
overlap where kernels launch early, PDL, so the sum exceeds the wall time); on the CPU, the PyTorch ops by self time.
`--trace DIR` also writes a Chrome trace per batch (open it in https://ui.perfetto.dev).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mamba_bio_audio.audio.generate import AudioSampler
from mamba_bio_audio.models.audio_unet import AudioUNet, audio_unet_config

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def wall_per_position(sampler: AudioSampler, positions: int, device: torch.device) -> float:
    """Seconds per position of one call of `positions` positions."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    sampler(positions, seed=2)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / positions


def kernel_table(sampler: AudioSampler, positions: int, device: torch.device, top: int, trace: Path | None) -> str:
    """A markdown table of the `top` kernels (CUDA) or ops (CPU) of one call of `positions` positions."""
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        sampler(positions, seed=3)
        if cuda:
            torch.cuda.synchronize(device)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    rows = [(event.key, event.count, event.self_device_time_total if cuda else event.self_cpu_time_total)
            for event in prof.key_averages()]
    rows = sorted((row for row in rows if row[2] > 0), key=lambda row: -row[2])
    lines = ["| kernel | per position | µs per launch | µs per position |", "|---|---|---|---|"]
    for name, count, total in rows[:top]:
        lines.append(f"| `{name[:70]}` | {count / positions:.2f} | {total / count:.2f} | {total / positions:.2f} |")
    lines.append(f"| all {len(rows)} ({'kernels' if cuda else 'ops'}) | {sum(r[1] for r in rows) / positions:.1f} | "
                 f"| {sum(r[2] for r in rows) / positions:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="sc09", help="AudioUNet preset (sc09, youtubemix)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--batch", default="1,256", help="comma-separated batch sizes")
    parser.add_argument("--positions", type=int, default=512, help="positions of the profiled call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--top", type=int, default=20, help="rows of the table")
    parser.add_argument("--trace", type=Path, help="folder for Chrome traces")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = AudioUNet(audio_unet_config(args.preset)).to(device, DTYPES[args.dtype]).eval()
    if args.trace is not None:
        args.trace.mkdir(parents=True, exist_ok=True)
    for batch in (int(b) for b in args.batch.split(",")):
        sampler = AudioSampler(model, batch)
        sampler(args.positions, seed=0)  # compiles the kernels and records the graphs
        sampler(args.positions, seed=1)
        wall = wall_per_position(sampler, 4 * args.positions, device)
        trace = args.trace / f"{args.preset}_{args.dtype}_b{batch}.json" if args.trace is not None else None
        print(f"\n{args.preset} U-Net, {args.dtype}, batch {batch} on {device}: {wall * 1e6:.1f} µs per position "
              f"({batch / wall:,.0f} samples/s, {batch / wall / 16000:.2f}× real time)\n")
        print(kernel_table(sampler, args.positions, device, args.top, trace), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
