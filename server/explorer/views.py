"""The log's explorer pages: server-rendered HTML over one :class:`server.log.LogService`.

==========================================  ====================================================
route (under the prefix, ``/explorer``)     page
==========================================  ====================================================
GET  ``/``                                  overview: checkpoint, witnesses, policy, growth,
                                            ingestion rate, sequencing latency
GET  ``/token``                             "my token": the reference is computed in the
                                            browser; ``?token_ref=`` lists events without JS
GET  ``/token/events.json?token_ref=``      the token's events for the page's script (paged)
GET  ``/entry/<index>`` (``/entry?index=``)  one entry, its leaf hash, its inclusion proof drawn
GET  ``/consistency?first=M&second=N``      a consistency proof drawn and verified
GET  ``/lookup?kind=..&value=..&after=..``  lookups by client, subject, type, token reference
GET, POST ``/signin``; POST ``/signout``    reader sign-in (see :mod:`server.explorer.access`)
GET  ``/static/<name>``                     the stylesheet and script (versioned names)
==========================================  ====================================================

Plus ``GET /`` of the log, which redirects to the overview. Every page works without
JavaScript; the script only adds the checks done in the browser (signatures with WebCrypto,
RFC 9162 proof verification, token references). Every value shown is escaped
(:mod:`server.explorer.markup`), every page carries the headers of
:data:`~server.explorer.markup.SECURITY_HEADERS`, and what a visitor may read follows the
log's own rules (:mod:`server.explorer.access`). The server checks each proof it draws too and
says so, so the page is useful without the script; only the browser's own check is
independent of the server.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from client.tokens import is_token_ref
from merkle.checkpoint import Checkpoint, parse_checkpoint, parse_decimal
from merkle.cosignature import cosignature_timestamp
from merkle.errors import MalformedError, MerkleError, ProofError
from merkle.hashing import leaf_hash
from merkle.note import parse_note
from merkle.policy import Policy, format_policy, verify_checkpoint
from merkle.tree import MAX_TREE_SIZE, Node, verify_consistency, verify_inclusion
from server.codec import CodecError, decode_deterministic, to_json_compatible
from server.explorer.access import COOKIE_NAME, SESSION_SECONDS, Access, ReadRules, Viewer
from server.explorer.assets import Assets, load_assets
from server.explorer.markup import (
    SECURITY_HEADERS,
    Markup,
    NavItem,
    format_time_ms,
    join,
    page,
    render,
    short_hex,
)
from server.explorer.stats import RateMeter, counter_value, histogram_buckets, latency_summary
from server.explorer.svg import consistency_picture, growth_chart, inclusion_picture
from server.log import LogService
from server.storage.base import OAuthStorage, StorageError

__all__ = ["DEFAULT_PREFIX", "Explorer"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "/explorer"
"""Where the explorer is served on the log."""

LOOKUP_KINDS: Final = ("client_id", "subject", "type", "token_ref")
"""Lookup kinds offered on the lookup page, as the log's ``GET /v1/lookup`` names them."""

_KIND_LABELS: Final = {
    "client_id": "Client ID",
    "subject": "Subject (pseudonym)",
    "type": "Event type",
    "token_ref": "Token reference",
}
PAGE_SIZE: Final = 25
"""Results per lookup page."""

TOKEN_PAGE_SIZE: Final = 100
"""Events per page of ``token/events.json``."""

HISTORY_POINTS: Final = 32
"""Checkpoints sampled from the history for the growth chart."""

_MAX_FORM_BYTES: Final = 4096
_MAX_VALUE_BYTES: Final = 512


class _PageError(Exception):
    """A request the explorer answers with an error page: status, title and message."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


@dataclass(frozen=True, slots=True)
class _Cosigner:
    name: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class _Witnessing:
    """What the published checkpoint's signatures say under the policy."""

    cosigners: tuple[_Cosigner, ...]
    quorum_met: bool | None
    reason: str


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decimal(raw: str | None, what: str, maximum: int = MAX_TREE_SIZE) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return parse_decimal(raw, what=what, maximum=maximum)
    except MalformedError:
        raise _PageError(
            400, "Bad request", f"{what} must be a whole number written plainly (like 42)"
        ) from None


