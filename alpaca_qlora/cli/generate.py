"""Talk to a trained adapter: the prompt rendered with the training template, tokens streamed until EOS.

    python -m alpaca_qlora.cli.generate --adapter models/adapter "Give three tips for staying healthy."
    python -m alpaca_qlora.cli.generate --adapter models/adapter --input "48 and 52" "Add the two numbers."
    python -m alpaca_qlora.cli.generate --adapter models/adapter --interactive     # one prompt per stdin line

The adapter folder says everything needed (metadata.json): its base model, the exact template text and
variant choice training used, and the tokenizer. The instruction goes through the same
`PromptTemplate.render_prompt` as the format stage and is tokenized the same way (BOS added), so the model
sees at inference what it saw in training. Loading and generating go through the same code as the evaluate
stages (alpaca_qlora/modeling/inference.py, alpaca_qlora/evaluation/generation.py), so an answer here is
the answer the stage scored: `--backend auto` (the default) picks as `evaluate.backend: auto` does (Unsloth's
for_inference on a GPU, the dequantized-merged model on a CPU); `unsloth`, `hf` or `merged` force a path.
The load time is printed once, and after each answer its tokens and tokens/s. Decoding is greedy unless
--temperature is above 0.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from alpaca_qlora import progress
from alpaca_qlora.errors import run_main
from alpaca_qlora.modeling import inference
from alpaca_qlora.modeling.adapter import AdapterMetadata


def stream_answer(model, tokenizer, prompt: str, *, max_new_tokens: int, on_text: Callable[[str], None],
                  temperature: float = 0.0, top_p: float = 1.0, static: bool = False):
    """Generate a completion of `prompt`, handing each finished piece of text to `on_text` as it comes.

    transformers' TextStreamer decodes the new tokens incrementally (holding back a piece until a word is
    complete), in this thread, so an error in generation surfaces here. Returns (Answer, Speed) of
    alpaca_qlora.evaluation.generation.
    """
    from transformers import TextStreamer

    from alpaca_qlora.evaluation.generation import generate_answers

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else None
    streamer = CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    answers, speed = generate_answers(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, batch_size=1,
                                      sampling=sampling, streamer=streamer, static=static)
    return answers[0], speed


def load_adapter_for_inference(adapter_dir: Path, backend_name: str = "auto"):
    """(model, tokenizer, render, path) of a trained adapter folder: its base model, the inference path used,
    and its template."""
    metadata = AdapterMetadata.read(adapter_dir)
    path = inference.resolve(backend_name)
    progress.note(f"generate: loading {metadata.base_model} ({path}) and the adapter {adapter_dir}")
    model, tokenizer = inference.load(path, metadata.model_params, adapter_dir)
    return model, tokenizer, metadata.prompt_renderer(), path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("instruction", nargs="?", help="the instruction; without it, prompts are read from stdin")
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--input", default="", help="the record's input (context); empty by default")
    parser.add_argument("--interactive", action="store_true", help="read one instruction per stdin line")
    parser.add_argument("--backend", choices=inference.CHOICES, default="auto",
                        help="auto (default): merged on a CPU or a GPU of 40 GiB+, else unsloth "
                             "(alpaca_qlora/modeling/inference.py)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args()
    if args.instruction and args.interactive:
        parser.error("give an instruction or --interactive, not both")

    started = time.perf_counter()
    model, tokenizer, render, path = load_adapter_for_inference(args.adapter, args.backend)
    print(f"[loaded {args.adapter} on {path} in {time.perf_counter() - started:.1f}s]", file=sys.stderr, flush=True)

    def answer(instruction: str) -> None:
        result, speed = stream_answer(model, tokenizer, render(instruction, args.input),
                                      max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      top_p=args.top_p, on_text=lambda text: print(text, end="", flush=True),
                                      static=inference.static_decoding(path))
        print(flush=True)
        end = "EOS" if result.stopped_at_eos else f"--max-new-tokens {args.max_new_tokens}"
        print(f"[{result.answer_tokens} tokens, {speed.new_tokens_per_s:.1f} tokens/s, stopped at {end}]",
              file=sys.stderr, flush=True)

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
