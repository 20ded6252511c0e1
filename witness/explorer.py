"""The witness's web page: the logs it follows, what it cosigned, its peers, fork evidence.

``GET /explorer`` on a witness shows, for each followed log, the latest checkpoint this witness
cosigned (size, root, when it cosigned: the timestamp inside its own cosignature line), whether
the log is blocked by evidence, the witness's peers, and each evidence record as the two
conflicting checkpoints side by side, with what the record proves when checked with the log's
key (:func:`witness.evidence.verify_evidence`). Everything a witness knows is public, so the
page needs no sign-in. Server-rendered HTML without script; it shares the log explorer's
markup kit and stylesheet (:mod:`server.explorer.markup`, :mod:`server.explorer.assets`).

Routes (mounted by :func:`witness.http.create_app`)::

    GET /explorer                  the page
    GET /explorer/static/<name>    the stylesheet
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from merkle.checkpoint import parse_checkpoint
from merkle.cosignature import cosignature_timestamp
from merkle.errors import MerkleError
from merkle.note import parse_note, parse_verifier
from server.explorer.assets import Assets, load_assets
from server.explorer.markup import (
    SECURITY_HEADERS,
    Markup,
    NavItem,
    format_time_ms,
    join,
    page,
    render,
)
from witness.core import Witness, origin_hash
from witness.errors import EvidenceError, WitnessError
from witness.evidence import verify_evidence
from witness.storage.base import StoredCheckpoint, StoredRecord

__all__ = ["EVIDENCE_SHOWN", "PREFIX", "explorer_routes"]

logger = logging.getLogger(__name__)

PREFIX: Final = "/explorer"
"""Where the page is served on the witness."""

EVIDENCE_SHOWN: Final = 20
"""Evidence records shown on the page (the JSON list at ``/evidence`` pages through all)."""


def _cosigned_at(witness: Witness, stored: StoredCheckpoint) -> int | None:
    """Return the timestamp of this witness's cosignature on a stored note, or ``None``."""
    try:
        note = parse_note(stored.note)
        verifier = parse_verifier(witness.vkey)
    except MerkleError:
        return None
    for signature in note.signatures:
        if signature.name == verifier.name and signature.key_id == verifier.key_id:
            try:
                return cosignature_timestamp(signature)
            except MerkleError:
                return None
    return None


def _link(url: str | None) -> Markup:
    """An http(s) URL as a link, anything else as text."""
    if url is None:
        return Markup("")
    if url.startswith(("http://", "https://")):
        return render('<a href="$u">$u</a>', u=url)
    return render("<code>$u</code>", u=url)


def _log_row(
    witness: Witness, origin: str, stored: StoredCheckpoint | None, evidence: int
) -> Markup:
    log = witness.logs[origin]
    if stored is None:
        latest = Markup('<span class="badge pending">nothing cosigned yet</span>')
    else:
        when = _cosigned_at(witness, stored)
        latest = render(
            "size <strong>$size</strong><br>root <code>$root</code><br>cosigned $when"
            '<br><a href="$href">signed note</a>',
            size=stored.tree_size,
            root=stored.root_hash.hex(),
            when=format_time_ms(when * 1000) if when is not None else "at an unknown time",
            href=f"/{origin_hash(origin)}/checkpoint",
        )
    state = (
        render('<span class="badge bad">✗ blocked: $n evidence record(s)</span>', n=evidence)
        if evidence
        else Markup('<span class="badge ok">✓ consistent so far</span>')
    )
    return render(
        '<tr><th scope="row"><code>$origin</code></th><td>$latest</td><td>$state</td>'
        "<td>$url</td><td>$vkeys</td></tr>",
        origin=origin,
        latest=latest,
        state=state,
        url=_link(log.url) if log.url else "push only",
        vkeys=join((render("<code>$v</code>", v=v) for v in log.vkeys), "<br>"),
    )


def _side(label: str, side: Any) -> Markup:
    if not isinstance(side, dict):
        return render('<div class="side"><h4>$label</h4><p>unreadable</p></div>', label=label)
    note = side.get("checkpoint")
    root = ""
    if isinstance(note, str):
        try:
            root = parse_checkpoint(parse_note(note.encode("utf-8")).text).root_hash.hex()
        except MerkleError:
            root = "(not a checkpoint)"
    return render(
        '<div class="side"><h4>$label</h4><dl class="facts"><dt>Tree size</dt><dd>$size</dd>'
        "<dt>Root hash</dt><dd><code>$root</code></dd><dt>Seen via</dt><dd>$source</dd></dl>"
        "<pre>$note</pre></div>",
        label=label,
        size=side.get("tree_size"),
        root=root,
        source=side.get("source"),
        note=note if isinstance(note, str) else "",
    )


