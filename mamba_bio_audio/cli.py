"""The `mba` command line.

Each subcommand lives in a module that provides

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int

and is registered with one line in `COMMANDS`. A module is imported only when its subcommand is invoked (or its
own --help is asked for), so `mba --help` and `mba info` stay fast and work even if another subcommand's module is
broken. A group of subcommands (`mba data ...`) is one module whose `add_arguments` adds its own subparsers.

A subcommand that forwards further options to another parser (`mba dna pretrain` to LightningCLI) sets the default
`_pass_through=True`; it receives the options it does not know as `args.extra`.

Exit codes: 0 success; 1 an error reported by the subcommand (a ValueError or file error raised from `run`, printed
as one line on stderr); 2 a usage error (unknown subcommand or option, or no subcommand at all); 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, NamedTuple, Sequence

from .errors import MbaError

PROG = "mba"


class Command(NamedTuple):
    name: str
    module: str  # dotted path of a module with add_arguments(parser) and run(args) -> int
    help: str


COMMANDS: list[Command] = [
    Command("info", "mamba_bio_audio.cli", "print versions, devices and the active scan backend"),
    Command("demo", "mamba_bio_audio.demo", "train a small Mamba LM on a real genome on the CPU and sample from it"),
    Command("bench", "mamba_bio_audio.bench", "measure training throughput (tokens/s) of Mamba LMs on this machine"),
    Command("data", "mamba_bio_audio.data_recipes.cli", "prepare data: index a FASTA, genome recipes"),
    Command("dna", "mamba_bio_audio.pipelines.cli",
            "DNA pipelines: pretrain, evaluate, generate, context-sweep, species, finetune, classify, embed"),
    Command("audio", "mamba_bio_audio.pipelines.audio_cli",
            "audio pipelines: train, generate, context-sweep, train-classifier, train-diffusion, evaluate"),
]

# Errors that mean "bad input" rather than "bug": reported as one line, without a traceback.
USER_ERRORS = (MbaError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

OPTIONAL_PACKAGES = ("triton", "torchaudio", "lightning", "pysam", "soundfile", "h5py")


# ----------------------------------------------------------------------------------------------------------- info
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`mba info` options."""
    parser.add_argument("--imports", action="store_true",
                        help="also import each optional package to check that it loads (slower: seconds)")


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _package_line(name: str, check_import: bool) -> str:
    version = _dist_version(name)
    if version is None:
        return "not installed"
    if check_import:
        try:
            importlib.import_module(name)
        except Exception as err:  # a broken install (e.g. torchaudio built for another torch) is worth reporting
            return f"{version} (import fails: {type(err).__name__}: {_one_line(err)})"
    return version


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(err).__name__


def _device_lines(torch) -> list[str]:
    if torch.cuda.is_available():
        lines = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {props.name} (compute capability {props.major}.{props.minor}, "
                         f"{props.total_memory / 2**30:.1f} GiB)")
        return lines
    return [f"CPU ({torch.get_num_threads()} threads; CUDA not available)"]


def run(args: argparse.Namespace) -> int:
    """`mba info`: versions, devices, scan backends. Reports a bad MBA_SCAN_BACKEND instead of failing on it."""
    import platform

    import torch

    import mamba_bio_audio
    from mamba_bio_audio import kernels

    cuda_build = torch.version.cuda or (f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else None)
    rows = [
        ("mamba_bio_audio", mamba_bio_audio.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", f"{torch.__version__} (CUDA build: {cuda_build})" if cuda_build
         else f"{torch.__version__} (CPU build)"),
    ]
    rows += [(name, _package_line(name, args.imports)) for name in OPTIONAL_PACKAGES]
    devices = _device_lines(torch)
    rows.append(("device", devices[0]))
    rows += [("", line) for line in devices[1:]]

    forced = os.environ.get(kernels.BACKEND_ENV)
    rows.append((kernels.BACKEND_ENV, forced if forced is not None else "(unset)"))
    for device in ("cpu", "cuda"):
        try:
            backend = kernels.active_backend(device)
        except (ValueError, RuntimeError) as err:
            backend = f"error: {err}"
        rows.append((f"scan backend ({device})", backend))
    rows.append(("available backends", ", ".join(kernels.available_backends())))

    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ------------------------------------------------------------------------------------------------------- dispatch
def _load(command: Command):
    module = importlib.import_module(command.module)
    for attr in ("add_arguments", "run"):
        if not callable(getattr(module, attr, None)):
            raise TypeError(f"{command.module} must define {attr}() to serve as `{PROG} {command.name}`")
    return module


def _selected(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv: its first argument that does not start with '-'."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser. Every subcommand is listed; only `command` (if given) gets its full arguments,
    which imports its module."""
    from mamba_bio_audio import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="Mamba selective state space models for DNA and raw audio.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.name == command:
            module = _load(cmd)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _selected(argv)
    parser = build_parser(name if name in {c.name for c in COMMANDS} else None)
    if not argv:
        parser.print_help()
        return 2
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "_pass_through", False):  # only commands that forward options accept them
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help, --version (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    args.extra = extra
    run_command: Callable[[argparse.Namespace], int] | None = getattr(args, "_run", None)
    if run_command is None:  # only options, no subcommand
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required", file=sys.stderr)
        return 2
    try:
        code = run_command(args)
    except USER_ERRORS as err:
        if args.traceback:
            raise
        print(f"{PROG} {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (`mba info | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 1
    finally:
        _leave_process_group()
    return 0 if code is None else int(code)


def _leave_process_group() -> None:
    """Destroy the torch.distributed process group a training command (DDP, FSDP, several nodes) left initialised.
    Left to interpreter exit, gloo's worker threads can be torn down after Python and abort the process (SIGABRT,
    "terminate called without an active exception"): the rank then exits with -6 even though its work succeeded, and
    torchrun's agents on the other nodes wait at their exit barrier for it."""
    distributed = sys.modules.get("torch.distributed")  # never imported here: only if a command used it
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
