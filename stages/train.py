"""Stage `train`: QLoRA fine-tuning with TRL's SFTTrainer on the formatted rows.

Reads params `model.*`, `lora.*`, `train.*` (and the undeclared `runtime.*`, which cannot change the adapter).
Writes models/adapter/ (adapter, tokenizer, metadata.json, the model card README.md), reports/train/ (DVCLive
curves) and reports/timelines/train.json. With train.num_processes > 1 this process launches that many
data-parallel workers, each running main(); only rank 0 writes. A killed run resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

from alpaca_qlora import patches, progress
from alpaca_qlora.errors import run_main
from alpaca_qlora.fast_exit import exit_now
from alpaca_qlora.files import file_sha256, read_json, read_jsonl
from alpaca_qlora.modeling import backends
from alpaca_qlora.modeling.adapter import AdapterMetadata, save_adapter
from alpaca_qlora.modeling.model_card import render_card
from alpaca_qlora.params import check_trainer_names, load_section
from alpaca_qlora.provenance import device_description, library_versions, reproduction
from alpaca_qlora.timeline import Timeline
from alpaca_qlora.training import launch
from alpaca_qlora.training.checkpoints import CHECKPOINTS_DIR, checkpoint_step, run_key


def main() -> None:
    timeline = Timeline()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--formatted", type=Path, default=Path("data/formatted"))
    parser.add_argument("--out", type=Path, default=Path("models/adapter"))
    args = parser.parse_args()
    sections = {name: load_section(name) for name in ("model", "lora", "train")}  # what the adapter depends on
    model_params, lora_params, params, runtime = *sections.values(), load_section("runtime")
    status = launch.setup_process(params["num_processes"], runtime["launcher"], "stages.train", sys.argv[1:])
    if status is not None:  # this process only launched the workers
        sys.exit(status)
    backend = backends.get(params["backend"], model_name=model_params["name"])  # Unsloth before transformers, TRL
    from alpaca_qlora.training import memory, trainer
    check_trainer_names(params)  # transformers' optimizer and scheduler names, before minutes of model loading
    timeline.mark("imports")
    rows = read_jsonl(args.formatted / "train.jsonl")
    data = {"formatted_train_sha256": file_sha256(args.formatted / "train.jsonl"), "train_rows": len(rows)}
    plan = memory.plan_for_run(backend=backend.name, model_params=model_params, lora_params=lora_params,
                               train_params=params, rows=rows)  # batch x accumulation, checkpointing
    key = run_key(model_params, lora_params, {**params, "plan": plan.shape()}, data["formatted_train_sha256"])
    timeline.mark("data_and_plan")
    with patches.for_training(backend.name) as patched:
        model, tokenizer = backend.load_for_training(model_params, lora_params, seed=params["seed"],
                                                     gradient_checkpointing=plan.gradient_checkpointing)
        timeline.mark("model_load")
        outcome = trainer.train(model, tokenizer, rows, model_params=model_params, train_params=params,
                                runtime_params=runtime, plan=plan, checkpoint_dir=CHECKPOINTS_DIR / key,
                                timeline=timeline, run_config={"params": sections, "data": data})
    if outcome.stopped_by_sigterm:  # a checkpoint was saved (trainer.train said where): exit as killed
        sys.exit(128 + signal.SIGTERM)
    if not outcome.is_main_process:
        return

    format_stats = read_json(args.formatted / "stats.json")
    metadata = AdapterMetadata(
        base_model=model_params["name"], backend=backend.name, params=sections, template=format_stats["template"],
        format={"input_free_variant": format_stats["input_free_variant"]},
        data={**data, "sample": format_stats["sample"]}, reproduce={**reproduction(), "checkpoint_run_key": key},
        resumed_from_step=checkpoint_step(outcome.resumed_from) if outcome.resumed_from else None,
        effective={**outcome.effective, **backends.effective_lora(model), "dtype": str(backends.compute_dtype()),
                   "device": device_description(), "patches": patched},
        results=outcome.results(model_load_s=timeline.seconds("model_load")), libraries=library_versions())
    save_adapter(args.out, model, tokenizer, metadata, card=render_card(metadata), timeline=timeline)
    shutil.rmtree(CHECKPOINTS_DIR / key, ignore_errors=True)  # the adapter is safe: its checkpoints are not
    timeline.write("train", last_phase="save")
    print(progress.summary(f"train: {outcome.describe()}; wrote {args.out}/; {timeline.summary()}"))


if __name__ == "__main__":
    run_main(main)
    exit_now()  # outputs are complete: skip the interpreter's teardown (alpaca_qlora/fast_exit.py)
