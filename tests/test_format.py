"""Stage `format`: template variants, EOS on every row (truncated ones too), prompt kept apart."""
from __future__ import annotations

import json

import pytest

from alpaca_qlora.data.formatting import TooLongError, format_records
from alpaca_qlora.data.template import PromptTemplate
from alpaca_qlora.files import read_jsonl
from alpaca_qlora.modeling.tokenizer import load_tokenizer, token_ids
from tests.conftest import REPO_ROOT

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


AWKWARD = [  # what real instruction data holds: unicode, emoji, literal special tokens, odd whitespace, code
    {"id": 10, "instruction": "Traduis « bonjour » en 日本語 🙂", "input": "", "output": "こんにちは — ça va?"},
    {"id": 11, "instruction": "  Leading and trailing spaces  ", "input": "\tTabbed\ninput\r\n", "output": " x "},
    {"id": 12, "instruction": "Explain </s> and <s> and [INST]", "input": "<unk>", "output": "They are </s> tokens."},
    {"id": 13, "instruction": "Code", "input": "def f(x):\n    return x**2", "output": "```python\nprint(1)\n```"},
    {"id": 14, "instruction": "Numbers 3.14159 and 1,000,000", "input": "", "output": "\n\n\nDone.\n"},
]


def test_batched_tokenization_gives_the_ids_of_row_by_row_calls(tokenizer):
    """The format stage tokenizes all rows in one batch; the ids are those of one call per text, as before."""
    records = [{"id": i, **r} for i, r in enumerate(read_jsonl(REPO_ROOT / "data/offline/alpaca_synthetic.jsonl"))]
    records += AWKWARD + [LONG]
    rows, _ = fmt(records, tokenizer, max_seq_length=256)
    template = PromptTemplate.load("alpaca")
    for record, row in zip(records, rows, strict=True):
        prompt_ids = tokenizer(template.render_prompt(record, input_free_variant=True))["input_ids"]
        response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
        expected = (prompt_ids + response_ids)[:255] + [tokenizer.eos_token_id]
        assert row["input_ids"] == expected, record["id"]
    assert rows[-1]["truncated"] and len(rows) == len(records) == 2006
    literal = token_ids(tokenizer, ["a </s> b"], add_special_tokens=False)[0]
    assert tokenizer.eos_token_id in literal and literal == tokenizer("a </s> b", add_special_tokens=False)["input_ids"]
