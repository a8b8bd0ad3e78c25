"""Bad input gets an error naming the file, key or record and the fix; outputs are all-or-nothing; checkpoints
are used only when complete; models load from safetensors only; no secret is tracked. Fast unit tests: the
same behaviours through the real `dvc` CLI are in tests/test_errors.py and tests/test_resume.py."""
from __future__ import annotations

import errno
import json
import re
import subprocess

import pytest

from alpaca_qlora.files import atomic_directory, staging_path
from alpaca_qlora.training.checkpoints import (MARKER, is_complete, last_complete_checkpoint, mark_complete,
                                      replay_into_dvclive, run_key)
from alpaca_qlora.data.records import DataError, load_records, validate_records
from alpaca_qlora.data.sampling import find_duplicates
from alpaca_qlora.modeling.preflight import (EnvironmentProblem, check_backend_device, check_model_reachable,
                                      check_target_modules)
from alpaca_qlora.params import ParamsError, load_section, read_yaml, validate_section
from tests.conftest import REPO_ROOT

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}


# ---------------------------------------------------------------- data

@pytest.mark.parametrize("name, content, message", [
    ("data.json", b'[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]',
     r"data.json:2: not valid JSON at column 22, character offset 59 \(Expecting ',' delimiter\)"),
    ("data.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"\n',
     r"data.jsonl:2: not valid JSON at column 35 \(Expecting ',' delimiter\); each line must be one complete "
     r"JSON object"),
    ("data.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "d"}\n',
     r"data.jsonl:2: not UTF-8 \(byte offset 56: invalid continuation byte\); re-encode the file as UTF-8"),
    ("data.json", b'[{"instruction": "a",\n "output": "\xff"}]',
     r"data.json:2: not UTF-8 \(byte offset 34: invalid start byte\)"),
    ("data.jsonl", b"", r"data.jsonl: the file holds no records; data.source must point to a non-empty"),
    ("data.jsonl", b"\n  \n", r"data.jsonl: the file holds no records"),
    ("data.json", b"[]", r"data.json: the file holds no records"),
])
def test_unreadable_or_empty_source_names_the_file_and_position(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_records(str(path))


@pytest.mark.parametrize("bad, message", [
    ({"input": "", "output": "x"}, "field 'instruction' must be a non-empty string, got None"),
    ({"instruction": "x", "input": ""}, "field 'output' must be a non-empty string, got None"),
    ({"instruction": 7, "input": "", "output": "x"}, "field 'instruction' must be a non-empty string, got 7"),
    ({"instruction": "x", "input": ["a"], "output": "y"}, "field 'input' must be a string (may be empty)"),
])
def test_record_missing_a_field_or_with_a_non_string_is_named(tmp_path, bad, message):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, bad]))
    with pytest.raises(DataError) as error:
        validate_records(*load_records(str(path)))
    assert f"{path} record 1: {message}" in str(error.value)


def test_duplicates_are_counted_with_their_first_occurrence_not_dropped(tmp_path):
    other = {"instruction": "Other.", "input": "x", "output": "y"}
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [GOOD, other, GOOD, GOOD, {**GOOD, "input": " "}]))
    rows, where = load_records(str(path))
    records = validate_records(rows, where)
    assert len(records) == 5, "kept"
    assert find_duplicates(records, where) == [(f"{path}:3", f"{path}:1"), (f"{path}:4", f"{path}:1")]


# ---------------------------------------------------------------- params

def committed(section: str) -> dict:
    return read_yaml(REPO_ROOT / "params.yaml")[section]


