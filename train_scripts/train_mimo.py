"""Train a conditional binary flow-matching MIMO detector (arXiv 2602.10420) with Accelerate.

    python train_scripts/train_mimo.py --output_dir mimo-4x4-qpsk --num_tx 4 --num_rx 4 --modulation qpsk \
        --prediction_type logits --loss_type bce

Channel uses are simulated on the fly (i.i.d. Rayleigh H, SNR per receive antenna drawn uniformly in dB from
[--snr_db_min, --snr_db_max] for every channel use; see `diffusers_binflow.mimo.channel`). The recipe options are the
image script's: x-prediction (`sample`, or `logits` for cross-entropy), loss space, loss type and sigma sampling.
The result is a `BinaryFlowMIMOPipeline` saved in --output_dir with a model card reporting a BER table.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusers_binflow.mimo import (
    MODULATIONS,
    get_modulation,
    k_best,
    lmmse,
    maximum_likelihood,
    simulate,
)
from diffusers_binflow.mimo.detectors import EP_ITERATIONS
from diffusers_binflow.mimo.evaluation import measure_ber
from diffusers_binflow.mimo.model import MIMOFlowTransformer
from diffusers_binflow.mimo.model_card import render_mimo_model_card
from diffusers_binflow.pipelines import BinaryFlowMIMOPipeline
from diffusers_binflow.schedulers import BinaryFlowMatchScheduler
from diffusers_binflow.training import (
    RECIPE_OPTIONS,
    FlowLossConfig,
    add_recipe_arguments,
    flow_matching_loss,
)
from diffusers_binflow.training_runs import (
    micro_batch_generator,
    push_or_exit,
    register_checkpoint_hooks,
    save_checkpoint,
    start_run,
)

logger = logging.getLogger(__name__)
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_card_template_mimo.md"
# Options a resumed run must share with the run that wrote the checkpoint.
RESUME_OPTIONS = ("num_tx", "num_rx", "modulation", "snr_db_min", "snr_db_max", "hidden_size", "num_layers",
                  "num_heads", "mlp_ratio", "ep_iterations", *RECIPE_OPTIONS, "seed", "train_batch_size",
                  "gradient_accumulation_steps", "learning_rate")
# Exhaustive ML is the reference up to this many bits per channel use; K-best beyond.
ML_MAX_BITS = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    system = parser.add_argument_group("channel")
    system.add_argument("--num_tx", type=int, default=4)
    system.add_argument("--num_rx", type=int, default=4)
    system.add_argument("--modulation", default="qpsk", choices=list(MODULATIONS))
    system.add_argument("--snr_db_min", type=float, default=0.0, help="SNR per receive antenna, dB.")
    system.add_argument("--snr_db_max", type=float, default=24.0)

    model = parser.add_argument_group("model and recipe")
    model.add_argument("--hidden_size", type=int, default=64)
    model.add_argument("--num_layers", type=int, default=3)
    model.add_argument("--num_heads", type=int, default=4)
    model.add_argument("--mlp_ratio", type=float, default=2.0)
    model.add_argument("--ep_iterations", type=int, default=EP_ITERATIONS,
                       help="Expectation-propagation iterations of the cavity the network corrects (BPSK/QPSK).")
    # Cross-entropy on per-bit logits (independent symbols) under uniform sigma: what benchmarks/mimo_ber.py measured.
    add_recipe_arguments(model, prediction_types=("sample", "logits"), prediction_type="logits", loss_type="bce",
                         timestep_sampling="uniform")

    train = parser.add_argument_group("optimisation")
    train.add_argument("--train_batch_size", type=int, default=256, help="Channel uses per step and process.")
    train.add_argument("--max_train_steps", type=int, default=2000)
    train.add_argument("--max_train_seconds", type=float, default=None,
                       help="Stop earlier once training has run this long (the summary records the steps done).")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=1e-3)
    train.add_argument("--lr_scheduler", default="cosine",
                       choices=["linear", "cosine", "constant", "constant_with_warmup"])
    train.add_argument("--lr_warmup_steps", type=int, default=100)
    train.add_argument("--adam_weight_decay", type=float, default=0.0)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    train.add_argument("--ema_max_decay", type=float, default=0.999)
    train.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    train.add_argument("--seed", type=int, default=0)

    evaluate = parser.add_argument_group("evaluation, logging, checkpoints")
    evaluate.add_argument("--output_dir", required=True)
    evaluate.add_argument("--num_inference_steps", type=int, default=1)
    evaluate.add_argument("--solver", default="euler", choices=["euler", "heun"])
    evaluate.add_argument("--eval_snr_db", default="0,4,8,12,16,20",
                          help="Comma-separated SNRs (dB) of the model card's BER table.")
    evaluate.add_argument("--eval_channel_uses", type=int, default=4096, help="Channel uses per SNR in that table.")
    evaluate.add_argument("--logging_steps", type=int, default=50)
    evaluate.add_argument("--checkpointing_steps", type=int, default=500)
    evaluate.add_argument("--checkpoints_total_limit", type=int, default=None)
    evaluate.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder.')

    hub = parser.add_argument_group("publishing")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id", default=None, help="Defaults to the output folder's name.")
    hub.add_argument("--hub_token", default=None, help="Never written anywhere; default: your saved login.")
    hub.add_argument("--hub_private_repo", action="store_true")
    args = parser.parse_args(argv)

    if args.loss_type == "bce" and (args.prediction_type != "logits" or args.loss_space != "x"):
        parser.error("--loss_type bce is cross-entropy on per-bit logits: it needs --prediction_type logits and "
                     "--loss_space x.")
    if args.num_rx < args.num_tx:
        parser.error("--num_rx must be at least --num_tx.")
    if args.ep_iterations < 0:
        parser.error("--ep_iterations must be at least 0.")
    if args.snr_db_max < args.snr_db_min:
        parser.error("--snr_db_max must be at least --snr_db_min.")
    for name in ("num_tx", "train_batch_size", "max_train_steps", "gradient_accumulation_steps", "logging_steps",
                 "checkpointing_steps", "num_inference_steps", "eval_channel_uses"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1.")
    try:
        args.eval_snr_db = [float(v) for v in str(args.eval_snr_db).split(",") if v.strip()]
    except ValueError:
        parser.error(f"--eval_snr_db must be comma-separated numbers, got {args.eval_snr_db!r}.")
    return args


def main(args):
    output_dir = Path(args.output_dir)
    set_seed(args.seed)  # before the model is built: its initial weights are part of the run
    model = MIMOFlowTransformer(num_tx=args.num_tx, num_rx=args.num_rx, modulation=args.modulation,
                                hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                                mlp_ratio=args.mlp_ratio, prediction_type=args.prediction_type,
                                ep_iterations=args.ep_iterations)

    run = start_run(args, output_dir, RESUME_OPTIONS)
    accelerator, checkpoint, repo_id = run.accelerator, run.checkpoint, run.repo_id

    ema = EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, model_cls=MIMOFlowTransformer,
                   model_config=model.config) if args.use_ema else None

    register_checkpoint_hooks(accelerator, ema, MIMOFlowTransformer, "model")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=args.max_train_steps)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)

    loss_config = FlowLossConfig.from_args(args)
    noise_scheduler = BinaryFlowMatchScheduler(prediction_type=args.prediction_type, bit_scale=args.bit_scale,
                                               solver=args.solver)

    global_step, last_loss = 0, None
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        global_step = int(checkpoint.name.split("-")[1])

    logger.info(f"{args.num_tx}x{args.num_rx} {args.modulation}, {model_num_bits(accelerator, model)} bits per "
                f"channel use; {sum(p.numel() for p in model.parameters()):,} parameters; {args.max_train_steps} "
                f"optimiser steps of {args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps}"
                " channel uses")
    log_path = output_dir / "logs" / "train_log.jsonl"
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    start, window = time.perf_counter(), []
    model.train()
    while global_step < args.max_train_steps:
        for micro in range(args.gradient_accumulation_steps):
            # Each micro-batch (channels, SNRs, sigmas, noise) comes from its own seed: resumption is exact.
            micro_step = global_step * args.gradient_accumulation_steps + micro
            generator = micro_batch_generator(accelerator, args.seed, micro_step)
            snr_db = args.snr_db_min + (args.snr_db_max - args.snr_db_min) * torch.rand(
                args.train_batch_size, generator=generator, device=accelerator.device)
            batch = simulate(args.train_batch_size, args.num_tx, args.num_rx, args.modulation, snr_db,
                             generator=generator, device=accelerator.device)
            with accelerator.accumulate(model):
                out = flow_matching_loss(model, batch.bits, loss_config, generator=generator,
                                         model_kwargs={"y": batch.y, "H": batch.H, "noise_var": batch.noise_var})
                accelerator.backward(out.loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            window.append(out.loss.detach())
        last_loss = out.loss.item()
        if ema is not None:
            ema.step(model.parameters())
        global_step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{last_loss:.4f}")

        if global_step % args.logging_steps == 0:
            record = {"step": global_step, "loss": accelerator.gather(torch.stack(window)).mean().item(),
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "lr": lr_scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 1)}
            window = []
            if accelerator.is_main_process:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
        if global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
        if args.max_train_seconds is not None and time.perf_counter() - start >= args.max_train_seconds:
            break
    progress.close()
    train_seconds = round(time.perf_counter() - start, 1)
    if global_step % args.checkpointing_steps:
        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipeline = build_pipeline(accelerator, model, ema, noise_scheduler)
        pipeline.save_pretrained(str(output_dir))
        ber_table, counts, description = ber_table_for_card(pipeline, args)
        summary = {"optimizer_steps": global_step, "train_seconds": train_seconds,
                   "num_parameters": sum(p.numel() for p in pipeline.model.parameters()),
                   "final_training_loss": None if last_loss is None else round(last_loss, 5),
                   "ber": {name: {f"{snr:g}": ber for snr, ber in table.items()} for name, table in ber_table.items()},
                   "ber_counts": counts}
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        metrics = {k: v for k, v in summary.items() if k not in ("ber", "ber_counts")}
        (output_dir / "README.md").write_text(render_mimo_model_card(
            MODEL_CARD_TEMPLATE.read_text(), args=args, repo_id=repo_id or output_dir.name,
            num_bits=pipeline.model.num_bits, ber_table=ber_table, metrics=metrics, eval_description=description))
        accelerator.print(f"Saved the pipeline and its model card in {output_dir}")
        if args.push_to_hub:
            push_or_exit(output_dir, repo_id, BinaryFlowMIMOPipeline, args.hub_token)
    accelerator.end_training()


def model_num_bits(accelerator, model) -> int:
    return accelerator.unwrap_model(model).num_bits


def build_pipeline(accelerator, model, ema, noise_scheduler) -> BinaryFlowMIMOPipeline:
    """A pipeline holding a copy of the (EMA) weights."""
    trained = accelerator.unwrap_model(model)
    weights = MIMOFlowTransformer.from_config(trained.config).to(accelerator.device)
    weights.load_state_dict(trained.state_dict())
    if ema is not None:
        ema.copy_to(weights.parameters())
    pipeline = BinaryFlowMIMOPipeline(model=weights.eval(), scheduler=noise_scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def ber_table_for_card(pipeline: BinaryFlowMIMOPipeline, args):
    """BER of LMMSE, the ML (or K-best) reference and the model at each --eval_snr_db, on the same channel uses."""
    modulation = get_modulation(args.modulation)
    num_bits = pipeline.model.num_bits
    reference = ("ML", maximum_likelihood) if num_bits <= ML_MAX_BITS else ("K-best (K=16)", k_best)
    detectors = {
        "LMMSE": lambda y, H, n0: lmmse(y, H, n0, modulation).bits,
        reference[0]: lambda y, H, n0: reference[1](y, H, n0, modulation).bits,
        f"ours ({args.num_inference_steps} NFE)": lambda y, H, n0: pipeline(
            y, H, n0, num_inference_steps=args.num_inference_steps,
            generator=torch.Generator(y.device).manual_seed(args.seed)).bits,
    }
    table, counts = {name: {} for name in detectors}, {name: {} for name in detectors}
    for name, detect in detectors.items():
        for snr in args.eval_snr_db:
            result = measure_ber(detect, args.num_tx, args.num_rx, modulation, snr, min_errors=10**9,
                                 max_bits=args.eval_channel_uses * num_bits, batch_size=args.eval_channel_uses,
                                 seed=args.seed + 1, device=pipeline.device)
            table[name][snr] = result.ber
            counts[name][f"{snr:g}"] = {"bit_errors": result.bit_errors, "bits": result.bits}
    description = (f"{args.eval_channel_uses} channel uses ({args.eval_channel_uses * num_bits} bits) per SNR, the "
                   "same for every detector; SNR per receive antenna.")
    return table, counts, description


if __name__ == "__main__":
    main(parse_args())
