"""Train a binary flow-matching model (arXiv 2602.10420) on binary images with Accelerate.

    python train_scripts/train_binary_flow.py --output_dir digits-model                      # bundled digits
    accelerate launch --multi_gpu --num_processes 2 train_scripts/train_binary_flow.py --output_dir out  # 2 processes

The recipe defaults are the library's (`FlowLossConfig`, chosen by measurement): x-prediction, x-space MSE,
logit(sigma) ~ N(0.8, 0.8) (sigma = 1 is noise; the paper's t = 1 - sigma). `--timestep_sampling uniform` gives
the paper's plain recipe. The result is a `BinaryFlowPipeline` saved in --output_dir.
"""

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from tqdm.auto import tqdm

from diffusers_binflow import BinaryFlowMatchScheduler, BinaryFlowPipeline
from diffusers_binflow.data import (
    Binarizer,
    BinaryImageDataset,
    from_bundled_digits,
    from_hf_dataset,
    from_image_folder,
)
from diffusers_binflow.diagnostics import output_gradient_norms, per_sigma_bin_stats
from diffusers_binflow.metrics import MIN_FD_SAMPLES, DigitMetrics
from diffusers_binflow.model_card import render_model_card
from diffusers_binflow.models import build_unet
from diffusers_binflow.training import (
    RECIPE_OPTIONS,
    FlowLossConfig,
    add_recipe_arguments,
    flow_matching_loss,
)
from diffusers_binflow.training_runs import (
    EpochPermutationSampler,
    add_optimisation_arguments,
    micro_batch_generator,
    push_or_exit,
    register_checkpoint_hooks,
    save_checkpoint,
    start_run,
)

logger = logging.getLogger(__name__)
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_card_template.md"
# Options a resumed run must share with the run that wrote the checkpoint.
RESUME_OPTIONS = ("model_config", "resolution", *RECIPE_OPTIONS, "class_conditional", "seed",
                  "train_batch_size", "gradient_accumulation_steps", "learning_rate", "dataset_name",
                  "train_data_dir", "binarize_threshold", "stochastic_binarization")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data (default: the bundled MNIST digits)")
    data.add_argument("--train_data_dir", help="A folder of images (class subfolders give labels).")
    data.add_argument("--dataset_name", help="A `datasets` dataset: Hub id or local path.")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default=None)
    data.add_argument("--resolution", type=int, default=None, help="Resize images to this square size.")
    data.add_argument("--binarize_threshold", type=int, default=128, help="Grey level (1-255) from which a pixel is 1.")
    data.add_argument("--stochastic_binarization", action="store_true", help="Draw each bit with P = grey / 255.")
    data.add_argument("--class_conditional", action="store_true", help="Condition on labels (with label dropout).")
    data.add_argument("--label_dropout", type=float, default=0.1, help="Share of labels replaced by the null class.")
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    model = parser.add_argument_group("model and recipe")
    model.add_argument("--model_config", default="tiny", help="tiny | small | base | path to a UNet2DModel JSON.")
    model.add_argument("--pretrained_model_name_or_path", help="Fine-tune a saved BinaryFlowPipeline (folder or Hub id).")
    add_recipe_arguments(model)

    add_optimisation_arguments(parser, train_batch_size=64)

    evaluate = parser.add_argument_group("validation, logging, checkpoints")
    evaluate.add_argument("--output_dir", required=True)
    evaluate.add_argument("--validation_steps", type=int, default=250)
    evaluate.add_argument("--num_inference_steps", type=int, default=16)
    evaluate.add_argument("--solver", default="euler", choices=["euler", "heun"])
    evaluate.add_argument("--guidance_scale", type=float, default=2.0, help="For class-conditional validation.")
    evaluate.add_argument("--metrics_num_samples", type=int, default=0,
                          help="At the end, score this many samples (>= 200) with the digit metrics (1x28x28 data).")
    evaluate.add_argument("--logging_steps", type=int, default=20)
    evaluate.add_argument("--checkpointing_steps", type=int, default=500)
    evaluate.add_argument("--checkpoints_total_limit", type=int, default=None)
    evaluate.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder.')
    evaluate.add_argument("--report_to", default="auto", choices=["auto", "jsonl", "tensorboard"],
                          help="logs/train_log.jsonl is always written; auto adds TensorBoard when it is installed.")

    hub = parser.add_argument_group("publishing")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id", default=None, help="Defaults to the output folder's name.")
    hub.add_argument("--hub_token", default=None, help="Never written anywhere; default: your saved login.")
    hub.add_argument("--hub_private_repo", action="store_true")
    args = parser.parse_args(argv)

    if args.train_data_dir and args.dataset_name:
        parser.error("Give either --train_data_dir or --dataset_name, not both.")
    if args.loss_type == "bce" and args.prediction_type != "logits":
        parser.error("--loss_type bce is cross-entropy on per-bit logits: it needs --prediction_type logits.")
    if args.metrics_num_samples and args.metrics_num_samples < MIN_FD_SAMPLES:
        parser.error(f"--metrics_num_samples must be 0 (off) or at least {MIN_FD_SAMPLES}.")
    for name in ("train_batch_size", "gradient_accumulation_steps", "num_epochs", "validation_steps",
                 "checkpointing_steps", "logging_steps", "num_inference_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1.")
    return args


