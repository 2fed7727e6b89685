"""``index.html``: the charts and a table of per-symbol figures, one self-contained page (no script, no
external style or font), readable from the directory it is in (``file://``) or any static web server.

Every text that comes from the database (symbols, the table's name, gap reasons) is HTML-escaped, and
every file name is URL-quoted, so a symbol such as ``A<B`` or ``x"y`` can neither break the page nor
point a link elsewhere.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.sym, th.sym, td.gaps { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #666; font-size: 0.9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _src(name: str) -> str:
    """A file of the report's directory as a relative URL, in an attribute."""
    return _e(quote(name))


def _num(value: object, fmt: str = ",") -> str:
    if value is None:
        return "&ndash;"
    return _e(format(value, fmt))


def index_html(summary: Mapping[str, Any]) -> str:
    """The page for ``summary`` (as written to ``summary.json``): its ``charts`` are the image files."""
    charts: Mapping[str, str] = summary["charts"]
    symbols: Mapping[str, Mapping[str, Any]] = summary["symbols"]
    rng = summary["range"]
    out: list[str] = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>l2rec report: {_e(summary['table'])}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
        f"<h1>What was recorded: {_e(summary['table'])}</h1>",
        f'<p class="note">Database {_e(summary["database"])}; exchange time {_e(rng["start"])} to {_e(rng["end"])} '
        f"({rng['minutes']:,} minutes); {summary['rows']:,} rows; generated {_e(summary['generated_at'])}. "
        'Figures as JSON: <a href="summary.json">summary.json</a>.</p>',
        "<h2>Per symbol</h2>", "<table>",
        '<tr><th class="sym">symbol</th><th>rows</th><th>first</th><th>last</th><th>coverage %</th>'
        "<th>gaps</th><th class=\"sym\">gaps by reason</th><th>latency p50 ms</th><th>latency p99 ms</th></tr>",
    ]
    for name, s in symbols.items():
        reasons = ", ".join(f"{_e(r)} {n}" for r, n in s["gaps"].items()) or "&ndash;"
        lat = s.get("latency") or {}
        link = f'<a href="#{_e(_anchor(name))}">{_e(name)}</a>' if s.get("chart") else _e(name)
        out.append(
            f'<tr><td class="sym">{link}</td><td>{_num(s["rows"])}</td><td>{_e(s["first_timestamp"])}</td>'
            f'<td>{_e(s["last_timestamp"])}</td><td>{_num(s["coverage_percent"], "g")}</td>'
            f'<td>{_num(s["gaps_total"])}</td><td class="gaps">{reasons}</td>'
            f'<td>{_num(lat.get("p50_ms"), "g")}</td><td>{_num(lat.get("p99_ms"), "g")}</td></tr>')
    out.append("</table>")
    out.append('<p class="note">Coverage: the share of the range\'s minutes holding at least one row. Gaps: rows of '
               "<code>l2_gaps</code> (the recorder's clock; a replay's gaps lie at the time it ran, outside the "
               "charts). Latency: receive time minus exchange time, where the rows have a receive time.</p>")
    if "coverage" in charts:
        out += ["<h2>Coverage</h2>", f'<img src="{_src(charts["coverage"])}" alt="coverage per symbol and hour">']
    out.append("<h2>Receive latency</h2>")
    if "latency" in charts:
        out.append(f'<img src="{_src(charts["latency"])}" alt="receive latency histogram">')
    else:
        out.append('<p class="note">No receive times in these rows (replayed rows carry none).</p>')
    for name, s in symbols.items():
        chart = s.get("chart")
        if chart:
            out += [f'<h2 id="{_e(_anchor(name))}">{_e(name)}</h2>',
                    f'<img src="{_src(chart)}" alt="{_e(name)}: mid price, imbalance and rows per minute">']
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _anchor(symbol: str) -> str:
    return "sym-" + quote(symbol, safe="")
