"""BER versus SNR of MIMO detectors: ZF, LMMSE, EP, ML, K-best and conditional binary flow matching (ours).

    python -m benchmarks.mimo_ber                 # full run: trains the models it lacks, then measures
    python -m benchmarks.mimo_ber --smoke         # seconds: tiny systems and models, a few thousand bits

Systems: 4x4 QPSK over i.i.d. and Kronecker-correlated (rho = 0.7) Rayleigh channels and with imperfect channel
knowledge (the receiver sees H + E, E i.i.d. CN(0, 0.02); 8 bits per channel use; exhaustive ML on the estimate is
the reference), 8x8 16-QAM (32 bits) and 16x16 QPSK (32 bits; K-best). The classical detectors are Sionna's but EP
(`diffusers_binflow.mimo.detectors`). With imperfect knowledge every detector, ours included, is fed the estimate as
if it were exact, or ("aware") as `channel_given_estimate` reads it knowing the error's variance, where ML is
optimal. Our models (BCE x-loss, MSE x-loss and the misaligned x-prediction + v-loss) are trained by
`train_scripts/train_mimo.py` into --models_dir (on the system's channel, estimate included) unless this run's
command already trained one there; the commands are recorded.
Ours is measured in two ways: one step (the denoiser's P(bit | y) at sigma = 1, thresholded) and as a list detector
over posterior samples (`aggregation="likelihood"`: the sample closest to y in ``||y - H s||^2``; on 4x4 QPSK also
`"app"`: each bit's posterior over the distinct samples); the NFE column counts network evaluations per channel use
(steps x samples).
Every detector sees the same channel realisations; a point stops at --min_errors bit errors, --max_bits bits, or
--max_seconds of detection time (recorded as `stopped_by`). SNR is per receive antenna, ``num_tx * Es / N0`` with
unit-energy symbols and CN(0, 1) channel entries (`diffusers_binflow.mimo.channel`). Writes mimo_ber.json, .md and
.png into --output_dir.
"""

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffusers_binflow.mimo import (
    expectation_propagation,
    get_modulation,
    k_best,
    lmmse,
    maximum_likelihood,
    zero_forcing,
)
from diffusers_binflow.mimo.evaluation import measure_ber
from diffusers_binflow.pipelines import BinaryFlowMIMOPipeline

from .reporting import command_line, pyplot, write_results

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "train_scripts" / "train_mimo.py"
TRAINED_BY = "benchmark_command.txt"  # in a model folder: the options that trained it
TARGET_BER = 1e-3
RECIPES = {  # name -> recipe options of train_mimo.py
    "bce": ["--prediction_type", "logits", "--loss_type", "bce"],
    "mse": ["--prediction_type", "sample", "--loss_type", "mse"],
    "vloss": ["--prediction_type", "sample", "--loss_type", "mse", "--loss_space", "v"],
}
COMMON_TRAIN = ["--lr_warmup_steps", "100", "--learning_rate", "1e-3", "--hidden_size", "64", "--num_layers", "3",
                "--num_heads", "4", "--checkpointing_steps", "500", "--eval_channel_uses", "2048", "--seed", "0"]
SMOKE_TRAIN = ["--hidden_size", "16", "--num_layers", "1", "--num_heads", "2", "--max_train_steps", "3",
               "--train_batch_size", "16", "--lr_warmup_steps", "1", "--eval_channel_uses", "16", "--eval_snr_db", "8"]


