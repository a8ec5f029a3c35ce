"""Train a binary flow-matching model (arXiv 2602.10420) on binary images with Accelerate.

    python train_scripts/train_binary_flow.py --output_dir digits-model                      # bundled digits
    accelerate launch --multi_gpu --num_processes 2 train_scripts/train_binary_flow.py --output_dir out  # 2 processes

The defaults are the image default, chosen by measurement (`training.IMAGE_RECIPE`; BENCHMARKS.md): a
likelihood-residual output trained with cross-entropy under logit(sigma) ~ N(0.8, 0.8) (sigma = 1 is noise; the
paper's t = 1 - sigma), saved with a scheduler that integrates with the multistep solver (second order, one model
call per step) and reads the bits under a 1-nat cap on the likelihood term.
The result is a `BinaryFlowPipeline` saved in --output_dir.
"""

import argparse
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from tqdm.auto import tqdm

from diffusers_binflow import BinaryFlowPipeline
from diffusers_binflow.checkpoints import register_checkpoint_hooks, resume_position
from diffusers_binflow.data import (
    Binarizer,
    BinaryImageDataset,
    from_bundled_digits,
    from_hf_dataset,
    from_image_folder,
)
from diffusers_binflow.diagnostics import output_gradient_norms, per_sigma_bin_stats
from diffusers_binflow.flow import LOGIT_PREDICTION_TYPES
from diffusers_binflow.metrics import MIN_FD_SAMPLES, DigitMetrics
from diffusers_binflow.model_cards import image_sampler, render_model_card, settings_of
from diffusers_binflow.models import build_unet
from diffusers_binflow.training import (
    IMAGE_RECIPE,
    IMAGE_SAMPLING_FINAL_LIKELIHOOD_CAP,
    IMAGE_SAMPLING_SOLVER,
    RECIPE_OPTIONS,
    FlowLossConfig,
    add_recipe_arguments,
    flow_matching_loss,
)
from diffusers_binflow.training_runs import (
    EpochOrder,
    add_optimisation_arguments,
    add_run_arguments,
    add_sampler_arguments,
    build_pipeline,
    check_arguments,
    end_training,
    micro_batch_generator,
    noise_scheduler_from_args,
    prepare_epochs,
    prepare_model,
    push_or_exit,
    shared_generator,
    start_run,
)

logger = logging.getLogger(__name__)
SCRIPT = "train_binary_flow"
# Options a resumed run must share with the run that wrote the checkpoint.
RESUME_OPTIONS = ("model_config", "resolution", *RECIPE_OPTIONS, "class_conditional", "label_dropout", "seed",
                  "train_batch_size", "gradient_accumulation_steps", "learning_rate", "use_ema", "dataset_name",
                  "dataset_config_name", "train_data_dir", "binarize_threshold", "stochastic_binarization",
                  "pretrained_model_name_or_path")
# The training options a model card reports, in this order.
CARD_SETTINGS = ("model_config", "prediction_type", "loss_space", "loss_type", "timestep_sampling", "logit_mean",
                 "logit_std", "uniform_fraction", "likelihood_cap", "v_clamp", "weighting_max", "bit_scale",
                 "self_conditioning", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
                 "lr_scheduler", "use_ema", "ema_max_decay", "mixed_precision", "seed", "solver", "heun_first_step",
                 "s_churn", "sampling_shift", "sampling_likelihood_cap", "sampling_final_likelihood_cap",
                 "num_inference_steps", "binarize_threshold", "stochastic_binarization", "resolution")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data (default: the bundled MNIST digits)")
    data.add_argument("--train_data_dir", help="A folder of images (class subfolders give labels).")
    data.add_argument("--dataset_name", help="A `datasets` dataset: Hub id or local path.")
    data.add_argument("--dataset_config_name", default=None, help="The dataset's configuration, if it has several.")
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
    add_recipe_arguments(model, **asdict(IMAGE_RECIPE))

    add_optimisation_arguments(parser, train_batch_size=64)
    add_run_arguments(parser, logging_steps=20)

    evaluate = parser.add_argument_group("validation")
    evaluate.add_argument("--validation_steps", type=int, default=250)
    add_sampler_arguments(evaluate, num_inference_steps=16, solver=IMAGE_SAMPLING_SOLVER,
                          sampling_final_likelihood_cap=IMAGE_SAMPLING_FINAL_LIKELIHOOD_CAP)
    evaluate.add_argument("--guidance_scale", type=float, default=2.0, help="For class-conditional validation.")
    evaluate.add_argument("--metrics_num_samples", type=int, default=0,
                          help="At the end, score this many samples (>= 200) with the digit metrics (1x28x28 data).")
    args = parser.parse_args(argv)

    check_arguments(parser, args, at_least_one=("validation_steps", "num_inference_steps"))
    if args.train_data_dir and args.dataset_name:
        parser.error("Give either --train_data_dir or --dataset_name, not both.")
    if args.metrics_num_samples and args.metrics_num_samples < MIN_FD_SAMPLES:
        parser.error(f"--metrics_num_samples must be 0 (off) or at least {MIN_FD_SAMPLES}.")
    if not 0 <= args.label_dropout <= 1:
        parser.error(f"--label_dropout must be in [0, 1], got {args.label_dropout}.")
    if not 1 <= args.binarize_threshold <= 255:
        parser.error(f"--binarize_threshold must be in [1, 255], got {args.binarize_threshold}.")
    if not args.guidance_scale >= 0 or args.guidance_scale == float("inf"):
        parser.error(f"--guidance_scale must be finite and at least 0, got {args.guidance_scale}.")
    if args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be at least 0, got {args.dataloader_num_workers}.")
    return args


