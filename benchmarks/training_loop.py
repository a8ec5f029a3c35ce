"""The one training loop of the benchmarks: Adam steps on a benchmark's own model, data and loss.

Each benchmark brings what is specific to it (how to build the model, how to draw a batch, its loss, the learning
rate schedule and clipping it was measured with); `train_loop` does the seeding, the optimiser steps, the
divergence stop and the timing the same way for all of them.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from diffusers_binflow.diagnostics import output_gradient_norms


@dataclass
class Training:
    """What `train_loop` returns."""

    model: nn.Module  # in eval mode; the EMA weights when the loop kept an EMA
    losses: list[float]  # the loss of every step that updated the model
    stopped_at_step: int | None  # the step whose loss was not finite (training stopped before updating), else None
    train_seconds: float  # wall time of the steps

    @property
    def diverged(self) -> bool:
        return self.stopped_at_step is not None


def train_loop(
    build_model: Callable[[], nn.Module],
    loss_fn: Callable[[nn.Module, Any, torch.Generator], Any],
    sample_batch: Callable[[torch.Generator], Any],
    steps: int,
    *,
    seed: int,
    data_seed: int | None = None,
    noise_seed: int | None = None,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    cosine_decay: bool = False,
    warmup_steps: int = 0,
    max_grad_norm: float | None = None,
    ema_decay: float | None = None,
    observe: Callable[[int, float, Any], None] | None = None,
) -> Training:
    """Train ``build_model()`` for `steps` Adam steps on ``loss_fn(model, sample_batch(data_generator), generator)``.

    Seeds: ``torch.manual_seed(seed)`` right before `build_model` (its initialisation, and any draw from the global
    generator during training); the data generator is seeded with `data_seed` (default `seed`); the loss draws from
    a generator seeded with `noise_seed`, or, when that is None, from the data generator itself (one stream: each
    step's batch, then its loss). `loss_fn` returns the scalar loss, or a tuple whose first item is it (e.g.
    ``(loss, sigmas, model_output)``); `observe(step, loss value, that return value)` sees each finite step before
    its backward pass. The learning rate follows `lr_schedule`; gradients are clipped to `max_grad_norm` when given;
    with `ema_decay`, diffusers' `EMAModel` (with warm-up) follows the weights and is copied into the model at the
    end. A non-finite loss stops training before it updates the model: `Training.diverged` then says so. A progress
    bar (on stderr, refreshed at most every 10 s so that a log file stays short) shows the steps and the last loss.
    """
    torch.manual_seed(seed)
    model = build_model()
    data_generator = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
    generator = data_generator if noise_seed is None else torch.Generator().manual_seed(noise_seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    schedule = lr_schedule(optimizer, steps, cosine_decay, warmup_steps)
    ema = None if ema_decay is None else EMAModel(model.parameters(), decay=ema_decay, use_ema_warmup=True, power=0.75)
    losses, stopped_at_step = [], None
    model.train()
    start = time.perf_counter()
    progress = tqdm(range(steps), desc="Steps", unit="step", mininterval=10)
    for step in progress:
        output = loss_fn(model, sample_batch(data_generator), generator)
        loss = output[0] if isinstance(output, tuple) else output
        value = loss.item()
        if not math.isfinite(value):
            stopped_at_step = step
            break
        progress.set_postfix(loss=f"{value:.4g}", refresh=False)
        if observe is not None:
            observe(step, value, output)
        optimizer.zero_grad()
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if ema is not None:
            ema.step(model.parameters())
        losses.append(value)
    progress.close()
    train_seconds = time.perf_counter() - start
    if ema is not None:
        ema.copy_to(model.parameters())
    return Training(model.eval(), losses, stopped_at_step, train_seconds)


def lr_schedule(optimizer, steps: int, cosine_decay: bool, warmup_steps: int):
    """The learning-rate schedule of a benchmark (None: constant).

    Cosine decay to 0 over `steps`: torch's `CosineAnnealingLR`, or with a warm-up, diffusers' "cosine" schedule
    (linear from 0 over `warmup_steps`, then cosine). A warm-up alone: linear, ``(s + 1) / warmup_steps`` at step s,
    then constant.
    """
    if cosine_decay and warmup_steps:
        return get_scheduler("cosine", optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)
    if cosine_decay:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if warmup_steps:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps))
    return None


class OutputGradients:
    """An `observe` for `train_loop` whose loss returns ``(loss, sigmas, model_output)``: the sigmas and per-sample
    output-gradient norms (the library's `output_gradient_norms` times the batch size) of the last `window` steps."""

    def __init__(self, steps: int, window: int, batch_size: int):
        self.first_step, self.batch_size = steps - window, batch_size
        self.sigma_batches, self.norm_batches = [], []

    def __call__(self, step: int, value: float, output) -> None:
        if step >= self.first_step:
            loss, sigmas, model_output = output
            self.sigma_batches.append(sigmas.detach())
            self.norm_batches.append(output_gradient_norms(loss, model_output).detach() * self.batch_size)

    @property
    def sigmas(self) -> torch.Tensor:
        return torch.cat(self.sigma_batches) if self.sigma_batches else torch.empty(0)

    @property
    def norms(self) -> torch.Tensor:
        return torch.cat(self.norm_batches) if self.norm_batches else torch.empty(0)
