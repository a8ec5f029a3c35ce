import pytest
import torch

from diffusers_binflow.data import load_bundled_digits
from diffusers_binflow.metrics import (
    MIN_FD_SAMPLES,
    DigitMetrics,
    class_histogram,
    classifier_info,
    frechet_distance,
    nearest_neighbour_hamming,
    pixel_marginal_error,
    precision_recall,
    speckle_rate,
)
from diffusers_binflow.metrics.classifier import CLASSIFIER_FILE
from diffusers_binflow.metrics.digits import digit_bits


@pytest.fixture(scope="module")
def metrics():
    return DigitMetrics()


@pytest.fixture(scope="module")
def floor(metrics):
    return metrics.floor()


@pytest.fixture(scope="module")
def noise(metrics):
    """Salt noise with about the digits' ink density (13% ON)."""
    return metrics((torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.13).float())


def test_shipped_classifier_is_small_and_its_recorded_accuracy_is_reproduced(metrics):
    assert CLASSIFIER_FILE.stat().st_size < 1_000_000
    info = classifier_info()
    assert info["heldout_accuracy"] >= 0.95 and info["command"].startswith("python train_scripts/")
    _, labels = load_bundled_digits("heldout")
    _, probs = metrics.classify(metrics.heldout_bits)
    accuracy = (probs.argmax(1) == torch.as_tensor(labels)).double().mean().item()
    assert accuracy == pytest.approx(info["heldout_accuracy"], abs=1e-4)


def test_real_digit_floor_is_small_and_noise_is_far_from_it(metrics, floor, noise):
    blank = metrics(torch.zeros(1000, 1, 28, 28))
    assert floor["num_samples"] == 1000 and floor["fd"] < 10
    assert noise["fd"] > 50 * floor["fd"] and blank["fd"] > 50 * floor["fd"]
    assert floor["precision"] > 0.8 and floor["recall"] > 0.8
    assert noise["precision"] < 0.1 and noise["recall"] < 0.1 and blank["recall"] < 0.01


def test_class_coverage_pixel_marginals_and_speckle_of_real_digits_vs_noise(metrics, floor, noise):
    assert floor["class_coverage"] == 1.0 and sum(floor["class_histogram"]) == pytest.approx(1.0, abs=1e-3)
    ones = metrics.train_bits[torch.as_tensor(load_bundled_digits("train")[1]) == 1][:300]
    assert metrics(ones)["class_coverage"] == pytest.approx(0.1)
    assert floor["pixel_marginal_error"] < 0.02 < noise["pixel_marginal_error"]
    assert floor["speckle_rate"] < 0.01 and noise["speckle_rate"] > 0.5


def test_memorisation_training_copies_are_at_distance_zero(metrics, floor):
    copies = metrics(metrics.train_bits[:MIN_FD_SAMPLES])
    assert copies["nn_hamming_mean"] == 0 and copies["exact_copy_rate"] == 1.0
    # the floor reports held-out digits, which are not copies of training digits
    assert floor["nn_hamming_mean"] > 10 and floor["exact_copy_rate"] < 0.01


def test_nearest_neighbour_hamming_counts_differing_pixels():
    reference = torch.zeros(3, 1, 2, 2)
    reference[1, 0, 0, 0] = 1
    reference[2] = 1
    queries = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]).reshape(3, 1, 2, 2)
    assert nearest_neighbour_hamming(queries, reference).tolist() == [1, 1, 0]


def test_speckle_counts_on_pixels_without_an_on_4_neighbour():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 0, 0] = 1  # isolated, at the border
    image[0, 0, 2, 2] = image[0, 0, 3, 3] = 1  # diagonal neighbours only: both isolated
    assert speckle_rate(image) == 1.0
    image[0, 0, 2, 3] = 1  # now a 4-neighbour of both
    assert speckle_rate(image) == pytest.approx(1 / 4)
    assert speckle_rate(torch.zeros(1, 1, 5, 5)) == 0.0


