"""benchmarks.alignment_toy: the smoke run writes well-formed results, its Gaussian loss is the library's, and a
diverging run is recorded, not fatal."""

import json
import math
import types
import warnings

import PIL.Image
import pytest
import torch

from benchmarks import alignment_toy as toy
from diffusers_binflow.training import flow_matching_loss
from tests.benchmarks.helpers import run_benchmark
from tests.helpers import numbers


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("alignment_toy")
    return out, run_benchmark("alignment_toy", "--smoke", "--output_dir", out, timeout=300)


def test_smoke_json(smoke):
    out, _ = smoke
    result = json.loads((out / "alignment_toy.json").read_text())
    assert result["complete"] and result["config"]["smoke"]
    assert {"command", "config", "wall_seconds", "floors", "cells"} <= result.keys()
    cells = result["cells"]
    # 2 recipes x uniform sigma x 2 datasets, 1 seed each
    assert len(cells) == result["cells_total"] == 4
    assert {(c["dataset"], c["recipe"]) for c in cells} == {
        (d, r) for d in ("bpsk", "gaussian") for r in ("x-pred + x-MSE", "x-pred + v-loss")}
    quality_keys = {"bpsk": {"max_marginal_error", "max_abs_correlation", "tv_uniform"},
                    "gaussian": {"mean_error", "cov_error"}}
    for dataset, keys in quality_keys.items():
        assert set(result["floors"][dataset]) == keys
    for cell in cells:
        assert cell["n_seeds"] == len(cell["runs"]) == 1
        assert 0 <= cell["divergence_rate"] <= 1 and cell["n_diverged"] == 0
        assert set(cell["quality"]) == quality_keys[cell["dataset"]]
        bins = cell["output_grad_norm_per_sigma_bin"]
        assert len(bins) == 10 and all({"sigma_low", "sigma_high", "count", "p50", "p99"} <= b.keys() for b in bins)
        assert sum(b["count"] for b in bins) == result["config"]["steps"] * result["config"]["batch_size"]
        for stat in (cell["final_loss"], cell["eval_x_mse"], *cell["quality"].values()):
            assert math.isfinite(stat["mean"]) and math.isfinite(stat["std"])
    assert all(math.isfinite(x) for x in numbers(result))
    assert result["command"].startswith("python -m benchmarks.alignment_toy --smoke")
    # the misaligned pair's output gradient grows towards the data end; the aligned one's does not
    slopes = {(c["dataset"], c["recipe"]): c["output_grad_p50_loglog_slope_small_sigma"] for c in cells}
    for dataset in ("bpsk", "gaussian"):
        assert slopes[(dataset, "x-pred + v-loss")] < -1 < slopes[(dataset, "x-pred + x-MSE")]


def test_smoke_markdown_and_plot(smoke):
    out, stdout = smoke
    table = (out / "alignment_toy.md").read_text()
    rows, columns = [], None
    for line in table.splitlines():
        if line.startswith("| recipe"):
            columns = line.count("|")  # each dataset's table has its own quality columns
        elif line.startswith("|"):
            assert line.count("|") == columns, line
            if not line.startswith("|---") and "floor" not in line:
                rows.append(line)
    assert len(rows) == 4  # one row per cell
    assert "| x-pred + v-loss | uniform | 0/1 |" in table and "true samples (floor)" in table
    assert "## BPSK" in stdout and "## Gaussian" in stdout
    with PIL.Image.open(out / "alignment_toy.png") as image:
        image.verify()
    with PIL.Image.open(out / "alignment_toy.png") as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_gaussian_loss_matches_library_on_pm1_data():
    """The Gaussian-data loss, fed +-1 data, equals flow_matching_loss on the bits for every MSE recipe."""
    torch.manual_seed(0)
    model = toy.GatedMLP()
    bits = (torch.rand(64, toy.DIM, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    for recipe in toy.RECIPES:
        if recipe.loss_type != "mse":
            continue
        for sampler in toy.SAMPLERS:
            config = toy.loss_config(recipe, sampler)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = flow_matching_loss(model, bits, config, generator=torch.Generator().manual_seed(2))
                loss, sigmas, _ = toy.gaussian_flow_loss(model, 2 * bits - 1, config, torch.Generator().manual_seed(2))
            torch.testing.assert_close(sigmas, expected.sigmas)
            torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=0)


def test_model_is_called_like_a_diffusers_model():
    model = toy.GatedMLP()
    x = torch.randn(5, toy.DIM)
    (out,) = model(x, torch.full((5,), 300.0), return_dict=False)
    assert out.shape == x.shape
    torch.testing.assert_close(model(x, torch.tensor(300.0), return_dict=False)[0], out)


def test_a_diverging_run_is_recorded_with_its_failed_sampling():
    """At lr 1e6 the gated MLP's loss overflows within a few steps: training stops there, the scheduler then refuses
    the model's non-finite estimate, and the run is recorded (diverged, no quality) instead of ending the grid."""
    args = types.SimpleNamespace(steps=20, batch_size=16, lr=1e6, num_samples=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = toy.train_one("bpsk", toy.RECIPES[0], "uniform", 0, args)
    assert run["diverged"] and run["stopped_at_step"] is not None and run["stopped_at_step"] < 20
    assert math.isnan(run["final_loss"]) and math.isnan(run["eval_x_mse"])
    assert run["sampling_failed"] and all(math.isnan(v) for v in run["quality"].values())
