"""Reverse-complement parameter sharing (Caduceus-PS style): the backbone, the RC-equivariant LM head and the
RC-invariant classifier, checked exactly on random DNA (float64) for causal and bidirectional mixers."""
from __future__ import annotations

import pytest
import torch

from mamba_bio_audio import MambaConfig, MambaLMHeadModel
from mamba_bio_audio.dna import DNATokenizer
from mamba_bio_audio.models import MambaBackbone, MambaForSequenceClassification

rc = DNATokenizer.reverse_complement


def config(bidirectional):
    return MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4, bidirectional=bidirectional,
                       rc_equivariant=True)


def random_dna(shape, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 12, shape, generator=g)  # A, C, G, T, N
    return ids


@pytest.mark.parametrize("bidirectional", [False, True])
def test_backbone_output_on_the_reverse_complement_is_the_flipped_output(bidirectional):
    torch.manual_seed(0)
    model = MambaBackbone(config(bidirectional)).double()
    ids = random_dna((3, 40), 1)
    out, out_rc = model(ids), model(rc(ids))
    assert out.shape == (3, 40, 32)
    torch.testing.assert_close(out_rc, out.flip(1, 2), rtol=1e-10, atol=1e-10)
    plain = MambaBackbone(MambaConfig(**{**config(bidirectional).__dict__, "rc_equivariant": False})).double()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(out[..., :16], plain(ids))  # the forward half is the plain network


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lm_head_is_rc_equivariant(bidirectional):
    torch.manual_seed(1)
    model = MambaLMHeadModel(config(bidirectional)).double()
    ids = random_dna((2, 33), 2)
    logits, logits_rc = model(ids), model(rc(ids))
    complement = rc(torch.arange(12)[None]).flip(-1)[0]
    assert complement[7:11].tolist() == [10, 9, 8, 7]
    torch.testing.assert_close(logits_rc, logits.flip(1)[..., complement], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_classifier_is_rc_invariant_and_rejects_strand_dependent_pooling(pooling):
    torch.manual_seed(2)
    model = MambaForSequenceClassification(config(True), num_classes=5, pooling=pooling).double()
    ids = random_dna((4, 50), 3)
    torch.testing.assert_close(model(rc(ids)), model(ids), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(model(ids), model(ids.flip(-1)))  # invariant to RC, not to a mere reversal
    with pytest.raises(ValueError, match="pools by 'mean' or 'max'"):
        MambaForSequenceClassification(config(True), num_classes=5, pooling="last")


def test_rc_equivariant_backbone_has_no_recurrent_inference():
    model = MambaLMHeadModel(config(False))
    with pytest.raises(ValueError, match="no recurrent inference"):
        model.backbone(random_dna((1, 8), 4), cache=object())
