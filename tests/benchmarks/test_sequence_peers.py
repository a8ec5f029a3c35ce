"""benchmarks.sequence_peers: the token-level peers' losses are what their papers define, and their samplers return
vocabulary ids, keep given tokens and use the stated number of network evaluations."""

import math

import pytest
import torch

from benchmarks.sequence_peers import KINDS, build_peer, peer_loss, sample_peer

VOCAB, LENGTH = 14, 6


class Flat(torch.nn.Module):
    """A denoiser that knows nothing: equal logits for every token; counts its calls."""

    calls = 0

    def forward(self, tokens, t):
        self.calls += 1
        return torch.zeros(*tokens.shape, VOCAB)


def ids(seed=0, n=8):
    return torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))


def test_uniform_state_loss_of_a_flat_guess_is_log_vocab():
    loss = peer_loss("uniform", Flat(), ids(), VOCAB, torch.Generator().manual_seed(0))
    assert torch.isclose(loss, torch.tensor(math.log(VOCAB)))


def test_masked_loss_counts_only_masked_tokens_weighted_by_one_over_t():
    tokens = ids()
    loss = peer_loss("masked", Flat(), tokens, VOCAB, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)  # replay the draws: t per sequence, then the masks
    t = torch.rand(tokens.shape[0], generator=generator)
    masked = torch.rand(tokens.shape, generator=generator) < t[:, None]
    assert masked.any() and not masked.all()
    torch.testing.assert_close(loss, math.log(VOCAB) * (masked / t[:, None]).mean())


def test_autoregressive_loss_is_next_token_cross_entropy_after_a_begin_token():
    model = build_peer("autoregressive", VOCAB, LENGTH, hidden_size=32, num_layers=1, num_heads=2).eval()
    tokens = ids()
    logits = model(input_ids=torch.cat([torch.full((8, 1), VOCAB), tokens[:, :-1]], dim=1)).logits[..., :VOCAB]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens.reshape(-1))
    torch.testing.assert_close(peer_loss("autoregressive", model, tokens, VOCAB, None), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_samplers_return_vocabulary_ids_and_keep_the_given_tokens(kind):
    model = build_peer(kind, VOCAB, LENGTH, hidden_size=32, num_layers=1, num_heads=2).eval()
    known = ids(1, n=5)
    keep = torch.zeros(5, LENGTH, dtype=torch.bool)
    keep[:, :3] = True  # a prefix, as in "a+b=" -> c
    keep[0, 4] = True  # and a later position
    tokens = sample_peer(kind, model, 5, LENGTH, VOCAB, nfe=3, generator=torch.Generator().manual_seed(0),
                         known=known, keep=keep)
    assert tokens.shape == (5, LENGTH) and tokens.min() >= 0 and tokens.max() < VOCAB
    assert torch.equal(tokens[keep], known[keep])


@pytest.mark.parametrize("kind, nfe, calls", [("uniform", 4, 4), ("masked", 4, 4)])
def test_diffusion_peers_take_nfe_evaluations(kind, nfe, calls):
    model = Flat()
    tokens = sample_peer(kind, model, 3, LENGTH, VOCAB, nfe=nfe, generator=torch.Generator().manual_seed(0))
    assert model.calls == calls and tokens.max() < VOCAB  # the masked sampler reveals every token by t = 0
