"""The fixed parts of ``report.html``: stylesheet, gallery filter script, page skeleton.

Nothing here comes from a run; :mod:`dermcam.report.html` fills the skeleton with
escaped run data. The page loads nothing from outside itself: its
Content-Security-Policy allows only ``data:`` images, the inline stylesheet and
the one inline script below (by its SHA-256 hash), so a browser refuses any
network request even if a string slipped through unescaped.
"""

from __future__ import annotations

import base64
import hashlib

CSS = """
:root { --fg:#1d2329; --muted:#5b6670; --line:#d5dbe1; --bg:#ffffff; --panel:#f5f7f9;
  --accent:#1f5f99; --warn-bg:#fff6e0; --warn-line:#d99a00; --bad:#b3261e; --good:#1e7b34; }
* { box-sizing: border-box; }
html { font-size: 15px; }
body { margin: 0; color: var(--fg); background: var(--bg); line-height: 1.5;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.35rem; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--accent); }
h3 { font-size: 1.1rem; margin: 24px 0 6px; }
h4 { font-size: 1rem; margin: 16px 0 4px; }
p { margin: 6px 0; }
.sub { color: var(--muted); margin: 0 0 8px; }
nav { margin: 10px 0 12px; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; font-weight: 600; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.92em; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.9rem; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { display: block; font-size: 0.82em; color: var(--muted); }
tr.baseline td { color: var(--muted); font-style: italic; }
.scroll { overflow-x: auto; }
.kv th { width: 220px; }
.missing { border: 1px solid var(--warn-line); border-left: 6px solid var(--warn-line);
  background: var(--warn-bg); padding: 8px 12px; margin: 10px 0; }
.missing b { color: #7a5200; }
.note { color: var(--muted); font-size: 0.9rem; }
.caution { border-left: 6px solid var(--bad); padding: 0.3rem 0.6rem; }
.pass { color: var(--good); font-weight: 700; }
.fail { color: var(--bad); font-weight: 700; }
.undetermined { color: #7a5200; font-weight: 700; }
.sig { font-weight: 700; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px;
  align-items: start; }
.figs.one { grid-template-columns: minmax(0, 960px); }
figure { margin: 8px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
figcaption { font-size: 0.85rem; color: var(--muted); }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { flex: 0 1 calc(50% - 6px); min-width: 320px; border: 1px solid var(--line); border-radius: 4px;
  padding: 6px; background: var(--panel); margin: 0; }
.card img { width: 100%; image-rendering: auto; border: 0; }
.card figcaption { color: var(--fg); }
.tag { display: inline-block; font-size: 0.75rem; padding: 0 6px; border-radius: 8px;
  background: #dde7f2; margin-right: 4px; }
.tag.missed { background: #f6d5d2; }
.filters { margin: 8px 0 12px; }
.filters label { margin-right: 14px; }
[hidden] { display: none !important; }
ul.sentences li { margin: 4px 0; }
dl.defs dt { font-weight: 600; margin-top: 8px; }
dl.defs dd { margin: 0 0 0 18px; }
footer { color: var(--muted); font-size: 0.85rem; padding: 24px; border-top: 1px solid var(--line); margin-top: 40px; }
"""

#: Gallery filter: each ``select.filter`` names a card data attribute in ``data-key``;
#: a card stays visible when, for every select with a value, that value is one of the
#: space-separated words in the card's attribute.
SCRIPT = (
    "(function(){var s=document.querySelectorAll('select.filter');"
    "function f(){var n=0;document.querySelectorAll('.card').forEach(function(c){"
    "var ok=true;s.forEach(function(t){var v=t.value;"
    "if(v&&(c.dataset[t.dataset.key]||'').split(' ').indexOf(v)<0)ok=false;});"
    "c.hidden=!ok;if(ok)n++;});var o=document.getElementById('gallery-count');"
    "if(o)o.textContent=n;}s.forEach(function(t){t.onchange=f;});})();"
)


def script_hash(script: str = SCRIPT) -> str:
    """CSP source expression (``'sha256-...'``) allowing exactly ``script`` inline."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def csp() -> str:
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src {script_hash()}; base-uri 'none'; form-action 'none'")


#: The page skeleton. ``{title}``, ``{header}``, ``{body}`` and ``{footer}`` are
#: HTML built from escaped strings; ``{csp}``, ``{css}``, ``{script}`` are the constants above.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="generator" content="dermcam">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
{header}
</header>
<main>
{body}
</main>
<footer>
{footer}
</footer>
<script>{script}</script>
</body>
</html>
"""


def page(title: str, header: str, body: str, footer: str) -> str:
    """The whole document; every argument must already be escaped HTML."""
    return PAGE.format(title=title, header=header, body=body, footer=footer, csp=csp(),
                       css=CSS, script=SCRIPT)
