"""Long generations stay finite, and one that stops being finite stops with a clear error (issue 7 §4: generation runs
for long outputs, audio ≥ 60 s and DNA ≥ 1 Mb, without the state drifting to NaN).

On the CPU these run small random-weight models for as many recurrent steps as a minute allows (DNA: 2 × 16,384
bases; audio: 2 clips of 1 s at 16 kHz through the two pooling levels of the SC09 U-Net layout; an eager step costs
about a millisecond on the CPU), with the logits checked at every step and the states every 1,024 or 2,048
positions, and compare the outcome with the parallel forward over the generated sequence (a state that drifted
away from the parallel scan's would show there). The full lengths (DNA 1 Mb, audio 4 × 60 s) through `mba` on a GPU:
benchmarks/long_generation.sh. Then non-finite values forced into a run (an infinite state entry in one row mid-run, a
NaN parameter from the start) must stop it with GenerationDiverged naming the position and the row, well before the
end."""
from __future__ import annotations

import math

import pytest
import torch

from mamba_bio_audio import MambaConfig, MambaLMHeadModel
from mamba_bio_audio.dna import DNATokenizer
from mamba_bio_audio.errors import GenerationDiverged
from mamba_bio_audio.generation import FiniteWatch, state_max_abs
from mamba_bio_audio.models.audio_unet import AudioUNet, AudioUNetConfig

BASES = [DNATokenizer.A_ID + i for i in range(4)]
PROMPT = "ACGTACGT"
DNA_LENGTH = 16_384                 # bases generated per row
AUDIO_LENGTH = 16_000               # samples per clip: 1 s at 16 kHz
TINY_UNET = dict(d_model=8, pools=(4, 4), n_layers=1, d_state=4)   # the SC09 layout (two pooling levels), tiny


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads can make an op on a
    (2, 256) tensor a thousand times slower. Numba's too: its OpenMP layer sets the thread count of the OpenMP
    runtime torch shares at every parallel scan (the prefill), undoing torch.set_num_threads."""
    numba = _numba()
    before = torch.get_num_threads(), numba.get_num_threads() if numba else None
    torch.set_num_threads(1)
    if numba:
        numba.set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    if numba:
        numba.set_num_threads(before[1])


def _numba():
    try:
        import numba
    except ImportError:
        return None
    return numba


def dna_model() -> MambaLMHeadModel:
    torch.manual_seed(0)
    return MambaLMHeadModel(MambaConfig(d_model=32, n_layer=1, vocab_size=12)).eval()


def dna_prompt(rows: int = 2) -> torch.Tensor:
    return DNATokenizer().encode(PROMPT)[None].expand(rows, -1).contiguous()


def poison_state_before_call(mixer, call: int, row: int) -> list[int]:
    """Set row `row` of the mixer's SSM state to +inf just before its `call`-th forward (1 = the prefill or the first
    step); returns the list that counts the calls."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(1)
        if len(calls) == call:
            kwargs["cache"].states[module.layer_idx][1][row].fill_(float("inf"))

    mixer.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_dna_generation_of_tens_of_thousands_of_bases_stays_finite_and_agrees_with_the_parallel_forward():
    model = dna_model()
    prompt = dna_prompt()
    stats = {}
    out = model.generate(prompt, DNA_LENGTH, seed=0, allowed_token_ids=BASES, check_every=1024, stats=stats)
    assert out.shape == (2, len(PROMPT) + DNA_LENGTH) and torch.equal(out[:, :len(PROMPT)], prompt)
    assert set(out[:, len(PROMPT):].unique().tolist()) == set(BASES)
    assert not torch.equal(out[0], out[1])
    assert stats["checks"] >= DNA_LENGTH // 1024 and 0 < stats["state_max_abs"] < 1e3

    # The same sequence through the parallel forward, streamed in chunks: finite log-probabilities everywhere, and
    # the same final state as the 20,000 recurrent steps reached.
    cache = model.allocate_inference_cache(2)
    with torch.no_grad():
        logits = torch.cat([model(out[:, s:s + 4096], cache=cache) for s in range(0, out.shape[1], 4096)], dim=1)
    logp = torch.log_softmax(logits[:, len(PROMPT) - 1:-1].double(), -1).gather(-1, out[:, len(PROMPT):, None])
    assert torch.isfinite(logits).all() and torch.isfinite(logp).all()
    assert -math.log(12) - 1 < logp.mean().item() < 0
    torch.testing.assert_close(state_max_abs(cache, 2).max().item(), stats["state_max_abs"], rtol=1e-4, atol=1e-5)


def test_a_state_turning_infinite_mid_run_stops_dna_generation_naming_position_and_sequence():
    model = dna_model()
    calls = poison_state_before_call(model.backbone.layers[0].mixer, call=2000, row=1)
    # call 1 is the prefill (logits for position 8); call j ≥ 2 consumes position 8 + j − 2 and gives the logits of
    # position 8 + j − 1, so poisoning before call 2000 spoils position 2,007 of row 1
    with pytest.raises(GenerationDiverged, match=r"non-finite logits at position 2,007 of sequence 1; a non-finite "
                                                 r"recurrent state in sequence 1 after 2,056 positions \(everything "
                                                 r"was finite at the check after 1,032 positions\)") as caught:
        model.generate(dna_prompt(), DNA_LENGTH, seed=0, allowed_token_ids=BASES, check_every=1024)
    assert caught.value.position == 2007 and caught.value.rows == [1]
    assert "also" not in str(caught.value)                  # row 0 stayed finite
    assert len(calls) < 2000 + 1024 + 64                    # stopped at the next check, not at the end


