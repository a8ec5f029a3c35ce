"""Run a training script with a real fault injected at a checkpoint, for the tests of what survives it.

    BINFLOW_FAULT=<fault>:<step> python tests/train_scripts/faults.py SCRIPT [options...]
    BINFLOW_FAULT=<fault>:<step> accelerate launch tests/train_scripts/faults.py SCRIPT [options...]

`kill_after`: every process SIGKILLs itself once checkpoint-<step> is complete (a machine lost between saves).
`raise_after`: every process raises an exception there instead (a bug, left uncaught).
`kill_during`: the process SIGKILLs itself while checkpoint-<step> is being written, after the model files and
before the optimiser state (a kill or power loss in mid-write). `disk_full`: that same write fails with ENOSPC.
"""

import errno
import os
import runpy
import signal
import sys

import accelerate.checkpointing

import diffusers_binflow.training_runs as training_runs

fault, step = os.environ["BINFLOW_FAULT"].split(":")
target = f"checkpoint-{step}"
save_checkpoint, save_state_file = training_runs.save_checkpoint, accelerate.checkpointing.save


def save_checkpoint_then_die(accelerator, model, output_dir, global_step, *args, **kwargs):
    save_checkpoint(accelerator, model, output_dir, global_step, *args, **kwargs)
    if f"checkpoint-{global_step}" == target:
        if fault == "raise_after":
            raise RuntimeError(f"fault injected after {target}")
        os.kill(os.getpid(), signal.SIGKILL)


def fail_while_writing(obj, path, *args, **kwargs):
    if target in str(path) and str(path).endswith("optimizer.bin"):
        if fault == "kill_during":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return save_state_file(obj, path, *args, **kwargs)


if fault in ("kill_after", "raise_after"):
    training_runs.save_checkpoint = save_checkpoint_then_die
else:
    accelerate.checkpointing.save = fail_while_writing
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
