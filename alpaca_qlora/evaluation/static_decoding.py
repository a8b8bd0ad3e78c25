"""Greedy decoding with a static KV cache, one decode step replayed as a CUDA graph.

Why: `model.generate` runs each decode step as hundreds of small kernel launches from Python. On an H200 a
7B step then takes 30-50 ms whatever the batch (BENCHMARKS.md: bf16 eager 30 new tokens/s at batch 1,
779 at batch 64), while reading the weights once takes ~3 ms. Capturing one step in a CUDA graph and
replaying it removes the launch overhead, as gpt-fast and vLLM do. Everything the step touches has a fixed
address: transformers' StaticCache (its write position is a device-side counter), the input token, the
positions and a 4-D attention mask that transformers takes as it is (masking_utils returns a 4-D mask
unchanged; it is additive, 0 or the dtype's minimum, as both SDPA and eager attention take it). The same
loop runs without the graph on a CPU, where the tests check it token for token against `model.generate`.
It needs a plain transformers model (the hf backend, or a merged copy): Unsloth's inference mode replaces
the forward with its own cache.

Rows are left-padded; each row's positions count its own tokens only, so padding changes nothing.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Decoded:
    token_ids: list[int]  # the new tokens, up to and including EOS when the row stopped there
    stopped_at_eos: bool


def greedy_decode(model, input_ids, attention_mask, *, max_new_tokens: int, eos_token_id: int,
                  cuda_graph: bool | None = None, check_every: int = 16, on_token=None) -> list[Decoded]:
    """Greedy continuation of a left-padded batch (input_ids, attention_mask: [B, P] tensors on the model's
    device). `cuda_graph` defaults to True on CUDA. Stops when every row has produced EOS. `on_token`, if
    given, gets each step's tokens ([B] tensor) as they come (a streaming command; it syncs every step)."""
    import torch
    from transformers import StaticCache

    device = input_ids.device
    cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    batch, prompt_length = input_ids.shape
    length = prompt_length + max_new_tokens
    cache = StaticCache(config=model.config, max_cache_len=length)
    attention_mask = attention_mask.to(torch.bool)
    dtype = next(model.parameters()).dtype
    blocked = torch.finfo(dtype).min
    # key_valid[b, k]: position k of row b holds a real token (prompt) or a generated one (set as they come).
    key_valid = torch.zeros((batch, length), dtype=torch.bool, device=device)
    key_valid[:, :prompt_length] = attention_mask
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    with torch.inference_mode():
        causal = torch.ones((prompt_length, length), dtype=torch.bool, device=device).tril()
        visible = causal[None] & key_valid[:, None, :]
        # A padding query attends to nothing, which gives NaN; let it see itself (its output is unused).
        visible[:, torch.arange(prompt_length), torch.arange(prompt_length)] |= ~attention_mask
        prefill_mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, blocked)
        logits = model(input_ids=input_ids, attention_mask=prefill_mask[:, None], position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        next_token = logits[:, -1].argmax(-1)

        step_ids = next_token[:, None].clone()
        step_positions = positions[:, -1:] + 1
        step_mask = torch.zeros((batch, 1, 1, length), dtype=dtype, device=device)
        step_mask.masked_fill_(~key_valid[:, None, None, :], blocked)
        generated = torch.full((batch, max_new_tokens), eos_token_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)

        def step():
            return model(input_ids=step_ids, attention_mask=step_mask, position_ids=step_positions,
                         past_key_values=cache, use_cache=True).logits[:, -1]

        replay = step
        if cuda_graph:
            try:
                replay = _captured(step, cache, prompt_length)
            except RuntimeError as error:  # a library that syncs inside the step cannot be captured: run it eagerly
                print(f"static decoding: CUDA graph capture failed ({str(error).splitlines()[0]}); decoding "
                      "without the graph", file=sys.stderr)
                for layer in cache.layers:
                    layer.cumulative_length.fill_(prompt_length)
        for index in range(max_new_tokens):
            generated[:, index] = next_token
            finished |= next_token == eos_token_id
            if on_token is not None:
                on_token(next_token)
                check_every = 1
            if index == max_new_tokens - 1 or (index % check_every == check_every - 1 and bool(finished.all())):
                break
            step_ids.copy_(next_token[:, None])
            step_mask[..., prompt_length + index] = 0  # the position this step writes becomes visible
            next_token = replay().argmax(-1)
            step_positions.add_(1)
    return _trim(generated.tolist(), eos_token_id)


def _captured(step, cache, prompt_length: int):
    """`step` captured in a CUDA graph; calling the result replays it and returns the static logits."""
    import torch

    counters = [layer.cumulative_length for layer in cache.layers]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: lazy initialisations (cuBLAS workspaces, ...) must not happen during capture
    torch.cuda.current_stream().wait_stream(side)
    for counter in counters:  # the warm-up wrote one token: rewind, the first replay writes it again
        counter.fill_(prompt_length)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = step()
    for counter in counters:  # capture records the counter's increment without running it; keep it in place
        counter.fill_(prompt_length)

    def replay():
        graph.replay()
        return logits
    return replay


def _trim(rows: list[list[int]], eos_token_id: int) -> list[Decoded]:
    decoded = []
    for tokens in rows:
        if eos_token_id in tokens:
            decoded.append(Decoded(tokens[:tokens.index(eos_token_id) + 1], True))
        else:
            decoded.append(Decoded(tokens, False))
    return decoded
