"""Command lines of every training pipeline at toy sizes, run as `python -m mamba_bio_audio.cli` subprocesses on
2 ranks (Lightning's launcher starts the second rank by re-running the command): tests/test_multi_gpu.py runs them on
2 GPUs under FSDP, tests/reliability/test_ddp.py on 2 CPU processes under DDP (gloo)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_dna_data import random_genome, write_fasta

PIPELINES = ["audio-unet", "audio-classifier", "audio-diffusion", "dna-species", "dna-finetune"]


def run_cli(args: list[str], strategy: str, accelerator: str = "auto",
            devices: int = 2) -> subprocess.CompletedProcess:
    """`mba ARGS` on `devices` devices of `accelerator` under `strategy`, without progress bars or sanity validation."""
    command = [sys.executable, "-m", "mamba_bio_audio.cli", *args, "--trainer.accelerator", accelerator,
               "--trainer.devices", str(devices), "--trainer.strategy", strategy,
               "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def pipeline_args(pipeline: str, tmp_path: Path, out: Path, strategy: str, accelerator: str = "auto",
                  devices: int = 2) -> tuple[list[str], str]:
    """(the `mba` arguments of `pipeline` writing its run to `out`, a line its output must contain), with toy data
    written under tmp_path (dna-finetune first pretrains its backbone the same way)."""
    from test_dna_species import SPLIT, TINY

    if pipeline.startswith("audio"):
        from test_audio import make_sc09

        sc09 = make_sc09(tmp_path / "sc09", per_digit=8, seconds=0.05)
        common = ["--sc09", str(sc09), "--batch-size", "8", "--max-steps", "6", "--out", str(out)]
        return {
            "audio-unet": (["audio", "train", *common, "--model.config",
                            '{"d_model": 16, "pools": [4, 4], "n_layers": 1}', "--data.clip_len", "1024"], "test"),
            "audio-classifier": (["audio", "train-classifier", *common, "--model.d_model", "16", "--model.n_layers",
                                  "1", "--data.clip_len", "1600"], "test"),
            "audio-diffusion": (["audio", "train-diffusion", *common, "--model.diffusion_steps", "4", "--model.unet",
                                 '{"d_model": 8, "pools": [4, 4], "n_layers": 1}', "--data.clip_len", "512"],
                                "test denoising loss"),
        }[pipeline]
    if pipeline == "dna-finetune":
        from test_dna_finetune import examples, write_csv

        genome = write_fasta(tmp_path / "g.fa", random_genome(7, lengths=(20_000,)))
        pre = run_cli(["dna", "pretrain", "--fasta", str(genome), "--seq-len", "64", "--batch-size", "4", "--out",
                       str(tmp_path / "pre"), "--model.config", '{"d_model": 16, "n_layer": 2, "vocab_size": 12}',
                       "--max-steps", "2", "--trainer.limit_val_batches", "1"], strategy, accelerator, devices)
        assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
        csvs = [str(write_csv(tmp_path / f"{split}.csv", examples(n, seed)))
                for split, n, seed in (("train", 64, 1), ("valid", 16, 2), ("test", 16, 3))]
        return ["dna", "finetune", "--ckpt", str(tmp_path / "pre" / "checkpoints" / "last.ckpt"), "--train", csvs[0],
                "--valid", csvs[1], "--test", csvs[2], "--batch-size", "8", "--max-epochs", "2", "--lr", "3e-3",
                "--out", str(out)], "accuracy "
    assert pipeline == "dna-species", pipeline
    from mamba_bio_audio.data_recipes.apes import simulate_apes

    apes = tmp_path / "apes"
    simulate_apes(apes, scale=1000, chromosomes=["2", "5", "21"], progress=False)
    # the length warm-up runs too: 32, 64, then 128 bases, one 2-step epoch each
    return ["dna", "species", "--data-dir", str(apes), "--seq-len", "128", "--batch-size", "4", "--max-steps", "6",
            "--out", str(out), "--model.model_size", "null", "--model.config", str(TINY).replace("'", '"'),
            "--data.split_names", str(SPLIT).replace("'", '"'), "--data.samples_per_epoch", "16",
            "--data.eval_samples", "10", "--length_warmup.start_len", "32"], "test accuracy"