def test_a_nan_parameter_stops_dna_generation_at_the_first_position():
    model = dna_model()
    with torch.no_grad():
        model.backbone.layers[0].mixer.A_log[0, 0] = float("nan")
    with pytest.raises(GenerationDiverged, match=r"non-finite logits at position 8 of sequence 0 \(also in "
                                                 r"sequence 1\); a non-finite recurrent state in sequences 0, 1 "
                                                 r"after 1,032 positions \(at the first check\)") as caught:
        model.generate(dna_prompt(), 5000, seed=0, allowed_token_ids=BASES, check_every=1024)
    assert caught.value.position == 8 and caught.value.rows == [0, 1]


def test_the_state_check_catches_a_non_finite_state_the_logits_have_not_shown_yet():
    model = dna_model()
    cache = model.allocate_inference_cache(3)
    with torch.no_grad():
        model(torch.randint(7, 11, (3, 50)), cache=cache)
    watch = FiniteWatch(3, 64, "cpu")
    watch.check(cache, 50)
    assert watch.checks == 1 and 0 < watch.max_abs < 1e3
    cache.states[0][0][2, 5, 1] = float("nan")               # the conv state of row 2
    with pytest.raises(GenerationDiverged, match=r"a non-finite recurrent state in sequence 2 after 2,048 positions "
                                                 r"\(everything was finite at the check after 50 positions\)"):
        watch.check(cache, 2048)
    cache.states[0][0][2, 5, 1] = 0.0
    cache.states[0][1][0, 3, 2] = -float("inf")              # the SSM state of row 0
    with pytest.raises(GenerationDiverged, match="in sequence 0 after"):
        watch.check(cache, 2048)


def audio_model() -> AudioUNet:
    torch.manual_seed(0)
    return AudioUNet(AudioUNetConfig(**TINY_UNET)).eval()


def test_audio_generation_of_seconds_stays_finite_and_its_likelihood_is_the_parallel_forwards():
    from mamba_bio_audio.audio.codec import shift_right
    from mamba_bio_audio.audio.generate import sample_audio

    model = audio_model()
    stats = {}
    codes, loglik = sample_audio(model, 2, AUDIO_LENGTH, seed=0, check_every=2048, stats=stats)
    assert codes.shape == (2, AUDIO_LENGTH) and codes.min() >= 0 and codes.max() < 256
    assert not torch.equal(codes[0], codes[1])
    assert stats["checks"] >= AUDIO_LENGTH // 2048 and 0 < stats["state_max_abs"] < 1e3
    assert torch.isfinite(loglik).all()
    with torch.no_grad():
        logp = torch.log_softmax(model(shift_right(codes)).double(), -1).gather(-1, codes[..., None])[..., 0]
    assert torch.isfinite(logp).all()
    # 24,000 recurrent steps through two pooling levels give the log-likelihood of the parallel forward
    torch.testing.assert_close(loglik, logp.sum(-1), rtol=1e-5, atol=1e-3)


def test_a_state_turning_infinite_mid_run_stops_audio_generation_naming_sample_and_clip():
    from mamba_bio_audio.audio.generate import sample_audio

    model = audio_model()
    # the full-rate stage's mixer runs once per sample: call j gives the logits of sample j − 1
    calls = poison_state_before_call(model.down[0].blocks[0].mixer, call=1501, row=1)
    with pytest.raises(GenerationDiverged, match=r"non-finite logits at sample 1,500 of clip 1; a non-finite "
                                                 r"recurrent state in clip 1 after 2,048 samples \(everything was "
                                                 r"finite at the check after 1,024 samples\)") as caught:
        sample_audio(model, 2, AUDIO_LENGTH, seed=0, check_every=1024)
    assert caught.value.position == 1500 and caught.value.rows == [1]
    assert len(calls) < 1501 + 1024 + 16


def test_mba_dna_generate_reports_the_state_and_a_diverged_checkpoint_fails_with_one_line(tmp_path, capsys):
    pytest.importorskip("lightning")
    import lightning

    from mamba_bio_audio.cli import main
    from mamba_bio_audio.pipelines.dna_pretrain import DNALanguageModel

    module = DNALanguageModel(model_size=None, config={"d_model": 16, "n_layer": 1, "vocab_size": 12, "d_state": 4})
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    torch.save(checkpoint, tmp_path / "good.ckpt")
    out = tmp_path / "gen.fa"
    assert main(["dna", "generate", "--ckpt", str(tmp_path / "good.ckpt"), "--prompt", "ACGT", "--length", "1000",
                 "--out", str(out), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"wrote {out}: 1,000 bases in") and "logits and states finite throughout" in line
    assert 0 < float(line.split("largest |state| at the end ")[1]) < 1e3
    assert len("".join(out.read_text().splitlines()[1:])) == 1004

    checkpoint["state_dict"]["model.backbone.layers.0.mixer.D"][3] = float("inf")
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    capsys.readouterr()
    assert main(["dna", "generate", "--ckpt", str(tmp_path / "bad.ckpt"), "--prompt", "ACGT", "--length", "1000",
                 "--out", str(tmp_path / "bad.fa"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mba dna: error: generation diverged: non-finite logits at position 4 of sequence 0")
    assert not (tmp_path / "bad.fa").exists()