def load_training_data(args) -> BinaryImageDataset:
    """The dataset named by the options; all of its errors come before anything is written."""
    binarize = Binarizer("stochastic" if args.stochastic_binarization else "threshold", args.binarize_threshold)
    options = dict(resolution=args.resolution, binarize=binarize, seed=args.seed)
    if args.train_data_dir:
        return from_image_folder(args.train_data_dir, **options)
    if args.dataset_name:
        return from_hf_dataset(args.dataset_name, image_column=args.image_column, label_column=args.label_column,
                               **options)
    return from_bundled_digits("train", **options)


def main(args):
    output_dir = Path(args.output_dir)
    set_seed(args.seed)  # before the model is built: its initial weights are part of the run
    dataset = load_training_data(args)
    channels, height, width = dataset.image_shape
    if height != width:
        raise ValueError(f"Images are {height}x{width}; pass --resolution to make them square.")
    if args.class_conditional and dataset.num_classes is None:
        raise ValueError("--class_conditional needs labels: class subfolders, --label_column, or the bundled digits.")
    num_classes = dataset.num_classes if args.class_conditional else None
    null_class = num_classes  # the extra class id used for label dropout and guidance

    if args.pretrained_model_name_or_path:
        base = BinaryFlowPipeline.from_pretrained(args.pretrained_model_name_or_path)
        unet, base_null = base.unet, base.config.null_class_label
        if (unet.config.in_channels, unet.config.sample_size) != (channels, height):
            raise ValueError(f"The pretrained model works on {unet.config.in_channels} channel(s) at "
                             f"{unet.config.sample_size}px, the data is {channels} channel(s) at {height}px: "
                             "pass a matching --resolution.")
        if (base_null is None) != (num_classes is None):
            raise ValueError("The pretrained model is " + ("unconditional: drop --class_conditional." if base_null
                             is None else "class-conditional: pass --class_conditional with labelled data."))
        if num_classes is not None and num_classes > base_null:
            raise ValueError(f"The pretrained model knows {base_null} classes, the data has {num_classes}.")
        null_class = base_null  # new classes reuse the first embedding slots; the null class stays
    else:
        unet = build_unet(args.model_config, height, channels, None if num_classes is None else num_classes + 1)

    run = start_run(args, output_dir, RESUME_OPTIONS)
    accelerator, checkpoint, repo_id = run.accelerator, run.checkpoint, run.repo_id

    ema = EMAModel(unet.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                   power=args.ema_power, model_cls=UNet2DModel, model_config=unet.config) if args.use_ema else None

    register_checkpoint_hooks(accelerator, ema, UNet2DModel, "unet")

    sampler = EpochPermutationSampler(len(dataset), args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, sampler=sampler,
                                         num_workers=args.dataloader_num_workers, drop_last=True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay)
    updates_per_epoch = math.ceil(len(loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=max_train_steps)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    if accelerator.is_main_process and run.tensorboard:
        accelerator.init_trackers("binary_flow")

    loss_config = FlowLossConfig.from_args(args)
    noise_scheduler = BinaryFlowMatchScheduler(prediction_type=args.prediction_type, bit_scale=args.bit_scale,
                                               solver=args.solver)

    global_step, first_epoch, skip_batches, last_loss = 0, 0, 0, None
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        global_step = int(checkpoint.name.split("-")[1])
        first_epoch = global_step // updates_per_epoch
        skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    logger.info(f"{len(dataset)} images of {channels}x{height}x{width}, {num_classes or 'no'} classes; "
                f"{sum(p.numel() for p in unet.parameters()):,} parameters; {max_train_steps} optimiser steps of "
                f"{args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps} images")
    log_path = output_dir / "logs" / "train_log.jsonl"
    diagnostics = {"sigmas": [], "loss": [], "grad": []}
    progress = tqdm(range(max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    start = time.perf_counter()

    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:  # a finished run resumed: nothing left to train
            break
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        unet.train()
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if epoch == first_epoch else loader
        for batch_index, batch in enumerate(epoch_loader, start=skip_batches if epoch == first_epoch else 0):
            # Every micro-batch draws its sigmas, noise and label dropout from its own seed: resumption is exact.
            micro_step = epoch * len(loader) + batch_index
            generator = micro_batch_generator(accelerator, args.seed, micro_step)
            labels = None
            if num_classes is not None:
                labels = batch["label"].to(accelerator.device)
                drop = torch.rand(labels.shape, generator=generator, device=labels.device) < args.label_dropout
                labels = torch.where(drop, torch.full_like(labels, null_class), labels)
            with accelerator.accumulate(unet):
                out = flow_matching_loss(unet, batch["bits"], loss_config, labels, generator=generator)
                diagnostics["grad"].append(output_gradient_norms(out.loss, out.model_output).detach())
                accelerator.backward(out.loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            diagnostics["sigmas"].append(out.sigmas.detach())
            diagnostics["loss"].append(out.per_sample_loss)
            if not accelerator.sync_gradients:
                continue
            last_loss = out.loss.item()

            if ema is not None:
                ema.step(unet.parameters())
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.1e}")

            if global_step % args.logging_steps == 0:
                record = log_step(accelerator, diagnostics, global_step, epoch, grad_norm, lr_scheduler, start)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    accelerator.log({"loss": record["loss"], "grad_norm": record["grad_norm"]}, step=global_step)
                diagnostics = {"sigmas": [], "loss": [], "grad": []}
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if global_step % args.validation_steps == 0 and accelerator.is_main_process:
                save_sample_grid(accelerator, unet, ema, noise_scheduler, args, num_classes, null_class,
                                 output_dir / "samples" / f"step_{global_step:06d}.png")
            if global_step >= max_train_steps:
                break
        skip_batches = 0
        if global_step >= max_train_steps:
            break
    progress.close()
    if global_step % args.checkpointing_steps:
        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)  # a rerun with --resume_from_checkpoint is a no-op

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipeline = build_pipeline(accelerator, unet, ema, noise_scheduler, null_class)
        pipeline.save_pretrained(str(output_dir))
        grid_path = output_dir / "sample_grid.png"
        save_sample_grid(accelerator, unet, ema, noise_scheduler, args, num_classes, null_class, grid_path)
        summary = {"optimizer_steps": global_step, "train_seconds": round(time.perf_counter() - start, 1),
                   "num_parameters": sum(p.numel() for p in pipeline.unet.parameters()),
                   "final_training_loss": None if last_loss is None else round(last_loss, 5)}
        if args.metrics_num_samples:
            summary.update(digit_metrics(pipeline, args, num_classes))
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        (output_dir / "README.md").write_text(render_model_card(
            MODEL_CARD_TEMPLATE.read_text(), args=args, repo_id=repo_id or output_dir.name, metrics=summary,
            num_classes=num_classes, null_class_label=null_class, image_shape=dataset.image_shape,
            grid_file=grid_path.name))
        accelerator.print(f"Saved the pipeline and {grid_path} in {output_dir}")
        if args.push_to_hub:
            push_or_exit(output_dir, repo_id, BinaryFlowPipeline, args.hub_token)
    accelerator.end_training()


def log_step(accelerator, diagnostics, global_step, epoch, grad_norm, lr_scheduler, start) -> dict:
    """Loss, parameter-gradient norm and the per-sigma-bin loss and output-gradient norm since the last log."""
    sigmas, losses, grads = (accelerator.gather(torch.cat(diagnostics[k])).cpu() for k in ("sigmas", "loss", "grad"))
    return {
        "step": global_step, "epoch": epoch, "loss": losses.mean().item(),
        "grad_norm": None if grad_norm is None else float(grad_norm), "lr": lr_scheduler.get_last_lr()[0],
        "seconds": round(time.perf_counter() - start, 1),
        "loss_per_sigma_bin": per_sigma_bin_stats(sigmas, losses, num_bins=10, percentiles=(50,)),
        "output_grad_norm_per_sigma_bin": per_sigma_bin_stats(sigmas, grads, num_bins=10, percentiles=(50, 99)),
    }


def build_pipeline(accelerator, unet, ema, noise_scheduler, null_class) -> BinaryFlowPipeline:
    """A pipeline holding a copy of the (EMA) weights."""
    model = accelerator.unwrap_model(unet)
    weights = UNet2DModel.from_config(model.config).to(accelerator.device)
    weights.load_state_dict(model.state_dict())
    if ema is not None:
        ema.copy_to(weights.parameters())
    pipeline = BinaryFlowPipeline(unet=weights.eval(), scheduler=noise_scheduler, null_class_label=null_class)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save_sample_grid(accelerator, unet, ema, noise_scheduler, args, num_classes, null_class, path: Path):
    """A grid of samples from the EMA weights: one row per class (8 per row), or 8x8 unconditional samples."""
    pipeline = build_pipeline(accelerator, unet, ema, noise_scheduler, null_class)
    rows = min(num_classes, 10) if num_classes else 8
    labels = None if num_classes is None else torch.arange(rows).repeat_interleave(8).tolist()
    images = pipeline(batch_size=rows * 8, class_labels=labels, guidance_scale=args.guidance_scale if labels else 1.0,
                      num_inference_steps=args.num_inference_steps,
                      generator=torch.Generator().manual_seed(args.seed)).images
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_image_grid(images, rows=rows, cols=8)
    grid.resize((grid.width * 3, grid.height * 3), resample=0).save(path)


def digit_metrics(pipeline: BinaryFlowPipeline, args, num_classes) -> dict:
    """FD, precision/recall, coverage, speckle and memorisation of `--metrics_num_samples` samples (classes in turn)."""
    metrics = DigitMetrics(num_samples=args.metrics_num_samples)
    labels = None if num_classes is None else (torch.arange(args.metrics_num_samples) % num_classes).tolist()
    bits = pipeline(batch_size=args.metrics_num_samples, class_labels=labels,
                    guidance_scale=args.guidance_scale if labels else 1.0, num_inference_steps=args.num_inference_steps,
                    generator=torch.Generator().manual_seed(args.seed), output_type="pt").images
    scores = {f"digits_{name}": round(value, 4) for name, value in metrics(bits.cpu()).items()
              if isinstance(value, float)}
    scores["digits_fd_real_data_floor"] = round(metrics.floor(args.metrics_num_samples, seed=args.seed)["fd"], 4)
    return scores


if __name__ == "__main__":
    main(parse_args())
