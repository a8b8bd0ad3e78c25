"""Several nodes and resume under DDP, on a CPU with gloo: the README's multi-node commands as two torchrun
"nodes" on one host, and a two-process run killed after a checkpoint that resumes to the same adapter.

Each "node" is its own copy of the reproduced workspace (its own checkout, as on a real cluster), with
train.num_processes=1: two nodes of one process are a data-parallel run of two processes. The runs are
short (train.max_steps=4, a checkpoint every 2 steps): what is tested is the launch, the rendezvous and
the resume, not the training.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca_qlora.cli.offline_workspace import overlay_params
from alpaca_qlora.files import file_sha256
from tests.conftest import cli_env, run_dvc, stages_run

ADAPTER = "models/adapter/adapter_model.safetensors"
SHORT_RUN = [("train", "max_steps", 4), ("runtime", "save_steps", 2)]


def node_copy(reproduced: Path, destination: Path, *overrides) -> Path:
    shutil.copytree(reproduced, destination, symlinks=True)
    overlay_params(destination / "params.yaml", [*SHORT_RUN, *overrides])
    return destination


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process started, directly or not, by `pid` (torchrun starts its workers in their own sessions,
    so killing the process group of `dvc` alone would leave them training)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.fixture(scope="module")
def two_nodes(reproduced_workspace, tmp_path_factory):
    """Node 0 runs `dvc repro train` and node 1 the stage's command, each with the README's PET_* variables."""
    root = tmp_path_factory.mktemp("nodes")
    nodes = [node_copy(reproduced_workspace, root / f"node{rank}") for rank in (0, 1)]
    before = file_sha256(nodes[1] / ADAPTER)
    cluster = {"PET_NNODES": "2", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}
    started = time.monotonic()
    node1 = subprocess.Popen([sys.executable, "-m", "stages.train", "--formatted", "data/formatted", "--out",
                              "models/adapter"], cwd=nodes[1], env={**cli_env(), **cluster, "PET_NODE_RANK": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = run_dvc(nodes[0], "repro", "train", env={**cluster, "PET_NODE_RANK": "0"}, timeout=900)
        node1_output = node1.communicate(timeout=300)[0]
    finally:
        node1.kill()
    return {"nodes": nodes, "output": output, "node1_output": node1_output, "node1_rc": node1.returncode,
            "node1_adapter_before": before, "seconds": time.monotonic() - started}


def test_two_nodes_of_one_process_train_one_data_parallel_run(two_nodes):
    node0, node1 = two_nodes["nodes"]
    assert two_nodes["node1_rc"] == 0, two_nodes["node1_output"][-3000:]
    assert stages_run(two_nodes["output"]) == ["train"]
    assert "1 data-parallel processes per node through torchrun" in two_nodes["output"]
    assert "--standalone" not in two_nodes["output"], "the rendezvous comes from PET_*"
    meta = json.loads((node0 / "models/adapter/metadata.json").read_text())
    effective = meta["effective"]
    assert (effective["num_processes"], effective["per_device_batch_size"], effective["gradient_accumulation_steps"],
            effective["effective_batch_size"]) == (2, 4, 1, 8), "train.rows_per_step=8 split over the 2 nodes"
    assert effective["global_steps"] == 4 and effective["replica_divergence"] == 0.0
    assert file_sha256(node1 / ADAPTER) == two_nodes["node1_adapter_before"], "node 1 writes no output"
    assert "train: loss" not in two_nodes["node1_output"], "global rank 0 alone reports"
    print(f"two nodes: {two_nodes['seconds']:.0f} s")


def test_a_killed_two_process_run_resumes_to_the_adapter_of_an_uninterrupted_one(reproduced_workspace, two_nodes,
                                                                                tmp_path):
    """Two processes on one node, SIGKILLed (every process) once checkpoint-2 is complete, then `dvc repro
    train`: the same adapter, bit for bit, as the uninterrupted two-process run of the two nodes above."""
    workspace = node_copy(reproduced_workspace, tmp_path / "ws", ("train", "num_processes", 2))
    started = time.monotonic()
    with open(tmp_path / "killed.log", "w") as log:
        dvc = subprocess.Popen(["dvc", "repro", "train"], cwd=workspace, env=cli_env(), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (markers := list(workspace.glob("build/checkpoints/*/checkpoint-2/checkpoint_complete.json"))):
        assert dvc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for pid in [dvc.pid, *descendants(dvc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    dvc.wait(timeout=60)
    files = json.loads(markers[0].read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= set(files), \
        "the marker is written once both processes have written their RNG state"
    assert not (workspace / "models/adapter").exists()

    output = run_dvc(workspace, "repro", "train", timeout=900)
    assert f"train: resuming from {markers[0].parent.relative_to(workspace)}" in output
    meta = json.loads((workspace / "models/adapter/metadata.json").read_text())
    assert meta["resumed_from_step"] == 2 and meta["effective"]["global_steps"] == 4
    assert meta["effective"]["num_processes"] == 2
    assert file_sha256(workspace / ADAPTER) == file_sha256(two_nodes["nodes"][0] / ADAPTER), \
        "resumed on one node = uninterrupted on two nodes: the same two data-parallel processes"
    print(f"killed and resumed: {time.monotonic() - started:.0f} s")
