"""Stage `format`: template variants, EOS on every row (truncated ones too), prompt kept apart."""
from __future__ import annotations

import json

import pytest

from alpaca_qlora.data.formatting import TooLongError, format_records
from alpaca_qlora.modeling.tokenizer import load_tokenizer
from alpaca_qlora.data.template import PromptTemplate

WITH_INPUT = {"id": 0, "instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5."}
NO_INPUT = {"id": 1, "instruction": "Name a colour.", "input": "", "output": "Blue."}
LONG = {"id": 2, "instruction": "Repeat.", "input": "", "output": "word " * 400}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.chdir(tmp_path_factory.mktemp("models"))
    return load_tokenizer({"name": "offline:tiny-mistral", "offline_seed": 0})


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def fmt(records, tokenizer, *, input_free_variant=True, max_seq_length=2048, too_long="truncate"):
    return format_records(records, tokenizer=tokenizer, template=PromptTemplate.load("alpaca"),
                          input_free_variant=input_free_variant, max_seq_length=max_seq_length, too_long=too_long)


def test_the_real_mistral_tokenizer_is_used(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.eos_token) == (1, 2, "</s>")
    assert len(tokenizer) == 32000 and tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)


def test_template_variants_follow_the_param(tokenizer):
    rows, _ = fmt([WITH_INPUT, NO_INPUT], tokenizer, input_free_variant=True)
    assert "### Input:\n2 and 3\n\n### Response:\n" in rows[0]["prompt"]
    assert "### Input:" not in rows[1]["prompt"]
    assert rows[1]["prompt"].startswith("Below is an instruction that describes a task. Write")
    rows, _ = fmt([NO_INPUT], tokenizer, input_free_variant=False)
    assert "paired with an input" in rows[0]["prompt"] and "### Input:\n\n\n### Response:" in rows[0]["prompt"]


def test_rows_end_with_eos_and_mask_only_the_prompt(tokenizer):
    rows, report = fmt([WITH_INPUT, NO_INPUT], tokenizer)
    for row in rows:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        assert row["input_ids"][:len(prompt_ids)] == prompt_ids and prompt_ids[0] == tokenizer.bos_token_id
        assert row["input_ids"][-1] == tokenizer.eos_token_id and row["completion"].endswith("</s>")
        assert row["completion_mask"] == [0] * len(prompt_ids) + [1] * (len(row["input_ids"]) - len(prompt_ids))
        response = tokenizer.decode([t for t, m in zip(row["input_ids"], row["completion_mask"]) if m])
        assert response.replace("</s>", "").strip() == row["completion"].replace("</s>", "").strip()
    assert report.lengths == [len(row["input_ids"]) for row in rows]


def test_truncated_row_keeps_eos_last_and_fits(tokenizer):
    rows, report = fmt([LONG, WITH_INPUT], tokenizer, max_seq_length=128, too_long="truncate")
    assert len(rows) == 2 and rows[0]["truncated"] is True and rows[1]["truncated"] is False
    assert len(rows[0]["input_ids"]) == 128 and rows[0]["input_ids"][-1] == tokenizer.eos_token_id
    summary = report.summary(128)
    assert summary["rows_over_max_seq_length"] == 1 and summary["truncated_ids"] == [2]
    assert summary["tokens_max"] > 400


def test_drop_and_error_policies_count_or_name_the_row(tokenizer):
    rows, report = fmt([LONG, WITH_INPUT], tokenizer, max_seq_length=128, too_long="drop")
    assert [row["id"] for row in rows] == [0] and report.summary(128)["dropped_ids"] == [2]
    with pytest.raises(TooLongError, match=r"record id 2 \(\d+ tokens > model.max_seq_length=128\)"):
        fmt([WITH_INPUT, LONG], tokenizer, max_seq_length=128, too_long="error")


def test_formatted_outputs_of_the_pipeline(reproduced_workspace):
    stats = json.loads((reproduced_workspace / "data/formatted/stats.json").read_text())
    assert stats["train"]["rows_out"] == 800 and stats["eval"]["rows_out"] == 64
    assert stats["template"]["name"] == "alpaca" and stats["eos_token"] == "</s>"
    assert 40 < stats["train"]["tokens_mean"] < 120 and stats["train"]["rows_over_max_seq_length"] == 0
    first = json.loads((reproduced_workspace / "data/formatted/train.jsonl").read_text().splitlines()[0])
    assert first["input_ids"][-1] == 2 and first["prompt"].endswith("### Response:\n")
    records = {r["id"]: r for r in map(json.loads, (reproduced_workspace / "data/sampled/train.jsonl").open())}
    rows = [json.loads(line) for line in (reproduced_workspace / "data/formatted/train.jsonl").open()]
    empty = [row for row in rows if not records[row["id"]]["input"].strip()]
    assert 0 < len(empty) < len(rows)
    assert all("### Input:\n\n\n### Response:\n" in row["prompt"] for row in empty), \
        "the seed's single template: an empty Input block for a record without input"
    assert stats["input_free_variant"] is False
    sampled = json.loads((reproduced_workspace / "data/sampled/stats.json").read_text())
    assert stats["sample"] == sampled and (sampled["fraction"], sampled["seed"]) == (0.4, 3407), \
        "the sample's provenance travels on to the adapter's metadata"
