"""benchmarks/synthetic_tv.py: the smoke run writes well-formed results whose floors are the metrics' own."""

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from diffusers_binflow.metrics.distribution import finite_sample_floor

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic_tv.py"


def test_synthetic_tv_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--s_churn", "0", "4", "--output_dir", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "synthetic_tv.json").read_text())
    import synthetic_tv

    names = list(synthetic_tv.distributions())
    assert [(row["distribution"], row["s_churn"]) for row in result["rows"]] == [(n, c) for n in names for c in (0, 4)]
    for row in result["rows"]:
        assert row["num_samples"] == 300 and len(row["per_seed"]) == 1
        assert 0 <= row["scores"]["tv"]["mean"] <= 1 and 0 < row["floor"]["tv"] <= 1
        assert math.isclose(row["tv_over_floor"]["mean"], row["scores"]["tv"]["mean"] / row["floor"]["tv"])
        assert ("validity" in row["scores"]) == ("code" in row["distribution"])
    # the reported floor is what the library's finite_sample_floor gives for the same draws
    mixture = synthetic_tv.distributions()[names[0]]
    expected = finite_sample_floor(mixture, 300, generator=torch.Generator().manual_seed(123), min_samples=100)
    assert math.isclose(result["rows"][0]["floor"]["tv"], expected)
    table = (tmp_path / "synthetic_tv.md").read_text()
    assert table.count("| default (x-MSE, logit-normal) | 16 | 0 |") == table.count("| 16 | 4 |") == len(names)
