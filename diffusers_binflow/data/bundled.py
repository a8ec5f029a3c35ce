"""The bundled digits: 10,000 real MNIST digits shipped inside the package (attribution in DATA_LICENSE.md)."""

from pathlib import Path

import numpy as np

from ..utils import check_choice


DIGITS_FILE = Path(__file__).with_name("mnist10k.npz")
NUM_TRAIN = 9000  # the first 9,000 rows of the stored order are "train", the other 1,000 "heldout"


def load_bundled_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of one fixed split: uint8 (N, 28, 28) grey levels 0..255 and int64 (N,) digits.

    The split: ``order = np.random.default_rng(0).permutation(10000)``; rows ``order[:9000]`` are `"train"`
    (9,000 digits), rows ``order[9000:]`` are `"heldout"` (1,000 digits), in that order. The file stores `order`
    (key ``split_order``), so the split is the same on every machine whatever the NumPy version.
    """
    check_choice("split", split, ("train", "heldout"))
    with np.load(DIGITS_FILE) as data:
        order = data["split_order"].astype(np.int64)
        rows = order[:NUM_TRAIN] if split == "train" else order[NUM_TRAIN:]
        return data["images"][rows], data["labels"][rows].astype(np.int64)
