"""Errors that are the user's to fix, and how every stage and command ends on one.

A UserError is an expected failure: bad data, a bad param, a model or adapter that cannot be used, a
machine that cannot run the job. Its message says what is wrong and where (file:line, key or record),
then, after "; ", what to do. Every stage and command starts through `run_main`, which ends on a
UserError with that message as one line on stderr, `error: <message>`, and exit status 1: a traceback
would say that the tool broke, when it is the input that is wrong. ALPACA_QLORA_DEBUG=1 shows the
traceback anyway. Any other exception is a bug or a surprise, and keeps its traceback.

The subclasses live beside the code that raises them: DataError (data/records.py), TooLongError
(data/formatting.py), TemplateError (data/template.py), ParamsError (params.py), EnvironmentProblem
(modeling/preflight.py), AdapterError (modeling/adapter.py), LaunchError (training/launch.py).
"""
from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

DEBUG_ENV = "ALPACA_QLORA_DEBUG"
EXIT_STATUS = 1


class UserError(Exception):
    """An expected failure with a message `<what is wrong, where>; <what to do>`, shown without a traceback."""


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "on", "yes", "true"}


def one_line(message: str) -> str:
    """The message on one line: a library's multi-line text joined, nothing else changed."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def out_of_memory(error: BaseException) -> UserError | None:
    """torch's out-of-memory error as a UserError: the machine is too small for the params, not a bug."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return None
    first = one_line(str(error).split(". ")[0])
    return UserError(f"out of GPU memory ({first}); set train.batch_size to auto or lower it (the rest of "
                     "train.rows_per_step is accumulated, so the math stays), train.gradient_checkpointing: unsloth, "
                     "lower evaluate.batch_size or model.max_seq_length, or free the GPU (nvidia-smi lists what holds it)")


def exit_with(error: UserError) -> NoReturn:
    sys.stdout.flush()
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_STATUS)


def run_main(main: Callable[[], object]) -> None:
    """Run a stage's or command's `main()`; a UserError (or torch running out of memory) ends the process
    with one `error: ...` line on stderr and exit status 1, unless ALPACA_QLORA_DEBUG=1 asks for the traceback."""
    try:
        main()
    except UserError as error:
        if debug_requested():
            raise
        exit_with(error)
    except Exception as error:
        expected = out_of_memory(error)
        if expected is None or debug_requested():
            raise
        exit_with(expected)
