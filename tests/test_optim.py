import pytest

from mamba_bio_audio import MambaConfig, MambaLMHeadModel
from mamba_bio_audio.optim import parameter_groups, warmup_cosine


def test_no_weight_decay_on_A_D_norms_and_biases():
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=12, complex_ssm=True))
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    for n in names.values():
        if n.endswith(("A_log", "A_imag", ".D", "norm.weight", "norm_f.weight", "bias")):
            assert n in no_decay_names, n
    assert "backbone.layers.0.mixer.in_proj.weight" in decay_names
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0.0) == 0.0
    assert warmup_cosine(0.05) == pytest.approx(0.5)
    assert warmup_cosine(0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55) == pytest.approx(0.55)
    assert warmup_cosine(1.0) == pytest.approx(0.1)
    assert warmup_cosine(2.0) == pytest.approx(0.1)
