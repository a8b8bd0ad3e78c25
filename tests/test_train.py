"""Stage `train`: a real adapter that says how it was made; W&B never blocks; the hf backend trains too."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from alpaca_qlora.files import file_sha256
from alpaca_qlora.training.tracking import has_credentials, resolve_wandb_mode, wandb_dir
from tests.conftest import run_dvc, stages_run
from tests.remotes.servers import _LoopbackListener

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
    assert results["real_tokens"] == 59308, "one epoch over 800 rows = every real token once"
    assert results["real_tokens_per_s"] > 0 and results["peak_cpu_rss_gib"] > 0
    assert meta["effective"]["optimizer"] and meta["effective"]["device"]["type"] == "cpu"
    assert meta["params"]["train"]["packing"] is True and meta["effective"]["packing"] is False, \
        "Unsloth turns packing off on a CPU, and the metadata says what actually ran"


def test_the_adapter_records_its_batch_plan_and_every_stage_its_timeline(reproduced_workspace):
    """auto on a CPU: the whole step of 8 rows in one pass, no gradient checkpointing, and the layers agree."""
    meta = json.loads((reproduced_workspace / "models/adapter/metadata.json").read_text())
    effective = meta["effective"]
    assert (effective["per_device_batch_size"], effective["gradient_accumulation_steps"],
            effective["effective_batch_size"], effective["chosen_by"]) == (8, 1, 8, "auto")
    assert effective["gradient_checkpointing"] == "off" and effective["gradient_checkpointing_active"] is False
    assert 0 < effective["predicted_peak_gib"] < effective["free_memory_gib"]
    assert meta["params"]["train"]["batch_size"] == "auto" and meta["params"]["train"]["rows_per_step"] == 8

    expected = {"sample": ["startup", "load", "sample", "save"], "format": ["startup", "tokenizer_load", "format", "save"],
                "train": ["startup", "imports", "data_and_plan", "model_load", "trainer_setup", "first_step", "loop",
                          "save"],
                "evaluate_base": ["startup", "imports", "model_load", "heldout_and_lm_eval", "save"],
                "evaluate": ["startup", "imports", "model_load", "heldout_and_lm_eval", "save"]}
    for stage, phases in expected.items():
        timeline = json.loads((reproduced_workspace / f"reports/timelines/{stage}.json").read_text())
        assert [name for name, _ in timeline["phases"]] == phases, stage
        assert sum(seconds for _, seconds in timeline["phases"]) == pytest.approx(timeline["total_s"], abs=0.05)
    train = dict(json.loads((reproduced_workspace / "reports/timelines/train.json").read_text())["phases"])
    runtime = meta["results"]["train_runtime_s"]
    assert train["first_step"] + train["loop"] == pytest.approx(runtime, rel=0.05, abs=0.5), "the Trainer's own clock"
    assert dict(meta["timeline"]["phases"])["model_load"] == train["model_load"] == meta["results"]["model_load_s"]


def test_training_curves_go_to_dvclive(reproduced_workspace):
    metrics = json.loads((reproduced_workspace / "reports/train/metrics.json").read_text())
    assert metrics["step"] == 100
    loss_rows = (reproduced_workspace / "reports/train/plots/metrics/loss.tsv").read_text().splitlines()
    first, last = float(loss_rows[1].split("\t")[-1]), float(loss_rows[-1].split("\t")[-1])
    assert len(loss_rows) == 101 and last < first - 2, "the loss curve falls"
    assert not (reproduced_workspace / "dvclive").exists()
    assert "dvclive" not in (reproduced_workspace / "dvc.yaml").read_text().split("metrics:")[0]


def test_wandb_goes_online_only_with_credentials_and_a_server_that_answers(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no such file: no stored login
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    assert resolve_wandb_mode("auto") == "offline" and resolve_wandb_mode("online") == "offline", \
        "no credentials: offline, never a login prompt"
    (tmp_path / "netrc").write_text("machine 127.0.0.1:9 login user password " + "0" * 40 + "\n")
    assert has_credentials("http://127.0.0.1:9"), "a netrc entry, as `wandb login` writes it"
    started = time.monotonic()
    assert resolve_wandb_mode("auto") == "offline", "credentials but no server: offline"
    assert time.monotonic() - started < 10
    with ConnectionRecorder() as server:  # a server that accepts the connection
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.port}")
        (tmp_path / "netrc").write_text(f"machine 127.0.0.1:{server.port} login user password {'0' * 40}\n")
        assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("online") == "disabled", "WANDB_MODE wins over the param"


def test_wandb_runs_of_queued_experiments_land_in_the_repository_root(monkeypatch, tmp_path):
    """`dvc exp run --queue` runs stages in .dvc/tmp/exps/..., deleted afterwards: wandb/ goes to the root."""
    monkeypatch.delenv("WANDB_DIR", raising=False)
    inside = tmp_path / "repo/.dvc/tmp/exps/tmpab12cd"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    assert wandb_dir() == (tmp_path / "repo").resolve()
    monkeypatch.chdir(tmp_path / "repo")
    assert wandb_dir() == (tmp_path / "repo").resolve()


class ConnectionRecorder(_LoopbackListener):
    """A 127.0.0.1 listener that counts and drops every connection: a network stand-in that tells on callers."""

    def __init__(self):
        super().__init__()
        self.connections = 0

    def _handle(self, conn):
        self.connections += 1
        conn.close()
        return []


def offline_run_records(run_dir: Path) -> dict[str, list]:
    """The records of an offline W&B run, read from its run-<id>.wandb transaction log.

    wandb 0.31 writes no wandb-summary.json or config.yaml offline, and its Python reader of the log is gone
    (the log is read by the Go core now). The log is LevelDB's log format (32 KiB blocks, each record a
    7-byte header: CRC, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte ":W&B" file header; each
    record is a protobuf `Record` parsed with wandb's own schema.
    """
    from wandb.proto import wandb_internal_pb2

    (log,) = run_dir.glob("run-*.wandb")
    data, block = log.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{log} is not a W&B transaction log"
    position, pending, found = 7, b"", {}
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little room left for a header: the block is padded
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.setdefault(record.WhichOneof("record_type"), []).append(record)
    return found


def test_hf_backend_trains_with_wandb_by_default_offline_and_never_touches_the_network(workspace_copy, tmp_path):
    """transformers + bitsandbytes + peft; 30 steps, since its CPU path is ~15x slower than Unsloth's.

    W&B as committed (runtime.wandb_mode auto), with no credentials, no terminal and no network: every route
    out (HTTP(S) proxies, the W&B server URL) points at a local listener that counts connections. The run
    must make none, never wait for a login, and still record config and metrics in an offline run folder
    under wandb/ (git- and dvc-ignored), with the `wandb sync` line printed. The same run carries NEFTune and
    rsLoRA on the hf backend to the trainer and the PEFT config (Unsloth's: tests/test_sweep.py).
    """
    with ConnectionRecorder() as network:
        dead_end = f"http://127.0.0.1:{network.port}"
        started = time.monotonic()
        output = run_dvc(workspace_copy, "exp", "run", "-n", "wandb-offline", "-S", "train.backend=hf",
                         "-S", "train.max_steps=30", "-S", "train.neftune_noise_alpha=5", "-S", "lora.use_rslora=true",
                         env={"WANDB_MODE": None, "WANDB_API_KEY": None, "WANDB_DIR": None,
                              "NETRC": str(tmp_path / "netrc"), "WANDB_CONFIG_DIR": str(tmp_path),
                              "WANDB_BASE_URL": dead_end, "HTTP_PROXY": dead_end, "HTTPS_PROXY": dead_end,
                              "http_proxy": dead_end, "https_proxy": dead_end, "NO_PROXY": "", "no_proxy": ""})
        seconds = time.monotonic() - started
    assert stages_run(output) == ["train", "evaluate", "card"]
    assert network.connections == 0, f"something tried the network during an offline run ({seconds:.0f}s)"
    assert "W&B: no W&B credentials" in output and "logging offline" in output
    runs = {}  # job type -> (run folder, its records): the train stage's run and the evaluate stage's
    for run_dir in (workspace_copy / "wandb").glob("offline-run-*"):
        found = offline_run_records(run_dir)
        runs[found["run"][0].run.job_type] = (run_dir, found)
    assert set(runs) == {"train", "evaluate"}, runs
    assert f"wandb sync {runs['train'][0]}" in output, "the line that uploads the run later"
    untracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=workspace_copy,
                               capture_output=True, text=True).stdout
    assert "wandb" not in untracked and "wandb" in run_dvc(workspace_copy, "check-ignore", "wandb/x")
    meta = json.loads((workspace_copy / "models/adapter/metadata.json").read_text())
    assert meta["backend"] == "hf" and meta["effective"]["global_steps"] == 30
    assert meta["effective"]["neftune_noise_alpha"] == 5 and meta["effective"]["use_rslora"] is True
    assert meta["effective"]["lora_scaling"] == [16 / math.sqrt(16)], "rsLoRA: alpha / sqrt(r)"
    assert json.loads((workspace_copy / "models/adapter/adapter_config.json").read_text())["use_rslora"] is True
    metrics = json.loads((workspace_copy / "reports/metrics.json").read_text())
    assert metrics["adapter"]["eval_loss"] < metrics["base"]["eval_loss"] - 1
    check_evaluate_run_holds_the_generations_table(*runs["evaluate"], workspace_copy, metrics)

    run_dir, records = runs["train"]
    (run,) = records["run"]
    assert run.run.display_name == "wandb-offline", "the W&B run is named after the DVC experiment"
    config = {item.key: json.loads(item.value_json) for item in run.run.config.update}
    for record in records.get("config", []):  # later updates (WandbCallback adds the trainer's arguments)
        config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert config["params"]["train"]["backend"] == "hf" and config["params"]["train"]["max_steps"] == 30
    assert config["params"]["lora"]["r"] == 16 and config["params"]["model"]["name"] == "offline:tiny-mistral"
    assert config["data"]["formatted_train_sha256"] == meta["data"]["formatted_train_sha256"]
    assert config["learning_rate"] == 5e-3, "transformers' WandbCallback reused the run and added its arguments"
    assert config["neftune_noise_alpha"] == 5, "NEFTune reached the trainer's arguments"
    revision = config["revision"]
    assert revision["dvc_exp_name"] == "wandb-offline"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace_copy, capture_output=True, text=True).stdout
    assert revision["git_commit"] == revision["dvc_exp_baseline_rev"] == head.strip()
    logged = [json.loads(item.value_json) for record in records["history"] for item in record.history.item
              if (item.key or "/".join(item.nested_key)) == "train/loss"]
    assert len(logged) == 30 and all(math.isfinite(value) for value in logged)


def check_evaluate_run_holds_the_generations_table(run_dir: Path, records: dict, workspace: Path, metrics: dict):
    """The evaluate stage's W&B run: every held-out row as a Table, the metrics in its summary."""
    from alpaca_qlora.evaluation.tracking import COLUMNS
    from alpaca_qlora.files import read_jsonl

    (run,) = records["run"]
    assert run.run.display_name == "wandb-offline" and run.run.run_group == "wandb-offline"
    (table_file,) = run_dir.glob("files/media/table/evaluate/generations_*.table.json")
    table = json.loads(table_file.read_text())
    generations = read_jsonl(workspace / "reports/generations.jsonl")
    assert table["columns"] == COLUMNS and len(table["data"]) == len(generations) == 64
    by_id = {row[0]: dict(zip(COLUMNS, row)) for row in table["data"]}
    for record in generations:
        row = by_id[record["id"]]
        assert (row["reference"], row["adapter_answer"], row["base_answer"]) == (
            record["reference"], record["adapter"]["answer"], record["base"]["answer"])
        assert row["adapter_rouge_l"] == record["adapter"]["rouge_l"]
    summary = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for record in records.get("summary", []) for item in record.summary.update}
    assert summary["evaluate/adapter/rouge_l"] == metrics["adapter"]["rouge_l"], summary.keys()
