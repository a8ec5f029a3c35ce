"""The token-level peers of the sequence benchmark: the models people would pick instead of bits, with their losses
and samplers. Token ids are (B, L) in [0, vocab_size); every sampler can keep given tokens (``known`` ids where
``keep`` is True), which is how infill is scored.

- ``uniform``: D3PM uniform-state diffusion: each token is kept with probability 1 - t, else replaced by a uniform
  one; cross-entropy on the clean token; sampled with diffusers' `DiscreteDDIMScheduler` (temperature 1).
- ``masked``: masked (absorbing-state) diffusion, MDLM's loss for the linear schedule alpha_t = 1 - t (Sahoo et al.
  2024): each token is masked with probability t; the loss is the cross-entropy on the masked tokens weighted by
  1 / t; sampled ancestrally: from t to s < t each masked token is revealed with probability (t - s) / t, drawn from
  the model's distribution, and stays.
- ``autoregressive``: a causal language model built from a `transformers` config (GPT-2 style, from scratch, no
  download): next-token cross-entropy after a begin token; sampled left to right at temperature 1, given tokens
  forced where they are known. It always takes L network evaluations.

The denoisers (`TokenDenoiser`) share the flow model's `SequenceBackbone`, with the noise level t * 1000 as its
timestep (t = 1 is noise).
"""

import torch
import torch.nn.functional as F
from diffusers import DiscreteDDIMScheduler
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from diffusers_binflow.sequences import SequenceBackbone

KINDS = ("uniform", "masked", "autoregressive")
NUM_TRAIN_TIMESTEPS = 1000
MIN_MASK_RATE = 1e-3  # MDLM's 1 / t weight is kept finite at the data end


class TokenDenoiser(nn.Module):
    """Token ids (B, L) and the noise level t * 1000 -> logits over the vocabulary (B, L, vocab_size), on the flow
    model's backbone. `extra_tokens` input ids beyond the vocabulary (the mask) are embedded but never predicted."""

    def __init__(self, vocab_size: int, max_length: int, hidden_size: int, num_layers: int, num_heads: int,
                 extra_tokens: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size + extra_tokens, hidden_size)
        self.backbone = SequenceBackbone("bert", hidden_size, num_layers, num_heads, None, max_length, 0.0, None)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, token_ids: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.embed(token_ids), timestep))


def build_peer(kind: str, vocab_size: int, max_length: int, hidden_size: int, num_layers: int, num_heads: int):
    """The network of a peer, at the flow model's width and depth."""
    if kind == "autoregressive":
        # The begin token is id vocab_size; the same init scale as `SequenceBackbone` (1 / sqrt(width)).
        config = GPT2Config(vocab_size=vocab_size + 1, n_positions=max_length + 1, n_embd=hidden_size,
                            n_layer=num_layers, n_head=num_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=vocab_size, eos_token_id=vocab_size, initializer_range=hidden_size**-0.5)
        return GPT2LMHeadModel(config)
    return TokenDenoiser(vocab_size, max_length, hidden_size, num_layers, num_heads,
                         extra_tokens=1 if kind == "masked" else 0)


# ------------------------------------------------------------------------------------------------------ losses

def peer_loss(kind: str, model, token_ids: torch.Tensor, vocab_size: int, generator: torch.Generator):
    """One batch's training loss of peer `kind` (randomness from `generator`)."""
    if kind == "autoregressive":
        return autoregressive_loss(model, token_ids, vocab_size)
    t = torch.rand(token_ids.shape[0], generator=generator)
    corrupt = torch.rand(token_ids.shape, generator=generator) < t[:, None]
    if kind == "uniform":
        noisy = torch.where(corrupt, torch.randint(0, vocab_size, token_ids.shape, generator=generator), token_ids)
        logits = model(noisy, t * NUM_TRAIN_TIMESTEPS)
        return F.cross_entropy(logits.reshape(-1, vocab_size), token_ids.reshape(-1))
    # masked: the mask id is vocab_size; only masked tokens carry a loss, weighted 1 / t (MDLM, alpha_t = 1 - t)
    logits = model(torch.where(corrupt, vocab_size, token_ids), t * NUM_TRAIN_TIMESTEPS)
    nll = F.cross_entropy(logits.transpose(1, 2), token_ids, reduction="none")
    return (nll * corrupt / t.clamp_min(MIN_MASK_RATE)[:, None]).mean()


def with_begin_token(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return torch.cat([torch.full_like(token_ids[:, :1], vocab_size), token_ids], dim=1)


def autoregressive_loss(model, token_ids: torch.Tensor, vocab_size: int):
    """Next-token cross-entropy of every position given the begin token and the tokens before it."""
    logits = model(input_ids=with_begin_token(token_ids, vocab_size)[:, :-1]).logits[..., :vocab_size]
    return F.cross_entropy(logits.reshape(-1, vocab_size), token_ids.reshape(-1))


# ------------------------------------------------------------------------------------------------------ samplers

@torch.no_grad()
def sample_peer(kind: str, model, num_samples: int, length: int, vocab_size: int, nfe: int,
                generator: torch.Generator, known: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
    """`num_samples` sequences of token ids (B, L) with `nfe` network evaluations (L for the autoregressive model),
    keeping ``known`` where ``keep`` is True."""
    if known is None:
        known = torch.zeros(num_samples, length, dtype=torch.long)
        keep = torch.zeros(num_samples, length, dtype=torch.bool)
    sampler = {"uniform": sample_uniform, "masked": sample_masked, "autoregressive": sample_autoregressive}[kind]
    return sampler(model, num_samples, length, vocab_size, nfe, generator, known, keep)


def sample_uniform(model, n, length, vocab_size, nfe, generator, known, keep):
    scheduler = DiscreteDDIMScheduler(num_inference_steps=nfe)
    scheduler.set_timesteps(nfe)
    tokens = torch.where(keep, known, torch.randint(0, vocab_size, (n, length), generator=generator))
    for step in scheduler.timesteps:
        t = torch.full((n,), 1 - step.item() / nfe) * NUM_TRAIN_TIMESTEPS
        tokens = scheduler.step(model(tokens, t), step, tokens, temperature=1.0, generator=generator).prev_sample
        tokens = torch.where(keep, known, tokens)
    return tokens


def sample_masked(model, n, length, vocab_size, nfe, generator, known, keep):
    tokens = torch.where(keep, known, vocab_size)  # all masked but the given tokens
    levels = torch.linspace(1, 0, nfe + 1)
    for t, s in zip(levels[:-1], levels[1:]):
        probabilities = model(tokens, torch.full((n,), float(t) * NUM_TRAIN_TIMESTEPS)).softmax(-1)
        drawn = torch.multinomial(probabilities.reshape(-1, vocab_size), 1, generator=generator).view(n, length)
        reveal = (tokens == vocab_size) & (torch.rand(n, length, generator=generator) < (t - s) / t)
        tokens = torch.where(reveal, drawn, tokens)
    return tokens


def sample_autoregressive(model, n, length, vocab_size, nfe, generator, known, keep):
    sequence = torch.full((n, 1), vocab_size)  # the begin token
    for position in range(length):
        logits = model(input_ids=sequence).logits[:, -1, :vocab_size]
        drawn = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        sequence = torch.cat([sequence, torch.where(keep[:, position], known[:, position], drawn)[:, None]], dim=1)
    return sequence[:, 1:]
