"""An HTML template for `dvc plots show/diff` that renders with no network: Vega, Vega-Lite and Vega-Embed inlined.

    python -m alpaca_qlora.cli.plots_page build/plots/offline-template.html
    dvc plots diff <exp1> <exp2> --html-template build/plots/offline-template.html -o build/plots

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so on a machine with no internet (CI,
an air-gapped GPU box) `dvc plots diff` writes a page that stays blank. A template without DVC's
`{scripts}` placeholder keeps those CDN tags out, and DVC fills only `{plot_divs}` (each div calls the
global `vegaEmbed(...)`). The libraries come from the pinned `vl-convert-python` package, whose
`javascript_bundle()` returns them as one self-contained script. Plots render as SVG (Vega-Embed's default
is a canvas), so the drawn marks, titles and legends are in the page's DOM, where a headless browser check
can see them and a reader can copy them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora.errors import run_main

# Vega-Lite 5 matches the "$schema" of DVC's templates (vega-lite/v5.json).
VEGA_LITE_VERSION = "5.21"

# The bundle's own snippet, plus SVG as the default renderer for DVC's `vegaEmbed('#id', spec)` calls.
BUNDLE_SNIPPET = """
window.vega = vega;
window.vegaLite = vegaLite;
window.vegaEmbed = (el, spec, opts) => vegaEmbed(el, spec, {renderer: "svg", ...(opts || {})});
"""

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots</title>
    <script type="text/javascript">
// Vega, Vega-Lite and Vega-Embed (BSD-3-Clause), bundled by vl-convert-python %(vlc_version)s
%(bundle)s
    </script>
    <style>
        body { font-family: sans-serif; }
        div.vega-embed { margin: 12px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_template() -> str:
    import vl_convert

    bundle = vl_convert.javascript_bundle(BUNDLE_SNIPPET, vl_version=VEGA_LITE_VERSION)
    if "</script" in bundle:
        raise ValueError("the vl-convert bundle contains '</script', which would end the inline script early")
    return PAGE % {"bundle": bundle, "vlc_version": getattr(vl_convert, "__version__", "?")}


def write_offline_template(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(offline_template(), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", default=Path("build/plots/offline-template.html"))
    print(write_offline_template(parser.parse_args().out))


if __name__ == "__main__":
    run_main(main)
