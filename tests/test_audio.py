"""Raw audio: reading and quantisation, the Mamba U-Net (recurrent step = parallel forward, causality, preset
sizes), the SC09 and long-audio data modules, and `mba audio train` end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch


sf = pytest.importorskip("soundfile")
pytest.importorskip("lightning")

from mamba_bio_audio.audio.codec import (  # noqa: E402
    START_TOKEN, dequantize, load_audio, quantize, shift_right)
from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.models.audio_unet import AudioUNet, AudioUNetConfig, audio_unet_config  # noqa: E402
from mamba_bio_audio.pipelines.audio_lm import (  # noqa: E402
    DIGITS, IGNORE_INDEX, AudioLM, Crops, LongAudioData, SC09Data, model_inputs, sc09_split, split_files)

TINY = {"d_model": 8, "pools": [4, 4], "n_layers": 1, "d_state": 4}


def tone(seconds, freq, rate=16_000, channels=1, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * math.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def test_load_audio_downmixes_and_resamples(tmp_path):
    stereo = tone(0.5, 440, rate=44_100, channels=2)
    stereo[:, 1] *= 0.5
    sf.write(tmp_path / "a.wav", stereo, 44_100)
    wave = load_audio(tmp_path / "a.wav")
    assert wave.dtype == torch.float32 and abs(len(wave) - 8000) <= 1
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) * 16_000 / len(wave) - 440) < 5  # the tone survives resampling
    assert 0.3 < float(wave.abs().max()) < 0.45  # the mean of 0.5 and 0.25 amplitudes
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00garbage")
    with pytest.raises(ValueError, match=r"bad\.wav: not a readable audio file"):
        load_audio(tmp_path / "bad.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16_000)
    with pytest.raises(ValueError, match=r"empty\.wav: no audio samples"):
        load_audio(tmp_path / "empty.wav")


def test_quantisation_round_trips_and_silence_is_the_start_token():
    wave = torch.randn(3, 1000, dtype=torch.float64)
    scaled = 2 * (wave - wave.amin(-1, keepdim=True)) / (wave.amax(-1, keepdim=True) - wave.amin(-1, keepdim=True)) - 1
    for scheme, tolerance in (("mu-law", 0.04), ("linear", 1 / 256 + 1e-6)):
        codes = quantize(wave, scheme)
        assert codes.dtype == torch.int64 and codes.min() == 0 and codes.max() == 255
        assert (dequantize(codes, scheme) - scaled).abs().max() <= tolerance
        assert quantize(torch.full((5,), 0.3), scheme).eq(START_TOKEN).all()  # a constant clip is silence
    quiet = scaled.abs() < 0.05  # mu-law spends its codes on quiet samples: many more levels there than linear
    assert len(quantize(wave, "mu-law")[quiet].unique()) > 2 * len(quantize(wave, "linear")[quiet].unique())
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize(wave, "a-law")
    assert shift_right(torch.tensor([[5, 6, 7]])).tolist() == [[START_TOKEN, 5, 6]]


def test_model_inputs_pad_with_silence_and_ignore_the_padding():
    item = model_inputs(torch.tensor([10, 20, 30]), 5)
    assert item["input_ids"].tolist() == [START_TOKEN, 10, 20, 30, START_TOKEN]
    assert item["labels"].tolist() == [10, 20, 30, IGNORE_INDEX, IGNORE_INDEX]
    assert model_inputs(torch.arange(8), 4)["labels"].tolist() == [0, 1, 2, 3]


def test_unet_step_reproduces_the_parallel_forward_and_is_causal():
    torch.manual_seed(0)
    model = AudioUNet(AudioUNetConfig(d_model=8, pools=(2, 3), n_layers=2, d_state=4)).double().eval()
    tokens = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        parallel = model(tokens)
        state = model.allocate_step_state(2)
        stepped = torch.stack([model.step(tokens[:, t], state) for t in range(24)], dim=1)
        torch.testing.assert_close(stepped, parallel, rtol=1e-9, atol=1e-9)
        changed = tokens.clone()
        changed[:, 13:] = torch.randint(0, 256, (2, 11))
        other = model(changed)
    assert torch.equal(other[:, :13], parallel[:, :13]) and not torch.allclose(other[:, 13:], parallel[:, 13:])


def test_complex_unet_steps_too_and_bidirectional_sees_the_future():
    torch.manual_seed(1)
    model = AudioUNet(AudioUNetConfig(d_model=8, pools=(4,), n_layers=1, d_state=4, complex_ssm=True)).double()
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        state = model.allocate_step_state(1)
        stepped = torch.stack([model.step(tokens[:, t], state) for t in range(16)], dim=1)
        torch.testing.assert_close(stepped, model(tokens), rtol=1e-9, atol=1e-9)
    bidirectional = AudioUNet(AudioUNetConfig(**{**TINY, "bidirectional": True})).eval()
    tokens = torch.randint(0, 256, (1, 32))
    changed = tokens.clone()
    changed[:, -1] = (tokens[:, -1] + 7) % 256
    with torch.no_grad():
        assert not torch.allclose(bidirectional(tokens)[:, 0], bidirectional(changed)[:, 0])
    with pytest.raises(ValueError, match="not causal"):
        bidirectional.allocate_step_state(1)
    with pytest.raises(ValueError, match="multiple of the total pooling 16"):
        bidirectional(tokens[:, :20])


@pytest.mark.parametrize("preset, low, high", [("sc09", 5.8e6, 6.5e6), ("youtubemix", 3.3e6, 3.9e6)])
def test_presets_have_the_papers_sizes(preset, low, high):
    with torch.device("meta"):
        model = AudioUNet(audio_unet_config(preset))
    assert low < sum(p.numel() for p in model.parameters()) < high


def make_sc09(root, per_digit=3, seconds=0.05):
    """Digit folders of short tones (digit d at 200·(d+1) Hz), one clip of each digit in valid and one in test."""
    valid, test = [], []
    for d, digit in enumerate(DIGITS):
        (root / digit).mkdir(parents=True)
        for i in range(per_digit):
            sf.write(root / digit / f"spk{i}_nohash_0.wav", tone(seconds * (1 + i % 2), 200 * (d + 1), seed=i),
                     16_000)
        valid.append(f"{digit}/spk0_nohash_0.wav")
        test.append(f"{digit}/spk1_nohash_0.wav")
    (root / "validation_list.txt").write_text("\n".join(valid + ["bed/x_nohash_0.wav"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_sc09_split_follows_the_lists(tmp_path):
    root = make_sc09(tmp_path / "sc09")
    clips = sc09_split(root)
    assert [len(clips[s]) for s in ("train", "valid", "test")] == [10, 10, 10]
    assert all(p.name == "spk2_nohash_0.wav" for p in clips["train"])
    (root / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testing_list.txt: missing"):
        sc09_split(root)


def test_crops_are_a_function_of_seed_and_index_and_tiles_cover_the_tracks():
    tracks = [np.arange(100, dtype=np.uint8), np.arange(30, dtype=np.uint8), np.arange(5, dtype=np.uint8)]
    crops = Crops(tracks, 20, n=50, seed=3)
    again, other = Crops(tracks, 20, n=50, seed=3), Crops(tracks, 20, n=50, seed=4)
    assert all(torch.equal(crops[i]["labels"], again[i]["labels"]) for i in range(50))
    assert any(not torch.equal(crops[i]["labels"], other[i]["labels"]) for i in range(50))
    for i in range(50):
        labels = crops[i]["labels"]
        assert torch.equal(labels, labels[0] + torch.arange(20))  # a contiguous piece of one track
    tiles = Crops(tracks, 20, tile=True)
    assert len(tiles) == 5 + 1 and tiles[5]["labels"].tolist() == list(range(20))
    assert split_files(list(range(50))) == {"train": list(range(44)), "valid": [44, 45, 46], "test": [47, 48, 49]}


def test_long_audio_resumed_mid_epoch_reaches_the_same_parameters(tmp_path):
    from test_dna_species import check_resume_is_exact

    for i in range(4):
        sf.write(tmp_path / f"piece{i}.wav", tone(0.1, 300 + 50 * i, seed=i), 16_000)
    check_resume_is_exact(tmp_path, lambda: LongAudioData(str(tmp_path), sample_len=64, tokens_per_batch=128,
                                                          samples_per_epoch=10, seed=1),
                          lambda: AudioLM(config=TINY))


def test_mba_audio_train_on_sc09_learns_tones(tmp_path, capsys):
    root = make_sc09(tmp_path / "sc09", per_digit=6, seconds=0.032)
    assert main(["audio", "train", "--sc09", str(root), "--batch-size", "8", "--max-steps", "60", "--out",
                 str(tmp_path / "run"), "--model.config", '{"d_model": 16, "pools": [4, 4], "n_layers": 1}',
                 "--data.clip_len", "1024", "--model.lr", "1e-2", "--trainer.enable_progress_bar", "false",
                 "--trainer.max_epochs", "100"]) == 0
    bits = float(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])
    assert bits < 6.0  # uniform guessing is 8 bits per sample
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    config = (tmp_path / "run" / "logs" / "version_0" / "config.yaml").read_text()
    assert "gradient_clip_val: 0.1" in config


def test_mba_audio_generate_writes_wavs_spectrograms_and_likelihoods(tmp_path, capsys):
    root = make_sc09(tmp_path / "sc09", per_digit=3, seconds=0.032)
    assert main(["audio", "train", "--sc09", str(root), "--batch-size", "8", "--max-steps", "2", "--out",
                 str(tmp_path / "run"), "--model.config", '{"d_model": 8, "pools": [4, 4], "n_layers": 1}',
                 "--data.clip_len", "512", "--trainer.enable_progress_bar", "false"]) == 0
    sf.write(tmp_path / "prompt.wav", tone(0.01, 440), 16_000)
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    out = tmp_path / "gen"
    assert main(["audio", "generate", "--ckpt", ckpt, "--n", "3", "--seconds", "0.02", "--out", str(out),
                 "--prompt", str(tmp_path / "prompt.wav"), "--prompt-seconds", "0.005", "--top-p", "0.9"]) == 0
    assert "wrote 3 clips" in capsys.readouterr().out
    waves = [sf.read(out / f"sample_{i:03d}.wav") for i in range(3)]
    assert all(rate == 16_000 and len(wave) == 320 for wave, rate in waves)
    assert np.allclose(waves[0][0][:80], waves[1][0][:80], atol=1e-4)  # the same prompt
    rows = (out / "samples.tsv").read_text().splitlines()
    assert rows[0] == "file\tloglik_nats\tbits_per_sample" and len(rows) == 4
    assert all(0 < float(row.split("\t")[2]) < 12 for row in rows[1:])
    assert (out / "spectrograms.png").stat().st_size > 1000
    assert not list(out.glob(".*tmp*"))


def test_sampled_log_likelihood_is_the_models_and_greedy_is_deterministic():
    from mamba_bio_audio.audio.generate import sample_audio

    torch.manual_seed(0)
    model = AudioUNet(AudioUNetConfig(**TINY)).double().eval()
    codes, loglik = sample_audio(model, 2, 32, seed=5)
    again, _ = sample_audio(model, 2, 32, seed=5)
    assert torch.equal(codes, again)
    with torch.no_grad():
        logp = torch.log_softmax(model(shift_right(codes)), -1).gather(-1, codes[..., None])[..., 0].sum(-1)
    torch.testing.assert_close(loglik, logp, rtol=1e-9, atol=1e-9)
    greedy, _ = sample_audio(model, 2, 32, temperature=0.0)
    with torch.no_grad():
        assert torch.equal(model(shift_right(greedy)).argmax(-1), greedy)


@pytest.mark.parametrize("arch", ["mamba", "transformer"])
def test_flat_baselines_sample_with_their_caches(arch):
    from mamba_bio_audio.audio.generate import sample_audio
    from mamba_bio_audio.pipelines.audio_lm import build_audio_model

    torch.manual_seed(0)
    config = {"d_model": 16, "n_layer": 2} | ({"d_state": 4} if arch == "mamba" else {"n_head": 2})
    model = build_audio_model(arch, None, config).double().eval()
    prompt = torch.randint(0, 256, (2, 19))  # longer than a chunk of positions (16 for a flat model)
    codes, loglik = sample_audio(model, 2, 40, prompt=prompt, seed=1)
    assert torch.equal(codes[:, :19], prompt) and not torch.equal(codes[0, 19:], codes[1, 19:])
    with torch.no_grad():
        logp = torch.log_softmax(model(shift_right(codes)), -1).gather(-1, codes[..., None])[..., 0][:, 19:].sum(-1)
    torch.testing.assert_close(loglik, logp, rtol=1e-9, atol=1e-9)  # the cached steps are the parallel forward


def _tiny_audio_model(arch: str) -> torch.nn.Module:
    """A float64 U-Net, flat Mamba or Transformer of width 16 with random weights (seed 0), for generation tests."""
    from mamba_bio_audio.pipelines.audio_lm import build_audio_model

    torch.manual_seed(0)
    config = {"unet": {"d_model": 16, "pools": (4, 4), "n_layers": 1}, "mamba": {"d_model": 16, "n_layer": 2},
              "transformer": {"d_model": 16, "n_layer": 2, "n_head": 2}}[arch]
    return build_audio_model(arch, None, config).double().eval()


def _simulate_graph_replays(patch) -> None:
    """Generation on the CPU as with CUDA graphs: each replay runs the chunk's steps, as recording then replaying
    does (`patch`: pytest's monkeypatch or one of its contexts)."""
    from mamba_bio_audio.audio import generate

    patch.setattr(generate, "_replays_graphs", lambda cuda_graphs, device: cuda_graphs)
    patch.setattr(generate, "replay_graph", lambda graphs, key, record: record())


@pytest.mark.parametrize("arch", ["unet", "mamba", "transformer"])
def test_a_last_partial_chunk_replayed_whole_gives_the_eager_clips(arch, monkeypatch):
    """With CUDA graphs every chunk replays the chunk's graph (the first after a warm-up on scratch states), and a
    last chunk shorter than the others replays it whole, its positions past the clip forced and dropped. Simulated on
    the CPU (each replay runs the chunk's steps, as recording then replaying does): the same codes and
    log-likelihood as the eager run, at lengths ending 6 and 15 positions into a chunk of 16, with a prompt; a
    Transformer's KV cache has room for the dropped positions."""
    from mamba_bio_audio.audio import generate

    model = _tiny_audio_model(arch)
    prompt = torch.randint(0, 256, (2, 19))
    for length in (38, 47):
        eager = generate.sample_audio(model, 2, length, prompt=prompt, seed=1)
        with monkeypatch.context() as patch:
            _simulate_graph_replays(patch)
            replayed = generate.sample_audio(model, 2, length, prompt=prompt, seed=1)
        assert torch.equal(eager[0], replayed[0]) and torch.equal(eager[1], replayed[1])


@pytest.mark.parametrize("arch", ["unet", "mamba", "transformer"])
@pytest.mark.parametrize("graphs", [False, True])
def test_an_audio_sampler_called_again_gives_a_fresh_samplers_clips(arch, graphs, monkeypatch):
    """An AudioSampler keeps its states, buffers and graphs between calls and empties the states at each call: calls
    with other seeds, lengths and prompts give the clips of a sampler made for that call alone (eager, and with
    CUDA graph replays simulated on the CPU). It starts afresh where the weights are other tensors (the model
    cast) or a Transformer's KV cache is too short, and after a call that failed."""
    from mamba_bio_audio.audio import generate

    if graphs:
        _simulate_graph_replays(monkeypatch)
    model = _tiny_audio_model(arch)
    sampler = generate.AudioSampler(model, 2, temperature=0.9)
    prompt = torch.randint(0, 256, (2, 19))
    calls = [dict(length=38, seed=1), dict(length=21, seed=2, prompt=prompt[:, :5]), dict(length=38, seed=1),
             dict(length=70, seed=3, prompt=prompt)]
    chunks = []
    for call in calls:
        clips = sampler(**call)
        chunks.append(sampler._chunk)
        fresh = generate.AudioSampler(model, 2, temperature=0.9)(**call)
        assert torch.equal(clips[0], fresh[0]) and torch.equal(clips[1], fresh[1])
    longer = arch == "transformer"  # the last call needs a longer KV cache
    assert chunks[1] is chunks[0] and chunks[2] is chunks[0] and (chunks[3] is chunks[0]) != longer
    model.float()
    assert torch.equal(sampler(38, seed=1)[0], generate.AudioSampler(model, 2, temperature=0.9)(38, seed=1)[0])
    assert sampler._chunk is not chunks[-1]
    with pytest.raises(ValueError, match="prompt"):
        sampler(10, prompt=prompt)
    with monkeypatch.context() as patch:
        patch.setattr(generate.FiniteWatch, "check", lambda *args: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            sampler(38, seed=1)
    assert sampler._chunk is None


def test_the_graph_warm_up_steps_every_level_of_a_unet_on_a_scratch_state():
    """`_Chunk.warm_up` steps a scratch Stepper once before the first graph is recorded: for a U-Net its levels start
    at the last phase of their period, so that one step runs every level (every kernel compiled outside the
    recording); the generation's own state is not touched."""
    from mamba_bio_audio.audio.generate import Stepper

    model = AudioUNet(AudioUNetConfig(d_model=16, pools=(4, 4), n_layers=1)).eval()
    stepper = Stepper(model, 2, 64)
    scratch = stepper.scratch()
    with torch.no_grad():
        scratch.step(torch.full((2,), 128))
    levels = [*scratch.state.down, *scratch.state.up, scratch.state.centre]
    assert [cache.seqlen_offset for cache in levels] == [1] * 5
    assert [cache.seqlen_offset for cache in [*stepper.state.down, *stepper.state.up, stepper.state.centre]] == [0] * 5


def test_youtubemix_recipe_from_a_folder_or_an_archive(tmp_path, capsys):
    import tarfile

    source = tmp_path / "hf" / "data"
    source.mkdir(parents=True)
    for i in range(3):
        sf.write(source / f"piece{i}.wav", tone(0.5, 300 + i), 16_000)
    (tmp_path / "hf" / "README.md").write_text("gated dataset")
    with tarfile.open(tmp_path / "mix.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "hf", arcname="hf")
    for name, src in (("folder", tmp_path / "hf"), ("archive", tmp_path / "mix.tar.gz")):
        assert main(["data", "youtubemix", "--source", str(src), "--dest", str(tmp_path / name)]) == 0
        assert "3 audio files, 0.00 h" in capsys.readouterr().out
        files = sorted(p.name for p in (tmp_path / name / "youtubemix").iterdir())
        assert files == ["data__piece0.wav", "data__piece1.wav", "data__piece2.wav"]
    data = LongAudioData(str(tmp_path / "folder" / "youtubemix"), sample_len=1024, tokens_per_batch=2048)
    assert [len(v) for v in data.files.values()] == [1, 1, 1]
    (source / "piece1.wav").write_bytes(b"RIFF broken")
    assert main(["data", "youtubemix", "--source", str(tmp_path / "hf"), "--dest", str(tmp_path / "bad")]) == 1
    assert "piece1.wav: not a readable audio file" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "youtubemix").exists() and not (tmp_path / "bad" / "youtubemix.partial").exists()


def test_sample_quality_scores_on_known_cases():
    from mamba_bio_audio.audio.metrics import (
        am_score, fid, inception_score, modified_inception_score)

    confident = np.full((10, 10), 0.01) + 0.9 * np.eye(10)          # each row one clear digit, all digits present
    entropy = -np.sum(confident[0] * np.log(confident[0]))
    assert inception_score(confident) == pytest.approx(10 * np.exp(-entropy))  # exp(KL(p ‖ uniform))
    pairs = [np.sum(a * np.log(a / b)) for a in confident for b in confident]
    assert modified_inception_score(confident) == pytest.approx(np.exp(np.mean(pairs)))
    same = np.tile(confident[:1], (10, 1))                          # always the same digit
    assert inception_score(same) == pytest.approx(1.0) and modified_inception_score(same) == pytest.approx(1.0)
    assert am_score(confident, confident) == pytest.approx(entropy)  # matching class mix: AM is the entropy alone
    assert am_score(same, confident) > am_score(confident, confident) + 1
    rng = np.random.default_rng(0)
    features = rng.standard_normal((500, 4))
    assert fid(features, features) == pytest.approx(0.0, abs=1e-6)
    assert fid(features + np.array([3.0, 0, 0, 0]), features) == pytest.approx(9.0, abs=1e-6)


def test_digit_classifier_learns_and_evaluate_scores_sets(tmp_path, capsys):
    root = make_sc09(tmp_path / "sc09", per_digit=8, seconds=0.05)
    assert main(["audio", "train-classifier", "--sc09", str(root), "--batch-size", "16", "--max-steps", "60",
                 "--out", str(tmp_path / "clf"), "--model.d_model", "16", "--model.n_layers", "1", "--model.lr",
                 "1e-2", "--data.clip_len", "1600", "--trainer.enable_progress_bar", "false",
                 "--trainer.max_epochs", "100"]) == 0
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1].split()[2])
    assert accuracy >= 0.9  # ten tones, one per digit
    generated = tmp_path / "gen"
    generated.mkdir()
    for i, path in enumerate(sorted(root.glob("*/spk1_nohash_0.wav"))):
        (generated / f"sample_{i:03d}.wav").write_bytes(path.read_bytes())
    ckpt = next((tmp_path / "clf" / "checkpoints").glob("best-*.ckpt"))
    assert main(["audio", "evaluate", "--classifier", str(ckpt), "--sc09", str(root), "--generated", str(generated),
                 "--out", str(tmp_path / "scores.tsv")]) == 0
    rows = [line.split("\t") for line in (tmp_path / "scores.tsv").read_text().splitlines()]
    assert rows[0] == ["set", "clips", "FID", "IS", "mIS", "AM"] and [r[0] for r in rows[1:]] == ["train", "test",
                                                                                                 str(generated)]
    assert float(rows[1][2]) == pytest.approx(0.0, abs=1e-3)  # the training set against itself
    assert rows[3][1:] == rows[2][1:]  # the "generated" folder holds the test clips under other names
    assert main(["audio", "evaluate", "--sc09", str(root), "--generated", str(tmp_path / "missing"),
                 "--classifier", str(ckpt)]) == 1


