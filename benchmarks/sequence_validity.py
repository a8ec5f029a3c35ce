"""Exact validity of generated sequences against the number of function evaluations (NFE): binary flow matching
through bits vs same-budget token-level peers (uniform and masked diffusion, autoregressive), on the bundled
arithmetic task ("17+25=42").

    python -m benchmarks.sequence_validity [--max_operand 19] [--steps 2500] [--output_dir benchmarks/results]
    python -m benchmarks.sequence_validity --smoke --output_dir /tmp/seq      # tiny sizes, seconds (the test runs this)
    python -m benchmarks.sequence_validity --across_seeds RUN.json [RUN.json ...] --output_dir DIR   # mean ± std

Data: every statement ``a+b=c`` with ``a, b`` in [0, --max_operand]; a fixed 10% of them is held out of training,
so "novel" = valid and not a training statement. Character tokenizer ([PAD], [UNK], digits, "+", "="), sequences
right-padded to the longest statement. The diffusion methods use the same `transformers` encoder (`SequenceBackbone`:
BERT of --hidden_size x --num_layers with the timestep embedding added at every position), the autoregressive one a
GPT-2 of the same size; all the same steps, batch, Adam
learning-rate schedule (a 5% warm-up, then cosine decay to 0), data order and one CPU thread; they differ only in what
a position carries:

- ours (BCE): the bits of the token id (4 bits for 14 ids), the sequence script's recipe (`SEQUENCE_RECIPE`: per-bit
  logits, x-space cross-entropy, logit(sigma) ~ N(0, 0.5)), sampled with `BinaryFlowSequencePipeline` (Euler,
  `num_inference_steps` = NFE, threshold at the end);
- ours (BCE, uniform sigma): the same under uniform sigma, the paper's recipe and this benchmark's earlier default;
- ours (BCE, known tokens): the same with a `known_conditioning` denoiser, trained to read given tokens exactly
  (half the sequences are given their positions at a random rate, `sample_known_mask`), which infilling uses;
- ours (BCE, known tokens and spans): the same, with half of the given sequences given all but one random span
  (`sample_known_mask(span_fraction=0.5)`), the shape of an infill prompt: the sequence script's default;
- ours (BCE, known tokens, Heun): the same model sampled with Heun's solver, its N steps taking 2N - 1 of the NFE;
- ours (BCE, known tokens, mixed sigma, Heun): trained with a third of the sigmas uniform (`uniform_fraction`
  1/3, the density that covers both ends on the exact distributions), sampled with Heun;
- ours (BCE, known tokens, corrector s_churn 4 / 16 / 64): the known-tokens model (one training, shared with it when
  both run) sampled with the scheduler's stochastic corrector (`s_churn`, window sigma in [0.05, 0.7]); likewise
  ours (BCE, known tokens and spans, corrector s_churn 64), the sequence script's default model with its earlier
  sampler, and ours (BCE, known tokens and spans, corrector s_churn 64, shift 0.25), with the sampler it saves; and
  ours (BCE, known tokens, corrector s_churn 64, s_tmax 0.9 / 1), the window reaching further to the noise end,
  and ours (BCE, known tokens, corrector s_churn 64, shift 0.25 / 0.5 / 2 / 3), its grid moved by `shift`
  (ours (BCE, known tokens, shift 0.5): Euler on such a grid);
- ours (MSE): the same as ours (BCE) with x-prediction and x-space MSE;
- the token-level peers of `sequence_peers.py`, same backbone width and depth, token embeddings in and logits over
  the vocabulary out: D3PM uniform-state diffusion sampled with diffusers' `DiscreteDDIMScheduler` (NFE steps,
  temperature 1), masked (absorbing-state) diffusion with MDLM's loss and ancestral sampler (NFE steps), and an
  autoregressive model from a `transformers` GPT-2 config (from scratch), which always takes one evaluation per
  position and is reported at that NFE.

Per method and NFE: the valid fraction of --num_samples sequences (exact checker) with its standard error, the
novel-valid fraction, distinct valid statements, and seconds per sample. A non-finite training loss stops that
method's training (recorded as diverged); an NFE whose sampling the scheduler refuses is recorded as failed.
Writes sequence_validity.json, sequence_validity.md and sequence_validity.png into --output_dir. --across_seeds
summarises finished runs of one task on several seeds instead (sequence_validity_seeds.json, .md, .png). With
--cache_dir each trained model is kept (weights and training record), and a later run with the same training settings
loads it instead of training again, e.g. to sample it another way.
"""

import argparse
import json
import math
import os
import platform
import random
import re
import time
from dataclasses import replace
from pathlib import Path

import torch

