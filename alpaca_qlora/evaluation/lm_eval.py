"""Regression benchmarks through EleutherAI's lm-evaluation-harness, off unless evaluate.lm_eval_tasks lists tasks.

For users with network who want to know whether the fine-tune hurt general ability (arc_easy, hellaswag,
...): both evaluate stages hand their already loaded model (same inference path, base alone or with the
adapter) to lm-eval's HFLM, so the base is scored once per model.* / evaluate.* setting like the rest of
its figures, and metrics.json holds `lm_eval` figures for base, adapter and adapter_minus_base.

A task is an lm-eval task or group name, or the path of a task YAML file (a local task: any JSON/JSONL
data through `dataset_path: json`), resolved from the repository root. Numeric metrics only; lm-eval's
standard errors ("..._stderr") are left out. `evaluate.lm_eval_limit` caps the examples per task (0: all).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def task_specs(tasks: list[str]) -> list[str | dict[str, Any]]:
    """Names as they are; a path ending in .yaml/.yml loaded as a task config, with the loader lm-eval's own
    command line uses for such paths (lm_eval.config.evaluate_config: `_yaml_loader.load_yaml`)."""
    specs = []
    for task in tasks:
        if task.endswith((".yaml", ".yml")):
            if not Path(task).is_file():
                raise FileNotFoundError(f"evaluate.lm_eval_tasks: {task} not found (a task YAML path is read "
                                        "from the repository root)")
            from lm_eval.tasks._yaml_loader import load_yaml

            specs.append(load_yaml(Path(task).resolve(), resolve_func=True))
        else:
            specs.append(task)
    return specs


def lm_eval_scores(model, tokenizer, params: dict[str, Any]) -> dict[str, Any]:
    """{"lm_eval": {task: {metric: value}}} for evaluate.lm_eval_tasks; {} when none is listed."""
    if not params["lm_eval_tasks"]:
        return {}
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    model.eval()
    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=params["batch_size"])
    found = evaluator.simple_evaluate(model=harness_model, tasks=task_specs(params["lm_eval_tasks"]),
                                      limit=params["lm_eval_limit"] or None, log_samples=False,
                                      bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                      fewshot_random_seed=0)
    if found is None:
        raise RuntimeError("lm-eval returned no results for evaluate.lm_eval_tasks "
                           f"{params['lm_eval_tasks']} (only the main process of a distributed run gets them)")
    scores = {}
    for task, values in sorted(found["results"].items()):
        # Metrics are keyed "<metric>,<filter>" ("acc,none"); "alias" and "sample_len" are not metrics.
        scores[task] = {metric.split(",")[0]: round(float(value), 6) for metric, value in sorted(values.items())
                        if "," in metric and "_stderr" not in metric and isinstance(value, (int, float))
                        and not isinstance(value, bool)}
    return {"lm_eval": scores}


def differences(base: dict[str, dict[str, float]], adapter: dict[str, dict[str, float]]) -> dict:
    """adapter - base for every task and metric both have."""
    return {task: {metric: round(adapter[task][metric] - value, 6) for metric, value in metrics.items()
                   if metric in adapter.get(task, {})} for task, metrics in base.items() if task in adapter}
