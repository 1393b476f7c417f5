"""A/B of edited copies of the selective scan's kernel modules against the package's own, in one process (GPU).

    python3 benchmarks/scan_variants.py NAME=rows:PATH [NAME=fused:PATH ...] [--configs 8x2048x2048z,1x256x1048576z]

Timings of one configuration differ by a few percent between runs on fresh machines (BENCHMARKS.md), as much as most
single kernel changes gain, so a change is timed against the code before it in one process: every variant in turn,
then again, best of `--repeats` medians of `triton.testing.do_bench` (fwd without grad, and fwd+bwd), at `make bench`'s
inputs (bf16, N = 16, softplus, D, Δ-bias; `z` after the length adds the gate).

A variant is a copy of `kernels/selective_scan/fused_rows.py` (`rows:`) or `fused.py` (`fused:`), anywhere on disk.
It is imported as a module of the package, so its relative imports resolve, without writing into the package.
`rows:` replaces the rows forward that `fused` calls (where `fused_rows.use_rows` picks it); `fused:` times the
copy's own `selective_scan_fused`. Before timing, every variant's output and gradients must agree with the package's
own to bf16 rounding (relative norm 2e-2), or the run stops and names it.
Prints a markdown table: fwd and fwd+bwd ms per variant, and the largest relative difference from the package's own.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
from pathlib import Path

import torch

from mamba_bio_audio.kernels.bench import CONFIGS, make_inputs, time_scan
from mamba_bio_audio.kernels.selective_scan import fused

PACKAGE = "mamba_bio_audio.kernels.selective_scan"
AGREE = 2e-2


def load_variant(name: str, path: Path):
    """The file at path imported as the package's module `_variant_<name>`."""
    module_name = f"{PACKAGE}._variant_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def scan_function(kind: str, module):
    """The function to time for a variant: a `fused`-like entry point that runs the variant's kernels."""
    if kind == "fused":
        return module.selective_scan_fused

    def with_rows_forward(**kwargs):
        with _rows_forward(module.rows_forward):
            return fused.selective_scan_fused(**kwargs)

    return with_rows_forward


@contextlib.contextmanager
def _rows_forward(rows_forward):
    """`fused` calling another rows forward inside the block."""
    own = fused.rows_forward
    fused.rows_forward = rows_forward
    try:
        yield
    finally:
        fused.rows_forward = own


def outputs(fn, inputs: dict) -> list[torch.Tensor]:
    """The output and every input's gradient (fp32) for a fixed upstream gradient."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out = fn(**leaves, delta_softplus=True)
    out.backward(torch.linspace(-1, 1, out.numel(), device=out.device).reshape(out.shape).to(out.dtype))
    return [out.detach().float()] + [v.grad.float() for v in leaves.values() if v is not None]


def largest_difference(fn, own, inputs: dict) -> float:
    """The largest relative difference (norm) between fn's and own's output and gradients."""
    return max(((a - b).norm() / b.norm().clamp_min(1e-30)).item()
               for a, b in zip(outputs(fn, inputs), outputs(own, inputs)))


def parse_variant(text: str) -> tuple[str, str, Path]:
    name, _, spec = text.partition("=")
    kind, _, path = spec.partition(":")
    if not name.isidentifier() or kind not in ("rows", "fused") or not Path(path).is_file():
        raise SystemExit(f"variant {text!r}: expected NAME=rows:PATH or NAME=fused:PATH with an existing file")
    return name, kind, Path(path)


def parse_config(text: str) -> tuple[int, int, int, bool]:
    gated = text.endswith("z")
    batch, dim, length = (int(v) for v in text.rstrip("z").split("x"))
    return batch, dim, length, gated


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME=rows:PATH or NAME=fused:PATH")
    parser.add_argument("--configs", help="comma-separated BATCHxDIMxL, z appended for the gate (default: make "
                                          "bench's configurations from L = 2^15)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    variants = {"own": fused.selective_scan_fused}
    for name, kind, path in map(parse_variant, args.variants):
        variants[name] = scan_function(kind, load_variant(name, path))
    configs = ([parse_config(c) for c in args.configs.split(",")] if args.configs else
               [(b, d, length, z) for b, d, _, length, z in CONFIGS if length >= 2 ** 15 or b > 1])
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; ms, best of {args.repeats} medians")
    print("| configuration | " + " | ".join(f"fwd {n}" for n in variants) + " | "
          + " | ".join(f"fwd+bwd {n}" for n in variants) + " | largest difference |")
    print("|---" * (2 * len(variants) + 2) + "|")
    for batch, dim, length, gated in configs:
        inputs = make_inputs(batch, dim, 16, length, gated)
        own = fused.selective_scan_fused
        differences = {name: largest_difference(fn, own, inputs) for name, fn in variants.items()}
        wrong = [name for name, difference in differences.items() if not difference <= AGREE]
        if wrong:
            raise SystemExit(f"{batch} x {dim} x {length}: {', '.join(wrong)} disagree with the package's own scan "
                             f"({differences})")
        best = {name: [float("inf"), float("inf")] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                best[name] = [min(a, b) for a, b in zip(best[name], time_scan(fn, inputs))]
        print(f"| {batch} × {dim} × {length}{' z' if gated else ''} | "
              + " | ".join(f"{best[n][0]:.3f}" for n in variants) + " | "
              + " | ".join(f"{best[n][1]:.3f}" for n in variants) + f" | {max(differences.values()):.1e} |", flush=True)
        del inputs
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
