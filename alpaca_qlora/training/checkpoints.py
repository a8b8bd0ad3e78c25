"""Resumable training: where checkpoints live, which one is complete, and how a resumed run carries on.

The HF Trainer does the saving and the restoring (`save_steps`, `resume_from_checkpoint`): adapter weights,
optimizer, scheduler, RNG states and the position in the data. This module adds what it lacks:

- A folder outside DVC's outputs, `build/checkpoints/<run key>/`. DVC deletes a stage's outputs before
  rerunning it, and `dvc exp run` also drops what a `persist: true` output gained since the last lock;
  a folder DVC does not know survives both. The run key hashes the model, lora and train params (every
  key that changes the trained weights; the `runtime` section holds the rest) plus the training data's
  sha256, so a changed param or data set never resumes a stale run.
- A completeness marker. transformers 5.17 writes `checkpoint-N/` in place, file by file, and its
  `get_last_checkpoint` takes the highest N whether or not it was finished. The marker is written (to a
  temporary name, then renamed) by a callback that runs only after the Trainer has written every file,
  and it lists each file's size. A folder without a valid marker is a checkpoint killed mid-save: it is
  deleted, never used (the marker is written by training.trainer's MarkCompleteCallback). With `save_total_limit=2`, the newest complete checkpoint is kept until the next
  one is complete.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from alpaca_qlora.files import atomic_write_bytes

CHECKPOINTS_DIR = Path("build") / "checkpoints"
MARKER = "checkpoint_complete.json"
PREFIX = "checkpoint-"


def run_key(model_params: dict, lora_params: dict, train_params: dict, data_sha256: str) -> str:
    """16 hex digits naming one training run: same params + same data = same key."""
    what = {"model": model_params, "lora": lora_params, "train": train_params, "data_sha256": data_sha256}
    text = json.dumps(what, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def checkpoint_step(path: Path) -> int | None:
    suffix = path.name[len(PREFIX):]
    return int(suffix) if path.name.startswith(PREFIX) and suffix.isdigit() else None


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def mark_complete(folder: Path, step: int) -> None:
    atomic_write_bytes(folder / MARKER, json.dumps({"step": step, "files": _files(folder)}, indent=1,
                                                   sort_keys=True).encode("utf-8"))


def is_complete(folder: Path) -> bool:
    """Marker present, naming this step, and every file it lists there with the size it had when saved."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    step = checkpoint_step(folder)
    return (marker.get("step") == step == state.get("global_step") and bool(marker.get("files"))
            and marker["files"] == _files(folder))


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step; incomplete ones (killed mid-save) are deleted."""
    if not run_dir.is_dir():
        return None
    found = sorted((p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None),
                   key=checkpoint_step, reverse=True)
    best = None
    for folder in found:
        if best is None and is_complete(folder):
            best = folder
        elif not is_complete(folder):
            print(f"train: removing incomplete checkpoint {folder} (interrupted while saving)")
            shutil.rmtree(folder)
    return best


def logged_history(checkpoint: Path) -> list[dict[str, Any]]:
    """What the Trainer logged up to `checkpoint` (loss, learning rate, ...), one dict per logging step."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return [entry for entry in state.get("log_history", []) if "loss" in entry]


def replay_into_dvclive(live, history: list[dict[str, Any]]) -> None:
    """Log the steps before the checkpoint again, as DVCLiveCallback.on_log did, so that the resumed run's
    curves in reports/train/ (which DVC deleted before the rerun) start at step 0, not at the checkpoint."""
    from dvclive.plots import Metric
    from dvclive.utils import standardize_metric_name

    for entry in history:
        for key, value in entry.items():
            if key != "step" and Metric.could_log(value):
                live.log_metric(standardize_metric_name(key, "dvclive.huggingface"), value)
        live.next_step()


def load_adapter_in_place(model, checkpoint: Path) -> None:
    """Copy the checkpoint's LoRA weights into the model's existing LoRA parameters.

    Used instead of the Trainer's own adapter loading, which calls PEFT's `load_adapter` and so builds the
    LoRA layers anew: on Unsloth's CPU path the resumed 80 steps of the offline profile then took 79 s
    instead of 7 s, with losses differing in the 4th significant digit. Copying in place keeps the very
    modules that were trained, so a resumed run computes exactly what the uninterrupted one would (the
    offline profile's resumed adapter is byte-identical to an uninterrupted run's).
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    missing_lora = [key for key in result.missing_keys if "lora_" in key]
    if result.unexpected_keys or missing_lora:
        raise RuntimeError(f"{checkpoint}: adapter weights do not match the model (unexpected "
                           f"{result.unexpected_keys[:5]}, missing {missing_lora[:5]}); delete {checkpoint.parent} "
                           "to start over")