@pytest.mark.parametrize("section, change, message", [
    ("data", {"fraction": 0}, "key 'data.fraction' must be in (0, 1], got 0"),
    ("data", {"fraction": 1.5}, "key 'data.fraction' must be in (0, 1], got 1.5"),
    ("data", {"fraction": -0.1}, "key 'data.fraction' must be in (0, 1], got -0.1"),
    ("lora", {"r": 0}, "key 'lora.r' must be a positive integer (the LoRA rank, e.g. 16), got 0"),
    ("lora", {"r": -8}, "key 'lora.r' must be a positive integer"),
    ("lora", {"rank": 16},
     "unknown key(s) lora.rank; known keys of 'lora': r, alpha, dropout, target_modules, use_rslora"),
    ("lora", {"target_modules": []}, "key 'lora.target_modules' must be a non-empty list of module names"),
    ("train", {"backend": "vllm"}, "key 'train.backend' must be one of unsloth, hf, got 'vllm'"),
    ("train", {"learning_rate": "2e-4"},
     "key 'train.learning_rate' must be float, got '2e-4'; it is a quoted string: write 2e-4 without quotes"),
    ("train", {"batch_size": "8"}, "key 'train.batch_size' must be auto or a positive integer, got '8'; it is a "
                                   "quoted string"),
    ("train", {"rows_per_step": "8"}, "key 'train.rows_per_step' must be int, got '8'; it is a quoted string"),
    ("runtime", {"save_steps": -1}, "key 'runtime.save_steps' must be 0 (no checkpoints) or a positive number"),
    ("model", {"trust_remote_code": "no"}, "key 'model.trust_remote_code' must be bool, got 'no'"),
    ("model", {"max_seq_length": 8}, "key 'model.max_seq_length' must be at least 16, got 8"),
])
def test_bad_param_values_are_refused_with_file_and_key(section, change, message):
    with pytest.raises(ParamsError) as error:
        validate_section(section, {**committed(section), **change}, "params.yaml")
    assert str(error.value).startswith("params.yaml: ") and message in str(error.value)


def test_unquoted_scientific_notation_is_a_number_and_security_default_is_off(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text().replace("learning_rate: 2.0e-4", "learning_rate: 2e-4"))
    assert load_section("train", path)["learning_rate"] == 2e-4
    assert load_section("model", path)["trust_remote_code"] is False
    assert load_section("runtime", path)["save_steps"] == 50


def test_params_yaml_that_is_not_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  fraction: [0.4\n  eval_size: 64\n")
    with pytest.raises(ParamsError) as error:
        read_yaml(path)
    assert str(error.value).startswith(f"{path}:3: not valid YAML (while parsing a flow sequence from line 2: ")
    assert str(error.value).endswith(f"; fix the indentation or quoting there (`git diff {path}` shows what changed)")


def test_offline_workspace_with_a_bad_override_leaves_no_folder(tmp_path):
    from alpaca_qlora.cli.offline_workspace import make_offline_workspace

    with pytest.raises(ParamsError, match="key 'lora.r' must be a positive integer"):
        make_offline_workspace(tmp_path / "ws", ["lora.r=0"])
    with pytest.raises(ParamsError, match=r"override 'lora.target_modules=\[q_proj': the value is not valid YAML"):
        make_offline_workspace(tmp_path / "ws", ["lora.target_modules=[q_proj"])
    assert not (tmp_path / "ws").exists(), "no half-made workspace to be mistaken for one"


# ---------------------------------------------------------------- adapters


def write_adapter_folder(folder, *, leave_out=(), metadata="{}"):
    folder.mkdir(parents=True)
    for name in {"adapter_config.json", "adapter_model.safetensors", "metadata.json"} - set(leave_out):
        (folder / name).write_text(metadata if name == "metadata.json" else "{}")
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "nothing", "{folder} does not exist; `dvc repro` trains one into models/adapter"),
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "{folder} is a file, not an adapter folder"),
    (lambda tmp: write_adapter_folder(tmp / "peft", leave_out=["metadata.json"]),
     "{folder} is a PEFT adapter without metadata.json (which records the base model"),
    (lambda tmp: write_adapter_folder(tmp / "pickled", leave_out=["adapter_model.safetensors"]),
     "{folder}: no adapter_model.safetensors (only safetensors adapters are loaded, never a pickled"),
    (lambda tmp: write_adapter_folder(tmp / "broken", metadata="{"),
     "{folder}/metadata.json: not valid JSON (Expecting property name"),
    (lambda tmp: write_adapter_folder(tmp / "old", metadata='{"base_model": "x"}'),
     "{folder}/metadata.json: no backend, params"),
])
def test_a_folder_that_is_not_a_usable_adapter_is_said_to_be_what_it_is(tmp_path, make, message):
    from alpaca_qlora.modeling.adapter import AdapterError, AdapterMetadata

    folder = make(tmp_path)
    with pytest.raises(AdapterError) as error:
        AdapterMetadata.read(folder)
    assert message.format(folder=folder) in str(error.value)


