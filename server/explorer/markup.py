"""HTML that cannot be injected: a markup type, escaping templates and the explorer's page shell.

Every value placed in a page goes through :func:`render` (or :func:`escape`), which escapes it
unless it is already :class:`Markup`: text from the log, the request or a stored record is
never trusted as HTML. Markup is made only by :func:`render` from a template written in this
package, by :func:`join` of markup, or by :func:`escape`. Templates are
:class:`string.Template` strings (``$name`` placeholders), so a ``$`` inside a value is never
read as a placeholder.

Pages are HTML5 with no inline script or style (the Content-Security-Policy of
:data:`SECURITY_HEADERS` forbids both); data for the page's script travels in ``data-``
attributes, escaped like everything else.

Standard library only: the witness's page (:mod:`witness.explorer`) uses this module too.

Example::

    >>> str(render("<p>$who</p>", who="<script>"))
    '<p>&lt;script&gt;</p>'
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from string import Template
from typing import Final

__all__ = [
    "SECURITY_HEADERS",
    "Markup",
    "NavItem",
    "escape",
    "format_time_ms",
    "join",
    "page",
    "render",
    "short_hex",
]

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
"""Headers of every explorer page: no inline script or style, no framing, and no referrer
to other sites (same-origin keeps the ``Origin`` header that sign-in forms are checked by)."""


class Markup(str):
    """Text that is already safe HTML; :func:`render` inserts it unchanged."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """Return ``value`` as safe HTML: markup unchanged, anything else escaped (quotes too).

    ``None`` becomes the empty string; other values are converted with ``str``. Example:
    ``escape('a"<b>')`` is ``'a&quot;&lt;b&gt;'``.
    """
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True))


def render(template: str, **values: object) -> Markup:
    """Fill ``template``'s ``$name`` placeholders with escaped ``values``.

    Requires every placeholder to be given. Raises KeyError naming a missing one.
    """
    return Markup(Template(template).substitute({k: escape(v) for k, v in values.items()}))


def join(parts: Iterable[object], separator: str = "") -> Markup:
    """Return the escaped ``parts`` joined by ``separator`` (itself trusted markup)."""
    return Markup(separator.join(escape(part) for part in parts))


def short_hex(data: bytes, length: int = 8) -> str:
    """Return the first ``length`` lowercase hex digits of ``data`` followed by an ellipsis."""
    text = data.hex()
    return text if len(text) <= length else text[:length] + "…"


def format_time_ms(ms: int | None) -> str:
    """Return a POSIX time in milliseconds as ISO 8601 UTC to the second, or "unknown"."""
    if ms is None:
        return "unknown"
    try:
        moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "unknown"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class NavItem:
    """One link of the page's navigation bar."""

    href: str
    label: str
    key: str


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>$title — $site</title>
<link rel="stylesheet" href="$css">
$head</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="site">
<p class="brand"><a href="$home">$site</a></p>
<nav aria-label="Explorer sections"><ul>$nav</ul></nav>
$account</header>
<main id="main" tabindex="-1">
<h1>$title</h1>
$body
</main>
<footer class="site"><p>$footer</p></footer>
</body>
</html>
"""

_EMPTY: Final = Markup("")

_NAV_ITEM = '<li><a href="$href"$current>$label</a></li>'


def page(
    *,
    title: str,
    body: Markup,
    site: str,
    home: str,
    css: str,
    nav: Iterable[NavItem] = (),
    current: str = "",
    scripts: Iterable[str] = (),
    account: Markup = _EMPTY,
    footer: str = "",
) -> Markup:
    """Return a whole HTML document: header with navigation, ``body`` in ``<main>``, footer.

    ``current`` is the key of the navigation item marked ``aria-current="page"``; ``scripts``
    are URLs loaded with ``defer`` (same origin, as the Content-Security-Policy requires).
    """
    items = join(
        render(
            _NAV_ITEM,
            href=item.href,
            label=item.label,
            current=Markup(' aria-current="page"') if item.key == current else Markup(""),
        )
        for item in nav
    )
    head = join(render('<script src="$src" defer></script>\n', src=src) for src in scripts)
    return render(
        _PAGE,
        title=title,
        site=site,
        css=css,
        head=head,
        home=home,
        nav=items,
        account=account,
        body=body,
        footer=footer,
    )
