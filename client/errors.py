"""The one error hierarchy of the client library (:mod:`client.logclient`, monitor, audit).

Everything the client raises for a log it cannot use or cannot trust derives from
:class:`ClientError`::

    ClientError
    ├── ConfigurationError          keys, policy, state directory or arguments unusable
    ├── StateError                  the trusted state on disk is unreadable or names another key
    ├── LogUnavailableError         transport failure, timeout, 429 or 5xx: try again later
    ├── LogResponseError            the log answered, but not with what the protocol allows
    │   └── NotFoundError           the log does not serve the resource (404/410)
    └── VerificationError           something the log presented does not verify (exit status 1)
        ├── ReceiptVerificationError       an offline receipt (C2SP tlog-proof) does not verify
        ├── LookupMismatchError            a lookup answered an entry that does not match it
        └── LogMisbehaviour                the log presented signed data that cannot all be honest
            ├── UntrustedCheckpointError   checkpoint not signed by the known key or short of
            │                              the witness quorum (unknown key, bad signature)
            ├── RollbackError              checkpoint smaller than the trusted one
            ├── InconsistentCheckpointError  checkpoint not consistent with the trusted one
            │                              (same size and another root, or the proof fails)
            ├── TileMismatchError          tiles do not hash into the signed root
            └── EntryMismatchError         an entry does not hash to its leaf in the tree

Every :class:`LogMisbehaviour` carries the evidence document written for it
(:attr:`LogMisbehaviour.evidence`) and where it was written (:attr:`LogMisbehaviour.evidence_path`,
``None`` when no evidence directory was configured). Messages never contain tokens, credentials
or private keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "ClientError",
    "ConfigurationError",
    "EntryMismatchError",
    "InconsistentCheckpointError",
    "LogMisbehaviour",
    "LogResponseError",
    "LogUnavailableError",
    "LookupMismatchError",
    "NotFoundError",
    "ReceiptVerificationError",
    "RollbackError",
    "StateError",
    "TileMismatchError",
    "UntrustedCheckpointError",
    "VerificationError",
]


class ClientError(Exception):
    """Base of every error of the client library."""


class ConfigurationError(ClientError):
    """A key, policy, path or argument given to the client cannot be used."""


class StateError(ClientError):
    """The trusted state on disk cannot be read, is malformed, or names another log key."""


class LogUnavailableError(ClientError):
    """The log could not be reached or asked to come back later (network, 429, 5xx)."""


class LogResponseError(ClientError):
    """The log answered with something the protocol does not allow (status, size, syntax)."""


class NotFoundError(LogResponseError):
    """The log answered 404 or 410 for a resource."""


class VerificationError(ClientError):
    """Something presented by the log (or a file) does not verify."""


class ReceiptVerificationError(VerificationError):
    """An offline receipt (C2SP tlog-proof) does not verify against the policy and entry."""


class LookupMismatchError(VerificationError):
    """A lookup answered an entry that does not match the query (the index is only a hint).

    ``index`` is the entry the log pointed at.
    """

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


class LogMisbehaviour(VerificationError):  # noqa: N818 (a finding, not a failure of the client)
    """The log presented signed data that cannot all be honest; evidence was collected.

    ``kind`` is the evidence kind, ``evidence`` the JSON document (see
    :mod:`client.logclient`), ``evidence_path`` where it was written (``None`` if nowhere).
    """

    kind = "misbehaviour"

    def __init__(
        self,
        message: str,
        *,
        evidence: dict[str, Any] | None = None,
        evidence_path: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.evidence = evidence
        self.evidence_path = evidence_path


class UntrustedCheckpointError(LogMisbehaviour):
    """The checkpoint is not signed by the log's known key, or misses the witness quorum."""

    kind = "untrusted-checkpoint"


class RollbackError(LogMisbehaviour):
    """The log presented a checkpoint smaller than the one already trusted (a rewind)."""

    kind = "rollback"


class InconsistentCheckpointError(LogMisbehaviour):
    """Two checkpoints signed by the log are not consistent (a fork, or tampered tiles)."""

    kind = "inconsistent"


class TileMismatchError(LogMisbehaviour):
    """The log's tiles do not hash into the root of a checkpoint it signed."""

    kind = "tile-mismatch"


class EntryMismatchError(LogMisbehaviour):
    """An entry served by the log does not hash to its leaf hash in the signed tree."""

    kind = "entry-mismatch"
