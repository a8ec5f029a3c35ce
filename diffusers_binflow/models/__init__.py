from .presets import MODEL_PRESETS, build_unet, downsampling_factor


__all__ = ["MODEL_PRESETS", "build_unet", "downsampling_factor"]
