"""GPU benchmark of the selective scan against the reference CUDA kernel's H100 figures.

    python -m mamba_bio_audio.kernels.bench [--reference ../shared/reference/h100_selective_scan_reference.json]

For each configuration of the reference table: fwd and fwd+bwd ms (median of triton.testing.do_bench) of the
fused Triton scan (which forward ran, `fused` or `fused_rows`, and the other one's fwd ms; also its fwd and fwd+bwd
replayed from CUDA graphs, which leave out the host's launch cost that bounds the short configs) and of the chunked
PyTorch scan (up to --torch-max-len), bf16 u/Δ/B/C, fp32 A/D/Δ-bias, softplus, B and C shared by all channels; the
ratio to the reference kernel's time; the forward's HBM floor (bytes it must move over the copy bandwidth measured
in the same run) and exp floor (batch·dim·L·N exps over the exp2 rate measured in the same run). Then the complex-A
scan at the sizes of COMPLEX_CONFIGS, FlashAttention-2 through torch SDPA (causal, 16 heads of 64, bf16) at the
same lengths as above, and the model-level figures. Between the scan table and those: the host's time per call at
the two short configurations, with and without the Triton launches (`--only-host` prints only that table).

`--write BENCHMARKS.md` (what `make bench` passes) also puts everything printed into that file, between the markers
BEGIN and END, with the command, the date and the commit: the block is replaced by each run (inserted before the
file's second `## ` section the first time), and the file is replaced whole, never left half-written. The other
sections of BENCHMARKS.md are the curated history, written by hand.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

CONFIGS = [(1, 1024, 16, 2 ** 11, False), (1, 1024, 16, 2 ** 13, False), (1, 1024, 16, 2 ** 15, False),
           (1, 1024, 16, 2 ** 17, False), (1, 1024, 16, 2 ** 19, False), (8, 2048, 16, 2048, True),
           (8, 2048, 16, 8192, True), (4, 1536, 16, 2 ** 16, True), (1, 256, 16, 2 ** 20, True),
           (1, 512, 16, 2 ** 20, True)]


BEGIN = ("<!-- make bench: begin (written by `python -m mamba_bio_audio.kernels.bench --write`; each run replaces it)"
         " -->")
END = "<!-- make bench: end -->"


class _Tee(io.TextIOBase):
    """A text stream writing to several streams at once."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def commit_label(root: Path) -> str:
    """The checkout's short commit, "+ local changes" when its tracked files differ from it; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + local changes" if dirty else head


def results_block(printed: str, command: str, commit: str, when: datetime.datetime) -> str:
    """The block `--write` puts into BENCHMARKS.md: a section with the command, date and commit, then `printed` (the
    run's tables, whose first line names the GPU and torch)."""
    return (f"{BEGIN}\n## Latest `make bench` run ({when:%Y-%m-%d %H:%M} UTC, commit {commit})\n\n"
            f"Command: `{command}`.\nWritten by the benchmark itself; the sections below are the curated history.\n\n"
            f"{printed.strip()}\n{END}\n")


def with_results(text: str, block: str) -> str:
    """text (a BENCHMARKS.md) with its make-bench block replaced by block; where it has none, block goes before its
    second `## ` section (after the digest), or at its end."""
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        return text[:start] + block + "\n" + text[end + len(END):].lstrip("\n")
    if start >= 0 or end >= 0:
        raise ValueError(f"BENCHMARKS.md has one make-bench marker without the other ({BEGIN!r} … {END!r})")
    sections = [match.start() for match in re.finditer(r"^## ", text, re.MULTILINE)]
    if len(sections) < 2:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + block
    return text[:sections[1]] + block + "\n" + text[sections[1]:]


def write_results(path: Path, block: str) -> None:
    """Put block into the file at path (`with_results`), replacing the file whole (`atomic_path`)."""
    from mamba_bio_audio.io import atomic_path

    text = path.read_text() if path.exists() else ""
    with atomic_path(path) as tmp:
        tmp.write_text(with_results(text, block))


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write)."""
    import triton

    x = torch.empty(2 ** 28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3)


@functools.cache
def _exp_rate_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def exp_chain(out_ptr, n_iter, BLOCK: tl.constexpr):
        """BLOCK independent chains x ← exp2(−x) per program (8 per thread at 4 warps: enough to fill the pipes)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = offs.to(tl.float32) * 1e-9
        for _ in range(n_iter):
            x = tl.exp2(-x)
        tl.store(out_ptr + offs, x)

    return exp_chain


