"""Self-contained HTML pages for the inspect pictures: one file, no network, no scripts from
elsewhere (images inline as data URIs, styles inline), safe to open from disk or attach to a mail.

What it owns: the page frame (`html_page`), inline images (`img_tag`), escaping, token strips
coloured by a value (`token_strip`). What it leaves to others: what each page shows.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from typing import Any

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem;
       color: #1d1d1f; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .2rem .45rem; }
th { background: #f5f5f7; } img { max-width: 100%; }
.tok { font-family: ui-monospace, monospace; white-space: pre; border-radius: 3px; padding: 0 1px; }
.note { color: #666; }
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def show_token(text: str) -> str:
    """A token as people can see it: spaces and newlines made visible."""
    return text.replace(" ", "\u00b7").replace("\n", "\u21b5")


def plot_label(text: str) -> str:
    """A token as a figure label: show_token, and control characters as escapes (fonts have no
    glyph for them)."""
    return "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
        for c in show_token(text)
    )


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def token_strip(
    tokens: Sequence[str], values: Sequence[float], *, title: str = "", mark: int | None = None
) -> str:
    """Tokens in a row, each shaded by its value in [0, 1] (clipped), its value on hover; the
    token at index `mark` (if any) outlined."""
    spans = []
    for i, (t, v) in enumerate(zip(tokens, values, strict=True)):
        a = min(max(float(v), 0.0), 1.0)
        outline = "outline: 2px solid #000; " if i == mark else ""
        spans.append(
            f'<span class="tok" style="{outline}background: rgba(230, 85, 13, {a:.3f})" '
            f'title="{esc(f"{v:.4g}")}">{esc(show_token(t))}</span>'
        )
    head = f"<div class='note'>{esc(title)}</div>" if title else ""
    return head + "<div>" + "".join(spans) + "</div>"


def html_page(
    title: str, sections: Sequence[tuple[str, str]], *, data: dict[str, Any] | None = None
) -> str:
    """A whole page: the title, then each (heading, trusted HTML body) section; `data` (if any)
    is embedded as JSON in a non-executed script tag for anyone who wants the numbers."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for heading, body in sections:
        parts.append(f"<h2>{esc(heading)}</h2>{body}")
    if data is not None:
        blob = json.dumps(data).replace("</", "<\\/")  # no early end of the script element
        parts.append(f"<script type='application/json' id='data'>{blob}</script>")
    parts.append("</body></html>")
    return "".join(parts)