def _evidence(witness: Witness, record: StoredRecord) -> Markup:
    try:
        document = json.loads(record.document)
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    checks: list[Markup] = []
    log = witness.logs.get(record.origin)
    for vkey in log.vkeys if log else ():
        try:
            report = verify_evidence(record.document, vkey)
        except EvidenceError as exc:
            checks.append(render('<p class="status bad">✗ Does not verify: $e</p>', e=str(exc)))
            continue
        checks = [
            render(
                '<p class="status $cls">$mark $summary</p>',
                cls="bad" if report.definitive else "ok",
                mark="✗ Fork proven:" if report.definitive else "Checked:",
                summary=report.summary,
            )
        ]
        break
    proof = document.get("proof")
    hashes = proof if isinstance(proof, list) else []
    return render(
        '<article class="evidence" aria-labelledby="ev-$id"><h3 id="ev-$id">Evidence $id:'
        " $kind for <code>$origin</code></h3><p>$reason (observed $when by $by)</p>$checks"
        '<div class="sides">$first$second</div>$proof'
        '<p><a href="$href">The evidence document (JSON)</a></p></article>',
        id=record.id,
        kind=record.kind,
        origin=record.origin,
        reason=document.get("reason", ""),
        when=format_time_ms(record.recorded_at),
        by=document.get("witness", ""),
        checks=join(checks),
        first=_side("First checkpoint", document.get("first")),
        second=_side("Second checkpoint", document.get("second")),
        proof=render(
            "<details><summary>Consistency proof ($n hashes)</summary><ol>$items</ol></details>",
            n=len(hashes),
            items=join(render("<li><code>$h</code></li>", h=h) for h in hashes),
        )
        if hashes
        else Markup(""),
        href=f"/evidence/{origin_hash(record.origin)}/{record.id}",
    )


def _peers(peers: Sequence[str]) -> Markup:
    if not peers:
        return Markup('<p class="note">This witness has no peers configured.</p>')
    return render(
        "<ul>$items</ul>",
        items=join(
            render(
                "<li>$link$page</li>",
                link=_link(peer),
                page=render(' (<a href="$u">its page</a>)', u=peer + PREFIX)
                if peer.startswith(("http://", "https://"))
                else Markup(""),
            )
            for peer in peers
        ),
    )


class _WitnessPage:
    def __init__(self, assets: Assets) -> None:
        self.assets = assets

    async def show(self, request: Request) -> Response:
        """``GET /explorer``: render the page (503 while storage cannot be read)."""
        components = request.app.state.components
        witness: Witness = components.witness
        try:
            latest = {s.origin: s for s in await witness.storage.latest_all()}
            counts = await witness.storage.evidence_counts()
            records = await witness.storage.list_evidence(None, limit=EVIDENCE_SHOWN)
        except WitnessError as exc:
            logger.warning("witness page: storage failed: %s", type(exc).__name__)
            return self._document(
                "Witness", Markup('<p class="notice warn">Storage cannot be read now.</p>'), 503
            )
        rows = join(
            _log_row(witness, origin, latest.get(origin), counts.get(origin, 0))
            for origin in sorted(witness.logs)
        )
        evidence = (
            join(_evidence(witness, r) for r in records)
            if records
            else Markup('<p class="note" id="no-evidence">No evidence of a fork.</p>')
        )
        body = render(
            '<dl class="facts"><dt>Name</dt><dd><code id="witness-name">$name</code></dd>'
            "<dt>Key</dt><dd><code>$vkey</code></dd></dl>"
            '<section aria-labelledby="logs-h"><h2 id="logs-h">Logs followed</h2>'
            '<div class="table-wrap"><table id="logs"><thead><tr><th scope="col">Origin</th>'
            '<th scope="col">Latest cosigned checkpoint</th><th scope="col">State</th>'
            '<th scope="col">Tiles URL</th><th scope="col">Log keys</th></tr></thead>'
            "<tbody>$rows</tbody></table></div></section>"
            '<section aria-labelledby="peers-h"><h2 id="peers-h">Peers</h2>$peers</section>'
            '<section aria-labelledby="evidence-h"><h2 id="evidence-h">Fork evidence</h2>'
            "$evidence</section>",
            name=witness.name,
            vkey=witness.vkey,
            rows=rows,
            peers=_peers(components.gossip.peers),
            evidence=evidence,
        )
        return self._document(f"Witness {witness.name}", body)

    def _document(self, title: str, body: Markup, status: int = 200) -> Response:
        document = page(
            title=title,
            body=body,
            site="Etch witness",
            home=PREFIX,
            css=PREFIX + "/static/" + self.assets.css.name,
            nav=[
                NavItem(PREFIX, "Overview", "overview"),
                NavItem("/logs", "Logs (JSON)", "logs"),
                NavItem("/evidence", "Evidence (JSON)", "evidence"),
            ],
            current="overview",
            footer="C2SP tlog-witness with gossip and fork evidence",
        )
        return Response(
            document, status, media_type="text/html; charset=utf-8", headers=dict(SECURITY_HEADERS)
        )


def explorer_routes() -> list[BaseRoute]:
    """Return the routes of the witness page (they read ``app.state.components``)."""
    view = _WitnessPage(load_assets())
    return [
        Route(PREFIX, view.show, methods=["GET"]),
        Route(PREFIX + "/static/{name}", view.assets.serve, methods=["GET"]),
    ]
