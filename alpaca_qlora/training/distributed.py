"""Data-parallel training that stays correct: each example exactly once per epoch, replicas that stay equal.

Under DDP (training/launch.py starts the processes) accelerate shards every batch across the processes.
`pad_to_even_shards` keeps the shards even without repeating examples, `replica_divergence` proves after
training that the processes stayed in step, and `record_batch` logs what each rank trained on, for the
tests and the scaling benchmark. Before training, `same_on_every_process` checks that the processes planned
the same micro-batches, and `agreed_checkpoint` makes them resume from the same checkpoint, or all start over.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from pathlib import Path

from alpaca_qlora.training.checkpoints import PREFIX, checkpoint_step, is_complete, last_complete_checkpoint
from alpaca_qlora.training.launch import LaunchError, is_main_process, rank

# Debug / benchmark hook: a folder where each rank appends what it trained on, and when (see record_batch).
BATCH_LOG_ENV = "ALPACA_QLORA_BATCH_LOG"


def pad_to_even_shards(dataset, *, rows_per_device_batch: int, num_processes: int, pad_token_id: int):
    """Append rows that train nothing, so the rows split into whole batches on every process.

    accelerate shards the Trainer's batches round-robin across processes; when the row count is not a
    multiple of rows_per_device_batch x num_processes it completes the last batches with rows from the
    start of the epoch ("even_batches"), so those examples would be trained twice. Turning that off leaves
    the processes with unequal step counts, and DDP then hangs waiting for the missing all-reduce. A filler
    row instead is one pad token with no label: it adds no loss and no label token, and the loss is
    normalized by the label tokens of all processes together (Trainer's num_items_in_batch with
    average_tokens_across_devices), so the gradient is exactly that of the real rows. The filler's single
    token is the only cost. Columns are those of the SFTTrainer's prepared (tokenized, maybe packed) set.
    """
    from datasets import Dataset, concatenate_datasets

    missing = (-len(dataset)) % (rows_per_device_batch * num_processes) if num_processes > 1 else 0
    if missing == 0:  # one process: a short last batch is simply short, as without DDP
        return dataset, 0
    neutral: dict[str, Any] = {"input_ids": [pad_token_id], "labels": [-100], "completion_mask": [0],
                               "assistant_masks": [0], "attention_mask": [1], "seq_lengths": [1],
                               "position_ids": [0]}
    first = dataset[0]
    for name in set(dataset.column_names) - set(neutral):
        # Another per-token column (a library's mask): 0 is "not trained" for every mask.
        if not isinstance(first[name], list) or len(first[name]) != len(first["input_ids"]):
            raise RuntimeError(f"train: cannot make a neutral filler row for column '{name}' of the prepared "
                               "training set; alpaca_qlora/training/distributed.py pad_to_even_shards must learn it")
        neutral[name] = [0]
    filler = Dataset.from_dict({name: [neutral[name]] * missing for name in dataset.column_names},
                               features=dataset.features)
    return concatenate_datasets([dataset, filler]), missing


def is_filler(feature: Mapping[str, Any]) -> bool:
    """A pad_to_even_shards row: one token (a formatted example always has a prompt and an EOS)."""
    return len(feature["input_ids"]) == 1


def example_spans(feature: Mapping[str, Any]) -> list[list[int]]:
    """The examples inside one training row: a packed row split at its seq_lengths, else the row itself."""
    ids = [int(token) for token in feature["input_ids"]]
    lengths = feature.get("seq_lengths")
    lengths = [len(ids)] if lengths is None or len(lengths) == 0 else [int(n) for n in lengths]
    spans, start = [], 0
    for length in lengths:
        spans.append(ids[start:start + length])
        start += length
    return spans


def example_key(token_ids: Sequence[int]) -> str:
    """A short fingerprint of one example's token ids, the identity the shard log and its test compare."""
    import hashlib

    return hashlib.sha1(",".join(map(str, token_ids)).encode()).hexdigest()[:16]


def record_batch(features: Sequence[Mapping[str, Any]], environ: Mapping[str, str] = os.environ) -> None:
    """Debug and benchmark hook, on when ALPACA_QLORA_BATCH_LOG names a folder: log this rank's batch.

    Appends one JSON line per micro-batch to <folder>/rank<R>.jsonl: the wall time at collation ("t"),
    the real tokens ("tokens"), the fingerprints of the real examples (packed rows split into their
    examples) and the number of filler rows. tests/test_distributed.py reads the files of all ranks to
    prove that an epoch trains every example exactly once; benchmarks/ddp_scaling.py reads the times and
    tokens for a steady-state throughput that leaves out model load and warm-up.
    """
    folder = environ.get(BATCH_LOG_ENV)
    if not folder:
        return
    import json
    import time

    real = [f for f in features if not is_filler(f)]
    line = {"t": time.time(), "tokens": sum(len(f["input_ids"]) for f in real),
            "examples": [example_key(span) for f in real for span in example_spans(f)],
            "fillers": len(features) - len(real)}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{rank(environ)}.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def replica_divergence(model) -> float:
    """Largest difference of any trainable weight between rank 0 and any other rank, after training.

    DDP all-reduces the gradients, so every rank applies the same update to the same initial LoRA weights,
    and the replicas stay equal bit for bit (gloo's and NCCL's all-reduce hand every rank the same result).
    Replicas that trained each on its own shard without synchronization differ by about a learning-rate
    step in most weights. So 0 proves that the run was data parallel rather than N independent runs.
    Costs one broadcast of the adapter (~170 MB for the 7B LoRA), once.
    """
    import torch
    import torch.distributed as dist

    largest = torch.zeros((), dtype=torch.float64)
    for weight in (p.detach() for p in model.parameters() if p.requires_grad):
        reference = weight.clone()
        dist.broadcast(reference, src=0)
        largest = torch.maximum(largest, (weight.double() - reference.double()).abs().max().cpu())
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    largest = largest.to(device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return float(largest)


def _process_group():
    """torch.distributed, when the Trainer's accelerate state has initialized a group of several processes."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def same_on_every_process(values: list, what: str) -> None:
    """Raise on every process unless all of them pass equal `values` (DDP would hang or diverge otherwise)."""
    dist = _process_group()
    if dist is None:
        return
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(values))
    if any(found != gathered[0] for found in gathered):
        raise LaunchError(f"train: the processes chose different {what} (per rank: {gathered})")


def agreed_checkpoint(checkpoint_dir: Path, *, enabled: bool) -> Path | None:
    """The checkpoint every process resumes from: rank 0's last complete one, when every process sees it.

    Rank 0 alone looks (and removes checkpoints killed mid-save); the others check the one it names. On
    several nodes whose build/checkpoints/ are separate disks the other nodes hold only their RNG states, so
    every process starts over rather than some resuming and some not.
    """
    chosen = last_complete_checkpoint(checkpoint_dir) if enabled and is_main_process() else None
    dist = _process_group()
    if dist is None:
        return chosen
    step = [checkpoint_step(chosen) if chosen is not None else None]
    dist.broadcast_object_list(step, src=0)
    if step[0] is None:
        return None
    path = Path(checkpoint_dir) / f"{PREFIX}{step[0]}"
    seen: list = [None] * dist.get_world_size()
    dist.all_gather_object(seen, is_complete(path))
    if not all(seen):
        if is_main_process():
            print(f"train: rank(s) {[r for r, ok in enumerate(seen) if not ok]} cannot see {path} (build/checkpoints/ "
                  "is not shared by the nodes): every process starts over")
        return None
    return path