from diffusers_binflow import BinaryFlowMatchScheduler
from diffusers_binflow.pipelines import BinaryFlowSequencePipeline
from diffusers_binflow.sequences.codec import ids_to_texts
from diffusers_binflow.sequences import (
    SEQUENCE_TASKS,
    BitSequenceTransformer,
    get_task,
    known_tokens_for_training,
    tokenize_to_length,
    train_tokenizer,
    valid_fraction,
)
from diffusers_binflow.training import SEQUENCE_RECIPE, flow_matching_loss

from .digit_runs import steps_for
from .reporting import command_line, mean_std, pyplot, sample_or_failure, write_results
from .sequence_peers import NUM_TRAIN_TIMESTEPS, build_peer, peer_loss, sample_peer
from .training_loop import train_loop

KNOWN_TOKENS = dict(kind="bits", recipe=SEQUENCE_RECIPE, known_probability=0.5)
# Self-conditioning (Bit Diffusion): the denoiser also sees its previous estimate, trained with it on half the batches.
SELF_CONDITIONED = {**KNOWN_TOKENS, "recipe": replace(SEQUENCE_RECIPE, self_conditioning=True)}
# Half the known-token batches reveal contiguous spans instead (prefix completion, "a+b=" -> c): the script's model.
KNOWN_SPANS = {**KNOWN_TOKENS, "known_span_fraction": 0.5}
METHODS = {
    "ours (BCE)": dict(kind="bits", recipe=SEQUENCE_RECIPE),
    "ours (BCE, uniform sigma)": dict(kind="bits", recipe=replace(SEQUENCE_RECIPE, timestep_sampling="uniform")),
    "ours (BCE, known tokens)": KNOWN_TOKENS,
    "ours (BCE, known tokens and spans)": KNOWN_SPANS,
    # Samplers of the known-tokens model: they share its training when run with it ("trained_as").
    "ours (BCE, known tokens, Heun)": {**KNOWN_TOKENS, "solver": "heun", "trained_as": "ours (BCE, known tokens)"},
    "ours (BCE, known tokens, mixed sigma, Heun)": {**KNOWN_TOKENS, "recipe": replace(SEQUENCE_RECIPE,
                                                                                      uniform_fraction=1 / 3),
                                                    "solver": "heun"},
    # The stochastic corrector (the scheduler's s_churn, window [0.05, 0.7])
    **{f"ours (BCE, known tokens, corrector s_churn {churn})": {**KNOWN_TOKENS, "s_churn": churn,
                                                                 "trained_as": "ours (BCE, known tokens)"}
       for churn in (4, 16, 64)},
    # The corrector's window reaching further towards the noise end, where global constraints (Sudoku) are decided.
    **{f"ours (BCE, known tokens, corrector s_churn 64, s_tmax {tmax:g})": {
        **KNOWN_TOKENS, "s_churn": 64, "s_tmax": tmax, "trained_as": "ours (BCE, known tokens)"}
       for tmax in (0.9, 1.0)},
    # The corrector on a grid moved towards noise (shift > 1) or towards the data (shift < 1), `set_timesteps`'s shift;
    # and Euler on the grid moved towards the data, to tell the grid's part from the corrector's.
    "ours (BCE, known tokens, shift 0.5)": {**KNOWN_TOKENS, "shift": 0.5, "trained_as": "ours (BCE, known tokens)"},
    **{f"ours (BCE, known tokens, corrector s_churn 64, shift {shift:g})": {
        **KNOWN_TOKENS, "s_churn": 64, "shift": shift, "trained_as": "ours (BCE, known tokens)"}
       for shift in (0.25, 0.5, 2.0, 3.0)},
    # The sequence script's default model: the spans model with the corrector on the uniform grid (its earlier sampler)
    "ours (BCE, known tokens and spans, corrector s_churn 64)": {
        **KNOWN_SPANS, "s_churn": 64, "trained_as": "ours (BCE, known tokens and spans)"},
    # and on the grid moved towards the data (`SEQUENCE_SAMPLING_SHIFT`), the sampler its pipelines save.
    "ours (BCE, known tokens and spans, corrector s_churn 64, shift 0.25)": {
        **KNOWN_SPANS, "s_churn": 64, "shift": 0.25, "trained_as": "ours (BCE, known tokens and spans)"},
    # The self-conditioned model with Euler and with the script's sampler.
    "ours (BCE, known tokens, self-conditioning)": SELF_CONDITIONED,
    "ours (BCE, known tokens, self-conditioning, corrector s_churn 64, shift 0.25)": {
        **SELF_CONDITIONED, "s_churn": 64, "shift": 0.25, "trained_as": "ours (BCE, known tokens, self-conditioning)"},
    # The script's model self-conditioned, with Euler and with the script's sampler.
    "ours (BCE, known tokens and spans, self-conditioning)": {**KNOWN_SPANS, "recipe": SELF_CONDITIONED["recipe"]},
    "ours (BCE, known tokens and spans, self-conditioning, corrector s_churn 64, shift 0.25)": {
        **KNOWN_SPANS, "recipe": SELF_CONDITIONED["recipe"], "s_churn": 64, "shift": 0.25,
        "trained_as": "ours (BCE, known tokens and spans, self-conditioning)"},
    "ours (MSE)": dict(kind="bits", recipe=replace(SEQUENCE_RECIPE, prediction_type="sample", loss_type="mse")),
    "D3PM-uniform (DiscreteDDIM)": dict(kind="uniform"),
    "masked diffusion (MDLM loss)": dict(kind="masked"),
    "autoregressive (GPT-2 config)": dict(kind="autoregressive"),
}


