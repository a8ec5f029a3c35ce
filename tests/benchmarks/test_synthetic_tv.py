"""benchmarks.synthetic_tv: the smoke run writes well-formed results whose floors are the metrics' own, and a seed
whose sampling fails is recorded without ending the run."""

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import synthetic_tv
from tests.benchmarks.test_discrete_peers import HAVE_META
from diffusers_binflow.metrics.distribution import finite_sample_floor
from tests.benchmarks.helpers import run_benchmark


def test_synthetic_tv_smoke(tmp_path):
    run_benchmark("synthetic_tv", "--smoke", "--s_churn", "0", "4", "--output_dir", tmp_path, timeout=300)
    result = json.loads((tmp_path / "synthetic_tv.json").read_text())
    names = list(synthetic_tv.distributions())
    assert [(row["distribution"], row["s_churn"]) for row in result["rows"]] == [(n, c) for n in names for c in (0, 4)]
    for row in result["rows"]:
        assert row["num_samples"] == 300 and len(row["per_seed"]) == 1 and row["failed_seeds"] == 0
        assert 0 <= row["scores"]["tv"]["mean"] <= 1 and 0 < row["floor"]["tv"] <= 1
        assert math.isclose(row["tv_over_floor"]["mean"], row["scores"]["tv"]["mean"] / row["floor"]["tv"])
        assert ("validity" in row["scores"]) == ("code" in row["distribution"])
    # the reported floor is what the library's finite_sample_floor gives for the same draws
    mixture = synthetic_tv.distributions()[names[0]]
    expected = finite_sample_floor(mixture, 300, generator=torch.Generator().manual_seed(123), min_samples=100)
    assert math.isclose(result["rows"][0]["floor"]["tv"], expected)
    table = (tmp_path / "synthetic_tv.md").read_text()
    assert table.count("| default (x-MSE, logit-normal) | 16 | euler | 0 |") == table.count("| 16 | euler | 4 |") \
        == len(names)


def test_the_sampler_oracle_trains_nothing_and_heun_fits_its_evaluations_in_the_nfe(tmp_path, monkeypatch):
    """The oracle is each solver on the exact posterior mean: no training, and on the code its samples are
    codewords at the finite-sample floor; Heun within 16 evaluations runs 8 steps, the multistep solver 16."""
    steps = []
    generate = synthetic_tv.generate
    monkeypatch.setattr(synthetic_tv, "generate", lambda *a, **k: steps.append((k["solver"], k["steps"])) or
                        generate(*a, **k))
    synthetic_tv.main(["--smoke", "--distributions", "random [16, 8] code", "--recipes",
                       "exact posterior (sampler oracle)", "--solvers", "euler", "heun", "multistep", "--nfes", "16",
                       "--output_dir", str(tmp_path)])
    assert steps == [("euler", 16), ("heun", 8), ("multistep", 16)]
    rows = json.loads((tmp_path / "synthetic_tv.json").read_text())["rows"]
    assert [row["solver"] for row in rows] == ["euler", "heun", "multistep"]
    for row in rows:
        assert row["scores"]["validity"]["mean"] == 1.0 and row["tv_over_floor"]["mean"] < 1.2
    assert "| exact posterior (sampler oracle) | 16 | heun | 0 |" in (tmp_path / "synthetic_tv.md").read_text()


