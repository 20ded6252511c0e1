"""C2SP tlog-policy: which logs and which witness quorum make a checkpoint trusted.

A policy file (https://c2sp.org/tlog-policy) is line based; items are separated by spaces and
tabs only; blank lines and ``#`` comment lines are ignored::

    log example.com/log+6a5f4e9b+AQ...                 # (comments are whole lines only)
    witness X1 x1.example/w+1a2b3c4d+BA... [<url>]
    witness X2 x2.example/w+2b3c4d5e+BA...
    witness Y1 y1.example/w+3c4d5e6f+BA...
    group X-witnesses 2 X1 X2
    group X-and-Y all X-witnesses Y1
    quorum X-and-Y

* ``log <vkey> [<url>]``: a log whose signature (type 0x01 Ed25519) is accepted; its key name
  is the checkpoint origin.
* ``witness <name> <vkey> [<url>]``: a witness whose cosignatures (type 0x04) count.
* ``group <name> all|any|<k> <member>...``: witnessed when at least k of its n members are
  (``any`` is 1, ``all`` is n, ``1 <= k <= n``); members are witnesses or groups defined on
  earlier lines, and each name may be a group member at most once in the whole policy.
* ``quorum <name>``: exactly one; ``none`` (predefined) requires no cosignature.

Witness and group names share one namespace; ``none`` cannot be defined. Two logs (or two
witnesses) may not wrap the same public key. Allowed characters are tab, newline, 0x20-0x7E
and non-ASCII; every line ends with a newline.

Supported key types: Ed25519 (0x01) for logs and Ed25519 cosignatures (0x04) for witnesses;
other types (e.g. ML-DSA-44, 0x06) are rejected as unsupported rather than silently ignored.
Limits: at most :data:`MAX_POLICY_ITEMS` logs, witnesses and groups each (the specification
recommends supporting at least 32).

Parsing is canonical up to layout: ``parse_policy(format_policy(p)) == p`` for every policy;
:func:`format_policy` writes logs, then witnesses, then groups (numeric thresholds), then the
quorum, without comments.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from merkle.checkpoint import Checkpoint, parse_checkpoint, parse_decimal
from merkle.cosignature import CosignatureVerifier
from merkle.errors import MalformedError, PolicyError, UnknownKeyError, UnverifiedNoteError
from merkle.note import (
    KEY_TYPE_COSIGNATURE,
    KEY_TYPE_ED25519,
    Ed25519Verifier,
    Note,
    VerifierIndex,
    index_verifiers,
    parse_note,
    parse_vkey,
    verify_note,
)

__all__ = [
    "MAX_POLICY_ITEMS",
    "QUORUM_NONE",
    "Policy",
    "PolicyGroup",
    "PolicyLog",
    "PolicyWitness",
    "format_policy",
    "parse_policy",
    "verify_checkpoint",
    "verify_parsed_checkpoint",
]

QUORUM_NONE = "none"
"""The predefined quorum that requires no cosignature."""

MAX_POLICY_ITEMS = 256
"""Most logs, witnesses and groups (each) accepted in one policy."""

_FIELD_SEPARATOR = re.compile(r"[ \t]+")
# Octets the policy character set forbids: controls other than tab and newline, and DEL.
# Lone surrogates cannot be UTF-8 encoded.
_BAD_POLICY_CHAR = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
_BAD_TOKEN_CHAR = re.compile("[\x00-\x20\x7f\ud800-\udfff]")


def _check_token(value: str, *, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise MalformedError(f"{what} must be a non-empty string")
    bad = _BAD_TOKEN_CHAR.search(value)
    if bad is not None:
        raise MalformedError(f"{what} {value!r} contains a forbidden character {bad.group()!r}")


def _check_url(url: str | None, *, what: str) -> None:
    if url is not None:
        _check_token(url, what=f"{what} URL")


def _check_definable_name(name: str, *, what: str) -> None:
    _check_token(name, what=f"{what} name")
    if name == QUORUM_NONE:
        raise MalformedError(f"{what} name {QUORUM_NONE!r} is reserved")


@dataclass(frozen=True, slots=True)
class PolicyLog:
    """A ``log <vkey> [<url>]`` line. The parsed key is kept in :attr:`verifier`.

    Requires a type-0x01 (Ed25519) vkey and a URL without whitespace; raises MalformedError.
    """

    vkey: str
    url: str | None = None
    verifier: Ed25519Verifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed = parse_vkey(self.vkey)
        if parsed.key_type != KEY_TYPE_ED25519:
            raise MalformedError(
                f"log vkey {self.vkey!r} has key type 0x{parsed.key_type:02x}; only Ed25519 "
                "log keys (0x01) are supported"
            )
        _check_url(self.url, what="log")
        object.__setattr__(self, "verifier", Ed25519Verifier(parsed.name, parsed.public_key))


@dataclass(frozen=True, slots=True)
class PolicyWitness:
    """A ``witness <name> <vkey> [<url>]`` line. The parsed key is kept in :attr:`verifier`.

    ``name`` is local to the policy; the vkey's own key name is the one on cosignature lines.
    Requires a name that is not ``none``, a type-0x04 vkey and a URL without whitespace;
    raises MalformedError.
    """

    name: str
    vkey: str
    url: str | None = None
    verifier: CosignatureVerifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_definable_name(self.name, what="witness")
        parsed = parse_vkey(self.vkey)
        if parsed.key_type != KEY_TYPE_COSIGNATURE:
            raise MalformedError(
                f"witness {self.name!r} vkey has key type 0x{parsed.key_type:02x}; only Ed25519 "
                "cosignature keys (0x04) are supported"
            )
        _check_url(self.url, what=f"witness {self.name!r}")
        object.__setattr__(
            self, "verifier", CosignatureVerifier(parsed.name, parsed.public_key)
        )


@dataclass(frozen=True, slots=True)
class PolicyGroup:
    """A ``group <name> <k> <member>...`` line: witnessed when >= ``threshold`` members are.

    Requires a name that is not ``none``, at least one member, distinct members and
    ``1 <= threshold <= len(members)``; raises MalformedError.
    """

    name: str
    threshold: int
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_definable_name(self.name, what="group")
        if not isinstance(self.members, tuple) or not self.members:
            raise MalformedError(f"group {self.name!r} needs at least one member")
        for member in self.members:
            _check_token(member, what=f"group {self.name!r} member")
        if len(set(self.members)) != len(self.members):
            raise MalformedError(f"group {self.name!r} lists a member twice")
        if type(self.threshold) is not int or not 1 <= self.threshold <= len(self.members):
            raise MalformedError(
                f"group {self.name!r} threshold must be between 1 and {len(self.members)}"
            )


@dataclass(frozen=True, slots=True)
class Policy:
    """A tlog-policy: known logs, known witnesses, witness groups and the quorum.

    Requires, as the specification does: unique witness and group names (``none`` excluded),
    group members defined before the group (witnesses, or groups earlier in ``groups``), each
    name a group member at most once, a quorum that is ``none`` or a defined name, no two logs
    and no two witnesses with the same public key, and at most :data:`MAX_POLICY_ITEMS` of each
    kind. Raises MalformedError otherwise.
    """

    logs: tuple[PolicyLog, ...]
    witnesses: tuple[PolicyWitness, ...]
    groups: tuple[PolicyGroup, ...]
    quorum: str
    # Derived once: for each origin, its logs' and all witnesses' keys by (name, key ID); and
    # the policy name of each witness key.
    _known_by_origin: dict[str, VerifierIndex] = field(init=False, repr=False, compare=False)
    _witness_names: dict[tuple[str, bytes], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for what, items in (("logs", self.logs), ("witnesses", self.witnesses)):
            if not isinstance(items, tuple):
                raise MalformedError(f"policy {what} must be a tuple")
            if len(items) > MAX_POLICY_ITEMS:
                raise MalformedError(f"policy has more than {MAX_POLICY_ITEMS} {what}")
        if not isinstance(self.groups, tuple) or len(self.groups) > MAX_POLICY_ITEMS:
            raise MalformedError(f"policy groups must be a tuple of at most {MAX_POLICY_ITEMS}")
        if len({log.verifier.public_key for log in self.logs}) != len(self.logs):
            raise MalformedError("two logs of the policy have the same public key")
        if len({w.verifier.public_key for w in self.witnesses}) != len(self.witnesses):
            raise MalformedError("two witnesses of the policy have the same public key")
        defined: set[str] = set()
        for witness in self.witnesses:
            if witness.name in defined:
                raise MalformedError(f"policy defines {witness.name!r} twice")
            defined.add(witness.name)
        listed: set[str] = set()
        for group in self.groups:
            if group.name in defined:
                raise MalformedError(f"policy defines {group.name!r} twice")
            for member in group.members:
                if member not in defined:
                    raise MalformedError(
                        f"group {group.name!r} member {member!r} is not defined before it"
                    )
                if member in listed:
                    raise MalformedError(
                        f"{member!r} is a group member more than once (allowed once)"
                    )
                listed.add(member)
            defined.add(group.name)
        _check_token(self.quorum, what="quorum")
        if self.quorum != QUORUM_NONE and self.quorum not in defined:
            raise MalformedError(f"quorum {self.quorum!r} is not a defined witness or group")
        witness_keys = [w.verifier for w in self.witnesses]
        origins = {log.verifier.name for log in self.logs}
        known = {
            origin: index_verifiers(
                [*(log.verifier for log in self.logs if log.verifier.name == origin),
                 *witness_keys]
            )
            for origin in origins
        }
        object.__setattr__(self, "_known_by_origin", known)
        object.__setattr__(
            self,
            "_witness_names",
            {(w.verifier.name, w.verifier.key_id): w.name for w in self.witnesses},
        )

    def witness_name(self, key_name: str, key_id: bytes) -> str | None:
        """Return the policy name of the witness whose key has this key name and key ID.

        ``None`` when no witness of the policy has that key (for example the log's own key).
        """
        return self._witness_names.get((key_name, key_id))

    def is_satisfied(self, cosigners: Collection[str]) -> bool:
        """Report whether the witnesses named ``cosigners`` (policy names) meet the quorum.

        tlog-policy "Defining a witness group": a witness is witnessed when it cosigned; a group
        when at least its threshold of members are. Names that are not witnesses are ignored.
        """
        if self.quorum == QUORUM_NONE:
            return True
        witnessed = {w.name for w in self.witnesses if w.name in cosigners}
        for group in self.groups:
            if sum(member in witnessed for member in group.members) >= group.threshold:
                witnessed.add(group.name)
        return self.quorum in witnessed


def _fields(line: str) -> list[str]:
    stripped = line.strip(" \t")
    return _FIELD_SEPARATOR.split(stripped) if stripped else []


def _parse_threshold(value: str, members: int, group: str) -> int:
    if value == "any":
        return 1
    if value == "all":
        return members
    threshold = parse_decimal(value, what=f"group {group!r} threshold", maximum=members)
    if threshold < 1:
        raise MalformedError(f"group {group!r} threshold must be at least 1")
    return threshold


def _parse_line(
    fields: list[str],
    logs: list[PolicyLog],
    witnesses: list[PolicyWitness],
    groups: list[PolicyGroup],
    quorum: list[str],
) -> None:
    keyword, args = fields[0], fields[1:]
    if keyword == "log":
        if len(args) not in (1, 2):
            raise MalformedError("a log line is: log <vkey> [<url>]")
        logs.append(PolicyLog(args[0], args[1] if len(args) == 2 else None))
    elif keyword == "witness":
        if len(args) not in (2, 3):
            raise MalformedError("a witness line is: witness <name> <vkey> [<url>]")
        witnesses.append(PolicyWitness(args[0], args[1], args[2] if len(args) == 3 else None))
    elif keyword == "group":
        if len(args) < 3:
            raise MalformedError("a group line is: group <name> all|any|<k> <member>...")
        name, members = args[0], tuple(args[2:])
        groups.append(PolicyGroup(name, _parse_threshold(args[1], len(members), name), members))
    elif keyword == "quorum":
        if len(args) != 1:
            raise MalformedError("a quorum line is: quorum <name>")
        if quorum:
            raise MalformedError("a policy has exactly one quorum line; this is the second")
        quorum.append(args[0])
    else:
        raise MalformedError(f"unknown keyword {keyword!r} (expected log, witness, group, quorum)")


def parse_policy(text: str) -> Policy:
    """Parse a tlog-policy file strictly.

    tlog-policy "Policy file syntax and structure". Blank lines and comment lines (first
    non-blank character ``#``) are skipped; the quorum and group members must be defined on
    earlier lines.

    Raises MalformedError, naming the line, for a forbidden character, a missing final
    newline, an unknown keyword, a wrong field count, a bad vkey or threshold, a duplicate or
    undefined name, a repeated member, duplicate keys, or not exactly one quorum line.
    """
    bad = _BAD_POLICY_CHAR.search(text)
    if bad is not None:
        raise MalformedError(f"policy contains a forbidden character {bad.group()!r}")
    if not text.endswith("\n"):
        raise MalformedError("policy does not end with a newline")
    logs: list[PolicyLog] = []
    witnesses: list[PolicyWitness] = []
    groups: list[PolicyGroup] = []
    quorum: list[str] = []
    defined: set[str] = set()
    for number, line in enumerate(text[:-1].split("\n"), 1):
        fields = _fields(line)
        if not fields or fields[0].startswith("#"):
            continue
        try:
            _parse_line(fields, logs, witnesses, groups, quorum)
            _check_order(fields[0], witnesses, groups, quorum, defined)
        except MalformedError as exc:
            raise MalformedError(f"policy line {number}: {exc}") from None
    if not quorum:
        raise MalformedError("policy has no quorum line")
    return Policy(tuple(logs), tuple(witnesses), tuple(groups), quorum[0])


def _check_order(
    keyword: str,
    witnesses: list[PolicyWitness],
    groups: list[PolicyGroup],
    quorum: list[str],
    defined: set[str],
) -> None:
    """Check the line just parsed only refers to names of earlier lines, then define it."""
    if keyword == "witness":
        name = witnesses[-1].name
    elif keyword == "group":
        group = groups[-1]
        for member in group.members:
            if member not in defined:
                raise MalformedError(f"member {member!r} is not defined on an earlier line")
        name = group.name
    elif keyword == "quorum":
        if quorum[0] != QUORUM_NONE and quorum[0] not in defined:
            raise MalformedError(f"quorum {quorum[0]!r} is not defined on an earlier line")
        return
    else:
        return
    if name in defined:
        raise MalformedError(f"{name!r} is defined twice")
    defined.add(name)


def format_policy(policy: Policy) -> str:
    """Encode ``policy`` as a policy file: logs, witnesses, groups, then the quorum line.

    Thresholds are written as numbers. ``parse_policy(format_policy(p)) == p``.
    """
    lines: list[str] = []
    for log in policy.logs:
        lines.append(" ".join(_present(("log", log.vkey, log.url))))
    for witness in policy.witnesses:
        lines.append(" ".join(_present(("witness", witness.name, witness.vkey, witness.url))))
    for group in policy.groups:
        lines.append(" ".join(("group", group.name, str(group.threshold), *group.members)))
    lines.append(f"quorum {policy.quorum}")
    return "\n".join(lines) + "\n"


def _present(items: Iterable[str | None]) -> list[str]:
    return [item for item in items if item is not None]


def verify_checkpoint(policy: Policy, note: bytes) -> tuple[Checkpoint, Note]:
    """Verify a signed checkpoint against a policy: a log's signature and the witness quorum.

    tlog-policy "What is a policy": the checkpoint must be signed by a log of the policy whose
    key name is the checkpoint origin, and cosigned by witnesses so that the quorum is met.
    Every signature by a known key (that log's or a witness's) is verified; others are ignored.
    Returns the checkpoint and the parsed note.

    Raises MalformedError for a malformed note or checkpoint; PolicyError if the policy lists
    no log or the quorum is not met; UnknownKeyError if no log of the policy has the
    checkpoint's origin; SignatureError if a known key's signature fails; UnverifiedNoteError
    if the log's signature is missing.
    """
    if not policy.logs:
        raise PolicyError("the policy lists no log, so no checkpoint can be verified with it")
    parsed = parse_note(note)
    checkpoint = parse_checkpoint(parsed.text)
    verify_parsed_checkpoint(policy, parsed, checkpoint)
    return checkpoint, parsed


def verify_parsed_checkpoint(policy: Policy, note: Note, checkpoint: Checkpoint) -> None:
    """Do what :func:`verify_checkpoint` does, for a note already parsed.

    Requires ``checkpoint == parse_checkpoint(note.text)`` (for example the values a
    :class:`~merkle.receipt.Receipt` keeps from parsing). Returns None on success and raises as
    :func:`verify_checkpoint` does, MalformedError excepted.
    """
    if not policy.logs:
        raise PolicyError("the policy lists no log, so no checkpoint can be verified with it")
    known = policy._known_by_origin.get(checkpoint.origin)
    if known is None:
        raise UnknownKeyError(f"no log of the policy has origin {checkpoint.origin!r}")
    try:
        verified = verify_note(note, known)
    except UnverifiedNoteError:
        verified = ()
    witness_names = policy._witness_names
    cosigners: set[str] = set()
    log_signed = False
    for signature in verified:
        name = witness_names.get((signature.name, signature.key_id))
        if name is not None:
            cosigners.add(name)
        else:
            log_signed = True  # every other key in ``known`` is a log key for this origin
    if not log_signed:
        raise UnverifiedNoteError(
            f"checkpoint is not signed by the policy's log for origin {checkpoint.origin!r}"
        )
    if not policy.is_satisfied(cosigners):
        names = ", ".join(sorted(cosigners)) or "no witness"
        raise PolicyError(f"quorum {policy.quorum!r} is not met (cosigned by {names})")
