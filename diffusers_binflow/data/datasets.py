"""`BinaryImageDataset` (grey images in memory, binarized when read) and the resolution check for the model."""

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from ..utils import check_choice
from .binarize import Binarizer


RESAMPLE = {"bilinear": PIL.Image.BILINEAR, "nearest": PIL.Image.NEAREST}


def resize_grey(image: PIL.Image.Image, resolution: int, resample: str = "bilinear") -> PIL.Image.Image:
    """Resize one grey image to `resolution` x `resolution` with PIL's `"bilinear"` or `"nearest"` filter."""
    check_choice("resample", resample, tuple(RESAMPLE))
    return image.resize((resolution, resolution), RESAMPLE[resample])


def check_resolution(resolution: int | tuple[int, int], divisor: int) -> None:
    """Raise a `ValueError` unless each side of `resolution` is a positive multiple of the model's `divisor`.

    `divisor` is the model's total downsampling factor (for a `UNet2DModel`, ``2 ** (len(block_out_channels) - 1)``;
    for a patch transformer, its patch size).
    """
    for size in (resolution,) if isinstance(resolution, int) else resolution:
        if size <= 0 or size % divisor:
            lower, upper = (size // divisor) * divisor, (size // divisor + 1) * divisor
            nearest = " or ".join(str(s) for s in (lower, upper) if s > 0)
            raise ValueError(
                f"Resolution {resolution} does not work with a model that downsamples by {divisor}: every side must "
                f"be a multiple of {divisor}, e.g. {nearest}. Pass such a `resolution` or change the model."
            )


class BinaryImageDataset(Dataset):
    """Binary images for training: grey images kept in memory (uint8), binarized each time an item is read.

    Item ``i`` is ``{"bits": float32 tensor (C, H, W) of 0/1, "label": int}`` ("label" only with `labels`).

    Args:
        images: uint8 array (N, H, W) or (N, H, W, C) of grey levels 0..255.
        labels: optional integers (N,) in 0..num_classes - 1.
        resolution: if given, every image (each channel) is resized once, here, to `resolution` x `resolution`
            with PIL `resample` (`"bilinear"`, the default, or `"nearest"`); resizing acts on grey levels,
            before binarization.
        binarize: the [`Binarizer`] rule; threshold at 128 by default.
        seed: with stochastic binarization, item ``i`` in epoch ``e`` is drawn from a generator seeded by
            ``(seed, e, i)`` only, whatever the order or the worker that reads it: call `set_epoch` at the start
            of every epoch, including the first one after resuming, and the bits repeat exactly. DataLoader
            workers copy the dataset when they start, so with ``persistent_workers=True`` they keep the epoch
            they started with.
        class_names: optional names of the classes, indexed by label.

    Attributes: `num_classes` (``len(class_names)``, else ``max(labels) + 1``; None without labels),
    `image_shape` (C, H, W), `class_names`, `epoch`.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels=None,
        resolution: int | None = None,
        resample: str = "bilinear",
        binarize: Binarizer = Binarizer(),
        seed: int = 0,
        class_names: list[str] | None = None,
    ):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
            raise ValueError(f"`images` must be uint8 (N, H, W) or (N, H, W, C) with N > 0, got {images.dtype} "
                             f"{images.shape}.")
        images = images[..., None] if images.ndim == 3 else images
        if resolution is not None:
            num_images, channels = images.shape[0], images.shape[3]
            planes = images.transpose(0, 3, 1, 2).reshape(-1, *images.shape[1:3])
            resized = [np.asarray(resize_grey(PIL.Image.fromarray(plane), resolution, resample)) for plane in planes]
            images = np.stack(resized).reshape(num_images, channels, resolution, resolution).transpose(0, 2, 3, 1)
        images = np.ascontiguousarray(images)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != images.shape[:1] or (labels < 0).any():
                raise ValueError(f"`labels` must be {len(images)} integers >= 0, got shape {labels.shape}.")
        self.images, self.labels, self.class_names = images, labels, class_names
        self.binarize, self.seed = binarize, seed
        self.epoch = 0
        self.image_shape = (images.shape[3], images.shape[1], images.shape[2])
        if labels is None:
            self.num_classes = None
        else:
            self.num_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose stochastic bits the items return (no effect with threshold binarization)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(item_seed))
        item = {"bits": self.binarize(torch.from_numpy(self.images[index]), generator).permute(2, 0, 1)}
        if self.labels is not None:
            item["label"] = int(self.labels[index])
        return item
