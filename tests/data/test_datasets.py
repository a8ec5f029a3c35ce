import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_binflow.bits import bits_to_signal, check_binary
from diffusers_binflow.data import (
    Binarizer,
    BinaryImageDataset,
    check_resolution,
    from_bundled_digits,
    from_hf_dataset,
    from_image_folder,
    load_bundled_digits,
)
from diffusers_binflow.data.bundled import DIGITS_FILE
from diffusers_binflow.data.loaders import grey_image


def grey_ramp(num_images=4, height=6, width=5):
    """uint8 (N, H, W) images covering grey levels 0..255."""
    return np.linspace(0, 255, num_images * height * width).round().astype(np.uint8).reshape(num_images, height, width)


def save_png(path, size, level):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("L", size, level).save(path)


# The bundled digits and their fixed split


def test_split_sizes_shapes_and_dtypes():
    for split, size in (("train", 9000), ("heldout", 1000)):
        images, labels = load_bundled_digits(split)
        assert images.shape == (size, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (size,) and labels.dtype == np.int64


def test_split_is_the_documented_rule_and_deterministic():
    with np.load(DIGITS_FILE) as data:
        order, all_images, all_labels = data["split_order"], data["images"], data["labels"]
    np.testing.assert_array_equal(order, np.random.default_rng(0).permutation(10000))
    train_images, train_labels = load_bundled_digits("train")
    np.testing.assert_array_equal(train_images, all_images[order[:9000]])
    np.testing.assert_array_equal(train_labels, all_labels[order[:9000]])
    again_images, again_labels = load_bundled_digits("train")
    np.testing.assert_array_equal(train_images, again_images)
    np.testing.assert_array_equal(train_labels, again_labels)


def test_splits_are_disjoint_and_cover_all_rows_and_classes():
    with np.load(DIGITS_FILE) as data:
        order = data["split_order"]
    assert set(order[:9000].tolist()).isdisjoint(order[9000:].tolist())
    assert sorted(order.tolist()) == list(range(10000))
    for split in ("train", "heldout"):
        counts = np.bincount(load_bundled_digits(split)[1], minlength=10)
        assert len(counts) == 10 and counts.min() >= 50, (split, counts)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        load_bundled_digits("test")


def test_bundled_dataset_items():
    dataset = from_bundled_digits("heldout")
    assert len(dataset) == 1000 and dataset.num_classes == 10 and dataset.image_shape == (1, 28, 28)
    item = dataset[0]
    assert item["bits"].shape == (1, 28, 28) and item["bits"].dtype == torch.float32
    check_binary(item["bits"])
    assert item["label"] == load_bundled_digits("heldout")[1][0]
    bits_to_signal(torch.stack([dataset[i]["bits"] for i in range(8)]))  # what training feeds the flow


# Binarization


def test_threshold_binarization_equals_grey_at_least_threshold():
    grey = grey_ramp()
    for threshold in (1, 128, 200, 255):
        bits = Binarizer(threshold=threshold)(grey)
        assert bits.dtype == torch.float32
        torch.testing.assert_close(bits, torch.from_numpy(grey >= threshold).float(), rtol=0, atol=0)


def test_float_images_in_unit_range_give_the_same_bits_as_uint8():
    grey = np.arange(256, dtype=np.uint8)
    for binarizer in (Binarizer(), Binarizer(threshold=77)):
        assert torch.equal(binarizer(grey.astype(np.float32) / 255), binarizer(grey))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Binarizer()(grey.astype(np.float32))


@pytest.mark.parametrize("kwargs", [{"mode": "dither"}, {"threshold": 0}, {"threshold": 256}])
def test_bad_binarizer_options_are_refused(kwargs):
    with pytest.raises(ValueError, match="mode|threshold"):
        Binarizer(**kwargs)


def test_stochastic_binarization_mean_is_grey_over_255():
    grey = torch.tensor([0, 32, 128, 200, 255], dtype=torch.uint8).repeat(20000, 1)
    bits = Binarizer(mode="stochastic")(grey, torch.Generator().manual_seed(0))
    check_binary(bits)
    torch.testing.assert_close(bits.mean(0), grey[0].float() / 255, rtol=0, atol=0.015)
    assert bits[:, 0].sum() == 0 and bits[:, -1].all()


def test_stochastic_dataset_bits_depend_on_seed_epoch_and_index_only():
    images = np.full((3, 16, 16), 128, dtype=np.uint8)
    dataset = BinaryImageDataset(images, binarize=Binarizer(mode="stochastic"), seed=5)
    first = [dataset[i]["bits"] for i in range(3)]
    assert not torch.equal(first[0], first[1])  # identical grey images, different items
    assert torch.equal(dataset[2]["bits"], first[2])  # reading order does not matter
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["bits"], first[0])
    resumed = BinaryImageDataset(images, binarize=Binarizer(mode="stochastic"), seed=5)
    resumed.set_epoch(1)
    assert torch.equal(resumed[0]["bits"], dataset[0]["bits"])
    resumed.set_epoch(0)
    assert torch.equal(resumed[1]["bits"], first[1])
    other_seed = BinaryImageDataset(images, binarize=Binarizer(mode="stochastic"), seed=6)
    assert not torch.equal(other_seed[0]["bits"], first[0])


