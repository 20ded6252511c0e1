"""The one error hierarchy of :mod:`witness`.

Everything the witness raises on a refused request or a failed dependency derives from
:class:`WitnessError`. Each class carries the data its HTTP answer needs; the mapping from class
to status lives in one table in :mod:`witness.http`::

    WitnessError
    ├── RequestError            the request itself is refused (4xx)
    │   ├── MalformedRequestError   body does not follow its format; also old > new size (400)
    │   ├── UnknownLogError         origin is not among the followed logs (404)
    │   ├── LogSignatureError       no valid signature by a trusted key of the log (403)
    │   ├── LogBlockedError         this witness holds evidence against the origin (403)
    │   ├── SizeConflictError       old size is not the witness's size; carries ``known_size`` (409)
    │   ├── RootConflictError       same size as the cosigned checkpoint, other root hash (409)
    │   ├── ProofRefusedError       empty-tree root, unexpected proof or failed proof (422)
    │   ├── BodyTooLargeError       request body over the size limit (413)
    │   └── RateLimitedError        the origin's request budget is spent; ``retry_after`` (429)
    ├── EvidenceError           an evidence document is malformed or does not prove its claim
    ├── ConfigError             a log list or setting is invalid
    └── StorageError            the witness database failed (see :mod:`witness.storage.base`)
        └── StorageUnavailableError  the database cannot be reached or written now (503)

Messages never contain key material.
"""

from __future__ import annotations

__all__ = [
    "BodyTooLargeError",
    "ConfigError",
    "EvidenceError",
    "LogBlockedError",
    "LogSignatureError",
    "MalformedRequestError",
    "ProofRefusedError",
    "RateLimitedError",
    "RequestError",
    "RootConflictError",
    "SizeConflictError",
    "StorageError",
    "StorageUnavailableError",
    "UnknownLogError",
    "WitnessError",
]


class WitnessError(Exception):
    """Base of every error raised by :mod:`witness`."""


class RequestError(WitnessError):
    """A request is refused; the subclass decides the HTTP status."""


class MalformedRequestError(RequestError):
    """The request body does not follow its format, or its old size exceeds the new size."""


class UnknownLogError(RequestError):
    """The checkpoint's origin is not among the logs this witness follows."""


class LogSignatureError(RequestError):
    """The checkpoint carries no valid signature by a key trusted for its origin."""


class LogBlockedError(RequestError):
    """The witness holds evidence that the log forked, so it cosigns nothing for the origin."""


class SizeConflictError(RequestError):
    """The client's old size differs from the size of the witness's latest cosigned checkpoint.

    ``known_size`` is the witness's size, sent back as the ``text/x.tlog.size`` body.
    """

    def __init__(self, message: str, *, known_size: int) -> None:
        super().__init__(message)
        self.known_size = known_size


class RootConflictError(RequestError):
    """The checkpoint has the size of the cosigned one but another root hash: a fork."""


class ProofRefusedError(RequestError):
    """The checkpoint cannot be accepted: empty-tree root, stray proof or failed proof."""


class BodyTooLargeError(RequestError):
    """The request body exceeds the configured limit."""


class RateLimitedError(RequestError):
    """The origin's request budget is spent; ``retry_after`` is in whole seconds (>= 1)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EvidenceError(WitnessError):
    """An evidence document is malformed, badly signed, or does not show what it claims."""


class ConfigError(WitnessError):
    """A log list, peer list or setting is invalid."""


class StorageError(WitnessError):
    """The witness database failed in a way retrying will not fix (bad schema, closed, bug)."""


class StorageUnavailableError(StorageError):
    """The witness database cannot be reached or written now; retry later."""
