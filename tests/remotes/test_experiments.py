"""Experiments and the run-cache travel through the git remote plus the DVC remote."""

from __future__ import annotations

import csv
import io

import pytest

from .remotes import REMOTE_KINDS
from .dvcrepo import ADAPTER, colleague_clone, digest_outputs, digest_tree, dvc, git
from .dvcrepo import gpu_box as make_gpu_box


def _only(digests: dict[str, str], prefix: str) -> dict[str, str]:
    return {path: digest for path, digest in digests.items() if path.startswith(prefix + "/")}


@pytest.mark.parametrize("kind", REMOTE_KINDS)
def test_pushed_experiment_is_listed_and_applied_on_another_clone(
        kind, experiment_workspace, make_remote, tmp_path):
    exp = experiment_workspace
    remote = make_remote(kind)
    gpu_box = make_gpu_box(exp.repo, tmp_path)
    remote.configure(gpu_box)

    pushed = dvc(gpu_box, "exp", "push", "origin", exp.name)
    assert f"Pushed experiment {exp.name} to Git remote 'origin'" in pushed.output, pushed
    refs = git(gpu_box, "ls-remote", "origin", "refs/exps/*").output
    assert refs.strip().endswith(f"/{exp.name}"), f"no experiment ref on the git remote:\n{refs}"

    colleague = colleague_clone(tmp_path)
    remote.configure(colleague)
    listed = dvc(colleague, "exp", "list", "origin").output
    assert exp.name in listed.split(), listed
    pulled = dvc(colleague, "exp", "pull", "origin", exp.name)
    assert exp.name in pulled.output, pulled

    table = dvc(colleague, "exp", "show", "--csv", "--no-pager").output
    rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(table))}
    assert exp.name in rows, f"`dvc exp show` on the colleague's clone does not list {exp.name}:\n{table}"
    key, value = exp.override.split("=")
    assert rows[exp.name][key] == value, f"{key} of {exp.name}: {rows[exp.name][key]!r}\n{table}"

    applied = dvc(colleague, "exp", "apply", exp.name)
    assert f"experiment '{exp.name}' have been applied" in applied.output, applied
    adapter = _only(exp.outputs, ADAPTER)
    assert digest_tree(colleague, ADAPTER) == adapter, "the applied adapter differs from the experiment's"
    assert (colleague / "reports" / "metrics.json").read_text() == exp.metrics
    assert adapter != _only(exp.baseline, ADAPTER), "sanity: the experiment's adapter is not main's"
    status = dvc(colleague, "status")
    assert status.output.strip() == "Data and pipelines are up to date.", status


@pytest.mark.parametrize("kind", REMOTE_KINDS)
def test_run_cache_restores_training_instead_of_rerunning_it(
        kind, experiment_workspace, make_remote, tmp_path):
    """The GPU box shares its run history; a colleague asking for the same params gets the results."""
    exp = experiment_workspace
    remote = make_remote(kind)
    gpu_box = make_gpu_box(exp.repo, tmp_path)
    remote.configure(gpu_box)
    # Main's results (committed) and the experiment's (in the workspace), plus the run history.
    dvc(gpu_box, "push", "--all-branches", "--run-cache")
    assert any(rel.startswith("runs/") for rel in remote.objects()), "no run-cache entry on the remote"

    colleague = colleague_clone(tmp_path)
    remote.configure(colleague)
    dvc(colleague, "pull", "--run-cache")
    assert digest_outputs(colleague) == exp.baseline, "the colleague starts from main's results"

    run = dvc(colleague, "exp", "run", "--pull", "-S", exp.override)
    assert "Stage 'train' is cached - skipping run, checking out outputs" in run.output, run
    assert "Running stage 'train'" not in run.output, f"train ran again despite the run-cache:\n{run}"
    assert digest_tree(colleague, ADAPTER) == _only(exp.outputs, ADAPTER), (
        "the restored adapter differs from the one the GPU box trained"
    )
    assert (colleague / "reports" / "metrics.json").read_text() == exp.metrics