def test_diffusion_schedule_noising_and_sampling():
    from mamba_bio_audio.models.diffusion import DiffusionConfig, WaveDenoiser

    torch.manual_seed(0)
    model = WaveDenoiser(DiffusionConfig(steps=200, unet=dict(TINY))).double()
    betas = np.linspace(1e-4, 0.02, 200)
    assert np.allclose(model.alpha_bars.numpy(), np.cumprod(1 - betas))
    clean, noise = torch.rand(2, 32, dtype=torch.float64) * 2 - 1, torch.randn(2, 32, dtype=torch.float64)
    steps = torch.tensor([0, 199])
    x = model.noisy(clean, steps, noise)
    torch.testing.assert_close(x[0], math.sqrt(1 - 1e-4) * clean[0] + math.sqrt(1e-4) * noise[0])
    assert 0.1 < float(model.alpha_bars[199]) < 0.15  # DiffWave's unconditional schedule ends at ᾱ ≈ 0.13
    assert model(x, steps).shape == (2, 32) and float(model(x, steps).detach().abs().max()) == 0.0  # zero-init output
    changed = x.clone()
    changed[:, -1] += 1.0
    model.project_out.weight.data.normal_()
    assert not torch.allclose(model(changed, steps)[:, 0], model(x, steps)[:, 0])  # bidirectional: sees the future
    small = WaveDenoiser(DiffusionConfig(steps=5, unet=dict(TINY)))
    generator = torch.Generator().manual_seed(1)
    waves = small.sample(3, 48, generator)
    assert waves.shape == (3, 48) and torch.isfinite(waves).all() and waves.abs().max() <= 1


