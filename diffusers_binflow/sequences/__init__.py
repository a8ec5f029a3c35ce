"""Discrete token sequences generated through bits: the codec, the transformer denoiser, tokenizers and tasks."""

from .codec import BIT_CODES, TokenBitCodec, bits_for_vocab, pad_token_ids
from .data import (
    SEQUENCE_TASKS,
    ArithmeticStatements,
    BalancedBrackets,
    SudokuGrids,
    get_task,
    valid_fraction,
)
from .model import (
    SEQUENCE_MODEL_PRESETS,
    BitSequenceTransformer,
    BitSequenceTransformerOutput,
    SequenceBackbone,
    build_sequence_model,
    known_tokens_for_training,
    sample_known_mask,
)
from .tokenization import TOKENIZER_KINDS, tokenize_to_length, train_tokenizer

__all__ = [
    "BIT_CODES",
    "SEQUENCE_MODEL_PRESETS",
    "SEQUENCE_TASKS",
    "TOKENIZER_KINDS",
    "ArithmeticStatements",
    "BalancedBrackets",
    "BitSequenceTransformer",
    "BitSequenceTransformerOutput",
    "SequenceBackbone",
    "SudokuGrids",
    "TokenBitCodec",
    "bits_for_vocab",
    "build_sequence_model",
    "known_tokens_for_training",
    "sample_known_mask",
    "get_task",
    "pad_token_ids",
    "tokenize_to_length",
    "train_tokenizer",
    "valid_fraction",
]
