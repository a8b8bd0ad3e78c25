"""Data-parallel training: two DDP processes (gloo, CPU) through the real `dvc exp run`, plus the launcher.

The two-process runs train the whole offline epoch and prove: one adapter, one set of logs, a finite
falling loss, the same real-token count as one process, replicas in step, each example exactly once.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from datasets import Dataset

from alpaca_qlora.training import distributed, launch
from alpaca_qlora.training.distributed import example_key, pad_to_even_shards
from alpaca_qlora.errors import UserError
from alpaca_qlora.training.launch import LaunchError, launch_command
from tests.conftest import run_dvc, stages_run

REAL_TOKENS = 59308  # the offline training set's tokens; one process counts the same (tests/test_train.py)


def consumed(batch_log, rank: int) -> tuple[list[list[str]], int]:
    """(example fingerprints of each batch, filler rows) that rank `rank` trained on."""
    lines = [json.loads(line) for line in (batch_log / f"rank{rank}.jsonl").read_text().splitlines()]
    return [line["examples"] for line in lines], sum(line["fillers"] for line in lines)


# 16 rows a step over 2 processes: 8 each, in one pass (train.batch_size auto on a CPU).
# hf keeps packing on a CPU: 800 examples -> 270 packed rows, so 2 filler rows make 17 steps of 2 x 8 rows.
# Unsloth turns packing off on a CPU: 800 rows = 50 steps of 2 x 8, nothing to fill.
# Gradient checkpointing auto: off for Unsloth (it fits), kept for hf (no measured memory model without it).
@pytest.mark.parametrize("backend, steps, fillers, checkpointing", [("hf", 17, 2, "true"), ("unsloth", 50, 0, "off")])
def test_two_processes_train_each_example_once_and_rank0_alone_writes(workspace_copy, tmp_path, backend, steps,
                                                                      fillers, checkpointing):
    batch_log = tmp_path / "batches"
    output = run_dvc(workspace_copy, "exp", "run", "-S", f"train.backend={backend}", "-S", "train.num_processes=2",
                     "-S", "train.rows_per_step=16", env={distributed.BATCH_LOG_ENV: str(batch_log)})
    assert stages_run(output) == ["train", "evaluate", "card"], "dvc.yaml's train command is unchanged"
    assert "2 data-parallel processes per node through torchrun" in output
    assert output.count("train: loss ") == 1, "rank 0 alone reports"

    meta = json.loads((workspace_copy / "models/adapter/metadata.json").read_text())
    effective, results = meta["effective"], meta["results"]
    assert (effective["num_processes"], effective["per_device_batch_size"],
            effective["gradient_accumulation_steps"], effective["effective_batch_size"]) == (2, 8, 1, 16)
    assert effective["global_steps"] == steps and effective["filler_rows"] == fillers
    assert effective["gradient_checkpointing"] == checkpointing
    assert effective["gradient_checkpointing_active"] is (checkpointing != "off"), "the layers do what was planned"
    assert effective["replica_divergence"] == 0.0, "DDP kept the two replicas identical"
    assert results["real_tokens"] == REAL_TOKENS, "summed over the ranks, every real token once"
    assert math.isfinite(results["train_loss"]) and results["train_loss"] < 11

    adapters = sorted(str(p.relative_to(workspace_copy)) for p in workspace_copy.rglob("adapter_model.safetensors")
                      if ".dvc" not in p.parts)
    assert adapters == ["models/adapter/adapter_model.safetensors"], "one adapter, written once"
    assert json.loads((workspace_copy / "reports/train/metrics.json").read_text())["step"] == steps
    losses = (workspace_copy / "reports/train/plots/metrics/loss.tsv").read_text().splitlines()[1:]
    assert len(losses) == steps, "one DVCLive writer: one loss row per optimizer step"
    assert float(losses[-1].split("\t")[-1]) < float(losses[0].split("\t")[-1]) - 1, "the loss falls"
    assert "effective_batch_size: 16" in (workspace_copy / "reports/train/params.yaml").read_text()

    rows = (workspace_copy / "data/formatted/train.jsonl").read_text().splitlines()
    dataset = Counter(example_key(json.loads(row)["input_ids"]) for row in rows)
    (batches0, fillers0), (batches1, fillers1) = consumed(batch_log, 0), consumed(batch_log, 1)
    assert len(batches0) == len(batches1) == steps, "equal step counts on both ranks (else DDP would hang)"
    seen0, seen1 = Counter(k for b in batches0 for k in b), Counter(k for b in batches1 for k in b)
    assert seen0 and seen1 and seen0 + seen1 == dataset, "the epoch holds each of the 800 examples exactly once"
    assert fillers0 + fillers1 == fillers

    metrics = json.loads((workspace_copy / "reports/metrics.json").read_text())
    assert metrics["adapter"]["eval_loss"] < metrics["base"]["eval_loss"] - 1, "the adapter loads and evaluates"


def test_torchrun_command_is_standalone_on_one_node_and_reads_the_rendezvous_on_several():
    from torch.distributed.run import get_args_parser

    argv = launch_command(2, "torchrun", "stages.train", ["--out", "models/adapter"], environ={}, on_gpu=False)
    parsed = get_args_parser().parse_args(argv[3:])
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert parsed.standalone and parsed.nproc_per_node == "2" and parsed.module
    assert (parsed.training_script, parsed.training_script_args) == ("stages.train", ["--out", "models/adapter"])

    cluster = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "10.0.0.1", "PET_MASTER_PORT": "29500"}
    argv = launch_command(8, "torchrun", "stages.train", [], environ=cluster, on_gpu=True)
    assert "--standalone" not in argv, "torchrun takes nnodes / node rank / endpoint from the PET_* variables"


def test_accelerate_command_maps_the_same_rendezvous_and_refuses_a_cpu():
    from accelerate.commands.launch import launch_command_parser

    cluster = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "10.0.0.1", "PET_MASTER_PORT": "29500"}
    argv = launch_command(4, "accelerate", "stages.train", ["--out", "x"], environ=cluster, on_gpu=True)
    parsed = launch_command_parser().parse_args(argv[3:])
    assert parsed.multi_gpu and parsed.module and parsed.training_script == "stages.train"
    assert (parsed.num_processes, parsed.num_machines, parsed.machine_rank) == (8, 2, 1)
    assert (parsed.main_process_ip, parsed.main_process_port) == ("10.0.0.1", 29500)
    with pytest.raises(LaunchError, match="PET_MASTER_ADDR"):
        launch_command(4, "accelerate", "stages.train", [], environ={"PET_NNODES": "2", "PET_NODE_RANK": "0",
                                                                    "PET_MASTER_PORT": "1"}, on_gpu=True)
    with pytest.raises(LaunchError, match="runtime.launcher=torchrun"):
        launch_command(2, "accelerate", "stages.train", [], environ={}, on_gpu=False)


def test_the_launcher_counts_gpus_without_torch_and_launches_one_process_per_node(tmp_path):
    driver = tmp_path / "gpus"
    for bus in ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0"):
        (driver / bus).mkdir(parents=True)
    assert launch.visible_gpus({}, driver) == 4
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, driver) == 2
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, driver) == 1, "CUDA stops at -1"
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, driver) == 0
    assert launch.visible_gpus({}, tmp_path / "no-driver") is None, "no NVIDIA driver: torch is asked"
    assert launch.several_nodes({"PET_NNODES": "2"}) and launch.several_nodes({"PET_NNODES": "1:4"})
    assert not launch.several_nodes({}) and not launch.several_nodes({"PET_NNODES": "1"})


def test_the_launcher_process_of_a_gpu_machine_never_imports_torch(tmp_path):
    """Only torchrun's workers need torch: the process that starts them spends no seconds importing it."""
    import subprocess
    import sys

    for bus in ("0000:18:00.0", "0000:2a:00.0"):
        (tmp_path / "gpus" / bus).mkdir(parents=True)
    code = (f"import subprocess, sys, pathlib\nfrom alpaca_qlora.training import launch\n"
            f"launch.NVIDIA_GPUS = pathlib.Path({str(tmp_path / 'gpus')!r})\n"
            "subprocess.run = lambda command, **kw: print(' '.join(command), kw['env']['ALPACA_QLORA_STAGE_STARTED'])"
            " or type('Done', (), {'returncode': 0})\n"
            "status = launch.setup_process(2, 'torchrun', 'stages.train', ['--out', 'x'])\n"
            "print(status, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in __import__("os").environ.items() if k not in launch.WORKER_ENV})
    assert done.returncode == 0, done.stderr
    command, status = done.stdout.strip().splitlines()[-2:]
    assert "torch.distributed.run --standalone --nproc-per-node 2 -m stages.train --out x" in command
    assert float(command.split()[-1]) > 0, "the workers' timelines start at the launcher's start"
    assert status == "0 False", "status 0 returned, torch never imported"


def test_a_worker_launched_with_another_process_count_than_params_stops():
    launch.check_worker(2, {"LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="train.num_processes=2"):
        launch.check_worker(1, {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})


def test_filler_rows_complete_the_last_batches_and_carry_no_label():
    rows = {"input_ids": [[1, 2, 3]] * 23, "labels": [[-100, 2, 3]] * 23, "seq_lengths": [[3]] * 23}
    padded, added = pad_to_even_shards(Dataset.from_dict(rows), rows_per_device_batch=4, num_processes=2,
                                       pad_token_id=0)
    assert (added, len(padded)) == (1, 24)
    assert padded[23] == {"input_ids": [0], "labels": [-100], "seq_lengths": [1]} and distributed.is_filler(padded[23])
    assert not any(distributed.is_filler(padded[i]) for i in range(23))
    assert pad_to_even_shards(Dataset.from_dict(rows), rows_per_device_batch=4, num_processes=1,
                              pad_token_id=0)[1] == 0, "one process: no filler, the stage as before"
    with_mask = pad_to_even_shards(Dataset.from_dict({**rows, "loss_mask": [[0, 1, 1]] * 23}),
                                   rows_per_device_batch=4, num_processes=2, pad_token_id=0)[0]
    assert with_mask[23]["loss_mask"] == [0], "an unknown per-token mask gets 0: not trained"
    with pytest.raises(RuntimeError, match="'images'") as error:
        pad_to_even_shards(Dataset.from_dict({**rows, "images": [[1]] * 23}), rows_per_device_batch=4,
                           num_processes=2, pad_token_id=0)
    assert not isinstance(error.value, UserError), "our code must learn the column: a bug, shown with its traceback"


def _divergence_worker(rank: int, init_file: str, drift: float, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16)  # the same initial weights on both ranks, like a seeded LoRA init
    if rank == 1:
        with torch.no_grad():
            model.weight[3, 5] += drift  # an update rank 0 did not make
    results[rank] = distributed.replica_divergence(model)
    dist.destroy_process_group()


@pytest.mark.parametrize("drift", [0.0, 1e-4])
def test_replica_divergence_is_zero_for_replicas_in_step_and_shows_a_drift(tmp_path, drift):
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_divergence_worker, args=(str(tmp_path / "rendezvous"), drift, results), nprocs=2)
    assert results[0] == results[1] == pytest.approx(drift, rel=1e-3, abs=0)
