"""How an answer is scored against its reference, and how a model's answers are summed up.

- ROUGE-L F1: Google's `rouge-score` package (the reference implementation of ROUGE-1.5.5 in Python),
  `RougeScorer(["rougeL"], use_stemmer=True)` as Natural-Instructions and most instruction-tuning papers
  use it: text lower-cased, every run of characters outside [a-z0-9] a separator, Porter-stemmed, then
  F1 of the longest common subsequence of tokens. Text with no [a-z0-9] at all scores 0.
- Exact match after `normalize_answer`, SQuAD's normalisation: lower case, punctuation removed, the
  articles "a", "an", "the" removed, whitespace collapsed. So "The sum is 100." equals "sum is 100".
- Answer length: generated tokens before EOS (EOS itself not counted).
- EOS-stop rate: the share of answers that ended with EOS within evaluate.max_new_tokens; an answer cut
  at the limit did not stop (a fine-tune that never stops is the classic Alpaca failure).
"""
from __future__ import annotations

import re
import string
from typing import Any, Iterable

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SCORER = None

# The figures each model gets, in metrics.json and in the W&B summary; held-out loss is added beside them.
FIGURES = ("rouge_l", "exact_match", "mean_answer_tokens", "eos_stop_rate")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> bool:
    return normalize_answer(answer) == normalize_answer(reference)


def rouge_l_f1(answer: str, reference: str) -> float:
    """ROUGE-L F1 of `answer` against `reference` (rouge-score, stemmed)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_SCORER.score(reference, answer)["rougeL"].fmeasure)


def reference_text(row: dict[str, Any], eos_token: str) -> str:
    """The reference answer of a formatted held-out row: its completion without the EOS the format stage added."""
    completion = row["completion"]
    return (completion[:-len(eos_token)] if eos_token and completion.endswith(eos_token) else completion).strip()


def score_answer(answer_text: str, reference: str) -> dict[str, Any]:
    return {"rouge_l": round(rouge_l_f1(answer_text, reference), 6), "exact_match": exact_match(answer_text, reference)}


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The figures of one model over its per-record results (each with rouge_l, exact_match, answer_tokens,
    stopped_at_eos): means over records, so each held-out row weighs the same."""
    records = list(records)
    if not records:
        raise ValueError("no answers to score: the held-out set (data/formatted/eval.jsonl) is empty")
    count = len(records)
    return {"rouge_l": round(sum(r["rouge_l"] for r in records) / count, 6),
            "exact_match": round(sum(bool(r["exact_match"]) for r in records) / count, 6),
            "mean_answer_tokens": round(sum(r["answer_tokens"] for r in records) / count, 4),
            "eos_stop_rate": round(sum(bool(r["stopped_at_eos"]) for r in records) / count, 6)}
