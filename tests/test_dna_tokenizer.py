import subprocess
import sys

import numpy as np
import pytest
import torch

from mamba_bio_audio.dna import DNATokenizer

tok = DNATokenizer()


def test_fixed_ids():
    expected = {"CLS": 0, "SEP": 1, "BOS": 2, "MASK": 3, "PAD": 4, "RESERVED": 5, "UNK": 6,
                "A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
    assert {name: getattr(DNATokenizer, f"{name}_ID") for name in expected} == expected
    assert DNATokenizer.vocab_size == 12 == len(DNATokenizer.TOKENS)
    assert DNATokenizer.TOKENS[DNATokenizer.PAD_ID] == "[PAD]"
    ids = tok.encode("ACGTN")
    assert ids.dtype == torch.int64 and ids.shape == (5,)
    assert ids.tolist() == [7, 8, 9, 10, 11]


def test_str_and_bytes_agree():
    assert torch.equal(tok.encode("GATTACA"), tok.encode(b"GATTACA"))
    assert tok.encode("").shape == (0,)


def test_lowercase_is_uppercased_by_default():
    assert tok.encode("acgtn").tolist() == [7, 8, 9, 10, 11]
    assert tok.encode("AcGt").tolist() == [7, 8, 9, 10]


def test_hard_mask_turns_lowercase_bases_into_n():
    assert DNATokenizer(hard_mask=True).encode("AcGtn").tolist() == [7, 11, 9, 11, 11]


@pytest.mark.parametrize("code", list("RYSWKMBDHV") + list("ryswkmbdhv"))
def test_iupac_codes_map_to_n(code):
    assert tok.encode(f"A{code}T").tolist() == [7, 11, 10]


@pytest.mark.parametrize("seq, char, position", [("ACG7T", "7", 3), ("AC-GT", "-", 2), ("ACGT ", " ", 4),
                                                  ("AXCG", "X", 1), ("ACé", "é", 2), (b"AC\nG", "\n", 2)])
def test_invalid_character_error_names_char_and_position(seq, char, position):
    with pytest.raises(ValueError) as info:
        tok.encode(seq)
    message = str(info.value)
    assert repr(char) in message and f"position {position}" in message


def test_invalid_character_error_includes_record_name():
    with pytest.raises(ValueError, match=r"'\*' at position 1 in 'chrM'"):
        tok.encode("A*", name="chrM")
    with pytest.raises(ValueError, match="chr2"):
        tok.soft_mask("a1", name="chr2")


def test_round_trip():
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGTNacgtn"), size=1000))
    assert tok.decode(tok.encode(seq)) == seq.upper()
    assert tok.decode(tok.encode(seq).numpy()) == seq.upper()
    assert tok.decode([7, 8]) == "AC"


def test_decode_drops_special_tokens():
    ids = torch.tensor([DNATokenizer.CLS_ID, 7, DNATokenizer.MASK_ID, 11, 10, DNATokenizer.SEP_ID,
                        DNATokenizer.PAD_ID, DNATokenizer.PAD_ID])
    assert tok.decode(ids) == "ANT"


@pytest.mark.parametrize("ids", [[12], [-1], [[7, 8]]])
def test_decode_rejects_bad_ids(ids):
    with pytest.raises(ValueError):
        tok.decode(ids)


def test_reverse_complement_known_example():
    rc = DNATokenizer.reverse_complement(tok.encode("ACGTN"))
    assert tok.decode(rc) == "NACGT"
    assert tok.decode(DNATokenizer.reverse_complement(tok.encode("AACCGT"))) == "ACGGTT"


def test_reverse_complement_keeps_special_tokens():
    ids = torch.tensor([DNATokenizer.CLS_ID, 7, 8, DNATokenizer.SEP_ID])
    assert DNATokenizer.reverse_complement(ids).tolist() == [DNATokenizer.SEP_ID, 9, 10, DNATokenizer.CLS_ID]


def test_reverse_complement_batch_and_involution():
    batch = torch.stack([tok.encode("AACGTN"), tok.encode("GGGTTA")]).to(torch.int32)
    rc = DNATokenizer.reverse_complement(batch)
    assert rc.shape == (2, 6) and rc.dtype == torch.int32
    assert [tok.decode(row) for row in rc] == ["NACGTT", "TAACCC"]
    assert torch.equal(DNATokenizer.reverse_complement(rc), batch)
    random_ids = torch.randint(0, DNATokenizer.vocab_size, (3, 4, 50))
    assert torch.equal(DNATokenizer.reverse_complement(DNATokenizer.reverse_complement(random_ids)), random_ids)


def test_reverse_complement_rejects_bad_input():
    with pytest.raises(TypeError):
        DNATokenizer.reverse_complement(torch.tensor([7.0]))
    with pytest.raises(ValueError):
        DNATokenizer.reverse_complement(torch.tensor([12]))


def test_soft_mask():
    mask = DNATokenizer.soft_mask("ACgtNnA")
    assert mask.dtype == torch.bool and mask.shape == (7,)
    assert mask.tolist() == [False, False, True, True, False, True, False]
    assert DNATokenizer.soft_mask(b"ac").tolist() == [True, True]


def test_encode_is_fast():
    import time
    seq = bytes(np.random.default_rng(0).choice(np.frombuffer(b"ACGTacgtN", np.uint8), size=5_000_000))
    tok.encode(seq[:1000])
    start = time.perf_counter()
    ids = tok.encode(seq)
    elapsed = time.perf_counter() - start
    assert ids.shape == (5_000_000,)
    assert elapsed < 5_000_000 / 50e6, f"encoding ran at {5 / elapsed:.0f} MB/s"


def test_import_does_not_load_pysam():
    code = "import sys, mamba_bio_audio.dna; assert 'pysam' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
