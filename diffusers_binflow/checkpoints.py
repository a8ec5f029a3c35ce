"""Crash-safe training checkpoints for the Accelerate training scripts.

A checkpoint is the folder ``checkpoint-<step>`` in a run's output folder, holding Accelerate's state (model and EMA
via `register_checkpoint_hooks`, optimiser, LR schedule, every process's RNG) and, written last, `STATE_FILE`: the
step, the script and the options a resumed run must share with the run that wrote it. The state is first written
to ``checkpoint-<step>.partial`` and renamed into place once complete; older checkpoints are pruned only after
that. So a kill or a full disk during a write leaves at worst a folder that no resumption picks (``latest``
skips it with a warning naming it), and the last good checkpoint is still there.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
# Run options added after checkpoints were first written, with the value every earlier run had: a checkpoint that
# does not record one was trained with it.
OPTIONS_ADDED_LATER = {"self_conditioning": False, "self_conditioning_probability": 0.5, "uniform_fraction": 0.0,
                       "likelihood_cap": 50.0, "correlation": 0.0, "csi_error_var": 0.0, "csi_aware": False,
                       "known_probability": 0.0,
                       "known_span_fraction": 0.0, "multilevel_cavities": False}


def checkpoint_step(folder: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(Path(folder).name).group(1))


def find_checkpoints(output_dir: Path) -> tuple[list[Path], list[Path]]:
    """The run's ``checkpoint-<step>`` folders, oldest first, as (complete, incomplete). Other names
    (``checkpoint-10.bak``, ``checkpoint-20.partial``) are not checkpoints."""
    folders = sorted((p for p in Path(output_dir).glob("checkpoint-*")
                      if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)), key=checkpoint_step)
    complete = [p for p in folders if (p / STATE_FILE).is_file()]
    return complete, [p for p in folders if p not in complete]


def read_checkpoint_state(folder: Path) -> dict:
    """The `STATE_FILE` of a complete checkpoint; a clear error for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--resume_from_checkpoint {folder} is not a checkpoint folder.")
    if not (folder / STATE_FILE).is_file():
        raise ValueError(f"{folder} is not a complete checkpoint (it has no {STATE_FILE}, which is written last): "
                         "its run stopped while writing it. Resume from an earlier checkpoint, or pass "
                         "--resume_from_checkpoint latest to take the newest complete one.")
    return json.loads((folder / STATE_FILE).read_text())


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: Path) -> Path | None:
    """The folder `--resume_from_checkpoint` names: a path, or ``"latest"``, the newest complete checkpoint of
    `output_dir` (None when there is none yet: the run starts afresh)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint != "latest":
        read_checkpoint_state(resume_from_checkpoint)
        return Path(resume_from_checkpoint)
    complete, incomplete = find_checkpoints(output_dir)
    latest = complete[-1] if complete else None
    skipped = [p.name for p in incomplete if latest is None or checkpoint_step(p) > checkpoint_step(latest)]
    if skipped:
        logger.warning(f"Skipping incomplete checkpoint(s) {skipped} in {output_dir} (a run stopped while writing "
                       f"them); resuming from {latest.name if latest else 'scratch'}.")
    return latest


def check_checkpoint_matches(folder: Path, script: str, options: dict, num_processes: int) -> dict:
    """Refuse to resume from a checkpoint written by another script, with other run options or another number of
    processes (any of which would silently make a different run). Returns the checkpoint's state."""
    state = read_checkpoint_state(folder)
    if state["script"] != script:
        raise ValueError(f"{folder} was written by {state['script']}, not {script}.")
    recorded = {**OPTIONS_ADDED_LATER, **state["options"]}
    differing = {k: (recorded.get(k), v) for k, v in options.items() if recorded.get(k) != v}
    if differing:
        raise ValueError(f"{folder} belongs to a run with other options (checkpoint's vs now): "
                         + ", ".join(f"--{k} {a!r} vs {b!r}" for k, (a, b) in differing.items())
                         + ". Resume with the checkpoint's options, or choose another --output_dir.")
    if state["num_processes"] != num_processes:
        raise ValueError(f"{folder} was written by {state['num_processes']} process(es), this run has "
                         f"{num_processes}: the data order and batch would differ. Resume with "
                         f"{state['num_processes']} process(es), or fine-tune the saved pipeline instead.")
    return state


def check_finite_parameters(model: torch.nn.Module, what: str):
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(f"Not saving {what}: {len(bad)} parameter tensor(s) hold NaN or inf values "
                                 f"({bad[:3]}...).")


def save_checkpoint(accelerator, model, output_dir: Path, global_step: int, checkpoints_total_limit: int | None,
                    script: str, options: dict):
    """Write ``checkpoint-<global_step>`` crash-safely (see the module docstring), then keep only the newest
    `checkpoints_total_limit` complete checkpoints. Called by every process; non-finite weights are never saved."""
    output_dir = Path(output_dir)
    final, partial = output_dir / f"checkpoint-{global_step}", output_dir / f"checkpoint-{global_step}.partial"
    check_finite_parameters(model, final.name)
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a run killed while writing this very step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": global_step, "script": script, "num_processes": accelerator.num_processes,
                 "options": options}
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2))
        _fsync_tree(partial)  # the rename below must not reach the disk before the files it names
        if final.exists():  # an incomplete folder of an earlier attempt, or this step's own earlier save
            stale = output_dir / f"checkpoint-{global_step}.stale"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            os.replace(partial, final)
            shutil.rmtree(stale)
        else:
            os.replace(partial, final)
        _fsync_dir(output_dir)
        if checkpoints_total_limit is not None:
            complete, _ = find_checkpoints(output_dir)
            for old in [p for p in complete if p != final][: max(0, len(complete) - checkpoints_total_limit)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _fsync_tree(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resume_position(global_step: int, updates_per_epoch: int, gradient_accumulation_steps: int) -> tuple[int, int]:
    """(epoch, micro-batches of it already trained) after `global_step` optimiser steps."""
    epoch, updates_done = divmod(global_step, updates_per_epoch)
    return epoch, updates_done * gradient_accumulation_steps


def register_checkpoint_hooks(accelerator, ema, model_cls: type, name: str):
    """Save the model (and its EMA, if any) into ``<checkpoint>/<name>`` and ``<name>_ema`` with `save_pretrained`,
    and load them back from there, instead of Accelerate's default pickled state."""

    def save(models, weights, folder):
        if accelerator.is_main_process:
            if ema is not None:
                ema.save_pretrained(str(Path(folder) / f"{name}_ema"))
            for model in models:
                model.save_pretrained(str(Path(folder) / name))
                weights.pop()

    def load(models, folder):
        if ema is not None:
            ema.load_state_dict(EMAModel.from_pretrained(str(Path(folder) / f"{name}_ema"), model_cls).state_dict())
        for _ in range(len(models)):
            models.pop().load_state_dict(model_cls.from_pretrained(str(folder), subfolder=name).state_dict())

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)
