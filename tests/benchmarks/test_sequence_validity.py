"""benchmarks.sequence_validity: the smoke run writes well-formed results for every method and NFE, and its
pieces (the baseline's corruption process and sampler) behave as documented."""

import json
from pathlib import Path

import PIL.Image
import pytest

from benchmarks import sequence_validity
from tests.benchmarks.helpers import run_benchmark


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequence_validity")
    run_benchmark("sequence_validity", "--smoke", "--output_dir", out)
    return out


def test_smoke_run_reports_every_method_at_every_nfe(smoke):
    result = json.loads((smoke / "sequence_validity.json").read_text())
    assert result["complete"] and result["config"]["smoke"]
    assert result["command"].startswith("python -m benchmarks.sequence_validity --smoke")
    assert set(result["methods"]) == set(sequence_validity.METHODS)
    for name, entry in result["methods"].items():
        # the autoregressive model takes one evaluation per position, whatever the budget
        nfes = [result["data"]["sequence_length"]] if "autoregressive" in name else [1, 4]
        assert [row["nfe"] for row in entry["by_nfe"]] == nfes
        for row in entry["by_nfe"]:
            assert 0 <= row["novel_valid_fraction"] <= row["valid_fraction"] <= 1 and row["seconds_per_sample"] > 0
            assert len(row["examples"]) == 8 and all(isinstance(text, str) for text in row["examples"])
            assert 0 <= row["infill_accuracy"] <= 1 and len(row["infill_examples"]) == 4
        assert entry["num_parameters"] > 0 and entry["loss_curve"][-1]["step"] == 4 and not entry["diverged"]
    markdown = (smoke / "sequence_validity.md").read_text()
    assert "| ours (BCE) |" in markdown and "NFE 4" in markdown and result["command"] in markdown
    assert PIL.Image.open(smoke / "sequence_validity.png").size[0] > 100


@pytest.mark.parametrize("task", ["sudoku"])
def test_the_other_tasks_run_with_their_infill_prompts(task, tmp_path):
    run_benchmark("sequence_validity", "--smoke", "--task", task, "--methods", "ours (BCE)",
                  "masked diffusion (MDLM loss)", "--output_dir", tmp_path)
    result = json.loads((tmp_path / "sequence_validity.json").read_text())
    assert result["data"]["task"] == task and result["data"]["infill_prompts"] == min(200, result["data"][
        "heldout_statements"])
    assert all("infill_accuracy" in row for entry in result["methods"].values() for row in entry["by_nfe"])


def test_infill_prompts_give_what_each_task_leaves_to_fill():
    from diffusers_binflow.sequences import ArithmeticStatements, SudokuGrids, train_tokenizer

    arithmetic = ArithmeticStatements(max_operand=19)
    tokenizer = train_tokenizer(arithmetic.texts("all"), "char")
    prompts = sequence_validity.infill_prompts(arithmetic, ["17+25=42", "3+4=7"], tokenizer, 8, seed=0)
    assert prompts["generate"].tolist() == [[False] * 6 + [True] * 2, [False] * 4 + [True] * 4]
    sudoku = SudokuGrids()
    grids = sudoku.texts("heldout")[:3]
    prompts = sequence_validity.infill_prompts(sudoku, grids, train_tokenizer(grids, "char"), 16, seed=0)
    assert prompts["generate"].sum(1).tolist() == [8, 8, 8]


def test_infill_repeats_complete_each_prompt_independently_and_average(tmp_path):
    run_benchmark("sequence_validity", "--smoke", "--methods", "ours (BCE)", "--infill_repeats", "3",
                  "--output_dir", tmp_path)
    result = json.loads((tmp_path / "sequence_validity.json").read_text())
    prompts = result["data"]["infill_prompts"]
    assert result["data"]["infill_repeats"] == 3 and prompts == min(200, result["data"]["heldout_statements"])
    for row in result["methods"]["ours (BCE)"]["by_nfe"]:
        # a mean over 3 x prompts completions (rounded to 4 places in the file)
        completed = row["infill_accuracy"] * 3 * prompts
        assert abs(completed - round(completed)) < 3 * prompts * 1e-4
    assert f"each of the {prompts} prompts completed 3 times" in (tmp_path / "sequence_validity.md").read_text()
    with pytest.raises(SystemExit):
        sequence_validity.main(["--smoke", "--infill_repeats", "0", "--output_dir", str(tmp_path / "refused")])


