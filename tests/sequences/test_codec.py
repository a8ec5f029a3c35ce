"""The token-id bit codec: widths, plain binary and Gray codes, out-of-range ids and codes, padding."""

import pytest
import torch

from diffusers_binflow.sequences import TokenBitCodec, bits_for_vocab, pad_token_ids


@pytest.mark.parametrize("vocab_size, num_bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (256, 8), (257, 9),
                                                  (50257, 16)])
def test_the_width_is_the_fewest_bits_that_hold_every_id(vocab_size, num_bits):
    assert bits_for_vocab(vocab_size) == num_bits == TokenBitCodec(vocab_size).num_bits


@pytest.mark.parametrize("bit_code", ["binary", "gray"])
def test_every_id_survives_the_round_trip(bit_code):
    codec = TokenBitCodec(37, bit_code)
    ids = torch.arange(37).reshape(1, 37).expand(2, 37)
    bits = codec.encode(ids)
    assert bits.shape == (2, 37, 6) and set(bits.unique().tolist()) <= {0.0, 1.0}
    decoded, out_of_range = codec.decode(bits)
    assert torch.equal(decoded, ids) and not out_of_range.any()
    assert len({tuple(row) for row in bits[0].tolist()}) == 37, "distinct ids get distinct codes"


def test_plain_binary_is_most_significant_bit_first():
    assert TokenBitCodec(8).encode(torch.tensor([5, 1])).tolist() == [[1, 0, 1], [0, 0, 1]]


def test_gray_codes_of_neighbouring_ids_differ_in_one_bit():
    codec = TokenBitCodec(1000, "gray")
    bits = codec.encode(torch.arange(1000))
    assert ((bits[1:] != bits[:-1]).sum(-1) == 1).all()
    assert codec.encode(torch.tensor(2)).tolist() == [0] * 8 + [1, 1]  # 2 ^ (2 >> 1) = 0b11


@pytest.mark.parametrize("bad", [-1, 37, 1000])
def test_encoding_an_id_outside_the_vocabulary_raises(bad):
    with pytest.raises(ValueError, match=r"in \[0, 37\)"):
        TokenBitCodec(37).encode(torch.tensor([0, bad]))


def test_float_ids_are_refused():
    with pytest.raises(ValueError, match="integers"):
        TokenBitCodec(37).encode(torch.tensor([1.0]))


@pytest.mark.parametrize("bit_code", ["binary", "gray"])
def test_codes_that_name_no_token_raise_or_are_mapped_and_reported(bit_code):
    codec = TokenBitCodec(5, bit_code)  # 3 bits: 3 of the 8 codes name no token
    every_code = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)]).float()
    with pytest.raises(ValueError, match="3 code\\(s\\) name no token"):
        codec.decode(every_code)
    ids, out_of_range = codec.decode(every_code, out_of_range_id=1)
    assert out_of_range.sum() == 3 and (ids[out_of_range] == 1).all()
    assert sorted(ids[~out_of_range].tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="out_of_range_id"):
        codec.decode(every_code, out_of_range_id=5)


def test_ids_beyond_a_smaller_tokenizer_count_as_naming_no_token():
    codec = TokenBitCodec(8)  # every 3-bit code is an id of the codec, but a tokenizer of 6 tokens lacks 6 and 7
    ids = torch.tensor([0, 5, 6, 7])
    with pytest.raises(ValueError, match=r"2 code\(s\) name no token id in \[0, 6\)"):
        codec.decode(codec.encode(ids), num_tokens=6)
    decoded, out_of_range = codec.decode(codec.encode(ids), out_of_range_id=1, num_tokens=6)
    assert decoded.tolist() == [0, 5, 1, 1] and out_of_range.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match=r"`out_of_range_id` must be in \[0, 6\)"):
        codec.decode(codec.encode(ids), out_of_range_id=6, num_tokens=6)
    for bad in (0, 9):
        with pytest.raises(ValueError, match=r"`num_tokens` must be in \[1, 8\]"):
            codec.decode(codec.encode(ids), num_tokens=bad)


def test_decoding_needs_binary_bits_of_the_codec_width():
    codec = TokenBitCodec(5)
    with pytest.raises(ValueError, match="shape"):
        codec.decode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        codec.decode(torch.full((2, 3), 0.5))


def test_unknown_bit_codes_are_refused():
    with pytest.raises(ValueError, match="bit_code"):
        TokenBitCodec(5, "hamming")


def test_padding_fills_to_the_length_and_refuses_longer_sequences():
    assert pad_token_ids([[3, 4], [5]], 4, pad_id=0).tolist() == [[3, 4, 0, 0], [5, 0, 0, 0]]
    with pytest.raises(ValueError, match="longer than 2 tokens"):
        pad_token_ids([[3, 4, 5]], 2, pad_id=0)
