"""A conditional x-predicting denoiser for MIMO detection: a small transformer with one token per real symbol."""

import math
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import nn

from .channel import check_channel_inputs, get_modulation
from .detectors import EP_ITERATIONS, gaussian_ep_cavities, lmmse_estimate, pam_llrs

# The state's precision (1 - sigma)^2 / sigma^2 is capped here, where x_sigma already fixes the bits.
MIN_FUSION_SIGMA = 1e-3
# Bound of the cavity LLR the network's output is added to.
MAX_CAVITY_LLR = 30.0


@dataclass
class MIMOFlowTransformerOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape (B, num_bits)): The prediction (x_hat or per-bit logits).
    """

    sample: torch.Tensor


class AdaLNBlock(nn.Module):
    """A pre-norm transformer block whose norms are shifted, scaled and gated by the conditioning (as in DiT)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        inner = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(), nn.Linear(inner, hidden_size))
        self.modulation = nn.Linear(hidden_size, 6 * hidden_size)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, tokens: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(nn.functional.silu(conditioning))[:, None].chunk(6, dim=-1)
        h = self.norm1(tokens) * (1 + scale1) + shift1
        tokens = tokens + gate1 * self.attn(h, h, h, need_weights=False)[0]
        h = self.norm2(tokens) * (1 + scale2) + shift2
        return tokens + gate2 * self.mlp(h)


