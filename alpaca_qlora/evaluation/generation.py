"""Generate for these prompts: the one place that does it, for both evaluate stages, the generate command
and the generation benchmark.

Prompts are tokenized as in the formatted training rows (BOS added), sorted by token length (longest
first, so a batch pads little and an out-of-memory shows in the first batch), batched with left padding,
decoded greedily unless sampling is asked for, and each row stops at the tokenizer's EOS, which is passed
explicitly rather than trusted to the model's generation_config. Answers come back in the prompts' order.
Greedy answers of a plain transformers model can go through static_decoding.py (`static=True`: a static
KV cache, each decode step a CUDA graph replay on a GPU); the rest goes through `model.generate`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from alpaca_qlora import progress


@dataclass(frozen=True)
class Answer:
    text: str
    answer_tokens: int  # generated tokens before EOS; EOS itself not counted
    stopped_at_eos: bool  # EOS came within max_new_tokens
    token_ids: tuple[int, ...] = ()  # the answer's tokens (EOS not included): paths compare on these

    @property
    def generated_tokens(self) -> int:
        """Tokens the model produced, EOS included: what throughput counts."""
        return self.answer_tokens + int(self.stopped_at_eos)


@dataclass(frozen=True)
class Speed:
    seconds: float
    generated_tokens: int
    prompts: int

    @property
    def new_tokens_per_s(self) -> float:
        return round(self.generated_tokens / self.seconds, 1) if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"generation_s": round(self.seconds, 3), "generated_tokens": self.generated_tokens,
                "prompts": self.prompts, "new_tokens_per_s": self.new_tokens_per_s}


def generate_answers(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                     sampling: dict[str, Any] | None = None, streamer=None,
                     static: bool = False) -> tuple[list[Answer], Speed]:
    """Answers to `prompts` (greedy unless `sampling` holds do_sample/temperature/top_p) and the throughput.

    `streamer` (transformers' streamer API, one prompt at a time) receives the tokens as they come: the
    generate command streams through it, so it shows exactly what the evaluate stages would answer.
    """
    import torch

    if streamer is not None and batch_size != 1:
        raise ValueError("a streamer takes one prompt at a time: pass batch_size=1")
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]] if prompts else []
    order = sorted(range(len(prompts)), key=lambda index: (-lengths[index], index))
    answers: list[Answer | None] = [None] * len(prompts)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    started = time.perf_counter()
    try:
        for start in progress.bar(range(0, len(order), batch_size), desc="generating", unit="batch"):
            batch = order[start:start + batch_size]
            encoded = tokenizer([prompts[index] for index in batch], return_tensors="pt", padding=True,
                                add_special_tokens=True).to(device)
            if static and not sampling:
                rows = static_greedy(model, encoded, max_new_tokens, tokenizer.eos_token_id, streamer)
            else:
                with torch.no_grad():
                    generated = model.generate(**encoded, max_new_tokens=max_new_tokens, streamer=streamer,
                                               pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=tokenizer.eos_token_id, **(sampling or {"do_sample": False}))
                rows = generated[:, encoded["input_ids"].shape[1]:].tolist()
            for index, row in zip(batch, rows):
                answers[index] = decode_answer(tokenizer, row)
    finally:
        tokenizer.padding_side = padding_side
    seconds = time.perf_counter() - started
    return answers, Speed(seconds, sum(answer.generated_tokens for answer in answers), len(prompts))


def static_greedy(model, encoded, max_new_tokens: int, eos_token_id: int, streamer) -> list[list[int]]:
    """Greedy rows through static_decoding.greedy_decode; a streamer gets the prompt, then each new token."""
    from alpaca_qlora.evaluation.static_decoding import greedy_decode

    def on_token(tokens):
        streamer.put(tokens.cpu())

    if streamer is not None:
        streamer.put(encoded["input_ids"].cpu())  # the prompt, which the streamer skips
    decoded = greedy_decode(model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=max_new_tokens,
                            eos_token_id=eos_token_id, on_token=on_token if streamer is not None else None)
    if streamer is not None:
        streamer.end()
    return [item.token_ids for item in decoded]


def decode_answer(tokenizer, new_token_ids: list[int]) -> Answer:
    """Cut a row of generated ids at its first EOS: what follows is padding of a row that finished early.

    Cutting at EOS, not dropping pad ids, keeps a pad id the model generated itself (Mistral pads with <unk>).
    """
    eos = tokenizer.eos_token_id
    stopped = eos in new_token_ids
    kept = new_token_ids[:new_token_ids.index(eos)] if stopped else new_token_ids
    return Answer(text=tokenizer.decode(kept, skip_special_tokens=True).strip(), answer_tokens=len(kept),
                  stopped_at_eos=stopped, token_ids=tuple(kept))