def test_a_merged_model_folder_is_checked_before_the_converter_is_fetched(tmp_path):
    from alpaca_qlora.cli.gguf_export import export_gguf
    from alpaca_qlora.errors import UserError

    with pytest.raises(UserError, match="does not exist; make it first: python -m alpaca_qlora.cli.merge"):
        export_gguf(tmp_path / "merged", tmp_path / "model.gguf", converter_dir=tmp_path / "never")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"is not a merged model \(no config.json or no \*.safetensors\)"):
        export_gguf(tmp_path / "merged", tmp_path / "model.gguf", converter_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- environment

def test_unsloth_with_a_gpu_model_and_no_cuda_points_to_the_offline_profile_or_hf():
    with pytest.raises(EnvironmentProblem) as error:
        check_backend_device("unsloth", "unsloth/mistral-7b-instruct-v0.2-bnb-4bit", cuda_available=False)
    text = str(error.value)
    assert "train.backend=unsloth with model.name='unsloth/mistral-7b-instruct-v0.2-bnb-4bit' needs a CUDA GPU" in text
    assert "offline profile" in text and "train.backend: hf" in text
    check_backend_device("unsloth", "offline:tiny-mistral", cuda_available=False)  # Unsloth trains it on a CPU
    check_backend_device("hf", "unsloth/mistral-7b-instruct-v0.2-bnb-4bit", cuda_available=False)
    check_backend_device("unsloth", "unsloth/mistral-7b-instruct-v0.2-bnb-4bit", cuda_available=True)


def test_uncached_model_with_hf_hub_offline_names_the_id_and_the_variable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EnvironmentProblem) as error:
        check_model_reachable("example-org/not-cached-model-7b")
    text = str(error.value)
    assert "model.name='example-org/not-cached-model-7b' is not in the local Hugging Face cache" in text
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in text and "offline:tiny-mistral" in text


def test_unreachable_hub_names_the_id_quickly(monkeypatch):
    import time

    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(EnvironmentProblem) as error:
        check_model_reachable("example-org/not-cached-model-7b", timeout_s=5)
    assert time.monotonic() - started < 30
    text = str(error.value)
    assert "model.name='example-org/not-cached-model-7b' cannot be reached on the Hugging Face hub" in text
    assert "set HF_HUB_OFFLINE=1" in text


@pytest.fixture(scope="module")
def tiny_model():
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1)
    return MistralForCausalLM(config)


def test_target_module_missing_from_the_model_is_named_with_the_real_ones(tiny_model):
    with pytest.raises(EnvironmentProblem) as error:
        check_target_modules(tiny_model, ["q_proj", "qkv_proj"], "offline:tiny-mistral")
    assert str(error.value) == (
        "params.yaml: lora.target_modules lists 'qkv_proj', not a linear layer of model 'offline:tiny-mistral'; "
        "list only its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj")
    check_target_modules(tiny_model, committed("lora")["target_modules"], "offline:tiny-mistral")


# ---------------------------------------------------------------- all-or-nothing outputs

def test_failed_directory_write_leaves_neither_target_nor_staging(tmp_path):
    target = tmp_path / "data" / "sampled"
    with pytest.raises(DataError):
        with atomic_directory(target) as staging:
            (staging / "train.jsonl").write_text("half")
            raise DataError("record 3 is bad")
    assert not target.exists() and not staging_path(target).exists()
    with atomic_directory(target) as staging:
        (staging / "train.jsonl").write_text("all")
    assert (target / "train.jsonl").read_text() == "all" and not staging_path(target).exists()


