"""Cross-check of this package's own MIMO detectors against Sionna's on the same channel uses, before ours are
replaced by Sionna's (issue 15): BER with its binomial standard error, and the share of channel uses whose hard
decisions agree exactly.

    python -m benchmarks.mimo_crosscheck [--scale 1.0] [--output_dir benchmarks/results/mimo_crosscheck]
    python -m benchmarks.mimo_crosscheck --smoke --output_dir /tmp/crosscheck     # seconds

Channel uses come from `diffusers_binflow.mimo.simulate` (i.i.d. Rayleigh, SNR per receive antenna) and reach Sionna
through `sionna_bridge`. Pairs: ZF and LMMSE (`LinearDetector`, APP demapping), EP (`EPDetector` with Sionna's
defaults, l = 10 and beta = 0.9, and configured like ours: 5 updates weighted 0.5, i.e. l = 6, beta = 0.5), ML
(`MaximumLikelihoodDetector`; its max-log bits are the joint ML decision, as ours) and K-best
(`KBestDetector`, complex tree). Writes mimo_crosscheck.json and .md into --output_dir.
"""

import argparse
import math
import os
import platform
import time
import warnings
from pathlib import Path

import torch
from sionna.phy.mimo import EPDetector, KBestDetector, LinearDetector, MaximumLikelihoodDetector

from diffusers_binflow.mimo import expectation_propagation, k_best, lmmse, maximum_likelihood, simulate, zero_forcing
from diffusers_binflow.mimo.sionna_bridge import llrs_from_sionna, noise_covariance, real_to_complex

from .reporting import command_line, write_results

# (system, SNRs in dB, channel uses per SNR, detectors); ML is left out where it enumerates 2^16 vectors per use.
SYSTEMS = [
    ("4x4 QPSK", 4, 4, "qpsk", (8.0, 12.0, 16.0), (20000, 40000, 100000), ("zf", "lmmse", "ep", "ep-matched",
                                                                           "ml", "kbest16")),
    ("4x4 16-QAM", 4, 4, "16qam", (16.0, 20.0, 24.0), (5000, 10000, 20000), ("lmmse", "ep", "ep-matched", "kbest64")),
]


def detector_pair(name: str, num_tx: int, modulation: str):
    """(our detector, Sionna's detector) for `name`, each called on a real-valued batch."""
    bits_per_symbol = {"qpsk": 2, "16qam": 4}[modulation]
    if name in ("zf", "lmmse"):
        ours = {"zf": zero_forcing, "lmmse": lmmse}[name]
        sionna = LinearDetector(name, "bit", "app", "qam", bits_per_symbol)
    elif name == "ep":
        ours, sionna = expectation_propagation, EPDetector("bit", bits_per_symbol)
    elif name == "ep-matched":
        ours, sionna = expectation_propagation, EPDetector("bit", bits_per_symbol, l=6, beta=0.5)
    elif name == "ml":
        ours, sionna = maximum_likelihood, MaximumLikelihoodDetector("bit", "maxlog", num_tx, "qam", bits_per_symbol)
    else:
        k = int(name.removeprefix("kbest"))
        ours = lambda y, H, n0, mod: k_best(y, H, n0, mod, k=k)  # noqa: E731
        sionna = KBestDetector("bit", num_tx, k, "qam", bits_per_symbol)

    def run_sionna(y, H, noise_var, mod):
        y_c, H_c = real_to_complex(y, H, mod)
        return (llrs_from_sionna(sionna(y_c, H_c, noise_covariance(noise_var, y_c.shape[-1], y_c.dtype))) > 0).float()

    return (lambda y, H, n0, mod: ours(y, H, n0, mod).bits), run_sionna


def standard_error(p: float, n: int) -> float:
    """Binomial, over bits (optimistic: the bits of one channel use are correlated)."""
    return math.sqrt(p * (1 - p) / n)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply the channel uses per point.")
    parser.add_argument("--chunk", type=int, default=5000, help="Channel uses per batch.")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", default="benchmarks/results/mimo_crosscheck")
    parser.add_argument("--smoke", action="store_true", help="A few hundred channel uses per point.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.scale = 0.01
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="sionna")  # K-best's "k capped" notice on tiny systems
    generator = torch.Generator().manual_seed(args.seed)
    rows, start = [], time.perf_counter()
    for system, num_tx, num_rx, modulation, snrs, uses_per_snr, names in SYSTEMS:
        pairs = {name: detector_pair(name, num_tx, modulation) for name in names}
        for snr_db, uses in zip(snrs, uses_per_snr):
            uses = max(1, int(uses * args.scale))
            counts = {name: [0, 0, 0] for name in names}  # our errors, Sionna's errors, agreeing channel uses
            for first in range(0, uses, args.chunk):
                batch = simulate(min(args.chunk, uses - first), num_tx, num_rx, modulation, snr_db, generator=generator)
                for name, (ours, sionna) in pairs.items():
                    mine, theirs = (detect(batch.y, batch.H, batch.noise_var, modulation) for detect in (ours, sionna))
                    counts[name][0] += int((mine != batch.bits).sum())
                    counts[name][1] += int((theirs != batch.bits).sum())
                    counts[name][2] += int((mine == theirs).all(1).sum())
            num_bits = uses * batch.bits.shape[1]
            for name, (ours_errors, sionna_errors, agree) in counts.items():
                ber_ours, ber_sionna = ours_errors / num_bits, sionna_errors / num_bits
                rows.append({"system": system, "snr_db": snr_db, "detector": name, "channel_uses": uses,
                             "ber_ours": ber_ours, "se_ours": standard_error(ber_ours, num_bits),
                             "ber_sionna": ber_sionna, "se_sionna": standard_error(ber_sionna, num_bits),
                             "agreement": agree / uses})
                print(markdown_row(rows[-1]), flush=True)
    result = {"command": command_line(__spec__.name, argv), "config": vars(args) | {"output_dir": None},
              "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()},
              "wall_seconds": round(time.perf_counter() - start, 1), "rows": rows}
    write_results(Path(args.output_dir), "mimo_crosscheck", result, markdown(result))
    print(markdown(result))


def markdown_row(row: dict) -> str:
    diff = (row["ber_sionna"] - row["ber_ours"]) / max(math.hypot(row["se_ours"], row["se_sionna"]), 1e-300)
    return (f"| {row['system']} | {row['snr_db']:g} | {row['detector']} | {row['channel_uses']} | "
            f"{row['ber_ours']:.3e} ± {row['se_ours']:.1e} | {row['ber_sionna']:.3e} ± {row['se_sionna']:.1e} | "
            f"{diff:+.1f} | {row['agreement']:.4f} |")


def markdown(result: dict) -> str:
    return "\n".join([
        "# Our MIMO detectors against Sionna's, on the same channel uses", "",
        f"Command: `{result['command']}`  ",
        f"Wall time {result['wall_seconds']} s on one thread, torch {result['machine']['torch']}. "
        "BER ± its binomial standard error over bits; diff: (Sionna - ours) in standard errors; agree: share of "
        "channel uses whose hard bits are identical.", "",
        "| system | SNR dB | detector | channel uses | BER ours | BER Sionna | diff | agree |",
        "|---|---|---|---|---|---|---|---|",
        *map(markdown_row, result["rows"])])


if __name__ == "__main__":
    main()
