"""Stage `sample`: validation that names the bad record, seeded sampling, byte-identical outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alpaca_qlora.data.records import DataError, load_records, validate_records
from alpaca_qlora.data.sampling import sample_indices
from tests.conftest import cli_env

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("bad, message", [
    ({"instruction": "", "input": "", "output": "x"}, "field 'instruction' must be a non-empty string"),
    ({"instruction": "x", "input": "", "output": "   "}, "field 'output' must be a non-empty string"),
    ({"instruction": "x", "input": None, "output": "y"}, "field 'input' must be a string"),
    ({"instruction": "x", "input": 3, "output": "y"}, "field 'input' must be a string"),
    ({"instruction": "x", "output": 5}, "field 'output' must be a non-empty string"),
    (["not", "an", "object"], "a record must be an object"),
])
def test_bad_record_is_named_with_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "data.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as error:
        validate_records(*load_records(str(path)))
    assert f"{path}:3" in str(error.value) and message in str(error.value)


def test_invalid_json_line_is_named(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [GOOD, '{"instruction": "x",'])
    with pytest.raises(DataError, match=r"data.jsonl:2: not valid JSON"):
        load_records(str(path))


def test_missing_input_field_reads_as_empty_and_json_list_is_accepted(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, GOOD]))
    records = validate_records(*load_records(str(path)))
    assert records[0] == {"instruction": "a", "input": "", "output": "b"}


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_records(str(tmp_path / "nope.jsonl"))


def test_sample_is_seeded_random_disjoint_and_exact_size():
    train, held_out = sample_indices(1000, fraction=0.1, eval_size=50, seed=3407)
    assert len(train) == 100 and len(held_out) == 50
    assert not set(train) & set(held_out)
    assert train != list(range(100)), "a sample, not the first N rows"
    assert sample_indices(1000, fraction=0.1, eval_size=50, seed=3407) == (train, held_out)
    assert sample_indices(1000, fraction=0.1, eval_size=50, seed=1)[0] != train


def test_a_sample_that_leaves_too_few_records_for_the_eval_split_is_refused():
    """The bounds of each key alone are params.py's (tests/test_reliability.py); this depends on the source."""
    with pytest.raises(DataError, match="leaves 1 of 100 records outside the sample, fewer than data.eval_size=50"):
        sample_indices(100, fraction=0.99, eval_size=50, seed=0)


def test_stage_outputs_are_byte_identical_and_stats_fingerprint_the_source(offline_workspace_factory, tmp_path):
    workspace = offline_workspace_factory()
    outputs = []
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-m", "stages.sample", "--out", str(tmp_path / run)], cwd=workspace,
                       env=cli_env(), check=True, capture_output=True)
        outputs.append({name: (tmp_path / run / name).read_bytes()
                        for name in ("train.jsonl", "eval.jsonl", "stats.json")})
    assert outputs[0] == outputs[1]
    stats = json.loads(outputs[0]["stats.json"])
    assert stats["source_records"] == 2000 and stats["train_records"] == 800 and stats["eval_records"] == 64
    assert len(stats["source_fingerprint"]) == 64
    train_ids = [json.loads(line)["id"] for line in outputs[0]["train.jsonl"].decode().splitlines()]
    eval_ids = [json.loads(line)["id"] for line in outputs[0]["eval.jsonl"].decode().splitlines()]
    assert len(set(train_ids)) == 800 and not set(train_ids) & set(eval_ids)
    assert 0 < stats["train_with_input"] < 800, "the offline set has both empty and non-empty inputs"
