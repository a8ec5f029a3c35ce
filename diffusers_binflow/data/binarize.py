"""The binarization rule: grey images -> bits {0, 1}.

Grey levels are read on the 0..255 scale: uint8 images as they are, float images as values in [0, 1] (the
PIL -> tensor and diffusers convention), which are scaled by 255 and rounded first, so ``uint8 / 255`` gives the
same bits as the uint8 image.
"""

from dataclasses import dataclass

import torch

from ..utils import check_choice


def grey_levels(grey) -> torch.Tensor:
    """Grey levels 0..255 as a float32 tensor, from a uint8 array/tensor or a float one in [0, 1]."""
    grey = torch.as_tensor(grey)
    if grey.dtype == torch.uint8:
        return grey.float()
    if not grey.is_floating_point():
        raise TypeError(f"Grey images must be uint8 (0..255) or float (0..1), got {grey.dtype}.")
    if grey.numel() and not (0 <= grey.min() and grey.max() <= 1):
        raise ValueError(
            f"Float grey images must hold values in [0, 1], got [{grey.min().item()}, {grey.max().item()}]; "
            "pass uint8 images for grey levels 0..255."
        )
    return torch.round(grey.float() * 255)


@dataclass(frozen=True)
class Binarizer:
    """How grey images become bits; calling it returns float32 bits of 0/1 with the input's shape.

    Args:
        mode: `"threshold"`: bit = 1 where grey >= `threshold` (deterministic). `"stochastic"`: bit ~
            Bernoulli(grey / 255), drawn from the `generator` passed to the call, so a seeded generator
            reproduces the bits.
        threshold: grey level 1..255 for `"threshold"` (the training script's `--binarize_threshold`).
    """

    mode: str = "threshold"
    threshold: int = 128

    def __post_init__(self):
        check_choice("binarization mode", self.mode, ("threshold", "stochastic"))
        if not 1 <= self.threshold <= 255:
            raise ValueError(f"The binarization threshold must be a grey level in 1..255, got {self.threshold}.")

    def __call__(self, grey, generator: torch.Generator | None = None) -> torch.Tensor:
        levels = grey_levels(grey)
        if self.mode == "threshold":
            return (levels >= self.threshold).float()
        return (torch.rand(levels.shape, generator=generator) < levels / 255).float()
