"""The validation report: JSON for machines and people, HTML rendered by GX's Data Docs views."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tailseg.textfile import write_atomically

logger = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """A JSON-serialisable copy: numpy scalars to Python, NaN to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def render_gx_html(result) -> str:
    """One GX validation result as a Data Docs validation page (the same renderer and Jinja view
    that `build_data_docs` uses, without needing a filesystem-backed context)."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    for outcome in result.results:  # GX's renderer rejects numpy scalars in observed values.
        if outcome.result and "observed_value" in outcome.result:
            outcome.result["observed_value"] = plain(outcome.result["observed_value"])
    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def render_html(report: dict, pages: list[tuple[str, str]]) -> str:
    """A single self-contained page: the verdict, quarantined chips, then each GX page in an
    iframe (the GX pages load their CSS/JS from CDNs; offline they show unstyled)."""
    esc = html.escape
    verdict = "usable" if report["usable"] else "NOT usable"
    rows = "".join(
        f"<tr><td>{esc(chip['chip_id'])}</td><td>{esc(f['check'])}</td>"
        f"<td>{esc(f['message'])}</td></tr>"
        for chip in report["quarantined"] for f in chip["failures"])
    dataset = "".join(f"<li><b>{esc(f['check'])}</b> ({esc(f['severity'])}): "
                      f"{esc(f['message'])}</li>"
                      for f in report["dataset_failures"] + report["warnings"])
    frames = "".join(f"<h2>{esc(title)}</h2><iframe style='width:100%;height:900px;border:0' "
                     f"srcdoc=\"{esc(page, quote=True)}\"></iframe>" for title, page in pages)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tailseg validation"
            f"</title></head><body style='font-family:sans-serif'>"
            f"<h1>Dataset validation: {esc(report['data_dir'])} is {verdict}</h1>"
            f"<p>{report['n_valid']} valid, {report['n_quarantined']} quarantined of "
            f"{report['n_chips']} chips; suites {esc(', '.join(report['suites']))}.</p>"
            f"<h2>Dataset checks</h2><ul>{dataset or '<li>all passed</li>'}</ul>"
            f"<h2>Quarantined chips</h2><table border='1' cellpadding='4'><tr><th>chip</th>"
            f"<th>check</th><th>message</th></tr>{rows}</table>{frames}</body></html>")


def write_reports(result, json_path: str | Path | None, html_path: str | Path | None) -> None:
    """Store result.report as JSON and result.html, each only when a path is given."""
    if json_path:
        write_atomically(json_path, json.dumps(result.report, indent=2) + "\n")
    if html_path:
        write_atomically(html_path, result.html)
