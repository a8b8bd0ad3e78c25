"""Stages `evaluate_base` and `evaluate` on the offline profile: every held-out row answered by base and
adapter, scored, side by side in reports/metrics.json, per record in reports/generations.jsonl."""
from __future__ import annotations

import json
import math

import pytest

from alpaca_qlora.evaluation.scores import exact_match, rouge_l_f1
from alpaca_qlora.files import read_jsonl
from tests.conftest import run_dvc

FIGURES = {"eval_loss", "eval_perplexity", "rouge_l", "exact_match", "mean_answer_tokens", "eos_stop_rate"}


@pytest.fixture(scope="module")
def evaluated(reproduced_workspace):
    workspace = reproduced_workspace
    return (workspace, json.loads((workspace / "reports/metrics.json").read_text()),
            read_jsonl(workspace / "reports/generations.jsonl"), read_jsonl(workspace / "data/formatted/eval.jsonl"))


def test_the_adapter_beats_the_base_on_every_figure_the_issue_names(evaluated):
    _, metrics, _, rows = evaluated
    base, adapter, change = metrics["base"], metrics["adapter"], metrics["adapter_minus_base"]
    assert set(base) == set(adapter) == set(change) == FIGURES
    assert metrics["eval_rows"] == len(rows) == 64 and metrics["eval_response_tokens"] > 500
    assert adapter["rouge_l"] > base["rouge_l"] + 0.1, "the fine-tune answers like the references"
    assert adapter["eos_stop_rate"] >= base["eos_stop_rate"] and adapter["eos_stop_rate"] > 0.2, "it learnt to stop"
    assert adapter["eval_loss"] < base["eval_loss"] - 2.0
    for figures in (base, adapter):
        assert math.isclose(figures["eval_perplexity"], math.exp(figures["eval_loss"]), rel_tol=1e-3)
    for key in FIGURES:
        assert change[key] == pytest.approx(adapter[key] - base[key], abs=1e-6)


def test_every_held_out_row_has_both_answers_scored_from_its_reference(evaluated):
    workspace, metrics, records, rows = evaluated
    assert [record["id"] for record in records] == [row["id"] for row in rows], "every row, in eval.jsonl's order"
    max_new_tokens = 32  # profiles/offline.yaml
    for record, row in zip(records, rows):
        assert record["prompt"] == row["prompt"] and record["reference"] + "</s>" == row["completion"]
        for model in ("base", "adapter"):
            answer = record[model]
            assert answer["rouge_l"] == pytest.approx(rouge_l_f1(answer["answer"], record["reference"]), abs=1e-6)
            assert answer["exact_match"] == exact_match(answer["answer"], record["reference"])
            assert answer["stopped_at_eos"] or answer["answer_tokens"] == max_new_tokens, "cut only at the limit"
        assert record["rouge_l_adapter_minus_base"] == pytest.approx(
            record["adapter"]["rouge_l"] - record["base"]["rouge_l"], abs=1e-6)
    for model in ("base", "adapter"):
        answers = [record[model] for record in records]
        assert metrics[model]["rouge_l"] == pytest.approx(sum(a["rouge_l"] for a in answers) / 64, abs=1e-6)
        assert metrics[model]["eos_stop_rate"] == pytest.approx(sum(a["stopped_at_eos"] for a in answers) / 64)
        assert metrics[model]["mean_answer_tokens"] == round(sum(a["answer_tokens"] for a in answers) / 64, 4)
    assert sum(bool(record["adapter"]["answer"]) for record in records) > 48, "the adapter answers, not only EOS"

    base = json.loads((workspace / "reports/base/result.json").read_text())
    assert {key: base["figures"][key] for key in FIGURES} == metrics["base"], "the base figures come from its stage"
    assert base["setup"]["inference_path"] == "merged" and base["setup"]["model"]["name"] == "offline:tiny-mistral"
    timing = json.loads((workspace / "reports/timing.json").read_text())
    for model in ("base", "adapter"):
        assert timing[model]["prompts"] == 64 and timing[model]["new_tokens_per_s"] > 0
        assert {"import_s", "load_s", "loss_s", "generation_s", "total_s"} <= set(timing[model])


def test_generations_report_shows_where_base_and_adapter_differ_most(evaluated):
    workspace, metrics, records, _ = evaluated
    report = (workspace / "reports/generations.md").read_text()
    assert f"| ROUGE-L F1 | {metrics['base']['rouge_l']:.4f} | {metrics['adapter']['rouge_l']:.4f} |" in report
    shown = [int(line.split()[2].rstrip(":")) for line in report.splitlines() if line.startswith("### Record ")]
    gaps = {record["id"]: abs(record["rouge_l_adapter_minus_base"]) for record in records}
    assert len(shown) == 20 and [gaps[i] for i in shown] == sorted(gaps.values(), reverse=True)[:20]
    first = next(record for record in records if record["id"] == shown[0])
    assert first["reference"] in report and first["adapter"]["answer"] in report
    better = sum(r["adapter"]["rouge_l"] > r["base"]["rouge_l"] for r in records)
    assert f"the adapter higher in {better}," in report


def test_metrics_are_declared_at_the_top_level_for_dvc(reproduced_workspace):
    shown = json.loads(run_dvc(reproduced_workspace, "metrics", "show", "--json"))
    (workspace,) = shown.values()  # DVC 3.67 keys the workspace as ""
    files = workspace["data"]
    assert set(files) == {"reports/metrics.json", "reports/train/metrics.json"}
    metrics = files["reports/metrics.json"]["data"]
    assert metrics["adapter"]["rouge_l"] > metrics["base"]["rouge_l"]
    assert files["reports/train/metrics.json"]["data"]["step"] == 100


def test_one_inference_rule_for_both_stages_and_the_generate_command():
    from alpaca_qlora.modeling import inference
    from alpaca_qlora.params import CHOICES

    assert inference.CHOICES == CHOICES[("evaluate", "backend")] and inference.PATHS == ("unsloth", "hf", "merged")
    assert inference.resolve("auto", cuda_available=True, gpu_total_gib=139.8) == "merged", "an H200"
    assert inference.resolve("auto", cuda_available=True, gpu_total_gib=15.6) == "unsloth", "a 16 GB card"
    assert inference.resolve("auto", cuda_available=False) == "merged"
    assert inference.resolve("hf", cuda_available=True) == "hf"
    with pytest.raises(ValueError, match="must be one of auto, unsloth, hf, merged, got 'vllm'"):
        inference.resolve("vllm")


def test_the_adapter_stage_refuses_base_results_computed_with_another_setup(evaluated, tmp_path):
    """reports/base/ made for another held-out set, model or path is never put beside the adapter's figures."""
    from alpaca_qlora.evaluation.results import EvaluationMismatch, read_base

    workspace = evaluated[0]
    found = json.loads((workspace / "reports/base/result.json").read_text())
    setup = dict(found["setup"])
    assert read_base(workspace / "reports/base", setup).figures == found["figures"]
    with pytest.raises(EvaluationMismatch, match="other inference_path than the adapter's evaluation"):
        read_base(workspace / "reports/base", {**setup, "inference_path": "hf"})
    with pytest.raises(EvaluationMismatch, match="not found: run the base model's evaluation first"):
        read_base(tmp_path, setup)
