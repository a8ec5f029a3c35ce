"""Build a `BinaryImageDataset` from each data source of the training script, failing early with a clear message.

Every loader reads all images into memory once, as grey "L" images (colour images are converted to grey before
binarization), resizes them to `resolution` x `resolution` when it is given (PIL `resample`, "bilinear" by
default) and passes the remaining keyword arguments (`binarize`, `seed`) to [`BinaryImageDataset`].
"""

from pathlib import Path

import numpy as np
import PIL.Image

from .bundled import load_bundled_digits
from .datasets import BinaryImageDataset, resize_grey


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pbm", ".pgm", ".ppm"}


def from_bundled_digits(split: str = "train", resolution: int | None = None, **dataset_kwargs) -> BinaryImageDataset:
    """The bundled MNIST digits (see `load_bundled_digits` for the fixed split), labelled 0..9."""
    images, labels = load_bundled_digits(split)
    class_names = [str(digit) for digit in range(10)]
    return BinaryImageDataset(images, labels, resolution=resolution, class_names=class_names, **dataset_kwargs)


def from_image_folder(
    train_data_dir, resolution: int | None = None, resample: str = "bilinear", **dataset_kwargs
) -> BinaryImageDataset:
    """Every image file under `train_data_dir`, searched recursively, in sorted path order.

    Labels follow the `imagefolder` convention of `datasets`: when all images lie at the same depth and their
    parent folders have more than one name, the parent folder's name is the class; class names are sorted and
    label ``k`` is ``class_names[k]``. Otherwise the dataset has no labels.
    """
    root = Path(train_data_dir)
    if not root.is_dir():
        raise ValueError(f"`train_data_dir` {str(root)!r} is not a directory.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"`train_data_dir` {str(root)!r} holds no image files ({extensions}).")
    images = []
    for file in files:
        with PIL.Image.open(file) as image:
            images.append(image.convert("L"))
    grey = _stack_grey(images, [str(file.relative_to(root)) for file in files], resolution, resample)
    classes = [file.parent.name for file in files]
    if len(set(classes)) > 1 and len({len(file.relative_to(root).parts) for file in files}) == 1:
        labels, class_names = _encode_labels(classes)
        return BinaryImageDataset(grey, labels, class_names=class_names, **dataset_kwargs)
    return BinaryImageDataset(grey, **dataset_kwargs)


def from_hf_dataset(
    dataset_name: str,
    image_column: str = "image",
    label_column: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    resample: str = "bilinear",
    dataset_config_name: str | None = None,
    cache_dir: str | None = None,
    **dataset_kwargs,
) -> BinaryImageDataset:
    """One split of a `datasets` dataset: a folder written by `save_to_disk`, or anything `load_dataset` reads
    (a Hub id, a local data folder).

    `image_column` must hold images (an `Image` feature). Labels come from `label_column` when given: a
    `ClassLabel` keeps its names; integers are used as they are; other values (e.g. strings) become sorted
    class names.
    """
    import datasets

    path = Path(dataset_name)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"Dataset {dataset_name!r} has no split {split!r}; its splits are {list(dataset)}.")
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)
    for option, column in (("image_column", image_column), ("label_column", label_column)):
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"`{option}` {column!r} is not a column of dataset {dataset_name!r}; "
                f"its columns are {dataset.column_names}."
            )
    image_feature = dataset.features[image_column]
    if not isinstance(image_feature, datasets.Image):
        raise ValueError(f"Column {image_column!r} of {dataset_name!r} holds {image_feature}, not images.")
    images = [image.convert("L") for image in dataset[image_column]]
    grey = _stack_grey(images, [f"row {i}" for i in range(len(images))], resolution, resample)
    if label_column is None:
        return BinaryImageDataset(grey, **dataset_kwargs)
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        labels, class_names = list(dataset[label_column]), feature.names
    else:
        labels, class_names = _encode_labels(list(dataset[label_column]))
    return BinaryImageDataset(grey, labels, class_names=class_names, **dataset_kwargs)


def _stack_grey(images: list, sources: list[str], resolution: int | None, resample: str) -> np.ndarray:
    """Stack grey PIL images into uint8 (N, H, W), resized first when `resolution` is given; `sources` name them."""
    if resolution is not None:
        images = [resize_grey(image, resolution, resample) for image in images]
    sizes = {}
    for image, source in zip(images, sources):
        sizes.setdefault(image.size, source)
    if len(sizes) > 1:
        examples = ", ".join(f"{w}x{h} ({source})" for (w, h), source in list(sizes.items())[:4])
        raise ValueError(f"The images have different sizes, e.g. {examples}; pass a `resolution` to resize them all.")
    return np.stack([np.asarray(image, dtype=np.uint8) for image in images])


def _encode_labels(values: list) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as they are (no names); other values as indices into their sorted distinct names."""
    if all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        return np.asarray(values, dtype=np.int64), None
    class_names = sorted({str(value) for value in values})
    index = {name: k for k, name in enumerate(class_names)}
    return np.array([index[str(value)] for value in values], dtype=np.int64), class_names
