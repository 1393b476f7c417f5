import math

import pytest
import torch

from mamba_bio_audio import (BiMamba, Block, Mamba, MambaConfig, MambaForSequenceClassification, MambaLMHeadModel)
from mamba_bio_audio.models.classifier import pool


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def tiny(**kw):
    defaults = dict(d_model=16, n_layer=2, vocab_size=12)
    defaults.update(kw)
    return MambaConfig(**defaults)


def test_mixer_follows_the_paper_defaults():
    m = Mamba(48)
    assert m.d_inner == 96 and m.d_state == 16 and m.d_conv == 4 and m.dt_rank == math.ceil(48 / 16)
    assert torch.allclose(m.ssm_A(), -torch.arange(1, 17.0).repeat(96, 1))
    assert torch.equal(m.D.data, torch.ones(96))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    assert dt.max() / dt.min() > 10  # spread over the log-uniform range, not constant
    assert m.A_log.dtype == torch.float32 and m.A_log._no_weight_decay and m.D._no_weight_decay


def test_complex_mixer_uses_s4d_lin_init():
    m = Mamba(16, d_state=4, complex_ssm=True)
    A = m.ssm_A()
    assert A.dtype == torch.complex64
    assert torch.allclose(A.real, torch.full((32, 4), -0.5))
    assert torch.allclose(A.imag, math.pi * torch.arange(4.0).repeat(32, 1))
    assert m.x_proj.out_features == m.dt_rank + 4 * 4  # real and imaginary parts of B and C


def test_lm_pads_vocab_ties_weights_and_returns_true_vocab_logits():
    model = MambaLMHeadModel(tiny(vocab_size=13))
    assert model.backbone.embedding.weight.shape[0] == 16
    assert model.lm_head.weight is model.backbone.embedding.weight
    logits = model(torch.randint(0, 13, (2, 9)))
    assert logits.shape == (2, 9, 13)


def test_out_proj_is_rescaled_by_depth():
    std = {n: MambaLMHeadModel(tiny(d_model=64, n_layer=n)).backbone.layers[0].mixer.out_proj.weight.std().item()
           for n in (1, 16)}
    assert std[1] / std[16] == pytest.approx(4.0, rel=0.1)


def test_block_keeps_residual_in_fp32():
    block16 = Block(16, Mamba(16), residual_in_fp32=True).to(torch.bfloat16)
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    hidden, residual = block16(x)
    assert residual.dtype == torch.float32 and hidden.dtype == torch.bfloat16
    _, residual2 = block16(hidden, residual)
    assert residual2.dtype == torch.float32 and torch.equal(residual2, hidden.float() + residual)


@pytest.mark.parametrize("complex_ssm", [False, True])
def test_recurrent_steps_match_the_parallel_forward(complex_ssm):
    model = MambaLMHeadModel(tiny(d_model=32, n_layer=3, complex_ssm=complex_ssm)).eval()
    ids = torch.randint(0, 12, (2, 256))
    with torch.no_grad():
        full = model(ids)
        for prefill in (1, 3, 40):  # shorter and longer than the conv window
            cache = model.allocate_inference_cache(2)
            parts = [model(ids[:, :prefill], cache=cache)]
            parts += [model(ids[:, t:t + 1], cache=cache) for t in range(prefill, 256)]
            stepped = torch.cat(parts, dim=1)
            assert cache.seqlen_offset == 256
            err = (stepped - full).abs().max().item()
            assert err <= 1e-4, (prefill, err)


def test_gradients_reach_every_parameter():
    model = MambaLMHeadModel(tiny(complex_ssm=True))
    ids = torch.randint(0, 12, (2, 20))
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bf16_autocast_forward_backward_on_cpu():
    model = MambaLMHeadModel(tiny())
    ids = torch.randint(0, 12, (2, 33))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.layers[0].mixer.A_log.grad is not None


