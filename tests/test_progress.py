"""Progress where a user waits: tqdm bars on a terminal, none in a pipe or under CI; a timed summary per stage."""
from __future__ import annotations

import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios

import pytest

from alpaca_qlora import progress
from tests.conftest import cli_env


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stderr, ci, drawn", [(Terminal, None, True), (io.StringIO, None, False),
                                               (Terminal, "true", False), (Terminal, "false", True)])
def test_bars_follow_tqdms_rule_and_stay_quiet_under_ci(monkeypatch, stderr, ci, drawn):
    stream = stderr()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv("CI", raising=False)
    if ci is not None:
        monkeypatch.setenv("CI", ci)
    assert list(progress.bar(range(3), desc="evaluate: generating", unit="batch")) == [0, 1, 2]
    progress.note("merge: loading the base model")
    assert progress.bars_shown() is drawn
    assert ("evaluate: generating" in stream.getvalue()) is drawn
    assert ("merge: loading the base model\n" in stream.getvalue()) is drawn


def test_summary_gives_the_wall_time():
    assert re.fullmatch(r"sample: wrote data/sampled/ \(\d+\.\ds\)", progress.summary("sample: wrote data/sampled/"))


def run_on_a_terminal(command: list[str], cwd, env) -> tuple[int, str, str]:
    """Run `command` with stderr on a pseudo-terminal (what a user's shell gives it); return status, stdout, stderr."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 30 rows, 120 columns
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=follower, text=True) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout = process.stdout.read()
    os.close(leader)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_the_sample_stage_draws_bars_on_a_terminal_only_and_ends_with_a_timed_summary(offline_workspace_factory):
    workspace = offline_workspace_factory()
    command = [sys.executable, "-m", "stages.sample", "--out", "data/sampled"]
    environment = {key: value for key, value in cli_env().items() if key != "CI"}
    status, stdout, stderr = run_on_a_terminal(command, workspace, environment)
    assert status == 0, stdout + stderr
    for phase in ("sample: reading alpaca_synthetic.jsonl", "sample: checking records", "sample: finding duplicates"):
        assert phase in stderr, stderr
    assert re.search(r"^sample: wrote data/sampled/: 800 train \+ 64 eval records of 2000 from "
                     r"data/offline/alpaca_synthetic.jsonl \(\d+\.\ds\)$", stdout, re.M), stdout
    status, stdout, stderr = run_on_a_terminal(command, workspace, {**environment, "CI": "true"})
    assert status == 0 and stderr == "", stderr
    piped = subprocess.run(command, cwd=workspace, env=environment, capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def test_gguf_conversion_shows_the_converters_tensors_and_writing_as_bars(tmp_path, monkeypatch):
    """A stand-in converter that logs as llama.cpp's does: one line per tensor, then its own tqdm "Writing" bar."""
    from alpaca_qlora.cli.gguf_export import run_converter

    script = tmp_path / "convert.py"
    script.write_text(
        "import sys\n"
        "for name in ('token_embd.weight', 'blk.0.attn_q.weight', 'output.weight'):\n"
        "    print(f'INFO:hf-to-gguf:{name}, torch.float32 --> F32, shape = {{4, 4}}', file=sys.stderr)\n"
        "sys.stderr.write('Writing:  40%|####      | 40/100 [00:00<00:00]\\rWriting: 100%|##########| 100/100\\n')\n"
        "print('INFO:hf-to-gguf:Model successfully exported to out.gguf', file=sys.stderr)\n"
        "sys.exit(int(sys.argv[1]))\n")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.delenv("CI", raising=False)
    bar = progress.bar
    monkeypatch.setattr(progress, "bar", lambda *args, **options: bar(*args, mininterval=0, **options))  # every step
    status, tail = run_converter([sys.executable, str(script), "0"], dict(os.environ), tensors=3)
    assert status == 0 and tail.splitlines()[-1] == "INFO:hf-to-gguf:Model successfully exported to out.gguf"
    shown = terminal.getvalue()
    assert "gguf: converting" in shown and "3/3" in shown and "gguf: writing" in shown and "100/100" in shown
    status, tail = run_converter([sys.executable, str(script), "1"], dict(os.environ), tensors=3)
    assert status == 1 and "blk.0.attn_q.weight" in tail, "a failure keeps the converter's last lines for the error"
