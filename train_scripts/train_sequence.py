"""Train a binary flow-matching model (arXiv 2602.10420) on token sequences with Accelerate.

    python train_scripts/train_sequence.py --output_dir arithmetic-model                  # bundled "17+25=42" task
    python train_scripts/train_sequence.py --output_dir my-model --train_file lines.txt --tokenizer_type word
    python train_scripts/train_sequence.py --output_dir my-model --train_file lines.txt --tokenizer_name_or_path tok

Each token id becomes a fixed-width bit code (see `diffusers_binflow.sequences.codec`) and every position's bits
are generated jointly by a `transformers` encoder. Sequences are right-padded with the tokenizer's pad token to
--max_length, so the model also generates where a sequence ends. The default recipe is `SEQUENCE_RECIPE`,
self-conditioned: per-bit logits with the x-space cross-entropy (the paper's aligned loss for independent bits),
sigma drawn with logit(sigma) ~ N(0, 0.5) (sigma = 1 is noise), where tokens are decided, and a denoiser that also
reads its previous estimate (Bit Diffusion's self-conditioning; --no-self_conditioning turns it off). The saved
pipeline samples with Euler and the stochastic corrector at --s_churn 64 on a grid moved towards the data by
--sampling_shift 0.25 (`SEQUENCE_SAMPLING_S_CHURN`, `SEQUENCE_SAMPLING_SHIFT`; --s_churn 0 --sampling_shift 1 give
the plain ODE sampler). The result is a `BinaryFlowSequencePipeline` saved in --output_dir.
"""

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from diffusers_binflow.checkpoints import register_checkpoint_hooks, resume_position
from diffusers_binflow.diagnostics import per_sigma_bin_stats
from diffusers_binflow.flow import X_PREDICTION_TYPES
from diffusers_binflow.model_cards import render_model_card, sequence_sampler, settings_of
from diffusers_binflow.pipelines import BinaryFlowSequencePipeline
from diffusers_binflow.sequences import (
    BIT_CODES,
    SEQUENCE_TASKS,
    TOKENIZER_KINDS,
    BitSequenceTransformer,
    build_sequence_model,
    known_tokens_for_training,
    get_task,
    tokenize_to_length,
    train_tokenizer,
    valid_fraction,
)
from diffusers_binflow.training import (
    RECIPE_OPTIONS,
    SEQUENCE_RECIPE,
    SEQUENCE_SAMPLING_S_CHURN,
    SEQUENCE_SAMPLING_SHIFT,
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
SCRIPT = "train_sequence"
# Options a resumed run must share with the run that wrote the checkpoint.
RESUME_OPTIONS = ("model_config", "backbone_type", "bit_code", "known_probability", "known_span_fraction",
                  "max_length", *RECIPE_OPTIONS, "seed", "train_batch_size", "gradient_accumulation_steps",
                  "learning_rate", "use_ema", "task", "max_operand", "train_file", "tokenizer_name_or_path",
                  "tokenizer_type", "tokenizer_vocab_size", "pretrained_model_name_or_path")
# The training options a model card reports.
CARD_SETTINGS = ("task", "train_file", "tokenizer_type", "model_config", "backbone_type", "bit_code",
                 "known_probability", "known_span_fraction", "max_length", "prediction_type", "loss_space",
                 "loss_type", "timestep_sampling", "logit_mean", "logit_std", "uniform_fraction", "likelihood_cap",
                 "bit_scale", "self_conditioning", "train_batch_size", "learning_rate", "use_ema", "seed", "solver",
                 "heun_first_step", "s_churn", "sampling_shift", "sampling_likelihood_cap",
                 "sampling_final_likelihood_cap", "num_inference_steps")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data (default: the bundled arithmetic task)")
    data.add_argument("--task", default="arithmetic", choices=sorted(SEQUENCE_TASKS),
                      help="A generated task with exact correctness; validation reports its valid fraction.")
    data.add_argument("--max_operand", type=int, default=99, help="Arithmetic: operands in [0, this].")
    data.add_argument("--train_file", help="A text file, one sequence per line (blank lines skipped); replaces --task.")
    data.add_argument("--tokenizer_name_or_path", help="A saved tokenizer (folder or Hub id) instead of training one.")
    data.add_argument("--tokenizer_type", default="char", choices=TOKENIZER_KINDS,
                      help="The tokenizer trained on the data (with [PAD] and [UNK]) when none is given.")
    data.add_argument("--tokenizer_vocab_size", type=int, default=None, help="Its largest vocabulary (bpe needs one).")
    data.add_argument("--max_length", type=int, default=None,
                      help="Tokens per sequence (padded); default: the longest training sequence.")

    model = parser.add_argument_group("model and recipe")
    model.add_argument("--model_config", default="tiny",
                       help="tiny | small | base | path to a JSON file of BitSequenceTransformer arguments.")
    model.add_argument("--backbone_type", default="bert", help="A transformers model type, e.g. bert, modernbert.")
    model.add_argument("--bit_code", default="binary", choices=BIT_CODES)
    model.add_argument("--known_probability", type=float, default=0.5,
                       help="Share of training sequences given part of their tokens exactly (each position with a "
                            "random rate), so that the denoiser reads prompts and infills at every step "
                            "(`known_conditioning`); 0: a denoiser without that input.")
    model.add_argument("--known_span_fraction", type=float, default=0.5,
                       help="Share of those sequences given all but one random contiguous span (an answer, a suffix, "
                            "a gap: the shape of an infill prompt) instead of scattered positions. 0.5 completes "
                            "held-out a+b= prompts 6-10 points more often than 0 (BENCHMARKS.md, fifth stop).")
    model.add_argument("--pretrained_model_name_or_path",
                       help="Fine-tune a saved BinaryFlowSequencePipeline (folder or Hub id); its tokenizer is used.")
    # Cross-entropy on per-bit logits, sigma around 0.5, self-conditioned: what benchmarks/sequence_validity.py
    # measured best (self-conditioning: 1.7-12 points on Sudoku, -0.1 to +1.9 on a+b=c and brackets; BENCHMARKS.md).
    add_recipe_arguments(model, prediction_types=X_PREDICTION_TYPES + ("velocity",),
                         **asdict(replace(SEQUENCE_RECIPE, self_conditioning=True)))

    # lr 3e-3 with the cosine decay: what the small encoders learned fastest with (docs/sequences.md)
    add_optimisation_arguments(parser, train_batch_size=128, learning_rate=3e-3)
    add_run_arguments(parser, logging_steps=20)

    evaluate = parser.add_argument_group("validation")
    evaluate.add_argument("--validation_steps", type=int, default=250)
    evaluate.add_argument("--num_validation_samples", type=int, default=256,
                          help="Sequences generated at each validation and at the end (valid fraction of the task).")
    add_sampler_arguments(evaluate, num_inference_steps=16, s_churn=SEQUENCE_SAMPLING_S_CHURN,
                          sampling_shift=SEQUENCE_SAMPLING_SHIFT)
    args = parser.parse_args(argv)

    if args.train_file:
        args.task = None  # the file replaces the bundled task
    check_arguments(parser, args, at_least_one=("validation_steps", "num_inference_steps", "num_validation_samples"))
    if args.tokenizer_type == "bpe" and args.tokenizer_vocab_size is None and not args.tokenizer_name_or_path:
        parser.error("--tokenizer_type bpe needs --tokenizer_vocab_size.")
    if args.max_length is not None and args.max_length < 1:
        parser.error(f"--max_length must be at least 1, got {args.max_length}.")
    if not 0 <= args.known_probability <= 1:
        parser.error(f"--known_probability must be in [0, 1], got {args.known_probability}.")
    if not 0 <= args.known_span_fraction <= 1:
        parser.error(f"--known_span_fraction must be in [0, 1], got {args.known_span_fraction}.")
    return args


def load_texts(args) -> tuple[list[str], object]:
    """The training texts and the task that checks samples (None for a --train_file)."""
    if args.train_file:
        texts = [line.strip() for line in Path(args.train_file).read_text(encoding="utf-8").splitlines()]
        texts = [text for text in texts if text]
        if not texts:
            raise ValueError(f"{args.train_file} holds no non-empty lines.")
        return texts, None
    task = get_task(args.task, **({"max_operand": args.max_operand} if args.task == "arithmetic" else {}))
    return task.texts("train"), task


class TokenSequences(torch.utils.data.Dataset):
    def __init__(self, token_ids: torch.Tensor):
        self.token_ids = token_ids

    def __len__(self):
        return len(self.token_ids)

    def __getitem__(self, index):
        return {"token_ids": self.token_ids[index]}


def main(args):
    set_seed(args.seed)  # before the model is built: its initial weights are part of the run
    texts, task = load_texts(args)

    if args.pretrained_model_name_or_path:
        base = BinaryFlowSequencePipeline.from_pretrained(args.pretrained_model_name_or_path, cache_dir=args.cache_dir)
        denoiser, tokenizer = base.denoiser, base.tokenizer
        trained_as = (base.scheduler.config.prediction_type, base.bit_scale)
        if trained_as != (args.prediction_type, args.bit_scale):
            raise SystemExit(f"The pretrained model predicts {trained_as[0]!r} at bit_scale {trained_as[1]}: pass "
                             f"--prediction_type {trained_as[0]} --bit_scale {trained_as[1]}.")
        if base.denoiser.config.known_conditioning != (args.known_probability > 0):
            raise SystemExit("The pretrained model " + ("reads given tokens: pass --known_probability > 0." if
                             base.denoiser.config.known_conditioning else
                             "does not read given tokens: pass --known_probability 0."))
        if base.self_conditioning != args.self_conditioning:
            raise SystemExit("The pretrained model is " + ("self-conditioned: pass --self_conditioning." if
                             base.self_conditioning else "not self-conditioned: pass --no-self_conditioning."))
        max_length = args.max_length or denoiser.config.max_length
        if max_length > denoiser.config.max_length:
            raise SystemExit(f"--max_length {max_length} exceeds the pretrained model's maximum "
                             f"{denoiser.config.max_length}.")
    else:
        tokenizer = train_tokenizer(texts, args.tokenizer_type, args.tokenizer_vocab_size) \
            if not args.tokenizer_name_or_path else \
            AutoTokenizer.from_pretrained(args.tokenizer_name_or_path, cache_dir=args.cache_dir)
        max_length = args.max_length
    # Padding to a fixed length refuses (ValueError) any text longer than --max_length.
    token_ids = tokenize_to_length(tokenizer, texts, max_length)
    max_length = token_ids.shape[1]
    if not args.pretrained_model_name_or_path:
        denoiser = build_sequence_model(args.model_config, len(tokenizer), max_length, bit_code=args.bit_code,
                                        backbone_type=args.backbone_type, self_conditioning=args.self_conditioning,
                                        known_conditioning=args.known_probability > 0)
    codec = denoiser.codec
    noise_scheduler = noise_scheduler_from_args(args)
    BinaryFlowSequencePipeline(denoiser, noise_scheduler, tokenizer)  # refuses a tokenizer the model cannot code
    prepare_model(denoiser, args)
    data = EpochOrder(TokenSequences(token_ids), args.seed)
    loader = data.data_loader(args.train_batch_size)

    run = start_run(args, SCRIPT, RESUME_OPTIONS, tracker_name="binary_flow_sequence")
    accelerator, output_dir = run.accelerator, run.output_dir

    ema = EMAModel(denoiser.parameters(), decay=args.ema_max_decay, use_ema_warmup=True,
                   inv_gamma=args.ema_inv_gamma, power=args.ema_power, model_cls=BitSequenceTransformer,
                   model_config=denoiser.config) if args.use_ema else None
    register_checkpoint_hooks(accelerator, ema, BitSequenceTransformer, "denoiser")

    denoiser, optimizer, loader, lr_scheduler, steps_per_epoch, max_train_steps = prepare_epochs(accelerator, denoiser,
                                                                                            loader, args)
    if ema is not None:
        ema.to(accelerator.device)

    loss_config = FlowLossConfig.from_args(args)

    global_step, last_loss = run.load_checkpoint(), None
    first_epoch, skip_batches = resume_position(global_step, steps_per_epoch, args.gradient_accumulation_steps)

    logger.info(f"{len(token_ids)} sequences of {max_length} tokens, {len(tokenizer)} token ids in "
                f"{codec.num_bits} bits ({codec.bit_code}); {sum(p.numel() for p in denoiser.parameters()):,} "
                f"parameters; {max_train_steps} optimiser steps of "
                f"{args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps} sequences; "
                f"mixed precision {accelerator.mixed_precision}")
    diagnostics = {"sigmas": [], "loss": []}
    progress = tqdm(range(max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    start = time.perf_counter()

    def validate(path: Path) -> dict:
        pipeline = build_pipeline(BinaryFlowSequencePipeline, accelerator, denoiser, ema, "denoiser",
                                  scheduler=noise_scheduler, tokenizer=tokenizer)
        return write_samples(pipeline, args, task, texts, path)

    for epoch in range(first_epoch, math.ceil(max_train_steps / steps_per_epoch)):
        if global_step >= max_train_steps:  # a finished run resumed: nothing left to train
            break
        data.begin_epoch(epoch)
        denoiser.train()
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        for batch_index, batch in enumerate(epoch_loader, start=skip_batches):
            # Every micro-batch draws its sigmas and noise from its own seed: resumption is exact.
            micro_step = epoch * len(loader) + batch_index
            generator = micro_batch_generator(accelerator, args.seed, micro_step)
            with accelerator.accumulate(denoiser):
                bits = codec.encode(batch["token_ids"])
                given = known_tokens_for_training(bits, args.known_probability, args.bit_scale, generator,
                                                  args.known_span_fraction)
                out = flow_matching_loss(denoiser, bits, loss_config, generator=generator, model_kwargs=given,
                                         self_conditioning_generator=shared_generator(accelerator, args.seed,
                                                                                      micro_step))
                accelerator.backward(out.loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(denoiser.parameters(), args.max_grad_norm)
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
                ema.step(denoiser.parameters())
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.1e}")

            if global_step % args.logging_steps == 0:
                sigmas, losses = (accelerator.gather(torch.cat(diagnostics[k])).cpu() for k in ("sigmas", "loss"))
                run.log({"step": global_step, "epoch": epoch, "loss": losses.mean().item(),
                         "grad_norm": None if grad_norm is None else float(grad_norm),
                         "lr": lr_scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 1),
                         "loss_per_sigma_bin": per_sigma_bin_stats(sigmas, losses, num_bins=10, percentiles=(50,))},
                        tracked=("loss", "grad_norm", "lr"))
                diagnostics = {"sigmas": [], "loss": []}
            if global_step % args.checkpointing_steps == 0:
                run.save_checkpoint(denoiser, global_step)
            if global_step % args.validation_steps == 0 and accelerator.is_main_process:
                scores = validate(output_dir / "samples" / f"step_{global_step:06d}.txt")
                if scores:
                    run.log({"step": global_step, **scores}, tracked=tuple(scores))
            if global_step >= max_train_steps:
                break
        skip_batches = 0
    progress.close()
    run.save_checkpoint(denoiser, global_step)  # a rerun with --resume_from_checkpoint latest is then a no-op

    if accelerator.is_main_process:
        pipeline = build_pipeline(BinaryFlowSequencePipeline, accelerator, denoiser, ema, "denoiser",
                                  scheduler=noise_scheduler, tokenizer=tokenizer)
        pipeline.save_pretrained(str(output_dir))
        summary = {"optimizer_steps": global_step, "train_seconds": round(time.perf_counter() - start, 1),
                   "num_parameters": sum(p.numel() for p in pipeline.denoiser.parameters()),
                   "vocab_size": len(tokenizer), "num_bits": codec.num_bits, "max_length": max_length,
                   "mixed_precision": accelerator.mixed_precision,
                   "final_training_loss": None if last_loss is None else round(last_loss, 5)}
        summary.update(write_samples(pipeline, args, task, texts, output_dir / "samples.txt"))
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        (output_dir / "README.md").write_text(render_model_card(
            "BinaryFlowSequencePipeline", repo_id=run.repo_id or output_dir.name,
            tags=["diffusers-training", "discrete-diffusion"], base_model=args.pretrained_model_name_or_path,
            settings=settings_of(args, CARD_SETTINGS), metrics=summary,
            num_inference_steps=args.num_inference_steps, self_conditioning=args.self_conditioning,
            **sequence_sampler(pipeline)))
        accelerator.print(f"Saved the pipeline and samples.txt in {output_dir}")
        if args.push_to_hub:
            push_or_exit(run, BinaryFlowSequencePipeline, args.hub_token)
    denoiser = None  # the prepared (DDP) model goes before the process group: see end_training
    end_training(accelerator)


def write_samples(pipeline, args, task, train_texts, path: Path) -> dict:
    """Generate --num_validation_samples sequences into `path` (one per line); with a task, score them: the valid
    fraction, and the fraction valid and absent from the training texts."""
    samples = pipeline(batch_size=args.num_validation_samples, num_inference_steps=args.num_inference_steps,
                       generator=torch.Generator().manual_seed(args.seed)).sequences
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(samples) + "\n", encoding="utf-8")
    if task is None:
        return {}
    seen = set(train_texts)
    return {"valid_fraction": round(valid_fraction(task, samples), 4),
            "novel_valid_fraction": round(sum(task.is_valid(s) and s not in seen for s in samples) / len(samples), 4)}


if __name__ == "__main__":
    main(parse_args())
