"""The discrete peers (benchmarks/discrete_peers.py): their corruptions and samplers behave as documented, for
images and for flat bit vectors alike."""

import importlib.util
import math

import pytest
import torch

from benchmarks import discrete_peers
from benchmarks.alignment_toy import BitTransformer, GatedMLP

HAVE_META = importlib.util.find_spec("flow_matching") is not None
NEEDS_META = pytest.mark.skipif(not HAVE_META, reason="Meta's flow_matching is not installed (CC BY-NC 4.0, so not by "
                                "`make install`; `make peers` installs it)")


class Probe(torch.nn.Module):
    """Records what the peer shows the network; answers zero logits (BCE = log 2 everywhere)."""

    def forward(self, sample, timestep, return_dict=False):
        self.sample, self.timestep = sample, timestep
        return (torch.zeros(sample.shape[0], *self.out_shape, requires_grad=True),)


@pytest.mark.parametrize("shape", [(1, 28, 28), (16,)])
def test_uniform_flip_corruption_follows_its_survival_probability(shape):
    """A bit survives with probability 1 - t and is otherwise a fair coin: P(changed) = t / 2."""
    bits = (torch.rand(256, *shape, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    probe = Probe()
    probe.out_shape = shape
    loss, noise_level, _ = discrete_peers.peer_loss("uniform_flip", probe, bits, torch.Generator().manual_seed(1))
    changed = (probe.sample != 2 * bits - 1).float().flatten(1).mean(1)
    torch.testing.assert_close(probe.timestep, noise_level * 1000)
    slope = (changed * noise_level).sum() / (noise_level**2).sum()  # least squares through 0
    assert abs(slope.item() - 0.5) < 0.02 + 0.1 * (bits[0].numel() < 100)  # fewer bits per sample: more noise
    torch.testing.assert_close(loss, torch.tensor(math.log(2)))


@NEEDS_META
def test_mask_source_inputs_show_masked_bits_as_zero_with_a_mask_channel():
    state = torch.tensor([0, 1, discrete_peers.MASK, 1]).view(1, 1, 2, 2)
    inputs = discrete_peers.network_inputs("dfm_mask", state)
    assert inputs.shape == (1, 2, 2, 2)
    assert inputs[0, 0].flatten().tolist() == [-1.0, 1.0, 0.0, 1.0]
    assert inputs[0, 1].flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    assert discrete_peers.input_channels("dfm_mask", 16) == 32 and discrete_peers.input_channels("dfm_uniform", 16) == 16


@pytest.mark.parametrize("family", ["uniform_flip", pytest.param("dfm_uniform", marks=NEEDS_META),
                                    pytest.param("dfm_mask", marks=NEEDS_META)])
def test_every_peer_trains_and_samples_flat_bit_vectors_with_the_toy_mlp(family):
    torch.manual_seed(0)
    model = GatedMLP(16, in_dim=discrete_peers.input_channels(family, 16))
    bits = (torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    loss, _, logits = discrete_peers.peer_loss(family, model, bits, torch.Generator().manual_seed(1))
    loss.backward()
    assert logits.shape == (32, 16) and math.isfinite(loss.item())
    first = discrete_peers.sample_peer(family, model, (16,), n=6, nfe=3, seed=4)
    assert first.shape == (6, 16) and set(first.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first, discrete_peers.sample_peer(family, model, (16,), n=6, nfe=3, seed=4))  # seeded


@pytest.mark.parametrize("channels", [1, 2])
def test_the_bit_transformer_reads_each_bits_channels_as_one_token(channels):
    torch.manual_seed(0)
    model = BitTransformer(16, width=16, in_dim=16 * channels)
    signal = torch.randn(3, 16 * channels)
    out = model(signal, torch.tensor([100.0, 500.0, 900.0]))[0]
    assert out.shape == (3, 16)
    # attention without a mask: moving one bit's features changes every bit's output, and each token is one bit
    moved = signal.clone()
    moved[:, 0] += 1.0
    assert (model(moved, torch.tensor([100.0, 500.0, 900.0]))[0] - out).abs().min() > 0
