"""The report's single HTML page: inline CSS and a few lines of inline script (table sorting), no
external assets, so it opens from disk anywhere. Every section reads report.json's dict only.
"""

from __future__ import annotations

from html import escape

from tinycnn.analysis.html_sections import (
    SECTIONS,
    ambiguous,
    classes,
    confusion,
    curves,
    ensemble,
    filters,
    summary,
    tsne_section,
)

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;
 background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
h1{font-size:24px;margin:18px 0 4px} h2{font-size:19px;margin:34px 0 8px;border-bottom:1px solid
 #ddd;padding-bottom:4px} h3{font-size:16px;margin:18px 0 6px}
nav{font-size:14px;margin:6px 0 10px} nav a{margin-right:14px;white-space:nowrap}
.note{color:#555;font-size:13.5px;max-width:900px}
table{border-collapse:collapse;font-size:13.5px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f0f0f0}
table.sortable th{cursor:pointer;user-select:none;position:sticky;top:0}
table.sortable th:after{content:" \\2195";color:#aaa}
table.sortable th[data-dir=asc]:after{content:" \\25B2";color:#333}
table.sortable th[data-dir=desc]:after{content:" \\25BC";color:#333}
.scroll{max-height:460px;overflow:auto;display:inline-block;border:1px solid #ddd}
img.fig{max-width:100%;height:auto;background:#fff;border:1px solid #ddd}
.strip{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 10px}
figure.ex{margin:0;width:100px;font-size:11.5px;text-align:center;line-height:1.25}
figure.ex img{width:96px;height:96px;border:3px solid #aaa;display:block;margin:0 auto 2px}
figure.ex.right img{border-color:#2a9d3a} figure.ex.wrong img{border-color:#d7263d}
.paper{color:#6a3d9a} .ours{font-weight:600} code{white-space:nowrap}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.dataset.dir === "asc" ? "desc" : "asc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      var numeric = th.dataset.type === "number", sign = dir === "asc" ? 1 : -1;
      var key = function (row) {
        var cell = row.cells[col], v = cell.dataset.value !== undefined ? cell.dataset.value
          : cell.textContent.trim();
        if (!numeric) return v.toLowerCase();
        var n = parseFloat(v); return isNaN(n) ? -Infinity : n;
      };
      var body = table.tBodies[0];
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * sign;
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def page(data: dict) -> str:
    """The whole index.html for a report.json dict."""
    nav = " ".join(f'<a href="#{k}">{escape(t)}</a>' for k, t in SECTIONS)
    parts = [
        summary(data),
        curves(data),
        tsne_section(data),
        filters(data),
        classes(data),
        confusion(data),
        ensemble(data),
        ambiguous(data),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tinycnn report: {escape(', '.join(data['members']))}</title>"
        f"<style>{STYLE}</style></head>\n<body><main>\n"
        f"<h1>tinycnn analysis report</h1>\n<nav>{nav}</nav>\n"
        + "".join(parts)
        + f'<p class="note">Every number on this page is in report.json. Made by tinycnn '
        f"{escape(data['tinycnn_version'])} on {escape(data['created'])} in "
        f"{data['timings']['total']:.0f} s.</p>\n"
        f"</main><script>{SCRIPT}</script></body></html>\n"
    )
