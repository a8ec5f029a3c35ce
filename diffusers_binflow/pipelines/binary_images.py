"""Binary images in and out of pipelines: PIL / NumPy / torch <-> bit tensors of shape (B, C, H, W)."""

import numpy as np
import PIL.Image
import torch
from diffusers.utils.pil_utils import numpy_to_pil

from ..bits import check_binary


def images_to_bits(images, name: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """Read binary images as float bits (B, C, H, W), checking values and the (C, H, W) `shape`.

    Accepts a PIL image or a list of them (mode "1", or "L" with only 0 and 255), a NumPy array (H, W), (H, W, C)
    or (B, H, W, C) of 0/1, or a torch tensor (C, H, W) or (B, C, H, W) of 0/1. `name` is the argument's name,
    used in error messages.
    """
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, list) and all(isinstance(i, PIL.Image.Image) for i in images):
        arrays = [np.asarray(i.convert("L"), dtype=np.float32) / 255 for i in images]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"The images in `{name}` have different sizes: {[a.shape for a in arrays]}.")
        images = np.stack(arrays)[..., None]
    if isinstance(images, np.ndarray):
        array = images.astype(np.float32)
        if array.ndim == 2:
            array = array[None, ..., None]
        elif array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"`{name}` must be (H, W), (H, W, C) or (B, H, W, C), got shape {images.shape}.")
        bits = torch.from_numpy(array).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        bits = (images[None] if images.ndim == 3 else images).float()
        if bits.ndim != 4:
            raise ValueError(f"`{name}` must be (C, H, W) or (B, C, H, W), got shape {tuple(images.shape)}.")
    else:
        raise TypeError(f"`{name}` must be PIL image(s), a NumPy array or a torch tensor, got {type(images).__name__}.")
    check_binary(bits, name)
    if tuple(bits.shape[1:]) != tuple(shape):
        raise ValueError(f"`{name}` has (C, H, W) = {tuple(bits.shape[1:])}, but the model works on {tuple(shape)}.")
    return bits


def bits_to_images(bits: torch.Tensor, output_type: str):
    """Bits (B, C, H, W) as `"pt"` (the tensor), `"np"` (B, H, W, C) float arrays or `"pil"` (mode "L", 0/255)."""
    if output_type == "pt":
        return bits
    array = bits.permute(0, 2, 3, 1).float().cpu().numpy()
    return array if output_type == "np" else numpy_to_pil(array)
