"""What the three training scripts share around their flat loops: the options a diffusers example user types and
their validation, the run's start (Accelerator, trackers, refusal of bad resumptions, nothing written before every
check has passed), the LR schedule, the data order by epoch, the divergence guard, the EMA weights of a pipeline,
publishing and the run's end."""

import argparse
import atexit
import gc
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (
    ProjectConfiguration,
    is_comet_ml_available,
    is_tensorboard_available,
    is_wandb_available,
)
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.utils import is_xformers_available
from huggingface_hub import create_repo

from .checkpoints import (
    check_checkpoint_matches,
    find_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .flow import LOGIT_PREDICTION_TYPES, MAX_LIKELIHOOD_LOGIT
from .hub import upload_pipeline_folder
from .schedulers import BinaryFlowMatchScheduler
from .schedulers.scheduling_binary_flow_match import SOLVERS
from .model_cards import portable_value

logger = logging.getLogger(__name__)

# --report_to: "auto" is TensorBoard when installed; "jsonl" only the run's own log file (always written).
TRACKERS = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "comet_ml": is_comet_ml_available}
REPORT_TO = ("auto", "jsonl", *TRACKERS, "all")


def add_optimisation_arguments(parser, epochs: bool = True, **defaults):
    """The optimiser, LR schedule, EMA, precision and memory options, as diffusers' training examples name them.
    `defaults` overrides a script's defaults (e.g. ``train_batch_size=128``); without `epochs` the data is a stream
    and only --max_train_steps counts."""
    d = {**dict(train_batch_size=64, num_epochs=10, max_train_steps=None, learning_rate=1e-3, lr_scheduler="cosine",
                lr_warmup_steps=100, adam_beta1=0.9, adam_beta2=0.99, adam_weight_decay=0.0, adam_epsilon=1e-8,
                max_grad_norm=1.0, ema_max_decay=0.999, ema_inv_gamma=1.0, ema_power=0.75), **defaults}
    train = parser.add_argument_group("optimisation")
    train.add_argument("--train_batch_size", type=int, default=d["train_batch_size"], help="Per process.")
    if epochs:
        train.add_argument("--num_epochs", type=int, default=d["num_epochs"])
    train.add_argument("--max_train_steps", type=int, default=d["max_train_steps"],
                       help="Optimiser steps" + (" (overrides --num_epochs)." if epochs else "."))
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--gradient_checkpointing", action="store_true",
                       help="Recompute activations in the backward pass: less memory, slower steps.")
    train.add_argument("--learning_rate", type=float, default=d["learning_rate"])
    train.add_argument("--lr_scheduler", default=d["lr_scheduler"], choices=[s.value for s in SchedulerType])
    train.add_argument("--lr_warmup_steps", type=int, default=d["lr_warmup_steps"], help="In optimiser steps.")
    train.add_argument("--lr_num_cycles", type=int, default=1, help="Hard restarts of cosine_with_restarts.")
    train.add_argument("--lr_power", type=float, default=1.0, help="Power of the polynomial schedule.")
    train.add_argument("--lr_step_rules", default=None,
                       help='piecewise_constant: "multiplier:step,...,last_multiplier", steps in optimiser steps.')
    train.add_argument("--adam_beta1", type=float, default=d["adam_beta1"])
    train.add_argument("--adam_beta2", type=float, default=d["adam_beta2"])
    train.add_argument("--adam_weight_decay", type=float, default=d["adam_weight_decay"])
    train.add_argument("--adam_epsilon", type=float, default=d["adam_epsilon"])
    train.add_argument("--max_grad_norm", type=float, default=d["max_grad_norm"])
    train.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    train.add_argument("--ema_max_decay", type=float, default=d["ema_max_decay"])
    train.add_argument("--ema_inv_gamma", type=float, default=d["ema_inv_gamma"])
    train.add_argument("--ema_power", type=float, default=d["ema_power"])
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
                       help="Default: what `accelerate launch --mixed_precision` or the accelerate config says.")
    train.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere and newer GPUs.")
    train.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")
    train.add_argument("--seed", type=int, default=0)
    return train


