"""Compare experiments: `dvc plots diff` renders loss curves and base-vs-adapter bars, offline, in Chromium.

The page is checked in a real headless Chromium (Debian's `chromium`), with every host name resolving to
nothing, so it passes only if the page renders with no network: Vega comes inlined from the offline
template (alpaca_qlora/cli/plots_page.py), not from DVC's default CDN tags. On CI (CI set) a missing Chromium
fails the test; locally it is skipped.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from alpaca_qlora.cli.plots_page import write_offline_template
from tests.conftest import cli_env, run_dvc

PLOT_TITLES = ("Training loss", "Held-out loss, base vs adapter", "Held-out perplexity, base vs adapter",
               "ROUGE-L F1 against the reference, base vs adapter",
               "Share of answers that stop at EOS, base vs adapter")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/install-remote-test-deps.sh installs Debian's chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")


def test_evaluate_writes_base_vs_adapter_rows_matching_the_metrics(reproduced_workspace):
    rows = json.loads((reproduced_workspace / "reports/plots/eval.json").read_text())
    metrics = json.loads((reproduced_workspace / "reports/metrics.json").read_text())
    names = {"loss": "eval_loss", "perplexity": "eval_perplexity"}
    assert [row["model"] for row in rows] == ["base", "adapter"]
    for row in rows:
        assert {names.get(key, key): value for key, value in row.items() if key != "model"} == metrics[row["model"]]


@pytest.fixture(scope="module")
def compared(experiment_workspace, tmp_path_factory):
    """The session's experiment (`short`, 20 steps) beside the committed baseline (HEAD), and `dvc plots diff`
    of the two as an HTML page outside the workspace."""
    out = tmp_path_factory.mktemp("plots")
    template = write_offline_template(out / "offline-template.html")
    run_dvc(experiment_workspace.repo, "plots", "diff", "HEAD", "short", "--html-template", str(template),
            "-o", str(out / "page"))
    return experiment_workspace.repo, out / "page" / "index.html"


def test_plots_diff_page_holds_every_plot_for_both_experiments_and_no_cdn(compared):
    workspace, page = compared
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and not re.search(r"<script[^>]+src=", html), "no script from the network"
    specs = [json.loads(text) for text in re.findall(r"var spec = (\{.*?\});\n", html, flags=re.S)]
    titles = {spec["title"]["text"] if isinstance(spec["title"], dict) else spec["title"]: spec for spec in specs}
    assert set(PLOT_TITLES) <= set(titles)
    bars = titles["Held-out loss, base vs adapter"]["data"]["values"]
    assert {(row["rev"], row["model"]) for row in bars} == {(rev, model) for rev in ("HEAD", "short")
                                                            for model in ("base", "adapter")}
    short_metrics = json.loads((workspace / "reports/metrics.json").read_text())  # the workspace holds `short`
    assert {row["loss"] for row in bars if row["rev"] == "short"} == {
        short_metrics["base"]["eval_loss"], short_metrics["adapter"]["eval_loss"]}
    rouge = titles["ROUGE-L F1 against the reference, base vs adapter"]["data"]["values"]
    assert {row["rouge_l"] for row in rouge if row["rev"] == "short"} == {
        short_metrics["base"]["rouge_l"], short_metrics["adapter"]["rouge_l"]}
    curve = titles["Training loss"]["data"]["values"]
    assert sum(row["rev"] == "short" for row in curve) == 20 and sum(row["rev"] == "HEAD" for row in curve) == 100


def test_plots_render_in_headless_chromium_with_no_network(compared):
    """Chromium runs the page's scripts (virtual time lets them finish) and dumps the DOM they built."""
    _, page = compared
    browser = chromium()
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    plots = len(re.findall(r'<div id\s*=\s*"', page.read_text()))
    drawn = re.findall(r'<svg[^>]*class="marks"', dom)
    assert plots >= 5 and len(drawn) == plots, f"{len(drawn)} of {plots} plots rendered as SVG"
    for title in PLOT_TITLES:
        assert f">{title}</text>" in dom, f"the rendered page lacks the title {title!r}"
    assert ">short</text>" in dom and ">HEAD</text>" in dom, "the legend names both experiments"
    assert len(re.findall(r'<path[^>]+aria-roledescription="bar"', dom)) >= 8, "4 bars per bar plot"


def test_compare_generations_reads_two_experiments_from_dvc_and_ranks_their_differences(compared,
                                                                                       reproduced_workspace):
    """`compare_generations HEAD short`: both runs' answers read through DVC (HEAD's from the cache, not the
    workspace), the wins counted per row, and the rows whose adapter answers differ most shown first."""
    from alpaca_qlora.evaluation.scores import summarize
    from alpaca_qlora.files import read_jsonl

    workspace, _ = compared
    head, short = (read_jsonl(reproduced_workspace / "reports/generations.jsonl"),  # what HEAD committed
                   read_jsonl(workspace / "reports/generations.jsonl"))
    assert [r["id"] for r in head] == [r["id"] for r in short] and head != short
    done = subprocess.run([sys.executable, "-m", "alpaca_qlora.cli.compare_generations", "HEAD", "short", "--top", "5"],
                          cwd=workspace, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    figures = summarize(r["adapter"] for r in head), summarize(r["adapter"] for r in short)
    assert f"| ROUGE-L F1 | {figures[0]['rouge_l']:.4f} | {figures[1]['rouge_l']:.4f} |" in text
    assert f"| EOS-stop rate | {figures[0]['eos_stop_rate']:.4f} | {figures[1]['eos_stop_rate']:.4f} |" in text
    better = sum(b["adapter"]["rouge_l"] > a["adapter"]["rouge_l"] for a, b in zip(head, short))
    worse = sum(b["adapter"]["rouge_l"] < a["adapter"]["rouge_l"] for a, b in zip(head, short))
    assert f"short higher in {better}, HEAD higher in {worse}, equal in {64 - better - worse} of 64." in text
    gaps = sorted(((-abs(b["adapter"]["rouge_l"] - a["adapter"]["rouge_l"]), a["id"]) for a, b in zip(head, short)))
    shown = [int(line.split()[2].rstrip(":")) for line in text.splitlines() if line.startswith("### Record ")]
    assert shown == [record_id for _, record_id in gaps[:5]]
    unknown = subprocess.run([sys.executable, "-m", "alpaca_qlora.cli.compare_generations", "HEAD", "no-such-exp"],
                             cwd=workspace, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert unknown.returncode != 0 and "at revision 'no-such-exp' could not be read" in unknown.stderr
