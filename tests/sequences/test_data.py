"""The exact-correctness tasks and the tokenizers trained on them."""

import pytest
import torch

from diffusers_binflow.sequences import (
    ArithmeticStatements,
    BalancedBrackets,
    SudokuGrids,
    get_task,
    tokenize_to_length,
    train_tokenizer,
    valid_fraction,
)


@pytest.mark.parametrize("text, valid", [("17+25=42", True), ("0+0=0", True), ("99+99=198", True),
                                         ("17+25=43", False), ("07+25=32", False), ("17+25=042", False),
                                         ("100+1=101", False), ("17+25=42+", False), ("17+=17", False), ("", False),
                                         ("17 +25=42", False)])
def test_arithmetic_validity_is_exact(text, valid):
    assert ArithmeticStatements(max_operand=99).is_valid(text) is valid


def test_arithmetic_splits_are_disjoint_valid_and_complete():
    task = ArithmeticStatements(max_operand=19, heldout_fraction=0.1)
    train, heldout, every = task.texts("train"), task.texts("heldout"), task.texts("all")
    assert len(every) == 400 and len(heldout) == 40 and sorted(train + heldout) == sorted(every)
    assert valid_fraction(task, every) == 1.0
    assert max(map(len, every)) == task.max_chars == len("19+19=38")
    assert ArithmeticStatements(max_operand=19, heldout_fraction=0.1).texts("heldout") == heldout


@pytest.mark.parametrize("text, valid", [("()", True), ("([])[]", True), ("([)]", False), ("(", False),
                                         (")(", False), ("", False), ("(a)", False), ("()" * 9, False)])
def test_bracket_validity_is_exact(text, valid):
    assert BalancedBrackets(max_length=16).is_valid(text) is valid


def test_bracket_samples_are_balanced_varied_and_reproducible():
    task = BalancedBrackets(max_length=12, num_train=500, num_heldout=50)
    train = task.texts("train")
    assert len(train) == 500 and valid_fraction(task, train) == 1.0 and len(set(train)) > 200
    assert {len(t) for t in train} == {2, 4, 6, 8, 10, 12}
    assert task.texts("train") == train and task.texts("heldout") != train[:50]


def test_sudoku_enumerates_the_288_solved_grids_and_checks_every_unit():
    task = SudokuGrids(heldout_fraction=0.1)
    every, train, heldout = task.texts("all"), task.texts("train"), task.texts("heldout")
    assert len(set(every)) == 288 and len(heldout) == 29 and sorted(train + heldout) == every  # 288 is known
    assert valid_fraction(task, every) == 1.0
    grid = every[0]
    swapped_in_row = grid[1] + grid[0] + grid[2:]  # rows still hold 1-4, the first two columns no longer do
    assert not task.is_valid(swapped_in_row) and not task.is_valid(grid[:15]) and not task.is_valid("5" + grid[1:])
    assert get_task("sudoku").texts("heldout") == heldout


def test_valid_fraction_counts_exactly():
    assert valid_fraction(ArithmeticStatements(), ["1+1=2", "1+1=3", "2+2=4", "x"]) == 0.5


def test_unknown_tasks_and_splits_are_refused():
    with pytest.raises(ValueError, match="arithmetic"):
        get_task("chess")
    with pytest.raises(ValueError, match="split"):
        ArithmeticStatements().texts("test")


@pytest.mark.parametrize("kind, texts", [("char", ["17+25=42", "3+4=7"]),
                                         ("word", ["the cat sat", "a cat ran"]),
                                         ("bpe", ["the cat sat", "the cats sat on the mat"] * 5)])
def test_trained_tokenizers_round_trip_their_texts_with_pad_and_unk(kind, texts):
    tokenizer = train_tokenizer(texts, kind, vocab_size=40 if kind == "bpe" else None)
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 1
    ids = tokenize_to_length(tokenizer, texts, length=30)
    assert ids.shape == (len(texts), 30) and (ids[:, -1] == 0).all()
    assert tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True) == texts


def test_tokenizing_to_a_length_refuses_longer_texts_and_defaults_to_the_longest():
    tokenizer = train_tokenizer(["17+25=42"], "char")
    assert tokenize_to_length(tokenizer, ["1+1=2", "17+25=42"]).shape == (2, 8)
    assert torch.equal(tokenize_to_length(tokenizer, ["1+1=2"], 6)[0, -1], torch.tensor(0))
    with pytest.raises(ValueError, match="longer than 5 tokens"):
        tokenize_to_length(tokenizer, ["17+25=42"], 5)
