"""Quality metrics for generated binarized digits (N, 1, 28, 28), against the bundled held-out split.

No Inception network can be downloaded here, so the feature space is the 64-unit penultimate layer of our own
small classifier (`classifier.py`, trained by ``train_scripts/train_digit_classifier.py``; held-out accuracy in
``digit_classifier.json``). The reference set is the 1,000 held-out digits binarized at grey level 128, the
memorisation reference the 9,000 training digits. `DigitMetrics.floor` scores N real training digits the same way:
the "real-data floor" every generated score should be read against (FD is biased upward at finite N, so compare FDs
only at the same N; the default is ``DEFAULT_NUM_SAMPLES = 1000``, and fewer than ``MIN_FD_SAMPLES = 200`` samples
are refused).
"""

import torch

from ..bits import check_binary
from ..data import Binarizer, load_bundled_digits
from .classifier import CLASSIFIER_FILE, load_digit_classifier


DEFAULT_NUM_SAMPLES = 1000  # generated samples per evaluation (the size of the held-out split)
MIN_FD_SAMPLES = 200  # fewest samples for a Fréchet distance on 64 features (covariance of rank >= 64 with margin)
PR_NEIGHBOURS = 3  # k of the k-NN manifolds for precision / recall
MIN_CLASS_SHARE = 0.05  # a class is "covered" when it gets at least half of its uniform share 1/10
IMAGE_SHAPE = (1, 28, 28)


def digit_bits(split: str) -> torch.Tensor:
    """A bundled split binarized at grey level 128: float 0/1 of shape (N, 1, 28, 28)."""
    images, _ = load_bundled_digits(split)
    return Binarizer()(images)[:, None]


def check_digit_bits(bits, min_samples: int = MIN_FD_SAMPLES) -> torch.Tensor:
    """`bits` as a float tensor after checking shape (N, 1, 28, 28), values 0/1 and N >= `min_samples`."""
    bits = torch.as_tensor(bits)
    if bits.ndim != 4 or tuple(bits.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"Digit samples must have shape (N, 1, 28, 28), got {tuple(bits.shape)}.")
    check_binary(bits)
    if bits.shape[0] < min_samples:
        raise ValueError(f"The digit metrics need at least {min_samples} samples for a stable Fréchet distance, "
                         f"got {bits.shape[0]} (default {DEFAULT_NUM_SAMPLES}).")
    return bits.float()


