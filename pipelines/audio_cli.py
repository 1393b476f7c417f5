"""`mba audio ...`: raw-audio pipelines on Lightning.

    mba audio train --sc09 DIR [--arch unet --preset sc09] --batch-size 16 --max-steps N
    mba audio train --audio-dir DIR --preset youtubemix --sample-len 65536 --tokens-per-batch 524288 --max-steps N

Configuration goes through LightningCLI: a YAML file (--config) and/or --data.*, --model.*, --trainer.* options
after the direct ones; `--print-config` shows the resolved configuration.
"""
from __future__ import annotations

import argparse

from .cli import _fit_then_test, _lightning_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    train = tasks.add_parser("train", help="train an autoregressive waveform model (bits per sample)",
                             description=_train.__doc__)
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--sc09", help="SC09 folder: ten digit folders, validation_list.txt, testing_list.txt")
    source.add_argument("--audio-dir", help="folder of long recordings (YouTubeMix layout), split 88/6/6% by name")
    train.add_argument("--config", help="YAML file of data, model and trainer settings (LightningCLI format)")
    train.add_argument("--arch", choices=["unet", "mamba", "transformer"])
    train.add_argument("--preset", choices=["sc09", "youtubemix"], help="Mamba U-Net preset (default sc09)")
    train.add_argument("--batch-size", type=int, help="clips per step (--sc09)")
    train.add_argument("--sample-len", type=int, help="training window in samples (--audio-dir)")
    train.add_argument("--tokens-per-batch", type=int, help="samples per step (--audio-dir)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--out", help="run folder: checkpoints, CSV and TensorBoard logs (default runs/audio)")
    train.add_argument("--resume", help="checkpoint to resume from (step, learning rate and data position)")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")
    train.set_defaults(_task=_train, _pass_through=True)


def run(args: argparse.Namespace) -> int:
    return args._task(args)


def _train(args: argparse.Namespace) -> int:
    """Train a sample-level model on 8-bit audio (mu-law by default: --data.scheme linear for linear codes), keeping
    the last and the best checkpoint (by validation bits per sample, written atomically) and CSV + TensorBoard logs in
    the run folder, then report test bits per sample with the best checkpoint. Interrupted runs continue with
    --resume RUN/checkpoints/last.ckpt. Defaults follow the paper: AdamW (0.9, 0.95), weight decay 0.1, lr 2e-3,
    10% warm-up and cosine decay, gradient clipping 0.1, bf16 on the GPU."""
    from .audio_lm import LongAudioData, SC09Data, build_cli

    direct = {"model.arch": args.arch, "model.preset": args.preset, "trainer.max_steps": args.max_steps}
    if args.sc09:
        data_class = SC09Data
        direct |= {"data.root": args.sc09, "data.batch_size": args.batch_size}
    else:
        data_class = LongAudioData
        direct |= {"data.root": args.audio_dir, "data.sample_len": args.sample_len,
                   "data.tokens_per_batch": args.tokens_per_batch}
    cli = build_cli(data_class, _lightning_args("audio", args, direct), run_dir=args.out or "runs/audio")
    metrics = _fit_then_test(cli, args.resume)
    print(f"test bits per sample {metrics['test/bits_per_sample']:.4f}")
    return 0
