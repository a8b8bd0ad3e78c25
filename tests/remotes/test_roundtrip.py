"""Push from the GPU box, pull into a colleague's fresh clone: same bytes, nothing to rerun."""

from __future__ import annotations

import pytest

from .conftest import TIMINGS
from .remotes import REMOTE_KINDS
from .dvcrepo import (
    ADAPTER,
    colleague_clone,
    digest_outputs,
    digest_tree,
    dvc,
    dvc_cache_files,
    pushed_count,
)
from .dvcrepo import gpu_box as make_gpu_box


@pytest.mark.parametrize("kind", REMOTE_KINDS)
def test_fresh_clone_pulls_identical_outputs_and_reruns_nothing(kind, team_workspace, make_remote, tmp_path):
    remote = make_remote(kind)
    gpu_box = make_gpu_box(team_workspace, tmp_path)
    remote.configure(gpu_box)
    pushed = digest_outputs(gpu_box)
    adapter = digest_tree(gpu_box, ADAPTER)
    assert adapter, "the workspace has no adapter to share"

    # The adapter first, timed on its own, then everything else (data, formatted data, reports).
    push_adapter = dvc(gpu_box, "push", ADAPTER)
    push_rest = dvc(gpu_box, "push")
    cache = dvc_cache_files(gpu_box)
    assert pushed_count(push_adapter.output) + pushed_count(push_rest.output) == len(cache), (
        f"expected every one of the {len(cache)} cached objects to be pushed:\n{push_adapter}\n{push_rest}"
    )
    assert remote.data_objects() == {p.relative_to(gpu_box / ".dvc" / "cache").as_posix() for p in cache}

    colleague = colleague_clone(tmp_path)
    remote.configure(colleague)
    assert digest_outputs(colleague) == {}, "a fresh git clone must not hold DVC outputs yet"
    pull_adapter = dvc(colleague, "pull", ADAPTER)
    assert digest_tree(colleague, ADAPTER) == adapter, "adapter bytes differ after pull"
    pull_rest = dvc(colleague, "pull")

    assert digest_outputs(colleague) == pushed, "pulled outputs differ from the pushed ones"
    status = dvc(colleague, "status")
    assert status.output.strip() == "Data and pipelines are up to date.", status
    repro = dvc(colleague, "repro")
    assert "Running stage" not in repro.output, f"dvc repro reran a stage after a pull:\n{repro}"
    assert repro.output.rstrip().endswith("Data and pipelines are up to date."), repro
    for stage in ("sample", "format", "train", "evaluate_base", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in repro.output, repro

    adapter_bytes = sum((gpu_box / rel).stat().st_size for rel in adapter)
    TIMINGS.append(dict(remote=kind, what="adapter", files=len(adapter), bytes=adapter_bytes,
                        push_s=push_adapter.seconds, pull_s=pull_adapter.seconds))
    everything = sum(p.stat().st_size for p in cache)
    TIMINGS.append(dict(remote=kind, what="all outs", files=len(cache), bytes=everything,
                        push_s=push_adapter.seconds + push_rest.seconds,
                        pull_s=pull_adapter.seconds + pull_rest.seconds))
