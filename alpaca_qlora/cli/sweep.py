"""Run DVC's experiment queue to the end: `dvc queue start`, plus a watch that restarts the worker while
experiments are still queued.

    dvc exp run --queue -S 'train.learning_rate=1e-4,2e-4' -S 'lora.r=8,16'    # 4 experiments, queued
    python -m alpaca_qlora.cli.sweep                                            # runs them all, one at a time
    dvc exp show --only-changed --sort-by reports/metrics.json:eval_loss --sort-order asc

Why not `dvc queue start` alone: DVC's queue worker stops itself when it believes the queue is empty, and
nothing starts it again. Its monitor (dvc-task's TemporaryWorker.monitor) looks every 10 s: three celery
`inspect` calls (active, scheduled, reserved), each answered through the filesystem broker within a 1 s
timeout, then a listing of the broker's queue folder. A reply that misses its timeout counts as "no task"
and the two looks are not one snapshot, so a check between two experiments on a loaded machine can stop
the worker early; a worker that dies (OOM, a killed session) leaves the queue the same way: `Queued`
experiments, `Worker status: 0 active, 0 idle` (docs/using-the-adapter.md, Compare experiments).
This command does what `dvc queue start` does, then checks every --poll seconds, by the worker's own pid
file rather than by celery's timed-out replies, whether a worker is alive while experiments are queued,
and starts one if not. It returns when nothing is queued or running, lists what succeeded and failed, and
exits 1 if any failed. Interrupting it (Ctrl+C) leaves the queue running; rerun it to resume watching.
Follow a run with `dvc queue status` and `dvc queue logs <name>` from another shell.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from alpaca_qlora.errors import run_main


def worker_alive(wdir: str, number: int) -> bool:
    """Worker `number`'s process, from the pid file DVC writes for it (.dvc/tmp/exps/celery/)."""
    from dvc_task.proc.process import ProcessInfo

    info_file = Path(wdir) / f"dvc-exp-worker-{number}.json"
    if not info_file.is_file():
        return False
    info = ProcessInfo.load(str(info_file))
    if info.returncode is not None:
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_queue(*, jobs: int = 1, poll_s: float = 10.0, grace_s: float = 30.0,
              out=sys.stdout) -> tuple[list[str], list[str]]:
    """Run every queued experiment of the repository in the current directory; (succeeded, failed) names of
    the experiments this call saw queued or running."""
    from dvc.repo import Repo

    seen, last, started_at = set(), None, None
    with Repo() as repo:
        queue = repo.experiments.celery_queue
        while True:
            queued, running = list(queue.iter_queued()), list(queue.iter_active())
            seen.update(entry.stash_rev for entry in queued + running)
            alive = [n for n in range(1, jobs + 1) if worker_alive(queue.wdir, n)]
            state = f"{len(running)} running, {len(queued)} queued, {len(alive)} worker(s)"
            if state != last:
                print(f"sweep: {state}", file=out, flush=True)
                last = state
            if not queued and not running:
                break
            settled = started_at is None or time.monotonic() - started_at > grace_s  # a new worker's pid file
            if queued and len(alive) < jobs and settled:
                if started_at is not None:
                    print("sweep: the queue worker stopped with experiments still queued; starting it again",
                          file=out, flush=True)
                queue.start_workers(jobs)
                started_at = time.monotonic()
            elif running and not alive and not queued and settled:
                print("sweep: experiments marked running but no worker is alive (killed?): see "
                      "`dvc queue logs <name>`, then `dvc queue kill <name>` and queue them again", file=out)
                break
            time.sleep(poll_s)
        succeeded = [e.name or e.stash_rev[:7] for e, _ in queue.iter_success() if e.stash_rev in seen]
        failed = [e.name or e.stash_rev[:7] for e, _ in queue.iter_failed() if e.stash_rev in seen]
    return succeeded, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="experiments at a time (default 1: one GPU runs one training at a time)")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between checks (default 10)")
    args = parser.parse_args()
    succeeded, failed = run_queue(jobs=args.jobs, poll_s=args.poll)
    print(f"sweep: done: {len(succeeded)} succeeded ({', '.join(succeeded) or '-'}), "
          f"{len(failed)} failed ({', '.join(failed) or '-'}); compare them with "
          "dvc exp show --only-changed --sort-by reports/metrics.json:eval_loss --sort-order asc")
    if failed:
        print("sweep: why one failed: dvc queue logs <name>", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
