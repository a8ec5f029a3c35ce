"""Training data: the bundled MNIST digits, image folders and `datasets` datasets as binary images.

Conventions, stated once: images are grey levels 0..255 (uint8; colour is converted to grey), resized (when
asked) on grey levels before binarization, and items are ``{"bits": float32 (C, H, W) of 0/1, "label": int}``.
"""

from .binarize import Binarizer
from .bundled import load_bundled_digits
from .datasets import BinaryImageDataset, check_resolution
from .loaders import from_bundled_digits, from_hf_dataset, from_image_folder


__all__ = [
    "BinaryImageDataset",
    "Binarizer",
    "check_resolution",
    "from_bundled_digits",
    "from_hf_dataset",
    "from_image_folder",
    "load_bundled_digits",
]
