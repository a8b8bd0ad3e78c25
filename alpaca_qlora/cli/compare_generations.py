"""Compare two runs record by record: the answers of one experiment (or commit) against another's.

    python -m alpaca_qlora.cli.compare_generations HEAD lr-1e-4            # a commit vs an experiment
    python -m alpaca_qlora.cli.compare_generations lr-1e-4 r32 --top 20 --out build/lr-vs-r32.md
    python -m alpaca_qlora.cli.compare_generations HEAD workspace --model base

Each run's reports/generations.jsonl (every held-out row: prompt, reference, base and adapter answers and
their scores) is read through DVC at that revision (`dvc exp show` names, git revisions, or `workspace`
for the files on disk), so it comes from the DVC cache or remote, not from a rerun. Prints, in markdown:
both runs' figures, how many rows each wins on ROUGE-L, and the rows where their answers differ most.
Both runs must have answered the same held-out set (same data.* params).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alpaca_qlora.errors import run_main

GENERATIONS = "reports/generations.jsonl"


def read_generations(revision: str, repo: Path = Path(".")):
    """The rows of reports/generations.jsonl at `revision` ("workspace": the file on disk)."""
    from alpaca_qlora.evaluation.results import parse_generations

    if revision == "workspace":
        path = repo / GENERATIONS
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `dvc repro` (or `dvc pull`) first")
        return parse_generations(path.read_text(encoding="utf-8"), str(path))
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    try:
        text = dvc.api.read(GENERATIONS, repo=str(repo), rev=revision, encoding="utf-8")
    except (DvcException, SCMError, FileNotFoundError) as error:
        raise FileNotFoundError(f"{GENERATIONS} at revision {revision!r} could not be read ({error}); is it a "
                                "commit or an experiment of `dvc exp show` whose outputs are in the cache "
                                "(dvc pull / dvc exp pull)?") from error
    return parse_generations(text, f"{GENERATIONS}@{revision}")


def main() -> None:
    from alpaca_qlora.evaluation.report import compare_runs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="a git revision, an experiment name, or `workspace`")
    parser.add_argument("second", help="a git revision, an experiment name, or `workspace`")
    parser.add_argument("--model", choices=("adapter", "base"), default="adapter")
    parser.add_argument("--top", type=int, default=10, help="rows shown in full (default 10)")
    parser.add_argument("--out", type=Path, help="write the markdown here instead of printing it")
    args = parser.parse_args()
    text = compare_runs(read_generations(args.first), read_generations(args.second), (args.first, args.second),
                        model=args.model, shown=args.top)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    run_main(main)