def test_threshold_dataset_ignores_the_epoch():
    dataset = BinaryImageDataset(grey_ramp())
    before = dataset[1]["bits"]
    dataset.set_epoch(3)
    assert torch.equal(dataset[1]["bits"], before)


# BinaryImageDataset


def test_dataset_layout_labels_and_channels():
    dataset = BinaryImageDataset(grey_ramp(), labels=[0, 2, 1, 2])
    assert dataset.image_shape == (1, 6, 5) and dataset.num_classes == 3 and dataset.class_names is None
    assert dataset[3]["label"] == 2
    assert torch.equal(dataset[2]["bits"][0], torch.from_numpy(grey_ramp()[2] >= 128).float())
    colour = np.stack([grey_ramp(), 255 - grey_ramp(), grey_ramp()], axis=-1)
    item = BinaryImageDataset(colour)[0]
    assert "label" not in item and item["bits"].shape == (3, 6, 5)
    assert torch.equal(item["bits"][1], 1 - item["bits"][0])  # 255 - g >= 128 exactly when g < 128


def test_dataset_resizes_grey_levels_before_binarization():
    images = np.zeros((1, 4, 4), dtype=np.uint8)
    images[0, :, 2:] = 255
    nearest = BinaryImageDataset(images, resolution=8, resample="nearest")
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[:, 4:] = 1
    assert nearest.image_shape == (1, 8, 8)
    assert torch.equal(nearest[0]["bits"][0], torch.from_numpy(expected))
    bilinear = BinaryImageDataset(images, resolution=8)  # blurred edge, then threshold at 128
    assert bilinear.image_shape == (1, 8, 8)
    check_binary(bilinear[0]["bits"])
    assert bilinear[0]["bits"][0, :, 0].sum() == 0 and bilinear[0]["bits"][0, :, 7].all()