def add_run_arguments(parser, logging_steps: int, checkpointing_steps: int = 500):
    """Output, logging, checkpoint and publishing options."""
    run = parser.add_argument_group("output, logging, checkpoints")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--logging_dir", default="logs",
                     help="Where train_log.jsonl and the trackers write, relative to --output_dir.")
    run.add_argument("--report_to", default="auto", choices=REPORT_TO,
                     help="Trackers besides train_log.jsonl: auto (TensorBoard when installed), jsonl (none), "
                          "tensorboard, wandb, comet_ml or all installed ones.")
    run.add_argument("--logging_steps", type=int, default=logging_steps)
    run.add_argument("--checkpointing_steps", type=int, default=checkpointing_steps)
    run.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep this many newest checkpoints.")
    run.add_argument("--resume_from_checkpoint", default=None,
                     help='"latest" (the newest complete checkpoint of --output_dir, if any) or a checkpoint folder.')
    run.add_argument("--cache_dir", default=None, help="Where downloaded datasets and models are cached.")
    hub = parser.add_argument_group("publishing")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id", default=None, help="Defaults to the output folder's name.")
    hub.add_argument("--hub_token", default=None, help="Never written anywhere; default: your saved login.")
    hub.add_argument("--hub_private_repo", action="store_true")


def check_arguments(parser, args, at_least_one=()):
    """Refuse (parser.error: exit 2, nothing written) every shared option value that would fail later or silently
    train something else: counts below 1, non-finite or out-of-range rates and recipe values, trackers or
    xformers that are not installed. `at_least_one` names the script's own counts."""
    counts = ["train_batch_size", "gradient_accumulation_steps", "logging_steps", "checkpointing_steps",
              "lr_num_cycles", *at_least_one]
    counts += [name for name in ("num_epochs", "max_train_steps", "checkpoints_total_limit")
               if getattr(args, name, None) is not None]
    for name in counts:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.lr_warmup_steps < 0:
        parser.error(f"--lr_warmup_steps must be at least 0, got {args.lr_warmup_steps}.")
    ranges = {  # option: (low, high, low included, high included)
        "learning_rate": (0, math.inf, False, False), "max_grad_norm": (0, math.inf, False, False),
        "adam_beta1": (0, 1, True, False), "adam_beta2": (0, 1, True, False),
        "adam_weight_decay": (0, math.inf, True, False), "adam_epsilon": (0, math.inf, False, False),
        "ema_max_decay": (0, 1, True, True), "ema_inv_gamma": (0, math.inf, False, False),
        "ema_power": (0, math.inf, False, False), "lr_power": (0, math.inf, False, False),
        "bit_scale": (0, math.inf, False, False), "logit_mean": (-math.inf, math.inf, False, False),
        "logit_std": (0, math.inf, False, False), "v_clamp": (0, 1, False, True),
        "weighting_max": (0, math.inf, False, False), "uniform_fraction": (0, 1, True, True),
        "self_conditioning_probability": (0, 1, True, True),
        "likelihood_cap": (0, MAX_LIKELIHOOD_LOGIT, False, True),
        "sampling_likelihood_cap": (0, MAX_LIKELIHOOD_LOGIT, False, True),
        "sampling_final_likelihood_cap": (0, MAX_LIKELIHOOD_LOGIT, False, True), "s_churn": (0, math.inf, True, False),
        "sampling_shift": (0, math.inf, False, False),
    }
    for name, (low, high, low_ok, high_ok) in ranges.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        inside = (low < value or (low_ok and value == low)) and (value < high or (high_ok and value == high))
        if not inside:  # also catches nan, which compares false
            parser.error(f"--{name} must be in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}, "
                         f"got {value}.")
    if getattr(args, "s_churn", 0) > 0 and args.solver != "euler":
        parser.error(f"--s_churn {args.s_churn:g} (the stochastic corrector; this script's default is "
                     f"{parser.get_default('s_churn'):g}) works with --solver euler only (this script's default is "
                     f"{parser.get_default('solver')}): pass --s_churn 0 with --solver {args.solver}, or --solver "
                     "euler with --s_churn.")
    if getattr(args, "s_churn", 0) > 0 and getattr(args, "heun_first_step", False):
        parser.error(f"--s_churn {args.s_churn:g} (the stochastic corrector) and --heun_first_step do not go "
                     "together: pass --no-heun_first_step with --s_churn.")
    if args.loss_type == "bce" and args.prediction_type not in LOGIT_PREDICTION_TYPES:
        parser.error("--loss_type bce is cross-entropy on per-bit logits: it needs --prediction_type logits or "
                     "likelihood_residual.")
    if (args.lr_scheduler == "piecewise_constant") != (args.lr_step_rules is not None):
        parser.error("--lr_step_rules goes with --lr_scheduler piecewise_constant, and only with it.")
    if args.lr_step_rules is not None:
        try:
            parse_step_rules(args.lr_step_rules)
        except ValueError:
            parser.error(f'--lr_step_rules must read "multiplier:step,...,last_multiplier", got {args.lr_step_rules!r}.')
    missing = [name for name, available in TRACKERS.items() if args.report_to == name and not bool(available())]
    if missing:
        parser.error(f"--report_to {missing[0]} needs the {missing[0]} package: pip install {missing[0]}.")
    if args.report_to in ("wandb", "all") and args.hub_token is not None:
        parser.error("--report_to wandb would log --hub_token with the run's options: log in with `hf auth login` "
                     "(or set HF_TOKEN) instead of passing --hub_token.")
    if args.enable_xformers_memory_efficient_attention and not is_xformers_available():
        parser.error("--enable_xformers_memory_efficient_attention needs the xformers package: pip install xformers.")
    if args.allow_tf32 and not torch.cuda.is_available():
        logger.warning("--allow_tf32 has no effect without a CUDA device.")


