"""Static counts of the selective scan's and the generation's Triton kernels compiled for an H100 (sm_90), on any
machine, GPU or not.

    python3 benchmarks/sass_counts.py            (make sass-counts; a few minutes on 2 CPU cores)

Compiles the kernels (`fused`'s forward, its backward with one and with two channels per program, the rows forward,
the complex-A pair) at their default shapes for sm_90 with `triton.compile` and a `GPUTarget`, bf16 inputs, all
options (z, D, Δ-bias, softplus), N = 16; pointer and length arguments marked divisible by 16 as Triton's JIT does for
real shapes; L a multiple of the tile (`EVEN_L`), except for the backward of two channels, which never takes it.
Also the persistent generation kernel (`kernels/unet_generate`) for the SC09 U-Net in bf16, with the arguments
`UNetGenerator.run` passes: at its two default launch shapes (batch 1; more programs than SMs) and at 16 rows per
program (its products on the tensor cores); and the fused block step's two kernels (`kernels/mamba_block_step`) as
launched for the SC09 U-Net's bf16 blocks (d_model 64 at batch 1 and 256, d_model 128 at batch 256), PDL on: whether
a fine and a coarse program fit on one SM side by side is a matter of their registers.
Then reads the cubin with the `cuobjdump` that ships with Triton and prints, per kernel: registers per thread, bytes
of stack, spill instructions (STL/LDL), warp shuffles (SHFL), barriers (BAR), multi-function-unit ops (MUFU: exp2,
log2, reciprocal) and all instructions. The counts are of the code, not of its execution: a loop body counts once.
No timing: that needs the GPU (`make bench`).
"""
from __future__ import annotations

import collections
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mamba_bio_audio.kernels.selective_scan import fused, fused_complex, fused_rows
from mamba_bio_audio.kernels.selective_scan.triton_tiles import tokens_per_thread
from mamba_bio_audio.kernels.unet_generate import fused as unet_fused

BF16_POINTERS = {"u_ptr", "dt_ptr", "z_ptr", "pre_ptr", "dout_ptr", "du_ptr", "ddt_ptr", "dz_ptr"}
DIVISIBLE = {"L", "dim", "n_state"}
OPTIONS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, SUMMARY=False)


def compile_sm90(kernel, constexprs: dict, num_warps: int, bf16: set[str] = frozenset(), types: dict | None = None):
    """The kernel compiled for sm_90: pointers fp32 unless named in bf16, other arguments int32, except the types
    given by name in `types` (Triton's signature strings: "*i64", "fp32", ...)."""
    signature = {}
    for param in kernel.params:
        if param.name in constexprs:
            signature[param.name] = "constexpr"
        elif types and param.name in types:
            signature[param.name] = types[param.name]
        elif param.name.endswith("_ptr"):
            signature[param.name] = "*bf16" if param.name in bf16 else "*fp32"
        else:
            signature[param.name] = "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, param in enumerate(kernel.params)
             if param.name.endswith("_ptr") or param.name in DIVISIBLE}
    source = ASTSource(kernel, signature, constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def counts(compiled) -> dict:
    """Registers, stack bytes and instruction counts of a compiled kernel's SASS."""
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", cubin.name], capture_output=True, text=True, check=True).stdout
    registers, stack = re.search(r"REG:(\d+).*?STACK:(\d+)", usage).groups()
    ops = collections.Counter(op.split(".")[0] for op in
                              re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass, re.M))
    return dict(registers=int(registers), stack=int(stack), spills=ops["STL"] + ops["LDL"], shfl=ops["SHFL"],
                bar=ops["BAR"], mufu=ops["MUFU"], instructions=sum(ops.values()))


