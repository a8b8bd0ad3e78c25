"""A user's mistake ends the stage with one line and no traceback, through the real `dvc repro`, and
docs/errors.md shows each case's exact line: this file checks every row, so the table cannot drift.

All cases share one copy of the reproduced workspace. Each writes its bad input, runs `dvc repro` and puts
params.yaml back: the first stage the input reaches fails, and the stages before it come back from DVC's
run-cache instead of running, so a sample-stage case costs about as much as starting DVC, and no case
trains. After all of them, `dvc checkout` restores every output byte for byte.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from alpaca_qlora.cli.offline_workspace import overlay_params, parse_override
from alpaca_qlora.files import file_sha256
from tests.conftest import REPO_ROOT, cli_env, run_dvc, stages_run

ERROR_TABLE = REPO_ROOT / "docs" / "errors.md"
OUTPUTS = ("models/adapter/adapter_model.safetensors", "data/sampled/train.jsonl", "data/formatted/train.jsonl",
           "reports/metrics.json")
GOOD = b'{"instruction": "a", "input": "", "output": "b"}\n'


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class Case:
    stage: str  # the stage that stops
    what: str  # the mistake, as the table says it
    overrides: tuple[str, ...] = ()  # section.key=value, as `dvc exp run -S` takes them
    files: tuple[tuple[str, bytes], ...] = ()  # written into the workspace first
    edit: tuple[str, str] | None = None  # a text change of params.yaml: overrides refuse bad values
    cpu_only: bool = False  # the mistake is one only on a machine without a GPU

    def row(self, line: str) -> str:
        return f"| {self.stage} | {self.what} | `` {line} `` |"


CASES = [
    Case("sample", "`data.source` names no file", ("data.source=bad/missing.jsonl",)),
    Case("sample", "`data.source` is a directory", ("data.source=bad",)),
    Case("sample", "`data.source` is a CSV file", ("data.source=bad/data.csv",),
         (("bad/data.csv", b"instruction,input,output\n"),)),
    Case("sample", "a hub data set, offline", ("data.source=yahma/alpaca-cleaned",)),
    Case("sample", "an empty file", ("data.source=bad/empty.jsonl",), (("bad/empty.jsonl", b""),)),
    Case("sample", "a JSON syntax error", ("data.source=bad/broken.json",),
         (("bad/broken.json", b'[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]'),)),
    Case("sample", "a JSONL line that is not JSON", ("data.source=bad/broken.jsonl",),
         (("bad/broken.jsonl", GOOD + b'{"instruction": "c", "output": "d"\n'),)),
    Case("sample", "not UTF-8", ("data.source=bad/latin1.jsonl",),
         (("bad/latin1.jsonl", GOOD + b'{"instruction": "caf\xe9", "input": "", "output": "d"}\n'),)),
    Case("sample", "a JSON object instead of a list", ("data.source=bad/object.json",),
         (("bad/object.json", b'{"data": [{"instruction": "a", "output": "b"}]}'),)),
    Case("sample", "a record that is not an object", ("data.source=bad/array.jsonl",),
         (("bad/array.jsonl", GOOD + b'["c", "", "d"]\n'),)),
    Case("sample", "a blank instruction", ("data.source=bad/blank.json",),
         (("bad/blank.json", b'[{"instruction": "   ", "input": "", "output": "x"}]'),)),
    Case("sample", "a record without output", ("data.source=bad/no_output.jsonl",),
         (("bad/no_output.jsonl", GOOD + b'{"instruction": "c", "input": ""}\n'),)),
    Case("sample", "an input that is not a string", ("data.source=bad/null_input.jsonl",),
         (("bad/null_input.jsonl", GOOD + b'{"instruction": "c", "input": null, "output": "d"}\n'),)),
    Case("sample", "a .parquet file that is not Parquet", ("data.source=bad/data.parquet",),
         (("bad/data.parquet", b"instruction,input,output\n"),)),
    Case("sample", "too few records left for the held-out set", ("data.fraction=0.99",)),
    Case("sample", "`data.fraction` out of (0, 1]", edit=("  fraction: 0.4\n", "  fraction: 1.5\n")),
    Case("format", "a hub model, offline and not cached", ("model.name=unsloth/mistral-7b-instruct-v0.2-bnb-4bit",)),
    Case("format", "an adapter as `model.name`", ("model.name=models/adapter",)),
    Case("format", "a folder that holds no model", ("model.name=data",)),
    Case("format", "neither a folder nor a hub id", ("model.name=./models/mistral-7b",)),
    Case("format", "a template that does not exist", ("format.template=alpacca",)),
    Case("format", "a row too long, with `format.too_long: error`", ("format.too_long=error",
                                                                      "model.max_seq_length=64")),
    Case("train", "a misspelled key", edit=("  r: 16\n", "  rank: 16\n")),
    Case("train", "a quoted number", edit=("  learning_rate: 0.005\n", "  learning_rate: '5e-3'\n")),
    Case("train", "LoRA rank 0", edit=("  r: 16\n", "  r: 0\n")),
    Case("train", "an unknown backend", edit=("  backend: unsloth\n", "  backend: vllm\n")),
    Case("train", "an optimizer transformers does not know", ("train.backend=hf", "train.optimizer=adamw_9bit")),
    Case("train", "Unsloth and a real model, no GPU", ("model.name=build/offline-models/tiny-mistral-seed0",),
         cpu_only=True),
    Case("train", "two processes through accelerate, no GPU", ("train.num_processes=2", "runtime.launcher=accelerate"),
         cpu_only=True),
    Case("train", "a LoRA target the model does not have", ("lora.target_modules=[q_proj, qkv_proj]",)),
    Case("evaluate_base", "`evaluate.batch_size` 0", edit=("  batch_size: 16\n", "  batch_size: 0\n")),
]


@pytest.fixture(scope="module")
def workspace(reproduced_workspace, tmp_path_factory) -> Path:
    """One copy of the reproduced workspace for every case, and its outputs' hashes before any case ran."""
    copy = tmp_path_factory.mktemp("errors") / "repo"
    shutil.copytree(reproduced_workspace, copy, symlinks=True)
    return copy