@pytest.mark.parametrize("solver", ["heun", "multistep"])
def test_the_corrector_with_another_solver_is_refused_before_training(tmp_path, capsys, solver):
    with pytest.raises(SystemExit):
        synthetic_tv.main(["--smoke", "--solvers", "euler", solver, "--s_churn", "0", "4", "--output_dir",
                           str(tmp_path)])
    assert "works with --solvers euler only" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_seed_whose_sampler_refuses_its_model_is_recorded_as_failed(tmp_path, monkeypatch):
    """A model with a NaN weight makes the scheduler raise on its non-finite estimate: the run goes on and reports
    that seed as failed."""
    train = synthetic_tv.train

    def train_then_break(*args):
        training = train(*args)
        with torch.no_grad():
            training.model.out.bias[0] = math.nan
        return training

    monkeypatch.setattr(synthetic_tv, "train", train_then_break)
    threads = torch.get_num_threads()
    try:
        synthetic_tv.main(["--smoke", "--distributions", "mixture of 8 noisy prototypes", "--nfes", "2", "--output_dir",
                           str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    (row,) = json.loads((tmp_path / "synthetic_tv.json").read_text())["rows"]
    (seed,) = row["per_seed"]
    assert row["failed_seeds"] == 1 and seed["failed"] and not seed["diverged"]  # the scheduler's message
    assert seed["tv"] is None and row["scores"]["tv"] == {"mean": None, "std": None, "n": 0}
    assert "| n/a (1 of 1 seeds failed) |" in (tmp_path / "synthetic_tv.md").read_text()


def test_the_discrete_peers_train_and_sample_in_the_same_run_without_the_corrector(tmp_path):
    peers = ["uniform flip (DiscreteDDIM)", "discrete FM, mask source"]
    threads = torch.get_num_threads()
    try:
        synthetic_tv.main(["--smoke", "--distributions", "random [16, 8] code", "--recipes", "x-BCE, uniform", *peers,
                           "--nfes", "2", "--s_churn", "0", "4", "--network", "transformer", "--output_dir",
                           str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "synthetic_tv.json").read_text())
    assert result["config"]["network"] == "transformer"
    assert "2-layer bit transformer" in (tmp_path / "synthetic_tv.md").read_text()
    ran = peers if HAVE_META else peers[:1]
    assert result["skipped"] == ([] if HAVE_META else peers[1:])
    # ours with and without the corrector; each peer once, with its own sampler
    assert [(r["recipe"], r["s_churn"]) for r in result["rows"]] == [("x-BCE, uniform", 0), ("x-BCE, uniform", 4),
                                                                     *[(p, 0) for p in ran]]
    for row in result["rows"]:
        assert row["failed_seeds"] == 0 and 0 <= row["scores"]["validity"]["mean"] <= 1


def test_seeds_run_apart_and_combined_equal_one_run_of_both(tmp_path):
    """--first_seed splits the seeds over runs; --combine joins them into the same rows, mean and std as one run of
    both seeds, and refuses runs that overlap or differ in their settings."""
    common = ["--smoke", "--distributions", "random [16, 8] code", "--solvers", "euler", "heun"]
    threads = torch.get_num_threads()
    try:
        synthetic_tv.main([*common, "--seeds", "2", "--output_dir", str(tmp_path / "both")])
        for seed in (0, 1):
            synthetic_tv.main([*common, "--seeds", "1", "--first_seed", str(seed), "--output_dir",
                               str(tmp_path / f"seed{seed}")])
        synthetic_tv.main(["--smoke", "--distributions", "random [16, 8] code", "--first_seed", "1",
                           "--output_dir", str(tmp_path / "euler_only")])
    finally:
        torch.set_num_threads(threads)
    parts = [str(tmp_path / f"seed{seed}" / "synthetic_tv.json") for seed in (1, 0)]
    synthetic_tv.main(["--combine", *parts, "--output_dir", str(tmp_path / "combined")])
    both = json.loads((tmp_path / "both" / "synthetic_tv.json").read_text())
    combined = json.loads((tmp_path / "combined" / "synthetic_tv.json").read_text())
    assert combined["config"]["seeds"] == 2 and combined["config"]["first_seed"] == 0
    assert len(combined["rows"]) == len(both["rows"]) == 2
    for ours, reference in zip(combined["rows"], both["rows"]):
        assert [s["seed"] for s in ours["per_seed"]] == [0, 1]
        for key in ("per_seed", "scores", "tv_over_floor", "floor", "solver"):
            assert ours[key] == reference[key]
    table = (tmp_path / "combined" / "synthetic_tv.md").read_text()
    assert "runs merged with `--combine`" in table and "2 seeds" in table
    # A result written before --solvers existed (no solver recorded) sampled with Euler, and joins as such.
    older = json.loads(Path(parts[1]).read_text())
    del older["config"]["solvers"]
    older["rows"] = [{k: v for k, v in row.items() if k != "solver"} for row in older["rows"]
                     if row["solver"] == "euler"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    newer = json.loads(Path(parts[0]).read_text())
    newer["rows"] = [row for row in newer["rows"] if row["solver"] == "euler"]
    newer["config"]["solvers"] = ["euler"]
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    synthetic_tv.main(["--combine", str(tmp_path / "older.json"), str(tmp_path / "newer.json"), "--output_dir",
                       str(tmp_path / "with_older")])
    joined = json.loads((tmp_path / "with_older" / "synthetic_tv.json").read_text())
    assert [(row["solver"], [s["seed"] for s in row["per_seed"]]) for row in joined["rows"]] == [("euler", [0, 1])]
    # A run with fewer rows joins too; each row's table line says how many seeds its mean +- std is over.
    euler_seed0 = json.loads(Path(parts[1]).read_text())
    euler_seed0["rows"] = [row for row in euler_seed0["rows"] if row["solver"] == "euler"]
    (tmp_path / "euler_seed0.json").write_text(json.dumps(euler_seed0))
    synthetic_tv.main(["--combine", str(tmp_path / "euler_seed0.json"), parts[0], "--output_dir",
                       str(tmp_path / "uneven")])
    lines = (tmp_path / "uneven" / "synthetic_tv.md").read_text().splitlines()
    assert [line.split(" | ")[4:7] for line in lines if line.startswith("| random")] == [["euler", "0", "2"],
                                                                                         ["heun", "0", "1"]]
    # Floors that differ only by float rounding (as between machines) are the same; others are not.
    def with_floors_scaled(scale):
        shifted = json.loads(Path(parts[0]).read_text())
        for row in shifted["rows"]:
            row["floor"] = {k: v * scale for k, v in row["floor"].items()}
        path = tmp_path / f"floors_times_{scale}.json"
        path.write_text(json.dumps(shifted))
        return str(path)

    synthetic_tv.main(["--combine", parts[1], with_floors_scaled(1 + 1e-15), "--output_dir", str(tmp_path / "rounded")])
    rows = json.loads((tmp_path / "rounded" / "synthetic_tv.json").read_text())["rows"]
    assert [[s["seed"] for s in row["per_seed"]] for row in rows] == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="floors differ"):
        synthetic_tv.main(["--combine", parts[1], with_floors_scaled(1 + 1e-3), "--output_dir",
                           str(tmp_path / "refused")])
    for wrong, message in ([parts[0], parts[0]], "overlap"), \
            ([parts[0], str(tmp_path / "euler_only" / "synthetic_tv.json")], "same settings"):
        with pytest.raises(ValueError, match=message):
            synthetic_tv.main(["--combine", *wrong, "--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
