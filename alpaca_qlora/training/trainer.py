"""One training run: TRL's SFTTrainer set up from params, run to the end (or to a SIGTERM), and what it did.

The train stage and benchmarks/packing_check.py both build their trainer with `sft_config` here, so the
packing proof runs on the stage's own configuration, not on a copy of it. On top of TRL's SFTTrainer a run
adds: resume from the last complete checkpoint with the LoRA weights copied in place (checkpoints.py),
filler rows that keep data-parallel shards even (distributed.py), a count of the real tokens trained, a
checkpoint on SIGTERM, and the replica check after data-parallel training.
It imports transformers: import it after modeling.backends.get(), which imports Unsloth first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_qlora import progress
from alpaca_qlora.provenance import peak_memory_gib
from alpaca_qlora.training import distributed, launch
from alpaca_qlora.training.callbacks import (CheckpointingProbe, CheckpointOnSigterm, MarkCompleteCallback,
                                             RealTokenCounter, TimelineCallback)
from alpaca_qlora.training.checkpoints import load_adapter_in_place, logged_history, replay_into_dvclive
from alpaca_qlora.training.memory import BatchPlan
from alpaca_qlora.training.tracking import training_callbacks_and_reporters


def sft_config(*, model_params: dict, train_params: dict, runtime_params: dict, plan: BatchPlan, output_dir: Path,
               report_to: list[str]):
    """TRL's SFTConfig for the stage's params: the one place where params become trainer arguments.

    Micro-batch, accumulation and gradient checkpointing come from `plan` (training/memory.py).
    gradient_checkpointing is always passed: TRL's default is True, and Trainer.train() would turn it on
    over the backend's choice (Unsloth honours an explicit False, see unsloth/models/_gc_config_default.py).
    """
    import torch
    from trl import SFTConfig

    from alpaca_qlora.modeling.backends import compute_dtype

    on_gpu, dtype = torch.cuda.is_available(), compute_dtype()
    save_steps = runtime_params["save_steps"]
    return SFTConfig(
        output_dir=str(output_dir), report_to=report_to,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        save_total_limit=2,  # the newest complete checkpoint survives while the next one is written
        per_device_train_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        gradient_checkpointing=plan.gradient_checkpointing != "off",
        num_train_epochs=train_params["epochs"], max_steps=train_params["max_steps"],
        learning_rate=train_params["learning_rate"], lr_scheduler_type=train_params["lr_scheduler"],
        warmup_steps=train_params["warmup_steps"], weight_decay=train_params["weight_decay"],
        optim=train_params["optimizer"], seed=train_params["seed"], data_seed=train_params["seed"],
        neftune_noise_alpha=train_params["neftune_noise_alpha"] or None,  # None: off, as TRL expects
        logging_steps=runtime_params["logging_steps"], max_length=model_params["max_seq_length"],
        packing=train_params["packing"], packing_strategy="bfd", completion_only_loss=not train_params["train_on_prompt"],
        bf16=on_gpu and dtype == torch.bfloat16, fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu, dataset_num_proc=1, disable_tqdm=not progress.bars_shown(),
        # DDP: every LoRA weight gets a gradient each step; the search for unused ones breaks under gradient
        # checkpointing ("marked ready twice"). Unsloth sets the same for its models. Ignored in one process.
        ddp_find_unused_parameters=False,
    )


def training_dataset(rows: list[dict[str, Any]]):
    """The formatted rows as the datasets.Dataset SFTTrainer takes: token ids and the completion mask only."""
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]} for r in rows])


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
            self.add_callback(self.token_counter)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            # The Trainer restores optimizer, scheduler, RNG and data position; the adapter weights are copied
            # into the existing LoRA modules instead of being rebuilt (see load_adapter_in_place for why).
            load_adapter_in_place(model or self.model, Path(resume_from_checkpoint))

        def _load_optimizer_and_scheduler(self, checkpoint):
            # Under DDP transformers 5.17 loads the optimizer state with map_location=args.device, which on a
            # CPU is "cpu:0", a location torch.load cannot restore to ("don't know how to restore data location
            # ... (tagged with cpu:0)"), so a CPU run under DDP could not resume. There the two files are loaded
            # as the Trainer loads them, to "cpu". On GPUs (cuda:N) the Trainer's own code runs.
            if checkpoint is None or self.args.world_size <= 1 or self.args.device.type != "cpu":
                return super()._load_optimizer_and_scheduler(checkpoint)
            import torch
            from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

            optimizer = torch.load(Path(checkpoint) / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(optimizer)
            self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))

    return PipelineTrainer(**kwargs)


@dataclass
class TrainOutcome:
    result: Any  # transformers' TrainOutput
    real_tokens: int  # summed over the processes
    resumed_from: Path | None
    stopped_by_sigterm: bool
    is_main_process: bool
    effective: dict[str, Any] = field(default_factory=dict)  # what ran: batch, optimizer, packing, ...

    def results(self, *, model_load_s: float) -> dict[str, Any]:
        """metadata.json `results`: loss, time, real tokens and their rate over the processes, peak memory."""
        seconds = self.result.metrics["train_runtime"]
        return {"train_loss": round(self.result.training_loss, 6), "train_runtime_s": round(seconds, 2),
                "model_load_s": round(model_load_s, 2), "real_tokens": self.real_tokens,
                "real_tokens_per_s": round(self.real_tokens / seconds, 1), **peak_memory_gib()}

    def describe(self) -> str:
        """The stage's last line: loss, steps and their shape, speed."""
        e, seconds = self.effective, self.result.metrics["train_runtime"]
        return (f"loss {self.result.training_loss:.4f}, {self.result.global_step} steps of {e['num_processes']} x "
                f"{e['per_device_batch_size']} x {e['gradient_accumulation_steps']} rows (checkpointing "
                f"{e['gradient_checkpointing']}), {self.real_tokens / seconds:.0f} real tokens/s")