def run_case(workspace: Path, case: Case) -> subprocess.CompletedProcess:
    params = workspace / "params.yaml"
    original = params.read_bytes()
    for relative, content in case.files:
        (workspace / relative).parent.mkdir(parents=True, exist_ok=True)
        (workspace / relative).write_bytes(content)
    (workspace / "bad").mkdir(exist_ok=True)
    try:
        if case.edit:
            assert case.edit[0] in original.decode()
            params.write_text(original.decode().replace(case.edit[0], case.edit[1], 1))
        if case.overrides:
            overlay_params(params, [parse_override(text) for text in case.overrides])
        return subprocess.run(["dvc", "repro"], cwd=workspace, env=cli_env(), capture_output=True, text=True,
                              timeout=600)
    finally:
        params.write_bytes(original)


@dataclass(frozen=True)
class CommandCase:
    command: str  # alpaca_qlora.cli.<command>
    what: str
    arguments: tuple[str, ...]

    def row(self, line: str) -> str:
        return f"| {self.command} | {self.what} | `` {line} `` |"


COMMAND_CASES = [
    CommandCase("generate", "an adapter folder that is not there", ("--adapter", "models/adaptor", "Say hi.")),
    CommandCase("generate", "a folder that is not an adapter", ("--adapter", "data/sampled", "Say hi.")),
    CommandCase("merge", "a base model given as the adapter",
                ("--adapter", "build/offline-models/tiny-mistral-seed0", "--out", "build/merged")),
    CommandCase("gguf_export", "an adapter given as the merged model", ("--merged", "models/adapter", "--out",
                                                                       "build/model.gguf")),
    CommandCase("offline_workspace", "a folder that exists", ("data",)),
    CommandCase("offline_workspace", "an override of an unknown key", ("build/smoke", "--set", "train.epoch=2")),
]


def table_rows() -> dict[tuple[str, str], str]:
    """(stage or command, case) -> its row, for every row of docs/errors.md's tables of cases."""
    names = {case.stage for case in CASES} | {case.command for case in COMMAND_CASES}
    rows = {}
    for line in ERROR_TABLE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] in names:
            rows[(cells[0], cells[1])] = line
    return rows


@pytest.mark.parametrize("case", CASES, ids=[f"{case.stage}: {case.what}" for case in CASES])
def test_a_mistake_ends_the_stage_with_one_line_and_no_traceback(workspace, case):
    if case.cpu_only and on_gpu():
        pytest.skip("not a mistake on a machine with a GPU")
    done = run_case(workspace, case)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    assert stages_run(output)[-1:] == [case.stage] and f"failed to reproduce '{case.stage}'" in output, output
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "; " in errors[0], output  # error: <what is wrong, where>; <what to do>
    assert not [str(p) for p in workspace.glob("**/.*.partial")], "nothing half-written is left behind"
    rows = table_rows()
    assert rows.get((case.stage, case.what)) == case.row(errors[0]), (
        f"docs/errors.md must have this row (the line the stage prints):\n{case.row(errors[0])}")


