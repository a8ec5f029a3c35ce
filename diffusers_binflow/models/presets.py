"""UNet2DModel sizes for binary images: `tiny` trains on a CPU in minutes, `small` and `base` want a GPU."""

import json
from pathlib import Path

from diffusers import UNet2DModel

from ..data import check_resolution


MODEL_PRESETS = {
    "tiny": dict(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
                 down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")),
    "small": dict(block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=32,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "base": dict(block_out_channels=(128, 256, 256, 512), layers_per_block=2, norm_num_groups=32,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}


def downsampling_factor(config: dict) -> int:
    """How many times a UNet halves the resolution: 2 ** (levels - 1). Resolutions must be multiples of it."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def build_unet(preset_or_path: str, resolution: int, in_channels: int = 1, num_class_embeds: int | None = None,
               self_conditioning: bool = False):
    """A fresh UNet2DModel from a preset name or a JSON file of UNet2DModel arguments, for data of `in_channels`
    channels.

    `num_class_embeds` includes the null class used for classifier-free guidance, when there is one. A
    `self_conditioning` UNet takes twice the data's channels (`self_conditioned_input`) and outputs the data's.
    """
    if preset_or_path in MODEL_PRESETS:
        config = dict(MODEL_PRESETS[preset_or_path])
    elif Path(preset_or_path).is_file():
        config = json.loads(Path(preset_or_path).read_text())
    else:
        raise ValueError(f"Unknown model config {preset_or_path!r}: use one of {sorted(MODEL_PRESETS)} or a JSON file.")
    check_resolution(resolution, downsampling_factor(config))
    config.update(sample_size=resolution, in_channels=in_channels * (2 if self_conditioning else 1),
                  out_channels=in_channels, num_class_embeds=num_class_embeds)
    return UNet2DModel(**config)
