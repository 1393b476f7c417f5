"""Multi-node training (issue 7: every training pipeline runs under DDP "on one machine or several"): two torchrun
launches on this machine play two nodes of one process each (gloo on the CPU, the standard torchrun environment with
--nnodes 2 and --node-rank 0/1), both running the same `mba dna pretrain --trainer.num_nodes 2` in one run folder,
as nodes sharing a file system do. Both must finish; Lightning must see a world of 2 over node ranks 0 and 1; the
ranks must train on different batches yet end with identical parameters (so gradients were averaged across the
nodes); only global rank 0 may write checkpoints, and the final one must load, hold the last step and those
parameters."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

pytest.importorskip("pysam")
pytest.importorskip("lightning")

from test_dna_data import random_genome, write_fasta  # noqa: E402

MAX_STEPS = 4

PROBE = textwrap.dedent('''
    import lightning as L
    import torch


    class Probe(L.Callback):
        """What this rank saw: its place in the world, its first training batch, the checkpoint files it wrote and its
        parameters at the end of training (saved as OUT/rank<global rank>.pt)."""

        def __init__(self, out: str):
            self.out, self.first_batch, self.written = out, None, []

        def setup(self, trainer, pl_module, stage):
            if stage != "fit":
                return
            io = trainer.strategy.checkpoint_io
            save = io.save_checkpoint

            def recorded(checkpoint, path, storage_options=None):
                self.written.append(str(path))
                save(checkpoint, path, storage_options)

            io.save_checkpoint = recorded

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.first_batch is None:
                self.first_batch = batch["input_ids"].clone()

        def on_train_end(self, trainer, pl_module):
            torch.save({"world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
                        "node_rank": trainer.node_rank, "global_rank": trainer.global_rank,
                        "group_size": torch.distributed.get_world_size(), "backend": torch.distributed.get_backend(),
                        "first_batch": self.first_batch, "written": self.written, "step": trainer.global_step,
                        "params": {k: v.detach().clone() for k, v in pl_module.state_dict().items()}},
                       f"{self.out}/rank{trainer.global_rank}.pt")
''')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failure_lines(output: str, tail: int = 1500) -> str:
    """What explains a node's failure, short enough to survive a CI log's truncation: its lines that name an error,
    an exception, a signal or a timeout, then the end of its output."""
    markers = ("Error", "error:", "Exception", "Traceback", "terminate", "Signal", "exitcode", "timed out", "Timeout")
    named = [line[:300] for line in output.splitlines() if any(marker in line for marker in markers)]
    return "\n".join(named[-30:]) + f"\n... last {tail} characters:\n" + output[-tail:]


def launch_nodes(tmp_path, fasta, out, timeout: float = 180) -> list[tuple[int, str]]:
    """Start both nodes' torchrun, wait for them, and return each one's (exit code, output). A node still running after
    `timeout` seconds fails the test: both are killed, with their workers (each torchrun leads a process group)."""
    (tmp_path / "multinode_probe.py").write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    port = free_port()
    probe = [{"class_path": "multinode_probe.Probe", "init_args": {"out": str(tmp_path)}}]
    mba = ["dna", "pretrain", "--fasta", str(fasta), "--seq-len", "64", "--batch-size", "4", "--max-steps",
           str(MAX_STEPS), "--out", str(out), "--model.config",
           '{"d_model": 16, "n_layer": 1, "vocab_size": 12, "d_state": 4}', "--trainer.accelerator", "cpu",
           "--trainer.devices", "1", "--trainer.num_nodes", "2", "--trainer.strategy", "ddp",
           "--trainer.val_check_interval", "2", "--data.max_eval_windows", "4", "--trainer.enable_progress_bar",
           "false", "--trainer.callbacks", json.dumps(probe)]
    logs = [tmp_path / f"node{node}.log" for node in range(2)]
    nodes = []
    for node, log in enumerate(logs):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port), "-m",
                   "mamba_bio_audio.cli", *mba]
        with open(log, "w") as handle:
            nodes.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                          start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        for process in nodes:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the nodes were still running after {timeout} s:\n" +
                    "\n".join(f"node {n}: {failure_lines(log.read_text())}" for n, log in enumerate(logs)))
    finally:
        for process in nodes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return [(process.returncode, log.read_text()) for process, log in zip(nodes, logs)]


SINGLE_RANK = textwrap.dedent('''
    import sys
    import lightning as L
    import torch.distributed as dist
    from mamba_bio_audio.cli import main


    class Seen(L.Callback):
        def on_train_end(self, trainer, pl_module):
            print("during training:", dist.is_initialized(), dist.get_backend(), dist.get_world_size())


    if __name__ == "__main__":  # LightningCLI imports this module again for the callback
        code = main(sys.argv[1:])
        print("after main:", code, dist.is_initialized())
''')


def test_training_command_destroys_its_process_group_before_exit(tmp_path):
    """A DDP run leaves no process group behind: one left to interpreter exit can abort the rank (gloo's threads torn
    down after Python: SIGABRT, exit code -6, "terminate called without an active exception") after it has
    succeeded, which left the other node's torchrun waiting at its exit barrier. One rank, world of 1, in its own
    interpreter."""
    fasta = write_fasta(tmp_path / "g.fa", random_genome(5, lengths=(4000,)))
    (tmp_path / "single_rank.py").write_text(SINGLE_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    callback = json.dumps([{"class_path": "single_rank.Seen"}])
    done = subprocess.run(
        [sys.executable, str(tmp_path / "single_rank.py"), "dna", "pretrain", "--fasta", str(tmp_path / "g.fa"),
         "--seq-len", "64", "--batch-size", "2", "--max-steps", "1", "--out", str(tmp_path / "run"), "--model.config",
         '{"d_model": 8, "n_layer": 1, "vocab_size": 12, "d_state": 4}', "--trainer.accelerator", "cpu",
         "--trainer.devices", "1", "--trainer.strategy", "ddp", "--data.max_eval_windows", "2",
         "--trainer.enable_progress_bar", "false", "--trainer.callbacks", callback],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "during training: True gloo 1" in done.stdout, done.stdout[-2000:]
    assert "after main: 0 False" in done.stdout, done.stdout[-2000:]


@pytest.mark.timeout(300)
def test_pretraining_on_two_nodes_trains_one_model_and_checkpoints_it_once(tmp_path):
    fasta = write_fasta(tmp_path / "g.fa", random_genome(3, lengths=(8000,)))
    out = tmp_path / "run"
    for node, (code, output) in enumerate(launch_nodes(tmp_path, fasta, out)):
        assert code == 0, f"node {node} exited with {code}:\n{failure_lines(output)}"

    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    for rank, seen in enumerate(ranks):
        assert (seen["global_rank"], seen["node_rank"]) == (rank, rank)
        assert seen["world_size"] == seen["group_size"] == 2 and seen["num_nodes"] == 2 and seen["backend"] == "gloo"
        assert seen["step"] == MAX_STEPS
    # different data on the two nodes, the same weights at the end: the gradients were averaged across nodes
    assert not torch.equal(ranks[0]["first_batch"], ranks[1]["first_batch"])
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, tensor in ranks[0]["params"].items():
        assert torch.equal(tensor, ranks[1]["params"][name]), name

    # checkpoints: written by global rank 0 only, each under its final name once (no -v1 copies, no leftovers)
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ranks[1]["written"] == [] and set(files) <= {os.path.basename(p) for p in ranks[0]["written"]}
    assert len(files) == 2 and files[0].startswith("best-step=") and files[1] == "last.ckpt", files
    final = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == MAX_STEPS and final["optimizer_states"] and final["loops"]
    assert final["state_dict"].keys() == ranks[0]["params"].keys()
    for name, tensor in final["state_dict"].items():
        assert torch.equal(tensor, ranks[0]["params"][name]), name
