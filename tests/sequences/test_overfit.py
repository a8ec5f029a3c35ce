"""A small `BitSequenceTransformer` must memorise a handful of statements fast (issue 14).

Real components end to end: the character tokenizer, the library's flow loss (x-space cross-entropy on per-bit
logits, uniform sigma, self-conditioning), the benchmarks' Adam loop and `BinaryFlowSequencePipeline` for
sampling. A denoiser that cannot overfit 20 statements in a CPU minute cannot learn the 360 of
benchmarks/sequence_validity.py in its budget.
With the encoder's stock initialisation (std 0.02) and a constant learning rate of 1e-3 it fails: 191 of 200 valid.
"""

import random

import torch

from benchmarks.training_loop import train_loop
from diffusers_binflow import BinaryFlowMatchScheduler
from diffusers_binflow.pipelines import BinaryFlowSequencePipeline
from diffusers_binflow.sequences import (
    ArithmeticStatements,
    BitSequenceTransformer,
    tokenize_to_length,
    train_tokenizer,
)
from diffusers_binflow.training import FlowLossConfig, flow_matching_loss

NUM_STATEMENTS, STEPS, BATCH_SIZE = 20, 4000, 64


def test_a_small_denoiser_memorises_twenty_statements():
    torch.set_num_threads(1)
    task = ArithmeticStatements(max_operand=19)
    tokenizer = train_tokenizer(task.texts("all"), "char")
    statements = sorted(random.Random(0).sample(task.texts("train"), NUM_STATEMENTS))
    token_ids = tokenize_to_length(tokenizer, statements)
    config = FlowLossConfig(prediction_type="logits", loss_type="bce", timestep_sampling="uniform",
                            self_conditioning=True)

    training = train_loop(
        lambda: BitSequenceTransformer(vocab_size=len(tokenizer), max_length=token_ids.shape[1], hidden_size=64,
                                       num_layers=2, num_heads=4, self_conditioning=True),
        lambda model, batch, generator: flow_matching_loss(model, model.codec.encode(batch), config,
                                                           generator=generator).loss,
        lambda generator: token_ids[torch.randint(0, len(token_ids), (BATCH_SIZE,), generator=generator)],
        STEPS, seed=0, noise_seed=1, lr=3e-3, warmup_steps=100, cosine_decay=True, max_grad_norm=1.0)
    pipe = BinaryFlowSequencePipeline(denoiser=training.model, tokenizer=tokenizer,
                                      scheduler=BinaryFlowMatchScheduler(prediction_type="logits"))
    pipe.set_progress_bar_config(disable=True)
    texts = pipe(batch_size=200, num_inference_steps=16, generator=torch.Generator().manual_seed(7)).sequences

    valid = [text for text in texts if task.is_valid(text)]
    assert len(valid) / len(texts) >= 0.99, f"{len(valid)} of {len(texts)} valid, e.g. {texts[:8]}"
    assert set(valid) <= set(statements), f"valid statements outside the training set: {set(valid) - set(statements)}"