def test_mba_audio_train_diffusion_then_generate(tmp_path, capsys):
    root = make_sc09(tmp_path / "sc09", per_digit=3, seconds=0.032)
    assert main(["audio", "train-diffusion", "--sc09", str(root), "--batch-size", "8", "--max-steps", "3", "--out",
                 str(tmp_path / "run"), "--model.diffusion_steps", "4", "--model.unet",
                 '{"d_model": 8, "pools": [4, 4], "n_layers": 1}', "--data.clip_len", "512",
                 "--trainer.enable_progress_bar", "false"]) == 0
    assert "test denoising loss" in capsys.readouterr().out
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert main(["audio", "generate", "--ckpt", ckpt, "--n", "2", "--seconds", "0.02", "--out",
                 str(tmp_path / "gen")]) == 0
    waves = [sf.read(tmp_path / "gen" / f"sample_{i:03d}.wav")[0] for i in range(2)]
    assert all(len(w) == 320 for w in waves) and (tmp_path / "gen" / "spectrograms.png").is_file()
    assert (tmp_path / "gen" / "samples.tsv").read_text().splitlines() == ["file", "sample_000.wav", "sample_001.wav"]
    assert main(["audio", "generate", "--ckpt", ckpt, "--out", str(tmp_path / "g2"), "--prompt", "x.wav"]) == 1


