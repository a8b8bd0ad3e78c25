"""Data-parallel training (PyTorch DDP) for the train stage, launched by torchrun or `accelerate launch`.

`dvc repro` runs `python -m stages.train ...` as always. With `train.num_processes` > 1 that process is only
the launcher: it re-runs the same module under `python -m torch.distributed.run` (torchrun) or
`accelerate launch --multi_gpu` with that many processes on this node, waits, and exits with their status.
Each worker process is an ordinary train stage: the HF Trainer sees the launcher's environment (RANK,
LOCAL_RANK, WORLD_SIZE), wraps the model in DistributedDataParallel (NCCL on GPUs, gloo on a CPU) and
shards every batch across the processes through accelerate. Nothing here reimplements any of that.

Several nodes: the rendezvous comes from torchrun's own environment variables, which torchrun reads for
each of its flags (PET_<FLAG>, see torch/distributed/argparse_util.py): PET_NNODES, PET_NODE_RANK,
PET_MASTER_ADDR, PET_MASTER_PORT (static rendezvous), or PET_RDZV_BACKEND=c10d, PET_RDZV_ENDPOINT,
PET_RDZV_ID (elastic). For the accelerate launcher the same PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR /
PET_MASTER_PORT become --num_machines / --machine_rank / --main_process_ip / --main_process_port, so one
set of variables describes the cluster whichever launcher params.yaml names.

Also here: `pad_to_even_shards`, which makes "each example exactly once per epoch" hold under DDP.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Mapping, MutableMapping, Sequence

LAUNCHERS = ("torchrun", "accelerate")
# Variables through which torchrun itself reads its multi-node flags; any of them means "not standalone".
RENDEZVOUS_ENV = ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_RDZV_BACKEND",
                  "PET_RDZV_ENDPOINT", "PET_RDZV_ID")
# Set by torchrun and `accelerate launch` in every worker they start.
WORKER_ENV = ("LOCAL_RANK", "WORLD_SIZE")
# Debug / benchmark hook: a folder where each rank appends what it trained on, and when (see record_batch).
BATCH_LOG_ENV = "ALPACA_QLORA_BATCH_LOG"


class LaunchError(RuntimeError):
    """A data-parallel setting that cannot run as asked; the message says which param or variable to change."""


def is_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a process started by torchrun / accelerate launch."""
    return all(name in environ for name in WORKER_ENV)


def rank(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("RANK", "0"))


def world_size(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("WORLD_SIZE", "1"))


def is_main_process(environ: Mapping[str, str] = os.environ) -> bool:
    """Global rank 0: the one process that writes the adapter, the metadata and the DVCLive / W&B logs."""
    return rank(environ) == 0


def bind_device(environ: Mapping[str, str] = os.environ) -> None:
    """Make this worker's GPU, cuda:LOCAL_RANK, the current device before anything touches CUDA.

    The model is loaded there (alpaca_qlora.modeling.backends; Unsloth does the same), and kernels launched on the
    current device (Triton's, bitsandbytes') must find their tensors on it, also before the Trainer's
    accelerate state would set it.
    """
    import torch

    if is_worker(environ) and torch.cuda.is_available():
        torch.cuda.set_device(int(environ["LOCAL_RANK"]))