def systems(smoke: bool) -> list[dict]:
    """What is measured: antennas, SNR grid, the classic detectors and our (recipe, steps, samples) settings."""
    if smoke:
        return [
            dict(name="2x2 QPSK, rho 0.5", num_tx=2, num_rx=2, modulation="qpsk", snr_db=[4.0, 12.0],
                 channel={"correlation": 0.5},
                 classic=["zf", "lmmse", "ep", "ml", "kbest-4"], recipes=["bce", "mse"],
                 ours=[(1, 1, "mean"), (2, 4, "likelihood")],
                 train=["--max_train_steps", "3"]),
        ]
    return [
        dict(name="4x4 QPSK", num_tx=4, num_rx=4, modulation="qpsk", snr_db=[0.0, 4.0, 8.0, 12.0, 14.0, 16.0, 20.0],
             classic=["zf", "lmmse", "ep", "ml", "kbest-4"], recipes=["bce", "mse", "vloss"],
             ours=[(1, 1, "mean"), (4, 16, "likelihood"), (4, 16, "app")],
             train=["--train_batch_size", "256", "--max_train_steps", "10000", "--eval_snr_db", "12,16"]),
        dict(name="4x4 QPSK, rho 0.7", num_tx=4, num_rx=4, modulation="qpsk", channel={"correlation": 0.7},
             snr_db=[8.0, 12.0, 16.0, 20.0, 24.0], classic=["lmmse", "ep", "ml", "kbest-16"], recipes=["bce", "mse"],
             ours=[(1, 1, "mean"), (4, 16, "likelihood")],
             train=["--train_batch_size", "256", "--max_train_steps", "10000", "--eval_snr_db", "16,20"]),
        dict(name="4x4 QPSK, CSI error 0.02", num_tx=4, num_rx=4, modulation="qpsk", channel={"csi_error_var": 0.02},
             snr_db=[8.0, 12.0, 16.0, 20.0, 24.0], classic=["lmmse", "ep", "ml", "kbest-16"], recipes=["bce"],
             ours=[(1, 1, "mean"), (4, 16, "likelihood")],
             train=["--train_batch_size", "256", "--max_train_steps", "10000", "--eval_snr_db", "16,20"]),
        dict(name="4x4 QPSK, CSI error 0.02, aware", num_tx=4, num_rx=4, modulation="qpsk",
             channel={"csi_error_var": 0.02, "csi_aware": True}, snr_db=[8.0, 12.0, 16.0, 20.0, 24.0],
             classic=["lmmse", "ep", "ml", "kbest-16"], recipes=["bce"], ours=[(1, 1, "mean"), (4, 16, "likelihood")],
             train=["--train_batch_size", "256", "--max_train_steps", "10000", "--eval_snr_db", "16,20"]),
        dict(name="8x8 16-QAM", num_tx=8, num_rx=8, modulation="16qam", snr_db=[12.0, 16.0, 20.0, 24.0, 28.0],
             classic=["lmmse", "ep", "kbest-16", "kbest-64"], recipes=["bce"],
             ours=[(1, 1, "mean"), (2, 4, "likelihood"), (2, 16, "likelihood")],
             train=["--train_batch_size", "256", "--max_train_steps", "4000", "--snr_db_min", "8",
                    "--snr_db_max", "30", "--eval_snr_db", "16,24"]),
        dict(name="16x16 QPSK", num_tx=16, num_rx=16, modulation="qpsk", snr_db=[0.0, 4.0, 8.0, 12.0],
             classic=["lmmse", "ep", "kbest-4", "kbest-16", "kbest-64"], recipes=["bce"],
             ours=[(1, 1, "mean"), (2, 4, "likelihood")],
             train=["--train_batch_size", "128", "--max_train_steps", "800", "--eval_snr_db", "0,4,8,12"]),
    ]


def classic_detector(name: str, modulation):
    functions = {"zf": zero_forcing, "lmmse": lmmse, "ep": expectation_propagation, "ml": maximum_likelihood}
    if name.startswith("kbest-"):
        k = int(name.split("-")[1])
        return lambda y, H, n0: k_best(y, H, n0, modulation, k=k).bits
    return lambda y, H, n0: functions[name](y, H, n0, modulation).bits


def channel_options(system: dict) -> list[str]:
    """The system's channel as train_mimo.py options (a flag for a true switch)."""
    return [f"--{option}" if value is True else f"--{option}={value}"
            for option, value in system.get("channel", {}).items()]


def train_model(system: dict, recipe: str, models_dir: Path, smoke: bool, max_train_steps: int | None = None) -> dict:
    """Train (unless this very command already trained it) on the system's channel and return the command, the model
    folder and its training summary."""
    slug = system["name"].lower().replace(",", "").replace(" ", "-")
    folder = models_dir / f"{slug}-{recipe}"
    steps = [] if max_train_steps is None else ["--max_train_steps", str(max_train_steps)]  # the last one counts
    command = [sys.executable, str(TRAIN_SCRIPT), "--output_dir", str(folder), "--num_tx", str(system["num_tx"]),
               "--num_rx", str(system["num_rx"]), "--modulation", system["modulation"], *channel_options(system),
               *RECIPES[recipe], *COMMON_TRAIN, *system["train"], *(SMOKE_TRAIN if smoke else []), *steps]
    recorded = folder / TRAINED_BY
    if not (folder / "training_summary.json").is_file():
        print("training:", shlex.join(command), flush=True)
        subprocess.run(command, check=True, capture_output=smoke)
        recorded.write_text(shlex.join(command[2:]))
    elif not recorded.is_file() or recorded.read_text() != shlex.join(command[2:]):
        # Reusing a model trained otherwise (other steps, channel or recipe) would report it under this command.
        raise SystemExit(f"{folder} holds a model trained by another command than this run's ({recorded.name}: "
                         f"{recorded.read_text() if recorded.is_file() else 'absent'}); pass another --models_dir "
                         f"or delete it.")
    summary = json.loads((folder / "training_summary.json").read_text())
    return {"folder": str(folder), "command": shlex.join(command[1:]),
            **{k: summary[k] for k in ("optimizer_steps", "train_seconds", "num_parameters", "final_training_loss")}}


