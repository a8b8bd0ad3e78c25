"""From an Alpaca record to a training row: prompt and response rendered, tokenized, EOS appended.

Rows carry the text (for people) and the token ids with a completion mask (for TRL's SFTTrainer, which
uses pre-tokenized rows as they are). Tokenizing here, once, is what lets the format stage count exactly
which rows exceed max_seq_length, and guarantee that a truncated row still ends with EOS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alpaca_qlora.data.template import PromptTemplate
from alpaca_qlora.errors import UserError
from alpaca_qlora.modeling.tokenizer import token_ids


class TooLongError(UserError, ValueError):
    """A row longer than model.max_seq_length under format.too_long = "error", or no row left after dropping."""


@dataclass
class LengthReport:
    """What happened to row lengths, for data/formatted/stats.json."""
    lengths: list[int] = field(default_factory=list)  # before truncation, EOS included
    truncated_ids: list[int] = field(default_factory=list)
    dropped_ids: list[int] = field(default_factory=list)

    def summary(self, max_seq_length: int) -> dict[str, Any]:
        lengths = np.asarray(self.lengths or [0])
        return {
            "rows_in": len(self.lengths),
            "rows_out": len(self.lengths) - len(self.dropped_ids),
            "tokens_min": int(lengths.min()), "tokens_max": int(lengths.max()),
            "tokens_mean": round(float(lengths.mean()), 2),
            "tokens_median": float(np.median(lengths)),
            "tokens_p95": float(np.percentile(lengths, 95)),
            "tokens_total": int(lengths.sum()),
            "max_seq_length": max_seq_length,
            "rows_over_max_seq_length": int((lengths > max_seq_length).sum()),
            "truncated_ids": self.truncated_ids, "dropped_ids": self.dropped_ids,
        }


def format_records(records: list[dict[str, Any]], *, tokenizer, template: PromptTemplate,
                   input_free_variant: bool, max_seq_length: int, too_long: str):
    """Render and tokenize `records` (each with an "id"), all in one batch; return the rows kept and a LengthReport.

    The prompt is tokenized with the tokenizer's special tokens (BOS), the response without, then EOS is
    appended by id, so it can never be lost to a tokenizer setting. A row over `max_seq_length` is, by
    `too_long`: "truncate"d inside its response with EOS kept last, "drop"ped, or an "error". A prompt so
    long that not even one response token fits cannot be truncated and is dropped (and counted) or an error.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token; rows could never teach the model to stop")
    prompts = [template.render_prompt(record, input_free_variant=input_free_variant) for record in records]
    all_prompt_ids = token_ids(tokenizer, prompts, add_special_tokens=True)
    all_response_ids = token_ids(tokenizer, [record["output"] for record in records], add_special_tokens=False)
    rows, report = [], LengthReport()
    for record, prompt, prompt_ids, response_ids in zip(records, prompts, all_prompt_ids, all_response_ids):
        full_length = len(prompt_ids) + len(response_ids) + 1
        report.lengths.append(full_length)
        truncated = False
        if full_length > max_seq_length:
            room = max_seq_length - len(prompt_ids) - 1  # response tokens that fit before EOS
            where = f"record id {record['id']} ({full_length} tokens > model.max_seq_length={max_seq_length})"
            if too_long == "error":
                raise TooLongError(f"{where}; set format.too_long to truncate or drop, or raise "
                                   "model.max_seq_length")
            if too_long == "drop" or room < 1:
                report.dropped_ids.append(record["id"])
                continue
            response_ids, truncated = response_ids[:room], True
            report.truncated_ids.append(record["id"])
        completion_ids = response_ids + [eos_id]
        rows.append({
            "id": record["id"],
            "prompt": prompt,
            "completion": (tokenizer.decode(response_ids) if truncated else record["output"]) + tokenizer.eos_token,
            "truncated": truncated,
            "input_ids": prompt_ids + completion_ids,
            "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids),
        })
    return rows, report