def use_one_gpu(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """A single training process sees one GPU: the first of CUDA_VISIBLE_DEVICES, or GPU 0.

    Why: with several GPUs visible to one process, the HF Trainer wraps the model in nn.DataParallel, which
    TRL's SFTTrainer refuses (measured on 2 H200s: the hf backend stopped with "SFTTrainer does not support
    `nn.DataParallel`"). More GPUs are used through `train.num_processes`, never implicitly. Returns the
    new CUDA_VISIBLE_DEVICES when it narrowed a list, else None. Call before anything initialises CUDA."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        environ["CUDA_VISIBLE_DEVICES"] = "0"
        return None
    first = visible.split(",")[0].strip()
    if first and first != visible.strip():
        environ["CUDA_VISIBLE_DEVICES"] = first
        return first
    return None


def check_worker(num_processes: int, environ: Mapping[str, str] = os.environ) -> None:
    """A worker's launch must match params.yaml, so metadata and the effective batch describe what ran."""
    local = int(environ.get("LOCAL_WORLD_SIZE", environ.get("WORLD_SIZE", "1")))
    if local != num_processes:
        raise LaunchError(
            f"params.yaml: train.num_processes is {num_processes}, but this stage was launched with "
            f"{local} processes on this node (LOCAL_WORLD_SIZE={local}). Set train.num_processes={local}, "
            "or run the stage plainly (`dvc repro`) and let it launch itself.")


def launch_command(num_processes: int, launcher: str, module: str, module_args: Sequence[str], *,
                   environ: Mapping[str, str] = os.environ, on_gpu: bool) -> list[str]:
    """argv that runs `python -m module module_args` in `num_processes` processes on this node.

    `launcher` is one of LAUNCHERS (params.py checks runtime.launcher)."""
    if launcher == "torchrun":
        # --standalone: a private rendezvous on a free local port (no fixed port to collide on). Without it,
        # torchrun takes nnodes, node rank and the endpoint from the PET_* variables the user set.
        multi_node = any(name in environ for name in RENDEZVOUS_ENV)
        return [sys.executable, "-m", "torch.distributed.run", *([] if multi_node else ["--standalone"]),
                "--nproc-per-node", str(num_processes), "-m", module, *module_args]
    if not on_gpu:
        raise LaunchError(
            "params.yaml: runtime.launcher is 'accelerate', but there is no GPU: `accelerate launch` starts "
            "several CPU processes only through MPI. Use runtime.launcher=torchrun on a CPU (gloo backend).")
    nodes = int(environ.get("PET_NNODES", "1"))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(num_processes * nodes), "--num_machines", str(nodes)]
    if nodes > 1:
        missing = [name for name in ("PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT") if name not in environ]
        if missing:
            raise LaunchError(f"PET_NNODES={nodes} needs {', '.join(missing)} set on every node "
                              "(README.md, 'Scaling out')")
        command += ["--machine_rank", environ["PET_NODE_RANK"], "--main_process_ip", environ["PET_MASTER_ADDR"],
                    "--main_process_port", environ["PET_MASTER_PORT"]]
    return command + ["--module", module, *module_args]


def setup_process(num_processes: int, launcher: str, module: str, module_args: Sequence[str]) -> int | None:
    """Decide this process's part before anything touches CUDA; return an exit status if it was the launcher.

    num_processes > 1 in a plain process: launch the workers and wait (their exit status is returned).
    In a worker: check the launch matches params.yaml, and bind the worker to its GPU. One process: see
    only one GPU (use_one_gpu). Returns None when this process is to train.
    """
    if num_processes > 1 and not is_worker():
        return relaunch(num_processes, launcher, module, module_args)
    if is_worker():
        check_worker(num_processes)
        bind_device()
    elif (narrowed := use_one_gpu()) is not None:
        print(f"train: train.num_processes is 1, so one GPU (CUDA_VISIBLE_DEVICES={narrowed}); "
              "set train.num_processes to use more")
    return None


def relaunch(num_processes: int, launcher: str, module: str, module_args: Sequence[str]) -> int:
    """Run the module under the launcher and return its exit status.

    Refuses more processes than GPUs on a GPU machine: a second process on an occupied GPU would not be
    data parallelism but two copies contending for one card.
    """
    import torch

    on_gpu = torch.cuda.is_available()
    if on_gpu and num_processes > torch.cuda.device_count():
        raise LaunchError(f"params.yaml: train.num_processes is {num_processes}, but only "
                          f"{torch.cuda.device_count()} GPU(s) are visible; lower it or expose more GPUs")
    command = launch_command(num_processes, launcher, module, module_args, on_gpu=on_gpu)
    print(f"train: {num_processes} data-parallel processes per node through {launcher}: {' '.join(command)}",
          flush=True)
    return subprocess.run(command, check=False).returncode


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
            raise LaunchError(f"train: cannot make a neutral filler row for column '{name}' of the prepared "
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
