"""The `mba` command line: help, `mba info`, dispatch and error reporting."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mamba_bio_audio import cli
from mamba_bio_audio.kernels.selective_scan.numba_cpu import numba_available


def mba(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m mamba_bio_audio.cli ARGS` (the module behind the `mba` script) in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k != "MBA_SCAN_BACKEND"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mamba_bio_audio.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def info_rows(stdout: str) -> dict[str, str]:
    rows = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("  ")
        if key.strip():
            rows[key.strip()] = value.strip()
    return rows


def test_console_script_is_declared():
    from importlib import metadata

    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("mba") == "mamba_bio_audio.cli:main"


def test_installed_mba_script_runs():
    script = Path(sys.executable).with_name("mba")
    assert script.is_file(), f"{script}: the `mba` console script is not installed next to {sys.executable}"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: mba" in result.stdout


def test_help_lists_every_command():
    result = mba("--help")
    assert result.returncode == 0, result.stderr
    for command in cli.COMMANDS:
        assert command.name in result.stdout
    assert "usage: mba" in result.stdout


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_subcommand_formats_its_help():
    """Every `mba COMMAND [TASK] --help` renders (a stray % in a help string breaks argparse's formatting)."""
    for command in cli.COMMANDS:
        parser = cli.build_parser(command.name)
        for name, sub in _subparsers(parser):
            if name != command.name:
                continue
            assert sub.format_help()
            for task, subsub in _subparsers(sub):
                assert subsub.format_help(), task


def test_no_arguments_prints_help_and_fails():
    result = mba()
    assert result.returncode == 2
    assert "usage: mba" in result.stdout and "info" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = mba("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_only_options_is_a_usage_error():
    result = mba("--traceback")
    assert result.returncode == 2 and "a command is required" in result.stderr


def test_version():
    import mamba_bio_audio

    result = mba("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mba {mamba_bio_audio.__version__}"


def test_demo_help():
    result = mba("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: mba demo" in result.stdout


def test_info_reports_versions_device_and_torch_backend_on_cpu():
    import torch

    result = mba("info")
    assert result.returncode == 0, result.stderr
    rows = info_rows(result.stdout)
    assert rows["torch"].startswith(torch.__version__)
    assert rows["python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert rows["mamba_bio_audio"] == "0.1.0"
    for name in cli.OPTIONAL_PACKAGES:
        assert name in rows
    assert rows["scan backend (cpu)"] == ("numba" if numba_available() else "torch")
    assert rows["MBA_SCAN_BACKEND"] == "(unset)"
    assert "torch" in rows["available backends"].split(", ")
    if not torch.cuda.is_available():
        assert rows["device"].startswith("CPU (") and "threads" in rows["device"]


def test_info_honours_backend_env():
    result = mba("info", env={"MBA_SCAN_BACKEND": "naive"})
    assert result.returncode == 0, result.stderr
    rows = info_rows(result.stdout)
    assert rows["MBA_SCAN_BACKEND"] == "naive"
    assert rows["scan backend (cpu)"] == "naive"
    assert rows["scan backend (cuda)"] == "naive"


def test_info_reports_an_invalid_backend_env():
    result = mba("info", env={"MBA_SCAN_BACKEND": "bogus"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = info_rows(result.stdout)
    assert rows["scan backend (cpu)"].startswith("error: MBA_SCAN_BACKEND='bogus' is not a scan backend")
    assert "naive, torch, numba, triton" in rows["scan backend (cpu)"]
    assert rows["torch"]  # the rest of the report is still there


def test_info_in_process(capsys):
    assert cli.main(["info"]) == 0
    assert "scan backend (cpu)" in capsys.readouterr().out


# --- dispatch and error reporting, with a stub subcommand module written to tmp_path --------------------------------
STUB = textwrap.dedent("""
    def add_arguments(parser):
        parser.add_argument("--fail", choices=["value", "missing", "bug", "none"])

    def run(args):
        if args.fail == "value":
            raise ValueError("bad value\\nsecond line")
        if args.fail == "missing":
            raise FileNotFoundError("/nowhere.fa: no such FASTA file")
        if args.fail == "bug":
            raise KeyError("internal")
        if args.fail == "none":
            return None
        print("stub ran")
        return 3
""")


@pytest.fixture
def stub_command(tmp_path, monkeypatch):
    (tmp_path / "mba_stub_command.py").write_text(STUB)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + [cli.Command("stub", "mba_stub_command", "a test stub")])
    yield "stub"
    sys.modules.pop("mba_stub_command", None)


def test_run_return_value_is_the_exit_code(stub_command, capsys):
    assert cli.main([stub_command]) == 3
    assert capsys.readouterr().out == "stub ran\n"
    assert cli.main([stub_command, "--fail", "none"]) == 0


@pytest.mark.parametrize("kind, message", [("value", "mba stub: error: bad value; second line"),
                                           ("missing", "mba stub: error: /nowhere.fa: no such FASTA file")])
def test_user_errors_are_one_line(stub_command, capsys, kind, message):
    assert cli.main([stub_command, "--fail", kind]) == 1
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert captured.out == ""


def test_traceback_flag_reraises(stub_command):
    with pytest.raises(ValueError, match="bad value"):
        cli.main(["--traceback", stub_command, "--fail", "value"])


def test_bugs_are_not_hidden(stub_command):
    with pytest.raises(KeyError):
        cli.main([stub_command, "--fail", "bug"])


def test_subcommand_usage_error(stub_command, capsys):
    assert cli.main([stub_command, "--fail", "nonsense"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_other_command_modules_are_not_imported(stub_command, monkeypatch):
    monkeypatch.delitem(sys.modules, "mba_stub_command", raising=False)
    assert cli.main(["info"]) == 0
    assert "mba_stub_command" not in sys.modules


def test_a_module_without_run_is_rejected(tmp_path, monkeypatch):
    (tmp_path / "mba_broken_command.py").write_text("def add_arguments(parser):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + [cli.Command("broken", "mba_broken_command", "no run()")])
    with pytest.raises(TypeError, match="must define run"):
        cli.main(["broken"])
    sys.modules.pop("mba_broken_command", None)


def test_training_commands_take_devices_num_nodes_and_strategy(tmp_path, capsys):
    """--devices, --num-nodes and --strategy stand for --trainer.devices, --trainer.num_nodes and --trainer.strategy
    in every training command (common.build_cli, which all of them build their LightningCLI with); both forms may be
    given, but not with different values."""
    pytest.importorskip("lightning")
    pytest.importorskip("pysam")
    from lightning.pytorch.strategies import DDPStrategy

    from mamba_bio_audio.pipelines.dna_pretrain import build_cli

    fasta = str(tmp_path / "g.fa")  # not read: the data module only opens it at fit
    options = ["--data.fasta", fasta, "--model.config", '{"d_model": 16, "n_layer": 1, "vocab_size": 12}',
               "--trainer.accelerator", "cpu", "--devices", "2", "--num-nodes=3", "--strategy", "ddp",
               "--trainer.devices", "2"]
    trainer = build_cli(options, run_dir=str(tmp_path)).trainer
    assert (trainer.num_devices, trainer.num_nodes, type(trainer.strategy)) == (2, 3, DDPStrategy)
    capsys.readouterr()  # Lightning's messages about the trainer
    assert cli.main(["dna", "pretrain", "--fasta", fasta, "--out", str(tmp_path), "--trainer.devices", "1",
                     "--devices", "2"]) == 1
    assert capsys.readouterr().err == ("mba dna: error: --devices is short for --trainer.devices; they were given "
                                       "different values: --devices 2, --trainer.devices 1\n")


@pytest.mark.parametrize("command", [["dna", "pretrain"], ["dna", "species"], ["dna", "finetune"],
                                     ["dna", "context-sweep"], ["audio", "train"], ["audio", "context-sweep"],
                                     ["audio", "train-classifier"]])
def test_training_commands_help_names_the_passed_through_options(command, capsys):
    assert cli.main([*command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "go to LightningCLI" in text and "--devices N, --num-nodes N and --strategy ddp|fsdp" in text