def main() -> int:
    print(f"Triton {triton.__version__}, sm_90, bf16 inputs, N = 16, z, D, Δ-bias, softplus")
    print("| kernel | registers | stack bytes | STL/LDL | SHFL | BAR | MUFU | instructions |")
    print("|---|---|---|---|---|---|---|---|")
    fwd_t, fwd_warps = fused.SHAPES["fwd"]
    bwd_t, bwd_warps = fused.SHAPES["bwd"]
    fused_flags = dict(OPTIONS, B_CONST=False, C_CONST=False, BLOCK_N=16)
    kernels = [
        (f"`fused` forward, {tokens} tokens, {warps} warps, {states} state(s) per scan", fused._fwd_kernel,
         dict(fused_flags, HAS_H0=False, SAVE_PRE=True, BLOCK_T=tokens, SAVE_T=bwd_t, STATES=states,
              PER_THREAD=tokens_per_thread(tokens, warps, 2), EVEN_L=True,
              STAGES=fused.FWD_STAGES_HALF_TILES if states == 2 else 1), warps,
         {"B_ptr", "C_ptr"}) for states, tokens, warps in ((1, fwd_t, fwd_warps), (2, fwd_t // 2, fwd_warps // 2))] + [
        (f"`fused` backward, {bwd_t} tokens, {bwd_warps} warps", fused._bwd_kernel,
         dict(fused_flags, HAS_DHLAST=False, PTX=True, BLOCK_C=1, BLOCK_T=bwd_t, EVEN_L=True,
              PER_THREAD=tokens_per_thread(bwd_t, bwd_warps, 2), WARPS=bwd_warps),
         bwd_warps, {"B_ptr", "C_ptr"}),
        (f"`fused` backward, 2 channels × {bwd_t // 2} tokens, {bwd_warps} warps", fused._bwd_kernel,
         dict(fused_flags, HAS_DHLAST=False, PTX=True, BLOCK_C=2, BLOCK_T=bwd_t // 2, EVEN_L=False,
              PER_THREAD=tokens_per_thread(bwd_t // 2, bwd_warps, 2), WARPS=bwd_warps),
         bwd_warps, {"B_ptr", "C_ptr"}),
        (f"rows forward, {fused_rows.Q} tokens × {fused_rows.BLOCK_D} channels, {fused_rows.WARPS} warps",
         fused_rows._rows_fwd_kernel,
         dict(OPTIONS, N=16, BLOCK_D=fused_rows.BLOCK_D, Q=fused_rows.Q, SAVE_EVERY=bwd_t // fused_rows.Q,
              HAS_H0=False, SAVE_PRE=True, STAGES=fused_rows.STAGES), fused_rows.WARPS, set()),
    ]
    complex_fwd_t, complex_fwd_warps = fused_complex.SHAPES["fwd"]
    for kind, kernel, flags in (("fwd", fused_complex._fwd_kernel_complex,
                                 dict(HAS_H0=False, PER_THREAD=tokens_per_thread(complex_fwd_t, complex_fwd_warps, 2))),
                                ("bwd", fused_complex._bwd_kernel_complex, dict(HAS_DHLAST=False))):
        block_t, warps = fused_complex.SHAPES[kind]
        constexprs = dict(OPTIONS, B_CONST=False, C_CONST=False, BLOCK_N=16, BLOCK_T=block_t, **flags)
        kernels.append((f"complex-A {kind}, {block_t} tokens, {warps} warps", kernel, constexprs, warps, set()))
    for name, kernel, constexprs, warps, bf16_bc in kernels:
        row = counts(compile_sm90(kernel, constexprs, warps, BF16_POINTERS | bf16_bc))
        print(f"| {name} | " + " | ".join(str(v) for v in row.values()) + " |", flush=True)
    for rows, warps, tile in ((1, unet_fused.WARPS, unet_fused.TILE_ELEMENTS), (1, *unet_fused.MANY_PROGRAMS),
                              (16, 8, 8192)):
        row = counts(compile_generation_sm90(rows, warps, tile))
        print(f"| generation, SC09 U-Net bf16, {rows} row(s) per program, {warps} warps, tile {tile} | "
              + " | ".join(str(v) for v in row.values()) + " |", flush=True)
    for d_model, batch in ((64, 1), (64, 256), (128, 256)):
        for name, compiled in compile_block_step_sm90(d_model, batch):
            row = counts(compiled)
            print(f"| block step `{name}`, d_model {d_model}, batch {batch}, bf16 | "
                  + " | ".join(str(v) for v in row.values()) + " |", flush=True)
    return 0


def _compile_caught(kernel, args: tuple, kwargs: dict, **overrides):
    """A Triton kernel compiled for sm_90 with the arguments of a launch caught on the CPU (see `_catching`): the
    constexprs as launched (with `overrides`), the other arguments' types from their values."""
    import torch

    kinds = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64", torch.int64: "*i64",
             torch.int32: "*i32"}
    constexprs = {k: v for k, v in kwargs.items() if k not in ("num_warps", "launch_pdl")} | overrides
    runtime = [p.name for p in kernel.params if p.name not in constexprs]
    types = {name: kinds[value.dtype] if isinstance(value, torch.Tensor) else "fp32" if isinstance(value, float)
             else "i32" for name, value in zip(runtime, args)}
    return compile_sm90(kernel, constexprs, kwargs["num_warps"], types=types)


class _Catching:
    """Stands in for a Triton kernel: `kernel[grid](*args, **kwargs)` records the launch instead of running it."""

    def __init__(self):
        self.args, self.kwargs = (), {}

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.args, self.kwargs = args, kwargs
        return launch


def compile_block_step_sm90(d_model: int, batch: int) -> list:
    """The fused block step's two kernels (`kernels/mamba_block_step`) compiled for sm_90 as they are launched for a
    bf16 block of the SC09 U-Net's shapes (real A) at `batch` rows on an H100: launches caught on the CPU, PDL on."""
    from unittest import mock

    import torch

    from mamba_bio_audio.kernels.mamba_block_step import fused as step
    from mamba_bio_audio.modules import Block
    from mamba_bio_audio.modules.mamba import Mamba

    block = Block(d_model, Mamba(d_model, layer_idx=0)).bfloat16()
    mixer = block.mixer
    conv_state, ssm_state = mixer.allocate_inference_cache(batch)
    caught = {"_step_in_kernel": _Catching(), "_step_ssm_kernel": _Catching()}
    with mock.patch.multiple(step, **caught):
        step.mamba_block_step_kernel(
            torch.zeros(batch, d_model, dtype=torch.bfloat16), torch.zeros(batch, d_model), block.norm.weight,
            block.norm.eps, mixer.in_proj.weight, mixer.conv1d.weight[:, 0], mixer.conv1d.bias, mixer.x_proj.weight,
            mixer.dt_proj.weight, mixer.dt_proj.bias, mixer.A_log, mixer.D, mixer.out_proj.weight, conv_state,
            ssm_state)
    return [(name, _compile_caught(getattr(step, name), launch.args, launch.kwargs, PDL=True))
            for name, launch in caught.items()]


def compile_generation_sm90(rows: int, warps: int, tile: int):
    """The persistent generation kernel compiled for sm_90 as `UNetGenerator.run` would launch it for the SC09 U-Net
    in bf16 (random weights, 256 rows, no top-p): the launch's arguments are caught on the CPU instead of run, and
    their types make the signature."""
    import os
    from unittest import mock

    import torch

    from mamba_bio_audio.models.audio_unet import AudioUNet, audio_unet_config

    model = AudioUNet(audio_unet_config("sc09")).bfloat16().eval()
    with mock.patch.dict(os.environ, TRITON_INTERPRET="1"):  # the constructor's check for a CPU model
        generator = unet_fused.UNetGenerator(model, 256, 128, block_rows=rows, num_warps=warps, tile_elements=tile)
    caught = _Catching()
    with mock.patch.object(unet_fused, "_unet_generate_kernel", caught):
        generator.run(16, torch.zeros(256, 16, dtype=torch.int64))
    return _compile_caught(unet_fused._unet_generate_kernel, caught.args, caught.kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