def load_training_data(args) -> BinaryImageDataset:
    """The dataset named by the options; all of its errors come before anything is written."""
    binarize = Binarizer("stochastic" if args.stochastic_binarization else "threshold", args.binarize_threshold)
    options = dict(resolution=args.resolution, binarize=binarize, seed=args.seed)
    if args.train_data_dir:
        return from_image_folder(args.train_data_dir, **options)
    if args.dataset_name:
        return from_hf_dataset(args.dataset_name, image_column=args.image_column, label_column=args.label_column,
                               dataset_config_name=args.dataset_config_name, cache_dir=args.cache_dir, **options)
    return from_bundled_digits("train", **options)


def main(args):
    set_seed(args.seed)  # before the model is built: its initial weights are part of the run
    dataset = load_training_data(args)
    channels, height, width = dataset.image_shape
    if height != width:
        raise SystemExit(f"Images are {height}x{width}; pass --resolution to make them square.")
    if args.class_conditional and dataset.num_classes is None:
        raise SystemExit("--class_conditional needs labels: class subfolders, --label_column, or the bundled digits.")
    num_classes = dataset.num_classes if args.class_conditional else None
    null_class = num_classes  # the extra class id used for label dropout and guidance

    if args.pretrained_model_name_or_path:
        base = BinaryFlowPipeline.from_pretrained(args.pretrained_model_name_or_path, cache_dir=args.cache_dir)
        unet, base_null = base.unet, base.config.null_class_label
        if (base.sample_shape[0], unet.config.sample_size) != (channels, height):
            raise SystemExit(f"The pretrained model works on {base.sample_shape[0]} channel(s) at "
                             f"{unet.config.sample_size}px, the data is {channels} channel(s) at {height}px: "
                             "pass a matching --resolution.")
        if (base_null is None) != (num_classes is None):
            raise SystemExit("The pretrained model is " + ("unconditional: drop --class_conditional." if base_null
                             is None else "class-conditional: pass --class_conditional with labelled data."))
        if num_classes is not None and num_classes > base_null:
            raise SystemExit(f"The pretrained model knows {base_null} classes, the data has {num_classes}.")
        if (base.prediction_type, base.bit_scale) != (args.prediction_type, args.bit_scale):
            # Cross-entropy (the image default) needs logits; a value-predicting base trains with the x-MSE.
            loss = "" if base.prediction_type in LOGIT_PREDICTION_TYPES else " --loss_type mse"
            raise SystemExit(f"The pretrained model predicts {base.prediction_type!r} at bit_scale {base.bit_scale}: "
                             f"pass --prediction_type {base.prediction_type} --bit_scale {base.bit_scale}{loss}.")
        if base.self_conditioning != args.self_conditioning:
            raise SystemExit("The pretrained model is " + ("self-conditioned: pass --self_conditioning." if
                             base.self_conditioning else "not self-conditioned: drop --self_conditioning."))
        null_class = base_null  # new classes reuse the first embedding slots; the null class stays
    else:
        unet = build_unet(args.model_config, height, channels, None if num_classes is None else num_classes + 1,
                          self_conditioning=args.self_conditioning)
    prepare_model(unet, args)
    data = EpochOrder(dataset, args.seed)
    loader = data.data_loader(args.train_batch_size, args.dataloader_num_workers)

    run = start_run(args, SCRIPT, RESUME_OPTIONS, tracker_name="binary_flow")
    accelerator, output_dir = run.accelerator, run.output_dir

    ema = EMAModel(unet.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                   power=args.ema_power, model_cls=UNet2DModel, model_config=unet.config) if args.use_ema else None
    register_checkpoint_hooks(accelerator, ema, UNet2DModel, "unet")

    unet, optimizer, loader, lr_scheduler, steps_per_epoch, max_train_steps = prepare_epochs(accelerator, unet,
                                                                                            loader, args)
    if ema is not None:
        ema.to(accelerator.device)

    loss_config = FlowLossConfig.from_args(args)
    noise_scheduler = noise_scheduler_from_args(args)

    global_step, last_loss = run.load_checkpoint(), None
    first_epoch, skip_batches = resume_position(global_step, steps_per_epoch, args.gradient_accumulation_steps)

    logger.info(f"{len(dataset)} images of {channels}x{height}x{width}, {num_classes or 'no'} classes; "
                f"{sum(p.numel() for p in unet.parameters()):,} parameters; {max_train_steps} optimiser steps of "
                f"{args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps} images; "
                f"mixed precision {accelerator.mixed_precision}")
    diagnostics = {"sigmas": [], "loss": [], "grad": []}
    progress = tqdm(range(max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    start = time.perf_counter()

    for epoch in range(first_epoch, math.ceil(max_train_steps / steps_per_epoch)):
        if global_step >= max_train_steps:  # a finished run resumed: nothing left to train
            break
        data.begin_epoch(epoch)
        unet.train()
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        for batch_index, batch in enumerate(epoch_loader, start=skip_batches):
            # Every micro-batch draws its sigmas, noise and label dropout from its own seed: resumption is exact.
            micro_step = epoch * len(loader) + batch_index
            generator = micro_batch_generator(accelerator, args.seed, micro_step)
            labels = None
            if num_classes is not None:
                labels = batch["label"].to(accelerator.device)
                drop = torch.rand(labels.shape, generator=generator, device=labels.device) < args.label_dropout
                labels = torch.where(drop, torch.full_like(labels, null_class), labels)
            with accelerator.accumulate(unet):
                out = flow_matching_loss(unet, batch["bits"], loss_config, labels, generator=generator,
                                         self_conditioning_generator=shared_generator(accelerator, args.seed,
                                                                                      micro_step))
                diagnostics["grad"].append(output_gradient_norms(out.loss, out.model_output).detach())
                accelerator.backward(out.loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                    run.stop_if_diverged(grad_norm, out.loss, global_step)
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
                run.log(log_step(accelerator, diagnostics, global_step, epoch, grad_norm, lr_scheduler, start),
                        tracked=("loss", "grad_norm", "lr"))
                diagnostics = {"sigmas": [], "loss": [], "grad": []}
            if global_step % args.checkpointing_steps == 0:
                run.save_checkpoint(unet, global_step)
            if global_step % args.validation_steps == 0 and accelerator.is_main_process:
                save_sample_grid(build_pipeline(BinaryFlowPipeline, accelerator, unet, ema, "unet",
                                                scheduler=noise_scheduler, null_class_label=null_class,
                                                self_conditioning=args.self_conditioning),
                                 args, num_classes, output_dir / "samples" / f"step_{global_step:06d}.png")
            if global_step >= max_train_steps:
                break
        skip_batches = 0
    progress.close()
    run.save_checkpoint(unet, global_step)  # a rerun with --resume_from_checkpoint latest is then a no-op

    if accelerator.is_main_process:
        pipeline = build_pipeline(BinaryFlowPipeline, accelerator, unet, ema, "unet", scheduler=noise_scheduler,
                                  null_class_label=null_class, self_conditioning=args.self_conditioning)
        pipeline.save_pretrained(str(output_dir))
        grid_path = output_dir / "sample_grid.png"
        save_sample_grid(pipeline, args, num_classes, grid_path)
        summary = {"optimizer_steps": global_step, "train_seconds": round(time.perf_counter() - start, 1),
                   "num_parameters": sum(p.numel() for p in pipeline.unet.parameters()),
                   "mixed_precision": accelerator.mixed_precision,
                   "final_training_loss": None if last_loss is None else round(last_loss, 5)}
        if args.metrics_num_samples:
            summary.update(digit_metrics(pipeline, args, num_classes))
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        (output_dir / "README.md").write_text(render_model_card(
            "BinaryFlowPipeline", repo_id=run.repo_id or output_dir.name, conditional=num_classes is not None,
            tags=["diffusers-training"] + (["class-conditional"] if num_classes else
                                           ["unconditional-image-generation"]),
            datasets=[args.dataset_name or ("mnist" if not args.train_data_dir else None)],
            base_model=args.pretrained_model_name_or_path, settings=settings_of(args, CARD_SETTINGS),
            metrics=summary, channels=channels, resolution=height, num_classes=num_classes,
            null_class_label=null_class, self_conditioning=args.self_conditioning, guidance_scale=args.guidance_scale,
            num_inference_steps=args.num_inference_steps, grid_file=grid_path.name,
            **image_sampler(pipeline)))
        accelerator.print(f"Saved the pipeline and {grid_path} in {output_dir}")
        if args.push_to_hub:
            push_or_exit(run, BinaryFlowPipeline, args.hub_token)
    unet = None  # the prepared (DDP) model goes before the process group: see end_training
    end_training(accelerator)


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


def save_sample_grid(pipeline: BinaryFlowPipeline, args, num_classes, path: Path):
    """A grid of samples: one row per class (8 per row), or 8x8 unconditional samples."""
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
