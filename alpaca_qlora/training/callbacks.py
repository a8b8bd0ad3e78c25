"""What the train stage adds to the Trainer's loop through callbacks: the real tokens trained, checkpoints
marked complete, a clean stop on SIGTERM, the stage's timeline, and the gradient checkpointing that really ran.

It imports transformers: import it after modeling.backends.get(), which imports Unsloth first.
"""
from __future__ import annotations

import os
import signal
from collections import deque
from pathlib import Path

from transformers import TrainerCallback

from alpaca_qlora.training import distributed
from alpaca_qlora.training.checkpoints import PREFIX, mark_complete


class RealTokenCounter(TrainerCallback):
    """Wraps the data collator to count the real tokens this process trained on.

    Counted on the rows before collation (no padding yet, whether padded, padding-free or packed), leaving
    out the filler rows of distributed.pad_to_even_shards, and credited once the Trainer has run that
    micro-batch (on_substep_end / on_step_end): the dataloader collates one batch ahead, and a run that
    stops at train.max_steps never trains that one. Under DDP each rank counts its own share.
    """

    def __init__(self, collator):
        self.collator, self.tokens, self.pending = collator, 0, deque()

    def __call__(self, features):
        distributed.record_batch(features)
        self.pending.append(sum(len(f["input_ids"]) for f in features if not distributed.is_filler(f)))
        return self.collator(features)

    def _credit(self, control):
        if self.pending:
            self.tokens += self.pending.popleft()
        return control

    def on_substep_end(self, args, state, control, **kwargs):
        return self._credit(control)

    def on_step_end(self, args, state, control, **kwargs):
        return self._credit(control)


class MarkCompleteCallback(TrainerCallback):
    """Writes the completeness marker once every process has finished writing checkpoint-N.

    on_save runs after the Trainer's _save_checkpoint, but only on the process that calls it: under DDP
    each process writes its own RNG state (rng_state_<rank>.pth) with no barrier before rank 0 goes on, so
    rank 0 could list the folder while rank 1 is still writing, and a kill then would leave a "complete"
    checkpoint without rank 1's RNG state. Hence the barrier: every process reaches on_save after its
    own writes, and rank 0 marks only when all have.
    """

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
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


class TimelineCallback(TrainerCallback):
    """Splits the Trainer's train() in the stage's timeline: "first_step" (optimizer set-up, compilation and
    warm-up of the first optimizer step), then "loop" (every later step, the checkpoints in between)."""

    def __init__(self, timeline):
        self.timeline, self._first_done = timeline, False

    def on_step_end(self, args, state, control, **kwargs):
        if not self._first_done:
            self.timeline.mark("first_step")
            self._first_done = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.timeline.mark("loop")
        return control


class CheckpointingProbe(TrainerCallback):
    """Records whether the model's layers really recompute activations when training starts.

    The param is applied in two places (the backend's LoRA set-up and SFTConfig.gradient_checkpointing,
    which TRL defaults to True and Trainer.train() applies), so the stage records what the layers say
    after both, in metadata.json `effective.gradient_checkpointing_active`.
    """

    def __init__(self):
        self.active: bool | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.active = any(bool(getattr(module, "gradient_checkpointing", False)) for module in model.modules())
        return control
