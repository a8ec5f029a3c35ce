"""benchmarks.training_loop: the one training loop stops at a non-finite loss and says so, and shows its progress."""

import math

import torch

from benchmarks.training_loop import train_loop


def squared_output(model, batch, generator):
    return model(batch).pow(2).mean()


def test_a_non_finite_loss_stops_training_and_is_reported(capsys):
    """Adam at lr 1e30 moves the weights by about 1e30 in one step, so the next squared output overflows to inf."""
    seen = []
    training = train_loop(lambda: torch.nn.Linear(4, 1), squared_output,
                          lambda generator: torch.randn(8, 4, generator=generator), 10, seed=0, lr=1e30,
                          observe=lambda step, value, output: seen.append(step))
    assert training.diverged and training.stopped_at_step == 1
    assert len(training.losses) == 1 and math.isfinite(training.losses[0]) and seen == [0]
    assert all(torch.isfinite(p).all() for p in training.model.parameters())  # the inf step did not update them
    assert not training.model.training and training.train_seconds >= 0
    assert "1/10" in capsys.readouterr().err  # the progress bar stops where training did


def test_a_finite_run_takes_every_step_and_is_reproducible(capsys):
    def run():
        return train_loop(lambda: torch.nn.Linear(4, 1), squared_output,
                          lambda generator: torch.randn(8, 4, generator=generator), 5, seed=3, cosine_decay=True,
                          warmup_steps=2, max_grad_norm=1.0, ema_decay=0.9)

    first = run()
    bar = capsys.readouterr().err
    assert "Steps" in bar and "5/5" in bar and f"loss={first.losses[-1]:.4g}" in bar
    second = run()
    assert not first.diverged and first.stopped_at_step is None and len(first.losses) == 5
    assert first.losses == second.losses
    torch.testing.assert_close(first.model.weight, second.model.weight, rtol=0, atol=0)