def run_options(args, names) -> dict:
    """The option values a resumed run must share with the run that wrote its checkpoint."""
    return {name: getattr(args, name, None) for name in names}


@dataclass
class Run:
    """A started run: its accelerator, where it writes, what it resumes, and its checkpoint bookkeeping."""

    accelerator: Accelerator
    output_dir: Path
    logging_dir: Path
    script: str
    options: dict  # run_options: recorded in every checkpoint
    checkpoints_total_limit: int | None
    checkpoint: Path | None  # the checkpoint to resume from, if any
    global_step: int  # the optimiser steps already taken (the checkpoint's)
    repo_id: str | None  # the Hub repo to publish to (main process, --push_to_hub)
    saved_step: int | None = None  # the step of the newest checkpoint this run holds

    def load_checkpoint(self) -> int:
        """Load the state of the checkpoint to resume from, if any (after `accelerator.prepare`); returns the
        optimiser steps already taken."""
        if self.checkpoint is not None:
            self.accelerator.print(f"Resuming from {self.checkpoint}")
            self.accelerator.load_state(str(self.checkpoint))
        return self.global_step

    def save_checkpoint(self, model, global_step: int):
        if global_step == self.saved_step:
            return  # e.g. the final save of a resumed run that had nothing left to train
        save_checkpoint(self.accelerator, model, self.output_dir, global_step, self.checkpoints_total_limit,
                        self.script, self.options)
        self.saved_step = global_step

    def stop_if_diverged(self, grad_norm, loss: torch.Tensor, global_step: int):
        """Stop the run (every process, exit 1) at the first optimiser step whose gradients or loss are not finite,
        before the optimiser applies them: nothing non-finite is saved or published. Gradients are all-reduced,
        so their norm is the same on every process; with fp16 loss scaling an overflow is a skipped step, and the
        loss (reduced over processes) decides."""
        if self.accelerator.scaler is not None:
            value = self.accelerator.reduce(loss.detach().float(), "sum").item()
        else:
            value = float(grad_norm)
        if math.isfinite(value):
            return
        complete, _ = find_checkpoints(self.output_dir)
        last_good = str(complete[-1]) if complete else "none yet"
        raise SystemExit(
            f"Training diverged at optimiser step {global_step + 1}: the "
            f"{'loss' if self.accelerator.scaler is not None else 'gradient norm'} is {value}. The step was not "
            f"applied and nothing was saved from it. Last good checkpoint: {last_good}. Start again with a lower "
            "--learning_rate (or --max_grad_norm) in another --output_dir; a resumed run keeps its options.")

    def log(self, record: dict, tracked: tuple[str, ...] = ("loss",)):
        """Append `record` to logs/train_log.jsonl and send its `tracked` values to the trackers (main process)."""
        if self.accelerator.is_main_process:
            with (self.logging_dir / "train_log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            values = {k: record[k] for k in tracked if record.get(k) is not None}
            self.accelerator.log(values, step=record["step"])


def start_run(args, script: str, resume_options: tuple[str, ...], tracker_name: str) -> Run:
    """Everything a training script does before its loop, refusing bad runs before anything is written: resolve
    `--resume_from_checkpoint` (a fresh run over an earlier run's complete checkpoints is refused; a checkpoint of
    another run, script or process count is refused), create the `Accelerator` (CPU processes when no accelerator
    is present; `--mixed_precision` defaults to the launcher's), then write training_config.json for a fresh run
    (no token, no local paths), start the trackers and create the Hub repo when pushing."""
    output_dir = Path(args.output_dir)
    logging_dir = output_dir / args.logging_dir
    tracker = {"auto": "tensorboard" if bool(is_tensorboard_available()) else None, "jsonl": None}.get(args.report_to,
                                                                                                 args.report_to)
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=tracker, project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                              logging_dir=str(logging_dir)),
    )
    if torch.distributed.is_initialized():
        atexit.register(destroy_process_group_at_exit)  # for the exits on an error, which skip end_training
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    options = run_options(args, resume_options)
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    global_step = 0
    if checkpoint is not None:
        global_step = check_checkpoint_matches(checkpoint, script, options, accelerator.num_processes)["step"]
    else:
        complete, _ = find_checkpoints(output_dir)
        if complete:
            raise SystemExit(f"{output_dir} holds checkpoints of an earlier run ({complete[-1].name} is the newest): "
                             "pass --resume_from_checkpoint latest, or choose another --output_dir (nothing was "
                             "changed).")
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    repo_id = None
    if accelerator.is_main_process:
        if args.push_to_hub:
            repo_id = create_repo(args.hub_model_id or output_dir.name, private=args.hub_private_repo,
                                  token=args.hub_token, exist_ok=True).repo_id
        logging_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:
            config = {k: portable_value(v) for k, v in vars(args).items() if k != "hub_token"}
            (output_dir / "training_config.json").write_text(json.dumps(config, indent=2))
        if tracker is not None:
            accelerator.init_trackers(tracker_name, config=config_for_trackers(args))
    accelerator.wait_for_everyone()
    return Run(accelerator, output_dir, logging_dir, script, options, args.checkpoints_total_limit, checkpoint,
               global_step, repo_id, saved_step=global_step if checkpoint is not None else None)