def exp_rate() -> float:
    """exp2 evaluations per second that a Triton kernel reaches on this GPU (every SM busy)."""
    import triton

    block, n_iter = 1024, 4096
    programs = 16 * torch.cuda.get_device_properties(0).multi_processor_count
    out = torch.empty(programs * block, device="cuda")
    kernel = _exp_rate_kernel()
    ms = triton.testing.do_bench(lambda: kernel[(programs,)](out, n_iter, BLOCK=block, num_warps=4))
    return programs * block * n_iter / (ms * 1e-3)


def sdpa_rows(lengths) -> None:
    """FlashAttention-2 through torch SDPA, causal, batch 1, 16 heads of 64, bf16: fwd and fwd+bwd ms."""
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print("\n| FlashAttention-2 (SDPA, causal, 16 × 64, bf16) L | fwd ms | fwd+bwd ms |\n|---|---|---|")
    for length in lengths:
        q, k, v = (torch.randn(1, 16, length, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            with torch.no_grad():
                fwd = triton.testing.do_bench(attend)
            dout = torch.randn_like(q)
            fwd_bwd = triton.testing.do_bench(lambda: attend().backward(dout), grad_to_none=[q, k, v])
        print(f"| {length} | {fwd:.3f} | {fwd_bwd:.3f} |", flush=True)
        del q, k, v


COMPLEX_CONFIGS = [(8, 256, 16, 2 ** 14), (2, 512, 16, 2 ** 16), (1, 256, 16, 2 ** 18)]


def complex_rows(torch_max_len: int) -> None:
    """The complex-A scan (the YouTubeMix U-Net's SSM): fwd and fwd+bwd ms of the fused Triton kernels and of the
    chunked PyTorch scan; bf16 u/Δ/z, complex64 A (S4D-Lin: −1/2 + iπn) and B, C shared by all channels."""
    from .selective_scan.chunked import selective_scan_chunked
    from .selective_scan.fused import selective_scan_fused

    print("\n| complex A: batch | dim | L | triton fwd ms | triton fwd+bwd ms | torch fwd+bwd ms |\n"
          "|---|---|---|---|---|---|")
    for batch, dim, n_state, length in COMPLEX_CONFIGS:
        inputs = make_inputs(batch, dim, n_state, length, True)
        g = torch.Generator(device="cuda").manual_seed(1)
        inputs["A"] = torch.complex(torch.full((dim, n_state), -0.5, device="cuda"),
                                    torch.pi * torch.arange(n_state, device="cuda").float().expand(dim, n_state))
        inputs["B"], inputs["C"] = (torch.randn(batch, 1, n_state, length, generator=g, device="cuda",
                                                dtype=torch.complex64) for _ in range(2))
        fwd, fwd_bwd = time_scan(selective_scan_fused, inputs)
        torch_fb = time_scan(selective_scan_chunked, inputs)[1] if length <= torch_max_len else float("nan")
        print(f"| {batch} | {dim} | {length} | {fwd:.3f} | {fwd_bwd:.3f} | {torch_fb:.3f} |", flush=True)
        del inputs
        torch.cuda.empty_cache()


def make_inputs(batch, dim, n_state, length, with_z, device="cuda"):
    g = torch.Generator(device=device).manual_seed(0)
    bf = dict(device=device, dtype=torch.bfloat16)
    inputs = dict(u=torch.randn(batch, dim, length, generator=g, **bf),
                  delta=torch.randn(batch, dim, length, generator=g, **bf),
                  A=-torch.rand(dim, n_state, device=device, generator=g) * n_state,
                  B=torch.randn(batch, 1, n_state, length, generator=g, **bf),
                  C=torch.randn(batch, 1, n_state, length, generator=g, **bf),
                  D=torch.ones(dim, device=device), delta_bias=torch.full((dim,), -4.0, device=device),
                  z=torch.randn(batch, dim, length, generator=g, **bf) if with_z else None)
    return inputs


@contextlib.contextmanager
def _env(name: str, value: str):
    """The environment variable `name` set to `value` inside the block, restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def time_scan(fn, inputs, backward: bool = True) -> tuple[float, float]:
    """fwd ms and fwd+bwd ms (nan without `backward`), medians of triton.testing.do_bench."""
    import triton

    leaves = {k: (v.requires_grad_() if v is not None else None) for k, v in inputs.items()}
    with torch.no_grad():
        fwd = triton.testing.do_bench(lambda: fn(**leaves, delta_softplus=True))
    if not backward:
        return fwd, float("nan")
    out = fn(**leaves, delta_softplus=True)
    dout = torch.randn_like(out)
    del out

    def fwd_bwd():
        fn(**leaves, delta_softplus=True).backward(dout)

    return fwd, triton.testing.do_bench(fwd_bwd, grad_to_none=[v for v in leaves.values() if v is not None])


def time_graphs(fn, inputs) -> tuple[float, float]:
    """fwd ms (no grad) and fwd+bwd ms of `fn` replayed from CUDA graphs: the GPU's time without the host's launch
    cost (medians of triton.testing.do_bench over graph replays)."""
    import triton

    with torch.no_grad():
        fn(**inputs, delta_softplus=True)  # compiled before the capture
        fwd = triton.testing.do_bench_cudagraph(lambda: fn(**inputs, delta_softplus=True))
    leaves = {k: (v.detach().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    dout = torch.randn_like(inputs["u"])

    def fwd_bwd():
        for v in leaves.values():
            if v is not None:
                v.grad = None
        fn(**leaves, delta_softplus=True).backward(dout)

    side = torch.cuda.Stream()  # warm-up on a side stream, as CUDA graph capture asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fwd_bwd()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fwd_bwd()
    return fwd, triton.testing.do_bench(graph.replay)


def host_time(fn, inputs, calls: int = 300) -> dict[str, float]:
    """µs per call of `fn`'s forward (no grad) and fwd+bwd, issued back to back without a sync: on a GPU, the host's
    time per call wherever the host is the bottleneck (a short scan). Then the same with the fused kernels' Triton
    launches stubbed out (`launch_passes`): our Python, the torch ops and autograd alone. The difference is Triton's
    launch. Returns fwd, fwd_bwd, fwd_no_launch, fwd_bwd_no_launch."""
    import time
    from unittest import mock

    from .selective_scan import fused, fused_rows

    leaves = {k: (v.detach().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    dout = torch.randn_like(inputs["u"])
    sync = torch.cuda.synchronize if inputs["u"].is_cuda else (lambda: None)

    def fwd():
        with torch.no_grad():
            fn(**leaves, delta_softplus=True)

    def fwd_bwd():
        fn(**leaves, delta_softplus=True).backward(dout)
        for leaf in leaves.values():
            if leaf is not None:
                leaf.grad = None

    def per_call(step) -> float:
        for _ in range(min(calls, 20)):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            step()
        host = (time.perf_counter() - start) / calls * 1e6
        sync()
        return host

    times = {"fwd": per_call(fwd), "fwd_bwd": per_call(fwd_bwd)}
    with mock.patch.object(fused, "launch_passes", lambda *a, **k: None), \
            mock.patch.object(fused_rows, "launch_passes", lambda *a, **k: None):
        times.update(fwd_no_launch=per_call(fwd), fwd_bwd_no_launch=per_call(fwd_bwd))
    return times


def host_rows() -> None:
    """`host_time` of the fused scan at batch 1 × 1024 channels, L = 2048 and 8192 (the two host-bound rows)."""
    from .selective_scan.fused import selective_scan_fused

    print("\n| host µs per call, 1 × 1024 × L | fwd (no grad) | without the launch | fwd+bwd | without the launches |"
          "\n|---|---|---|---|---|")
    for length in (2048, 8192):
        t = host_time(selective_scan_fused, make_inputs(1, 1024, 16, length, False))
        print(f"| L = {length} | {t['fwd']:.1f} | {t['fwd_no_launch']:.1f} | {t['fwd_bwd']:.1f} | "
              f"{t['fwd_bwd_no_launch']:.1f} |", flush=True)


def model_level() -> None:
    """A Mamba layer's fwd+bwd throughput and peak memory, then the training steps of a 6-layer, d_model 128 DNA
    model from L = 2^10 to 2^20 (the last at batch 1) (bf16 autocast, default backends)."""
    import triton

    from mamba_bio_audio.modules import Mamba

    print("\n| model-level (bf16 autocast) | ms | tokens/s | peak memory GiB |\n|---|---|---|---|")
    layer = Mamba(1024).cuda()
    x = torch.randn(8, 2048, 1024, device="cuda", requires_grad=True)

    def layer_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(x)
        out.float().sum().backward()

    torch.cuda.reset_peak_memory_stats()
    ms = triton.testing.do_bench(layer_step, grad_to_none=[x])
    print(f"| Mamba layer d_model 1024, batch 8 × 2048, fwd+bwd | {ms:.2f} | {8 * 2048 / ms * 1e3:,.0f} | "
          f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} |", flush=True)
    del layer, x
    context_scaling()  # its L = 2^20 row is the one training step of the 6-layer, d_model 128 model at batch 1


def context_scaling() -> None:
    """Training steps of the 6-layer, d_model 128 DNA LM at L = 2^10 … 2^20 with 2^20 tokens per step (batch
    2^20 / L): time, tokens/s and peak memory (bf16 autocast, AdamW)."""
    import triton

    from mamba_bio_audio import MambaConfig, MambaLMHeadModel

    print("\n| 6 × 128 DNA LM, 2^20 tokens per step | batch × L | step ms | tokens/s | peak memory GiB |\n"
          "|---|---|---|---|---|")
    for log_len in range(10, 21, 2):
        length, batch = 2 ** log_len, 2 ** (20 - log_len)
        model = MambaLMHeadModel(MambaConfig(d_model=128, n_layer=6, vocab_size=12)).cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(7, 11, (batch, length + 1), device="cuda")

        def train_step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(ids[:, :-1])
            torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        train_step()
        torch.cuda.reset_peak_memory_stats()
        ms = triton.testing.do_bench(train_step, warmup=1, rep=1)
        print(f"| L = 2^{log_len} | {batch} × {length} | {ms:.1f} | {2 ** 20 / ms * 1e3:,.0f} | "
              f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} |", flush=True)
        del model, optimizer, ids
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reference = Path(__file__).resolve().parents[1].parent / "shared/reference/h100_selective_scan_reference.json"
    parser.add_argument("--reference", type=Path, default=reference)
    parser.add_argument("--torch-max-len", type=int, default=2 ** 15)
    parser.add_argument("--only-models", action="store_true", help="skip the scan table")
    parser.add_argument("--only-host", action="store_true", help="only the host time per call")
    parser.add_argument("--write", type=Path, metavar="BENCHMARKS.md",
                        help="also put this run's tables into that file (its make-bench block)")
    parser.add_argument("--commit", help="the code's commit for --write (default: asked of git)")
    args = parser.parse_args(argv)
    if args.write is None:
        return run(args)
    printed = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        status = run(args)
    root = Path(__file__).resolve().parents[1]
    command = "python -m mamba_bio_audio.kernels.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    block = results_block(printed.getvalue(), command, args.commit or commit_label(root),
                          datetime.datetime.now(datetime.timezone.utc))
    write_results(args.write, block)
    print(f"wrote the results into {args.write}")
    return status


def run(args: argparse.Namespace) -> int:
    """The benchmark's tables, printed (`main`'s options)."""
    if args.only_models:
        model_level()
        return 0
    if args.only_host:
        host_rows()
        return 0
    from .selective_scan.chunked import selective_scan_chunked
    from .selective_scan.fused import forward_kind, selective_scan_fused

    reference = {}
    if args.reference.is_file():
        for row in json.loads(args.reference.read_text())["rows"]:
            if row["op"] == "cuda_selective_scan":
                reference[(row["B"], row["D"], row["N"], row["L"])] = row
    bandwidth, exps_per_s = copy_bandwidth(), exp_rate()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy bandwidth {bandwidth / 1e12:.2f} TB/s, "
          f"exp2 rate {exps_per_s / 1e12:.2f} T/s\n")
    print("| batch | dim | L | z | forward | triton fwd ms | fwd ms, CUDA graph | other forward's fwd ms "
          "| triton fwd+bwd ms | fwd+bwd ms, CUDA graph | torch fwd+bwd ms | ref fwd ms | ref fwd+bwd ms | fwd / ref "
          "| fwd+bwd / ref | hbm floor fwd ms | exp floor fwd ms | fwd / max floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for batch, dim, n_state, length, with_z in CONFIGS:
        inputs = make_inputs(batch, dim, n_state, length, with_z)
        kind = forward_kind(batch, dim, length, inputs["B"], inputs["C"], n_state, inputs["u"].device)
        train_kind = forward_kind(batch, dim, length, inputs["B"], inputs["C"], n_state, inputs["u"].device, True)
        fwd, fwd_bwd = time_scan(selective_scan_fused, inputs)
        with _env("MBA_SCAN_ROWS", "0" if kind == "rows" else "1"):  # the forward the rule did not choose
            other_fwd = time_scan(selective_scan_fused, inputs, backward=False)[0]
        graph_fwd, graph_fwd_bwd = time_graphs(selective_scan_fused, inputs)
        torch_fb = time_scan(selective_scan_chunked, inputs)[1] if length <= args.torch_max_len else float("nan")
        moved = batch * dim * length * 2 * (3 + with_z) + 2 * batch * n_state * length * 2
        floor = moved / bandwidth * 1e3
        exp_floor = batch * dim * length * n_state / exps_per_s * 1e3
        ref = reference.get((batch, dim, n_state, length), {})
        ref_f, ref_fb = ref.get("fwd_ms", float("nan")), ref.get("fwdbwd_ms", float("nan"))
        kinds = kind if kind == train_kind else f"{kind} (fwd+bwd: {train_kind})"
        print(f"| {batch} | {dim} | {length} | {'yes' if with_z else 'no'} | {kinds} | {fwd:.3f} | {graph_fwd:.3f} | "
              f"{other_fwd:.3f} | {fwd_bwd:.3f} | {graph_fwd_bwd:.3f} | {torch_fb:.3f} | {ref_f:.3f} | {ref_fb:.3f} | "
              f"{fwd / ref_f:.2f} | {fwd_bwd / ref_fb:.2f} | {floor:.3f} | {exp_floor:.3f} | "
              f"{fwd / max(floor, exp_floor):.1f} |", flush=True)
        del inputs
        torch.cuda.empty_cache()
    host_rows()
    complex_rows(args.torch_max_len)
    sdpa_rows([2 ** 11, 2 ** 13, 2 ** 15, 2 ** 17])
    model_level()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
