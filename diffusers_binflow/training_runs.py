"""Run bookkeeping shared by the training scripts: checkpoints, exact resumption and publishing to the Hub."""

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, is_tensorboard_available
from diffusers.training_utils import EMAModel
from huggingface_hub import create_repo

from .hub import upload_pipeline_folder

logger = logging.getLogger(__name__)


def add_optimisation_arguments(parser, train_batch_size: int):
    """The optimiser, learning-rate schedule, EMA, precision and seed options of the training scripts."""
    train = parser.add_argument_group("optimisation")
    train.add_argument("--train_batch_size", type=int, default=train_batch_size, help="Per process.")
    train.add_argument("--num_epochs", type=int, default=10)
    train.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_epochs.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=1e-3)
    train.add_argument("--lr_scheduler", default="cosine",
                       choices=["linear", "cosine", "constant", "constant_with_warmup"])
    train.add_argument("--lr_warmup_steps", type=int, default=100)
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.99)
    train.add_argument("--adam_weight_decay", type=float, default=0.0)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    train.add_argument("--ema_max_decay", type=float, default=0.999)
    train.add_argument("--ema_inv_gamma", type=float, default=1.0)
    train.add_argument("--ema_power", type=float, default=0.75)
    train.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    train.add_argument("--seed", type=int, default=0)
    return train


def sorted_checkpoints(output_dir: Path) -> list[Path]:
    """The run's ``checkpoint-<step>`` folders, oldest first."""
    return sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: Path) -> Path | None:
    """The folder `--resume_from_checkpoint` names: a path, or ``"latest"`` (None when the run has none yet)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise ValueError(f"--resume_from_checkpoint {path} is not a checkpoint folder.")
        return path
    checkpoints = sorted_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def check_resume_options(args, output_dir: Path, recipe_options: tuple[str, ...]):
    """A resumed run must use the recipe its checkpoint was trained with (as saved in training_config.json)."""
    saved = json.loads((Path(output_dir) / "training_config.json").read_text())
    differing = {k: (saved.get(k), getattr(args, k)) for k in recipe_options if saved.get(k) != getattr(args, k)}
    if differing:
        raise ValueError("These options differ from the checkpoint's run (checkpoint, now): "
                         + ", ".join(f"--{k} {v[0]!r} vs {v[1]!r}" for k, v in differing.items()))


def save_checkpoint(accelerator, output_dir: Path, global_step: int, checkpoints_total_limit: int | None):
    """Accelerate state (model, EMA, optimiser, LR schedule, RNG) in checkpoint-<step>, oldest pruned first."""
    if accelerator.is_main_process and checkpoints_total_limit is not None:
        checkpoints = sorted_checkpoints(output_dir)
        for old in checkpoints[: max(0, len(checkpoints) - checkpoints_total_limit + 1)]:
            shutil.rmtree(old)
    accelerator.save_state(str(Path(output_dir) / f"checkpoint-{global_step}"))


def micro_batch_generator(accelerator, seed: int, micro_step: int) -> torch.Generator:
    """The generator of one micro-batch on this process. Its seed depends on the run's seed, the micro-step and the
    process alone, so every draw of the micro-batch (sigmas, noise, label dropout, simulated channels) is the same
    in a resumed run as in an uninterrupted one."""
    return torch.Generator(accelerator.device).manual_seed(
        seed * 1_000_003 + micro_step * accelerator.num_processes + accelerator.process_index)


class EpochPermutationSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, num_items: int, seed: int):
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + self.epoch))
                    .tolist())

    def __len__(self):
        return self.num_items


def push_or_exit(output_dir: Path, repo_id: str, pipeline_class: type, token: str | None):
    """Upload the pipeline, model card and grid (never checkpoints, logs or the token); keep the folder on failure
    and exit 1 with the command that retries the upload."""
    try:
        commit = upload_pipeline_folder(output_dir, repo_id, pipeline_class, token=token,
                                        commit_message=f"Upload {pipeline_class.__name__}")
    except Exception as error:  # the local result stays usable whatever went wrong upstream
        logger.error(f"Upload to {repo_id} failed ({type(error).__name__}: {error}). The trained pipeline is intact "
                     f"in {output_dir}; retry with: python -m diffusers_binflow push {output_dir} {repo_id}")
        raise SystemExit(1) from error
    print(f"Pushed to {commit.commit_url}")


@dataclass
class RunStart:
    accelerator: Accelerator
    checkpoint: Path | None  # the checkpoint to resume from, if any
    repo_id: str | None  # the Hub repo to publish to (main process, --push_to_hub)
    tensorboard: bool  # whether the accelerator logs to TensorBoard


def start_run(args, output_dir: Path, resume_options: tuple[str, ...]) -> RunStart:
    """Everything a training script does before its model meets the accelerator, refusing bad resumptions first:
    resolve `--resume_from_checkpoint` (a fresh run over an earlier run's checkpoints is refused), create the
    `Accelerator` (CPU processes when no accelerator is present, e.g. ``accelerate launch --multi_gpu`` on CPUs with
    gloo; TensorBoard when `--report_to` asks for it or it is installed), write training_config.json for a fresh
    run (never the token) and create the Hub repo when pushing."""
    output_dir = Path(output_dir)
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        check_resume_options(args, output_dir, resume_options)
    elif any(output_dir.glob("checkpoint-*")):
        raise ValueError(f"{output_dir} holds checkpoints of an earlier run: pass --resume_from_checkpoint latest, "
                         "or choose another --output_dir (nothing was changed).")
    report_to = getattr(args, "report_to", "jsonl")
    tensorboard = report_to == "tensorboard" or (report_to == "auto" and is_tensorboard_available())
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with="tensorboard" if tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    repo_id = None
    if accelerator.is_main_process:
        (output_dir / "logs").mkdir(parents=True, exist_ok=True)
        if checkpoint is None:
            config = {k: v for k, v in vars(args).items() if k != "hub_token"}
            (output_dir / "training_config.json").write_text(json.dumps(config, indent=2))
        if args.push_to_hub:
            repo_id = create_repo(args.hub_model_id or output_dir.name, private=args.hub_private_repo,
                                  token=args.hub_token, exist_ok=True).repo_id
    return RunStart(accelerator, checkpoint, repo_id, tensorboard)


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