def config_for_trackers(args) -> dict:
    """The options as trackers accept them (scalars only, no token, no local paths)."""
    return {k: portable_value(v) for k, v in vars(args).items()
            if k != "hub_token" and isinstance(v, (int, float, str, bool))}


def prepare_model(model, args):
    """Apply the memory options to a model before training."""
    if args.gradient_checkpointing:
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise SystemExit(f"--gradient_checkpointing: {type(model).__name__} does not support it.")
        model.enable_gradient_checkpointing()
    if args.enable_xformers_memory_efficient_attention:
        model.enable_xformers_memory_efficient_attention()


def build_optimizer(model, args) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)


def prepare_epochs(accelerator, model, loader, args):
    """Prepare an epoch-based run: the loader first (its length becomes this process's share of the batches), then
    the optimiser and an LR schedule over the run's optimiser steps. Returns (model, optimizer, loader,
    lr_scheduler, steps_per_epoch, max_train_steps)."""
    loader = accelerator.prepare(loader)
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    optimizer = build_optimizer(model, args)
    lr_scheduler = build_lr_scheduler(args, optimizer, accelerator.num_processes, max_train_steps)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    return model, optimizer, loader, lr_scheduler, steps_per_epoch, max_train_steps


def build_lr_scheduler(args, optimizer, num_processes: int, max_train_steps: int):
    """diffusers' `get_scheduler` over `max_train_steps` optimiser steps. Once prepared, Accelerate advances it once
    per process at every optimiser step, so every step count is given times the number of processes (as diffusers'
    examples do): the curve per optimiser step is then the same for any number of processes."""
    step_rules = None
    if args.lr_step_rules is not None:
        rules, last = parse_step_rules(args.lr_step_rules)
        step_rules = ",".join([f"{value}:{step * num_processes}" for value, step in rules] + [str(last)])
    return get_scheduler(args.lr_scheduler, optimizer=optimizer, step_rules=step_rules,
                         num_warmup_steps=args.lr_warmup_steps * num_processes,
                         num_training_steps=max_train_steps * num_processes, num_cycles=args.lr_num_cycles,
                         power=args.lr_power)


