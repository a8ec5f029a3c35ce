"""Train a conditional binary flow-matching MIMO detector (arXiv 2602.10420) with Accelerate.

    python train_scripts/train_mimo.py --output_dir mimo-4x4-qpsk --num_tx 4 --num_rx 4 --modulation qpsk \
        --prediction_type logits --loss_type bce

Channel uses are simulated on the fly (Rayleigh H, i.i.d. or Kronecker-correlated with --correlation, known exactly
or up to an error of variance --csi_error_var, which the receiver knows with --csi_aware; SNR per receive antenna
drawn uniformly in dB from [--snr_db_min, --snr_db_max] for every channel use; see `diffusers_binflow.mimo.channel`).
The recipe options are the image script's: x-prediction (`sample`, or `logits` for cross-entropy), loss space, loss
type and sigma sampling.
The result is a `BinaryFlowMIMOPipeline` saved in --output_dir with a model card reporting a BER table.
"""

import argparse
import json
import logging
import time

import torch
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusers_binflow.checkpoints import register_checkpoint_hooks
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
from diffusers_binflow.model_cards import render_model_card, settings_of
from diffusers_binflow.pipelines import BinaryFlowMIMOPipeline
from diffusers_binflow.training import (
    RECIPE_OPTIONS,
    FlowLossConfig,
    add_recipe_arguments,
    flow_matching_loss,
)
from diffusers_binflow.training_runs import (
    add_optimisation_arguments,
    add_run_arguments,
    add_sampler_arguments,
    build_lr_scheduler,
    build_optimizer,
    build_pipeline,
    check_arguments,
    end_training,
    micro_batch_generator,
    noise_scheduler_from_args,
    prepare_model,
    push_or_exit,
    shared_generator,
    start_run,
)

logger = logging.getLogger(__name__)
SCRIPT = "train_mimo"
# Options a resumed run must share with the run that wrote the checkpoint.
RESUME_OPTIONS = ("num_tx", "num_rx", "modulation", "snr_db_min", "snr_db_max", "correlation", "csi_error_var",
                  "csi_aware", "hidden_size", "num_layers", "num_heads", "mlp_ratio", "ep_iterations",
                  "multilevel_cavities", *RECIPE_OPTIONS, "seed", "train_batch_size", "gradient_accumulation_steps",
                  "learning_rate", "use_ema")
