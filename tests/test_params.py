"""params.yaml: the committed file is the seed's real job, every key documented, types checked."""
from __future__ import annotations

import pytest

from alpaca_qlora.cli.offline_workspace import make_offline_workspace, parse_override
from alpaca_qlora.params import SCHEMA, ParamsError, load_section, read_yaml, validate_section
from tests.conftest import REPO_ROOT

PARAMS = REPO_ROOT / "params.yaml"


def test_committed_params_are_the_seed_configuration():
    params = read_yaml(PARAMS)
    assert params["model"] == {"name": "unsloth/mistral-7b-instruct-v0.2-bnb-4bit", "max_seq_length": 2048,
                               "load_in_4bit": True, "offline_seed": 0,
                               "trust_remote_code": False}
    assert params["lora"] == {"r": 16, "alpha": 16, "dropout": 0.0, "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "use_rslora": False}
    assert params["format"]["input_free_variant"] is False, "the seed's one template, empty ### Input: included"
    assert params["data"]["source"] == "yahma/alpaca-cleaned" and params["data"]["fraction"] == 0.1
    train = params["train"]
    assert (train["backend"], train["epochs"], train["learning_rate"], train["seed"]) == ("unsloth", 1, 2e-4, 3407)
    assert (train["rows_per_step"], train["warmup_steps"]) == (8, 5), "the notebook's 2 x 4 rows a step"
    assert (train["batch_size"], train["gradient_checkpointing"]) == ("auto", "auto"), "what fits the GPU"
    assert (train["optimizer"], train["lr_scheduler"]) == ("adamw_8bit", "linear")
    assert train["neftune_noise_alpha"] == 0, "NEFTune is an option, off as in the seed"
    assert params["runtime"]["wandb_mode"] == "auto", "W&B on by default (online or offline), never blocking"


def test_every_key_is_commented_and_known():
    lines = PARAMS.read_text().splitlines()
    params = read_yaml(PARAMS)
    assert set(params) == set(SCHEMA)
    for section, values in params.items():
        assert set(values) == set(SCHEMA[section]), section
        validate_section(section, values, PARAMS)
    for number, line in enumerate(lines):
        if line.startswith("  ") and not line.strip().startswith("#") and ":" in line:
            assert lines[number - 1].strip().startswith("#"), f"params.yaml line {number + 1} has no comment: {line}"


def test_yaml_1_2_reads_scientific_notation_as_float(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text().replace("learning_rate: 2.0e-4", "learning_rate: 2e-4"))
    assert load_section("train", path)["learning_rate"] == 2e-4


@pytest.mark.parametrize("old, new, message", [
    ("  r: 16", "  r: sixteen", "key 'lora.r' must be int"),
    ("  packing: true", "  packing: 1", "key 'train.packing' must be bool"),
    ("  backend: unsloth", "  backend: deepspeed", "key 'train.backend' must be one of unsloth, hf"),
    ("  batch_size: auto", "  batch_size: max", "key 'train.batch_size' must be auto or a positive integer"),
    ("  batch_size: auto", "  batch_size: 0", "key 'train.batch_size' must be auto or a positive integer"),
    ("  gradient_checkpointing: auto", "  gradient_checkpointing: yes please",
     "key 'train.gradient_checkpointing' must be one of auto, unsloth, true, false, got 'yes please'"),
    ("  gradient_checkpointing: auto", "  gradient_checkpointing: 1", "must be str or bool, got 1"),
    ("  gradient_checkpointing: auto", "  gradient_checkpointing: 'false'",
     "key 'train.gradient_checkpointing' must be one of auto, unsloth, true, false, got 'false'; it is a quoted "
     "string: write false without quotes"),
    ("  rows_per_step: 8", "  rows_per_step: '8'", "key 'train.rows_per_step' must be int, got '8'; it is a quoted"),
    ("  epochs: 1", "  epochs: 1\n  epochz: 2", "unknown key(s) train.epochz"),
    ("  seed: 3407\n\nmodel", "\nmodel", "key 'data.seed' is missing"),
])
def test_bad_params_name_the_file_and_key(tmp_path, old, new, message):
    path = tmp_path / "params.yaml"
    text = PARAMS.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    section = message.split("'")[1].split(".")[0] if "'" in message else "train"
    with pytest.raises(ParamsError) as error:
        load_section(section, path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_offline_workspace_overlays_the_profile_and_overrides_without_touching_params_yaml(tmp_path):
    before = PARAMS.read_bytes()
    workspace = make_offline_workspace(tmp_path / "ws", ["data.source=/data/mine.json", "train.epochs=2"])
    assert PARAMS.read_bytes() == before
    merged = read_yaml(workspace / "params.yaml")
    assert merged["model"]["name"] == "offline:tiny-mistral"
    assert merged["data"]["source"] == "/data/mine.json" and merged["train"]["epochs"] == 2
    assert merged["lora"]["r"] == 16, "keys the profile does not set keep params.yaml's value"
    assert "# float. Peak learning rate." in (workspace / "params.yaml").read_text(), "comments are kept"
    with pytest.raises(ParamsError, match="unknown key 'train.epoch'"):
        parse_override("train.epoch=2")
