"""The discrete peers of the benchmarks, for any denoiser and data shape: their corruption, loss and sampler.

Every peer trains the same network as our flows, called like a diffusers model, ``model(inputs, timestep)``, with
``timestep = 1000 * noise level`` and one logit per bit out (K = 2 logits ``[0, l]``); bits are (N, *shape).

- ``uniform_flip``: D3PM uniform-kernel ("flip") diffusion with K = 2: a bit survives with probability 1 - t and is
  otherwise a fair coin; cross-entropy on the clean bit; sampled with diffusers' `DiscreteDDIMScheduler`
  (temperature 1). Noise level t.
- ``dfm_uniform`` / ``dfm_mask``: discrete flow matching with Meta's `flow_matching` package (optional extra
  ``peers``; CC BY-NC, installed, never copied): `MixtureDiscreteProbPath` with kappa_t = t from a uniform source
  (K = 2) or a mask source (K = 3), cross-entropy on the clean bit, t ~ U[0, 1 - 1e-3], sampled with
  `MixtureDiscreteEulerSolver`. Noise level 1 - t (Meta's t = 1 is data).

Inputs are the +-1 signal of the current state; the mask source adds a mask channel along dim 1 (masked bits shown
as 0), so its network takes twice the channels (`input_channels`).
"""

import math

import torch
import torch.nn.functional as F
from diffusers import DiscreteDDIMScheduler

from diffusers_binflow.bits import bits_to_signal

FAMILIES = ("uniform_flip", "dfm_uniform", "dfm_mask")
DFM_T_MAX = 1 - 1e-3  # Meta's examples keep t off the singular data end
MASK = 2  # the mask token of the mask source


def input_channels(family: str, channels: int) -> int:
    """Channels (dim 1) of the network's input for bits with `channels` channels."""
    return 2 * channels if family == "dfm_mask" else channels


def network_inputs(family: str, state: torch.Tensor) -> torch.Tensor:
    """The network's input for a discrete state: the +-1 signal, plus a mask channel (masked bits shown as 0)."""
    if family != "dfm_mask":
        return bits_to_signal(state.float())
    masked = (state == MASK).float()
    return torch.cat([bits_to_signal(state.clamp(max=1).float()) * (1 - masked), masked], dim=1)


def peer_loss(family: str, model, bits: torch.Tensor, generator: torch.Generator):
    """Cross-entropy on the clean bit at a corrupted state. Returns (loss, noise levels, model output)."""
    batch = bits.shape[0]
    if family == "uniform_flip":
        t = torch.rand(batch, generator=generator)
        keep = torch.rand(bits.shape, generator=generator) < (1 - t).view(-1, *[1] * (bits.ndim - 1))
        state = torch.where(keep, bits, torch.randint(0, 2, bits.shape, generator=generator).float())
        inputs, noise_level = bits_to_signal(state), t
    else:
        from flow_matching.path import MixtureDiscreteProbPath
        from flow_matching.path.scheduler import PolynomialConvexScheduler

        t = torch.rand(batch, generator=generator) * DFM_T_MAX
        clean = bits.long().flatten(1)
        source = torch.full_like(clean, MASK) if family == "dfm_mask" else torch.randint_like(clean, 0, 2)
        state = MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1)).sample(x_0=source, x_1=clean, t=t).x_t
        inputs, noise_level = network_inputs(family, state.view_as(bits)), 1 - t
    logits = model(inputs, noise_level * 1000, return_dict=False)[0]
    return F.binary_cross_entropy_with_logits(logits, bits), noise_level, logits


def two_class_logits(logit: torch.Tensor) -> torch.Tensor:
    """(n, *shape) logits of bit 1 as (n, bits, 2) logits over {0, 1}."""
    return torch.stack([torch.zeros_like(logit), logit], dim=-1).flatten(1, -2)


@torch.no_grad()
def sample_peer(family: str, model, shape: tuple, n: int, nfe: int, seed: int) -> torch.Tensor:
    """`n` bit samples of `shape` (float 0/1, (n, *shape)) with `nfe` network evaluations."""
    if family == "uniform_flip":
        return _sample_uniform_flip(model, (n, *shape), nfe, torch.Generator().manual_seed(seed))
    return _sample_dfm(family, model, (n, *shape), nfe, seed)


def _sample_uniform_flip(model, size: tuple, nfe: int, generator: torch.Generator) -> torch.Tensor:
    n = size[0]
    scheduler = DiscreteDDIMScheduler()
    scheduler.set_timesteps(nfe)
    state = torch.randint(0, 2, size, generator=generator)
    for step_index in scheduler.timesteps:
        noise_level = 1 - step_index.item() / nfe
        logit = model(bits_to_signal(state.float()), torch.full((n,), noise_level * 1000), return_dict=False)[0]
        state = scheduler.step(two_class_logits(logit), step_index, state.flatten(1), temperature=1.0,
                               generator=generator).prev_sample.view(size)
    return state.float()


def _sample_dfm(family: str, model, size: tuple, nfe: int, seed: int) -> torch.Tensor:
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    n, vocabulary = size[0], 3 if family == "dfm_mask" else 2

    class Probabilities(ModelWrapper):  # Meta's solver wants p(x_1 | x_t) over the vocabulary, (n, bits, K)
        def forward(self, x, t, **extras):
            logit = self.model(network_inputs(family, x.view(size)), (1 - t) * 1000, return_dict=False)[0]
            logits = two_class_logits(logit)
            if vocabulary == 3:
                logits = torch.cat([logits, torch.full_like(logits[..., :1], -math.inf)], dim=-1)
            return logits.softmax(-1)

    torch.manual_seed(seed)  # the solver draws from the global generator
    bits = math.prod(size[1:])
    source = torch.full((n, bits), MASK) if family == "dfm_mask" else torch.randint(0, 2, (n, bits))
    solver = MixtureDiscreteEulerSolver(model=Probabilities(model), path=MixtureDiscreteProbPath(
        PolynomialConvexScheduler(n=1)), vocabulary_size=vocabulary)
    state = solver.sample(x_init=source, step_size=None, time_grid=torch.linspace(0, 1, nfe + 1))
    return state.view(size).float()
