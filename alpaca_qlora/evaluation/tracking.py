"""The evaluation in Weights & Biases, when runtime.wandb_mode (or WANDB_MODE) turns it on: every held-out
row as a W&B Table (prompt, reference, both answers, their scores) and the metrics as the run's summary.

The mode is resolved as for training (alpaca_qlora/training/tracking.py): never blocking, "online" without
a reachable server logs offline. The run is named and grouped after the DVC experiment, job type
"evaluate", beside the train stage's run of the same name.
"""
from __future__ import annotations

import os
from typing import Any

from alpaca_qlora.training.tracking import resolve_wandb_mode, run_revision

TABLE_KEY = "evaluate/generations"
COLUMNS = ["id", "prompt", "reference", "base_answer", "adapter_answer", "base_rouge_l", "adapter_rouge_l",
           "base_exact_match", "adapter_exact_match", "base_stopped_at_eos", "adapter_stopped_at_eos",
           "base_answer_tokens", "adapter_answer_tokens"]


def table_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    return [[record["id"], record["prompt"], record["reference"], record["base"]["answer"],
             record["adapter"]["answer"], record["base"]["rouge_l"], record["adapter"]["rouge_l"],
             record["base"]["exact_match"], record["adapter"]["exact_match"], record["base"]["stopped_at_eos"],
             record["adapter"]["stopped_at_eos"], record["base"]["answer_tokens"], record["adapter"]["answer_tokens"]]
            for record in records]


def flatten(metrics: dict[str, Any], prefix: str = "evaluate/") -> dict[str, float]:
    """{"base": {"rouge_l": x}} -> {"evaluate/base/rouge_l": x}"""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = value
    return flat


def log_generations(metrics: dict[str, Any], records: list[dict[str, Any]], runtime_params: dict[str, Any]) -> str:
    """Log the table and the metrics to W&B unless it is disabled; return the mode used."""
    mode = resolve_wandb_mode(runtime_params["wandb_mode"])
    if mode == "disabled":
        return mode
    # In the environment, not only in init(): wandb's process-wide settings (its telemetry among them) read
    # WANDB_MODE, and an "offline" given to init() alone still lets them try the server.
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_PROJECT", runtime_params["wandb_project"])
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
    import wandb

    revision = run_revision()
    run = wandb.init(project=os.environ["WANDB_PROJECT"], mode=mode, name=revision["dvc_exp_name"],
                     group=revision["dvc_exp_name"], job_type="evaluate", config={"revision": revision})
    try:
        run.log({TABLE_KEY: wandb.Table(columns=COLUMNS, data=table_rows(records))})
        run.summary.update(flatten(metrics))
    finally:
        run.finish()
    return mode
