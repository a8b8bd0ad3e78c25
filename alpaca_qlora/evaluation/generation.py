"""Batched greedy generation with left padding, the same way for every backend."""
from __future__ import annotations

import time

from alpaca_qlora import progress


def greedy_generations(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                       batch_size: int) -> tuple[list[str], dict[str, float]]:
    """Greedy completions of `prompts`, batched with left padding; returns texts and throughput."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    outputs, new_tokens = [], 0
    started = time.perf_counter()
    try:
        for start in progress.bar(range(0, len(prompts), batch_size), desc="evaluate: generating", unit="batch"):
            # add_special_tokens=True: the prompt gets BOS exactly as in the formatted training rows.
            encoded = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                generated = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id,
                                           eos_token_id=tokenizer.eos_token_id)
            continuation = generated[:, encoded["input_ids"].shape[1]:]
            for row in continuation:
                kept = row[row != tokenizer.pad_token_id]
                new_tokens += len(kept)
                outputs.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = "right"
    seconds = time.perf_counter() - started
    return outputs, {"prompts_per_s": round(len(prompts) / seconds, 3),
                     "new_tokens_per_s": round(new_tokens / seconds, 1)}