def test_bimamba_sees_both_directions_and_ties_projections():
    torch.manual_seed(1)
    x = torch.randn(1, 12, 16)
    x2 = x.clone()
    x2[:, -1] += 1.0
    causal = Mamba(16)
    assert torch.allclose(causal(x)[:, 0], causal(x2)[:, 0])  # causal: the last token cannot reach the first
    bi = BiMamba(16, strategy="add", weight_tie=True)
    assert not torch.allclose(bi(x)[:, 0], bi(x2)[:, 0])
    assert bi.reverse_mixer.in_proj is bi.forward_mixer.in_proj
    assert bi.reverse_mixer.out_proj is bi.forward_mixer.out_proj
    assert bi.reverse_mixer.conv1d is not bi.forward_mixer.conv1d
    untied = BiMamba(16, weight_tie=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    shared = bi.forward_mixer.in_proj.weight.numel() + bi.forward_mixer.out_proj.weight.numel()
    assert count(untied) - count(bi) == shared
    mul = BiMamba(16, strategy="mul")
    expected = mul.forward_mixer(x) * mul.reverse_mixer(x.flip(1)).flip(1)
    assert torch.allclose(mul(x), expected)


def test_bidirectional_backbone_refuses_generation():
    model = MambaLMHeadModel(tiny(bidirectional=True))
    assert model(torch.randint(0, 12, (1, 8))).shape == (1, 8, 12)
    with pytest.raises(ValueError, match="bidirectional"):
        model.generate(torch.randint(0, 12, (1, 4)), 2)


def test_pooling_modes_respect_the_mask():
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.allclose(pool(hidden, mask, "mean")[0], hidden[0, :3].mean(0))
    assert torch.allclose(pool(hidden, mask, "max")[0], hidden[0, :3].amax(0))
    assert torch.allclose(pool(hidden, mask, "last")[0], hidden[0, 2])
    assert torch.allclose(pool(hidden, mask, "last")[1], hidden[1, 4])
    assert torch.allclose(pool(hidden, mask, "first"), hidden[:, 0])
    assert torch.allclose(pool(hidden, None, "mean"), hidden.mean(1))
    with pytest.raises(ValueError):
        pool(hidden, mask, "median")


def test_causal_classifier_last_pooling_ignores_right_padding():
    model = MambaForSequenceClassification(tiny(), num_classes=5, pooling="last").eval()
    ids = torch.randint(7, 11, (1, 10))
    padded = torch.cat([ids, torch.full((1, 6), 4)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(ids), model(padded, mask), atol=1e-6)
        assert model(padded, mask).shape == (1, 5)


def test_save_and_load_round_trip(tmp_path):
    model = MambaLMHeadModel(tiny(complex_ssm=True, extra={"note": "x"})).eval()
    model.save_pretrained(tmp_path / "lm")
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MambaLMHeadModel.from_pretrained(tmp_path / "lm").eval()
    ids = torch.randint(0, 12, (2, 17))
    assert torch.equal(model(ids), loaded(ids))
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    assert loaded.config == model.config

    clf = MambaForSequenceClassification(tiny(bidirectional=True), num_classes=3, pooling="max").eval()
    clf.save_pretrained(tmp_path / "clf")
    clf2 = MambaForSequenceClassification.from_pretrained(tmp_path / "clf").eval()
    assert (clf2.num_classes, clf2.pooling) == (3, "max")
    assert torch.equal(clf(ids), clf2(ids))
    with pytest.raises(ValueError, match="MambaForSequenceClassification"):
        MambaLMHeadModel.from_pretrained(tmp_path / "clf")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MambaLMHeadModel.from_pretrained(tmp_path)
    MambaLMHeadModel(tiny()).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"d_model": 16, "n_layer": 3, "vocab_size": 12}')
    with pytest.raises(ValueError, match="model.safetensors"):
        MambaLMHeadModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        MambaLMHeadModel.from_pretrained(tmp_path)


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    def broken_save(model, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        MambaLMHeadModel(tiny()).save_pretrained(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_config_validation():
    with pytest.raises(ValueError, match="bidirectional_strategy"):
        MambaConfig(bidirectional_strategy="concat")
    with pytest.raises(ValueError, match="d_model"):
        MambaConfig(d_model=0)
    with pytest.raises(ValueError, match="unknown fields"):
        MambaConfig.from_dict({"d_model": 8, "n_layers": 2})
    assert MambaConfig(d_model=100).dt_rank == 7


@pytest.mark.parametrize("arch", ["mamba", "transformer"])
def test_gradient_checkpointing_recomputes_blocks_and_keeps_the_gradients(arch):
    from mamba_bio_audio.models import TransformerConfig, TransformerLM

    torch.manual_seed(0)
    if arch == "mamba":
        model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4))
        switch, blocks = model.backbone, model.backbone.layers
    else:
        model = TransformerLM(TransformerConfig(d_model=16, n_layer=2, n_head=2))
        switch, blocks = model, model.layers
    ids = torch.randint(0, 12, (2, 33))
    calls, forward = [], blocks[0].forward
    blocks[0].forward = lambda *args, **kwargs: (calls.append(1), forward(*args, **kwargs))[1]  # hooks are not
    # called during recomputation, forward is
    grads = []
    for enabled in (False, True):
        switch.gradient_checkpointing = enabled
        model.zero_grad()
        calls.clear()
        model(ids).float().square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert len(calls) == (2 if enabled else 1)  # the first block ran again in the backward
    for plain, recomputed in zip(*grads):
        assert torch.allclose(plain, recomputed, atol=1e-6, rtol=1e-5)


def test_step_reuses_its_ssm_parameters_until_a_weight_changes():
    """Under no_grad `Mamba.step` computes A = −exp(A_log) once per set of weights (generation would otherwise run it
    at every token); an in-place change of a weight is seen at the next step, and the result equals a fresh step's."""
    torch.manual_seed(0)
    mixer = Mamba(16, layer_idx=0)
    conv_state, ssm_state = (s.normal_() for s in mixer.allocate_inference_cache(2))
    hidden = torch.randn(2, 16)
    computed = []
    ssm_A = mixer.ssm_A
    mixer.ssm_A = lambda: computed.append(1) or ssm_A()

    def step():
        return mixer.step(hidden, conv_state.clone(), ssm_state.clone())

    with torch.no_grad():
        first = step()
        assert torch.equal(step(), first) and len(computed) == 1
        mixer.A_log.mul_(1.5)
        changed = step()
    assert len(computed) == 2 and not torch.allclose(changed, first)
    assert torch.equal(changed, step().detach())  # with grad enabled: computed afresh, not cached
    assert len(computed) == 3