def method_loss(method: dict, vocab_size: int):
    """The loss of `train_loop` for `method`: the library's loss on the bits of the token ids, or the baseline's."""
    if method["kind"] != "bits":
        return lambda model, batch, generator: peer_loss(method["kind"], model, batch, vocab_size, generator)
    config = replace(method["recipe"], num_train_timesteps=NUM_TRAIN_TIMESTEPS)

    def loss(model, batch, generator):
        bits = model.codec.encode(batch)
        given = known_tokens_for_training(bits, method.get("known_probability", 0), config.bit_scale, generator,
                                          method.get("known_span_fraction", 0.0))
        return flow_matching_loss(model, bits, config, generator=generator, model_kwargs=given).loss

    return loss


def train(method: dict, token_ids: torch.Tensor, vocab_size: int, length: int, args):
    """Adam with a short warm-up, cosine decay and clipping, the same initial backbone, data order and seeds for every
    method (a constant rate leaves the loss on a noise floor: on 20 statements 2000 decayed steps reached a lower
    loss than 4000 constant ones).
    Returns the trained model and its record (loss curve: an EMA of the loss every 5% of the steps)."""
    curve, running, start = [], None, time.perf_counter()
    every = max(1, args.steps // 20)

    def observe(step: int, value: float, _):
        nonlocal running
        running = value if running is None else 0.98 * running + 0.02 * value
        if (step + 1) % every == 0 or step + 1 == args.steps:
            curve.append({"step": step + 1, "loss_ema": round(running, 5),
                          "seconds": round(time.perf_counter() - start, 1)})
            print(f"  step {step + 1}: loss {running:.4f} ({curve[-1]['seconds']} s)", flush=True)

    training = train_loop(lambda: build_model(method, vocab_size, length, args), method_loss(method, vocab_size),
                          lambda generator: token_ids[torch.randint(0, len(token_ids), (args.batch_size,),
                                                                    generator=generator)],
                          args.steps, seed=args.seed, noise_seed=args.seed + 1, lr=args.learning_rate,
                          cosine_decay=args.cosine_decay, warmup_steps=max(1, args.steps // 20), max_grad_norm=1.0,
                          observe=observe)
    return training.model, {"train_seconds": round(training.train_seconds, 1), "diverged": training.diverged,
                            "final_loss_ema": None if running is None else round(running, 5), "loss_curve": curve}


# The settings that decide a training: a cached model is reused only by a run that agrees on all of them.
TRAINING_SETTINGS = ("task", "max_operand", "max_length", "steps", "batch_size", "learning_rate", "cosine_decay",
                     "hidden_size", "num_layers", "num_heads", "seed")


def train_or_load(training_name: str, token_ids: torch.Tensor, vocab_size: int, length: int, args):
    """`train` the method `training_name`, or with --cache_dir load the model this very training left there before
    (its weights and record); a model cached under other settings is refused, never reused."""
    method = METHODS[training_name]
    if args.cache_dir is None:
        return train(method, token_ids, vocab_size, length, args)
    settings = {key: getattr(args, key) for key in TRAINING_SETTINGS}
    slug = re.sub(r"[^a-z0-9]+", "-", training_name.lower()).strip("-")
    folder = Path(args.cache_dir) / slug / f"{args.task}-seed{args.seed}-steps{args.steps}"
    if (folder / "run.json").is_file():
        cached = json.loads((folder / "run.json").read_text())
        if cached["settings"] != settings:
            differ = sorted(k for k in settings if cached["settings"].get(k) != settings[k])
            raise SystemExit(f"{folder} holds a model trained with other settings ({', '.join(differ)}); pass "
                             "another --cache_dir or delete it.")
        model = build_model(method, vocab_size, length, args)
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        print(f"  loaded from {folder}", flush=True)
        return model.eval(), cached["record"]
    model, record = train(method, token_ids, vocab_size, length, args)
    folder.mkdir(parents=True, exist_ok=True)
    # Each file whole or not at all (written aside, then renamed), run.json last: a run killed while saving leaves no
    # record, so the model is trained again; two runs saving the same training at once leave one complete copy.
    aside = f".{os.getpid()}.tmp"
    torch.save(model.state_dict(), folder / f"model.pt{aside}")
    (folder / f"model.pt{aside}").replace(folder / "model.pt")
    (folder / f"run.json{aside}").write_text(json.dumps({"settings": settings, "record": record}, indent=1))
    (folder / f"run.json{aside}").replace(folder / "run.json")
    return model, record


def evaluate(method: dict, model, tokenizer, task, train_texts: set, prompts: dict, length: int, nfe: int,
             args) -> dict:
    """Generate --num_samples sequences in batches with `nfe` model evaluations each and score them exactly; then
    complete the infill `prompts` with the same budget."""
    generator = torch.Generator().manual_seed(args.seed + 1000 + nfe)
    texts, start = [], time.perf_counter()
    for first in range(0, args.num_samples, args.sample_batch_size):
        n = min(args.sample_batch_size, args.num_samples - first)
        batch, failed = sample_or_failure(lambda: generate(method, model, tokenizer, n, length, nfe, generator))
        if failed is not None:
            return {"nfe": nfe, "failed": failed}
        texts += batch
    seconds = time.perf_counter() - start
    completions, failed = sample_or_failure(lambda: generate(method, model, tokenizer, len(prompts["ids"]), length,
                                                             nfe, generator, prompts["ids"], prompts["generate"]))
    if failed is not None:
        return {"nfe": nfe, "failed": failed}
    valid = [task.is_valid(text) for text in texts]
    p = sum(valid) / len(texts)
    return {"nfe": nfe, "valid_fraction": round(p, 4), "standard_error": round(math.sqrt(p * (1 - p) / len(texts)), 4),
            "novel_valid_fraction": round(sum(v and t not in train_texts for v, t in zip(valid, texts)) / len(texts), 4),
            "distinct_valid": len({t for v, t in zip(valid, texts) if v}),
            "infill_accuracy": round(valid_fraction(task, completions), 4),
            "seconds_per_sample": round(seconds / len(texts), 6), "examples": texts[:8],
            "infill_examples": completions[:4]}


def generate(method: dict, model, tokenizer, n: int, length: int, nfe: int, generator: torch.Generator,
             known: torch.Tensor | None = None, to_generate: torch.Tensor | None = None) -> list[str]:
    """`n` texts from `method` with `nfe` evaluations; with `known` ids (n, L), only where `to_generate` is True."""
    if method["kind"] != "bits":
        keep = None if known is None else ~to_generate
        ids = sample_peer(method["kind"], model, n, length, len(tokenizer), nfe, generator, known, keep)
        return ids_to_texts(tokenizer, ids)  # as the pipeline decodes: unk stays visible
    solver = method.get("solver", "euler")
    sampler = {key: method[key] for key in ("s_churn", "s_tmax", "shift") if key in method}
    scheduler = BinaryFlowMatchScheduler(prediction_type=method["recipe"].prediction_type, solver=solver, **sampler)
    pipe = BinaryFlowSequencePipeline(denoiser=model, scheduler=scheduler, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    conditioning = {} if known is None else {"input_ids": known, "infill_mask": to_generate.long()}
    return pipe(batch_size=n, sequence_length=length, num_inference_steps=steps_for(nfe, solver=solver),
                generator=generator, **conditioning).sequences


def infill_prompts(task, texts: list[str], tokenizer, length: int, seed: int) -> dict:
    """Held-out `texts` with part of each to fill in: the result of a statement (after "="), the second half of a
    bracket string (from position len // 2, padding included), or 8 random cells of a Sudoku grid. Character
    tokens, so a character's index is its position. Returns ``{"ids": (N, L), "generate": (N, L) bool}``."""
    ids = tokenize_to_length(tokenizer, texts, length)
    to_generate = torch.zeros(ids.shape, dtype=torch.bool)
    rng = random.Random(seed)
    for row, text in enumerate(texts):
        if task.name == "arithmetic":
            to_generate[row, text.index("=") + 1:] = True
        elif task.name == "brackets":
            to_generate[row, len(text) // 2:] = True
        else:
            to_generate[row, rng.sample(range(len(text)), 8)] = True
    return {"ids": ids, "generate": to_generate}


def build_model(method: dict, vocab_size: int, length: int, args):
    size = dict(hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads)
    if method["kind"] == "bits":
        return BitSequenceTransformer(vocab_size=vocab_size, max_length=length,
                                      known_conditioning="known_probability" in method,
                                      self_conditioning=method["recipe"].self_conditioning, **size)
    return build_peer(method["kind"], vocab_size, length, **size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(SEQUENCE_TASKS), default="arithmetic")
    parser.add_argument("--max_operand", type=int, default=19, help="arithmetic: operands in [0, this]")
    parser.add_argument("--max_length", type=int, default=16, help="brackets: the longest string")
    parser.add_argument("--num_infill", type=int, default=200, help="held-out texts to complete per NFE (at most)")
    parser.add_argument("--infill_repeats", type=int, default=1,
                        help="Independent completions of each infill prompt (the accuracy is their mean: a few dozen "
                             "held-out prompts give a noisy figure with one completion each).")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--cosine_decay", action=argparse.BooleanOptionalAction, default=True,
                        help="Decay the learning rate to 0 after the warm-up (--no-cosine_decay: constant).")
    parser.add_argument("--hidden_size", type=int, default=96)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--sample_batch_size", type=int, default=500)
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                        help="Default: ours (BCE), ours (BCE, known tokens) and the peers; --smoke runs all. With "
                             "--combine or --across_seeds: take these methods only (default: every method of the "
                             "runs).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", default="benchmarks/results")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes for a quick check of the whole run.")
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="Merge the methods of runs with the same settings (e.g. run in parallel, one method "
                             "each) into --output_dir instead of running.")
    parser.add_argument("--cache_dir", default=None,
                        help="Keep each trained model here and load it, instead of training, in a later run with the "
                             "same training settings (default: no cache).")
    parser.add_argument("--across_seeds", nargs="+", metavar="JSON",
                        help="Summarise finished runs of the same task and settings on different --seed (a seed's "
                             "methods may come from several runs) as mean ± std over the seeds of each method, into "
                             "--output_dir (sequence_validity_seeds.*) instead of running.")
    args = parser.parse_args(argv)
    if args.infill_repeats < 1:
        parser.error(f"--infill_repeats must be at least 1, got {args.infill_repeats}.")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.combine:
        write_outputs(combine([json.loads(Path(path).read_text()) for path in args.combine], args.methods),
                      output_dir)
        return
    if args.across_seeds:
        summary = across_seeds({path: json.loads(Path(path).read_text()) for path in args.across_seeds},
                               args.methods)
        summary["command"] = command_line(__spec__.name, argv)
        write_results(output_dir, "sequence_validity_seeds", summary, seeds_markdown(summary),
                      lambda path: plot(summary, path))
        return
    if args.smoke:
        args.max_operand, args.steps, args.batch_size, args.hidden_size, args.num_layers = 9, 4, 16, 32, 1
        args.num_heads, args.nfe, args.num_samples, args.sample_batch_size = 2, [1, 4], 20, 20
    if args.methods is None:
        args.methods = [name for name in METHODS if args.smoke or not name.startswith("ours (")
                        or name in ("ours (BCE)", "ours (BCE, known tokens)")]
    torch.set_num_threads(args.threads)

    task = get_task(args.task, **{"arithmetic": {"max_operand": args.max_operand},
                                  "brackets": {"max_length": args.max_length}}.get(args.task, {}))
    train_texts, heldout_texts = task.texts("train"), task.texts("heldout")
    tokenizer = train_tokenizer(train_texts + heldout_texts, "char")
    length = max(map(len, train_texts + heldout_texts))
    token_ids = tokenize_to_length(tokenizer, train_texts, length)
    vocab_size = len(tokenizer)
    prompts = infill_prompts(task, heldout_texts[:args.num_infill], tokenizer, length, args.seed)
    num_prompts = len(prompts["ids"])
    prompts = {key: value.repeat_interleave(args.infill_repeats, 0) for key, value in prompts.items()}
    result = {
        "command": command_line(__spec__.name, argv),
        # Where models are cached and what a summary reads are not settings (runs with and without them combine).
        "config": {k: v for k, v in vars(args).items() if k not in ("output_dir", "cache_dir", "across_seeds")},
        "machine": {"cpu_count": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "platform": platform.platform()},
        "data": {"task": task.name, "train_statements": len(train_texts), "heldout_statements": len(heldout_texts),
                 "infill_prompts": num_prompts, "infill_repeats": args.infill_repeats,
                 "vocab_size": vocab_size, "sequence_length": length},
        "methods": {}, "complete": False,
    }
    start = time.perf_counter()
    trained = {}  # methods that differ only in the sampler share one training ("trained_as")
    for name in args.methods:
        method = METHODS[name]
        print(f"{name}:", flush=True)
        training_name = method.get("trained_as", name)
        if training_name not in trained:
            trained[training_name] = train_or_load(training_name, token_ids, vocab_size, length, args)
        model, record = trained[training_name]
        entry = {"num_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad), **record}
        print(f"  {entry['num_parameters']:,} parameters, diverged: {record['diverged']}", flush=True)
        entry["by_nfe"] = []
        for nfe in nfes_of(name, args.nfe, result["data"]):
            entry["by_nfe"].append(evaluate(method, model, tokenizer, task, set(train_texts), prompts, length, nfe,
                                            args))
            row = entry["by_nfe"][-1]
            print(f"  NFE {nfe}: sampling failed: {row['failed']}" if "failed" in row else
                  f"  NFE {nfe}: valid {row['valid_fraction']:.3f}, novel {row['novel_valid_fraction']:.3f}, "
                  f"infill {row['infill_accuracy']:.3f}, "
                  f"{row['seconds_per_sample'] * 1000:.2f} ms/sample", flush=True)
        result["methods"][name] = entry
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        write_outputs(result, output_dir)
    result["complete"] = True
    write_outputs(result, output_dir)
    print(markdown(result))


def settings_of(result: dict, ignore=("methods",)) -> dict:
    """A run's settings without the keys in `ignore`; runs from before --infill_repeats completed each prompt once."""
    return {"infill_repeats": 1, **{k: v for k, v in result["config"].items() if k not in ignore}}


def combine(results: list[dict], methods: list[str] | None = None) -> dict:
    """One result from runs that differ only in their methods; every method keeps the run that trained it. With
    `methods`, those alone (one run's method can so be taken out on its own)."""
    settings = [settings_of(r) for r in results]
    if any(s != settings[0] for s in settings):
        raise ValueError("Only runs with the same settings (other than --methods) can be combined.")
    check_methods_present(methods, results)
    kept = {name: entry for r in results for name, entry in r["methods"].items() if methods is None or name in methods}
    return {**results[0], "command": " ; ".join(r["command"] for r in results), "methods": kept,
            "config": {**results[0]["config"], "methods": list(kept)},
            "wall_seconds": max(r["wall_seconds"] for r in results),
            "complete": all(len(e["by_nfe"]) == len(nfes_of(name, settings[0]["nfe"], results[0]["data"]))
                            for name, e in kept.items())}


def check_methods_present(methods: list[str] | None, results) -> None:
    """Refuse a --methods choice that names a method none of `results` holds: a summary without it would look whole."""
    missing = sorted(set(methods or ()) - {name for r in results for name in r["methods"]})
    if missing:
        raise ValueError(f"No run given holds {', '.join(map(repr, missing))}.")


SEED_SCORES = {"valid": "valid_fraction", "novel valid": "novel_valid_fraction", "infill": "infill_accuracy"}


def across_seeds(runs: dict[str, dict], methods: list[str] | None = None) -> dict:
    """Per method and NFE, the mean ± std over seeds of the valid, novel-valid and infill fractions, from finished
    `runs` (path -> result) that differ only in --seed, --methods and --infill_repeats; with `methods`, of those
    alone (a run's other methods are left out, unchecked).

    A method may appear in several runs of one seed only if they agree on every valid fraction (training and
    sampling are deterministic for a seed, so a disagreement means different code or settings: refused); the run
    with more infill repeats then gives the infill figure. Failed samplings count as missing (reported per NFE)."""
    ignore = ("methods", "seed", "infill_repeats")
    paths = list(runs)
    for path in paths:
        if not runs[path].get("complete", False):
            raise ValueError(f"{path} is a partial run (not every method finished); summarise finished runs only.")
        if settings_of(runs[path], ignore) != settings_of(runs[paths[0]], ignore):
            raise ValueError(f"{path} has other settings than {paths[0]} (only --seed, --methods and "
                             "--infill_repeats may differ).")
    check_methods_present(methods, runs.values())
    chosen = {}  # (method, seed) -> (path, entry)
    for path in paths:
        seed = runs[path]["config"]["seed"]
        for name, entry in runs[path]["methods"].items():
            if methods is not None and name not in methods:
                continue
            if (name, seed) in chosen:
                other_path, other = chosen[name, seed]
                if valid_by_nfe(other) != valid_by_nfe(entry):
                    raise ValueError(f"{name!r} on seed {seed} differs between {other_path} and {path}; pass one.")
                if infill_repeats(runs[path]) <= infill_repeats(runs[other_path]):
                    continue
            chosen[name, seed] = (path, entry)
    by_method = {}
    for (name, seed), (path, entry) in chosen.items():
        by_method.setdefault(name, {"seeds": [], "runs": {}, "by_nfe": {}})
        by_method[name]["seeds"].append(seed)
        by_method[name]["runs"][str(seed)] = path
        for row in entry["by_nfe"]:
            by_method[name]["by_nfe"].setdefault(row["nfe"], []).append({"seed": seed, **row})
    for name, method in by_method.items():
        method["seeds"].sort()
        method["by_nfe"] = [{"nfe": nfe, "seeds": [r["seed"] for r in rows],
                             "failed": sum("failed" in r for r in rows),
                             **{score: mean_std([r.get(key) for r in rows]) for score, key in SEED_SCORES.items()},
                             "valid_per_seed": {str(r["seed"]): r.get("valid_fraction") for r in rows}}
                            for nfe, rows in sorted(method["by_nfe"].items())]
    first = runs[paths[0]]
    return {"runs": {path: runs[path]["command"] for path in paths}, "config": settings_of(first, ignore),
            "data": first["data"], "methods": by_method}


def fraction(stat: dict) -> str:
    """A `mean_std` of fractions as "0.955 ± 0.018" (one seed: the value alone)."""
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat["n"] > 1 else "")


def valid_by_nfe(entry: dict) -> dict:
    return {row["nfe"]: row.get("valid_fraction") for row in entry["by_nfe"]}


def infill_repeats(result: dict) -> int:
    return result["data"].get("infill_repeats", 1)


def seeds_markdown(summary: dict) -> str:
    config, data = summary["config"], summary["data"]
    lines = [f"# Exact validity vs NFE on {TASK_TITLES[data.get('task', 'arithmetic')]}, mean ± std over seeds", "",
             f"Command: `{summary['command']}`  ",
             f"Task: {task_description(config, data)}; {config['steps']} Adam steps of {config['batch_size']}, "
             f"{config['num_samples']} samples per NFE and seed. Each cell: mean ± std over the seeds in the "
             "method's row (population std; a seed whose sampling failed at an NFE is left out and counted).", "",
             "| method | seeds | " + " | ".join(f"NFE {n}" for n in config["nfe"]) + " | at its own NFE |",
             "|---|---|" + "---|" * (len(config["nfe"]) + 1)]
    for name, method in summary["methods"].items():
        cells = {r["nfe"]: fraction(r["valid"]) + (f" ({r['failed']} failed)" if r["failed"] else "")
                 for r in method["by_nfe"]}
        lines.append(f"| {name} | {', '.join(map(str, method['seeds']))} | " + nfe_cells(cells, config["nfe"]))
    lines += ["", "| method | NFE | seeds | valid | novel valid | infill | valid per seed |",
              "|---|---|---|---|---|---|---|"]
    for name, method in summary["methods"].items():
        for r in method["by_nfe"]:
            per_seed = ", ".join(f"{seed}: {v:.3f}" for seed, v in r["valid_per_seed"].items() if v is not None)
            lines.append(f"| {name} | {r['nfe']} | {len(r['seeds'])} | {fraction(r['valid'])} | "
                         f"{fraction(r['novel valid'])} | {fraction(r['infill'])} | {per_seed} |")
    lines += ["", "Runs summarised:", *(f"- `{path}`: `{command}`" for path, command in summary["runs"].items())]
    return "\n".join(lines)


def nfe_cells(cells: dict, nfes: list[int]) -> str:
    """The end of a table row: a cell per NFE asked for, then the cells at a method's own NFE (the autoregressive
    model's one evaluation per position) in the last column."""
    own = "; ".join(f"{cell} at NFE {n}" for n, cell in cells.items() if n not in nfes)
    return " | ".join(cells.get(n, "") for n in nfes) + f" | {own} |"


def nfes_of(name: str, nfes: list[int], data: dict) -> list[int]:
    """The NFEs a method is sampled at: the budgets asked for, or one evaluation per position (autoregressive)."""
    return [data["sequence_length"]] if METHODS[name]["kind"] == "autoregressive" else nfes


def write_outputs(result: dict, output_dir: Path):
    """sequence_validity.json, .md and .png in `output_dir`."""
    write_results(output_dir, "sequence_validity", result, markdown(result), lambda path: plot(result, path))


def markdown(result: dict) -> str:
    config, data, machine = result["config"], result["data"], result["machine"]
    lines = [
        f"# Exact validity vs NFE on {TASK_TITLES[data.get('task', 'arithmetic')]} (ours through bits vs "
        "token-level peers)", "",
        "Command" + (" (runs in parallel, one method each, merged with `--combine`)" if " ; " in result["command"]
                     else "") + f": `{result['command']}`  ",
        f"Task: {task_description(config, data)}; {data['train_statements']} training texts, "
        f"{data['heldout_statements']} held out; {data['vocab_size']} character tokens, length "
        f"{data['sequence_length']}. Every method: encoder (GPT-2 for the autoregressive one) "
        f"{config['hidden_size']}x{config['num_layers']} "
        f"({config['num_heads']} heads), {config['steps']} Adam steps of {config['batch_size']} (lr "
        f"{config['learning_rate']}{cosine_note(config)}), {config['num_samples']} samples per NFE. Wall time "
        f"{result['wall_seconds']} s on {machine['threads']} thread(s) of a {machine['cpu_count']}-core CPU machine, "
        f"torch {machine['torch']}."
        + ("" if result["complete"] else " **Partial: not every method has finished.**"), "",
        "Valid: the exact checker accepts the text (standard error in brackets). Novel: valid and not a training "
        "text. Infill: the share of held-out texts, part given (the result after `=`, the second half of a bracket "
        "string, 8 cells of a grid to fill), completed validly with the same budget"
        + (f" (each of the {data['infill_prompts']} prompts completed {data['infill_repeats']} times independently; "
           "the mean)" if data.get("infill_repeats", 1) > 1 else f" ({data['infill_prompts']} prompts)")
        + ". s/sample: sampling wall time per sequence on one thread.", "",
        "| method | params | train s | final loss | " + " | ".join(f"NFE {n}" for n in config["nfe"])
        + " | at its own NFE |", "|---|---|---|---|" + "---|" * (len(config["nfe"]) + 1),
    ]
    for name, entry in result["methods"].items():
        cells = {r["nfe"]: "n/a (sampling failed)" if "failed" in r else
                 f"{r['valid_fraction']:.3f} ({r['standard_error']:.3f})" for r in entry["by_nfe"]}
        lines.append(f"| {name} | {entry['num_parameters']:,} | {entry['train_seconds']} | {entry['final_loss_ema']} | "
                     + nfe_cells(cells, config["nfe"]))
    lines += ["", "| method | NFE | valid | novel valid | distinct valid | infill | s/sample | examples |",
              "|---|---|---|---|---|---|---|---|"]
    for name, entry in result["methods"].items():
        for r in entry["by_nfe"]:
            if "failed" in r:
                lines.append(f"| {name} | {r['nfe']} | n/a (sampling failed) | | | | | |")
                continue
            examples = ", ".join(f"`{t}`" for t in r["examples"][:4])
            infill = f"{r['infill_accuracy']:.3f}" if "infill_accuracy" in r else "not measured"
            lines.append(f"| {name} | {r['nfe']} | {r['valid_fraction']:.3f} | {r['novel_valid_fraction']:.3f} | "
                         f"{r['distinct_valid']} | {infill} | {r['seconds_per_sample']:.5f} | {examples} |")
    return "\n".join(lines)


TASK_TITLES = {"arithmetic": "arithmetic statements", "brackets": "balanced brackets", "sudoku": "4x4 Sudoku grids"}


def task_description(config: dict, data: dict) -> str:
    """The task in words (results written before --task existed are arithmetic)."""
    task = data.get("task", "arithmetic")
    if task == "arithmetic":
        return f"`a+b=c`, a, b in [0, {config['max_operand']}]"
    if task == "brackets":
        return f"balanced strings over `()[]` of at most {config['max_length']} characters"
    return "solved 4x4 Sudoku grids, 16 digits row by row"


def cosine_note(config: dict) -> str:
    """How the rate moved after its warm-up; results written before --cosine_decay existed held it constant."""
    return ", cosine decay" if config.get("cosine_decay", False) else ", constant"


def plot(result: dict, path: Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, entry in result["methods"].items():
        points = [(r["nfe"], *valid_and_error(r)) for r in entry["by_nfe"]]
        points = [point for point in points if point[1] is not None]
        seeds = entry.get("seeds")  # a summary over seeds says how many each method had
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                    capsize=3, label=name if seeds is None else f"{name}, {len(seeds)} seed{'s' * (len(seeds) > 1)}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE (model evaluations per sample)")
    ax.set_ylabel("exact valid fraction")
    ax.set_ylim(0, 1)
    ax.set_title(f"{TASK_TITLES[result['data'].get('task', 'arithmetic')].capitalize()}: valid fraction vs NFE"
                 + (" (mean ± std over seeds)" if "runs" in result else ""))
    ax.grid(alpha=0.3)
    # below the axes: the method names are long, and inside the axes they cover the curves
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def valid_and_error(row: dict) -> tuple:
    """A row's valid fraction and error bar: a run's fraction and standard error, or a summary's mean and std over
    seeds; (None, None) where sampling failed."""
    if "valid" in row:
        return row["valid"]["mean"], row["valid"]["std"]
    return (None, None) if "failed" in row else (row["valid_fraction"], row["standard_error"])


if __name__ == "__main__":
    main()
