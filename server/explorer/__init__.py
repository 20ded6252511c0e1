"""The Etch explorer: web pages for people who would rather look than read JSON.

Served by the log under ``/explorer`` (and ``/`` redirects there): the overview, "my token",
entries with their inclusion proofs drawn, consistency proofs, and lookups for readers
(:mod:`server.explorer.views`). Each witness serves its own page (:mod:`witness.explorer`),
built with the same markup kit (:mod:`server.explorer.markup`) and stylesheet.

Server-rendered HTML, a little plain JavaScript for the checks done in the browser, no build
step and nothing fetched from another site.

:func:`install_explorer` adds the routes to a running log's application::

    app = create_oauth_app(service, storage, settings)
    install_explorer(app, service, policy)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package stays light: the witness imports only its markup kit
    from starlette.applications import Starlette

    from merkle.policy import Policy
    from server.explorer.views import Explorer
    from server.log import LogService

__all__ = ["install_explorer"]


def install_explorer(
    app: Starlette,
    service: LogService,
    policy: Policy | None = None,
    *,
    prefix: str = "/explorer",
) -> Explorer:
    """Add the explorer's routes to a log application and return the explorer.

    With the OAuth layer (``app.state.oauth``, set by :func:`server.ingest.create_oauth_app`)
    the explorer follows its read settings and offers lookups and reader sign-in; on the bare
    engine every entry is public and there are no lookups. ``policy`` is the log's witness
    policy, shown on the overview with the quorum's state.
    """
    from server.explorer.access import ReadRules
    from server.explorer.views import Explorer

    layer = getattr(app.state, "oauth", None)
    if layer is not None:
        rules = ReadRules(
            public_entries=layer.settings.public_entries,
            public_token_ref_lookup=layer.settings.public_token_ref_lookup,
            lookups=True,
        )
        explorer = Explorer(
            service, policy=policy, rules=rules, storage=layer.storage, prefix=prefix
        )
    else:
        rules = ReadRules(public_entries=True, lookups=False)
        explorer = Explorer(service, policy=policy, rules=rules, prefix=prefix)
    app.router.routes.extend(explorer.routes())
    return explorer