def test_disk_full_while_saving_the_adapter_leaves_no_valid_looking_adapter(tiny_model, tmp_path, monkeypatch):
    """The real PEFT save path, with its safetensors writer failing half way as on a full disk."""
    import peft.peft_model
    from peft import LoraConfig, get_peft_model
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from alpaca_qlora.modeling.adapter import AdapterMetadata, save_adapter

    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    out = tmp_path / "models" / "adapter"
    metadata = AdapterMetadata(base_model="tiny", backend="hf", params={}, template={}, format={}, data={},
                               reproduce={}, resumed_from_step=None, effective={}, results={}, libraries={})

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 100)  # the first bytes made it to disk, then the device filled up
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        save_adapter(out, model, tokenizer, metadata, card="# card\n")
    assert not out.exists() and not staging_path(out).exists()
    assert list((tmp_path / "models").iterdir()) == []

    monkeypatch.undo()
    save_adapter(out, model, tokenizer, metadata, card="# card\n")  # a previous good adapter...
    before = (out / "adapter_model.safetensors").read_bytes()
    monkeypatch.setattr(peft.peft_model, "safe_save_file", disk_full)
    with pytest.raises(OSError):
        save_adapter(out, model, tokenizer, metadata, card="# card\n")
    assert (out / "adapter_model.safetensors").read_bytes() == before, "...survives a failed save intact"
    assert AdapterMetadata.read(out) == metadata
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["adapter"]


# ---------------------------------------------------------------- checkpoints

def fake_checkpoint(run_dir, step: int, *, complete: bool):
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"w" * step)
    (folder / "optimizer.pt").write_bytes(b"o" * step)
    history = [{"loss": 9.0 - s, "learning_rate": 0.1, "step": s} for s in range(1, step + 1)]
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    if complete:
        mark_complete(folder, step)
    return folder


def test_only_complete_checkpoints_are_resumed_and_partial_ones_are_deleted(tmp_path):
    run_dir = tmp_path / "run"
    assert last_complete_checkpoint(run_dir) is None
    fake_checkpoint(run_dir, 10, complete=True)
    twenty = fake_checkpoint(run_dir, 20, complete=True)
    fake_checkpoint(run_dir, 30, complete=False)  # killed while the Trainer was writing it
    truncated = fake_checkpoint(run_dir, 40, complete=True)
    with open(truncated / "optimizer.pt", "r+b") as handle:  # marker present, but a file is not what it was
        handle.truncate(5)
    assert not is_complete(truncated) and is_complete(twenty)
    assert last_complete_checkpoint(run_dir) == twenty
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-10", "checkpoint-20"]
    (twenty / MARKER).write_text(json.dumps({"step": 10, "files": {}}))  # a marker of another step
    assert last_complete_checkpoint(run_dir).name == "checkpoint-10"


def test_run_key_changes_with_every_param_that_changes_the_weights():
    """Every train.* key is in the key; runtime.* (W&B, logging, checkpoint cadence) is not an input at all."""
    model, lora, train = committed("model"), committed("lora"), committed("train")
    key = run_key(model, lora, train, "a" * 64)
    assert len(key) == 16 and run_key(model, lora, train, "a" * 64) == key
    for name, value in train.items():
        changed = {**train, name: (not value) if isinstance(value, bool) else f"{value}-changed"}
        assert run_key(model, lora, changed, "a" * 64) != key, name
    assert run_key(model, {**lora, "r": 8}, train, "a" * 64) != key
    assert run_key({**model, "max_seq_length": 1024}, lora, train, "a" * 64) != key
    assert run_key(model, lora, train, "b" * 64) != key, "other training data, other run"


