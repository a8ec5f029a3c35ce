"""The digit benchmarks (alignment grid, peers vs NFE, cost): the corruptions and samplers they compare behave as
documented, and each smoke run writes well-formed results."""

import importlib.util
import json
import math
from pathlib import Path

import PIL.Image
import pytest
import torch

from benchmarks import digit_runs
from benchmarks.digit_runs import METHODS
from benchmarks.peers_digits import DEFAULT_OURS
from tests.benchmarks.helpers import run_benchmark
from tests.helpers import numbers

HAVE_META = importlib.util.find_spec("flow_matching") is not None
NEEDS_META = pytest.mark.skipif(not HAVE_META, reason="Meta's flow_matching is not installed (CC BY-NC 4.0, so not by "
                                "`make install`; `make peers` installs it)")


def run_smoke(name: str, out: Path, *extra) -> str:
    return run_benchmark(name, "--smoke", "--output_dir", out, *extra)


def check_png(path: Path):
    with PIL.Image.open(path) as image:
        image.verify()
    with PIL.Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


@pytest.mark.parametrize("key", ["x-mse", "rf-fm-euler", "uniform-flip", pytest.param("dfm-mask", marks=NEEDS_META)])
def test_generate_is_binary_seeded_and_cached_runs_reload(key, tmp_path):
    torch.set_num_threads(1)
    run = digit_runs.train(METHODS[key], seed=0, steps=3, batch_size=4, cache_dir=tmp_path)
    again = digit_runs.train(METHODS[key], seed=0, steps=3, batch_size=4, cache_dir=tmp_path)  # from the cache
    for a, b in zip(run.model.parameters(), again.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert run.record == again.record and run.record["steps_done"] == 3
    first = digit_runs.generate(run, 5, nfe=2, seed=7, chunk=3)
    assert first.shape == (5, 1, 28, 28) and set(first.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(digit_runs.generate(again, 5, nfe=2, seed=7, chunk=3), first, rtol=0, atol=0)


def test_the_benchmarks_image_default_trains_and_samples_as_the_image_script_saves():
    """`peers_digits`' and `fd_sampling_noise`'s default method is what `train_binary_flow.py` trains and saves by
    default: the same recipe, and a scheduler with the same solver and likelihood caps."""
    from diffusers_binflow.training import FlowLossConfig
    from diffusers_binflow.training_runs import noise_scheduler_from_args
    from tests.train_scripts.runs import load_script

    args = load_script("train_binary_flow").parse_args(["--output_dir", "out"])
    method = METHODS[digit_runs.IMAGE_DEFAULT]
    assert DEFAULT_OURS == (digit_runs.IMAGE_DEFAULT,) and method.loss_config() == FlowLossConfig.from_args(args)
    run = digit_runs.Run(method, 0, digit_runs.build_body(), {})
    sampler = digit_runs.flow_pipeline(run, solver=method.solver)
    saved = noise_scheduler_from_args(args).config
    keys = ("prediction_type", "solver", "heun_first_step", "likelihood_cap", "final_likelihood_cap", "s_churn",
            "shift")
    assert {k: sampler.scheduler.config[k] for k in keys} == {k: saved[k] for k in keys}


@pytest.mark.parametrize("options, steps, calls", [({}, [4, 8, 16], [4, 8, 16]),
                                                   ({"solver": "heun"}, [2, 4, 8], [3, 7, 15]),
                                                   ({"heun_first_step": True}, [3, 7, 15], [4, 8, 16]),
                                                   ({"solver": "multistep"}, [4, 8, 16], [4, 8, 16]),
                                                   ({"solver": "multistep", "heun_first_step": True}, [3, 7, 15],
                                                    [4, 8, 16])])
def test_each_sampler_runs_the_most_steps_whose_model_calls_fit_in_the_budget(options, steps, calls):
    """NFE 4 / 8 / 16: Euler's and the multistep solver's N steps make N calls, Heun's 2N - 1, a Heun first step
    N + 1; one step always fits."""
    assert [digit_runs.steps_for(nfe, **options) for nfe in (4, 8, 16)] == steps
    assert [digit_runs.model_evaluations(n, **options) for n in steps] == calls
    assert digit_runs.steps_for(1, **options) == 1 and digit_runs.model_evaluations(1, **options) == 1


def test_methods_that_differ_only_in_the_sampler_share_a_training_run(tmp_path):
    assert digit_runs.run_dir(tmp_path, METHODS["rf-fm-euler"], 0, 10, 4) == digit_runs.run_dir(
        tmp_path, METHODS["rf"], 0, 10, 4)
    assert digit_runs.run_dir(tmp_path, METHODS["x-mse"], 0, 10, 4) != digit_runs.run_dir(
        tmp_path, METHODS["x-bce"], 0, 10, 4)


# --------------------------------------------------------------------------------------------------- smoke runs


def test_alignment_digits_smoke(tmp_path):
    stdout = run_smoke("alignment_digits", tmp_path, "--cache_dir", tmp_path / "cache")
    result = json.loads((tmp_path / "alignment_digits.json").read_text())
    assert {"command", "machine", "config", "floor", "cells", "wall_seconds"} <= result.keys()
    assert result["command"].startswith("python -m benchmarks.alignment_digits --smoke")
    assert [c["key"] for c in result["cells"]] == ["x-mse", "v-loss"]
    for cell in result["cells"]:
        assert cell["n_seeds"] == len(cell["runs"]) == 1 and cell["n_diverged"] == cell["n_failed"] == 0
        assert set(cell["metrics"]) >= {"fd", "precision", "recall", "class_coverage", "speckle_rate"}
        assert cell["metrics"]["fd"]["mean"] > result["floor"]["fd"] > 0  # 20 steps are far from real digits
        bins = cell["output_grad_norm_per_sigma_bin"]
        assert len(bins) == 10 and sum(b["count"] for b in bins) == 20 * 8
    assert all(math.isfinite(x) for x in numbers(result))
    slopes = {c["key"]: c["output_grad_p50_loglog_slope_small_sigma"] for c in result["cells"]}
    assert slopes["v-loss"] < -1 < slopes["x-mse"]  # the sigma^-2 growth shows even in 20 steps
    table = (tmp_path / "alignment_digits.md").read_text()
    assert "| x-pred + v-loss (no clamp), uniform | 0/1 |" in table and "Real-data floor" in table
    assert table.strip() in stdout
    check_png(tmp_path / "alignment_digits.png")
    # --cached_only reports the runs already trained, from the cache: the same scores
    run_smoke("alignment_digits", tmp_path / "again", "--cache_dir", tmp_path / "cache", "--cached_only")
    again = json.loads((tmp_path / "again" / "alignment_digits.json").read_text())
    assert [c["n_seeds"] for c in again["cells"]] == [1, 1] and again["config"]["cached_only"]
    assert [c["metrics"]["fd"] for c in again["cells"]] == [c["metrics"]["fd"] for c in result["cells"]]
    assert "at most" in (tmp_path / "again" / "alignment_digits.md").read_text()


@pytest.fixture(scope="module")
def peers_cache(tmp_path_factory):
    """Trained runs shared by the smoke runs below (ours is trained once)."""
    return tmp_path_factory.mktemp("peers_cache")


# The peers that need Meta's flow_matching run (and are skipped, with the reason) separately from the others.
@pytest.mark.parametrize("peers", [pytest.param(["jit", "rf-fm-euler", "uniform-flip"], id="diffusers"),
                                   pytest.param(["dfm-uniform", "dfm-mask"], marks=NEEDS_META, id="meta")])
def test_peers_digits_smoke(peers, peers_cache, tmp_path):
    run_smoke("peers_digits", tmp_path, "--cache_dir", peers_cache, "--peers", *peers)
    result = json.loads((tmp_path / "peers_digits.json").read_text())
    assert [m["key"] for m in result["methods"]] == [DEFAULT_OURS[0], *peers] and result["skipped"] == []
    for method in result["methods"]:
        assert set(method["per_nfe"]) == {"1", "2"}  # JSON keys
        for scores in method["per_nfe"].values():
            assert scores["fd"]["mean"] > 0 and 0 < scores["seconds_per_sample"]["mean"] < 10
            assert 0 <= scores["precision"]["mean"] <= 1 and 0 <= scores["recall"]["mean"] <= 1
    assert all(math.isfinite(x) for x in numbers(result))
    table = (tmp_path / "peers_digits.md").read_text()
    ours = METHODS[DEFAULT_OURS[0]].name
    assert table.count(f"| {ours} |") == 3  # FD, seconds, precision / recall tables
    check_png(tmp_path / "peers_digits.png")


def test_peers_digits_runs_the_peers_alone_when_no_recipe_of_ours_is_named(peers_cache, tmp_path):
    # (`--ours` with no recipe: a rerun of the peers at another budget, next to ours measured elsewhere)
    run_smoke("peers_digits", tmp_path, "--cache_dir", peers_cache, "--ours", "--peers", "jit")
    result = json.loads((tmp_path / "peers_digits.json").read_text())
    assert [m["key"] for m in result["methods"]] == ["jit"] and result["config"]["ours"] == []
    assert METHODS[DEFAULT_OURS[0]].name not in (tmp_path / "peers_digits.md").read_text()


def test_peers_digits_refuses_a_run_with_nothing_to_run(monkeypatch, tmp_path, capsys):
    # no recipe of ours, and the only peer named needs Meta's flow_matching, which this machine is made to lack
    from benchmarks import peers_digits

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flow_matching" else real_find_spec(name, *a))
    with pytest.raises(SystemExit):
        peers_digits.main(["--smoke", "--ours", "--peers", "dfm-uniform", "--output_dir", str(tmp_path)])
    assert "nothing to run" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_sampler_variants_smoke(tmp_path):
    stdout = run_smoke("sampler_variants", tmp_path, "--cache_dir", tmp_path / "cache", "--methods", "x-mse-ln",
                       "lr-bce-ln", "--variants", "Heun", "corrector, s_churn 4", "likelihood cap 2",
                       "likelihood cap 2, final cap 1")
    result = json.loads((tmp_path / "sampler_variants.json").read_text())
    rows = {(row["method"], row["variant"]): row for row in result["rows"]}
    assert len(rows) == 8 and rows["x-mse-ln", "Heun"]["steps"] == 2 and rows["x-mse-ln", "Heun"]["nfe"] == 3
    # the last-step cap is one of the options the scheduler was built with
    assert rows["lr-bce-ln", "likelihood cap 2, final cap 1"]["options"]["final_likelihood_cap"] == 1.0
    assert all(row["nfe"] == 3 and row["fd"]["mean"] > 0 and len(row["per_seed"]) == 1 for row in rows.values())
    assert all(math.isfinite(x) for x in numbers(result))
    table = (tmp_path / "sampler_variants.md").read_text()
    assert "| lr-bce-ln | likelihood cap 2 | 3 |" in table
    assert rows["x-mse-ln", "corrector, s_churn 4"]["speckle_rate"]["mean"] >= 0
    # the data-end bit error: the likelihood residual is exact there by construction, whatever 20 steps taught it
    for key, errors in result["data_end"].items():
        assert [e["sigma"] for e in errors] == [0.05, 0.1, 0.2]
        assert all(e["likelihood_bit_error"]["mean"] < 1e-3 for e in errors)
    assert all(e["model_bit_error"]["mean"] == e["likelihood_bit_error"]["mean"]
               for e in result["data_end"]["lr-bce-ln"][:2])
    # only the likelihood-residual model is also scored under the cap (which the network then overrules)
    assert sorted(result["data_end"]) == ["lr-bce-ln", "lr-bce-ln, likelihood cap 2", "x-mse-ln"]
    assert "FD" in stdout and "Data-end bit error" in table


def test_cost_smoke(tmp_path, capsys):
    run_smoke("cost", tmp_path)
    result = json.loads((tmp_path / "cost.json").read_text())
    for part in ("training", "sampling"):
        side = result[part]
        assert len(side["ours_all"]) == len(side["plain_all"]) == 3
        ratios = sorted(a / b for a, b in zip(side["ours_all"], side["plain_all"]))
        assert side["ratio"] == pytest.approx(ratios[1])  # the median of the three rounds' own ratios
        assert ratios[0] <= side["ratio_quartiles"][0] <= side["ratio"] <= side["ratio_quartiles"][1] <= ratios[2]
        assert 0.2 < side["ratio"] < 5  # the same network dominates both sides
    assert 0 < result["training"]["loss_share"] < 0.5 and 0 < result["sampling"]["scheduler_share"] < 0.5
    assert "ratio (ours / plain)" in (tmp_path / "cost.md").read_text()
    from benchmarks import cost

    with pytest.raises(SystemExit):  # one round has no quartiles
        cost.main(["--rounds", "1", "--output_dir", str(tmp_path / "one_round")])
    assert not (tmp_path / "one_round").exists() and "--rounds must be at least 2" in capsys.readouterr().err


def test_speckle_origin_smoke(tmp_path):
    from benchmarks import speckle_origin

    threads = torch.get_num_threads()
    try:  # in-process: the interpreter and diffusers' import are the smoke run's main cost
        speckle_origin.main(["--smoke", "--output_dir", str(tmp_path), "--cache_dir", str(tmp_path / "cache")])
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "speckle_origin.json").read_text())
    assert result["on_pixels"] >= result["isolated_pixels"] >= 0
    assert sum(result["positive_since_sigma"].values()) == result["isolated_pixels"]
    assert [round(s["sigma"], 3) for s in result["last_steps"]] == [0.75, 0.5, 0.25]  # NFE 4
    assert "| sigma | likelihood logit (isolated) |" in (tmp_path / "speckle_origin.md").read_text()


def test_fd_sampling_noise_smoke(tmp_path, capsys):
    stdout = run_smoke("fd_sampling_noise", tmp_path, "--cache_dir", tmp_path / "cache", "--method", "lr-bce-ln-cap2")
    result = json.loads((tmp_path / "fd_sampling_noise.json").read_text())
    assert [d["generator_seed"] for d in result["draws"]] == [0, 10_000]
    # two draws of the same run differ (independent noise), and each is scored like the pooled set
    assert result["fds"][0] != result["fds"][1] and result["fd"]["n"] == 2
    assert result["pooled"]["num_samples"] == 400 and result["pooled"]["fd"] > 0
    assert all(math.isfinite(x) for x in numbers(result))
    assert "All 400 samples pooled" in (tmp_path / "fd_sampling_noise.md").read_text() and "FD" in stdout
    from benchmarks import fd_sampling_noise

    for argv, message in ((["--draws", "1"], "--draws must be at least 2"),
                          (["--draws", "100", "--num_samples", "1000"], "exceeds the")):
        with pytest.raises(SystemExit):  # refused before anything is trained or written
            fd_sampling_noise.main([*argv, "--cache_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "x")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not (tmp_path / "x").exists()