class MIMOFlowTransformer(ModelMixin, ConfigMixin):
    """
    Denoiser of the bits of one channel use, conditioned on ``(y, H, N0)`` and sigma.

    There is one token per real transmitted symbol (``bits_per_real`` bits each). A token sees its noisy bits
    ``x_sigma`` and channel features that are sufficient statistics of the linear Gaussian model, normalised so
    that they are O(1): its matched-filter output ``[H^T y]_j``, its row of the Gram matrix ``H^T H``, the
    bias-free LMMSE estimate and its error variance (`lmmse_estimate`), and ``log N0``. A token also sees its
    expectation-propagation cavity given both observations of the symbols: the channel, ``y = H s + n``, and the
    flow state of their bits, ``x_sigma = (1 - sigma) x + sigma eps`` (`state_cavities`; for more than one bit per
    real symbol only with `multilevel_cavities`); with the cavities, the prediction is the EP detector at
    sigma = 1 and the state itself at sigma = 0 until the network learns a correction. Sigma (as the model
    timestep ``sigma * num_train_timesteps``) and ``log N0`` condition every block through adaptive layer norms.

    Args:
        num_tx (`int`), num_rx (`int`): Antennas of the complex system the model detects.
        modulation (`str`): `"bpsk"`, `"qpsk"`, `"16qam"` or `"64qam"` (see `diffusers_binflow.mimo.channel`).
        hidden_size (`int`), num_layers (`int`), num_heads (`int`), mlp_ratio (`float`): Transformer size.
        num_train_timesteps (`int`): The scheduler's, to read sigma off the timestep.
        prediction_type (`str`): `"logits"` or `"sample"`, what the output is (the scheduler's). With the EP
            cavities the network learns a correction to the EP denoiser: its output is added to each bit's LLR
            under the cavities (logits) or to ``tanh(LLR / 2)``, the bit's expected sign (sample).
        ep_iterations (`int`): Expectation-propagation iterations of those cavities (0: the Gaussian prior's,
            i.e. the LMMSE reading of the channel and the state).
        self_conditioning (`bool`): Take ``self_conditioned_input(x_sigma, x_hat_prev)``, (B, 2 num_bits): each
            token also sees the previous estimate of its bits (self-conditioning, Bit Diffusion). The cavities
            read the state ``x_sigma`` alone.
        multilevel_cavities (`bool`): Give the EP cavities to modulations with more than one bit per real symbol
            (16-QAM, 64-QAM) too; without them such a model sees the LMMSE features only. Configs saved before this
            option existed read False, as they were built.

    Called as ``model(sample, timestep, y=y, H=H, noise_var=N0)`` with ``sample (B, num_bits)``, real-valued
    ``y (B, 2 num_rx)`` and ``H (B, 2 num_rx, n)``; returns one value per bit, of the training's prediction type.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_tx: int = 4,
        num_rx: int = 4,
        modulation: str = "qpsk",
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        num_train_timesteps: int = 1000,
        prediction_type: str = "logits",
        ep_iterations: int = EP_ITERATIONS,
        self_conditioning: bool = False,
        multilevel_cavities: bool = True,
    ):
        super().__init__()
        mod = get_modulation(modulation)
        if prediction_type not in ("logits", "sample"):
            raise ValueError(f"prediction_type must be 'logits' or 'sample' (x-prediction), got {prediction_type!r}.")
        if num_rx < num_tx:
            raise ValueError(f"num_rx ({num_rx}) must be at least num_tx ({num_tx}).")
        n = mod.num_real_symbols(num_tx)
        self.num_symbols, self.bits_per_real = n, mod.bits_per_real
        self.num_bits = n * mod.bits_per_real
        self.fuses_state = mod.bits_per_real == 1 or multilevel_cavities
        if ep_iterations < 0:
            raise ValueError(f"ep_iterations must be at least 0, got {ep_iterations}.")
        # noisy bits[, previous estimate], MF, LMMSE estimate and variance, log N0, Gram row[, EP cavity mean and
        # log variance]
        num_features = mod.bits_per_real * (2 if self_conditioning else 1) + 4 + n + 2 * self.fuses_state
        self.token_in = nn.Linear(num_features, hidden_size)
        self.position = nn.Parameter(torch.randn(n, hidden_size) * 0.02)
        self.time_proj = Timesteps(hidden_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden_size, hidden_size)
        self.noise_embedding = nn.Sequential(nn.Linear(1, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.blocks = nn.ModuleList(AdaLNBlock(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.gradient_checkpointing = False
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj_out = nn.Linear(hidden_size, mod.bits_per_real)
        for layer in (self.modulation_out, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def channel_features(self, y: torch.Tensor, H: torch.Tensor, noise_var) -> torch.Tensor:
        """Per-token features of a real-valued batch, (B, n, n + 4): the conditioning that does not depend on
        sigma, computed once per detection by the pipeline."""
        mod = get_modulation(self.config.modulation)
        expected = (2 * self.config.num_rx, self.num_symbols)
        if H.ndim != 3 or tuple(H.shape[1:]) != expected:
            raise ValueError(f"This model detects {self.config.num_tx}x{self.config.num_rx} {mod.name}: H must be "
                             f"(B, {expected[0]}, {expected[1]}) real-valued, got {tuple(H.shape)}.")
        noise_var = check_channel_inputs(y, H, noise_var)
        amplitude = math.sqrt(mod.energy_per_real)
        num_rx = self.config.num_rx
        matched = (H.mT @ y[..., None]).squeeze(-1) / (num_rx * amplitude)
        gram = H.mT @ H / num_rx
        estimate, variance = lmmse_estimate(y, H, noise_var, mod)
        log_n0 = noise_var.log()[:, None].expand(-1, self.num_symbols)
        scalars = [matched, estimate / amplitude, (variance / mod.energy_per_real).log(), log_n0]
        return torch.cat([torch.stack(scalars, -1), gram], -1).to(self.dtype)

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # A saved config without `multilevel_cavities` comes from before it existed: such a model has none.
        if "_class_name" in config_dict and "multilevel_cavities" not in config_dict:
            config_dict = {**config_dict, "multilevel_cavities": False}
        return super().extract_init_dict(config_dict, **kwargs)

    @torch.no_grad()
    def state_cavities(self, sample: torch.Tensor, sigma: torch.Tensor, channel_features: torch.Tensor):
        """The EP cavities of the symbols given the channel and the state ``x_sigma`` of their bits, and each bit's
        LLR under them.

        The symbols are ``s = a u``, ``u`` the unscaled PAM levels (``a`` = `Modulation.scale`), so the channel
        reads ``A = 2 a^2 H^T H / N0``, ``b = 2 a H^T y / N0`` (``N0 / 2`` per real dimension). With one bit per
        real symbol ``u = x``, the state is one more Gaussian observation of it and joins the channel:
        `gaussian_ep_cavities` with ``A + ((1 - sigma)^2 / sigma^2) I`` and ``b + ((1 - sigma) / sigma^2)
        x_sigma``, and the bit's LLR is ``2 t_j / v_j``. With more bits, the state is a prior over each symbol's
        levels, ``log pi_j(l) = ((1 - sigma) / sigma^2) sum_k x_k(l) x_sigma,jk`` (``x_k(l)`` the signs of level
        l's Gray label), and the LLRs demap cavity and prior exactly (`pam_llrs`). Returns the cavity means and
        log variances (unscaled), each (B, n, 1), and the LLRs (B, num_bits), bounded by `MAX_CAVITY_LLR`."""
        mod = get_modulation(self.config.modulation)
        batch, n, num_rx, scale = sample.shape[0], self.num_symbols, self.config.num_rx, mod.scale
        gram = channel_features[..., 4:4 + n] * num_rx
        matched = channel_features[..., 0] * num_rx * math.sqrt(mod.energy_per_real)
        noise_real = channel_features[:, 0, 3].exp()[:, None] / 2
        sigma = sigma.clamp_min(MIN_FUSION_SIGMA)[:, None]
        precision = (scale**2 / noise_real)[..., None] * gram
        linear = scale / noise_real * matched
        levels, labels = mod.constellation(sample.device, sample.dtype)
        levels = (levels / scale).round()  # odd integers
        iterations = self.config.ep_iterations
        if self.bits_per_real == 1:
            eye = torch.eye(n, dtype=sample.dtype, device=sample.device)
            precision = precision + ((1 - sigma) / sigma)[..., None] ** 2 * eye
            linear = linear + (1 - sigma) / sigma**2 * sample
            mean, variance = gaussian_ep_cavities(precision, linear, levels, iterations)
            llrs = 2 * mean / variance
        else:
            signs = sample.view(batch, n, self.bits_per_real)
            log_prior = ((1 - sigma) / sigma**2)[..., None] * signs @ (2 * labels - 1).T  # (B, n, M)
            mean, variance = gaussian_ep_cavities(precision, linear, levels, iterations, log_prior=log_prior)
            llrs = pam_llrs(scale * mean, scale**2 * variance, mod, log_prior=log_prior)
        return mean[..., None], variance.log()[..., None], llrs.clamp(-MAX_CAVITY_LLR, MAX_CAVITY_LLR)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor | None = None,
        H: torch.Tensor | None = None,
        noise_var: torch.Tensor | float | None = None,
        channel_features: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> MIMOFlowTransformerOutput | tuple:
        """
        Args:
            sample (`torch.Tensor` of shape (B, num_bits)): The noisy signal ``x_sigma``; with `self_conditioning`,
                (B, 2 num_bits), from `self_conditioned_input`.
            timestep (`torch.Tensor` of shape (B,) or a scalar): ``sigma * num_train_timesteps``.
            y, H, noise_var: The real-valued observation (see the class docstring) and N0.
            channel_features (`torch.Tensor`, *optional*): `channel_features(y, H, noise_var)`, precomputed.
            return_dict (`bool`): Return a [`MIMOFlowTransformerOutput`] rather than a tuple.
        """
        if channel_features is None:
            if y is None or H is None or noise_var is None:
                raise ValueError("Pass `y`, `H` and `noise_var` (or precomputed `channel_features`).")
            channel_features = self.channel_features(y, H, noise_var)
        batch, width = sample.shape[0], self.num_bits * (2 if self.config.self_conditioning else 1)
        if sample.shape != (batch, width) or channel_features.shape[:2] != (batch, self.num_symbols):
            raise ValueError(f"Expected sample (B, {width}) and channel features (B, {self.num_symbols}, ...) for the "
                             f"same B; got {tuple(sample.shape)} and {tuple(channel_features.shape)}"
                             + (" (a self-conditioned model takes `self_conditioned_input(x_sigma, x_hat_prev)`)."
                                if self.config.self_conditioning else "."))
        inputs = [part.view(batch, self.num_symbols, self.bits_per_real) for part in sample.split(self.num_bits, -1)]
        sample = sample[:, :self.num_bits]
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=sample.dtype).expand(batch)
        log_n0 = channel_features[:, :1, 3:4].reshape(batch, 1)
        conditioning = self.time_embedding(self.time_proj(timestep).to(sample.dtype)) + self.noise_embedding(log_n0)
        inputs, skip = [*inputs, channel_features], 0
        if self.fuses_state:
            mean, log_variance, cavity_llrs = self.state_cavities(
                sample, timestep / self.config.num_train_timesteps, channel_features)
            inputs += [mean, log_variance]
            skip = cavity_llrs if self.config.prediction_type == "logits" else torch.tanh(cavity_llrs / 2)
        hidden = self.token_in(torch.cat(inputs, -1)) + self.position
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(block, hidden, conditioning)
            else:
                hidden = block(hidden, conditioning)
        shift, scale = self.modulation_out(nn.functional.silu(conditioning))[:, None].chunk(2, dim=-1)
        output = self.proj_out(self.norm_out(hidden) * (1 + scale) + shift).reshape(batch, self.num_bits) + skip
        if not return_dict:
            return (output,)
        return MIMOFlowTransformerOutput(sample=output)
