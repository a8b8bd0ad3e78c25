"""Stage `train`: QLoRA fine-tuning with TRL's SFTTrainer on the formatted rows.

Reads params `model.*`, `lora.*`, `train.*` (and `runtime.*`, which no stage declares: logging, checkpoint
cadence, the launcher and W&B cannot change the adapter). Writes models/adapter/ (adapter safetensors,
adapter_config.json, the tokenizer, metadata.json, the model card README.md) and reports/train/ (DVCLive
curves). With train.num_processes > 1 this process launches that many data-parallel workers, each running
main() below; only rank 0 writes outputs. A killed run resumes from its last complete checkpoint.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

from alpaca_qlora import patches
from alpaca_qlora.files import file_sha256, read_json, read_jsonl
from alpaca_qlora.modeling import backends
from alpaca_qlora.modeling.adapter import AdapterMetadata, save_adapter
from alpaca_qlora.modeling.model_card import render_card
from alpaca_qlora.params import load_section
from alpaca_qlora.provenance import device_description, library_versions, peak_memory_gib, reproduction
from alpaca_qlora.training import launch
from alpaca_qlora.training.checkpoints import CHECKPOINTS_DIR, checkpoint_step, run_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--formatted", type=Path, default=Path("data/formatted"))
    parser.add_argument("--out", type=Path, default=Path("models/adapter"))
    args = parser.parse_args()
    model_params, lora_params = load_section("model"), load_section("lora")
    params, runtime = load_section("train"), load_section("runtime")
    status = launch.setup_process(params["num_processes"], runtime["launcher"], "stages.train", sys.argv[1:])
    if status is not None:  # this process only launched the workers
        sys.exit(status)
    backend = backends.get(params["backend"])  # imports Unsloth before transformers and TRL
    from alpaca_qlora.training import trainer

    started = time.perf_counter()
    rows = read_jsonl(args.formatted / "train.jsonl")
    data = {"formatted_train_sha256": file_sha256(args.formatted / "train.jsonl"), "train_rows": len(rows)}
    key = run_key(model_params, lora_params, params, data["formatted_train_sha256"])
    with patches.for_training(backend.name) as patched:
        model, tokenizer = backend.load_for_training(model_params, lora_params, seed=params["seed"])
        load_seconds = time.perf_counter() - started
        outcome = trainer.train(model, tokenizer, rows, model_params=model_params, train_params=params,
                                runtime_params=runtime, checkpoint_dir=CHECKPOINTS_DIR / key, run_config={
                                    "params": {"model": model_params, "lora": lora_params, "train": params},
                                    "data": data})
    if outcome.stopped_by_sigterm:  # a checkpoint was saved (trainer.train said where): exit as killed
        sys.exit(128 + signal.SIGTERM)
    if not outcome.is_main_process:
        return

    seconds, format_stats = outcome.result.metrics["train_runtime"], read_json(args.formatted / "stats.json")
    metadata = AdapterMetadata(
        base_model=model_params["name"], backend=backend.name,
        params={"model": model_params, "lora": lora_params, "train": params}, template=format_stats["template"],
        format={"input_free_variant": format_stats["input_free_variant"]},
        data={**data, "sample": format_stats["sample"]},
        reproduce={**reproduction(), "checkpoint_run_key": key},
        resumed_from_step=checkpoint_step(outcome.resumed_from) if outcome.resumed_from else None,
        effective={**outcome.effective, **backends.effective_lora(model), "dtype": str(backends.compute_dtype()),
                   "device": device_description(), "patches": patched},
        results={"train_loss": round(outcome.result.training_loss, 6), "train_runtime_s": round(seconds, 2),
                 "model_load_s": round(load_seconds, 2), "real_tokens": outcome.real_tokens,
                 "real_tokens_per_s": round(outcome.real_tokens / seconds, 1), **peak_memory_gib()},
        libraries=library_versions())
    save_adapter(args.out, model, tokenizer, metadata, card=render_card(metadata))
    shutil.rmtree(CHECKPOINTS_DIR / key, ignore_errors=True)  # the adapter is safe: its checkpoints are not
    print(f"train: loss {outcome.result.training_loss:.4f}, {outcome.result.global_step} steps, {seconds:.1f}s, "
          f"{outcome.real_tokens / seconds:.0f} real tokens/s over {outcome.effective['num_processes']} "
          f"process(es), effective batch {outcome.effective['effective_batch_size']} rows; adapter in {args.out}")


if __name__ == "__main__":
    main()