def test_audio_context_sweep_trains_each_length_and_plots(tmp_path, capsys):
    for i in range(4):
        sf.write(tmp_path / f"piece{i}.wav", tone(0.2, 300 + 50 * i, seed=i), 16_000)
    out = tmp_path / "sweep"
    assert main(["audio", "context-sweep", "--audio-dir", str(tmp_path), "--lengths", "256,512", "--seeds", "0",
                 "--tokens-per-step", "1024", "--max-steps", "2", "--d-model", "8", "--n-layer", "1", "--out",
                 str(out), "--data.samples_per_epoch", "4", "--trainer.limit_val_batches", "1"]) == 0
    table = capsys.readouterr().out
    assert "test bits_per_sample" in table and "wrote" in table
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("seq_len,seed,test_bits_per_sample") and [r.split(",")[0] for r in rows[1:]] == [
        "256", "512"]
    assert all(0 < float(r.split(",")[2]) < 9 for r in rows[1:]) and (out / "context_scaling.png").is_file()
    assert "--sample-len" in (out / "L512-seed0" / "result.json").read_text()


def test_shipped_audio_configs_parse_and_build(tmp_path):
    from mamba_bio_audio.pipelines.audio_lm import build_cli
    from mamba_bio_audio.pipelines.cli import shipped_config

    root = make_sc09(tmp_path / "sc09", per_digit=3)
    cli = build_cli(SC09Data, ["--config", str(shipped_config("audio", "sc09_mamba_unet")), "--data.root", str(root)],
                    run_dir=str(tmp_path / "a"))
    assert cli.model.hparams.preset == "sc09" and cli.trainer.gradient_clip_val == 0.1
    assert sum(p.numel() for p in cli.model.parameters()) > 6e6
    for i in range(3):
        sf.write(tmp_path / f"piece{i}.wav", tone(0.1, 300), 16_000)
    cli = build_cli(LongAudioData, ["--config", str(shipped_config("audio", "youtubemix_mamba_unet_L65536")),
                                    "--data.root", str(tmp_path)], run_dir=str(tmp_path / "b"))
    assert cli.datamodule.batch_size == 8 and cli.model.model.config.complex_ssm


