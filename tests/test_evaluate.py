"""Stage `evaluate`: base vs base+adapter held-out loss, perplexity, and a readable generations report."""
from __future__ import annotations

import json
import math


def test_adapter_loss_is_clearly_below_the_base_models(reproduced_workspace):
    metrics = json.loads((reproduced_workspace / "reports/metrics.json").read_text())
    assert metrics["eval_rows"] == 64 and metrics["eval_response_tokens"] > 500
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 2.0
    assert math.isclose(metrics["eval_perplexity"], math.exp(metrics["eval_loss"]), rel_tol=1e-3)
    assert math.isclose(metrics["base_eval_perplexity"], math.exp(metrics["base_eval_loss"]), rel_tol=1e-3)
    assert metrics["generation_prompts_per_s"] > 0


def test_generations_report_shows_each_prompt_with_its_reference(reproduced_workspace):
    report = (reproduced_workspace / "reports/generations.md").read_text()
    eval_rows = [json.loads(line) for line in
                 (reproduced_workspace / "data/formatted/eval.jsonl").read_text().splitlines()[:4]]
    assert report.count("## Record ") == 4
    for row in eval_rows:
        assert f"## Record {row['id']}" in report and row["completion"] in report
    assert report.count("**Fine-tuned (base + adapter)**") == 4 and report.count("**Base model**") == 4


def test_metrics_are_declared_at_the_top_level_for_dvc(reproduced_workspace):
    from tests.conftest import run_dvc

    shown = json.loads(run_dvc(reproduced_workspace, "metrics", "show", "--json"))
    (workspace,) = shown.values()  # DVC 3.67 keys the workspace as ""
    files = workspace["data"]
    assert set(files) == {"reports/metrics.json", "reports/train/metrics.json"}
    metrics = files["reports/metrics.json"]["data"]
    assert metrics["eval_loss"] < metrics["base_eval_loss"] and files["reports/train/metrics.json"]["data"]["step"] == 100