def _same_origin(request: Request) -> bool:
    """Tell whether a form post comes from this site (Origin, when sent, must match)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def _json_response(body: Any, status: int = 200) -> Response:
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(
        content,
        status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _value_html(value: object, depth: int = 0) -> Markup:
    """Render a decoded (JSON-compatible) value as nested definition lists, escaped."""
    if isinstance(value, dict):
        if not value:
            return Markup("<code>{}</code>")
        items = join(
            render("<dt>$k</dt><dd>$v</dd>", k=key, v=_value_html(item, depth + 1))
            for key, item in value.items()
        )
        return render('<dl class="facts">$items</dl>', items=items)
    if isinstance(value, list):
        if not value:
            return Markup("<code>[]</code>")
        return render(
            "<ul>$items</ul>",
            items=join(render("<li>$v</li>", v=_value_html(item, depth + 1)) for item in value),
        )
    if isinstance(value, str):
        return render("<code>$v</code>", v=value)
    return render("<code>$v</code>", v=json.dumps(value))


def _seconds(value: float | None) -> str:
    if value is None:
        return "no data yet"
    if math.isinf(value):
        return "over the largest bucket"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


class Explorer:
    """The explorer of one log: its routes, and what they read from the service.

    ``policy`` is the log's witness policy (``None``: no witnesses); ``rules`` and ``storage``
    decide reading and lookups (``storage`` ``None``: the log has no OAuth layer, so no
    lookups and no readers).
    """

    def __init__(
        self,
        service: LogService,
        *,
        policy: Policy | None = None,
        rules: ReadRules | None = None,
        storage: OAuthStorage | None = None,
        prefix: str = DEFAULT_PREFIX,
        assets: Assets | None = None,
        rate_meter: RateMeter | None = None,
        api_base: str = "",
    ) -> None:
        self.service = service
        self.api_base = api_base.rstrip("/")
        """Path of the log's API that pages link to (``""``; ``/logs/<name>`` among several)."""
        self.policy = policy
        self.rules = rules or ReadRules(lookups=storage is not None)
        self.access = Access(self.rules, storage)
        self.storage = storage
        self.prefix = prefix.rstrip("/")
        self.assets = assets or load_assets()
        self.rate = rate_meter or RateMeter()
        self._growth_cache: tuple[int, list[tuple[int, int]]] | None = None

    # -- routes -------------------------------------------------------------------------------

    def routes(self, *, root_redirect: bool = True) -> list[BaseRoute]:
        """Return the explorer's routes (and ``GET /`` redirecting to it when asked)."""
        p = self.prefix
        routes: list[BaseRoute] = [
            Route(p, self._page(self.overview), methods=["GET"]),
            Route(p + "/", self._page(self.overview), methods=["GET"]),
            Route(p + "/token", self._page(self.token), methods=["GET"]),
            Route(p + "/token/events.json", self.token_events, methods=["GET"]),
            Route(p + "/entry", self._page(self.entry_form), methods=["GET"]),
            Route(p + "/entry/{index}", self._page(self.entry), methods=["GET"]),
            Route(p + "/consistency", self._page(self.consistency), methods=["GET"]),
            Route(p + "/lookup", self._page(self.lookup), methods=["GET"]),
            Route(p + "/signin", self._page(self.signin_form), methods=["GET"]),
            Route(p + "/signin", self._page(self.signin), methods=["POST"]),
            Route(p + "/signout", self._page(self.signout), methods=["POST"]),
            Route(p + "/static/{name}", self.assets.serve, methods=["GET"]),
        ]
        if root_redirect:
            routes.append(Route("/", self.root_redirect, methods=["GET"]))
        return routes

    async def root_redirect(self, request: Request) -> Response:
        """``GET /``: send visitors to the overview."""
        return RedirectResponse(self.prefix, 307)

    def _page(
        self, handler: Callable[[Request, Viewer], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a page handler: find the viewer, turn errors into pages, add the headers."""

        async def run(request: Request) -> Response:
            viewer = Viewer(None, self.rules.public_entries, False)
            try:
                viewer = await self.access.viewer(request)
                response = await handler(request, viewer)
            except _PageError as error:
                response = self._error(request, viewer, error)
            except (StorageError, LookupError) as exc:
                log.warning("explorer page %s failed: %s", request.url.path, type(exc).__name__)
                response = self._error(
                    request,
                    viewer,
                    _PageError(503, "Unavailable", "The log's storage cannot be read right now."),
                )
                response.headers["Retry-After"] = "1"
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return run

    # -- page shell --------------------------------------------------------------------------

    def _nav(self) -> list[NavItem]:
        p = self.prefix
        items = [
            NavItem(p, "Overview", "overview"),
            NavItem(p + "/token", "My token", "token"),
            NavItem(p + "/consistency", "Consistency", "consistency"),
        ]
        if self.rules.lookups:
            items.append(NavItem(p + "/lookup", "Lookups", "lookup"))
        return items

    def _account(self, request: Request, viewer: Viewer) -> Markup:
        if not self.rules.lookups:
            return Markup("")
        if viewer.reader is not None:
            return render(
                '<div class="account"><span>Reader: <strong>$name</strong></span>'
                '<form method="post" action="$action"><button class="secondary" type="submit">'
                "Sign out</button></form></div>\n",
                name=viewer.reader,
                action=self.prefix + "/signout",
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return render(
            '<div class="account"><a href="$href">Reader sign-in</a></div>\n',
            href=self.prefix + "/signin?" + urllib.parse.urlencode({"next": target}),
        )

    def _html(
        self,
        request: Request,
        viewer: Viewer,
        *,
        title: str,
        body: Markup,
        current: str = "",
        status: int = 200,
        script: bool = False,
    ) -> Response:
        document = page(
            title=title,
            body=body,
            site="Etch explorer",
            home=self.prefix,
            css=self.prefix + "/static/" + self.assets.css.name,
            nav=self._nav(),
            current=current,
            scripts=[self.prefix + "/static/" + self.assets.js.name] if script else [],
            account=self._account(request, viewer),
            footer=f"Log {self.service.origin} · vkey {self.service.vkey}",
        )
        return Response(document, status, media_type="text/html; charset=utf-8")

    def _error(self, request: Request, viewer: Viewer, error: _PageError) -> Response:
        body = render('<p class="notice warn">$message</p>', message=error.message)
        if error.status == 401 and self.rules.lookups:
            body = render(
                '$body<p><a href="$href">Sign in as a reader</a></p>',
                body=body,
                href=self.prefix + "/signin",
            )
        return self._html(request, viewer, title=error.title, body=body, status=error.status)

    # -- shared reads ------------------------------------------------------------------------

    def _witness_keys(self) -> str:
        if self.policy is None:
            return "[]"
        return json.dumps([{"name": w.name, "vkey": w.vkey} for w in self.policy.witnesses])

    def _witnessing(self, note: bytes) -> _Witnessing:
        """Check the published note's cosignatures against the policy's witnesses."""
        if self.policy is None:
            return _Witnessing((), None, "this log has no witness policy")
        parsed = parse_note(note)
        text = parsed.text.encode("utf-8")
        cosigners: list[_Cosigner] = []
        for witness in self.policy.witnesses:
            verifier = witness.verifier
            for signature in parsed.signatures:
                if signature.name != verifier.name or signature.key_id != verifier.key_id:
                    continue
                try:
                    if verifier.verify(text, signature.signature):
                        cosigners.append(_Cosigner(witness.name, cosignature_timestamp(signature)))
                except MerkleError:
                    continue
                break
        try:
            verify_checkpoint(self.policy, note)
        except MerkleError as exc:
            return _Witnessing(tuple(cosigners), False, str(exc))
        return _Witnessing(tuple(cosigners), True, f"quorum {self.policy.quorum!r} is met")

    async def _log_time(self, size: int) -> int | None:
        """Log time of the newest entry of a tree of ``size`` (when its checkpoint was signed)."""
        if size == 0:
            return None
        meta = await self.service.storage.read_entry_meta(size - 1)
        return None if meta is None else meta[1]

    async def _growth(self, size: int) -> list[tuple[int, int]]:
        """Sample the checkpoint history: up to :data:`HISTORY_POINTS` (log time, size) points."""
        cached = self._growth_cache
        if cached is not None and cached[0] == size:
            return cached[1]
        storage = self.service.storage
        points: dict[int, int] = {}
        for step in range(HISTORY_POINTS):
            after = size * step // HISTORY_POINTS - 1
            notes = await storage.checkpoint_history(after_size=after, limit=1)
            if not notes:
                break
            try:
                found = parse_checkpoint(parse_note(notes[0]).text).tree_size
            except MerkleError:
                continue
            if found == 0 or found > size or found in points:
                continue
            when = await self._log_time(found)
            if when is not None:
                points[found] = when
        if size and size not in points:
            when = await self._log_time(size)
            if when is not None:
                points[size] = when
        result = sorted((when, found) for found, when in points.items())
        self._growth_cache = (size, result)
        return result

    # -- overview ------------------------------------------------------------------------------

    async def overview(self, request: Request, viewer: Viewer) -> Response:
        """The log at a glance (see the module docstring)."""
        published = self.service.published
        if published is None:
            body = Markup('<p class="notice">No checkpoint has been published yet.</p>')
            return self._html(request, viewer, title="Overview", body=body, current="overview")
        checkpoint = published.checkpoint
        signed_at = await self._log_time(checkpoint.tree_size)
        witnessing = self._witnessing(published.note)
        growth = await self._growth(checkpoint.tree_size)
        sections = [
            self._checkpoint_section(published.note, checkpoint, signed_at),
            self._witness_section(witnessing),
            render(
                '<section aria-labelledby="growth-h"><h2 id="growth-h">Growth</h2>$chart'
                "<details><summary>Checkpoints sampled for the chart</summary>$table</details>"
                "</section>",
                chart=growth_chart(growth),
                table=self._growth_table(growth),
            ),
            self._activity_section(),
            self._find_section(),
        ]
        return self._html(
            request,
            viewer,
            title="Overview",
            body=join(sections, "\n"),
            current="overview",
            script=True,
        )

    def _checkpoint_section(
        self, note: bytes, checkpoint: Checkpoint, signed_at: int | None
    ) -> Markup:
        committed = self.service.tree_size
        pending = Markup("")
        if committed > checkpoint.tree_size:
            pending = render(
                '<p class="note">$n newer entries are sequenced and await witness'
                " cosignatures (committed tree size $size).</p>",
                n=committed - checkpoint.tree_size,
                size=committed,
            )
        return render(
            '<section aria-labelledby="cp-h"><h2 id="cp-h">Latest checkpoint</h2>'
            '<div class="cards">'
            '<div class="card"><div>Tree size</div>'
            '<div class="value" id="tree-size">$size</div></div>'
            '<div class="card"><div>Last signed</div><div class="value">$when</div></div>'
            "</div>"
            '<dl class="facts"><dt>Origin</dt><dd><code id="origin">$origin</code></dd>'
            '<dt>Root hash (hex)</dt><dd><code id="root-hex">$root_hex</code></dd>'
            "<dt>Root hash (base64)</dt><dd><code>$root_b64</code></dd>"
            "<dt>Log key</dt><dd><code>$vkey</code></dd></dl>$pending"
            '<div class="checkpoint-verify" data-checkpoint="$note" data-vkey="$vkey"'
            ' data-witnesses="$witnesses"><p class="browser-status" role="status"></p>'
            '<noscript><p class="note">The server checked these signatures; enable JavaScript'
            " to check them in your browser too.</p></noscript></div>"
            "<details><summary>The signed checkpoint (C2SP signed note)</summary>"
            "<pre>$note</pre></details></section>",
            size=checkpoint.tree_size,
            when=format_time_ms(signed_at) if signed_at is not None else "no entries yet",
            origin=checkpoint.origin,
            root_hex=checkpoint.root_hash.hex(),
            root_b64=_b64(checkpoint.root_hash),
            vkey=self.service.vkey,
            pending=pending,
            note=note.decode("utf-8"),
            witnesses=self._witness_keys(),
        )

    def _witness_section(self, witnessing: _Witnessing) -> Markup:
        if self.policy is None:
            return Markup(
                '<section aria-labelledby="w-h"><h2 id="w-h">Witnesses</h2>'
                '<p class="note">This log publishes checkpoints without witnesses.</p></section>'
            )
        signed = {c.name: c.timestamp for c in witnessing.cosigners}
        rows = join(
            render(
                '<tr><th scope="row">$name</th><td>$state</td><td>$when</td>'
                "<td><code>$vkey</code></td></tr>",
                name=w.name,
                state=render('<span class="badge ok">✓ cosigned</span>')
                if w.name in signed
                else render('<span class="badge pending">not on this checkpoint</span>'),
                when=format_time_ms(signed[w.name] * 1000) if w.name in signed else "",
                vkey=w.vkey,
            )
            for w in self.policy.witnesses
        )
        quorum = (
            render('<p class="status ok" id="quorum">✓ Quorum met: $why</p>', why=witnessing.reason)
            if witnessing.quorum_met
            else render(
                '<p class="status bad" id="quorum">✗ Quorum not met: $why</p>',
                why=witnessing.reason,
            )
        )
        return render(
            '<section aria-labelledby="w-h"><h2 id="w-h">Witnesses</h2>$quorum'
            '<div class="table-wrap"><table><caption class="visually-hidden">Witnesses of the'
            ' policy and their cosignatures</caption><thead><tr><th scope="col">Witness</th>'
            '<th scope="col">Cosignature</th><th scope="col">Cosigned at</th>'
            '<th scope="col">Key</th></tr></thead><tbody>$rows</tbody></table></div>'
            "<details><summary>Policy (C2SP tlog-policy)</summary><pre>$policy</pre></details>"
            "</section>",
            quorum=quorum,
            rows=rows,
            policy=format_policy(self.policy),
        )

    def _growth_table(self, points: Sequence[tuple[int, int]]) -> Markup:
        rows = join(
            render("<tr><td>$when</td><td>$size</td></tr>", when=format_time_ms(t), size=s)
            for t, s in points
        )
        return render(
            '<div class="table-wrap"><table><thead><tr><th scope="col">Signed (log time)</th>'
            '<th scope="col">Tree size</th></tr></thead><tbody>$rows</tbody></table></div>',
            rows=rows,
        )

    def _activity_section(self) -> Markup:
        metrics = self.service.metrics
        rate = self.rate.observe(counter_value(metrics.submissions, outcome="new"))
        buckets, total, count = histogram_buckets(metrics.sequencing_latency)
        latency = latency_summary(buckets, total, count)
        per_second = (
            f"{rate.per_second:.2f} entries/s over the last {rate.window:.0f} s"
            if rate.per_second is not None
            else "measuring (reload in a few seconds)"
        )
        return render(
            '<section aria-labelledby="act-h"><h2 id="act-h">Activity of this server</h2>'
            '<div class="cards">'
            '<div class="card"><div>Ingestion rate</div><div class="value" id="rate">$rate</div>'
            '<div class="hint">$total new entries since the server started</div></div>'
            '<div class="card"><div>Sequencing latency</div>'
            '<div class="value" id="latency">$mean</div>'
            '<div class="hint">mean of $count submissions; median ≤ $p50, 95% ≤ $p95,'
            " 99% ≤ $p99</div></div></div></section>",
            rate=per_second,
            total=f"{rate.total:.0f}",
            mean=_seconds(latency.mean),
            count=latency.count,
            p50=_seconds(latency.p50),
            p95=_seconds(latency.p95),
            p99=_seconds(latency.p99),
        )

    def _find_section(self) -> Markup:
        return render(
            '<section aria-labelledby="find-h"><h2 id="find-h">Find an entry</h2>'
            '<form class="inline" method="get" action="$action">'
            '<div class="field"><label for="entry-index">Entry index</label>'
            '<input id="entry-index" name="index" type="number" min="0" inputmode="numeric"'
            ' required></div><button type="submit">Show entry</button></form></section>',
            action=self.prefix + "/entry",
        )

    # -- my token ------------------------------------------------------------------------------

    async def token(self, request: Request, viewer: Viewer) -> Response:
        """The "my token" page; with ``?token_ref=`` it also lists the events (no script)."""
        listing = Markup("")
        ref = request.query_params.get("token_ref")
        if ref is not None:
            if not is_token_ref(ref):
                raise _PageError(
                    400, "Bad request", "a token reference is 43 characters of base64url"
                )
            if not viewer.can_lookup("token_ref"):
                raise _PageError(
                    401, "Sign-in needed", "This log answers token lookups to readers only."
                )
            hits, _ = await self._lookup("token_ref", ref, -1, PAGE_SIZE)
            listing = self._results_table(hits, viewer, "Events of this token reference")
        published = self.service.published
        nojs = Markup("")
        if request.query_params.get("nojs") is not None:
            nojs = Markup(
                '<p class="notice warn">Your browser did not run this page\'s script, so the'
                " token could not be hashed here (and it was not sent anywhere). Compute its"
                " reference another way and paste that below.</p>"
            )
        body = render(
            '<section id="token-page" data-vkey="$vkey" data-witnesses="$witnesses"'
            ' data-checkpoint-url="$api/checkpoint" data-proof-url="$api/v1/proof/inclusion"'
            ' data-events-url="$events" data-entry-url="$entry" data-size="$size">'
            "<p>Paste an access or refresh token to see what the log recorded about it. Your"
            " browser computes the token's reference (a SHA-256 hash) and asks the log only"
            " for that: <strong>the token never leaves this page</strong>. Each event's"
            " inclusion proof and the checkpoint's signature are then checked here, in your"
            " browser.</p>$nojs"
            '<form id="token-form" class="inline" method="get" action="$action"'
            ' autocomplete="off"><input type="hidden" name="nojs" value="1">'
            '<div class="field"><label for="token-input">Token</label>'
            '<input id="token-input" type="password" autocomplete="off" spellcheck="false"'
            ' aria-describedby="token-help"><p class="hint" id="token-help">Kept in this page'
            " only; leading and trailing spaces are ignored.</p></div>"
            '<button type="submit">Find and verify</button></form>'
            '<div id="token-js" hidden><p>Token reference: <code id="token-ref"></code></p>'
            '<p id="token-summary"></p>'
            '<p id="token-status" class="status" role="status" aria-live="polite"></p>'
            '<ol id="token-events" class="timeline" aria-label="Events of this token"></ol>'
            "</div>"
            '<h2>Without JavaScript</h2><form class="inline" method="get" action="$action">'
            '<div class="field"><label for="token-ref-input">Token reference</label>'
            '<input id="token-ref-input" name="token_ref" type="text" autocomplete="off"'
            ' spellcheck="false" pattern="[A-Za-z0-9_\\-]{43}" value="$ref"'
            ' aria-describedby="ref-help"><p class="hint" id="ref-help">base64url(SHA-256('
            '"etch/token-ref/v1" 0x00 token)), 43 characters; the server lists the events but'
            " cannot verify them for you.</p></div>"
            '<button type="submit">List events</button></form>$listing</section>',
            vkey=self.service.vkey,
            witnesses=self._witness_keys(),
            api=self.api_base,
            events=self.prefix + "/token/events.json",
            entry=self.prefix + "/entry/",
            size=published.checkpoint.tree_size if published else 0,
            action=self.prefix + "/token",
            nojs=nojs,
            ref=ref if ref is not None and is_token_ref(ref) else "",
            listing=listing,
        )
        return self._html(
            request, viewer, title="My token", body=body, current="token", script=True
        )

    async def token_events(self, request: Request) -> Response:
        """``token/events.json?token_ref=..[&after=I]``: the token's events, for the script.

        Answers ``{"results": [{"index", "leaf_hash", "log_time"[, "entry", "event",
        "submitter"]}], "next": cursor or null, "readable": bool}``; contents only for
        viewers who may read entries. 400 for a malformed reference, 401 when token lookups
        are for readers only.
        """
        ref = request.query_params.get("token_ref", "")
        if not is_token_ref(ref):
            return _json_response({"detail": "token_ref must be a token reference"}, 400)
        try:
            after = _decimal(request.query_params.get("after"), "after")
            viewer = await self.access.viewer(request)
            if not viewer.can_lookup("token_ref"):
                return _json_response({"detail": "token lookups need a reader sign-in"}, 401)
            hits, cursor = await self._lookup(
                "token_ref", ref, -1 if after is None else after, TOKEN_PAGE_SIZE
            )
        except _PageError as error:
            return _json_response({"detail": error.message}, error.status)
        except StorageError:
            return _json_response({"detail": "the log's storage cannot be read now"}, 503)
        results: list[dict[str, Any]] = []
        for index, log_time, data in hits:
            item: dict[str, Any] = {
                "index": index,
                "leaf_hash": _b64(leaf_hash(data)),
                "log_time": log_time,
            }
            if viewer.can_read_entries:
                item["entry"] = _b64(data)
                decoded = _decode(data)
                if isinstance(decoded, dict):
                    item["event"] = decoded.get("event")
                    item["submitter"] = decoded.get("submitter")
            results.append(item)
        return _json_response(
            {"results": results, "next": cursor, "readable": viewer.can_read_entries}
        )

    async def _lookup(
        self, kind: str, value: str, after: int, limit: int
    ) -> tuple[list[tuple[int, int, bytes]], int | None]:
        """Return ``(index, log time, data)`` hits after ``after`` and the next cursor."""
        if self.storage is None:
            raise _PageError(404, "Not available", "This log offers no lookups.")
        hits = await self.storage.lookup_entries(kind, value, after=after, limit=limit)
        cursor = hits[-1].index if len(hits) == limit else None
        return [(h.index, h.log_time, h.data) for h in hits], cursor

    def _results_table(
        self, hits: Sequence[tuple[int, int, bytes]], viewer: Viewer, caption: str
    ) -> Markup:
        if not hits:
            return Markup('<p class="note" id="no-results">No entries found.</p>')
        rows: list[Markup] = []
        for index, log_time, data in hits:
            event: dict[str, Any] = {}
            if viewer.can_read_entries:
                decoded = _decode(data)
                inner = decoded.get("event") if isinstance(decoded, dict) else None
                event = inner if isinstance(inner, dict) else {}
            subject = event.get("sub")
            if isinstance(subject, dict):
                subject = subject.get("id") or subject.get("sub")
            rows.append(
                render(
                    '<tr><td><a href="$href">$index</a></td><td>$when</td><td>$type</td>'
                    "<td>$client</td><td>$subject</td></tr>",
                    href=f"{self.prefix}/entry/{index}",
                    index=index,
                    when=format_time_ms(log_time),
                    type=event.get("type", "—" if viewer.can_read_entries else "(readers only)"),
                    client=event.get("client_id", ""),
                    subject=subject if isinstance(subject, str) else "",
                )
            )
        return render(
            '<div class="table-wrap"><table id="results"><caption>$caption</caption><thead><tr>'
            '<th scope="col">Index</th><th scope="col">Logged</th><th scope="col">Type</th>'
            '<th scope="col">Client</th><th scope="col">Subject</th></tr></thead>'
            "<tbody>$rows</tbody></table></div>",
            caption=caption,
            rows=join(rows),
        )

    # -- an entry ----------------------------------------------------------------------------

    async def entry_form(self, request: Request, viewer: Viewer) -> Response:
        """``entry?index=N`` (the overview's form): redirect to ``entry/N``."""
        index = _decimal(request.query_params.get("index"), "index")
        if index is None:
            raise _PageError(400, "Bad request", "give the index of an entry")
        return RedirectResponse(f"{self.prefix}/entry/{index}", 303)

    async def entry(self, request: Request, viewer: Viewer) -> Response:
        """One entry: decoded event, leaf hash, inclusion proof drawn, receipt download."""
        index = _decimal(request.path_params["index"], "index")
        assert index is not None
        published = self.service.published
        if index >= self.service.tree_size:
            raise _PageError(404, "No such entry", f"The log has no entry {index} yet.")
        (leaf,) = await self.service.reader.node_hashes([Node(0, index)])
        content = Markup('<p class="note">The entry\'s contents are shown to readers only.</p>')
        data: bytes | None = None
        if viewer.can_read_entries:
            meta = await self.service.storage.read_entry_meta(index)
            if meta is not None:
                data = meta[0]
                content = render(
                    "<p>Logged at $when.</p>$value",
                    when=format_time_ms(meta[1]),
                    value=_value_html(_decode(data)),
                )
        if published is None or index >= published.checkpoint.tree_size:
            proof_section = Markup(
                '<p class="notice">This entry is sequenced but not yet covered by a published'
                " checkpoint: its proof and receipt follow once witnesses cosign.</p>"
            )
        else:
            proof_section = await self._proof_section(index, leaf, data, published.note)
        body = render(
            '<dl class="facts"><dt>Index</dt><dd id="entry-index-value">$index</dd>'
            '<dt>Leaf hash (hex)</dt><dd><code id="leaf-hash">$leaf_hex</code></dd>'
            "<dt>Leaf hash (base64)</dt><dd><code>$leaf_b64</code></dd></dl>"
            '<section aria-labelledby="ev-h"><h2 id="ev-h">Event</h2>$content</section>'
            "$proof",
            index=index,
            leaf_hex=leaf.hex(),
            leaf_b64=_b64(leaf),
            content=content,
            proof=proof_section,
        )
        return self._html(request, viewer, title=f"Entry {index}", body=body, script=True)

    async def _proof_section(
        self, index: int, leaf: bytes, data: bytes | None, note: bytes
    ) -> Markup:
        checkpoint = parse_checkpoint(parse_note(note).text)
        size = checkpoint.tree_size
        proof = await self.service.reader.inclusion_proof(index, size)
        try:
            verify_inclusion(leaf, index, size, proof, checkpoint.root_hash)
            server_check = Markup(
                '<p class="status ok" id="server-check">✓ Checked by the server: the proof'
                " leads from the leaf hash to the checkpoint's root.</p>"
            )
        except ProofError:
            server_check = Markup(
                '<p class="status bad" id="server-check">✗ The server could not verify this'
                " proof against its checkpoint.</p>"
            )
        rows = join(
            render("<tr><td>$n</td><td><code>$hex</code></td></tr>", n=number, hex=value.hex())
            for number, value in enumerate(proof, 1)
        )
        return render(
            '<section aria-labelledby="proof-h"><h2 id="proof-h">Inclusion proof</h2>'
            "<p>Against the published checkpoint of size $size (root <code>$root</code>).</p>"
            '$check<section id="entry-verify" data-index="$index" data-tree-size="$size"'
            ' data-leaf-hash="$leaf" data-proof="$proof" data-checkpoint="$note" data-vkey="$vkey"'
            ' data-witnesses="$witnesses" data-entry="$entry">'
            '<p class="browser-status" role="status" aria-live="polite"></p>'
            '<noscript><p class="note">Enable JavaScript to verify the proof in your browser.'
            "</p></noscript></section>$picture"
            '<div class="table-wrap"><table><caption>Proof hashes, from the leaf upward'
            '</caption><thead><tr><th scope="col">#</th><th scope="col">Hash (hex)</th>'
            "</tr></thead><tbody>$rows</tbody></table></div>"
            '<p><a class="button" id="receipt-download" href="$receipt" download="$filename">'
            "Download the receipt (C2SP tlog-proof)</a></p></section>",
            size=size,
            root=short_hex(checkpoint.root_hash, 16),
            check=server_check,
            index=index,
            leaf=_b64(leaf),
            proof=json.dumps([_b64(h) for h in proof]),
            note=note.decode("utf-8"),
            vkey=self.service.vkey,
            witnesses=self._witness_keys(),
            entry=_b64(data) if data is not None else "",
            picture=inclusion_picture(index, size, leaf, proof, checkpoint.root_hash),
            rows=rows,
            receipt=f"{self.api_base}/v1/receipt/{index}",
            filename=f"{index}.tlog-proof",
        )

    # -- consistency -----------------------------------------------------------------------------

    async def _signed_at(self, size: int) -> bytes | None:
        """Return the log-signed checkpoint note of exactly ``size`` from history, if any."""
        published = self.service.published
        if published is not None and published.checkpoint.tree_size == size:
            return published.note
        notes = await self.service.storage.checkpoint_history(after_size=size - 1, limit=1)
        if not notes:
            return None
        try:
            found = parse_checkpoint(parse_note(notes[0]).text)
        except MerkleError:
            return None
        return notes[0] if found.tree_size == size else None

    async def consistency(self, request: Request, viewer: Viewer) -> Response:
        """Pick two tree sizes; see the consistency proof between them drawn and verified."""
        published = self.service.published
        latest = published.checkpoint.tree_size if published else 0
        second = _decimal(request.query_params.get("second"), "second")
        first = _decimal(request.query_params.get("first"), "first")
        second = latest if second is None else second
        if first is None:
            first = second // 2
        growth = await self._growth(latest)
        options = join(render('<option value="$s">', s=s) for _, s in growth)
        form = render(
            '<form class="inline" method="get" action="$action">'
            '<div class="field"><label for="first">Older tree size</label>'
            '<input id="first" name="first" type="number" min="0" inputmode="numeric"'
            ' value="$first" list="sizes"></div>'
            '<div class="field"><label for="second">Newer tree size</label>'
            '<input id="second" name="second" type="number" min="0" inputmode="numeric"'
            ' value="$second" list="sizes"></div>'
            '<datalist id="sizes">$options</datalist>'
            '<button type="submit">Show proof</button></form>'
            '<p class="hint">Signed checkpoint sizes are suggested; any size up to $latest'
            " works (the roots of unsigned sizes come from the log's tiles).</p>",
            action=self.prefix + "/consistency",
            first=first,
            second=second,
            options=options,
            latest=latest,
        )
        if first > second:
            raise _PageError(400, "Bad request", "the older size must not exceed the newer one")
        if second > latest:
            raise _PageError(
                404, "Unknown tree size", f"The newest published tree has {latest} leaves."
            )
        body = join([form, await self._consistency_result(first, second)])
        return self._html(
            request, viewer, title="Consistency", body=body, current="consistency", script=True
        )

    async def _consistency_result(self, first: int, second: int) -> Markup:
        reader = self.service.reader
        notes = [await self._signed_at(first), await self._signed_at(second)]
        roots: list[bytes] = []
        for size, note in zip((first, second), notes, strict=True):
            if note is not None:
                roots.append(parse_checkpoint(parse_note(note).text).root_hash)
            else:
                roots.append(await reader.root(size))
        proof = await reader.consistency_proof(first, second)
        try:
            verify_consistency(first, second, roots[0], roots[1], proof)
            check = Markup(
                '<p class="status ok" id="server-check">✓ Checked by the server: the newer'
                " tree contains the older one unchanged.</p>"
            )
        except ProofError:
            check = Markup(
                '<p class="status bad" id="server-check">✗ The server could not verify the'
                " consistency proof.</p>"
            )

        def describe(size: int, root: bytes, note: bytes | None) -> Markup:
            source = "signed checkpoint" if note is not None else "computed from the log's tiles"
            return render(
                "<dt>Size $size</dt><dd><code>$root</code> ($source)</dd>",
                size=size,
                root=root.hex(),
                source=source,
            )

        rows = join(
            render("<tr><td>$n</td><td><code>$hex</code></td></tr>", n=n, hex=value.hex())
            for n, value in enumerate(proof, 1)
        )
        return render(
            '<section aria-labelledby="cons-h"><h2 id="cons-h">From $first to $second leaves'
            '</h2><dl class="facts">$a$b</dl>$check'
            '<section id="consistency-verify" data-first="$first" data-second="$second"'
            ' data-first-root="$r1" data-second-root="$r2" data-proof="$proof"'
            ' data-first-note="$n1" data-second-note="$n2" data-vkey="$vkey">'
            '<p class="browser-status" role="status" aria-live="polite"></p>'
            '<noscript><p class="note">Enable JavaScript to verify the proof in your browser.'
            "</p></noscript></section>$picture"
            '<div class="table-wrap"><table><caption>Proof hashes</caption><thead><tr>'
            '<th scope="col">#</th><th scope="col">Hash (hex)</th></tr></thead>'
            "<tbody>$rows</tbody></table></div></section>",
            first=first,
            second=second,
            a=describe(first, roots[0], notes[0]),
            b=describe(second, roots[1], notes[1]),
            check=check,
            r1=_b64(roots[0]),
            r2=_b64(roots[1]),
            proof=json.dumps([_b64(h) for h in proof]),
            n1=notes[0].decode("utf-8") if notes[0] else "",
            n2=notes[1].decode("utf-8") if notes[1] else "",
            vkey=self.service.vkey,
            picture=consistency_picture(first, second, proof),
            rows=rows,
        )

    # -- lookups ---------------------------------------------------------------------------------

    async def lookup(self, request: Request, viewer: Viewer) -> Response:
        """Lookups by client, subject, type or token reference, paginated (readers only for
        all but token references, unless the log's entries are public)."""
        if self.storage is None:
            raise _PageError(404, "Not available", "This log offers no lookups.")
        kind = request.query_params.get("kind", "client_id")
        value = request.query_params.get("value", "")
        if kind not in LOOKUP_KINDS:
            raise _PageError(400, "Bad request", "unknown lookup kind")
        if len(value.encode("utf-8", "surrogatepass")) > _MAX_VALUE_BYTES:
            raise _PageError(400, "Bad request", f"a value is at most {_MAX_VALUE_BYTES} bytes")
        after = _decimal(request.query_params.get("after"), "after")
        options = join(
            render(
                '<option value="$k"$sel>$label</option>',
                k=k,
                label=_KIND_LABELS[k],
                sel=Markup(" selected") if k == kind else Markup(""),
            )
            for k in LOOKUP_KINDS
        )
        form = render(
            '<form class="inline" method="get" action="$action">'
            '<div class="field"><label for="kind">Look up by</label>'
            '<select id="kind" name="kind">$options</select></div>'
            '<div class="field"><label for="value">Value</label>'
            '<input id="value" name="value" type="search" value="$value" autocomplete="off"'
            ' spellcheck="false" required></div><button type="submit">Look up</button></form>',
            action=self.prefix + "/lookup",
            options=options,
            value=value,
        )
        status = 200
        if not viewer.can_read_entries:
            notice = Markup(
                '<p class="notice">This log is private: lookups by client, subject and type,'
                " and entry contents, are for signed-in readers. Anyone may look up a token"
                " reference.</p>"
            )
            if not self.rules.public_token_ref_lookup:
                notice = Markup(
                    '<p class="notice">This log is private: lookups are for signed-in readers.</p>'
                )
            form = join([notice, form])
        results = Markup("")
        if value:
            if kind == "token_ref" and not is_token_ref(value):
                raise _PageError(
                    400, "Bad request", "a token reference is 43 characters of base64url"
                )
            if not viewer.can_lookup(kind):
                status = 401
                results = render(
                    '<p class="status bad" id="denied">✗ Lookups by $kind need a reader'
                    ' sign-in. <a href="$href">Sign in</a></p>',
                    kind=_KIND_LABELS[kind].lower(),
                    href=self.prefix
                    + "/signin?"
                    + urllib.parse.urlencode({"next": self.prefix + "/lookup"}),
                )
            else:
                hits, cursor = await self._lookup(
                    kind, value, -1 if after is None else after, PAGE_SIZE
                )
                results = join(
                    [
                        self._results_table(hits, viewer, f"Entries with {kind} = {value}"),
                        self._pages(kind, value, after, cursor),
                    ]
                )
        return self._html(
            request,
            viewer,
            title="Lookups",
            body=join([form, results]),
            current="lookup",
            status=status,
        )

    def _pages(self, kind: str, value: str, after: int | None, cursor: int | None) -> Markup:
        links: list[Markup] = []
        base = self.prefix + "/lookup?"
        if after is not None:
            links.append(
                render(
                    '<a href="$href">First page</a>',
                    href=base + urllib.parse.urlencode({"kind": kind, "value": value}),
                )
            )
        if cursor is not None:
            links.append(
                render(
                    '<a href="$href" rel="next" id="next-page">Next page</a>',
                    href=base
                    + urllib.parse.urlencode({"kind": kind, "value": value, "after": cursor}),
                )
            )
        if not links:
            return Markup("")
        return render(
            '<nav class="pages" aria-label="Result pages">$links</nav>', links=join(links)
        )

    # -- sign-in -------------------------------------------------------------------------------

    def _next(self, raw: str | None) -> str:
        """Return a safe place to go after signing in: a path of the explorer, else its home."""
        if (
            raw
            and raw.startswith(self.prefix + "/")
            and not raw.startswith(self.prefix + "/sign")
            and "\\" not in raw
        ):
            return raw
        return self.prefix

    async def signin_form(self, request: Request, viewer: Viewer) -> Response:
        """The reader sign-in form."""
        if not self.rules.lookups:
            raise _PageError(404, "Not available", "This log has no readers.")
        return self._signin_page(request, viewer, request.query_params.get("next"), "")

    def _signin_page(
        self, request: Request, viewer: Viewer, target: str | None, error: str, status: int = 200
    ) -> Response:
        message = render('<p class="status bad" role="alert">✗ $e</p>', e=error) if error else ""
        body = render(
            "<p>Readers registered with the log (<code>etch reader add</code>) may read entry"
            " contents and look entries up by client, subject and type. The credential is"
            " checked once and not kept; this browser gets a session cookie instead.</p>$message"
            '<form method="post" action="$action"><input type="hidden" name="next" value="$next">'
            '<div class="field"><label for="credential">Reader credential</label>'
            '<input id="credential" name="credential" type="password" autocomplete="off"'
            ' required></div><p><button type="submit">Sign in</button></p></form>',
            message=message,
            action=self.prefix + "/signin",
            next=self._next(target),
        )
        return self._html(request, viewer, title="Reader sign-in", body=body, status=status)

    async def signin(self, request: Request, viewer: Viewer) -> Response:
        """Check a reader credential; on success set the session cookie and go back."""
        if not self.rules.lookups:
            raise _PageError(404, "Not available", "This log has no readers.")
        if not _same_origin(request):
            raise _PageError(403, "Forbidden", "sign-in forms are accepted from this site only")
        form = await _read_form(request)
        credential = form.get("credential", "").strip()
        target = self._next(form.get("next"))
        session = await self.access.sign_in(credential)
        if session is None:
            return self._signin_page(
                request, viewer, target, "That is not the credential of an active reader.", 401
            )
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE_NAME,
            session,
            max_age=SESSION_SECONDS,
            path=self.prefix,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def signout(self, request: Request, viewer: Viewer) -> Response:
        """End the reader's session."""
        if not _same_origin(request):
            raise _PageError(403, "Forbidden", "sign-out forms are accepted from this site only")
        self.access.sessions.end(request.cookies.get(COOKIE_NAME))
        response = RedirectResponse(self.prefix, 303)
        response.delete_cookie(COOKIE_NAME, path=self.prefix, httponly=True, samesite="strict")
        return response


async def _read_form(request: Request) -> dict[str, str]:
    """Read a small ``application/x-www-form-urlencoded`` body. Raises _PageError."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise _PageError(415, "Unsupported form", "send the form as a browser does")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise _PageError(413, "Too large", "the form is too large")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise _PageError(400, "Bad request", "the form could not be read") from None
    return dict(pairs)


def _decode(data: bytes) -> Any:
    """Decode leaf bytes for display (``None`` if they are not deterministic CBOR)."""
    try:
        return to_json_compatible(decode_deterministic(data))
    except CodecError:
        return None
