"""`mba dna ...`: DNA pipelines on Lightning.

    mba dna pretrain --config FILE [--trainer.max_steps 100 ...]
    mba dna pretrain --fasta GENOME [--bed INTERVALS] --seq-len 1024 --model-size 1.4M --max-steps N

Configuration goes through LightningCLI: a YAML file (see pipelines/configs/) and/or --data.*, --model.*,
--trainer.* options after the direct ones; `--print-config` shows the resolved configuration.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    pretrain = tasks.add_parser("pretrain", help="next-base pretraining on an indexed FASTA",
                                description=_pretrain.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pretrain.add_argument("--config", help="YAML file of data, model and trainer settings (LightningCLI format)")
    pretrain.add_argument("--fasta", help="genome FASTA (plain or bgzip; indexed when needed)")
    pretrain.add_argument("--bed", help="intervals with a train/valid/test column (else chromosomes are cut 90/5/5)")
    pretrain.add_argument("--seq-len", type=int, help="training length in bases")
    pretrain.add_argument("--batch-size", type=int)
    pretrain.add_argument("--model-size", help="a paper size: 0.26M 0.68M 1.4M 3.5M 7M 19M 40M")
    pretrain.add_argument("--arch", choices=["mamba", "transformer"])
    pretrain.add_argument("--max-steps", type=int)
    pretrain.add_argument("--out", help="run folder: checkpoints, CSV and TensorBoard logs (default runs/dna)")
    pretrain.add_argument("--resume", help="checkpoint to resume from (step, learning rate and data position)")
    pretrain.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")
    pretrain.set_defaults(_task=_pretrain, _pass_through=True)  # other options go to LightningCLI


def run(args: argparse.Namespace) -> int:
    return args._task(args)


def _pretrain(args: argparse.Namespace) -> int:
    """Train a Mamba (or Transformer++) LM by next-base prediction, keeping the last and the best checkpoint (by
    validation bits per base, written atomically) and CSV + TensorBoard logs in the run folder, then report test
    bits per base with the best checkpoint. Interrupted runs continue with --resume RUN/checkpoints/last.ckpt."""
    from .dna_pretrain import build_cli

    direct = {"data.fasta": args.fasta, "data.bed": args.bed, "data.seq_len": args.seq_len,
              "data.batch_size": args.batch_size, "model.model_size": args.model_size, "model.arch": args.arch,
              "trainer.max_steps": args.max_steps}
    cli_args = ["--config", args.config] if args.config else []
    for key, value in direct.items():
        if value is not None:
            cli_args += [f"--{key}", str(value)]
    cli_args += args.extra
    if args.print_config:
        cli_args.append("--print_config")
    cli = build_cli(cli_args, run_dir=args.out or "runs/dna")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=args.resume)
    checkpoint = cli.trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)
    return 0
