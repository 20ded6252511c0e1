"""Etch's witness: a C2SP tlog-witness service with durable storage, gossip and fork evidence.

It works with any C2SP log (tlog-checkpoint, tlog-tiles), not only Etch. Modules:

* :mod:`witness.core`: the add-checkpoint decision (tlog-witness), one atomic check-and-persist;
* :mod:`witness.storage`: the persistence port and its SQLite and PostgreSQL backends;
* :mod:`witness.gossip`: polling logs (pull mode) and peer witnesses, consistency checks;
* :mod:`witness.evidence`: the self-verifying evidence document and :func:`verify_evidence`;
* :mod:`witness.http`: the Starlette application, one table from errors to statuses;
* :mod:`witness.run`: the ``python -m witness`` entry point (:func:`main`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a witness process (``python -m witness`` / ``etch witness``); see :mod:`witness.run`.

    Returns the process exit status: 0 after a clean shutdown, 2 for a usage or configuration
    error, 1 for any other failure to start.
    """
    from witness.run import main as run_main

    return run_main(argv)