# The training options a MIMO model card reports, in this order.
CARD_SETTINGS = ("num_tx", "num_rx", "modulation", "snr_db_min", "snr_db_max", "correlation", "csi_error_var",
                 "csi_aware", "hidden_size", "num_layers", "num_heads", "ep_iterations", "multilevel_cavities",
                 "prediction_type", "loss_space", "loss_type", "timestep_sampling", "uniform_fraction",
                 "likelihood_cap", "v_clamp", "weighting_max", "self_conditioning", "train_batch_size",
                 "max_train_steps", "learning_rate", "lr_scheduler", "use_ema", "seed", "solver", "heun_first_step",
                 "s_churn", "sampling_shift", "sampling_likelihood_cap", "sampling_final_likelihood_cap",
                 "num_inference_steps")
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
    system.add_argument("--correlation", type=float, default=0.0,
                        help="Exponential Kronecker correlation rho^|i-j| at both ends, in [0, 1) (0: i.i.d.).")
    system.add_argument("--csi_error_var", type=float, default=0.0,
                        help="The receiver knows H + E, E i.i.d. CN(0, this) (0: exact channel knowledge).")
    system.add_argument("--csi_aware", action="store_true",
                        help="The receiver also knows --csi_error_var: the model (and the model card's detectors) "
                             "read the estimate as H_hat / (1 + v) with noise N0 + num_tx v / (1 + v) "
                             "(`diffusers_binflow.mimo.channel_given_estimate`); i.i.d. channels only.")

    model = parser.add_argument_group("model and recipe")
    model.add_argument("--hidden_size", type=int, default=64)
    model.add_argument("--num_layers", type=int, default=3)
    model.add_argument("--num_heads", type=int, default=4)
    model.add_argument("--mlp_ratio", type=float, default=2.0)
    model.add_argument("--ep_iterations", type=int, default=EP_ITERATIONS,
                       help="Expectation-propagation iterations of the cavities the network corrects.")
    model.add_argument("--multilevel_cavities", action=argparse.BooleanOptionalAction, default=None,
                       help="EP cavities for more than one bit per real symbol (default: on for 16-QAM and 64-QAM; "
                            "BPSK and QPSK models always have theirs). Runs checkpointed before it existed had none.")
    # Cross-entropy on per-bit logits (independent symbols) under uniform sigma: what benchmarks/mimo_ber.py measured.
    add_recipe_arguments(model, prediction_types=("sample", "logits"), prediction_type="logits", loss_type="bce",
                         timestep_sampling="uniform")

    # A stream of simulated channel uses: no epochs. AdamW's and EMAModel's own defaults, as measured in
    # benchmarks/mimo_ber.py.
    train = add_optimisation_arguments(parser, epochs=False, train_batch_size=256, max_train_steps=2000,
                                       adam_beta2=0.999, ema_power=2 / 3)
    train.add_argument("--max_train_seconds", type=float, default=None,
                       help="Stop earlier once training has run this long (the summary records the steps done).")
    add_run_arguments(parser, logging_steps=50)

    evaluate = parser.add_argument_group("evaluation")
    add_sampler_arguments(evaluate, num_inference_steps=1)
    evaluate.add_argument("--eval_snr_db", default="0,4,8,12,16,20",
                          help="Comma-separated SNRs (dB) of the model card's BER table.")
    evaluate.add_argument("--eval_channel_uses", type=int, default=4096, help="Channel uses per SNR in that table.")
    args = parser.parse_args(argv)

    check_arguments(parser, args, at_least_one=("num_tx", "num_rx", "num_inference_steps", "eval_channel_uses"))
    if args.loss_type == "bce" and args.loss_space != "x":
        parser.error("--loss_type bce is cross-entropy on per-bit logits: it needs --loss_space x.")
    if args.num_rx < args.num_tx:
        parser.error("--num_rx must be at least --num_tx.")
    if args.ep_iterations < 0:
        parser.error("--ep_iterations must be at least 0.")
    if not (abs(args.snr_db_min) < float("inf") and abs(args.snr_db_max) < float("inf")):
        parser.error("--snr_db_min and --snr_db_max must be finite.")
    if args.snr_db_max < args.snr_db_min:
        parser.error("--snr_db_max must be at least --snr_db_min.")
    if not 0 <= args.correlation < 1:
        parser.error(f"--correlation must be in [0, 1), got {args.correlation}.")
    if not 0 <= args.csi_error_var < float("inf"):
        parser.error(f"--csi_error_var must be a finite number >= 0, got {args.csi_error_var}.")
    if args.csi_aware and args.csi_error_var == 0:
        parser.error("--csi_aware reads a channel estimate with a known error: it needs --csi_error_var > 0.")
    if args.csi_aware and args.correlation > 0:
        parser.error("--csi_aware reads the estimate of an i.i.d. channel: it cannot be used with --correlation.")
    if args.multilevel_cavities is None:  # what the model gets; for one bit per real symbol it means nothing
        args.multilevel_cavities = get_modulation(args.modulation).bits_per_real > 1
    if args.bit_scale != 1:
        parser.error(f"--bit_scale must be 1 for MIMO (the denoiser's EP cavities read bits as -1 and 1), got "
                     f"{args.bit_scale}.")
    if args.max_train_seconds is not None and not args.max_train_seconds > 0:
        parser.error(f"--max_train_seconds must be positive, got {args.max_train_seconds}.")
    try:
        args.eval_snr_db = [float(v) for v in str(args.eval_snr_db).split(",") if v.strip()]
    except ValueError:
        parser.error(f"--eval_snr_db must be comma-separated numbers, got {args.eval_snr_db!r}.")
    return args


