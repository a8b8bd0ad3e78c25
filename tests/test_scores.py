"""Scores on values worked out by hand: ROUGE-L from the longest common subsequence, SQuAD's normalisation,
EOS-stop counting, and an answer cut at its first EOS. No model, no workspace: milliseconds."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from alpaca_qlora.evaluation.generation import decode_answer
from alpaca_qlora.evaluation.scores import exact_match, normalize_answer, reference_text, rouge_l_f1, summarize


@pytest.mark.parametrize("answer, reference, expected", [
    # LCS "the cat on mat" = 4 of 6 tokens on each side: P = R = 4/6, F1 = 2/3.
    ("the cat was on a mat", "the cat sat on the mat", 2 / 3),
    # Answer 6 tokens, reference 5; LCS "the brown jump" (jumps -> jump, stemmed) = 3: P = 3/6, R = 3/5,
    # F1 = 2PR / (P + R) = 0.6 / 1.1.
    ("the brown dog jumps over everything", "the quick brown fox jumps", 0.6 / 1.1),
    # Order matters: LCS of "c b a" and "a b c" is one token. P = R = 1/3.
    ("c b a", "a b c", 1 / 3),
    # Case and punctuation are separators, not tokens; Porter stemming makes "running dogs" equal "run dog".
    ("Hello, World!", "hello world", 1.0),
    ("running dogs", "run dog", 1.0),
    # Nothing in common, an empty answer, and text with no [a-z0-9] at all score 0.
    ("apple", "banana", 0.0),
    ("", "The sum is 100.", 0.0),
    ("🤷 ší", "🤷 ší", 0.0),
])
def test_rouge_l_f1_equals_the_lcs_worked_out_by_hand(answer, reference, expected):
    assert rouge_l_f1(answer, reference) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text, normalized", [
    ("The sum is 100.", "sum is 100"),
    ("  An apple,  a DAY\nkeeps… ", "apple day keeps…"),  # "…" is not in string.punctuation: kept
    ("theory of the atom", "theory of atom"),  # articles only as whole words
    ("h-a-r-b-o-r", "harbor"),  # punctuation is removed, not turned into spaces (as in SQuAD)
    ("1, 2, 3", "1 2 3"),
])
def test_normalisation_is_squads(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_ignores_case_punctuation_articles_and_spacing_only():
    assert exact_match("the capital of Peru is  Lima", "The capital of Peru is Lima.")
    assert not exact_match("Lima", "The capital of Peru is Lima.")
    assert not exact_match("1, 2, 3, 4", "1, 2, 3")


def test_reference_is_the_completion_without_the_eos_the_format_stage_added():
    assert reference_text({"completion": "The sum is 100.</s>"}, "</s>") == "The sum is 100."
    assert reference_text({"completion": "no eos here"}, "</s>") == "no eos here"


def test_summary_counts_eos_stops_and_means_per_record():
    records = [
        {"rouge_l": 1.0, "exact_match": True, "answer_tokens": 4, "stopped_at_eos": True},
        {"rouge_l": 0.5, "exact_match": False, "answer_tokens": 32, "stopped_at_eos": False},  # cut at the limit
        {"rouge_l": 0.0, "exact_match": False, "answer_tokens": 0, "stopped_at_eos": True},  # EOS first: empty
    ]
    assert summarize(records) == {"rouge_l": 0.5, "exact_match": 0.333333, "mean_answer_tokens": 12.0,
                                  "eos_stop_rate": 0.666667}
    with pytest.raises(ValueError, match="eval.jsonl"):
        summarize([])


def test_an_answer_is_cut_at_its_first_eos_and_keeps_pad_ids_the_model_generated_itself():
    eos, pad = 2, 0  # Mistral: </s> = 2, padding with <unk> = 0
    tokenizer = SimpleNamespace(eos_token_id=eos, decode=lambda ids, skip_special_tokens: " " + " ".join(map(str, ids)))
    stopped = decode_answer(tokenizer, [5, 6, eos, pad, pad])  # a row that finished early, then padding
    assert (stopped.text, stopped.answer_tokens, stopped.stopped_at_eos, stopped.generated_tokens) == (
        "5 6", 2, True, 3)
    cut = decode_answer(tokenizer, [5, pad, 6])  # no EOS within max_new_tokens; <unk> generated, kept
    assert (cut.text, cut.answer_tokens, cut.stopped_at_eos, cut.generated_tokens) == ("5 0 6", 3, False, 3)
    immediate = decode_answer(tokenizer, [eos, pad])
    assert (immediate.text, immediate.answer_tokens, immediate.stopped_at_eos) == ("", 0, True)
