"""Small tokenizers trained offline with the `tokenizers` library, wrapped as `PreTrainedTokenizerFast`, and the
conversion of texts to fixed-length id tensors.

Every tokenizer made here has the special tokens ``[PAD]`` (id 0; fills sequences up to the model's length) and
``[UNK]`` (id 1; what an out-of-vocabulary piece or a generated code that names no token becomes).
"""

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..utils import check_choice
from .codec import pad_token_ids

TOKENIZER_KINDS = ("char", "word", "bpe")
PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"


def train_tokenizer(texts: list[str], kind: str = "char", vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """
    Train a tokenizer on `texts`.

    Args:
        kind (`str`): `"char"` (one token per character), `"word"` (whitespace-separated words) or `"bpe"` (byte-pair
            merges over characters, words marked by a leading "▁").
        vocab_size (`int`, *optional*): The largest vocabulary (special tokens included); needed for `"bpe"`.
    """
    check_choice("tokenizer kind", kind, TOKENIZER_KINDS)
    special = [PAD_TOKEN, UNK_TOKEN]
    limit = {} if vocab_size is None else {"vocab_size": vocab_size}
    if kind == "bpe":
        if vocab_size is None:
            raise ValueError("A BPE tokenizer needs a `vocab_size`.")
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.BpeTrainer(special_tokens=special, **limit)
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
        if kind == "char":
            tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.Split(Regex("."), "isolated"), decoders.Fuse()
        else:
            tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(special_tokens=special, **limit)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN)


def tokenize_to_length(tokenizer, texts: list[str], length: int | None = None) -> torch.Tensor:
    """Token ids (N, length) of `texts`, right-padded with the tokenizer's pad token (no other special tokens).

    `length` defaults to the longest text's; a text with more tokens raises a `ValueError`.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; sequences of a fixed length need one.")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    length = max(map(len, ids)) if length is None else length
    return pad_token_ids(ids, length, tokenizer.pad_token_id)