def main(args):
    set_seed(args.seed)  # before the model is built: its initial weights are part of the run
    model = MIMOFlowTransformer(num_tx=args.num_tx, num_rx=args.num_rx, modulation=args.modulation,
                                hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                                mlp_ratio=args.mlp_ratio, prediction_type=args.prediction_type,
                                ep_iterations=args.ep_iterations, self_conditioning=args.self_conditioning,
                                multilevel_cavities=args.multilevel_cavities)
    prepare_model(model, args)

    run = start_run(args, SCRIPT, RESUME_OPTIONS, tracker_name="binary_flow_mimo")
    accelerator, output_dir = run.accelerator, run.output_dir

    ema = EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                   power=args.ema_power, model_cls=MIMOFlowTransformer, model_config=model.config) \
        if args.use_ema else None
    register_checkpoint_hooks(accelerator, ema, MIMOFlowTransformer, "model")

    optimizer = build_optimizer(model, args)
    lr_scheduler = build_lr_scheduler(args, optimizer, accelerator.num_processes, args.max_train_steps)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)

    loss_config = FlowLossConfig.from_args(args)
    noise_scheduler = noise_scheduler_from_args(args)

    global_step, last_loss = run.load_checkpoint(), None

    num_bits = accelerator.unwrap_model(model).num_bits
    logger.info(f"{args.num_tx}x{args.num_rx} {args.modulation}, {num_bits} bits per channel use; "
                f"{sum(p.numel() for p in model.parameters()):,} parameters; {args.max_train_steps} optimiser steps "
                f"of {args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps} channel "
                f"uses; mixed precision {accelerator.mixed_precision}")
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
                             generator=generator, device=accelerator.device, correlation=args.correlation,
                             csi_error_var=args.csi_error_var, csi_aware=args.csi_aware)
            with accelerator.accumulate(model):
                out = flow_matching_loss(model, batch.bits, loss_config, generator=generator,
                                         model_kwargs={"y": batch.y, "H": batch.H, "noise_var": batch.noise_var},
                                         self_conditioning_generator=shared_generator(accelerator, args.seed,
                                                                                      micro_step))
                accelerator.backward(out.loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    run.stop_if_diverged(grad_norm, out.loss, global_step)
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
            run.log({"step": global_step, "loss": accelerator.gather(torch.stack(window)).mean().item(),
                     "grad_norm": None if grad_norm is None else float(grad_norm),
                     "lr": lr_scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 1)},
                    tracked=("loss", "grad_norm", "lr"))
            window = []
        if global_step % args.checkpointing_steps == 0:
            run.save_checkpoint(model, global_step)
        if args.max_train_seconds is not None and time.perf_counter() - start >= args.max_train_seconds:
            break
    progress.close()
    train_seconds = round(time.perf_counter() - start, 1)
    run.save_checkpoint(model, global_step)  # a rerun with --resume_from_checkpoint latest is then a no-op

    if accelerator.is_main_process:
        pipeline = build_pipeline(BinaryFlowMIMOPipeline, accelerator, model, ema, "model", scheduler=noise_scheduler)
        pipeline.save_pretrained(str(output_dir))
        ber_table, counts, description = ber_table_for_card(pipeline, args)
        summary = {"optimizer_steps": global_step, "train_seconds": train_seconds,
                   "num_parameters": sum(p.numel() for p in pipeline.model.parameters()),
                   "mixed_precision": accelerator.mixed_precision,
                   "final_training_loss": None if last_loss is None else round(last_loss, 5),
                   "ber": {name: {f"{snr:g}": ber for snr, ber in table.items()} for name, table in ber_table.items()},
                   "ber_counts": counts}
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        snrs = sorted({snr for results in ber_table.values() for snr in results})
        (output_dir / "README.md").write_text(render_model_card(
            "BinaryFlowMIMOPipeline", repo_id=run.repo_id or output_dir.name,
            tags=["mimo-detection", "diffusers-training"], settings=settings_of(args, CARD_SETTINGS),
            metrics={k: v for k, v in summary.items() if k not in ("ber", "ber_counts")}, num_tx=args.num_tx,
            num_rx=args.num_rx, modulation=args.modulation, num_bits=num_bits, self_conditioning=args.self_conditioning,
            correlation=args.correlation, csi_error_var=args.csi_error_var, csi_aware=args.csi_aware,
            num_inference_steps=args.num_inference_steps, detectors=list(ber_table), eval_description=description,
            ber_rows=[[f"{snr:g}"] + [f"{table[snr]:.2e}" for table in ber_table.values()] for snr in snrs]))
        accelerator.print(f"Saved the pipeline and its model card in {output_dir}")
        if args.push_to_hub:
            push_or_exit(run, BinaryFlowMIMOPipeline, args.hub_token)
    model = None  # the prepared (DDP) model goes before the process group: see end_training
    end_training(accelerator)


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
                                 seed=args.seed + 1, device=pipeline.device, correlation=args.correlation,
                                 csi_error_var=args.csi_error_var, csi_aware=args.csi_aware)
            table[name][snr] = result.ber
            counts[name][f"{snr:g}"] = {"bit_errors": result.bit_errors, "bits": result.bits}
    description = (f"{args.eval_channel_uses} channel uses ({args.eval_channel_uses * num_bits} bits) per SNR, the "
                   "same for every detector; SNR per receive antenna; the training channel (correlation "
                   f"{args.correlation:g}, CSI error variance {args.csi_error_var:g}"
                   + (", read by a receiver that knows it" if args.csi_aware else "") + ").")
    return table, counts, description


if __name__ == "__main__":
    main(parse_args())