@pytest.mark.parametrize("samples", [1, 160, 200, 201, 16_000])
def test_spectrogram_grid_draws_clips_of_any_length(tmp_path, samples):
    """A 0.01 s clip (160 samples) is shorter than the mel transform's centred padding: it is drawn, not a crash."""
    from mamba_bio_audio.audio.generate import spectrogram_grid

    path = spectrogram_grid(torch.rand(3, samples) * 2 - 1, tmp_path / "grid.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_generate_cli_says_a_transformer_has_no_recurrent_state(tmp_path, capsys):
    """A KV cache has no recurrent state to check: the summary says so instead of 'largest |state| 0'."""
    import lightning

    from mamba_bio_audio.pipelines.audio_lm import AudioLM

    torch.manual_seed(0)
    module = AudioLM(arch="transformer", config={"d_model": 16, "n_layer": 1, "n_head": 2})
    ckpt = tmp_path / "t.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    assert main(["audio", "generate", "--ckpt", str(ckpt), "--n", "2", "--seconds", "0.002", "--out",
                 str(tmp_path / "gen")]) == 0
    out = capsys.readouterr().out
    assert "logits finite throughout (no recurrent state)" in out and "|state|" not in out


def test_classifier_and_denoiser_train_every_parameter():
    """DDP rejects parameters that the loss does not reach: the spectrogram classifier and the diffusion denoiser
    read `inputs_embeds`, so their U-Nets have no token embedding (and the denoiser no head)."""
    from mamba_bio_audio.models.diffusion import DiffusionConfig, WaveDenoiser
    from mamba_bio_audio.pipelines.audio_classifier import DigitNet

    torch.manual_seed(0)
    classifier = DigitNet(d_model=8, pools=(2,), n_layers=1)
    torch.nn.functional.cross_entropy(classifier(torch.randn(2, 3200)), torch.tensor([1, 2])).backward()
    denoiser = WaveDenoiser(DiffusionConfig(4, unet={"d_model": 8, "pools": [4], "n_layers": 1}))
    denoiser.loss(torch.randn(2, 64)).backward()
    for model in (classifier, denoiser):
        unused = [name for name, p in model.named_parameters() if p.grad is None]
        assert not unused, unused
    with pytest.raises(ValueError, match="no token embedding"):
        denoiser.unet.features(torch.zeros(1, 64, dtype=torch.long))