def test_runs_of_single_methods_combine_into_one_report(smoke, tmp_path):
    full = json.loads((smoke / "sequence_validity.json").read_text())
    parts = [{**full, "command": f"run {i}", "methods": {name: entry}, "config": {**full["config"], "methods": [name]}}
             for i, (name, entry) in enumerate(full["methods"].items())]
    paths = [str(_write(tmp_path / f"part{i}.json", part)) for i, part in enumerate(parts)]
    sequence_validity.main(["--combine", *paths, "--output_dir", str(tmp_path / "combined")])
    combined = json.loads((tmp_path / "combined" / "sequence_validity.json").read_text())
    assert combined["methods"] == full["methods"] and combined["complete"]
    assert combined["command"] == " ; ".join(f"run {i}" for i in range(len(parts)))
    assert "merged with `--combine`" in (tmp_path / "combined" / "sequence_validity.md").read_text()
    # --methods takes one method out of the full run on its own, with that run's figures
    sequence_validity.main(["--combine", str(smoke / "sequence_validity.json"), "--methods", "ours (BCE)",
                            "--output_dir", str(tmp_path / "taken")])
    taken = json.loads((tmp_path / "taken" / "sequence_validity.json").read_text())
    assert taken["methods"] == {"ours (BCE)": full["methods"]["ours (BCE)"]} and taken["complete"]
    assert taken["config"]["methods"] == ["ours (BCE)"]
    # a name that no run holds is refused, not written as an empty report
    with pytest.raises(ValueError, match="No run given holds 'ours \\(MSE\\)'"):
        sequence_validity.combine([parts[0]], ["ours (MSE)"])
    with pytest.raises(ValueError, match="same settings"):
        sequence_validity.combine([parts[0], {**parts[1], "config": {**parts[1]["config"], "steps": 99}}])
    # a run from before --infill_repeats completed each prompt once, and combines with one that says so
    older = {**parts[0], "config": {k: v for k, v in parts[0]["config"].items() if k != "infill_repeats"}}
    assert list(sequence_validity.combine([older, parts[1]])["methods"]) == [*parts[0]["methods"],
                                                                             *parts[1]["methods"]]