def check_feature_sets(features_a: torch.Tensor, features_b: torch.Tensor, min_rows: int, what: str) -> None:
    """Raise a `ValueError` unless both feature sets are (N, D) with the same D and at least `min_rows` rows."""
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"Features must be (N, D) with the same D, got {tuple(features_a.shape)} and "
                         f"{tuple(features_b.shape)}.")
    if min(len(features_a), len(features_b)) < min_rows:
        raise ValueError(f"{what} needs at least {min_rows} feature rows in each set, got {len(features_a)} and "
                         f"{len(features_b)}.")


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` of two feature sets (N, D), in float64.

    ``S_a S_b`` is not symmetric, so the trace of its square root is taken through the similar symmetric PSD matrix
    ``M = S_a^(1/2) S_b S_a^(1/2)`` (same eigenvalues): ``S_a^(1/2)`` and M's eigenvalues come from
    `torch.linalg.eigh`, negative round-off eigenvalues are clamped to 0, and ``tr((S_a S_b)^(1/2)) = sum sqrt(eig M)``.
    """
    # A covariance needs two points (it divides by N - 1).
    check_feature_sets(features_a, features_b, min_rows=2, what="A Fréchet distance")
    a, b = features_a.double(), features_b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))
    values, vectors = torch.linalg.eigh(cov_a)
    sqrt_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(distance.item(), 0.0)


def knn_radii(features: torch.Tensor, k: int = PR_NEIGHBOURS) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (N,): the radii of the k-NN manifold."""
    distances = torch.cdist(features, features)
    return distances.topk(k + 1, dim=1, largest=False).values[:, k]  # column 0 is the point itself


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor,
                     k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around
    its points with radius the distance to the k-th nearest neighbour in the same set. Precision = share of fake
    points inside the real manifold (fidelity); recall = share of real points inside the fake manifold (diversity).
    Each set needs more than k points (a k-th nearest other point)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")
    check_feature_sets(real_features, fake_features, min_rows=k + 1, what=f"Precision / recall with k = {k}")
    real, fake = real_features.double(), fake_features.double()
    cross = torch.cdist(fake, real)  # (N_fake, N_real)
    precision = (cross <= knn_radii(real, k)[None, :]).any(1).double().mean().item()
    recall = (cross <= knn_radii(fake, k)[:, None]).any(0).double().mean().item()
    return precision, recall


def class_histogram(predicted: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Share of samples assigned to each class, float64 (num_classes,), from class ids (N,) in [0, num_classes)."""
    predicted = torch.as_tensor(predicted)
    if predicted.ndim != 1 or len(predicted) == 0 or predicted.is_floating_point() or predicted.dtype == torch.bool:
        raise ValueError(f"`predicted` must be a non-empty 1-d tensor of integer class ids, got {predicted.dtype} "
                         f"{tuple(predicted.shape)}.")
    outside = (predicted < 0) | (predicted >= num_classes)
    if outside.any():
        found = torch.unique(predicted[outside])[:6].tolist()
        raise ValueError(f"Class ids must be in [0, {num_classes}), got {found}.")
    return torch.bincount(predicted, minlength=num_classes).double() / len(predicted)


def class_coverage(histogram: torch.Tensor, min_share: float = MIN_CLASS_SHARE) -> float:
    """Fraction of classes that receive at least `min_share` of the samples."""
    return (histogram >= min_share).double().mean().item()


def check_image_sets(bits: torch.Tensor, reference_bits: torch.Tensor) -> None:
    """Raise a `ValueError` unless both are non-empty sets (N, ...) and (M, ...) of 0/1 images of the same shape."""
    if bits.ndim < 2 or bits.shape[1:] != reference_bits.shape[1:]:
        raise ValueError(f"`bits` {tuple(bits.shape)} and `reference_bits` {tuple(reference_bits.shape)} must be "
                         "sets of images of the same shape, (N, ...) and (M, ...).")
    if len(bits) == 0 or len(reference_bits) == 0:
        raise ValueError(f"Both image sets must be non-empty, got {len(bits)} and {len(reference_bits)} images.")
    check_binary(bits)
    check_binary(reference_bits, "reference_bits")


def pixel_marginal_error(bits: torch.Tensor, reference_bits: torch.Tensor) -> float:
    """``mean_pixels |mean_n bits - mean_n reference_bits|``: mean absolute error of the per-pixel ON frequency of
    two image sets (N, ...) and (M, ...) of the same image shape."""
    check_image_sets(bits, reference_bits)
    return (bits.double().mean(0) - reference_bits.double().mean(0)).abs().mean().item()


def isolated_pixels(bits: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the ON pixels none of whose 4 neighbours (up, down, left, right; off the border counts as
    OFF) is ON, for images (..., H, W)."""
    if bits.ndim < 2:
        raise ValueError(f"Images must be (..., H, W), got {tuple(bits.shape)}.")
    check_binary(bits)
    on = bits.double()
    padded = torch.nn.functional.pad(on, (1, 1, 1, 1))
    neighbours = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
    return (on == 1) & (neighbours == 0)


def speckle_rate(bits: torch.Tensor) -> float:
    """Share of ON pixels that are isolated (`isolated_pixels`), over all images (N, 1, H, W); 0 when no pixel is
    ON. Threshold noise of analog samplers shows up here."""
    isolated = isolated_pixels(bits)
    total = bits.sum()
    return (isolated.sum() / total).item() if total > 0 else 0.0


def nearest_neighbour_hamming(bits: torch.Tensor, reference_bits: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """Hamming distance from each image of `bits` (N, ...) to its nearest image of `reference_bits` (M, ...),
    int64 (N,), by ``|a| + |b| - 2 a.b`` on flattened 0/1 vectors (exact in float32 for up to 2**24 pixels)."""
    check_image_sets(bits, reference_bits)
    a, b = bits.flatten(1).float(), reference_bits.flatten(1).float()
    b_counts = b.sum(1)
    nearest = [(rows.sum(1, keepdim=True) + b_counts[None] - 2 * rows @ b.T).min(1).values for rows in a.split(chunk)]
    return torch.cat(nearest).round().long()


class DigitMetrics:
    """All digit metrics of generated bits against the held-out split, with the real-data floor.

    ``metrics = DigitMetrics(); metrics(bits)`` returns a dict:

    - ``fd``: Fréchet distance between classifier features of the samples and of the 1,000 held-out digits.
    - ``precision``, ``recall``: k-NN manifold precision / recall (k = 3) in the same feature space.
    - ``class_histogram`` (10 shares of the classifier's predictions), ``class_coverage`` (share of classes with at
      least ``MIN_CLASS_SHARE`` of the samples), ``classifier_confidence`` (mean max softmax probability).
    - ``pixel_marginal_error``: mean |ON frequency of a pixel in the samples - in the held-out digits|.
    - ``speckle_rate``: share of ON pixels without an ON 4-neighbour.
    - ``nn_hamming_mean``, ``exact_copy_rate``: mean Hamming distance of each sample to its nearest training digit,
      and the share at distance 0 (memorisation).
    - ``num_samples``.
    """

    def __init__(self, classifier_path=CLASSIFIER_FILE, num_samples: int = DEFAULT_NUM_SAMPLES):
        if num_samples < MIN_FD_SAMPLES:
            raise ValueError(f"`num_samples` must be at least {MIN_FD_SAMPLES}, got {num_samples}.")
        self.num_samples = num_samples
        self.classifier = load_digit_classifier(classifier_path)
        self.heldout_bits = digit_bits("heldout")
        self.train_bits = digit_bits("train")
        self.heldout_features = self.features(self.heldout_bits)

    @torch.no_grad()
    def classify(self, bits: torch.Tensor, chunk: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features (N, 64) and softmax class probabilities (N, 10) of bits (N, 1, 28, 28)."""
        features = torch.cat([self.classifier.features(rows) for rows in bits.float().split(chunk)])
        return features, self.classifier.head(features).softmax(1)

    def features(self, bits: torch.Tensor) -> torch.Tensor:
        return self.classify(bits)[0]

    def __call__(self, bits) -> dict:
        bits = check_digit_bits(bits)
        features, probs = self.classify(bits)
        precision, recall = precision_recall(self.heldout_features, features)
        histogram = class_histogram(probs.argmax(1))
        nearest = nearest_neighbour_hamming(bits, self.train_bits)
        return {
            "num_samples": bits.shape[0],
            "fd": frechet_distance(features, self.heldout_features),
            "precision": precision,
            "recall": recall,
            "class_coverage": class_coverage(histogram),
            "class_histogram": [round(share, 4) for share in histogram.tolist()],
            "classifier_confidence": probs.max(1).values.mean().item(),
            "pixel_marginal_error": pixel_marginal_error(bits, self.heldout_bits),
            "speckle_rate": speckle_rate(bits),
            "nn_hamming_mean": nearest.double().mean().item(),
            "exact_copy_rate": (nearest == 0).double().mean().item(),
        }

    def floor(self, num_samples: int | None = None, seed: int = 0) -> dict:
        """The real-data floor: the same metrics for `num_samples` (default ``self.num_samples``) training digits
        drawn without replacement (from `seed`) against the held-out split. Their memorisation entries would be
        trivially 0, so ``nn_hamming_mean`` / ``exact_copy_rate`` are those of the held-out digits to the training
        set instead: what a model that generalises without copying scores."""
        num_samples = self.num_samples if num_samples is None else num_samples
        if not MIN_FD_SAMPLES <= num_samples <= len(self.train_bits):
            raise ValueError(f"The floor needs {MIN_FD_SAMPLES} to {len(self.train_bits)} samples, got {num_samples}.")
        rows = torch.randperm(len(self.train_bits), generator=torch.Generator().manual_seed(seed))[:num_samples]
        result = self(self.train_bits[rows])
        nearest = nearest_neighbour_hamming(self.heldout_bits, self.train_bits)
        result["nn_hamming_mean"] = nearest.double().mean().item()
        result["exact_copy_rate"] = (nearest == 0).double().mean().item()
        return result
