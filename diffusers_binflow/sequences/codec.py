"""Token ids as fixed-width bit vectors, the representation binary flow matching generates.

A vocabulary of ``V`` tokens needs ``num_bits = ceil(log2(V))`` bits (at least 1). Token id ``i`` is written with its
most significant bit first, either as plain binary or as its reflected Gray code ``i ^ (i >> 1)`` (neighbouring ids
then differ in one bit). When ``V`` is not a power of two, ``2**num_bits - V`` codes name no token (nor do the ids a
tokenizer smaller than ``V`` lacks): encoding an id outside ``[0, V)`` raises, and decoding such a code either raises
or maps it to an explicit replacement id, and always reports where that happened.
"""

import math

import torch

from ..utils import check_choice

BIT_CODES = ("binary", "gray")


def bits_for_vocab(vocab_size: int) -> int:
    """The fixed width that holds every id of a vocabulary of `vocab_size` tokens."""
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"`vocab_size` must be a positive integer, got {vocab_size!r}.")
    return max(1, math.ceil(math.log2(vocab_size)))


def gray_encode(codes: torch.Tensor) -> torch.Tensor:
    return codes ^ (codes >> 1)


def gray_decode(codes: torch.Tensor) -> torch.Tensor:
    # Inverse of g = b ^ (b >> 1): b is the prefix XOR of g's bits, folded in log2(64) shifts.
    shift = 1
    while shift < 64:
        codes = codes ^ (codes >> shift)
        shift *= 2
    return codes


class TokenBitCodec:
    """
    Maps token ids of shape (...) to bits of shape (..., num_bits) in {0, 1} (float) and back.

    Args:
        vocab_size (`int`): Number of token ids, ``[0, vocab_size)``.
        bit_code (`str`): `"binary"` or `"gray"`.
    """

    def __init__(self, vocab_size: int, bit_code: str = "binary"):
        check_choice("bit_code", bit_code, BIT_CODES)
        self.vocab_size = vocab_size
        self.num_bits = bits_for_vocab(vocab_size)
        self.bit_code = bit_code

    def __repr__(self) -> str:
        return f"TokenBitCodec(vocab_size={self.vocab_size}, bit_code={self.bit_code!r}, num_bits={self.num_bits})"

    def _weights(self, device) -> torch.Tensor:
        return 2 ** torch.arange(self.num_bits - 1, -1, -1, device=device, dtype=torch.long)

    def encode(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Bits (..., num_bits), most significant first; ids outside ``[0, vocab_size)`` raise a `ValueError`."""
        token_ids = torch.as_tensor(token_ids)
        if token_ids.is_floating_point() or token_ids.is_complex():
            raise ValueError(f"Token ids must be integers, got a {token_ids.dtype} tensor.")
        token_ids = token_ids.long()
        outside = (token_ids < 0) | (token_ids >= self.vocab_size)
        if outside.any():
            raise ValueError(f"Token ids must be in [0, {self.vocab_size}) for this codec, got "
                             f"{torch.unique(token_ids[outside])[:6].tolist()}.")
        codes = gray_encode(token_ids) if self.bit_code == "gray" else token_ids
        return ((codes.unsqueeze(-1) & self._weights(codes.device)) > 0).float()

    def decode(
        self, bits: torch.Tensor, out_of_range_id: int | None = None, num_tokens: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Token ids (...) from bits (..., num_bits) in {0, 1}.

        Returns ``(token_ids, out_of_range)``: `out_of_range` is a bool tensor (...) marking codes that name no
        token: ids at or above `num_tokens` (default `vocab_size`; pass a smaller tokenizer's length when only its
        ids name tokens). Those raise a `ValueError` unless `out_of_range_id` (e.g. the tokenizer's unk id) is
        given, which then replaces them.
        """
        num_tokens = self.vocab_size if num_tokens is None else num_tokens
        if not 1 <= num_tokens <= self.vocab_size:
            raise ValueError(f"`num_tokens` must be in [1, {self.vocab_size}], got {num_tokens}.")
        if bits.shape[-1:] != (self.num_bits,):
            raise ValueError(f"Expected bits of shape (..., {self.num_bits}), got {tuple(bits.shape)}.")
        if not ((bits == 0) | (bits == 1)).all():
            raise ValueError("Bits must hold only 0 and 1; threshold a signal with `signal_to_bits` first.")
        codes = (bits.long() * self._weights(bits.device)).sum(-1)
        token_ids = gray_decode(codes) if self.bit_code == "gray" else codes
        out_of_range = token_ids >= num_tokens
        if out_of_range.any():
            if out_of_range_id is None:
                raise ValueError(f"{int(out_of_range.sum())} code(s) name no token id in [0, {num_tokens}); "
                                 "pass `out_of_range_id` to map them to a token.")
            if not 0 <= out_of_range_id < num_tokens:
                raise ValueError(f"`out_of_range_id` must be in [0, {num_tokens}), got {out_of_range_id}.")
            token_ids = torch.where(out_of_range, torch.full_like(token_ids, out_of_range_id), token_ids)
        return token_ids, out_of_range


def pad_token_ids(sequences: list[list[int]], length: int, pad_id: int) -> torch.Tensor:
    """Right-pad id lists with `pad_id` to a (N, length) tensor; a longer sequence raises a `ValueError`.

    The pad token is an ordinary token for the flow: a model trained on padded sequences generates the padding
    too, which is how it chooses a length.
    """
    too_long = [i for i, seq in enumerate(sequences) if len(seq) > length]
    if too_long:
        raise ValueError(f"{len(too_long)} sequence(s) are longer than {length} tokens (e.g. item {too_long[0]} "
                         f"has {len(sequences[too_long[0]])}).")
    return torch.tensor([list(seq) + [pad_id] * (length - len(seq)) for seq in sequences], dtype=torch.long)


def ids_to_texts(tokenizer, token_ids) -> list[str]:
    """Texts of token ids (N, L) without padding or other special tokens, except the unk token: a position whose code
    named no token (replaced by unk, see `TokenBitCodec.decode`) stays visible instead of vanishing from the text."""
    hidden = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    return tokenizer.batch_decode([[i for i in row if i not in hidden] for row in torch.as_tensor(token_ids).tolist()])