def train(model, tokenizer, rows: list[dict[str, Any]], *, model_params: dict, train_params: dict,
          runtime_params: dict, plan: BatchPlan, checkpoint_dir: Path, run_config: dict, timeline) -> TrainOutcome:
    """Train `model` on `rows`, resuming from the last complete checkpoint in `checkpoint_dir` if any.

    Marks the phases "trainer_setup" (SFTTrainer: dataset preparation and packing), "first_step", "loop"
    and, with several processes, "replica_check" on `timeline` (alpaca_qlora/timeline.py).
    """
    import torch

    # Rank 0 alone logs: a DVCLive Live() on another rank would reset reports/train/ under rank 0's feet.
    callbacks, reporters = (training_callbacks_and_reporters(runtime_params, run_config=run_config)
                            if launch.is_main_process() else ([], []))
    sigterm, probe = CheckpointOnSigterm(), CheckpointingProbe()
    config = sft_config(model_params=model_params, train_params=train_params, runtime_params=runtime_params,
                        plan=plan, output_dir=checkpoint_dir, report_to=reporters)
    trainer = pipeline_trainer(model=model, args=config, train_dataset=training_dataset(rows),
                               processing_class=tokenizer, callbacks=callbacks + [
                                   MarkCompleteCallback(), sigterm, probe, TimelineCallback(timeline)])
    distributed.same_on_every_process(
        plan.shape(),
        "micro-batch plans (their GPUs have different free memory): set train.batch_size and "
        "train.gradient_checkpointing explicitly")
    resume_from = distributed.agreed_checkpoint(checkpoint_dir, enabled=bool(runtime_params["save_steps"]))
    if resume_from is not None and callbacks:  # rank 0
        print(f"train: resuming from {resume_from} (delete {checkpoint_dir} to start over)")
        replay_into_dvclive(callbacks[0].live, logged_history(resume_from))
    processes = trainer.accelerator.num_processes
    effective = {**plan.as_dict(), "num_processes": processes,
                 "effective_batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps
                 * processes, "filler_rows": trainer.filler_rows}
    if callbacks:
        callbacks[0].live.log_params({"effective_batch": effective})
    timeline.mark("trainer_setup")
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
        timeline.mark("replica_check")
        if divergence > 1e-6:
            raise RuntimeError(
                f"train: the {processes} processes ended with different LoRA weights (largest difference "
                f"{divergence:.2e}): gradients were not synchronized, so this was not data-parallel training")
    args = trainer.args
    outcome.effective = {
        "optimizer": str(args.optim), "packing": bool(args.packing),
        "padding_free": bool(getattr(args, "padding_free", False)), "completion_only_loss": args.completion_only_loss,
        "neftune_noise_alpha": trainer.neftune_noise_alpha,
        "global_steps": result.global_step, **effective, "gradient_checkpointing_active": probe.active,
        "replica_divergence": divergence}
    return outcome
