"""Completion: generating part of a sample while the rest is given, shared by the image and sequence pipelines."""

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..flow import interpolate


def reimpose_known(latents: torch.Tensor, known: torch.Tensor, keep: torch.Tensor, sigma,
                   generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """
    Put the known signal back on the path after a step to `sigma`, with fresh noise (as in RePaint).

    Where `keep` is true the state becomes ``(1 - sigma) * known + sigma * eps`` for a new ``eps``, so known values
    land exactly on the given ones at sigma = 0 and do not lock the generated values onto one noise draw; elsewhere
    `latents` is unchanged. `known` and `keep` broadcast against `latents`; a list of generators seeds item by item.
    """
    fresh = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return torch.where(keep, interpolate(known, fresh, sigma), latents)