def selected(detector: str, choices: list[str] | None) -> bool:
    """Whether --detectors (None: all) selects `detector`, by its full label or by the label without its settings
    ("ours-bce" selects every "ours-bce (...)")."""
    return not choices or detector in choices or detector.split(" (")[0] in choices


def snr_at_target(points: list[dict], target: float = TARGET_BER) -> float | None:
    """SNR (dB) where the BER crosses `target`, interpolated linearly in log10(BER); None if not crossed."""
    points = sorted(points, key=lambda p: p["snr_db"])
    for a, b in zip(points, points[1:]):
        if a["ber"] >= target > b["ber"] and b["ber"] > 0:
            fraction = (math.log10(a["ber"]) - math.log10(target)) / (math.log10(a["ber"]) - math.log10(b["ber"]))
            return round(a["snr_db"] + fraction * (b["snr_db"] - a["snr_db"]), 2)
    return None


def run(args, argv=None) -> dict:
    """Train what is missing, then measure every selected detector; `argv` is recorded in the command."""
    start = time.perf_counter()
    result = {"command": command_line(__spec__.name, argv),
              "config": {"smoke": args.smoke, "min_errors": args.min_errors, "max_bits": args.max_bits,
                         "max_seconds": args.max_seconds, "batch_size": args.batch_size, "target_ber": TARGET_BER,
                         "snr_definition": "SNR per receive antenna = num_tx * Es / N0; Es = 1 per complex symbol, "
                                           "H entries CN(0, 1), noise CN(0, N0) per receive antenna"},
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "processor": platform.processor() or platform.machine()},
              "systems": []}
    for system in systems(args.smoke):
        if args.systems and system["name"] not in args.systems:
            continue
        system["snr_db"] = args.snr_db or system["snr_db"]
        modulation = get_modulation(system["modulation"])
        entry = {k: system[k] for k in ("name", "num_tx", "num_rx", "modulation", "snr_db")}
        entry["channel"] = system.get("channel", {})
        entry["num_bits"] = system["num_tx"] * modulation.bits_per_symbol
        labels = {(steps, samples, aggregation): f"{steps} step{'s' if steps > 1 else ''}"
                  + (f" x {samples}, {aggregation}" if samples > 1 else "")
                  for steps, samples, aggregation in system["ours"]}
        # Only the recipes with a selected detector are trained and loaded.
        recipes = [recipe for recipe in system["recipes"]
                   if any(selected(f"ours-{recipe} ({label})", args.detectors) for label in labels.values())]
        entry["models"] = {recipe: train_model(system, recipe, Path(args.models_dir), args.smoke, args.max_train_steps)
                           for recipe in recipes}
        detectors = [(name, 0, classic_detector(name, modulation)) for name in system["classic"]]
        for recipe in recipes:
            pipe = BinaryFlowMIMOPipeline.from_pretrained(entry["models"][recipe]["folder"])
            pipe.set_progress_bar_config(disable=True)
            for (steps, samples, aggregation), label in labels.items():
                detect = (lambda y, H, n0, pipe=pipe, steps=steps, samples=samples, aggregation=aggregation: pipe(
                    y, H, n0, num_inference_steps=steps, num_samples=samples, aggregation=aggregation,
                    generator=torch.Generator().manual_seed(0)).bits)
                detectors.append((f"ours-{recipe} ({label})", steps * samples, detect))
        entry["points"] = []
        detectors = [d for d in detectors if selected(d[0], args.detectors)]
        for name, nfe, detect in detectors:
            for snr in system["snr_db"]:
                measured = measure_ber(detect, system["num_tx"], system["num_rx"], modulation, snr,
                                       min_errors=args.min_errors, max_bits=args.max_bits, batch_size=args.batch_size,
                                       max_seconds=args.max_seconds, seed=args.seed, **entry["channel"])
                entry["points"].append({"detector": name, "nfe": nfe, **measured.to_dict()})
                print(f"{system['name']} {name} {snr:g} dB: BER {measured.ber:.3e} ({measured.bit_errors} errors / "
                      f"{measured.bits} bits, {measured.stopped_by})", flush=True)
        names = list(dict.fromkeys(p["detector"] for p in entry["points"]))
        entry["snr_at_target_ber"] = {n: snr_at_target([p for p in entry["points"] if p["detector"] == n])
                                      for n in names}
        entry["throughput"] = {n: round(sum(p["channel_uses"] for p in entry["points"] if p["detector"] == n)
                                        / max(sum(p["seconds"] for p in entry["points"] if p["detector"] == n), 1e-9),
                                        1) for n in names}
        result["systems"].append(entry)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def markdown(result: dict) -> str:
    lines = [f"# MIMO detection: BER vs SNR ({'smoke' if result['config']['smoke'] else 'full'} run)", "",
             f"Command: `{result['command']}` — wall time {result['wall_seconds']} s on {result['machine']['platform']}"
             f" ({result['machine']['cpu_count']} CPU cores, {result['machine']['torch_threads']} torch thread(s), torch {result['machine']['torch']}).", "",
             f"SNR: {result['config']['snr_definition']}. Each point: until {result['config']['min_errors']} bit "
             f"errors, {result['config']['max_bits']} bits or {result['config']['max_seconds']} s of detection "
             "time (`*`: stopped by the time cap; `†`: fewer than 200 errors).", ""]
    for entry in result["systems"]:
        names = list(dict.fromkeys(p["detector"] for p in entry["points"]))
        lines += [f"## {entry['name']} ({entry['num_bits']} bits per channel use)", "",
                  "| SNR (dB) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for snr in entry["snr_db"]:
            cells = []
            for name in names:
                p = next(p for p in entry["points"] if p["detector"] == name and p["snr_db"] == snr)
                mark = "*" if p["stopped_by"] == "time" else ("†" if p["bit_errors"] < 200 else "")
                cells.append(f"{p['ber']:.2e}{mark}")
            lines.append(f"| {snr:g} | " + " | ".join(cells) + " |")
        lines += ["", "| detector | NFE | SNR at BER 1e-3 (dB) | channel uses / s |", "|---|---|---|---|"]
        for name in names:
            nfe = next(p["nfe"] for p in entry["points"] if p["detector"] == name)
            lines.append(f"| {name} | {nfe or '-'} | {entry['snr_at_target_ber'][name] or '-'} | "
                         f"{entry['throughput'][name]} |")
        lines += ["", "| model | steps | train seconds | parameters | final loss | command |", "|---|---|---|---|---|---|"]
        for recipe, model in entry["models"].items():
            lines.append(f"| ours-{recipe} | {model['optimizer_steps']} | {model['train_seconds']} | "
                         f"{model['num_parameters']} | {model['final_training_loss']} | `{model['command']}` |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(result["systems"]), figsize=(6 * len(result["systems"]), 4.5), squeeze=False)
    for ax, entry in zip(axes[0], result["systems"]):
        for name in dict.fromkeys(p["detector"] for p in entry["points"]):
            points = [p for p in entry["points"] if p["detector"] == name and p["bit_errors"] > 0]
            ax.semilogy([p["snr_db"] for p in points], [p["ber"] for p in points], marker="o",
                        linestyle="--" if name.startswith("ours") else "-", label=name)
        ax.axhline(TARGET_BER, color="grey", linewidth=0.5)
        ax.set(title=entry["name"], xlabel="SNR per receive antenna (dB)", ylabel="BER")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--models_dir", default=str(ROOT / "outputs" / "mimo_ber"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--min_errors", type=int, default=200)
    parser.add_argument("--max_bits", type=int, default=1_000_000)
    parser.add_argument("--max_seconds", type=float, default=30.0, help="Detection-time cap per point.")
    parser.add_argument("--batch_size", type=int, default=4096, help="Channel uses per Monte Carlo batch.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--systems", nargs="+", default=None, help='Only these systems, e.g. "4x4 QPSK".')
    parser.add_argument("--detectors", nargs="+", default=None,
                        help='Only these detectors: classic names ("ml") or our labels without their settings '
                             '("ours-bce" selects every ours-bce row); only the recipes selected are trained.')
    parser.add_argument("--snr_db", type=float, nargs="+", default=None, help="Replace each system's SNR grid.")
    parser.add_argument("--max_train_steps", type=int, default=None,
                        help="Train each model this many steps instead of its system's (a doubling check).")
    args = parser.parse_args(argv)
    if args.max_train_steps is not None and args.max_train_steps < 1:
        parser.error(f"--max_train_steps must be at least 1, got {args.max_train_steps}.")
    if args.smoke:
        args.max_bits, args.batch_size, args.max_seconds = min(args.max_bits, 4096), min(args.batch_size, 256), 5.0
    result = run(args, argv)
    write_results(Path(args.output_dir), "mimo_ber", result, markdown(result), lambda path: plot(result, path))
    print(markdown(result))


if __name__ == "__main__":
    main()
