"""A small OAuth 2.0 authorization server on Flask + Authlib that writes its audit trail to Etch.

Run it with ``python -m examples.authlib_server`` (see README.md next to this file). The parts:

* :mod:`examples.authlib_server.store`: clients, users, codes and tokens in memory; tokens and
  codes are kept under their Etch token reference, never as the raw value;
* :mod:`examples.authlib_server.audit`: turns OAuth actions into Etch events and hands them to
  :class:`client.emitter.Emitter`;
* :mod:`examples.authlib_server.app`: the Flask application and the Authlib grants and
  endpoints (client credentials, authorization code with PKCE S256, refresh token rotation,
  revocation RFC 7009, introspection RFC 7662), login and consent pages.
"""

from examples.authlib_server.app import create_app
from examples.authlib_server.audit import Auditor
from examples.authlib_server.store import Client, Store, User

__all__ = ["Auditor", "Client", "Store", "User", "create_app"]
