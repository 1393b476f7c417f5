"""A training process killed with SIGKILL mid-epoch resumes from its last checkpoint, repeats no step before that
checkpoint's, and ends with exactly the parameters of an uninterrupted run (CPU, deterministic); the kill never leaves
a truncated checkpoint under its final name. SIGTERM to the whole process group (a scheduler's time limit, `timeout`),
DataLoader workers included, saves the state after the last step, and the resumed run ends the same way."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("pysam")
pytest.importorskip("lightning")

from test_dna_data import random_genome, write_fasta  # noqa: E402

STEPS = 120


def command(genome, run, *extra):
    return [sys.executable, "-m", "mamba_bio_audio.cli", "dna", "pretrain", "--fasta", str(genome), "--seq-len", "64",
            "--batch-size", "4", "--out", str(run), "--max-steps", str(STEPS), "--model.config",
            '{"d_model": 16, "n_layer": 1, "vocab_size": 12, "d_state": 4}', "--checkpoint.every_n_train_steps", "5",
            "--data.max_eval_windows", "4", "--trainer.enable_progress_bar",
            "false", "--trainer.deterministic", "true", *extra]


def env():
    return {k: v for k, v in os.environ.items() if k != "MBA_SCAN_BACKEND"} | {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(genome, the uninterrupted run's last checkpoint loaded)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    genome = write_fasta(folder / "g.fa", random_genome(5, lengths=(20_000,)))  # 70 steps per epoch
    full = subprocess.run(command(genome, folder / "full"), capture_output=True, text=True, env=env(), timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    return genome, torch.load(folder / "full" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")


def assert_same_end(last, reference):
    final = torch.load(last, weights_only=False, map_location="cpu")
    assert final["global_step"] == reference["global_step"] == STEPS
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name


def wait_for_checkpoint(process, last, step):
    """Until the run's last checkpoint is at `step` or later (or 300 s, or the process ends)."""
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if last.is_file() and torch.load(last, weights_only=False, map_location="cpu")["global_step"] >= step:
            return
        time.sleep(0.02)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(uninterrupted, tmp_path):
    genome, reference = uninterrupted

    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(command(genome, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    wait_for_checkpoint(process, last, 75)  # mid-way through the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(last, weights_only=False, map_location="cpu")  # complete, never truncated
    killed_at = saved["global_step"]
    assert process.returncode == -signal.SIGKILL and 75 <= killed_at < STEPS and killed_at % 70 != 0

    resumed = subprocess.run(command(genome, run, "--resume", str(last)), capture_output=True, text=True, env=env(),
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_end(last, reference)
    # the resumed process took only the steps after the checkpoint: its log starts after killed_at
    versions = sorted((run / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    assert len(versions) == 2  # the killed process's and the resumed one's
    with open(versions[-1] / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row["step"]]
    assert steps and min(steps) >= killed_at


def test_sigterm_to_the_process_group_with_loader_workers_saves_the_last_step_and_resumes(uninterrupted, tmp_path):
    """SIGTERM to the training process and its two DataLoader workers at once (as `timeout` or a scheduler sends
    it), mid-epoch and between checkpoints: the workers leave it to the main process, which saves the state after
    its last step and exits with one line naming it; resuming from it ends with the uninterrupted run's parameters."""
    genome, reference = uninterrupted
    run = tmp_path / "terminated"
    last = run / "checkpoints" / "last.ckpt"
    workers = ("--data.num_workers", "2")
    process = subprocess.Popen(command(genome, run, *workers), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env(), start_new_session=True)  # its own process group
    wait_for_checkpoint(process, last, 76)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    saved = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    assert process.returncode == 1 and f"interrupted after step {saved}; its state is saved in {last}" in stderr
    assert 76 <= saved < STEPS, stderr[-2000:]
    resumed = subprocess.run(command(genome, run, *workers, "--resume", str(last)), capture_output=True, text=True,
                             env=env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_end(last, reference)


def test_a_context_sweep_stopped_by_sigterm_goes_on_when_run_again(tmp_path):
    """SIGTERM to a context sweep's process group mid-run: the run saves its last step, the sweep waits for it and
    says how to go on; the same command again continues the run to its last step and writes the results."""
    from mamba_bio_audio.data_recipes.apes import simulate_apes

    apes = tmp_path / "apes"
    simulate_apes(apes, scale=1000, chromosomes=["2", "5", "21"], progress=False)
    out = tmp_path / "sweep"
    sweep = [sys.executable, "-m", "mamba_bio_audio.cli", "dna", "context-sweep", "--task", "species", "--data-dir",
             str(apes), "--lengths", "128", "--seeds", "0", "--batch-size", "4", "--max-steps", "600", "--d-model",
             "16", "--n-layer", "1", "--out", str(out), "--data.split_names",
             '{"train": ["2"], "valid": ["21"], "test": ["5"]}', "--data.samples_per_epoch", "4000",
             "--data.eval_samples", "8", "--trainer.val_check_interval", "10", "--trainer.check_val_every_n_epoch",
             "null"]
    last = out / "L128-seed0" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(sweep, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(),
                               start_new_session=True)
    wait_for_checkpoint(process, last, 20)
    assert process.poll() is None, process.communicate()[1][-3000:]
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    saved = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    assert process.returncode == 1 and "stopped by SIGTERM with 0 of 1 runs finished" in stderr, stderr[-2000:]
    assert 20 <= saved < 600 and "interrupted after step" in (last.parent.parent / "run.log").read_text()
    again = subprocess.run(sweep, capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "results.csv").read_text().splitlines()[1].split(",")[4] == "600"  # steps: all of them



WORKERS_SCRIPT = """
import subprocess, sys, time
from torch.utils.data import DataLoader
from mamba_bio_audio.pipelines.common import leave_sigterm_to_the_main_process

loader = DataLoader(list(range(1000)), batch_size=2, num_workers=2, worker_init_fn=leave_sigterm_to_the_main_process)
batches = iter(loader)                       # alive until the interpreter exits, as after an interrupted fit
next(batches)
for worker in batches._workers:              # SIGTERM from another process: a scheduler's, or timeout's
    subprocess.run([sys.executable, "-c", f"import os, signal; os.kill({worker.pid}, signal.SIGTERM)"], check=True)
time.sleep(0.5)
print(sum(worker.is_alive() for worker in batches._workers), int(next(batches)[0]), flush=True)
"""


def test_loader_workers_ignore_sigterm_from_outside_and_stop_when_the_main_process_exits():
    """A DataLoader worker ignores SIGTERM from any process but its parent, so a scheduler's SIGTERM leaves the batch
    in flight to the main process; yet the main process exits: at exit, multiprocessing stops its daemonic children
    with SIGTERM and joins them, and workers that ignored their parent's SIGTERM too made that join hang forever (a
    context-sweep run said "interrupted after step 10" and never exited)."""
    try:
        run = subprocess.run([sys.executable, "-c", WORKERS_SCRIPT], capture_output=True, text=True, env=env(),
                             timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the main process did not exit within 60 s: its loader workers ignored its SIGTERM")
    assert run.returncode == 0 and run.stdout.split() == ["2", "2"], run.stderr[-2000:]
