"""Generate: the training template, streamed tokens equal to the evaluate stage's answers, a stop at EOS,
stdin prompts, the load time."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import cli_env


@pytest.fixture(scope="module")
def loaded(reproduced_workspace):
    """(model, tokenizer, render, path) of the pipeline's adapter, loaded as the CLI does by default on a CPU."""
    import os

    from alpaca_qlora.cli.generate import load_adapter_for_inference

    cwd = os.getcwd()
    os.chdir(reproduced_workspace)  # the offline base is built under build/ there
    try:
        return load_adapter_for_inference(reproduced_workspace / "models/adapter")
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def records(reproduced_workspace):
    """The first held-out records, raw (data/sampled) and as the format stage rendered them (data/formatted)."""
    raw = [json.loads(line) for line in (reproduced_workspace / "data/sampled/eval.jsonl").read_text().splitlines()]
    formatted = [json.loads(line) for line in
                 (reproduced_workspace / "data/formatted/eval.jsonl").read_text().splitlines()]
    return list(zip(raw, formatted))[:3]


def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The evaluate stage's non-streamed generation, for comparison."""
    from alpaca_qlora.evaluation.generation import generate_answers

    return generate_answers(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, batch_size=1)[0][0].text


def test_prompts_are_rendered_with_the_training_template(loaded, records):
    _, _, render, path = loaded
    assert path == "merged", "evaluate.backend auto: the dequantized-merged model on a CPU"
    assert any(raw["input"] for raw, _ in records) and any(not raw["input"] for raw, _ in records)
    for raw, formatted in records:
        assert render(raw["instruction"], raw["input"]) == formatted["prompt"]


def test_streamed_text_is_the_answer_the_evaluate_stage_scored(reproduced_workspace, loaded, records):
    """Same loading (inference.load), same generation code, same max_new_tokens: the same greedy answer as
    reports/generations.jsonl holds for the adapter, streamed piece by piece."""
    from alpaca_qlora.cli.generate import stream_answer
    from alpaca_qlora.files import read_jsonl

    model, tokenizer, render, _ = loaded
    scored = {row["id"]: row["adapter"] for row in read_jsonl(reproduced_workspace / "reports/generations.jsonl")}
    streamed = 0
    for raw, formatted in records:
        prompt = render(raw["instruction"], raw["input"])
        pieces: list[str] = []
        answer, speed = stream_answer(model, tokenizer, prompt, max_new_tokens=32, on_text=pieces.append)
        assert "".join(pieces).strip() == answer.text
        expected = scored[formatted["id"]]
        assert (answer.text, answer.answer_tokens, answer.stopped_at_eos) == (
            expected["answer"], expected["answer_tokens"], expected["stopped_at_eos"])
        assert speed.prompts == 1 and speed.new_tokens_per_s > 0
        # The tiny model may answer one prompt with EOS at once (an empty answer, nothing to stream).
        streamed += len(pieces) > 1 and answer.text != ""
    assert streamed >= 2, "text arrives piece by piece, not at the end"


def test_generation_stops_at_eos(loaded, records):
    """A model forced to emit EOS as its 4th new token stops there; unforced, it runs to max_new_tokens."""
    import torch

    from alpaca_qlora.cli.generate import stream_answer

    model, tokenizer, render, _ = loaded
    prompt = render(records[0][0]["instruction"], records[0][0]["input"])
    free, _ = stream_answer(model, tokenizer, prompt, max_new_tokens=12, on_text=lambda _: None)
    assert free.answer_tokens == 12 and not free.stopped_at_eos

    calls = []

    def force_eos_from_the_fourth_token(module, inputs, output):
        calls.append(1)  # one call for the prompt, then one per new token
        if len(calls) >= 4:
            output = output.clone()
            output[..., tokenizer.eos_token_id] = output.max() + 100.0
        return output

    hook = model.get_output_embeddings().register_forward_hook(force_eos_from_the_fourth_token)
    try:
        pieces: list[str] = []
        forced, _ = stream_answer(model, tokenizer, prompt, max_new_tokens=12, on_text=pieces.append)
    finally:
        hook.remove()
    assert forced.stopped_at_eos and forced.answer_tokens == 3 and forced.generated_tokens == 4
    prefix = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first_three = model.generate(input_ids=prefix, max_new_tokens=3, do_sample=False)[0, prefix.shape[1]:]
    assert "".join(pieces).strip() == forced.text == tokenizer.decode(first_three, skip_special_tokens=True).strip()
    assert "</s>" not in forced.text


def test_interactive_mode_answers_each_stdin_line(reproduced_workspace, loaded, records):
    model, tokenizer, render, _ = loaded
    instructions = [raw["instruction"] for raw, _ in records if not raw["input"]][:2]
    assert len(instructions) == 2
    done = subprocess.run(
        [sys.executable, "-m", "alpaca_qlora.cli.generate", "--adapter", "models/adapter",
         "--interactive", "--max-new-tokens", "16"],
        input="\n".join(instructions) + "\n", cwd=reproduced_workspace, env=cli_env(), capture_output=True,
        text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    expected = [greedy(model, tokenizer, render(text, ""), 16) for text in instructions]
    assert [line.strip() for line in done.stdout.splitlines()] == expected
    ends = [line for line in done.stderr.splitlines() if line.startswith("[") and " tokens/s, stopped at " in line]
    assert len(ends) == 2, done.stderr
    (loaded_line,) = [line for line in done.stderr.splitlines()
                      if line.startswith("[loaded models/adapter on merged in ")]
    assert float(loaded_line.split(" in ")[1].rstrip("s]")) > 0
