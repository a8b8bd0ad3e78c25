"""Held-out loss and batched greedy generation, the same way for every backend."""
from __future__ import annotations

import math
import time
from typing import Any


def heldout_loss(model, rows: list[dict[str, Any]], *, batch_size: int, pad_token_id: int) -> dict[str, float]:
    """Token-weighted mean NLL of the responses (EOS included) given their prompts, and its perplexity.

    The prompt is masked exactly as in training with train_on_prompt=false, so the figure says how well
    the model answers, not how well it predicts the fixed template text.
    """
    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for i, row in enumerate(batch):
                ids = torch.tensor(row["input_ids"])
                input_ids[i, :len(ids)], attention[i, :len(ids)] = ids, 1
                mask = torch.tensor(row["completion_mask"], dtype=torch.bool)
                labels[i, :len(ids)] = torch.where(mask, ids, torch.tensor(-100))
            scored = int((labels[:, 1:] != -100).sum())  # the model shifts labels by one
            out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                        labels=labels.to(device))
            total_nll += float(out.loss) * scored
            total_tokens += scored
    loss = total_nll / total_tokens
    return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 700.0)), 4), "tokens": total_tokens}


def greedy_generations(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                       batch_size: int) -> tuple[list[str], dict[str, float]]:
    """Greedy completions of `prompts`, batched with left padding; returns texts and throughput."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    outputs, new_tokens = [], 0
    started = time.perf_counter()
    try:
        for start in range(0, len(prompts), batch_size):
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
