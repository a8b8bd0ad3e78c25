"""One training run: TRL's SFTTrainer set up from params, run to the end (or to a SIGTERM), and what it did.

The train stage and benchmarks/packing_check.py both build their trainer with `sft_config` here, so the
packing proof runs on the stage's own configuration, not on a copy of it. On top of TRL's SFTTrainer a run
adds: resume from the last complete checkpoint with the LoRA weights copied in place (checkpoints.py),
filler rows that keep data-parallel shards even (distributed.py), a count of the real tokens trained, a
checkpoint on SIGTERM, and the replica check after data-parallel training.
It imports transformers: import it after modeling.backends.get(), which imports Unsloth first.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from alpaca_qlora.training import distributed, launch
from alpaca_qlora.training.checkpoints import (PREFIX, last_complete_checkpoint, load_adapter_in_place,
                                               logged_history, mark_complete, replay_into_dvclive)
from alpaca_qlora.training.tracking import training_callbacks_and_reporters


def sft_config(*, model_params: dict, train_params: dict, runtime_params: dict, output_dir: Path,
               report_to: list[str]):
    """TRL's SFTConfig for the stage's params: the one place where params become trainer arguments."""
    import torch
    from trl import SFTConfig

    from alpaca_qlora.modeling.backends import compute_dtype

    on_gpu, dtype = torch.cuda.is_available(), compute_dtype()
    save_steps = runtime_params["save_steps"]
    return SFTConfig(
        output_dir=str(output_dir), report_to=report_to,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        save_total_limit=2,  # the newest complete checkpoint survives while the next one is written
        per_device_train_batch_size=train_params["batch_size"],
        gradient_accumulation_steps=train_params["gradient_accumulation_steps"],
        num_train_epochs=train_params["epochs"], max_steps=train_params["max_steps"],
        learning_rate=train_params["learning_rate"], lr_scheduler_type=train_params["lr_scheduler"],
        warmup_steps=train_params["warmup_steps"], weight_decay=train_params["weight_decay"],
        optim=train_params["optimizer"], seed=train_params["seed"], data_seed=train_params["seed"],
        neftune_noise_alpha=train_params["neftune_noise_alpha"] or None,  # None: off, as TRL expects
        logging_steps=runtime_params["logging_steps"], max_length=model_params["max_seq_length"],
        packing=train_params["packing"], packing_strategy="bfd", completion_only_loss=not train_params["train_on_prompt"],
        bf16=on_gpu and dtype == torch.bfloat16, fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu, dataset_num_proc=1, disable_tqdm=True,
        # DDP: every LoRA weight gets a gradient each step; the search for unused ones breaks under gradient
        # checkpointing ("marked ready twice"). Unsloth sets the same for its models. Ignored in one process.
        ddp_find_unused_parameters=False,
    )


def training_dataset(rows: list[dict[str, Any]]):
    """The formatted rows as the datasets.Dataset SFTTrainer takes: token ids and the completion mask only."""
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]} for r in rows])


class RealTokenCounter:
    """Wraps the data collator to count the real tokens this process consumed.

    Counted on the rows before collation (no padding yet, whether padded, padding-free or packed), leaving
    out the filler rows of distributed.pad_to_even_shards. Under DDP each rank counts its own share.
    """

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, features):
        distributed.record_batch(features)
        self.tokens += sum(len(f["input_ids"]) for f in features if not distributed.is_filler(f))
        return self.collator(features)


class MarkCompleteCallback(TrainerCallback):
    """Writes the completeness marker once the Trainer has finished writing checkpoint-N (on_save runs after)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            mark_complete(Path(args.output_dir) / f"{PREFIX}{state.global_step}", state.global_step)
        return control


class CheckpointOnSigterm(TrainerCallback):
    """On SIGTERM (what schedulers, Kubernetes and spot/preemptible VMs send before killing), finish the
    current optimizer step, save a checkpoint and stop, instead of dying and losing up to save_steps steps.

    The stage then exits with 143 (128 + SIGTERM) without writing the adapter; `dvc repro` resumes there.
    A second SIGTERM, or SIGKILL, ends the process at once, and the last complete checkpoint is used.
    """

    def __init__(self):
        self.received = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if self.received:  # asked twice: stop now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.received = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = args.save_strategy != "no"
            control.should_training_stop = True
        return control


