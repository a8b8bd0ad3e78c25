"""Stage `train`: a real adapter that says how it was made; W&B never blocks; the hf backend trains too."""
from __future__ import annotations

import json
import math
import time

from safetensors import safe_open

from alpaca_qlora.metadata import file_sha256
from alpaca_qlora.tracking import resolve_wandb_mode
from tests.conftest import run_dvc, stages_run

TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_adapter_is_safetensors_with_its_config_tokenizer_and_metadata(reproduced_workspace):
    adapter = reproduced_workspace / "models/adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 16 and set(config["target_modules"]) == TARGETS
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert len(names) == 2 * 7 * 2, "lora_A and lora_B on 7 projections in each of 2 layers"
    assert (adapter / "tokenizer.json").is_file() and (adapter / "tokenizer_config.json").is_file()

    meta = json.loads((adapter / "metadata.json").read_text())
    assert meta["base_model"] == "offline:tiny-mistral" and meta["backend"] == "unsloth"
    assert meta["params"]["lora"]["r"] == 16 and meta["params"]["train"]["learning_rate"] == 5e-3
    assert "### Instruction:" in meta["template"]["prompt_input"]
    assert meta["data"]["formatted_train_sha256"] == file_sha256(reproduced_workspace / "data/formatted/train.jsonl")
    assert meta["libraries"]["unsloth"] == "2026.10.9" and meta["libraries"]["trl"] == "1.15.0"
    results = meta["results"]
    assert math.isfinite(results["train_loss"]) and results["train_loss"] < 9
    assert results["real_tokens"] == 53020, "one epoch over 800 rows = every real token once"
    assert results["real_tokens_per_s"] > 0 and results["peak_cpu_rss_gib"] > 0
    assert meta["effective"]["optimizer"] and meta["effective"]["device"]["type"] == "cpu"
    assert meta["params"]["train"]["packing"] is True and meta["effective"]["packing"] is False, \
        "Unsloth turns packing off on a CPU, and the metadata says what actually ran"


def test_training_curves_go_to_dvclive(reproduced_workspace):
    metrics = json.loads((reproduced_workspace / "reports/train/metrics.json").read_text())
    assert metrics["step"] == 100
    loss_rows = (reproduced_workspace / "reports/train/plots/metrics/loss.tsv").read_text().splitlines()
    first, last = float(loss_rows[1].split("\t")[-1]), float(loss_rows[-1].split("\t")[-1])
    assert len(loss_rows) == 101 and last < first - 2, "the loss curve falls"
    assert not (reproduced_workspace / "dvclive").exists()
    assert "dvclive" not in (reproduced_workspace / "dvc.yaml").read_text().split("metrics:")[0]


def test_wandb_online_without_network_falls_back_to_offline_quickly(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    assert resolve_wandb_mode("online") == "offline"
    assert time.monotonic() - started < 10
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("online") == "disabled", "WANDB_MODE wins over the param"


def test_hf_backend_trains_with_wandb_offline(workspace_copy):
    """transformers + bitsandbytes + peft; 30 steps, since its CPU path is ~15x slower than Unsloth's."""
    output = run_dvc(workspace_copy, "exp", "run", "-S", "train.backend=hf", "-S", "train.wandb_mode=offline",
                     "-S", "train.max_steps=30",
                     env={"WANDB_MODE": None, "WANDB_DIR": str(workspace_copy / "build")})
    assert stages_run(output) == ["train", "evaluate"]
    assert list((workspace_copy / "build/wandb").glob("offline-run-*")), "W&B logged offline, no network needed"
    meta = json.loads((workspace_copy / "models/adapter/metadata.json").read_text())
    assert meta["backend"] == "hf" and meta["effective"]["global_steps"] == 30
    metrics = json.loads((workspace_copy / "reports/metrics.json").read_text())
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 1

