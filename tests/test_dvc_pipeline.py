"""DVC behaviour of the whole pipeline, through the real `dvc` CLI on the offline profile."""
from __future__ import annotations

import json

from ruamel.yaml import YAML

from tests.conftest import PIPELINE, run_dvc, stages_run
from tests.dvc_cli import lock_out_md5


def test_second_repro_runs_nothing_and_status_is_clean(workspace_copy):
    output = run_dvc(workspace_copy, "repro")
    assert stages_run(output) == []
    assert "didn't change, skipping" in output
    assert run_dvc(workspace_copy, "status").strip() == "Data and pipelines are up to date."


def test_runtime_keys_rerun_nothing_and_are_kept_for_the_next_run(workspace_copy):
    """W&B mode, logging and checkpoint cadence cannot change the adapter: no stage declares them."""
    output = run_dvc(workspace_copy, "exp", "run", "-S", "runtime.wandb_mode=offline", "-S", "runtime.save_steps=7",
                     "-S", "runtime.logging_steps=3", "-S", "runtime.launcher=accelerate")
    assert stages_run(output) == [], output
    runtime = YAML(typ="safe", pure=True).load((workspace_copy / "params.yaml").read_text())["runtime"]
    assert runtime == {**runtime, "wandb_mode": "offline", "save_steps": 7, "logging_steps": 3,
                       "launcher": "accelerate"}
    assert run_dvc(workspace_copy, "status").strip() == "Data and pipelines are up to date."


def test_evaluate_keys_rerun_both_evaluations_only_and_lm_eval_scores_a_local_task(workspace_copy, monkeypatch):
    """Shorter answers and a tiny local lm-evaluation-harness task (tests/lm_eval/, a JSONL file, offline):
    both evaluate stages rerun, nothing else; metrics.json holds the task's accuracy for base and adapter,
    equal to what lm-eval gives the adapter loaded here through the same inference path."""
    task = "tests/lm_eval/tiny_capitals.yaml"
    output = run_dvc(workspace_copy, "exp", "run", "-S", "evaluate.max_new_tokens=8",
                     "-S", f"evaluate.lm_eval_tasks=[{task}]")
    assert stages_run(output) == ["evaluate_base", "evaluate", "card"]
    metrics = json.loads((workspace_copy / "reports/metrics.json").read_text())
    assert metrics["base"]["mean_answer_tokens"] <= 8 and metrics["adapter"]["mean_answer_tokens"] <= 8
    base, adapter = metrics["base"]["lm_eval"]["tiny_capitals"], metrics["adapter"]["lm_eval"]["tiny_capitals"]
    assert set(base) == set(adapter) == {"acc"} and adapter["acc"] * 8 == round(adapter["acc"] * 8), "8 questions"
    assert metrics["adapter_minus_base"]["lm_eval"]["tiny_capitals"]["acc"] == round(adapter["acc"] - base["acc"], 6)

    from pathlib import Path

    from alpaca_qlora.evaluation.lm_eval import lm_eval_scores
    from alpaca_qlora.modeling import inference
    from alpaca_qlora.params import load_section

    monkeypatch.chdir(workspace_copy)
    model, tokenizer = inference.load("merged", load_section("model"), Path("models/adapter"))
    params = load_section("evaluate")
    assert lm_eval_scores(model, tokenizer, params) == {"lm_eval": {"tiny_capitals": adapter}}


def test_data_key_reruns_every_stage_with_the_users_own_file(workspace_copy, tmp_path):
    """The README's override: the offline profile with `-S data.source=/path/file.json`."""
    import subprocess
    import sys

    own = tmp_path / "my_data.json"
    subprocess.run([sys.executable, "-m", "scripts.make_offline_data", "--out", str(tmp_path / "rows.jsonl"),
                    "--records", "400", "--seed", "11"], cwd=workspace_copy, check=True, capture_output=True)
    own.write_text(json.dumps([json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]))
    output = run_dvc(workspace_copy, "exp", "run", "-S", f"data.source={own}")
    assert stages_run(output) == PIPELINE
    stats = json.loads((workspace_copy / "data/sampled/stats.json").read_text())
    assert stats["source"] == str(own) and stats["source_records"] == 400 and stats["train_records"] == 160


def test_same_params_give_same_data_hashes(reproduced_workspace, offline_workspace_factory):
    """An independent workspace with the same params produces byte-identical data/sampled and data/formatted."""
    other = offline_workspace_factory()
    output = run_dvc(other, "repro", "format")
    assert stages_run(output) == ["sample", "format"]
    for path in ("data/sampled", "data/formatted"):
        assert lock_out_md5(other, path) == lock_out_md5(reproduced_workspace, path), path


def test_a_train_key_reruns_train_and_evaluate_but_not_the_base_into_an_experiment_listed_with_its_metrics(
        reproduced_workspace, experiment_workspace):
    """The session's experiment (`-S train.max_steps=20`): the base model is evaluated once, its figures
    come from DVC's cache, byte for byte."""
    exp = experiment_workspace
    assert stages_run(exp.output) == ["train", "evaluate", "card"]
    assert "Stage 'evaluate_base' didn't change, skipping" in exp.output
    assert lock_out_md5(exp.repo, "reports/base") == lock_out_md5(reproduced_workspace, "reports/base")
    metrics_before = json.loads((reproduced_workspace / "reports/metrics.json").read_text())
    shown = json.loads(run_dvc(exp.repo, "exp", "show", "--json"))
    experiments = {found["name"]: found for rev in shown for found in (rev.get("experiments") or [])}
    assert exp.name in experiments, shown
    data = experiments[exp.name]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["max_steps"] == 20
    metrics = data["metrics"]["reports/metrics.json"]["data"]
    assert metrics == json.loads(exp.metrics), "what exp show lists is what the run wrote"
    assert metrics["base"] == metrics_before["base"] and metrics["adapter"] != metrics_before["adapter"]
    assert metrics["adapter"]["eval_loss"] < metrics["base"]["eval_loss"]
    table = run_dvc(exp.repo, "exp", "show", "--no-pager", "--md")
    assert exp.name in table and "adapter.rouge_l" in table and "adapter_minus_base.eos_stop_rate" in table