def pipeline_trainer(**kwargs):
    """An SFTTrainer that resumes LoRA weights in place, keeps DDP shards even and counts real tokens.

    TRL is imported here, after the backend (modeling.backends.get), so that Unsloth has patched it.
    """
    from trl import SFTTrainer

    class PipelineTrainer(SFTTrainer):
        def __init__(self, **arguments):
            super().__init__(**arguments)
            # SFTTrainer prepares (tokenizes, packs) the dataset in __init__: the filler rows go on that.
            self.train_dataset, self.filler_rows = distributed.pad_to_even_shards(
                self.train_dataset, rows_per_device_batch=self.args.per_device_train_batch_size,
                num_processes=self.accelerator.num_processes, pad_token_id=self.processing_class.pad_token_id)
            self.data_collator = self.token_counter = RealTokenCounter(self.data_collator)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            # The Trainer restores optimizer, scheduler, RNG and data position; the adapter weights are copied
            # into the existing LoRA modules instead of being rebuilt (see load_adapter_in_place for why).
            load_adapter_in_place(model or self.model, Path(resume_from_checkpoint))

    return PipelineTrainer(**kwargs)


@dataclass
class TrainOutcome:
    result: Any  # transformers' TrainOutput
    real_tokens: int  # summed over the processes
    resumed_from: Path | None
    stopped_by_sigterm: bool
    is_main_process: bool
    effective: dict[str, Any] = field(default_factory=dict)  # what ran: batch, optimizer, packing, ...


def train(model, tokenizer, rows: list[dict[str, Any]], *, model_params: dict, train_params: dict,
          runtime_params: dict, checkpoint_dir: Path, run_config: dict) -> TrainOutcome:
    """Train `model` on `rows`, resuming from the last complete checkpoint in `checkpoint_dir` if any."""
    import torch

    resume_from = last_complete_checkpoint(checkpoint_dir) if runtime_params["save_steps"] else None
    # Rank 0 alone logs: a DVCLive Live() on another rank would reset reports/train/ under rank 0's feet.
    callbacks, reporters = (training_callbacks_and_reporters(runtime_params, run_config=run_config)
                            if launch.is_main_process() else ([], []))
    if resume_from is not None:
        print(f"train: resuming from {resume_from} (delete {checkpoint_dir} to start over)")
        if callbacks:
            replay_into_dvclive(callbacks[0].live, logged_history(resume_from))
    sigterm = CheckpointOnSigterm()
    config = sft_config(model_params=model_params, train_params=train_params, runtime_params=runtime_params,
                        output_dir=checkpoint_dir, report_to=reporters)
    trainer = pipeline_trainer(model=model, args=config, train_dataset=training_dataset(rows),
                               processing_class=tokenizer, callbacks=callbacks + [MarkCompleteCallback(), sigterm])
    processes = trainer.accelerator.num_processes
    effective = {"num_processes": processes, "per_device_batch_size": config.per_device_train_batch_size,
                 "gradient_accumulation_steps": config.gradient_accumulation_steps,
                 "effective_batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps
                 * processes, "filler_rows": trainer.filler_rows}
    if callbacks:
        callbacks[0].live.log_params({"effective_batch": effective})
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    outcome = TrainOutcome(result=result, real_tokens=trainer.token_counter.tokens, resumed_from=resume_from,
                           stopped_by_sigterm=sigterm.received, is_main_process=trainer.accelerator.is_main_process)
    if outcome.stopped_by_sigterm:
        print(f"train: SIGTERM: stopped at step {result.global_step}" + (
            f", checkpoint saved in {checkpoint_dir}; rerun `dvc repro` to resume" if runtime_params["save_steps"]
            else "; runtime.save_steps is 0, so the next run starts over"))
        return outcome
    divergence = 0.0
    if processes > 1:  # every rank counted its own share; the replicas must have stayed in step
        outcome.real_tokens = int(trainer.accelerator.reduce(
            torch.tensor(outcome.real_tokens, device=trainer.accelerator.device), reduction="sum"))
        divergence = distributed.replica_divergence(model)
        if divergence > 1e-6:
            raise launch.LaunchError(
                f"train: the {processes} processes ended with different LoRA weights (largest difference "
                f"{divergence:.2e}): gradients were not synchronized, so this was not data-parallel training")
    args = trainer.args
    outcome.effective = {
        "optimizer": str(args.optim), "packing": bool(args.packing),
        "padding_free": bool(getattr(args, "padding_free", False)), "completion_only_loss": args.completion_only_loss,
        "neftune_noise_alpha": trainer.neftune_noise_alpha,
        "global_steps": result.global_step, **effective, "replica_divergence": divergence}
    return outcome
