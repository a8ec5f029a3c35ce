"""The small digit classifier whose penultimate features the digit metrics are computed on.

No Inception weights can be downloaded here, so the feature extractor is ours: trained by
``train_scripts/train_digit_classifier.py`` on the 9,000 bundled training digits binarized at grey level 128, and
shipped as ``digit_classifier.safetensors`` (with ``digit_classifier.json``: its held-out accuracy and the command).
"""

import json
from pathlib import Path

import torch
from torch import nn


CLASSIFIER_FILE = Path(__file__).with_name("digit_classifier.safetensors")
CLASSIFIER_INFO_FILE = Path(__file__).with_name("digit_classifier.json")
FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """Three 3x3 conv blocks (16, 32, 64 channels; 28 -> 14 -> 7 -> 3 by max pooling), a ``FEATURE_DIM``-unit
    ReLU feature layer and a linear head to 10 logits. Input: bits (N, 1, 28, 28) of 0/1, read as ``2b - 1``."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 3 * 3, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, bits: torch.Tensor) -> torch.Tensor:
        """Penultimate (feature-layer) activations, shape (N, feature_dim)."""
        return self.body(2 * bits.float() - 1)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, 10)."""
        return self.head(self.features(bits))


def load_digit_classifier(path: str | Path = CLASSIFIER_FILE) -> DigitClassifier:
    """The shipped (or a given) classifier in eval mode on the CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No digit classifier weights at {path}; train them with `python train_scripts/train_digit_classifier.py`."
        )
    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def classifier_info(path: str | Path = CLASSIFIER_INFO_FILE) -> dict:
    """The shipped classifier's record: held-out accuracy, training command, wall time."""
    return json.loads(Path(path).read_text())
