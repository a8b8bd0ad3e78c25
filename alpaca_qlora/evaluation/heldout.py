"""One model judged on the held-out rows: loss and perplexity, an answer to every prompt, and their scores.

The base stage and the adapter stage both call `judge`, so their figures are computed the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from alpaca_qlora.evaluation.generation import generate_answers
from alpaca_qlora.evaluation.loss import heldout_loss
from alpaca_qlora.evaluation.scores import reference_text, score_answer, summarize


@dataclass(frozen=True)
class ModelResult:
    figures: dict[str, float]  # eval_loss, eval_perplexity and scores.FIGURES
    records: list[dict[str, Any]]  # per held-out row: id, answer, answer_tokens, stopped_at_eos, rouge_l, exact_match
    response_tokens: int  # held-out response tokens the loss is over (EOS included)
    timing: dict[str, float] = field(default_factory=dict)  # seconds and speed: not compared, not tracked as metrics


def judge(model, tokenizer, rows: list[dict[str, Any]], params: dict[str, Any], *, static: bool = False) -> ModelResult:
    """Held-out loss (prompt masked, as trained), then a greedy answer to every row's prompt, scored.
    `static`: decode with a static KV cache (inference.static_decoding says for which path)."""
    if not rows:
        raise ValueError("data/formatted/eval.jsonl holds no rows: set data.eval_size to at least 1")
    started = time.perf_counter()
    loss = heldout_loss(model, rows, batch_size=params["batch_size"], pad_token_id=tokenizer.pad_token_id)
    loss_seconds = time.perf_counter() - started
    answers, speed = generate_answers(model, tokenizer, [row["prompt"] for row in rows],
                                      max_new_tokens=params["max_new_tokens"],
                                      batch_size=params["generation_batch_size"], static=static)
    started = time.perf_counter()
    records = [{"id": row["id"], "answer": answer.text, "answer_tokens": answer.answer_tokens,
                "stopped_at_eos": answer.stopped_at_eos,
                **score_answer(answer.text, reference_text(row, tokenizer.eos_token))}
               for row, answer in zip(rows, answers)]
    figures = {"eval_loss": loss["loss"], "eval_perplexity": loss["perplexity"], **summarize(records)}
    timing = {"loss_s": round(loss_seconds, 3), **speed.as_dict(), "scoring_s": round(time.perf_counter() - started, 3)}
    return ModelResult(figures=figures, records=records, response_tokens=loss["tokens"], timing=timing)


def describe(result: ModelResult) -> str:
    """One line for the stage's log: the figures, then the speed."""
    figures, timing = result.figures, result.timing
    return (f"held-out loss {figures['eval_loss']:.4f}, ROUGE-L {figures['rouge_l']:.4f}, exact match "
            f"{figures['exact_match']:.3f}, EOS-stop rate {figures['eos_stop_rate']:.3f}, "
            f"{figures['mean_answer_tokens']:.1f} tokens per answer; {timing['prompts']} answers at "
            f"{timing['new_tokens_per_s']:.0f} new tokens/s")
