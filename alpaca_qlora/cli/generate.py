"""Talk to a trained adapter: the prompt rendered with the training template, tokens streamed until EOS.

    python -m alpaca_qlora.cli.generate --adapter models/adapter "Give three tips for staying healthy."
    python -m alpaca_qlora.cli.generate --adapter models/adapter --input "48 and 52" "Add the two numbers."
    python -m alpaca_qlora.cli.generate --adapter models/adapter --interactive     # one prompt per stdin line

The adapter folder says everything needed (metadata.json): its base model, the exact template text and
variant choice training used, and the tokenizer. The instruction goes through the same
`PromptTemplate.render_prompt` as the format stage and is tokenized the same way (BOS added), so the model
sees at inference what it saw in training. Loading goes through alpaca_qlora.modeling.backends, as in the
evaluate stage: `--backend unsloth` (FastLanguageModel.for_inference, the default on a GPU) or `hf`
(transformers + bitsandbytes + peft, the default on a CPU). Decoding is greedy unless --temperature is above 0.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alpaca_qlora import progress
from alpaca_qlora.errors import run_main
from alpaca_qlora.modeling import backends
from alpaca_qlora.modeling.adapter import AdapterMetadata


@dataclass(frozen=True)
class Answer:
    text: str
    new_tokens: int
    stopped_at_eos: bool


def stream_answer(model, tokenizer, prompt: str, *, max_new_tokens: int, on_text: Callable[[str], None],
                  temperature: float = 0.0, top_p: float = 1.0) -> Answer:
    """Generate a completion of `prompt`, handing each finished piece of text to `on_text` as it comes.

    transformers' TextStreamer decodes the new tokens incrementally (holding back a piece until a word is
    complete), in this thread, so an error in generation surfaces here. Generation stops at the
    tokenizer's EOS, which is passed explicitly rather than trusted to the model's generation_config.
    """
    import torch
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    device = next(model.parameters()).device
    # add_special_tokens=True: BOS first, exactly as in the formatted training rows.
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).to(device)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(
        do_sample=False)
    streamer = CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        generated = model.generate(**encoded, max_new_tokens=max_new_tokens, streamer=streamer,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                   **sampling)
    new = generated[0, encoded["input_ids"].shape[1]:].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Answer(text=text, new_tokens=len(new), stopped_at_eos=bool(new) and new[-1] == tokenizer.eos_token_id)


def load_adapter_for_inference(adapter_dir: Path, backend_name: str | None = None):
    """(model, tokenizer, render) for a trained adapter folder: its base model, backend loader and template."""
    metadata = AdapterMetadata.read(adapter_dir)
    backend = backends.get(backend_name or backends.default_for_inference())
    progress.note(f"generate: loading {metadata.base_model} ({backend.name}) and the adapter {adapter_dir}")
    model, tokenizer = backend.load_for_inference(metadata.model_params)
    return backend.attach_adapter(model, adapter_dir), tokenizer, metadata.prompt_renderer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("instruction", nargs="?", help="the instruction; without it, prompts are read from stdin")
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--input", default="", help="the record's input (context); empty by default")
    parser.add_argument("--interactive", action="store_true", help="read one instruction per stdin line")
    parser.add_argument("--backend", choices=backends.NAMES,
                        help="default: unsloth on a GPU, hf (transformers + bitsandbytes + peft) on a CPU")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args()
    if args.instruction and args.interactive:
        parser.error("give an instruction or --interactive, not both")

    model, tokenizer, render = load_adapter_for_inference(args.adapter, args.backend)

    def answer(instruction: str) -> None:
        result = stream_answer(model, tokenizer, render(instruction, args.input),
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                               on_text=lambda text: print(text, end="", flush=True))
        print(flush=True)
        end = "EOS" if result.stopped_at_eos else f"--max-new-tokens {args.max_new_tokens}"
        print(f"[{result.new_tokens} tokens, stopped at {end}]", file=sys.stderr, flush=True)

    if args.instruction:
        answer(args.instruction)
        return
    if sys.stdin.isatty():
        print("One instruction per line; Ctrl-D to quit.", file=sys.stderr)
    for line in sys.stdin:
        if line.strip():
            answer(line.strip())


if __name__ == "__main__":
    run_main(main)
