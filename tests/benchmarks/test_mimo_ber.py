"""benchmarks.mimo_ber: the smoke run trains its models with the training script and writes well-formed results."""

import json
import math
import re
import subprocess
import sys

import PIL.Image
import pytest

from benchmarks import mimo_ber
from tests.benchmarks.helpers import ROOT, run_benchmark


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("mimo_ber")
    run_benchmark("mimo_ber", "--smoke", "--output_dir", out, "--models_dir", out / "models")
    return out, json.loads((out / "mimo_ber.json").read_text())


def test_smoke_json_has_every_detector_at_every_snr(smoke):
    _, result = smoke
    assert result["config"]["smoke"] and "SNR per receive antenna" in result["config"]["snr_definition"]
    assert {"command", "machine", "wall_seconds", "systems"} <= result.keys()
    assert result["command"].startswith("python -m benchmarks.mimo_ber --smoke")
    (system,) = result["systems"]
    assert system["channel"] == {"correlation": 0.5}
    assert all("--correlation=0.5" in model["command"] for model in system["models"].values())
    names = {p["detector"] for p in system["points"]}
    assert {"zf", "lmmse", "ep", "ml", "kbest-4"} <= names
    assert {f"ours-{r} (1 step)" for r in ("bce", "mse")} <= names  # two recipes: each model is a training run
    assert {f"ours-{r} (2 steps x 4, likelihood)" for r in ("bce", "mse")} <= names
    assert len(system["points"]) == len(names) * len(system["snr_db"])
    for p in system["points"]:
        assert 0 <= p["ber"] <= 1 and p["bits"] > 0 and p["stopped_by"] in ("errors", "bits", "time")
        assert math.isclose(p["ber"], p["bit_errors"] / p["bits"])
        if p["detector"].startswith("ours"):  # "ours-bce (2 steps x 4, likelihood)": steps x samples evaluations
            counts = re.findall(r"\d+", p["detector"].split("(")[1])
            assert p["nfe"] == math.prod(int(c) for c in counts)
        else:
            assert p["nfe"] == 0
    for model in system["models"].values():
        assert model["optimizer_steps"] == 3 and "train_mimo.py" in model["command"]


def test_ml_is_never_beaten_by_the_linear_detectors_on_the_same_channels(smoke):
    _, result = smoke
    points = {(p["detector"], p["snr_db"]): p for p in result["systems"][0]["points"]}
    for snr in result["systems"][0]["snr_db"]:
        assert points[("ml", snr)]["ber"] <= points[("zf", snr)]["ber"]


def test_smoke_markdown_and_plot(smoke):
    out, result = smoke
    markdown = (out / "mimo_ber.md").read_text()
    assert result["command"] in markdown and "| SNR (dB) |" in markdown and "channel uses / s" in markdown
    with PIL.Image.open(out / "mimo_ber.png") as image:
        assert image.width > 300 and image.height > 200


def test_snr_at_target_interpolates_in_log_ber():
    points = [{"snr_db": 10.0, "ber": 1e-2}, {"snr_db": 20.0, "ber": 1e-4}]
    assert mimo_ber.snr_at_target(points) == 15.0
    assert mimo_ber.snr_at_target([{"snr_db": 0.0, "ber": 0.1}, {"snr_db": 5.0, "ber": 0.05}]) is None


def test_filters_rerun_chosen_detectors_at_chosen_snrs_reusing_the_trained_models(smoke, tmp_path):
    out, _ = smoke
    stdout = run_benchmark("mimo_ber", "--smoke", "--output_dir", tmp_path, "--models_dir", out / "models",
                           "--detectors", "ml", "ours-bce", "--snr_db", "6")
    assert "training:" not in stdout  # the smoke run's models were found
    entry = json.loads((tmp_path / "mimo_ber.json").read_text())["systems"][0]
    names = {p["detector"] for p in entry["points"]}
    assert "ml" in names and all(n == "ml" or n.startswith("ours-bce (") for n in names) and len(names) == 3
    assert {p["snr_db"] for p in entry["points"]} == {6.0}
    assert set(entry["models"]) == {"bce"}  # the MSE model is neither needed nor loaded


def test_only_the_recipes_of_selected_detectors_are_trained(tmp_path):
    stdout = run_benchmark("mimo_ber", "--smoke", "--output_dir", tmp_path, "--models_dir", tmp_path / "models",
                           "--detectors", "ours-mse (1 step)", "--snr_db", "6")
    assert stdout.count("training:") == 1
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["2x2-qpsk-rho-0.5-mse"]
    entry = json.loads((tmp_path / "mimo_ber.json").read_text())["systems"][0]
    assert {p["detector"] for p in entry["points"]} == {"ours-mse (1 step)"} and set(entry["models"]) == {"mse"}


def test_a_model_trained_by_another_command_is_refused_not_reused(smoke, tmp_path):
    """A doubling check (--max_train_steps) pointed at the folder of the smoke run's 3-step models must not report
    them as trained longer."""
    out, _ = smoke
    options = ("--smoke", "--output_dir", tmp_path, "--models_dir", out / "models", "--detectors", "ours-bce (1 step)",
               "--snr_db", "6")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.mimo_ber", *map(str, options), "--max_train_steps", "6"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "trained by another command than this run's" in proc.stderr
    assert "--max_train_steps 3" in (out / "models" / "2x2-qpsk-rho-0.5-bce" / mimo_ber.TRAINED_BY).read_text()
    assert not (tmp_path / "mimo_ber.json").exists()
    run_benchmark("mimo_ber", *options, "--max_train_steps", "6", "--models_dir", tmp_path / "models")
    (model,) = json.loads((tmp_path / "mimo_ber.json").read_text())["systems"][0]["models"].values()
    assert model["optimizer_steps"] == 6 and model["command"].endswith("--max_train_steps 6")


def test_every_system_s_channel_reaches_the_training_script_as_the_benchmark_measures_it():
    from tests.train_scripts.runs import load_script

    script = load_script("train_mimo")
    for system in mimo_ber.systems(smoke=False) + mimo_ber.systems(smoke=True):
        args = script.parse_args(["--output_dir", "x", *mimo_ber.channel_options(system)])
        channel = {"correlation": 0.0, "csi_error_var": 0.0, "csi_aware": False, **system.get("channel", {})}
        assert {k: getattr(args, k) for k in channel} == channel, system["name"]
    assert any(system.get("channel", {}).get("csi_aware") for system in mimo_ber.systems(smoke=False))