def test_runs_on_several_seeds_summarise_as_mean_and_std_per_method(smoke, tmp_path):
    run_benchmark("sequence_validity", "--smoke", "--seed", "1", "--methods", "ours (BCE)", "--output_dir", tmp_path)
    seed0 = json.loads((smoke / "sequence_validity.json").read_text())
    seed1 = json.loads((tmp_path / "sequence_validity.json").read_text())
    # seed 0's "ours (BCE)" again in a second run of that seed, as a method re-run alongside another one
    rerun = {**seed0, "command": "rerun", "methods": {"ours (BCE)": seed0["methods"]["ours (BCE)"]}}
    paths = [str(smoke / "sequence_validity.json"), str(tmp_path / "sequence_validity.json"),
             str(_write(tmp_path / "rerun.json", rerun))]
    sequence_validity.main(["--across_seeds", *paths, "--output_dir", str(tmp_path / "seeds")])
    summary = json.loads((tmp_path / "seeds" / "sequence_validity_seeds.json").read_text())
    ours = summary["methods"]["ours (BCE)"]
    assert ours["seeds"] == [0, 1] and set(summary["methods"]) == set(seed0["methods"])
    for row, a, b in zip(ours["by_nfe"], seed0["methods"]["ours (BCE)"]["by_nfe"],
                         seed1["methods"]["ours (BCE)"]["by_nfe"]):
        assert row["nfe"] == a["nfe"] == b["nfe"] and row["valid"]["n"] == 2
        assert row["valid"]["mean"] == pytest.approx((a["valid_fraction"] + b["valid_fraction"]) / 2)
        assert row["valid"]["std"] == pytest.approx(abs(a["valid_fraction"] - b["valid_fraction"]) / 2)
        assert row["valid_per_seed"] == {"0": a["valid_fraction"], "1": b["valid_fraction"]}
    assert summary["methods"]["masked diffusion (MDLM loss)"]["seeds"] == [0]
    markdown = (tmp_path / "seeds" / "sequence_validity_seeds.md").read_text()
    assert "mean ± std over seeds" in markdown and "| ours (BCE) | 0, 1 |" in markdown and "`rerun`" in markdown
    assert PIL.Image.open(tmp_path / "seeds" / "sequence_validity_seeds.png").size[0] > 100

    def refused(match, *runs):
        with pytest.raises(ValueError, match=match):
            sequence_validity.across_seeds({f"run{i}": run for i, run in enumerate(runs)})

    # one method and seed with other figures in two runs: different code or settings, not a summary
    changed = json.loads(json.dumps(rerun))
    changed["methods"]["ours (BCE)"]["by_nfe"][0]["valid_fraction"] += 0.5
    refused("differs between run0 and run1", seed0, changed)
    # ... unless the summary leaves that method out: the runs' other methods are then summarised
    chosen = sequence_validity.across_seeds({"run0": seed0, "run1": changed, "run2": seed1},
                                            methods=["masked diffusion (MDLM loss)"])
    assert list(chosen["methods"]) == ["masked diffusion (MDLM loss)"]
    assert chosen["methods"]["masked diffusion (MDLM loss)"]["seeds"] == [0]
    with pytest.raises(ValueError, match="No run given holds 'masked diffusion"):  # seed 1 ran ours (BCE) only
        sequence_validity.across_seeds({"run1": seed1}, ["masked diffusion (MDLM loss)"])
    refused("other settings", seed0, {**seed1, "config": {**seed1["config"], "steps": 99}})
    refused("partial run", seed0, {**seed1, "complete": False})
    # the same model completing each infill prompt more often gives the more precise infill figure, in either order
    precise = json.loads(json.dumps(rerun))
    precise["data"]["infill_repeats"] = 3
    for row in precise["methods"]["ours (BCE)"]["by_nfe"]:
        row["infill_accuracy"] = 0.25
    for runs in ([seed0, precise], [precise, seed0]):
        summary = sequence_validity.across_seeds({f"run{i}": run for i, run in enumerate(runs)})
        assert all(row["infill"]["mean"] == 0.25 for row in summary["methods"]["ours (BCE)"]["by_nfe"])


def test_a_cached_model_is_loaded_by_a_run_with_its_settings_and_refused_by_another(tmp_path):
    cache = tmp_path / "cache"
    args = ["--smoke", "--methods", "ours (BCE, known tokens)", "ours (BCE, known tokens, corrector s_churn 16)",
            "masked diffusion (MDLM loss)", "--cache_dir", cache]
    first = run_benchmark("sequence_validity", *args, "--output_dir", tmp_path / "first")
    again = run_benchmark("sequence_validity", *args, "--output_dir", tmp_path / "again")
    # one training shared by both samplers, and the peer's
    assert "loaded from" not in first and again.count("loaded from") == 2
    assert sorted(path.name for path in cache.rglob("*") if path.is_file()) == ["model.pt", "model.pt", "run.json",
                                                                                "run.json"]  # nothing left aside
    results = [json.loads((tmp_path / run / "sequence_validity.json").read_text()) for run in ("first", "again")]
    # the same weights and record: sampling (seeded) gives the very same texts; only the sampling time differs
    for result in results:
        for entry in result["methods"].values():
            for row in entry["by_nfe"]:
                assert row.pop("seconds_per_sample") > 0
    assert results[0]["methods"] == results[1]["methods"]
    # a run killed while saving left no record: the model is trained again, not half-loaded
    record = next(cache.glob("ours-bce-known-tokens/*/run.json"))
    record.unlink()
    retrained = run_benchmark("sequence_validity", *args, "--output_dir", tmp_path / "retrained")
    assert retrained.count("loaded from") == 1 and record.is_file()
    with pytest.raises(SystemExit, match="other settings \\(learning_rate\\)"):
        sequence_validity.main([*map(str, args), "--learning_rate", "0.01", "--output_dir", str(tmp_path / "other")])


