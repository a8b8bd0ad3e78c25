"""The evaluation's files: the one writer and the one reader of each.

    reports/base/            stage evaluate_base, the base model alone, evaluated once per model.* / evaluate.*
      result.json            its figures, and what they were computed with (model params, path, held-out set)
      answers.jsonl          its answer and scores for every held-out row
      timing.json            seconds: import, load, loss, generation; new tokens/s (not compared)
    reports/                 stage evaluate, the adapter, beside the base read from reports/base/
      metrics.json           base, adapter and adapter_minus_base figures: what `dvc exp show` ranks
      plots/eval.json        the same figures, one row per model, for `dvc plots diff`
      generations.jsonl      every held-out row: id, prompt, reference, base and adapter answers and scores
      timing.json            both models' timing

metrics.json holds no timing, so the same params give the same metrics, and `dvc metrics diff` shows only
what changed in quality.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alpaca_qlora.evaluation.heldout import ModelResult
from alpaca_qlora.evaluation.scores import FIGURES
from alpaca_qlora.files import atomic_directory, file_sha256, read_json, read_jsonl, write_json, write_jsonl

RESULT, ANSWERS, TIMING = "result.json", "answers.jsonl", "timing.json"
COMPARED = ("eval_loss", "eval_perplexity") + FIGURES  # each in base, adapter and adapter_minus_base
ANSWER_KEYS = ("answer", "answer_tokens", "stopped_at_eos", "rouge_l", "exact_match")


class EvaluationMismatch(ValueError):
    """reports/base/ was computed for another base model, held-out set or evaluation setting."""


def setup(model_params: dict[str, Any], evaluate_params: dict[str, Any], path: str, eval_file: Path) -> dict:
    """What a model's figures depend on besides its weights: they compare only when this is equal."""
    return {"model": dict(model_params), "evaluate": dict(evaluate_params), "inference_path": path,
            "eval_jsonl_sha256": file_sha256(eval_file)}


def write_base(out: Path, result: ModelResult, setup_: dict) -> None:
    with atomic_directory(out) as staging:
        write_json(staging / RESULT, {"figures": result.figures, "response_tokens": result.response_tokens,
                                      "setup": setup_})
        write_jsonl(staging / ANSWERS, result.records)
        write_json(staging / TIMING, result.timing)


def read_base(base_dir: Path, expected_setup: dict) -> ModelResult:
    """The base model's result, refused unless it was computed with `expected_setup`."""
    path = Path(base_dir) / RESULT
    if not path.is_file():
        raise EvaluationMismatch(f"{path} not found: run the base model's evaluation first (dvc repro evaluate_base)")
    found = read_json(path)
    differing = sorted(key for key in expected_setup if found["setup"].get(key) != expected_setup[key])
    if differing:
        raise EvaluationMismatch(
            f"{path} was computed with other {', '.join(differing)} than the adapter's evaluation "
            f"(base: {[found['setup'].get(key) for key in differing]}, now: {[expected_setup[k] for k in differing]}); "
            "rerun it (on this machine, if evaluate.backend is auto): dvc repro --force evaluate_base")
    return ModelResult(figures=found["figures"], records=read_jsonl(Path(base_dir) / ANSWERS),
                       response_tokens=found["response_tokens"], timing=read_json(Path(base_dir) / TIMING))


def metrics(base: ModelResult, adapter: ModelResult) -> dict[str, Any]:
    """Base, adapter and adapter_minus_base figures (plus lm-eval's, when evaluate.lm_eval_tasks lists tasks)."""
    found = {"base": {key: base.figures[key] for key in COMPARED},
             "adapter": {key: adapter.figures[key] for key in COMPARED},
             "adapter_minus_base": {key: round(adapter.figures[key] - base.figures[key], 6) for key in COMPARED},
             "eval_rows": len(adapter.records), "eval_response_tokens": adapter.response_tokens}
    if "lm_eval" in base.figures and "lm_eval" in adapter.figures:
        from alpaca_qlora.evaluation.lm_eval import differences

        found["base"]["lm_eval"], found["adapter"]["lm_eval"] = base.figures["lm_eval"], adapter.figures["lm_eval"]
        found["adapter_minus_base"]["lm_eval"] = differences(base.figures["lm_eval"], adapter.figures["lm_eval"])
    return found


def plot_rows(base: ModelResult, adapter: ModelResult) -> list[dict[str, Any]]:
    """One row per model, so `dvc plots diff` draws base vs adapter bars, one bar per experiment."""
    names = {"eval_loss": "loss", "eval_perplexity": "perplexity"}
    return [{"model": name, **{names.get(key, key): result.figures[key] for key in COMPARED}}
            for name, result in (("base", base), ("adapter", adapter))]


def generation_records(rows: list[dict], references: list[str], base: ModelResult,
                       adapter: ModelResult) -> list[dict[str, Any]]:
    """Every held-out row with both models' answers and scores, in the order of data/formatted/eval.jsonl."""
    ids = [row["id"] for row in rows]
    for name, result in (("base", base), ("adapter", adapter)):
        if [record["id"] for record in result.records] != ids:
            raise EvaluationMismatch(f"the {name} answers are not for the rows of data/formatted/eval.jsonl, "
                                     "in order; rerun: dvc repro")
    return [{"id": row["id"], "prompt": row["prompt"], "reference": reference,
             "base": {key: b[key] for key in ANSWER_KEYS}, "adapter": {key: a[key] for key in ANSWER_KEYS},
             "rouge_l_adapter_minus_base": round(a["rouge_l"] - b["rouge_l"], 6)}
            for row, reference, b, a in zip(rows, references, base.records, adapter.records)]


def write_adapter_reports(out: Path, base: ModelResult, adapter: ModelResult, records: list[dict]) -> dict:
    """metrics.json, plots/eval.json, generations.jsonl and timing.json under `out`; returns the metrics."""
    figures = metrics(base, adapter)
    write_json(out / "metrics.json", figures)
    write_json(out / "plots" / "eval.json", plot_rows(base, adapter))
    write_jsonl(out / "generations.jsonl", records)
    write_json(out / TIMING, {"base": base.timing, "adapter": adapter.timing})
    return figures


def parse_generations(text: str, source: str) -> list[dict[str, Any]]:
    """Rows of a generations.jsonl (read from any revision), each checked for the keys comparisons use."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [key for key in ("id", "prompt", "reference", "base", "adapter") if key not in row]
        if missing:
            raise ValueError(f"{source}:{number}: no {', '.join(missing)}; a generations.jsonl from before per-record "
                             "evaluation? rerun: dvc exp run (or dvc repro) at that revision")
        rows.append(row)
    return rows