def test_dataset_refuses_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        BinaryImageDataset(grey_ramp().astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        BinaryImageDataset(grey_ramp(), labels=[0, 1])
    with pytest.raises(ValueError, match="resample"):
        BinaryImageDataset(grey_ramp(), resolution=8, resample="bicubic")


# Image folders


def test_image_folder_with_class_subfolders_gives_sorted_class_labels(tmp_path):
    for name, level in (("zebra", 255), ("apple", 0)):
        for k in range(2):
            save_png(tmp_path / name / f"{k}.png", (6, 4), level)
    PIL.Image.new("RGB", (6, 4), (255, 255, 255)).save(tmp_path / "zebra" / "rgb.png")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = from_image_folder(tmp_path)
    assert dataset.class_names == ["apple", "zebra"] and dataset.num_classes == 2
    assert len(dataset) == 5 and dataset.image_shape == (1, 4, 6)
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["bits"].unique().tolist() == [float(item["label"])]  # apple is black, zebra (RGB too) white


def test_image_folder_without_classes_has_no_labels(tmp_path):
    for k in range(3):
        save_png(tmp_path / f"{k}.png", (5, 5), 255)
    dataset = from_image_folder(tmp_path)
    assert dataset.num_classes is None and "label" not in dataset[0]


def test_image_folder_mixed_sizes_need_a_resolution(tmp_path):
    save_png(tmp_path / "small.png", (8, 8), 255)
    save_png(tmp_path / "deep" / "large.png", (12, 10), 255)
    with pytest.raises(ValueError, match=r"different sizes.*12x10 \(deep/large.png\).*resolution"):
        from_image_folder(tmp_path)
    dataset = from_image_folder(tmp_path, resolution=8)
    assert dataset.image_shape == (1, 8, 8) and len(dataset) == 2 and dataset.num_classes is None


def test_image_folder_empty_or_missing_is_refused(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("no images")
    with pytest.raises(ValueError, match="holds no image files"):
        from_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="is not a directory"):
        from_image_folder(tmp_path / "missing")


# datasets datasets


@pytest.fixture
def saved_hf_dataset(tmp_path):
    import datasets

    rows = {
        "img": [
            PIL.Image.new("L", (4, 4), 255), PIL.Image.new("RGB", (4, 4), (0, 0, 0)), PIL.Image.new("L", (4, 4), 200)
        ],
        "digit": [2, 0, 1],
        "kind": ["odd", "even", "odd"],
        "named": [1, 0, 1],
    }
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "digit": datasets.Value("int64"),
            "kind": datasets.Value("string"),
            "named": datasets.ClassLabel(names=["cat", "dog"]),
        }
    )
    path = tmp_path / "saved"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return str(path)


def test_hf_dataset_from_save_to_disk(saved_hf_dataset):
    dataset = from_hf_dataset(saved_hf_dataset, image_column="img")
    assert len(dataset) == 3 and dataset.image_shape == (1, 4, 4) and dataset.num_classes is None
    assert [dataset[i]["bits"].mean().item() for i in range(3)] == [1.0, 0.0, 1.0]
    resized = from_hf_dataset(saved_hf_dataset, image_column="img", resolution=8, binarize=Binarizer(threshold=201))
    assert resized.image_shape == (1, 8, 8) and resized[2]["bits"].sum() == 0


@pytest.mark.parametrize(
    "label_column, labels, class_names",
    [("digit", [2, 0, 1], None), ("kind", [1, 0, 1], ["even", "odd"]), ("named", [1, 0, 1], ["cat", "dog"])],
)
def test_hf_dataset_labels(saved_hf_dataset, label_column, labels, class_names):
    dataset = from_hf_dataset(saved_hf_dataset, image_column="img", label_column=label_column)
    assert [dataset[i]["label"] for i in range(3)] == labels
    assert dataset.class_names == class_names and dataset.num_classes == (len(class_names) if class_names else 3)


@pytest.mark.parametrize(
    "kwargs, option", [({}, "image_column"), ({"image_column": "img", "label_column": "y"}, "label_column")]
)
def test_hf_dataset_bad_column_lists_the_columns(saved_hf_dataset, kwargs, option):
    with pytest.raises(ValueError, match=rf"`{option}` .* its columns are \['img', 'digit', 'kind', 'named'\]"):
        from_hf_dataset(saved_hf_dataset, **kwargs)


def test_hf_dataset_non_image_column_is_refused(saved_hf_dataset):
    with pytest.raises(ValueError, match="'kind'.*not images"):
        from_hf_dataset(saved_hf_dataset, image_column="kind")


def test_hf_dataset_dict_split_must_exist(tmp_path, saved_hf_dataset):
    import datasets

    path = str(tmp_path / "dict")
    datasets.DatasetDict({"train": datasets.load_from_disk(saved_hf_dataset)}).save_to_disk(path)
    assert len(from_hf_dataset(path, image_column="img")) == 3
    with pytest.raises(ValueError, match=r"no split 'validation'; its splits are \['train'\]"):
        from_hf_dataset(path, image_column="img", split="validation")


# The model's resolution