@pytest.mark.parametrize("case", COMMAND_CASES, ids=[f"{case.command}: {case.what}" for case in COMMAND_CASES])
def test_a_mistake_ends_a_command_with_one_line_and_no_traceback(workspace, case):
    done = subprocess.run([sys.executable, "-m", f"alpaca_qlora.cli.{case.command}", *case.arguments],
                          cwd=workspace, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and "; " in errors[0], done.stderr
    assert table_rows().get((case.command, case.what)) == case.row(errors[0]), (
        f"docs/errors.md must have this row (the line the command prints):\n{case.row(errors[0])}")


def test_the_tables_list_exactly_the_cases_tested():
    assert set(table_rows()) == {(case.stage, case.what) for case in CASES} | {
        (case.command, case.what) for case in COMMAND_CASES}


def test_after_the_mistakes_every_output_comes_back(workspace, reproduced_workspace):
    """A failed `dvc repro` leaves dvc.lock as it was: `dvc checkout` restores the last good outputs."""
    run_dvc(workspace, "checkout")
    assert run_dvc(workspace, "status").strip() == "Data and pipelines are up to date."
    assert {path: file_sha256(workspace / path) for path in OUTPUTS} == {
        path: file_sha256(reproduced_workspace / path) for path in OUTPUTS}


def test_debug_variable_shows_the_traceback(workspace):
    """ALPACA_QLORA_DEBUG=1: the same mistake with its traceback, for a bug report."""
    params = workspace / "params.yaml"
    original = params.read_bytes()
    try:
        overlay_params(params, [parse_override("data.fraction=0.99")])
        quiet = subprocess.run([sys.executable, "-m", "stages.sample", "--out", "build/sampled"], cwd=workspace,
                               env=cli_env(), capture_output=True, text=True, timeout=300)
        loud = subprocess.run([sys.executable, "-m", "stages.sample", "--out", "build/sampled"], cwd=workspace,
                              env={**cli_env(), "ALPACA_QLORA_DEBUG": "1"}, capture_output=True, text=True,
                              timeout=300)
    finally:
        params.write_bytes(original)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert re.fullmatch(r"error: params\.yaml: data\.fraction=0\.99 leaves .*; lower one of them\n", quiet.stderr)
    assert loud.returncode == 1 and loud.stderr.startswith("Traceback (most recent call last):")
    assert "alpaca_qlora.data.records.DataError: params.yaml: data.fraction=0.99 leaves" in loud.stderr


# ---------------------------------------------------------------- run_main, in-process

def test_run_main_ends_a_user_error_with_one_line_and_status_1(capsys, monkeypatch):
    from alpaca_qlora.data.records import DataError
    from alpaca_qlora.errors import run_main

    monkeypatch.delenv("ALPACA_QLORA_DEBUG", raising=False)

    def main():
        print("stage: working")
        raise DataError("data.jsonl:3: a library's reason\n  on two lines; fix it")

    with pytest.raises(SystemExit) as exited:
        run_main(main)
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == "stage: working\n"
    assert captured.err == "error: data.jsonl:3: a library's reason on two lines; fix it\n"


def test_with_the_debug_variable_and_for_anything_unexpected_the_exception_goes_on(monkeypatch):
    from alpaca_qlora.errors import UserError, run_main

    def fail(error):
        def main():
            raise error
        return main

    with pytest.raises(KeyError):  # a bug: its traceback stays
        run_main(fail(KeyError("input_ids")))
    monkeypatch.setenv("ALPACA_QLORA_DEBUG", "1")
    with pytest.raises(UserError, match="bad"):
        run_main(fail(UserError("bad; fix")))


def test_running_out_of_gpu_memory_is_one_line_that_names_the_params(capsys, monkeypatch):
    import torch

    from alpaca_qlora.errors import run_main

    monkeypatch.delenv("ALPACA_QLORA_DEBUG", raising=False)

    def main():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                     "139.8 GiB of which 1.2 GiB is free.")

    with pytest.raises(SystemExit) as exited:
        run_main(main)
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: out of GPU memory (CUDA out of memory); set train.batch_size to auto or lower it (the rest of "
        "train.rows_per_step is accumulated, so the math stays), train.gradient_checkpointing: unsloth, lower "
        "evaluate.batch_size or model.max_seq_length, or free the GPU (nvidia-smi lists what holds it)\n")


def test_every_expected_error_is_a_user_error_and_every_entry_point_uses_run_main():
    from alpaca_qlora.data.formatting import TooLongError
    from alpaca_qlora.data.records import DataError
    from alpaca_qlora.data.template import TemplateError
    from alpaca_qlora.errors import UserError
    from alpaca_qlora.modeling.adapter import AdapterError
    from alpaca_qlora.modeling.preflight import EnvironmentProblem
    from alpaca_qlora.params import ParamsError
    from alpaca_qlora.training.launch import LaunchError

    for error in (DataError, TooLongError, TemplateError, ParamsError, EnvironmentProblem, AdapterError, LaunchError):
        assert issubclass(error, UserError), error
    entry_points = sorted((REPO_ROOT / "stages").glob("[!_]*.py")) + sorted(
        (REPO_ROOT / "alpaca_qlora/cli").glob("[!_]*.py"))
    for path in entry_points:
        ending = path.read_text().rstrip().split('if __name__ == "__main__":\n', 1)[-1]
        assert ending.startswith("    run_main(main)") and ending.count("\n") <= 1, path  # and exit_now(), maybe
