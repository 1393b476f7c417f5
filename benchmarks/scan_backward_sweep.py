"""GPU: the selective scan's backward in the rows layout against `fused`'s, over its tile shapes.

    python3 benchmarks/scan_backward_sweep.py            (make bench-bwd-sweep)

For each configuration (bf16, N = 16, z, D, Δ-bias, softplus, B and C shared by the channels; the rows forward forced
so that both backwards follow the same forward), the fwd+bwd ms (median of triton.testing.do_bench) and peak memory of:
the default path, the rows forward with `fused`'s backward, and the rows forward with the rows backward at each
`fused_rows.BWD_SHAPE` of SHAPES. Before timing, each rows backward's gradients are compared with `fused`'s on the same
inputs (relative error ‖g − g_fused‖ / ‖g_fused‖, worst over all inputs): a shape that disagrees is reported, not
timed. Prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse

import torch

from mamba_bio_audio.kernels.bench import _env, make_inputs, time_scan
from mamba_bio_audio.kernels.selective_scan import fused_rows
from mamba_bio_audio.kernels.selective_scan.fused import selective_scan_fused

CONFIGS = [(8, 2048, 2048), (8, 2048, 8192), (4, 1536, 2 ** 16), (1, 1024, 2 ** 15), (1, 256, 2 ** 20),
           (1, 512, 2 ** 20)]
# (tokens per tile, channels per program, warps, dB/dC summed over the channels before the atomic add)
SHAPES = [(64, 16, 4, True), (64, 16, 4, False), (32, 32, 4, True), (32, 32, 4, False), (16, 64, 4, True),
          (64, 32, 8, True)]
AGREE = 1e-2  # bf16 inputs: the two backwards round differently


def gradients(inputs) -> dict:
    """Gradients of a fixed random projection of the output, per input, fp32."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out = selective_scan_fused(**leaves, delta_softplus=True)
    weight = torch.randn(out.shape, device=out.device, generator=torch.Generator(out.device).manual_seed(1))
    (out.float() * weight).sum().backward()
    return {k: v.grad.float() for k, v in leaves.items() if v is not None}


def worst_error(grads, reference) -> float:
    return max(((grads[k] - reference[k]).norm() / reference[k].norm()).item() for k in reference)


def timed(inputs) -> tuple[float, float]:
    """fwd+bwd ms, and the peak GiB of one fwd+bwd (inputs included)."""
    gradients(inputs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    gradients(inputs)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    return time_scan(selective_scan_fused, inputs)[1], peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=None, help="batch,dim,L;… (default: CONFIGS)")
    args = parser.parse_args(argv)
    configs = CONFIGS if args.configs is None else [tuple(map(int, c.split(","))) for c in args.configs.split(";")]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    header = ["batch", "dim", "L", "default", "rows fwd + fused bwd"] + [
        f"rows bwd {t}×{c}, {w} warps{', Σ channels' if s else ''}" for t, c, w, s in SHAPES]
    print("fwd+bwd ms (peak GiB); a rows backward whose gradients disagree with fused's shows its error instead")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    default_shape = fused_rows.BWD_SHAPE
    for batch, dim, length in configs:
        inputs = make_inputs(batch, dim, 16, length, True)
        cells = ["%.3f (%.2f)" % timed(inputs)]
        with _env("MBA_SCAN_ROWS", "1"):
            cells.append("%.3f (%.2f)" % timed(inputs))
            reference = gradients(inputs)
            with _env("MBA_SCAN_ROWS_BWD", "1"):
                for shape in SHAPES:
                    fused_rows.BWD_SHAPE = shape
                    error = worst_error(gradients(inputs), reference)
                    cells.append("%.3f (%.2f)" % timed(inputs) if error <= AGREE else f"error {error:.1e}")
            fused_rows.BWD_SHAPE = default_shape
        print(f"| {batch} | {dim} | {length} | " + " | ".join(cells) + " |", flush=True)
        del inputs, reference
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
