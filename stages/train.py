"""Stage `train`: QLoRA fine-tuning with TRL's SFTTrainer on the formatted rows.

Reads params `model.*`, `lora.*`, `train.*`. Writes models/adapter/ (adapter safetensors +
adapter_config.json, the tokenizer, metadata.json describing how it was made) and reports/train/ (DVCLive
training curves). Backend "unsloth" or "hf" only changes how the model is loaded (alpaca_qlora.models).
With train.num_processes > 1 this process relaunches the stage as that many data-parallel workers
(alpaca_qlora.distributed); every worker runs main() below, and only rank 0 writes outputs.
Every `train.save_steps` steps a checkpoint goes to build/checkpoints/<run key>/ (alpaca_qlora.checkpoints);
a rerun after a kill resumes from the last complete one. The adapter folder is written to a temporary
name and renamed when complete (alpaca_qlora.atomic), so a failed save never leaves a valid-looking adapter.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

# Unsloth must be imported before transformers/TRL to patch them; models.py imports it lazily, so the
# backend is read first and Unsloth imported here when chosen.
from alpaca_qlora import distributed
from alpaca_qlora.params import load_section


class RealTokenCounter:
    """Wraps the data collator to count the real tokens this process consumed.

    Counted on the rows before collation (no padding yet, whether padded, padding-free or packed), leaving
    out the filler rows of distributed.pad_to_even_shards. Under DDP each rank counts its own share and the
    stage sums them.
    """

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, features):
        distributed.record_batch(features)
        self.tokens += sum(len(f["input_ids"]) for f in features if not distributed.is_filler(f))
        return self.collator(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--formatted", type=Path, default=Path("data/formatted"))
    parser.add_argument("--out", type=Path, default=Path("models/adapter"))
    args = parser.parse_args()
    params, model_params, lora_params = load_section("train"), load_section("model"), load_section("lora")
    if params["num_processes"] > 1 and not distributed.is_worker():
        sys.exit(distributed.relaunch(params["num_processes"], params["launcher"], "stages.train", sys.argv[1:]))
    if distributed.is_worker():
        distributed.check_worker(params["num_processes"])
    elif (narrowed := distributed.use_one_gpu()) is not None:
        print(f"train: train.num_processes is 1, so one GPU (CUDA_VISIBLE_DEVICES={narrowed}); "
              "set train.num_processes to use more")
    if params["backend"] == "unsloth":
        import unsloth  # noqa: F401  (patches transformers, peft and TRL; must come first)

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alpaca_qlora.checkpoints import (CHECKPOINTS_DIR, CheckpointOnSigterm, MarkCompleteCallback,
                                          last_complete_checkpoint, load_adapter_in_place, logged_history,
                                          replay_into_dvclive, run_key)
    from alpaca_qlora.data import read_jsonl
    from alpaca_qlora.metadata import file_sha256
    from alpaca_qlora.models import compute_dtype, load_for_training
    from alpaca_qlora.tracking import TRAIN_LOG_DIR, training_callbacks_and_reporters

    distributed.bind_device()
    started = time.perf_counter()
    rows = read_jsonl(args.formatted / "train.jsonl")
    data_sha256 = file_sha256(args.formatted / "train.jsonl")
    key = run_key(model_params, lora_params, params, data_sha256)
    checkpoint_dir = CHECKPOINTS_DIR / key
    resume_from = last_complete_checkpoint(checkpoint_dir) if params["save_steps"] else None
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]}
                                 for r in rows])
    model, tokenizer = load_for_training(params["backend"], model_params, lora_params, seed=params["seed"])
    load_seconds = time.perf_counter() - started
    # Rank 0 alone logs: a DVCLive Live() on another rank would reset reports/train/ under rank 0's feet.
    callbacks, reporters = training_callbacks_and_reporters(params, run_config={
        "params": {"model": model_params, "lora": lora_params, "train": params},
        "data": {"formatted_train_sha256": data_sha256, "train_rows": len(rows)},
    }) if distributed.is_main_process() else ([], [])
    if resume_from is not None:
        print(f"train: resuming from {resume_from} (delete {checkpoint_dir} to start over)")
        if callbacks:
            replay_into_dvclive(callbacks[0].live, logged_history(resume_from))
    on_gpu, dtype = torch.cuda.is_available(), compute_dtype()
    config = SFTConfig(
        output_dir=str(checkpoint_dir), report_to=reporters,
        save_strategy="steps" if params["save_steps"] else "no", save_steps=params["save_steps"] or 500,
        save_total_limit=2,  # the newest complete checkpoint survives while the next one is written
        per_device_train_batch_size=params["batch_size"],
        gradient_accumulation_steps=params["gradient_accumulation_steps"],
        num_train_epochs=params["epochs"], max_steps=params["max_steps"], learning_rate=params["learning_rate"],
        lr_scheduler_type=params["lr_scheduler"], warmup_steps=params["warmup_steps"],
        weight_decay=params["weight_decay"], optim=params["optimizer"], seed=params["seed"],
        data_seed=params["seed"], logging_steps=params["logging_steps"],
        max_length=model_params["max_seq_length"], packing=params["packing"], packing_strategy="bfd",
        completion_only_loss=not params["train_on_prompt"],
        bf16=on_gpu and dtype == torch.bfloat16, fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu, dataset_num_proc=1, disable_tqdm=True,
        # DDP: every LoRA weight gets a gradient each step; the search for unused ones breaks under gradient
        # checkpointing ("marked ready twice"). Unsloth sets the same for its models. Ignored in one process.
        ddp_find_unused_parameters=False,
    )
    sigterm = CheckpointOnSigterm()
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=callbacks + [MarkCompleteCallback(), sigterm])
    # The Trainer restores optimizer, scheduler, RNG and data position; the adapter weights are copied into
    # the existing LoRA modules instead of being rebuilt (see load_adapter_in_place for why).
    trainer._load_from_checkpoint = lambda checkpoint, model=None: load_adapter_in_place(model or trainer.model,
                                                                                         Path(checkpoint))
    processes = trainer.accelerator.num_processes
    trainer.train_dataset, filler_rows = distributed.pad_to_even_shards(
        trainer.train_dataset, rows_per_device_batch=params["batch_size"], num_processes=processes,
        pad_token_id=tokenizer.pad_token_id)
    batch = {"num_processes": processes, "per_device_batch_size": params["batch_size"],
             "gradient_accumulation_steps": params["gradient_accumulation_steps"],
             "effective_batch_size": params["batch_size"] * params["gradient_accumulation_steps"] * processes}
    if callbacks:
        callbacks[0].live.log_params({"effective_batch": batch})
    counter = RealTokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if sigterm.received:
        print(f"train: SIGTERM: stopped at step {result.global_step}"
              + (f", checkpoint saved in {checkpoint_dir}; rerun `dvc repro` to resume" if params["save_steps"]
                 else "; train.save_steps is 0, so the next run starts over"))
        sys.exit(128 + signal.SIGTERM)
    real_tokens, divergence = counter.tokens, 0.0
    if processes > 1:  # every rank counted its own share; the replicas must have stayed in step
        real_tokens = int(trainer.accelerator.reduce(
            torch.tensor(counter.tokens, device=trainer.accelerator.device), reduction="sum"))
        divergence = distributed.replica_divergence(model)
        if divergence > 1e-6:
            raise distributed.LaunchError(
                f"train: the {processes} processes ended with different LoRA weights (largest difference "
                f"{divergence:.2e}): gradients were not synchronized, so this was not data-parallel training")
    if not trainer.accelerator.is_main_process:
        return

    train_seconds = result.metrics["train_runtime"]
    effective = {**batch, "filler_rows": filler_rows, "replica_divergence": divergence}
    save_adapter(args.out, model, tokenizer, adapter_metadata(
        trainer, result, model_params, lora_params, params, args.formatted, data_sha256, len(rows), dtype,
        load_seconds, real_tokens, resume_from, key, effective))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the adapter is safe: its checkpoints are not needed
    print(f"train: loss {result.training_loss:.4f}, {result.global_step} steps, {train_seconds:.1f}s, "
          f"{real_tokens / train_seconds:.0f} real tokens/s over {processes} process(es), effective batch "
          f"{batch['effective_batch_size']} rows; adapter in {args.out}, curves in {TRAIN_LOG_DIR}")


def save_adapter(out: Path, model, tokenizer, metadata: dict) -> None:
    """Adapter safetensors, config, tokenizer and metadata.json, all renamed into `out` at once when complete:
    a full disk or a kill while saving leaves no folder that looks like a valid adapter."""
    from alpaca_qlora.atomic import atomic_directory
    from alpaca_qlora.data import write_json

    with atomic_directory(out) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        write_json(staging / "metadata.json", metadata)


def adapter_metadata(trainer, result, model_params, lora_params, params, formatted: Path, data_sha256: str,
                     train_rows: int, dtype, load_seconds: float, real_tokens: int, resume_from, key: str,
                     batch: dict) -> dict:
    """Everything needed to reproduce the adapter, and what happened while making it."""
    from alpaca_qlora import packed_attention
    from alpaca_qlora.checkpoints import checkpoint_step
    from alpaca_qlora.data import read_json
    from alpaca_qlora.metadata import device_description, git_revision, library_versions, peak_memory_gib

    train_seconds = result.metrics["train_runtime"]
    format_stats = read_json(formatted / "stats.json")
    return {
        "base_model": model_params["name"],
        "backend": params["backend"],
        "params": {"model": model_params, "lora": lora_params, "train": params},
        "template": format_stats["template"],
        "format": {"input_free_variant": format_stats["input_free_variant"]},
        "data": {"formatted_train_sha256": data_sha256, "train_rows": train_rows},
        "reproduce": {"command": "dvc repro", "git": git_revision(), "checkpoint_run_key": key},
        # Steps restored from a checkpoint of a killed run (None: trained from step 0 in one go). The
        # results below (runtime, real_tokens) cover this process's steps only.
        "resumed_from_step": checkpoint_step(resume_from) if resume_from else None,
        "effective": {  # what actually ran, after the libraries' own adjustments (Unsloth on CPU, ...)
            "optimizer": str(trainer.args.optim), "packing": bool(trainer.args.packing),
            "padding_free": bool(getattr(trainer.args, "padding_free", False)),
            "completion_only_loss": trainer.args.completion_only_loss, "dtype": str(dtype),
            "device": device_description(), "global_steps": result.global_step,
            "packed_attention": packed_attention.STATUS,
            # rows per optimizer step (packed rows when packing); filler rows: distributed.pad_to_even_shards
            **batch,
        },
        "results": {
            "train_loss": round(result.training_loss, 6), "train_runtime_s": round(train_seconds, 2),
            "model_load_s": round(load_seconds, 2), "real_tokens": real_tokens,
            "real_tokens_per_s": round(real_tokens / train_seconds, 1), **peak_memory_gib(),
        },
        "libraries": library_versions(),
    }


if __name__ == "__main__":
    main()
