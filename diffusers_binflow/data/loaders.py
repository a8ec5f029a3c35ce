"""Build a `BinaryImageDataset` from each data source of the training script, failing early with a clear message.

Every loader reads all images into memory once, as grey "L" images (`grey_image`: colour is converted to grey, 16-bit
and float images are scaled from their own range to 0..255) before binarization, resizes them to `resolution` x
`resolution` when it is given (PIL `resample`, "bilinear" by default) and passes the remaining keyword arguments
(`binarize`, `seed`) to [`BinaryImageDataset`]. An image that cannot be decoded raises a `ValueError` naming its file.
"""

from pathlib import Path

import numpy as np
import PIL.Image

from .binarize import grey_levels
from .bundled import load_bundled_digits
from .datasets import BinaryImageDataset, resize_grey


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pbm", ".pgm", ".ppm"}
# Full scale of the PIL modes whose values are not 8-bit levels. PIL opens 16-bit grey PNG/TIFF/PGM files as "I;16*"
# or (older Pillow, and some TIFFs) as 32-bit "I" holding 0..65535; "F" (32-bit float TIFF) is read as [0, 1], the
# float convention of `grey_levels`. Every other mode ("1", "L", "LA", "P", "RGB", "RGBA", ..., including 16-bit
# colour PNGs, which PIL reduces to 8 bits) is 8-bit and converts to "L" directly.
FULL_SCALE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
# What PIL raises for a file it cannot decode (truncated, corrupt, not an image, too large).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)


def grey_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """An opened image as an 8-bit grey "L" image, its mode's full range mapped onto 0..255.

    A plain ``convert("L")`` clips 16-bit levels at 255 instead of scaling them (level 200 of 65535 would become
    grey 200, i.e. bit 1); here it is ``round(level * 255 / 65535)``, as `grey_levels` rounds floats in [0, 1].
    """
    scale = FULL_SCALE.get(image.mode)
    if scale is None:
        return image.convert("L")
    levels = np.asarray(image, dtype=np.float64)
    if levels.size and not (0 <= levels.min() and levels.max() <= scale):
        raise ValueError(f"A mode {image.mode!r} image is read as grey levels in [0, {scale}], but it holds values "
                         f"in [{levels.min()}, {levels.max()}].")
    return PIL.Image.fromarray(grey_levels(levels / scale).numpy().astype(np.uint8), "L")


def read_grey(file: Path) -> PIL.Image.Image:
    """The image in `file` as `grey_image`; any decoding error (e.g. a truncated file) is re-raised naming the file."""
    try:
        with PIL.Image.open(file) as image:
            return grey_image(image)
    except IMAGE_ERRORS as error:
        raise ValueError(f"Cannot read the image {str(file)!r}: {error}") from error


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
    images = [read_grey(file) for file in files]
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
    images = [_decode_row(image_feature, value, i, dataset_name) for i, value in
              enumerate(dataset.cast_column(image_column, datasets.Image(decode=False))[image_column])]
    grey = _stack_grey(images, [f"row {i}" for i in range(len(images))], resolution, resample)
    if label_column is None:
        return BinaryImageDataset(grey, **dataset_kwargs)
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        labels, class_names = list(dataset[label_column]), feature.names
    else:
        labels, class_names = _encode_labels(list(dataset[label_column]))
    return BinaryImageDataset(grey, labels, class_names=class_names, **dataset_kwargs)


def _decode_row(image_feature, value: dict, row: int, dataset_name: str) -> PIL.Image.Image:
    """One undecoded `Image` value ({"bytes", "path"}) as `grey_image`, a decoding error naming the row and file."""
    try:
        return grey_image(image_feature.decode_example(value))
    except IMAGE_ERRORS as error:
        source = f"row {row}" + (f" ({value['path']})" if value.get("path") else "")
        raise ValueError(f"Cannot read the image of {source} of dataset {dataset_name!r}: {error}") from error


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