def parse_step_rules(text: str) -> tuple[list[tuple[float, int]], float]:
    """diffusers' piecewise_constant rules "multiplier:step,...,last_multiplier" as ([(multiplier, step)], last)."""
    *rules, last = text.split(",")
    pairs = [(float(value), int(step)) for value, step in (rule.split(":") for rule in rules)]
    return pairs, float(last)


def micro_batch_generator(accelerator, seed: int, micro_step: int) -> torch.Generator:
    """The generator of one micro-batch on this process. Its seed depends on the run's seed, the micro-step and the
    process alone, so every draw of the micro-batch (sigmas, noise, label dropout, simulated channels) is the same
    in a resumed run as in an uninterrupted one."""
    return torch.Generator(accelerator.device).manual_seed(
        seed * 1_000_003 + micro_step * accelerator.num_processes + accelerator.process_index)


def shared_generator(accelerator, seed: int, micro_step: int) -> torch.Generator:
    """The generator of one micro-batch that is the same on every process, for draws all processes must agree on:
    the self-conditioning coin decides whether the model makes a first pass, and each pass through a data-parallel
    wrapper is a collective that every process must join. Offset by 2**62, its seeds never meet
    `micro_batch_generator`'s."""
    return torch.Generator(accelerator.device).manual_seed(2**62 + seed * 1_000_003 + micro_step)


class EpochPermutationSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation that depends only on (seed, epoch), the epoch set by the training loop through
    `begin_epoch`. It deliberately has no `set_epoch`: Accelerate's data loaders call that with their own count
    of passes, which `skip_first_batches` resets to 0, so a resumed run would repeat epoch 0's order."""

    def __init__(self, num_items: int, seed: int):
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def begin_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + self.epoch))
                    .tolist())

    def __len__(self):
        return self.num_items


class EpochDataset(torch.utils.data.Dataset):
    """A dataset whose per-epoch randomness (its `set_epoch`, e.g. stochastic binarization) follows `begin_epoch`
    alone, hidden from Accelerate for the reason `EpochPermutationSampler` gives."""

    def __init__(self, dataset):
        self.dataset = dataset

    def begin_epoch(self, epoch: int):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