def test_resumed_curves_replay_the_steps_before_the_checkpoint(tmp_path):
    from dvclive import Live

    from alpaca_qlora.training.checkpoints import logged_history

    folder = fake_checkpoint(tmp_path / "run", 3, complete=True)
    live = Live(dir=str(tmp_path / "live"), dvcyaml=False, save_dvc_exp=False, report=None)
    replay_into_dvclive(live, logged_history(folder))
    assert live.step == 3
    live.end()
    rows = (tmp_path / "live/plots/metrics/loss.tsv").read_text().splitlines()
    assert rows == ["step\tloss", "0\t8.0", "1\t7.0", "2\t6.0"]


# ---------------------------------------------------------------- security

def test_a_pickled_model_is_refused(tiny_model, tmp_path):
    from alpaca_qlora.modeling.backends import load_transformers_model

    import torch

    folder = tmp_path / "pickled"  # what an old or hostile repository may ship: config + a pickle
    tiny_model.config.save_pretrained(str(folder))
    torch.save(tiny_model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_transformers_model(str(tmp_path / "pickled"), {"load_in_4bit": False, "trust_remote_code": False})


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key assignment": r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}",
    "private key block": r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----",
    "W&B API key assignment": r"(WANDB_API_KEY|wandb_api_key|api_key)\s*[=:]\s*['\"]?[0-9a-f]{40}\b",
    "Hugging Face token": r"\bhf_[A-Za-z0-9]{34,}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
}


# Fakes on purpose, each with where and why.
NOT_SECRETS = {"AKIAUNKNOWNKEY000000"}  # tests/remotes/test_failures.py: an unknown key id sent to local moto


def find_secrets(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items()
            if any(match.group(0) not in NOT_SECRETS for match in re.finditer(pattern, text))]


def test_no_secret_is_tracked_and_local_credentials_are_ignored():
    # The detector itself catches each kind (keys assembled here so this file holds none):
    planted = {"AKIA" + "Q" * 16, "aws_secret_access_key = " + "x" * 40, "-----BEGIN RSA " + "PRIVATE KEY-----",
               "WANDB_API_KEY=" + "0123456789abcdef" * 2 + "01234567", "hf_" + "a" * 34, "ghp_" + "b" * 36}
    assert sorted(n for text in planted for n in find_secrets(text)) == sorted(SECRET_PATTERNS)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True).stdout
    found = {}
    for name in filter(None, tracked.decode().split("\0")):
        path = REPO_ROOT / name
        if path.is_file() and path.stat().st_size < 5_000_000:
            hits = find_secrets(path.read_bytes().decode("utf-8", errors="replace"))
            if hits:
                found[name] = hits
    assert found == {}, f"tracked files that look like they hold secrets: {found}"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, ".dvc/config.local (remote credentials) must be git-ignored"


def test_no_unsafe_unpickling_in_our_code():
    offenders = []
    for path in sorted(REPO_ROOT.glob("**/*.py")):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}")
            if re.search(r"\bpickle\.loads?\(", line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}")
    assert offenders == []


def test_sample_stage_warns_about_duplicates_counts_them_and_keeps_them(offline_workspace_factory, tmp_path):
    import sys

    from tests.conftest import cli_env

    rows = [{"instruction": f"Task {i % 7}.", "input": "", "output": f"Answer {i % 7}."} for i in range(20)]
    source = tmp_path / "dups.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    workspace = offline_workspace_factory(f"data.source={source}", "data.fraction=0.5", "data.eval_size=5")
    done = subprocess.run([sys.executable, "-m", "stages.sample", "--out", "data/sampled"], cwd=workspace,
                          env=cli_env(), check=True, capture_output=True, text=True)
    assert (f"sample: warning: 13 duplicate record(s) in {source}, kept and counted in stats.json "
            f"({source}:8 repeats {source}:1;") in done.stdout
    assert done.stderr == "", "a warning, not an error: nothing on stderr"
    stats = json.loads((workspace / "data/sampled/stats.json").read_text())
    assert stats["duplicate_records"] == 13 and stats["source_records"] == 20 and stats["train_records"] == 10
    assert sorted(p.name for p in (workspace / "data").iterdir() if p.name.startswith(".")) == []
