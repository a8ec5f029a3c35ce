"""Self-conditioning in the pipelines (Bit Diffusion, Chen et al. 2022): at each step a self-conditioned denoiser
sees the state and the estimate ``x_hat`` of the previous step (`self_conditioned_input`; zeros at the first)."""

from ..flow import self_conditioned_input


def denoiser_self_conditioning(denoiser, self_conditioning: bool | None) -> bool:
    """A pipeline's `self_conditioning`: as given, else what the denoiser's config records (our sequence and MIMO
    models record it; a diffusers UNet or transformer does not, and is taken as not self-conditioned)."""
    if self_conditioning is not None:
        return bool(self_conditioning)
    return bool(denoiser is not None and denoiser.config.get("self_conditioning", False))


class SelfConditioningMixin:
    """`self_conditioning` from the pipeline's config (False for pipelines saved before it was recorded) and the
    denoiser input it implies."""

    @property
    def self_conditioning(self) -> bool:
        return bool(self.config.get("self_conditioning", False))

    def denoiser_input(self, latents, x_hat_prev):
        """What the denoiser sees at a step: `latents`, with the previous step's estimate `x_hat_prev` (None at the
        first step) when the pipeline is self-conditioned."""
        return self_conditioned_input(latents, x_hat_prev) if self.self_conditioning else latents

    def check_model_self_conditioning(self, model, name: str):
        """A model that records `self_conditioning` in its config must agree with the pipeline: otherwise it
        would get twice, or half, the input features it takes."""
        recorded = bool(model.config.get("self_conditioning", False))
        if recorded != self.self_conditioning:
            raise ValueError(
                f"The pipeline's self_conditioning={self.self_conditioning}, but its {name} was built with "
                f"self_conditioning={recorded}: it takes "
                f"{'the noisy bits and the previous estimate' if recorded else 'the noisy bits alone'}. Create the "
                f"pipeline with self_conditioning={recorded} (or leave it out to follow the {name}'s config)."
            )
