"""Offline quality metrics for binary generative models.

- `distribution`: exact TV / KL of a sample histogram against an enumerable distribution
  (`diffusers_binflow.synthetic`), its finite-sample floor, and validity / coverage for linear codes.
- `digits`: Fréchet distance, precision / recall and class coverage in the feature space of our own digit
  classifier, pixel-marginal error, speckle rate and memorisation, with the real-data floor (`DigitMetrics`).
"""

from .classifier import DigitClassifier, classifier_info, load_digit_classifier
from .digits import (
    DEFAULT_NUM_SAMPLES,
    MIN_FD_SAMPLES,
    DigitMetrics,
    class_coverage,
    class_histogram,
    frechet_distance,
    nearest_neighbour_hamming,
    pixel_marginal_error,
    precision_recall,
    speckle_rate,
)
from .distribution import (
    codeword_coverage,
    empirical_histogram,
    finite_sample_floor,
    kl_divergence,
    minimum_samples,
    total_variation,
    validity_rate,
)


__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "MIN_FD_SAMPLES",
    "DigitClassifier",
    "DigitMetrics",
    "class_coverage",
    "class_histogram",
    "classifier_info",
    "codeword_coverage",
    "empirical_histogram",
    "finite_sample_floor",
    "frechet_distance",
    "kl_divergence",
    "load_digit_classifier",
    "minimum_samples",
    "nearest_neighbour_hamming",
    "pixel_marginal_error",
    "precision_recall",
    "speckle_rate",
    "total_variation",
    "validity_rate",
]
