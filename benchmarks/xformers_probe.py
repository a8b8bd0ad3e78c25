"""Does the GPU image's attention stack keep packed examples apart in one kernel call?

Prints the xformers / torch versions, checks xformers' block-diagonal causal attention against one SDPA
call per example (forward and backward run), and what Unsloth's attention dispatch found
(flash-attn, xformers, torch varlen). Run on the GPU machine:  python3 -m benchmarks.xformers_probe
"""
import torch

import xformers
import xformers.ops as xops

print("xformers", xformers.__version__, "torch", torch.__version__)
lengths = [200, 180, 300, 250, 190, 400, 220, 210, 98]
q = torch.randn(1, sum(lengths), 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
kv = torch.randn(1, sum(lengths), 32, 128, device="cuda", dtype=torch.bfloat16)
mask = xops.fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens(lengths)
packed = xops.memory_efficient_attention(q, kv, kv, attn_bias=mask)
packed.sum().backward()
alone, start = [], 0
for length in lengths:
    part = slice(start, start + length)
    alone.append(torch.nn.functional.scaled_dot_product_attention(
        q[:, part].transpose(1, 2), kv[:, part].transpose(1, 2), kv[:, part].transpose(1, 2),
        is_causal=True).transpose(1, 2))
    start += length
print("max |xformers block-diagonal - per-example SDPA|:", (packed - torch.cat(alone, 1)).abs().max().item())

import unsloth  # noqa: E402,F401
import unsloth.utils.attention_dispatch as dispatch  # noqa: E402

print("unsloth dispatch: HAS_XFORMERS", dispatch.HAS_XFORMERS, "HAS_FLASH_ATTENTION", dispatch.HAS_FLASH_ATTENTION,
      "torch varlen", dispatch._TORCH_VARLEN_ATTN is not None)
