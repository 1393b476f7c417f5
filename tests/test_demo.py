"""`mba demo` end to end at a tiny size: real yeast data, Markov table, sampling, a loadable saved model."""
import torch

from mamba_bio_audio import MambaLMHeadModel
from mamba_bio_audio.cli import main


def test_demo_trains_scores_samples_and_saves(tmp_path, capsys):
    out = tmp_path / "model"
    code = main(["demo", "--minutes", "0.5", "--max-steps", "3", "--seq-len", "64", "--batch-size", "2",
                 "--d-model", "16", "--n-layer", "1", "--generate", "120", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "NC_001133.9: 230,218 bases" in text
    assert "trained 3 steps" in text
    assert "Markov order 3" in text and "<- best" in text and "best Markov − Mamba:" in text
    sampled = text.split("held-out prompt")[1].split("model saved")[0]
    bases = "".join(line.strip() for line in sampled.splitlines()[1:])
    assert len(bases) == 120 and set(bases) <= set("ACGT")
    model = MambaLMHeadModel.from_pretrained(out)
    assert model(torch.randint(7, 11, (1, 8))).shape == (1, 8, 12)


def test_demo_reports_a_bad_fasta(tmp_path, capsys):
    bad = tmp_path / "bad.fa"
    bad.write_text(">chrX\nACGT*ACGT\n")
    assert main(["demo", "--fasta", str(bad), "--seq-len", "2", "--minutes", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "'*'" in err and "chrX" in err and str(bad) in err


def test_bench_prints_a_throughput_table(capsys):
    assert main(["bench", "--sizes", "16x1", "--batch-size", "1", "--seq-len", "32", "--steps", "1",
                 "--scan-shape", "1x4x2x16"]) == 0
    text = capsys.readouterr().out
    assert "tokens/s" in text and text.strip().splitlines()[-1].split()[0] == "16"
    assert "   torch " in text  # the scan table lists the chunked PyTorch backend


def test_bench_generation_prints_every_models_rate_on_the_cpu(capsys):
    """`mba bench --generation` on the CPU: each model's eager row (the GPU-only tables are skipped)."""
    assert main(["bench", "--generation", "--device", "cpu", "--gen-batches", "1", "--gen-seconds", "0.002"]) == 0
    names = [line.split(", eager")[0] for line in capsys.readouterr().out.splitlines() if ", eager" in line]
    assert names == ["Mamba U-Net (sc09)", "flat Mamba 14 x 256", "Transformer++ 8 x 256, KV cache",
                     "Mamba U-Net (youtubemix, complex A)"]