class EpochOrder:
    """The training data in batches whose order and content depend only on (seed, epoch): the same in a resumed run
    as in an uninterrupted one, for any number of epoch boundaries and processes."""

    def __init__(self, dataset, seed: int):
        self.sampler, self.dataset = EpochPermutationSampler(len(dataset), seed), EpochDataset(dataset)

    def data_loader(self, batch_size: int, num_workers: int = 0) -> torch.utils.data.DataLoader:
        # The loader's own generator: its per-pass worker seed must not consume the global RNG that a checkpoint
        # restores (a resumed run would be one draw ahead).
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler,
                                             num_workers=num_workers, drop_last=True,
                                             generator=torch.Generator().manual_seed(self.sampler.seed))
        if len(loader) == 0:
            raise SystemExit(f"{len(self.dataset)} training items do not fill one batch of {batch_size}.")
        return loader

    def begin_epoch(self, epoch: int):
        self.sampler.begin_epoch(epoch)
        self.dataset.begin_epoch(epoch)


def add_sampler_arguments(group, num_inference_steps: int, sampling_final_likelihood_cap: float | None = None,
                          s_churn: float = 0.0, sampling_shift: float = 1.0, solver: str = "euler"):
    """Declare the sampler a script validates with and saves in its pipeline's scheduler: ``--num_inference_steps``,
    ``--solver`` (default `solver`), ``--heun_first_step`` (off by default), ``--s_churn`` (the stochastic corrector,
    default `s_churn`), ``--sampling_shift`` (the time grid's shift, default `sampling_shift`),
    ``--sampling_likelihood_cap`` (default None: the recipe's ``--likelihood_cap``) and
    ``--sampling_final_likelihood_cap`` (`sampling_final_likelihood_cap`; None: the sampling cap at the last step
    too)."""
    group.add_argument("--num_inference_steps", type=int, default=num_inference_steps)
    group.add_argument("--solver", default=solver, choices=SOLVERS,
                       help="The saved scheduler's ODE solver (BinaryFlowMatchScheduler's solver): euler, heun "
                            "(two model calls per step) or multistep (second order at one call per step); default "
                            f"{solver}.")
    group.add_argument("--heun_first_step", action=argparse.BooleanOptionalAction, default=False,
                       help="The saved scheduler takes its first step, out of pure noise, with Heun's method "
                            "(BinaryFlowMatchScheduler's heun_first_step: one model call more); default off.")
    group.add_argument("--s_churn", type=float, default=s_churn,
                       help=f"The saved scheduler's stochastic corrector (BinaryFlowMatchScheduler's s_churn; Euler "
                            f"only; 0: the deterministic ODE sampler); default {s_churn:g}.")
    group.add_argument("--sampling_shift", type=float, default=sampling_shift,
                       help="The saved scheduler's time-grid shift (BinaryFlowMatchScheduler's shift: below 1 moves "
                            f"the steps towards the data end, above 1 towards noise, 1 keeps them uniform in sigma); "
                            f"default {sampling_shift:g}.")
    group.add_argument("--sampling_likelihood_cap", type=float, default=None,
                       help="For a likelihood_residual model: the cap (nats) the saved scheduler puts on the "
                            "likelihood term when sampling (BinaryFlowMatchScheduler's likelihood_cap); default: "
                            "--likelihood_cap. A small cap lets the network veto bits the sampler got wrong; 50 keeps "
                            "the data end exact.")
    group.add_argument("--sampling_final_likelihood_cap", type=float, default=sampling_final_likelihood_cap,
                       help="For a likelihood_residual model: the cap at the last sampling step only, the one the "
                            "bits are read from (BinaryFlowMatchScheduler's final_likelihood_cap); default: "
                            + ("the sampling cap" if sampling_final_likelihood_cap is None else
                               f"{sampling_final_likelihood_cap:g}")
                            + ".")


