"""Running the three training scripts as users do (subprocesses, `accelerate launch` for several processes), on
data small enough that a run crosses several epoch boundaries in a few seconds."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent / "faults.py"
TEARDOWN_PROBE = Path(__file__).resolve().parent / "teardown_probe.py"
TWO_PROCESSES = ("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no")
TINY_UNET = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
             "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}
TINY_SEQUENCE_MODEL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}
# The subfolder of a saved pipeline (and of a checkpoint) that holds each script's model.
MODEL_FOLDER = {"train_binary_flow": "unet", "train_sequence": "denoiser", "train_mimo": "model"}


def binary_shapes_folder(root: Path, size=28, count=12) -> Path:
    """A small image folder of binary squares and crosses (two classes), as PNGs."""
    rng = np.random.default_rng(0)
    for label in ("squares", "crosses"):
        (root / label).mkdir(parents=True)
        for i in range(count):
            image = np.zeros((size, size), dtype=np.uint8)
            a, b = sorted(rng.integers(4, size - 4, 2))
            if label == "squares":
                image[a:b + 3, a:b + 3] = 255
            else:
                image[size // 2 - 1:size // 2 + 1, :] = image[:, size // 2 - 1:size // 2 + 1] = 255
            PIL.Image.fromarray(image).save(root / label / f"{i}.png")
    return root


def small_run_options(script: str, workdir: Path) -> list[str]:
    """Options for a tiny model on 32 training items in batches of 8: an epoch is 4 optimiser steps on one process
    and 2 on each of two."""
    if script == "train_binary_flow":
        config = workdir / "tiny_unet.json"
        if not config.exists():
            config.write_text(json.dumps(TINY_UNET))
            binary_shapes_folder(workdir / "shapes", count=16)
        return ["--model_config", str(config), "--train_data_dir", str(workdir / "shapes"), "--class_conditional",
                "--stochastic_binarization", "--train_batch_size", "8", "--validation_steps", "1000",
                "--num_inference_steps", "2", "--gradient_checkpointing"]
    if script == "train_sequence":
        config = workdir / "tiny_sequence.json"
        if not config.exists():
            config.write_text(json.dumps(TINY_SEQUENCE_MODEL))
            (workdir / "sums.txt").write_text("\n".join(f"{a}+{b}={a + b}" for a in range(4) for b in range(8)))
        return ["--model_config", str(config), "--train_file", str(workdir / "sums.txt"), "--train_batch_size", "8",
                "--validation_steps", "1000", "--num_inference_steps", "2", "--num_validation_samples", "4",
                "--gradient_checkpointing"]
    return ["--num_tx", "2", "--num_rx", "2", "--hidden_size", "16", "--num_layers", "1", "--num_heads", "2",
            "--train_batch_size", "16", "--eval_channel_uses", "16", "--eval_snr_db", "10", "--gradient_checkpointing"]


def train(script: str, output_dir: Path, *options, processes: int = 1, fault: str | None = None,
          wrapper: Path | None = None, expect_failure: bool = False) -> subprocess.CompletedProcess:
    """Run `script` (a name in MODEL_FOLDER) to completion; `fault` is faults.py's ``<fault>:<step>``; `wrapper` a
    script that runs it (such as TEARDOWN_PROBE)."""
    path = ROOT / "train_scripts" / f"{script}.py"
    launcher = (sys.executable, *(TWO_PROCESSES if processes == 2 else ()))
    wrappers = [w for w in (wrapper, FAULTS if fault else None) if w is not None]  # the probe runs faults.py
    target = (*map(str, wrappers), str(path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"BINFLOW_FAULT": fault} if fault else {})}
    proc = subprocess.run([*launcher, *target, "--output_dir", str(output_dir), *options], capture_output=True,
                          text=True, timeout=600, env=env)
    assert (proc.returncode != 0) == expect_failure, proc.stdout + proc.stderr
    return proc


def model_weights(folder: Path, script: str) -> dict:
    return load_file(str(Path(folder) / MODEL_FOLDER[script] / "diffusion_pytorch_model.safetensors"))


def log_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "train_log.jsonl").read_text().splitlines()]


def load_script(name: str):
    """A training script as a module, for in-process checks of its options."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "train_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