def test_two_runs_saving_one_training_at_once_leave_one_whole_copy(tmp_path):
    """Two processes train the same method into one cache at the same time: both finish, nothing is left aside, and
    a third run loads what they saved."""
    import subprocess
    import sys

    from tests.benchmarks.helpers import ROOT

    args = ["--smoke", "--methods", "ours (BCE, known tokens)", "--cache_dir", str(tmp_path / "cache")]
    runs = [subprocess.Popen([sys.executable, "-m", "benchmarks.sequence_validity", *args, "--output_dir",
                              str(tmp_path / f"run{i}")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()) == ["model.pt", "run.json"]
    third = run_benchmark("sequence_validity", *args, "--output_dir", tmp_path / "third")
    assert third.count("loaded from") == 1
    valid = [[row["valid_fraction"] for row in json.loads((tmp_path / run / "sequence_validity.json").read_text())[
        "methods"]["ours (BCE, known tokens)"]["by_nfe"]] for run in ("run0", "run1", "third")]
    assert valid[0] == valid[1] == valid[2]  # the loaded copy samples as the trained one did


def _write(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("nfe", [1, 4, 7])
def test_a_heun_method_samples_within_its_evaluations_and_keeps_the_known_tokens(nfe):
    """Heun's N steps take 2N - 1 evaluations: the most that fit in the NFE; infill keeps every given token."""
    import torch
    from types import SimpleNamespace

    from diffusers_binflow.sequences import tokenize_to_length, train_tokenizer

    method = sequence_validity.METHODS["ours (BCE, known tokens, Heun)"]
    texts = ["17+25=42", "13+14=27"]  # six given characters each, none of them padding
    tokenizer = train_tokenizer(texts, "char")
    size = SimpleNamespace(hidden_size=16, num_layers=1, num_heads=2)
    model = sequence_validity.build_model(method, len(tokenizer), 8, size).eval()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    known = tokenize_to_length(tokenizer, texts, 8)
    to_generate = torch.zeros_like(known, dtype=torch.bool)
    to_generate[:, 6:] = True
    completions = sequence_validity.generate(method, model, tokenizer, 2, 8, nfe, torch.Generator().manual_seed(0),
                                             known, to_generate)
    assert len(calls) == 2 * ((nfe + 1) // 2) - 1 <= nfe
    assert [text[:6] for text in completions] == [text[:6] for text in texts]


def test_the_corrector_methods_share_the_known_tokens_training_and_only_sample_differently(smoke):
    import torch
    from types import SimpleNamespace

    from diffusers_binflow.sequences import train_tokenizer

    methods = json.loads((smoke / "sequence_validity.json").read_text())["methods"]
    base = methods["ours (BCE, known tokens)"]
    for churn in (4, 16):
        entry = methods[f"ours (BCE, known tokens, corrector s_churn {churn})"]
        assert (entry["loss_curve"], entry["train_seconds"]) == (base["loss_curve"], base["train_seconds"])
    spans, spans_corrector = (methods[f"ours (BCE, known tokens and spans{suffix})"]
                              for suffix in ("", ", corrector s_churn 64"))
    assert (spans_corrector["loss_curve"], spans_corrector["train_seconds"]) == (spans["loss_curve"],
                                                                                 spans["train_seconds"])
    tokenizer = train_tokenizer(["17+25=42", "13+14=27"], "char")
    model = sequence_validity.build_model(sequence_validity.METHODS["ours (BCE, known tokens)"], len(tokenizer), 8,
                                          SimpleNamespace(hidden_size=16, num_layers=1, num_heads=2)).eval()
    states, timesteps = {}, {}
    for name in ("ours (BCE, known tokens)", "ours (BCE, known tokens, corrector s_churn 16)",
                 "ours (BCE, known tokens, corrector s_churn 64, s_tmax 1)",
                 "ours (BCE, known tokens, corrector s_churn 64, shift 2)"):
        seen, times = states.setdefault(name, []), timesteps.setdefault(name, [])

        def record(module, args, output, seen=seen, times=times):  # returns None: the output is left as it is
            seen.append(args[0])
            times.append(float(args[1][0]))

        hook = model.register_forward_hook(record)
        sequence_validity.generate(sequence_validity.METHODS[name], model, tokenizer, 4, 8, 8,
                                   torch.Generator().manual_seed(0))
        hook.remove()
    euler, corrected, wide, _ = states.values()
    # the same seed and start; the corrector then re-noises inside its window, so the model sees other states
    assert len(euler) == len(corrected) == 8 and torch.equal(euler[0], corrected[0])
    assert not all(torch.equal(a, b) for a, b in zip(euler, corrected))
    # the second evaluation is at sigma 7/8: outside the default window [0.05, 0.7], inside [0.05, 1]
    assert torch.equal(corrected[1], euler[1]) and not torch.equal(wide[1], euler[1])
    # the shifted grid: sigma 7/8 moved to 2 (7/8) / (1 + 7/8), outside the window, so evaluated there unchurned
    assert timesteps["ours (BCE, known tokens)"][1] == pytest.approx(1000 * 7 / 8)
    assert timesteps["ours (BCE, known tokens, corrector s_churn 64, shift 2)"][1] == pytest.approx(1000 * 14 / 15)


@pytest.mark.parametrize("trained", ["known tokens", "known tokens and spans"])
def test_the_self_conditioned_methods_train_a_self_conditioned_model_and_feed_it_its_previous_estimate(smoke, trained):
    import torch
    from types import SimpleNamespace

    from diffusers_binflow.sequences import train_tokenizer

    methods = json.loads((smoke / "sequence_validity.json").read_text())["methods"]
    plain, corrected = (methods[f"ours (BCE, {trained}, self-conditioning{suffix})"]
                        for suffix in ("", ", corrector s_churn 64, shift 0.25"))
    assert (corrected["loss_curve"], corrected["train_seconds"]) == (plain["loss_curve"], plain["train_seconds"])
    # its own training: neither the model without self-conditioning nor the other self-conditioned one
    other = "known tokens" if trained != "known tokens" else "known tokens and spans"
    for name in (f"ours (BCE, {trained})", f"ours (BCE, {other}, self-conditioning)"):
        assert plain["loss_curve"] != methods[name]["loss_curve"]
    method = sequence_validity.METHODS[f"ours (BCE, {trained}, self-conditioning)"]
    tokenizer = train_tokenizer(["17+25=42", "13+14=27"], "char")
    model = sequence_validity.build_model(method, len(tokenizer), 8,
                                          SimpleNamespace(hidden_size=16, num_layers=1, num_heads=2)).eval()
    assert model.config.self_conditioning
    inputs, estimates = [], []

    def record(module, args, output):  # returns None: the output is left as it is
        inputs.append(args[0])
        estimates.append(output[0])

    model.register_forward_hook(record)
    sequence_validity.generate(method, model, tokenizer, 4, 8, 3, torch.Generator().manual_seed(0))
    num_bits = model.codec.num_bits
    assert len(inputs) == 3 and all(x.shape == (4, 8, 2 * num_bits) for x in inputs)
    # no estimate before the first evaluation; then each evaluation sees the one before it, as a clean signal
    assert not inputs[0][..., num_bits:].any()
    for seen, logits in zip(inputs[1:], estimates):
        assert torch.allclose(seen[..., num_bits:], torch.tanh(logits / 2), atol=1e-6)
