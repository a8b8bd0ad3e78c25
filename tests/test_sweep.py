"""A queued sweep runs to the end: DVC's grid syntax, its queue, and alpaca_qlora.cli.sweep watching the worker.

The worker is stopped half way the way DVC's own monitor stops it (a celery shutdown, which is what
`dvc queue stop` sends): the running experiment finishes, the next one stays `Queued` with no worker left,
the state a loaded machine produced. The sweep command must start the worker again and see both through.
The grid is NEFTune off / on with rsLoRA, so the same run proves both options reach Unsloth's trainer and
its PEFT config (the hf backend is checked in tests/test_train.py).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

from tests.conftest import cli_env, run_dvc

GRID = ["-S", "train.neftune_noise_alpha=0,5", "-S", "lora.use_rslora=true", "-S", "train.max_steps=3"]


def experiments(workspace) -> dict[str, dict]:
    shown = json.loads(run_dvc(workspace, "exp", "show", "--json"))
    return {exp["name"]: exp["revs"][0]["data"] for rev in shown for exp in (rev.get("experiments") or [])}


def test_a_queued_sweep_runs_every_experiment_even_when_the_worker_stops_half_way(workspace_copy):
    queued = run_dvc(workspace_copy, "exp", "run", "--queue", *GRID)
    assert queued.count("Queued experiment") == 2, queued
    sweep = subprocess.Popen([sys.executable, "-m", "alpaca_qlora.cli.sweep", "--poll", "2"], cwd=workspace_copy,
                             env={**cli_env(), "PYTHONPATH": str(workspace_copy)}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while "Running" not in run_dvc(workspace_copy, "queue", "status"):
            assert time.monotonic() < deadline and sweep.poll() is None, "no experiment started"
            time.sleep(2)
        stopped = run_dvc(workspace_copy, "queue", "stop")  # the worker's own shutdown, mid-sweep
        assert "will stop after running tasks finish" in stopped, stopped
        output, _ = sweep.communicate(timeout=1200)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, output
    assert "starting it again" in output, f"the worker was stopped and restarted:\n{output}"
    assert "2 succeeded" in output and "0 failed" in output, output
    status = run_dvc(workspace_copy, "queue", "status")
    assert "Queued" not in status and "Running" not in status and status.count("Success") == 2, status

    found = experiments(workspace_copy)
    alphas = {name: data["params"]["params.yaml"]["data"]["train"]["neftune_noise_alpha"]
              for name, data in found.items()}
    assert sorted(alphas.values()) == [0, 5], found
    for name, data in found.items():
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        assert math.isfinite(metrics["adapter"]["eval_loss"]), name
        assert data["metrics"]["reports/train/metrics.json"]["data"]["step"] == 3, name
    noisy = next(name for name, alpha in alphas.items() if alpha == 5)
    assert "train: loss" in run_dvc(workspace_copy, "queue", "logs", noisy), "dvc queue logs follows a run"

    run_dvc(workspace_copy, "exp", "apply", noisy)
    meta = json.loads((workspace_copy / "models/adapter/metadata.json").read_text())
    assert meta["backend"] == "unsloth" and meta["effective"]["neftune_noise_alpha"] == 5, meta["effective"]
    assert meta["effective"]["use_rslora"] is True and meta["effective"]["lora_scaling"] == [16 / math.sqrt(16)]
    config = json.loads((workspace_copy / "models/adapter/adapter_config.json").read_text())
    assert config["use_rslora"] is True
    assert meta["reproduce"]["command"].startswith("dvc exp run ") and "-S train.neftune_noise_alpha=5" in \
        meta["reproduce"]["command"], "the card's command rebuilds this experiment from its commit"
