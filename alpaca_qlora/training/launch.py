"""Launching data-parallel training (PyTorch DDP) for the train stage: torchrun or `accelerate launch`.

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

What keeps the training itself correct under DDP (even shards, the replica check) is in distributed.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, MutableMapping, Sequence

from alpaca_qlora.errors import UserError

LAUNCHERS = ("torchrun", "accelerate")
# Variables through which torchrun itself reads its multi-node flags; any of them means "not standalone".
RENDEZVOUS_ENV = ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_RDZV_BACKEND",
                  "PET_RDZV_ENDPOINT", "PET_RDZV_ID")
# Set by torchrun and `accelerate launch` in every worker they start.
WORKER_ENV = ("LOCAL_RANK", "WORLD_SIZE")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the NVIDIA driver manages


class LaunchError(UserError, RuntimeError):
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


def several_nodes(environ: Mapping[str, str] = os.environ) -> bool:
    """PET_NNODES asks for more than one node ("2", or torchrun's elastic "1:4"): one process per node is
    then still a data-parallel run, and goes through the launcher like any other."""
    return environ.get("PET_NNODES", "1").strip().split(":")[-1] not in ("", "1")


def check_worker(num_processes: int, environ: Mapping[str, str] = os.environ) -> None:
    """A worker's launch must match params.yaml, so metadata and the effective batch describe what ran."""
    local = int(environ.get("LOCAL_WORLD_SIZE", environ.get("WORLD_SIZE", "1")))
    if local != num_processes:
        raise LaunchError(
            f"params.yaml: train.num_processes is {num_processes}, but this stage was launched with "
            f"{local} processes on this node (LOCAL_WORLD_SIZE={local}); set train.num_processes={local}, "
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
            "several CPU processes only through MPI; use runtime.launcher=torchrun on a CPU (gloo backend)")
    nodes = int(environ.get("PET_NNODES", "1"))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(num_processes * nodes), "--num_machines", str(nodes)]
    if nodes > 1:
        missing = [name for name in ("PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT") if name not in environ]
        if missing:
            raise LaunchError(f"PET_NNODES={nodes} needs {', '.join(missing)} set on every node; set them "
                              "(README.md, 'Scaling out')")
        command += ["--machine_rank", environ["PET_NODE_RANK"], "--main_process_ip", environ["PET_MASTER_ADDR"],
                    "--main_process_port", environ["PET_MASTER_PORT"]]
    return command + ["--module", module, *module_args]


def setup_process(num_processes: int, launcher: str, module: str, module_args: Sequence[str]) -> int | None:
    """Decide this process's part before anything touches CUDA; return an exit status if it was the launcher.

    num_processes > 1, or several nodes (PET_NNODES), in a plain process: launch the workers and wait (their
    exit status is returned). In a worker: check the launch matches params.yaml, and bind the worker to its
    GPU. One process on one node: see only one GPU (use_one_gpu). Returns None when this process is to train.
    """
    if (num_processes > 1 or several_nodes()) and not is_worker():
        return relaunch(num_processes, launcher, module, module_args)
    if is_worker():
        check_worker(num_processes)
        bind_device()
    elif (narrowed := use_one_gpu()) is not None:
        print(f"train: train.num_processes is 1, so one GPU (CUDA_VISIBLE_DEVICES={narrowed}); "
              "set train.num_processes to use more")
    return None


def visible_gpus(environ: Mapping[str, str] = os.environ, driver_gpus: Path | None = None) -> int | None:
    """NVIDIA GPUs this process may use, read without importing torch (seconds the launcher would add to
    every multi-GPU run): the driver's list of GPUs, narrowed by CUDA_VISIBLE_DEVICES as CUDA narrows it
    (a list that stops at its first negative entry). None without an NVIDIA driver: then ask torch."""
    driver_gpus = NVIDIA_GPUS if driver_gpus is None else driver_gpus
    if not driver_gpus.is_dir():
        return None
    installed = sum(1 for _ in driver_gpus.iterdir())
    if "CUDA_VISIBLE_DEVICES" not in environ:
        return installed
    entries = []
    for entry in (e.strip() for e in environ["CUDA_VISIBLE_DEVICES"].split(",")):
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return min(len(entries), installed)


def relaunch(num_processes: int, launcher: str, module: str, module_args: Sequence[str]) -> int:
    """Run the module under the launcher and return its exit status.

    Refuses more processes than GPUs on a GPU machine: a second process on an occupied GPU would not be
    data parallelism but two copies contending for one card. The workers' timelines start at this
    process's start (alpaca_qlora/timeline.py), so the launch itself is counted.
    """
    from alpaca_qlora.timeline import STARTED_ENV, process_started_at

    gpus = visible_gpus()
    if gpus is None:  # no NVIDIA driver: torch knows whether there is another kind of GPU
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and num_processes > gpus:
        raise LaunchError(f"params.yaml: train.num_processes is {num_processes}, but only {gpus} GPU(s) are "
                          "visible; lower it or expose more GPUs")
    command = launch_command(num_processes, launcher, module, module_args, on_gpu=gpus > 0)
    print(f"train: {num_processes} data-parallel processes per node through {launcher}: {' '.join(command)}",
          flush=True)
    environment = {**os.environ, STARTED_ENV: os.environ.get(STARTED_ENV, repr(process_started_at()))}
    return subprocess.run(command, check=False, env=environment).returncode
