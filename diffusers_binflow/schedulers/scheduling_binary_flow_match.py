"""ODE sampler for binary flow matching (arXiv 2602.10420), in the diffusers scheduler API."""

import math
import numbers
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..bits import bits_to_signal, signal_to_bits, signal_to_probabilities
from ..flow import (
    MAX_LIKELIHOOD_LOGIT,
    check_finite_estimate,
    check_prediction_type,
    interpolate,
    predict_velocity,
    predict_x0,
    renoise,
)
from ..utils import check_choice, check_positive


SOLVERS = ("euler", "heun", "multistep")
FINAL_STEPS = ("threshold", "bernoulli", "none")


@dataclass
class BinaryFlowMatchSchedulerOutput(BaseOutput):
    """
    Output of [`BinaryFlowMatchScheduler.step`].

    Args:
        prev_sample (`torch.Tensor`, same shape as the sample):
            The state at the next sigma; after the last step, the signal after the final-step rule.
        pred_original_sample (`torch.Tensor`, same shape as the sample):
            The model's estimate ``x_hat`` of the clean signal at the current sigma.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class BinaryFlowMatchScheduler(SchedulerMixin, ConfigMixin):
    """
    Integrates the flow-matching ODE from noise (sigma = 1) to binary data (sigma = 0).

    Convention (diffusers'): ``x_sigma = (1 - sigma) * x + sigma * eps`` with ``x = bit_scale * (2b - 1)``, and
    model timesteps ``sigma * num_train_timesteps`` (floats, descending). The paper's time is ``t = 1 - sigma``.
    Each step turns the model output into an estimate ``x_hat`` of the clean signal and the implied velocity
    ``(x_sigma - x_hat) / sigma``. The step into sigma = 0 never divides by sigma: it returns ``x_hat`` itself,
    then applies the final-step rule.

    Args:
        num_train_timesteps (`int`, defaults to 1000):
            Scale between sigma and model timesteps.
        prediction_type (`str`, defaults to `"sample"`):
            What the model outputs: `"sample"` (x_hat), `"logits"` (per-bit logits, x_hat = bit_scale*tanh(l/2)),
            `"velocity"` (eps - x, diffusers' flow-matching target, which diffusers also calls
            `"flow_prediction"`; the config records `"velocity"`) or `"epsilon"`.
        bit_scale (`float`, defaults to 1.0):
            Amplitude of the signal: bit 1 is `+bit_scale`, bit 0 is `-bit_scale`.
        solver (`str`, defaults to `"euler"`):
            `"euler"` (one model call per step), `"heun"` (second order; two calls per step, one on the last) or
            `"multistep"` (second order from the second step on, one call per step: see `_multistep_correction`).
        heun_first_step (`bool`, defaults to `False`):
            Take the grid's first step (out of pure noise) with Heun's method, the others with the solver's: with
            Euler, N steps then make N + 1 model calls (a single step is the step into sigma = 0, one call). At
            sigma = 1 the estimate x_hat knows nothing of the sample (it is the data mean), and an Euler step holds
            it fixed over the whole step; Heun's corrector also reads the estimate where the step lands. A
            few-step setting: on binarized digits it lowered FD at 4 and 8 model calls and raised it at 16
            (BENCHMARKS.md, "Twentieth stop"). Deterministic sampling only (no `stochastic_sampling`, `s_churn` 0);
            with `solver="heun"` every step is a Heun step anyway; with `"multistep"` it starts the multistep
            method, whose first step has no earlier estimate to extrapolate from.
        final_step (`str`, defaults to `"threshold"`):
            What the step into sigma = 0 returns: `"threshold"` (the sign of x_hat, as +-bit_scale), `"bernoulli"`
            (bits drawn with P(bit = 1) read off x_hat) or `"none"` (x_hat unchanged).
        shift (`float`, defaults to 1.0):
            Moves the sigma grid towards noise, ``sigma -> shift*sigma / (1 + (shift-1)*sigma)``, as in
            `FlowMatchEulerDiscreteScheduler`.
        stochastic_sampling (`bool`, defaults to `False`):
            Replace the ODE step by the ancestral one of `FlowMatchEulerDiscreteScheduler`: jump to the path point
            ``(1 - sigma_next) * x_hat + sigma_next * fresh_noise``. Euler only. It mixes better when part of
            the sample is held fixed (completion).
        s_churn (`float`, defaults to 0.0):
            A stochastic corrector (EDM's "churn", Euler only): before the model is evaluated at a grid sigma inside
            [`s_tmin`, `s_tmax`], the state is carried along the path (`renoise`) to the noisier
            ``sigma_hat = sigma + gamma * sigma * (1 - sigma)`` with fresh noise, ``gamma = min(s_churn / N,
            sqrt(2) - 1)`` for N steps, so the total noise injected does not grow with N. The model then sees
            ``sigma_hat`` (the `timesteps` are the evaluation points) and the Euler step goes from ``sigma_hat`` to
            the next grid sigma. 0 is the deterministic ODE sampler.
        s_tmin, s_tmax (`float`, defaults to 0.05 and 0.7):
            The sigma window of the corrector.
        s_noise (`float`, defaults to 1.0):
            Scale of the fresh noise (EDM's S_noise; 1 stays exactly on the path's marginals).
        likelihood_cap (`float`, defaults to 50.0):
            For `prediction_type="likelihood_residual"`: the most log-odds the likelihood term contributes
            (`flow.likelihood_logits`). 50 trusts it fully (exact at the data end); a few nats let the network's
            correction veto bits its prior rejects, such as isolated pixels a sampler left off the data manifold.
        final_likelihood_cap (`float`, *optional*):
            The cap at the last model evaluation only, the one the bits are read from (the step into sigma = 0);
            `None` (the default, and what configs saved before it read) uses `likelihood_cap` there too. A coarse
            grid ends far from the data (sigma 0.25 after 4 steps), where a smaller cap lets the network remove
            more of what the steps left behind.
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        prediction_type: str = "sample",
        bit_scale: float = 1.0,
        solver: str = "euler",
        heun_first_step: bool = False,
        final_step: str = "threshold",
        shift: float = 1.0,
        stochastic_sampling: bool = False,
        s_churn: float = 0.0,
        s_tmin: float = 0.05,
        s_tmax: float = 0.7,
        s_noise: float = 1.0,
        likelihood_cap: float = MAX_LIKELIHOOD_LOGIT,
        final_likelihood_cap: float | None = None,
    ):
        self.register_to_config(prediction_type=check_prediction_type(prediction_type))
        check_choice("solver", solver, SOLVERS)
        check_choice("final_step", final_step, FINAL_STEPS)
        if num_train_timesteps < 1:
            raise ValueError(f"`num_train_timesteps` must be at least 1, got {num_train_timesteps}.")
        check_positive("bit_scale", bit_scale)
        check_positive("shift", shift)
        if stochastic_sampling and solver != "euler":
            raise ValueError("stochastic_sampling replaces the ODE step and works with solver='euler' only.")
        if not (isinstance(s_churn, numbers.Real) and math.isfinite(s_churn) and s_churn >= 0):
            raise ValueError(f"`s_churn` must be a finite number >= 0, got {s_churn!r}.")
        if not (isinstance(s_tmin, numbers.Real) and isinstance(s_tmax, numbers.Real) and 0 <= s_tmin <= s_tmax <= 1):
            raise ValueError(f"The corrector's window needs 0 <= s_tmin <= s_tmax <= 1, got {s_tmin!r}, {s_tmax!r}.")
        check_positive("s_noise", s_noise)
        check_positive("likelihood_cap", likelihood_cap)
        if final_likelihood_cap is not None:
            check_positive("final_likelihood_cap", final_likelihood_cap)
        if s_churn > 0 and (solver != "euler" or stochastic_sampling):
            raise ValueError("The corrector (s_churn > 0) works with solver='euler' and stochastic_sampling=False.")
        if heun_first_step and (stochastic_sampling or s_churn > 0):
            raise ValueError("heun_first_step=True is for the deterministic samplers: stochastic_sampling=False and "
                             "s_churn=0 (the training scripts' --no-heun_first_step turns it off).")
        self.order = 2 if solver == "heun" else 1

        # The training grid, as FlowMatchEulerDiscreteScheduler exposes it; sampling needs `set_timesteps`.
        self.sigmas = self._shift(torch.linspace(1.0, 1.0 / num_train_timesteps, num_train_timesteps))
        self.grid_sigmas = self.sigmas  # where each step lands: `sigmas` differ from it only where churn applies
        self.timesteps = self.sigmas * num_train_timesteps
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None
        self._heun_first_stage = None
        self._previous_estimate = None

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise: sampling starts from eps ~ N(0, I)."""
        return 1.0

    @property
    def step_index(self):
        """Index into `timesteps` of the next call to `step`."""
        return self._step_index

    @property
    def begin_index(self):
        """First index into `timesteps`; set by pipelines that start part-way (`set_begin_index`)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        valid = isinstance(begin_index, int) and not isinstance(begin_index, bool)
        if not (valid and 0 <= begin_index < len(self.timesteps)):
            raise ValueError(f"`begin_index` must be an index into `timesteps`, in [0, {len(self.timesteps)}), "
                             f"got {begin_index!r}.")
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model sees the state unscaled (present for pipelines written for SD-style schedulers)."""
        return sample

    def readout(self, final: bool = False) -> tuple:
        """How a model output becomes x_hat: (prediction_type, bit_scale, likelihood_cap), as `predict_x0` takes them;
        `final` for the evaluation whose step lands on sigma = 0 (the one the bits are read from), which reads
        `final_likelihood_cap` when set. Configs saved before `likelihood_cap` existed read 50 (no cap)."""
        cap = self.config.get("likelihood_cap", MAX_LIKELIHOOD_LOGIT)
        if final and self.config.get("final_likelihood_cap") is not None:
            cap = self.config.final_likelihood_cap
        return (self.config.prediction_type, self.config.bit_scale, cap)

    def bits_to_signal(self, bits: torch.Tensor) -> torch.Tensor:
        return bits_to_signal(bits, self.config.bit_scale)

    def signal_to_bits(self, signal: torch.Tensor) -> torch.Tensor:
        return signal_to_bits(signal)

    def _shift(self, sigmas: torch.Tensor) -> torch.Tensor:
        shift = self.config.shift
        return shift * sigmas / (1 + (shift - 1) * sigmas)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        timesteps: list[float] | None = None,
    ):
        """
        Build the sampling grid: `num_inference_steps` steps from sigma = 1 to sigma = 0.

        Args:
            num_inference_steps (`int`, *optional*):
                Number of ODE steps. The default grid is uniform in sigma, ``linspace(1, 0, N + 1)``, then shifted.
            device (`str` or `torch.device`, *optional*):
                Where to put `timesteps` and `sigmas`.
            sigmas (`list[float]`, *optional*):
                The caller's grid: strictly decreasing values in [0, 1], shifted like the default one. A terminal
                0 is appended unless the list already ends in 0 (diffusers passes N sigmas for N steps).
            timesteps (`list[float]`, *optional*):
                The same as `sigmas`, in model timesteps (``sigma * num_train_timesteps``).
        """
        if sigmas is not None and timesteps is not None:
            raise ValueError("Pass either `sigmas` or `timesteps`, not both.")
        if timesteps is not None:
            sigmas = torch.as_tensor(timesteps, dtype=torch.float32) / self.config.num_train_timesteps
        if sigmas is None:
            if num_inference_steps is None or num_inference_steps < 1:
                raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
            sigmas = torch.linspace(1.0, 0.0, num_inference_steps + 1)
        else:
            sigmas = self._check_custom_sigmas(sigmas, num_inference_steps)
        sigmas = self._shift(sigmas)

        self.num_inference_steps = len(sigmas) - 1
        # Heun evaluates the model twice at each interior sigma it lands on (predictor, then corrector); the last
        # step into sigma = 0 is an Euler step, which there returns x_hat itself.
        heun_landings = len(sigmas) - 2 if self.config.solver == "heun" else int(self._heun_first_step())
        repeats = torch.ones(len(sigmas), dtype=torch.long)
        repeats[1:1 + heun_landings] = 2
        sigmas = sigmas.repeat_interleave(repeats)
        self.grid_sigmas = sigmas.to(device=device, dtype=torch.float32)
        self.sigmas = self._churned(self.grid_sigmas)
        self.timesteps = self.sigmas[:-1] * self.config.num_train_timesteps
        self._step_index = None
        self._begin_index = None
        self._heun_first_stage = None
        self._previous_estimate = None

    def _heun_first_step(self) -> bool:
        """Whether the grid's first step is a Heun step under `heun_first_step` (a single step is the final one)."""
        return self.config.heun_first_step and self.num_inference_steps > 1

    def _heun_predictor(self) -> bool:
        """Whether the step starting at the current index is the predictor of a Heun step."""
        return self.config.solver == "heun" or (self.step_index == 0 and self._heun_first_step())

    def _churned(self, grid: torch.Tensor) -> torch.Tensor:
        """The sigmas the model is evaluated at: the grid's, raised by the corrector inside its window (never the
        first, pure-noise one or the final 0)."""
        gamma = min(self.config.s_churn / self.num_inference_steps, math.sqrt(2) - 1)
        inside = (grid >= self.config.s_tmin) & (grid <= self.config.s_tmax)
        inside[0] = inside[-1] = False
        return torch.where(inside, grid + gamma * grid * (1 - grid), grid)

    @staticmethod
    def _check_custom_sigmas(sigmas, num_inference_steps: int | None) -> torch.Tensor:
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
        if len(sigmas) == 0 or not torch.isfinite(sigmas).all() or sigmas.min() < 0 or sigmas.max() > 1:
            raise ValueError(f"`sigmas` must be finite values in [0, 1], got {sigmas.tolist()}.")
        if sigmas[-1] != 0:
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        if len(sigmas) < 2 or not (sigmas[1:] < sigmas[:-1]).all():
            raise ValueError(f"`sigmas` must be strictly decreasing towards 0, got {sigmas.tolist()}.")
        if num_inference_steps is not None and num_inference_steps != len(sigmas) - 1:
            raise ValueError(
                f"`num_inference_steps`={num_inference_steps} disagrees with the {len(sigmas) - 1} steps in `sigmas`."
            )
        return sigmas

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of `timestep` in the schedule (the second match when it repeats, as diffusers' Heun does)."""
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule_timesteps == torch.as_tensor(timestep, device=schedule_timesteps.device)).nonzero()
        if len(indices) == 0:
            raise ValueError(f"Timestep {float(timestep)} is not in the schedule; pass a value of `scheduler.timesteps`.")
        return indices[1 if len(indices) > 1 else 0].item()

    def _init_step_index(self, timestep):
        self._step_index = self.index_for_timestep(timestep) if self.begin_index is None else self.begin_index

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> BinaryFlowMatchSchedulerOutput | tuple:
        """
        Advance `sample` from the current sigma to the next one.

        Args:
            model_output (`torch.Tensor`): The network's output at `sample`, of the scheduler's `prediction_type`.
            timestep (`float` or `torch.Tensor`): The current value of `scheduler.timesteps`.
            sample (`torch.Tensor`): The current state ``x_sigma``.
            generator (`torch.Generator` or a list of them, *optional*):
                Drives the `"bernoulli"` final step and stochastic sampling; a list seeds each batch item separately.
            return_dict (`bool`, defaults to `True`): Return a dataclass rather than a tuple.

        Returns:
            [`BinaryFlowMatchSchedulerOutput`] or `tuple` ``(prev_sample, pred_original_sample)``.
        """
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps` before `step`: the scheduler has no sampling grid yet.")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"`model_output` has shape {tuple(model_output.shape)} but `sample` has {tuple(sample.shape)}."
            )
        if not torch.is_floating_point(torch.as_tensor(timestep)):
            raise ValueError(
                "Integer timesteps (e.g. loop indices) are not accepted; pass a value of `scheduler.timesteps`."
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.step_index >= len(self.timesteps):
            raise ValueError("All steps have been taken; call `set_timesteps` again to sample anew.")

        # Computed in float32 like diffusers' flow-matching schedulers, then cast back to the caller's dtype.
        output, state = model_output.float(), sample.float()
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        landing = self.grid_sigmas[self.step_index + 1]  # below sigma_next where the corrector raises it
        final = bool(sigma_next == 0)
        x0 = predict_x0(output, state, sigma, *self.readout(final))
        check_finite_estimate(x0, self.step_index, sigma)

        if self._heun_first_stage is not None:
            prev_sample = self._heun_correct(output, state, sigma)
        elif final:
            prev_sample = self._final_step(x0, generator)
        elif self.config.stochastic_sampling:
            prev_sample = interpolate(x0, randn_tensor(x0.shape, generator=generator, device=x0.device), sigma_next)
        else:
            velocity = predict_velocity(output, state, sigma, *self.readout())
            prev_sample = state + (landing - sigma) * velocity
            predictor = self._heun_predictor()
            if self.config.solver == "multistep":
                if not predictor:
                    prev_sample = prev_sample + self._multistep_correction(x0, sigma, landing)
                self._previous_estimate = (sigma, x0)
            if predictor:
                self._heun_first_stage = (state, velocity, landing - sigma)
            elif sigma_next > landing:
                noise = self.config.s_noise * randn_tensor(state.shape, generator=generator, device=state.device)
                prev_sample = renoise(prev_sample, noise, landing, sigma_next)

        self._step_index += 1
        prev_sample, x0 = prev_sample.to(model_output.dtype), x0.to(model_output.dtype)
        if not return_dict:
            return (prev_sample, x0)
        return BinaryFlowMatchSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _heun_correct(self, output: torch.Tensor, state: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Heun's corrector: redo the step from its start with the mean of the two slopes."""
        start, first_velocity, dt = self._heun_first_stage
        self._heun_first_stage = None
        velocity = predict_velocity(output, state, sigma, *self.readout())
        return start + dt * (first_velocity + velocity) / 2

    def _multistep_correction(self, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """What the multistep solver adds to the Euler step from `sigma` to `sigma_next`.

        Along ``dx/dsigma = (x - x_hat(sigma)) / sigma`` the quantity x / sigma changes by ``-x_hat / sigma^2``, so
        with x_hat held at its value at the step's start the step is exact: that is the Euler step,
        ``x' = (sigma'/sigma) x + (1 - sigma'/sigma) x_hat``. The multistep solver lets x_hat vary linearly in sigma
        with the slope ``b`` through the previous step's estimate, and integrates that exactly, which adds
        ``b * (sigma' log(sigma / sigma') - (sigma - sigma'))``: DPM-Solver++(2M)'s idea with sigma in place of the
        log signal-to-noise ratio, which is infinite at sigma = 1. The first step (no earlier estimate) stays Euler's;
        the step into sigma = 0 returns x_hat itself and never reaches here.
        """
        if self._previous_estimate is None:
            return torch.zeros_like(x0)
        previous_sigma, previous_x0 = self._previous_estimate
        slope = (x0 - previous_x0) / (sigma - previous_sigma)
        return slope * (sigma_next * torch.log(sigma / sigma_next) - (sigma - sigma_next))

    def _final_step(self, x0: torch.Tensor, generator) -> torch.Tensor:
        """The step into sigma = 0 lands on x_hat; the final-step rule then decides the bits."""
        bit_scale = self.config.bit_scale
        if self.config.final_step == "threshold":
            return bits_to_signal(signal_to_bits(x0), bit_scale)
        if self.config.final_step == "bernoulli":
            # u = Phi(z) is uniform; drawing z with randn_tensor keeps diffusers' per-item generator semantics.
            uniform = torch.special.ndtr(randn_tensor(x0.shape, generator=generator, device=x0.device))
            return bits_to_signal((uniform < signal_to_probabilities(x0, bit_scale)).float(), bit_scale)
        return x0

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Training-time noising in DDPM argument order: the path at ``sigma = timesteps / num_train_timesteps``.

        `original_samples` is the clean signal (see `bits_to_signal`); `timesteps` holds one value per sample, or one
        value (a scalar or shape (1,)) for the whole batch, any float, not only grid values.
        """
        sigmas = torch.as_tensor(timesteps, device=original_samples.device, dtype=torch.float32)
        if sigmas.numel() == 1:
            sigmas = sigmas.reshape(())
        return interpolate(original_samples, noise, sigmas / self.config.num_train_timesteps)

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The same as `add_noise`, in `FlowMatchEulerDiscreteScheduler`'s argument order."""
        return self.add_noise(sample, noise, timestep)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