def noise_scheduler_from_args(args) -> BinaryFlowMatchScheduler:
    """The scheduler a script validates with and saves: its recipe's prediction type and bit scale, the solver (and
    its first step), the corrector, the grid's shift, and the sampling caps on a likelihood-residual output
    (`add_sampler_arguments`)."""
    cap = args.likelihood_cap if args.sampling_likelihood_cap is None else args.sampling_likelihood_cap
    return BinaryFlowMatchScheduler(prediction_type=args.prediction_type, bit_scale=args.bit_scale, solver=args.solver,
                                    heun_first_step=args.heun_first_step, likelihood_cap=cap,
                                    final_likelihood_cap=args.sampling_final_likelihood_cap, s_churn=args.s_churn,
                                    shift=args.sampling_shift)


def build_pipeline(pipeline_cls, accelerator, model, ema, model_name: str, **components):
    """A `pipeline_cls` holding a copy of the trained model with its EMA weights (its own without EMA), for
    validation and saving; the model in training is untouched."""
    trained = accelerator.unwrap_model(model)
    weights = type(trained).from_config(trained.config).to(accelerator.device)
    weights.load_state_dict(trained.state_dict())
    if ema is not None:
        ema.copy_to(weights.parameters())
    pipeline = pipeline_cls(**{model_name: weights.eval()}, **components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def push_or_exit(run: Run, pipeline_class: type, token: str | None):
    """Upload the pipeline, model card and grid (never checkpoints, logs or the token); keep the folder on failure
    and exit 1 with the command that retries the upload."""
    ignore = []
    if run.logging_dir.resolve().is_relative_to(run.output_dir.resolve()):
        ignore.append(f"{run.logging_dir.resolve().relative_to(run.output_dir.resolve()).as_posix()}/*")
    try:
        commit = upload_pipeline_folder(run.output_dir, run.repo_id, pipeline_class, token=token,
                                        commit_message=f"Upload {pipeline_class.__name__}", ignore_patterns=ignore)
    except Exception as error:  # the local result stays usable whatever went wrong upstream
        logger.error(f"Upload to {run.repo_id} failed ({type(error).__name__}: {error}). The trained pipeline is "
                     f"intact in {run.output_dir}; retry with: python -m diffusers_binflow push {run.output_dir} "
                     f"{run.repo_id} --token <your token> (or log in once with `hf auth login`, or set HF_TOKEN, "
                     "and leave out --token).")
        raise SystemExit(1) from error
    print(f"Pushed to {commit.commit_url}")


def end_training(accelerator: Accelerator):
    """`accelerator.end_training()` (trackers, then the process group) after the prepared models are released. The
    caller drops its own references to them first (``model = None``).

    Why the order: the C++ reducer of a DDP-wrapped model holds the process group and is freed holding the GIL. When
    it drops the group's last reference, gloo's destructor joins worker threads that may be waiting for the GIL to
    free a finished collective's tensors: the process hangs after saving everything, or aborts at interpreter exit
    ("terminate called without an active exception"). Freed while the group is still registered, the reducer
    leaves the last reference to `destroy_process_group`, which drops it without the GIL. A run that ends on an
    error skips this: `destroy_process_group_at_exit` is its end."""
    accelerator.free_memory()
    gc.collect()  # a wrapper caught in a reference cycle goes now, not at exit
    accelerator.end_training()


def destroy_process_group_at_exit():
    """The end of a run that stopped on an error (divergence, a failed upload, an exception), registered with
    `atexit` by `start_run`: by then the failed frames and their DDP models are freed, the group still registered,
    so destroying it now is `end_training`'s safe order, while the interpreter is whole (during its teardown,
    gloo's threads that wait for the GIL abort the process). The traceback that Python keeps of an uncaught
    exception for post-mortem debugging (`sys.last_*`) would keep those frames alive; the process is exiting, so
    it is dropped first."""
    for name in ("last_exc", "last_type", "last_value", "last_traceback"):
        if hasattr(sys, name):
            delattr(sys, name)
    gc.collect()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
