"""GPU sweep of `fused`'s tile shapes: tokens per tile and warps of each pass (the forward saves the state at every
start of the backward's tiles, which divide its own), timed at the benchmark's long configurations.

    python3 benchmarks/scan_tile_sweep.py            (make bench-tiles; ~6 minutes on an H100)

For each configuration (bf16 u/Δ/B/C, N = 16, softplus, as `make bench`) and each shape of SHAPES: fwd and fwd+bwd ms
(medians of triton.testing.do_bench), after checking that every gradient agrees with the default shape's to bf16
rounding (the shape changes only the order of operations). The forward is `fused`'s or the rows kernel's, as
`fused.forward_kind` chooses; the rows forward saves its states at the backward's tiles, so the tile size matters to
both. Prints a markdown table; the winner per row is starred.
"""
from __future__ import annotations

import torch

from mamba_bio_audio.kernels.bench import make_inputs, time_scan
from mamba_bio_audio.kernels.selective_scan import fused

CONFIGS = [(1, 1024, 16, 2 ** 15, False), (1, 1024, 16, 2 ** 19, False), (8, 2048, 16, 8192, True),
           (4, 1536, 16, 2 ** 16, True), (1, 256, 16, 2 ** 20, True), (1, 512, 16, 2 ** 20, True)]
# (forward tokens per tile, forward warps, backward tokens per tile, backward warps); None: the module's rule
SHAPES = [None, (1024, 4, 1024, 2), (1024, 4, 512, 1), (1024, 4, 256, 1), (1024, 4, 512, 2), (512, 2, 512, 1)]


def gradients(inputs) -> dict:
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out = fused.selective_scan_fused(**leaves, delta_softplus=True)
    out.backward(torch.ones_like(out))
    return {k: v.grad.float() for k, v in leaves.items() if v is not None}


def use_shape(shape, default) -> None:
    """Set `fused`'s launch shapes: (fwd tokens, fwd warps, bwd tokens, bwd warps) for every launch, or None for the
    module's rule (`default`: its SHAPES and BWD_SHAPE_FEW_PROGRAMS)."""
    fused.SHAPES.update(default[0] if shape is None else dict(fwd=shape[:2], bwd=shape[2:]))
    fused.BWD_SHAPE_FEW_PROGRAMS = default[1] if shape is None else shape[2:]


def main() -> int:
    default = dict(fused.SHAPES), fused.BWD_SHAPE_FEW_PROGRAMS
    print(f"{torch.cuda.get_device_name()}; default {default}")
    print("| batch | dim | L | z | forward | " + " | ".join(
        "default" if shape is None else "fwd {} × {}w, bwd {} × {}w".format(*shape) for shape in SHAPES)
          + " |  (fwd / fwd+bwd ms)")
    print("|---|---|---|---|---|" + "---|" * len(SHAPES))
    for batch, dim, n_state, length, with_z in CONFIGS:
        inputs = make_inputs(batch, dim, n_state, length, with_z)
        kind = fused.forward_kind(batch, dim, length, inputs["B"], inputs["C"], n_state, inputs["u"].device)
        reference = gradients(inputs)
        cells = []
        for shape in SHAPES:
            use_shape(shape, default)
            for name, grad in gradients(inputs).items():
                error = ((grad - reference[name]).norm() / reference[name].norm()).item()
                assert error < 2e-2, f"{name}: relative error {error:.2e} against the default shape"
            cells.append(time_scan(fused.selective_scan_fused, inputs))
        use_shape(None, default)
        best = min(range(len(cells)), key=lambda i: cells[i][1])
        print(f"| {batch} | {dim} | {length} | {'yes' if with_z else 'no'} | {kind} | " + " | ".join(
            ("**" if i == best else "") + f"{f:.3f} / {fb:.3f}" + ("**" if i == best else "")
            for i, (f, fb) in enumerate(cells)) + " |", flush=True)
        del inputs, reference
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
