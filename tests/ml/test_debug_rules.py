"""The five Debugger rules evaluated inside the job (``--debugger in_job``): on synthetic trials,
on the hook of every architecture, and on two real digits runs through train.py."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import debug_rules
import debugging
from contract import RULE_NAMES, RULES_FILE, TENSORS_DIR, parse_metrics, rule_metric_name
from ml_jobs import HYPERPARAMETERS, Job

smd = pytest.importorskip("smdebug.pytorch")


class ScriptedLoss(nn.modules.loss._Loss):
    """A loss whose value each step is given by the test, plus ``scale`` x 1e-3 x the output's mean (gradients)."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 1.0
        self.scale = 1.0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.value + self.scale * 1e-3 * logits.mean()


def synthetic_trial(out: Path, epochs: list[tuple[list[float], list[float]]], scale: float = 1.0) -> Path:
    """A real smdebug trial: per epoch, TRAIN steps with the given losses, then EVAL steps."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    loss_fn = ScriptedLoss()
    loss_fn.scale = scale
    hook = smd.Hook(out_dir=str(out), save_config=smd.SaveConfig(save_interval=1),
                    include_collections=["losses", "gradients", "relu_input"])
    hook.get_collection("relu_input").add_module_tensors(model[1], inputs=True, outputs=False)
    hook.register_module(model)
    hook.register_loss(loss_fn)
    x, y = torch.randn(6, 4), torch.zeros(6, 1)
    for train_losses, valid_losses in epochs:
        for mode, losses in ((smd.modes.TRAIN, train_losses), (smd.modes.EVAL, valid_losses)):
            hook.set_mode(mode)
            for value in losses:
                loss_fn.value = value
                loss = loss_fn(model(x), y)
                if mode == smd.modes.TRAIN:
                    loss.backward()
    hook.close()
    return out


def by_rule(results: list[dict]) -> dict[str, dict]:
    return {r["rule"]: r for r in results}


def evaluate(out: Path, **overrides) -> dict[str, dict]:
    return by_rule(debug_rules.evaluate(out, {name: dict(v) for name, v in overrides.items()}))


FALLING = [([2.0, 1.9, 1.8, 1.7, 1.6], [1.6, 1.6]), ([1.5, 1.4, 1.3, 1.2, 1.1], [1.1, 1.1]),
           ([1.0, 0.9, 0.8, 0.7, 0.6], [0.6, 0.6])]


def test_healthy_synthetic_trial_triggers_no_loss_rule(tmp_path):
    results = evaluate(synthetic_trial(tmp_path / "t", FALLING), LossNotDecreasing={"num_steps": 2})
    for name in ("LossNotDecreasing", "Overfit", "Overtraining"):
        assert results[name]["error"] is None, results[name]
        assert results[name]["steps_examined"], name
        assert not results[name]["issue_found"], results[name]["issues"]
    # EVAL steps are judged by default (AWS's order): two eval steps per window, one window per epoch
    assert len(results["LossNotDecreasing"]["steps_examined"]) == 3


def test_loss_not_decreasing_finds_a_rising_and_a_non_finite_loss(tmp_path):
    rising = [([2.0] * 5, [1.0, 1.0]), ([2.0] * 5, [1.2, 1.2]), ([2.0] * 5, [float("nan")] * 2)]
    result = evaluate(synthetic_trial(tmp_path / "t", rising), LossNotDecreasing={"num_steps": 2})["LossNotDecreasing"]
    assert result["issue_found"] and result["issue_count"] == 2
    assert "above its lowest" in result["issues"][0]["message"]
    assert "not finite" in result["issues"][1]["message"]
    assert result["issues"][0]["step"] in result["steps_examined"]


def test_loss_not_decreasing_flat_loss_and_train_mode(tmp_path):
    flat = [([1.0] * 4, [])] * 3
    result = evaluate(synthetic_trial(tmp_path / "t", flat), LossNotDecreasing={"num_steps": 4})["LossNotDecreasing"]
    assert result["parameters"]["num_steps"] == 4 and result["parameters"]["diff_percent"] == 0.1
    assert result["issue_found"] and "did not fall" in result["issues"][0]["message"]


def test_overfit_compares_each_validation_pass_with_the_training_before_it(tmp_path):
    gap = [([1.0] * 3, [1.05] * 2), ([1.0] * 3, [1.5] * 2)]
    result = evaluate(synthetic_trial(tmp_path / "t", gap))["Overfit"]
    assert result["issue_count"] == 1 and "% above the training loss" in result["issues"][0]["message"]
    assert len(result["steps_examined"]) == 2
    patient = evaluate(synthetic_trial(tmp_path / "p", gap), Overfit={"patience": 2})["Overfit"]
    assert not patient["issue_found"]


def test_overtraining_counts_steps_of_phases_that_did_not_improve(tmp_path):
    stalled = [([1.0] * 3, [1.0]), ([1.0] * 3, [1.0])]
    result = evaluate(synthetic_trial(tmp_path / "t", stalled), Overtraining={"patience_train": 3})["Overtraining"]
    assert result["issue_found"] and "training loss" in result["issues"][0]["message"]
    default = evaluate(synthetic_trial(tmp_path / "d", stalled))["Overtraining"]
    assert not default["issue_found"], "3 stale steps are under the default patience_train 5"


def test_vanishing_gradient(tmp_path):
    assert not evaluate(synthetic_trial(tmp_path / "ok", FALLING[:1]))["VanishingGradient"]["issue_found"]
    result = evaluate(synthetic_trial(tmp_path / "zero", FALLING[:1], scale=0.0))["VanishingGradient"]
    assert result["issue_found"] and result["steps_examined"]
    assert "gradients have a mean |value| under 1e-07" in result["issues"][0]["message"]


def test_poor_weight_initialization_and_a_rule_that_cannot_run(tmp_path):
    out = synthetic_trial(tmp_path / "t", [([2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6], [2.0])])
    results = evaluate(out, PoorWeightInitialization={"activation_inputs_regex": r"^1_input_0$"},
                       Overfit={"no_such_parameter": 1})
    pwi = results["PoorWeightInitialization"]
    assert pwi["issue_found"] and any("did not fall below 2" in i["message"] for i in pwi["issues"])
    assert results["Overfit"]["error"].startswith("TypeError") and not results["Overfit"]["issue_found"]
    missing = evaluate(out)["PoorWeightInitialization"]  # the default .*relu_input matches no tensor here
    assert "no activation inputs saved" in missing["error"]


def test_an_unreadable_trial_is_an_error_per_rule(tmp_path):
    results = debug_rules.evaluate(tmp_path / "nothing-here")
    assert [r["rule"] for r in results] == list(RULE_NAMES)
    assert all(r["error"] and not r["issue_found"] for r in results)


@pytest.mark.parametrize("architecture", ["vgg11", "resnet50", "efficientnet_lite0"])
def test_in_job_hook_captures_what_the_rules_read_for_every_architecture(tmp_path, architecture):
    """``.*relu_input`` matches only resnet50's names; the in-job hook captures every activation input."""
    import backbones

    model = backbones.build_model(architecture, 3, image_size=32, pretrained=False)
    paths = argparse.Namespace(config_dir=tmp_path / "config", output_data_dir=tmp_path / "data")
    args = argparse.Namespace(debugger="in_job", debug_out=None, debug_save_interval=10)
    debugger = debugging.Debugger(paths, args)
    loss_fn = nn.CrossEntropyLoss()
    debugger.register(model, loss_fn)
    names = debugging.activation_names(model)
    assert names and not any(getattr(model.get_submodule(n), "inplace", False) for n in names)
    debugger.set_mode("train")
    loss = loss_fn(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    debugger.hook.close()
    from smdebug.trials import create_trial

    trial = create_trial(str(tmp_path / "data" / TENSORS_DIR))
    regex = debugger.rule_overrides["PoorWeightInitialization"]["activation_inputs_regex"]
    assert len(trial.tensor_names(regex=regex)) == len(set(names))
    assert trial.tensor_names(collection="gradients") and trial.tensor_names(collection="losses")


def test_rule_parameters_hyperparameter(tmp_path):
    import job_config

    parse = job_config.parse_args
    assert parse(["--rule_parameters", '"{\\"Overfit\\": {\\"patience\\": 2}}"'], tmp_path).rule_parameters == {
        "Overfit": {"patience": 2}}
    for bad, why in (('{"Overfitting": {}}', "unknown rule"), ("[1]", "expected"), ("{", "not JSON")):
        with pytest.raises(ValueError, match=why):
            parse(["--rule_parameters", bad], tmp_path)
    with pytest.raises(ValueError, match="invalid choice"):
        parse(["--debugger", "auto"], tmp_path)


# -- real training through train.py --------------------------------------------------------------------------
#: One LossNotDecreasing window per epoch of training steps (80 images, batch 16), so a window's mean
#: is the epoch's train_loss line. TRAIN, not AWS's default EVAL: a run at Adam 5.0 explodes in its
#: first epoch and its valid loss then falls back (23161 -> 12253 -> 5446, still 2000x chance), while
#: its train loss rises from the first epoch to the second (8224 -> 20060).
FAST_RULES = json.dumps({"LossNotDecreasing": {"num_steps": 5, "mode": "TRAIN"}})


def run_job(tmp_path: Path, data: Path, learning_rate: str, *extra: str) -> Job:
    job = Job(base=tmp_path, data=data)
    result = job.run(["--debugger", "in_job", "--epochs", "2", "--patience", "5", "--rule_parameters", FAST_RULES,
                      *extra], hyperparameters={**HYPERPARAMETERS, "learning_rate": learning_rate}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return job


def rules_of(job: Job) -> dict[str, dict]:
    document = json.loads((job.output_data_dir / RULES_FILE).read_text())
    assert document["evaluated_after"] == "training"
    assert [r["rule"] for r in document["rules"]] == list(RULE_NAMES)
    for r in document["rules"]:
        assert set(r) == {"rule", "parameters", "steps_examined", "issue_found", "issue_count", "issues", "error"}
        assert all(set(i) == {"step", "message"} for i in r["issues"])
    return by_rule(document["rules"])


@pytest.mark.timeout(900)  # two short jobs' worth on a loaded 2-core machine
def test_healthy_run_triggers_no_loss_rule(tmp_path, digits_small):
    job = run_job(tmp_path, digits_small, '"0.003"', "--rules_every_epochs", "1")
    rules = rules_of(job)
    for name in ("LossNotDecreasing", "Overfit", "Overtraining"):
        assert rules[name]["error"] is None and rules[name]["steps_examined"], rules[name]
        assert not rules[name]["issue_found"], rules[name]["issues"]
    assert rules["LossNotDecreasing"]["parameters"]["num_steps"] == 5
    assert re.fullmatch(r"\^\(\?:.*\)_input_0\$", rules["PoorWeightInitialization"]["parameters"]
                        ["activation_inputs_regex"])
    assert (job.output_data_dir / TENSORS_DIR).is_dir()
    metrics = parse_metrics(job.result.stdout)
    # after epoch 1 (--rules_every_epochs 1, not after the last) and the final evaluation
    assert all(len(metrics[rule_metric_name(r)]) == 2 for r in RULE_NAMES), metrics
    assert metrics[rule_metric_name("LossNotDecreasing")][-1] == 0
    history = json.loads((job.model_dir / "model_meta.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
        assert [round(h[key], 6) for h in history] == metrics[key]


@pytest.mark.e2e  # a second two-epoch in-job run: make test-e2e (CI too); the healthy run above stays in make test
@pytest.mark.timeout(900)
def test_diverging_run_triggers_loss_not_decreasing(tmp_path, digits_small):
    job = run_job(tmp_path, digits_small, '"5.0"')
    rules = rules_of(job)
    rule = rules["LossNotDecreasing"]
    assert rule["issue_found"], rule
    assert "above its lowest" in rule["issues"][0]["message"]
    assert rule["issues"][0]["step"] in rule["steps_examined"]
    assert parse_metrics(job.result.stdout)[rule_metric_name("LossNotDecreasing")] == [1.0]


def test_debugger_off_writes_no_tensors_and_no_rules(tmp_path, digits_small):
    job = Job(base=tmp_path, data=digits_small)
    result = job.run(["--debugger", "off", "--epochs", "1", "--debug_out", str(tmp_path / "dbg")],
                     hyperparameters=HYPERPARAMETERS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Debugger off" in result.stdout and "rule_" not in result.stdout
    assert not (job.output_data_dir / RULES_FILE).exists() and not (tmp_path / "dbg").exists()