def test_frechet_distance_matches_the_one_dimensional_closed_form_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 1, generator=g), 2 + 3 * torch.randn(400, 1, generator=g)
    expected = (a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-6)
    x, y = torch.randn(800, 16, generator=g), torch.randn(800, 16, generator=g) @ torch.randn(16, 16, generator=g)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert frechet_distance(x @ rotation, y @ rotation) == pytest.approx(frechet_distance(x, y), rel=1e-5)


def test_precision_recall_of_identical_and_disjoint_sets():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(300, 8, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    collapsed = real[:1].repeat(300, 1) + 1e-3 * torch.randn(300, 8, generator=g)  # one mode: precise, no recall
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.05


def test_bad_input_is_refused_with_the_reason(metrics):
    bits = digit_bits("heldout")
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        metrics(bits[:, 0])
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics(bits * 0.5)
    with pytest.raises(ValueError, match=f"at least {MIN_FD_SAMPLES} samples"):
        metrics(bits[:MIN_FD_SAMPLES - 1])
    with pytest.raises(ValueError, match="200 to 9000 samples"):
        metrics.floor(100)
    with pytest.raises(ValueError, match="at least 200"):
        DigitMetrics(num_samples=10)


def test_pixel_marginal_error_refuses_image_sets_of_different_shapes_instead_of_broadcasting():
    bits = torch.zeros(4, 1, 28, 28)
    assert pixel_marginal_error(bits, torch.ones(3, 1, 28, 28)) == 1.0
    with pytest.raises(ValueError, match=r"\(4, 28, 28\) and `reference_bits` \(3, 1, 28\).*same shape"):
        pixel_marginal_error(bits[:, 0], torch.ones(3, 1, 28))
    with pytest.raises(ValueError, match="non-empty"):
        pixel_marginal_error(bits[:0], bits)


@pytest.mark.parametrize("metric", [speckle_rate, lambda bits: nearest_neighbour_hamming(bits, torch.zeros(2, 1, 5, 5)),
                                    lambda bits: nearest_neighbour_hamming(torch.zeros(2, 1, 5, 5), bits)],
                         ids=["speckle", "nn-query", "nn-reference"])
def test_speckle_and_nearest_neighbour_refuse_non_binary_images(metric):
    grey = torch.full((2, 1, 5, 5), 0.5)  # probabilities, not thresholded bits
    with pytest.raises(ValueError, match="only 0 and 1"):
        metric(grey)


def test_nearest_neighbour_refuses_images_of_another_shape():
    with pytest.raises(ValueError, match="same shape"):
        nearest_neighbour_hamming(torch.zeros(2, 1, 5, 5), torch.zeros(2, 1, 25))


def test_class_histogram_has_exactly_num_classes_bins_and_refuses_other_ids():
    assert class_histogram(torch.tensor([0, 2, 2, 3]), num_classes=4).tolist() == [0.25, 0.0, 0.5, 0.25]
    with pytest.raises(ValueError, match=r"in \[0, 4\), got \[7\]"):
        class_histogram(torch.tensor([0, 7]), num_classes=4)  # bincount would grow an eighth bin
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        class_histogram(torch.tensor([0, -1]), num_classes=4)
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([True, False]), torch.zeros(0, dtype=torch.long)):
        with pytest.raises(ValueError, match="non-empty 1-d tensor of integer class ids"):
            class_histogram(bad, num_classes=4)


def test_frechet_distance_refuses_a_set_of_one_point():
    features = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="Fréchet distance needs at least 2 feature rows in each set, got 1 and 10"):
        frechet_distance(features[:1], features)


def test_precision_recall_refuses_sets_of_at_most_k_points_and_a_bad_k():
    features = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    assert precision_recall(features[:4], features[4:], k=3) is not None  # k + 1 points are enough
    with pytest.raises(ValueError, match="k = 3 needs at least 4 feature rows in each set, got 10 and 3"):
        precision_recall(features, features[:3], k=3)
    with pytest.raises(ValueError, match="same D"):
        precision_recall(features, features[:, :2])
    for k in (0, 2.0, True):
        with pytest.raises(ValueError, match="`k` must be a positive integer"):
            precision_recall(features, features, k=k)