def test_check_resolution():
    check_resolution(28, 4)
    check_resolution((32, 16), 8)
    with pytest.raises(ValueError, match=r"Resolution 28 .* downsamples by 8.* multiple of 8, e.g. 24 or 32"):
        check_resolution(28, 8)
    with pytest.raises(ValueError, match=r"e.g. 32 or 48"):
        check_resolution((32, 40), 16)
    with pytest.raises(ValueError, match=r"e.g. 8\b"):
        check_resolution(0, 8)


# Image modes and unreadable files


def save_16_bit_png(path, levels):
    """A one-row 16-bit grey PNG (PIL mode "I;16") of the given levels 0..65535."""
    image = PIL.Image.fromarray(np.asarray([levels], dtype=np.uint16))
    assert image.mode == "I;16"
    image.save(path)


def save_truncated_png(path):
    """A PNG of noise (so it does not compress away) cut in the middle of its pixel data."""
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_16_bit_png_is_scaled_from_its_full_range_not_clipped(tmp_path):
    # 200 / 65535 is nearly black; 32000 is grey 125 (< 128) and 40000 grey 156 on the 0..255 scale.
    save_16_bit_png(tmp_path / "deep.png", [0, 200, 32000, 40000, 65535])
    bits = from_image_folder(tmp_path)[0]["bits"]
    assert bits.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "image",
    [
        PIL.Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8)),  # L
        PIL.Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8)).convert("LA"),
        PIL.Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8)).convert("P"),
        PIL.Image.fromarray(np.array([[[0] * 3, [100] * 3, [255] * 3]], dtype=np.uint8)),  # RGB
        PIL.Image.fromarray(np.array([[[0] * 3, [100] * 3, [255] * 3]], dtype=np.uint8)).convert("RGBA"),
        PIL.Image.fromarray(np.array([[0, 25700, 65535]], dtype=np.uint16)),  # I;16
        PIL.Image.fromarray(np.array([[0, 25700, 65535]], dtype=np.int32)),  # I, as older Pillow opens 16-bit PNGs
        PIL.Image.fromarray(np.array([[0, 100 / 255, 1]], dtype=np.float32)),  # F, read as [0, 1]
    ],
    ids=lambda image: image.mode,
)
def test_grey_image_maps_each_mode_range_onto_grey_levels(image):
    assert np.asarray(grey_image(image)).tolist() == [[0, 100, 255]]


def test_grey_image_of_a_bilevel_image_and_refusal_of_values_outside_the_mode_range():
    assert np.asarray(grey_image(PIL.Image.new("1", (2, 1), 1))).tolist() == [[255, 255]]
    with pytest.raises(ValueError, match=r"mode 'F' image is read as grey levels in \[0, 1.0\].*\[0.0, 255.0\]"):
        grey_image(PIL.Image.fromarray(np.array([[0, 255]], dtype=np.float32)))


def test_a_truncated_image_in_a_folder_is_named_in_the_error(tmp_path):
    save_png(tmp_path / "good.png", (64, 64), 255)
    (tmp_path / "sub").mkdir()
    save_truncated_png(tmp_path / "sub" / "broken.png")
    with pytest.raises(ValueError, match=r"Cannot read the image '.*sub/broken\.png': image file is truncated"):
        from_image_folder(tmp_path)


def test_hf_dataset_scales_16_bit_images_and_names_an_unreadable_row(tmp_path):
    import datasets

    save_16_bit_png(tmp_path / "deep.png", [200, 40000])
    save_truncated_png(tmp_path / "broken.png")
    for name, files in (("deep", ["deep.png"]), ("broken", ["deep.png", "broken.png"])):
        rows = datasets.Dataset.from_dict({"img": [str(tmp_path / f) for f in files]})
        rows.cast_column("img", datasets.Image()).save_to_disk(str(tmp_path / name))
    assert from_hf_dataset(str(tmp_path / "deep"), image_column="img")[0]["bits"].flatten().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"row 1 .*broken\.png.* of dataset '.*broken': image file is truncated"):
        from_hf_dataset(str(tmp_path / "broken"), image_column="img")
