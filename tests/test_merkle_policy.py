"""Tests of merkle.policy (C2SP tlog-policy).

The quorum example is the one of c2sp.org/tlog-policy ("Example policy": X-witnesses 2 of 3,
Y-witnesses any, X-and-Y all), with real keys. Strictness tables follow every rule of the
specification's "Policy file syntax and structure"; hypothesis checks that parse_policy
inverts format_policy.
"""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.checkpoint import Checkpoint, format_checkpoint, parse_checkpoint
from merkle.cosignature import CosignatureSigner
from merkle.errors import (
    MalformedError,
    PolicyError,
    SignatureError,
    UnknownKeyError,
    UnverifiedNoteError,
)
from merkle.note import Ed25519Signer, add_signatures, parse_note, sign_note
from merkle.policy import (
    MAX_POLICY_ITEMS,
    Policy,
    PolicyGroup,
    PolicyLog,
    PolicyWitness,
    format_policy,
    parse_policy,
    verify_checkpoint,
    verify_parsed_checkpoint,
)

ORIGIN = "log.example.com/oauth/2026"
LOG = Ed25519Signer(ORIGIN, b"\x01" * 32)
WITNESS_NAMES = ["X1", "X2", "X3", "Y1", "Y2", "Y3"]
WITNESSES = {
    name: CosignatureSigner(f"{name.lower()}.witness.example", bytes([0x10 + i]) * 32)
    for i, name in enumerate(WITNESS_NAMES)
}
# A pool of keys for generated policies (key generation is kept out of hypothesis examples).
POOL = [CosignatureSigner(f"w{i}.example", bytes([0x80 + i]) * 32) for i in range(8)]
LOG_POOL = [Ed25519Signer(f"log{i}.example", bytes([0x40 + i]) * 32) for i in range(3)]

SPEC_POLICY = f"""\
log {LOG.vkey}

witness X1 {WITNESSES["X1"].vkey}
witness X2 {WITNESSES["X2"].vkey}
witness X3 {WITNESSES["X3"].vkey}
group X-witnesses 2 X1 X2 X3

witness Y1 {WITNESSES["Y1"].vkey}
witness Y2 {WITNESSES["Y2"].vkey}
witness Y3 {WITNESSES["Y3"].vkey}
group Y-witnesses any Y1 Y2 Y3

group X-and-Y all X-witnesses Y-witnesses
quorum X-and-Y
"""
W1 = WITNESSES["X1"].vkey
W2 = WITNESSES["X2"].vkey
LOG_LINE = f"log {LOG.vkey}\n"
SAME_KEY_OTHER_NAME = Ed25519Signer("other.example", b"\x01" * 32).vkey
RENAMED_VKEY = POOL[0].vkey.replace("w0.example", "w1.example")  # key ID no longer matches


def _checkpoint(size: int = 10) -> str:
    return format_checkpoint(Checkpoint(ORIGIN, size, bytes(range(32))))


def _cosigned(names: list[str], size: int = 10) -> bytes:
    signed = sign_note(_checkpoint(size), [LOG])
    return add_signatures(signed, [WITNESSES[n].signer_at(1_700_000_000) for n in names])


# --------------------------------------------------------------------------- parsing


def test_spec_example_parses() -> None:
    policy = parse_policy(SPEC_POLICY)
    assert [log.vkey for log in policy.logs] == [LOG.vkey]
    assert [w.name for w in policy.witnesses] == WITNESS_NAMES
    assert policy.groups == (
        PolicyGroup("X-witnesses", 2, ("X1", "X2", "X3")),
        PolicyGroup("Y-witnesses", 1, ("Y1", "Y2", "Y3")),
        PolicyGroup("X-and-Y", 2, ("X-witnesses", "Y-witnesses")),
    )
    assert policy.quorum == "X-and-Y"
    assert parse_policy(format_policy(policy)) == policy


def test_layout_comments_and_urls() -> None:
    text = (
        "# a comment\n"
        "   \t# an indented comment\n"
        "\n"
        "  \t \n"
        f"\tlog  {LOG.vkey}\thttps://log.example.com/ \n"
        f"witness w1 {W1} https://w1.example/prefix\n"
        "quorum   w1   \n"
    )
    policy = parse_policy(text)
    assert policy.logs == (PolicyLog(LOG.vkey, "https://log.example.com/"),)
    assert policy.witnesses == (PolicyWitness("w1", W1, "https://w1.example/prefix"),)
    assert parse_policy(format_policy(policy)) == policy


def test_quorum_none_and_no_logs() -> None:
    assert parse_policy("quorum none\n") == Policy((), (), (), "none")
    assert parse_policy(f"{LOG_LINE}quorum none\n").quorum == "none"


def test_non_ascii_names_are_opaque() -> None:
    policy = parse_policy(f"witness K {W1}\nwitness \u212a {W2}\ngroup g all K \u212a\nquorum g\n")
    assert [w.name for w in policy.witnesses] == ["K", "\u212a"]


def test_reserved_words_as_names() -> None:
    # The grammar is positional: "any" and "all" can be names.
    policy = parse_policy(f"witness any {W1}\nwitness all {W2}\ngroup g all any all\nquorum g\n")
    assert policy.groups[0] == PolicyGroup("g", 2, ("any", "all"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "newline"),
        (f"{LOG_LINE}", "no quorum"),
        (f"{LOG_LINE}quorum none", "newline"),
        ("quorum none\nquorum none\n", "exactly one quorum"),
        ("quorum w1\n", "not defined"),
        (f"quorum w1\nwitness w1 {W1}\n", "not defined"),
        (f"witness w1 {W1}\ngroup g any w1 w2\nquorum g\n", "'w2' is not defined"),
        (f"witness w1 {W1}\ngroup g any w2\nwitness w2 {W2}\nquorum g\n", "not defined"),
        (f"witness w1 {W1}\ngroup g any w1 w1\nquorum g\n", "twice"),
        (f"witness w1 {W1}\ngroup g any w1\ngroup h any w1\nquorum h\n", "more than once"),
        (f"witness w1 {W1}\ngroup g any w1\ngroup h any g\ngroup i any g\nquorum i\n", "once"),
        (f"witness w1 {W1}\ngroup g 0 w1\nquorum g\n", "at least 1"),
        (f"witness w1 {W1}\ngroup g 2 w1\nquorum g\n", "larger than 1"),
        (f"witness w1 {W1}\ngroup g +1 w1\nquorum g\n", "canonical"),
        (f"witness w1 {W1}\ngroup g 01 w1\nquorum g\n", "canonical"),
        (f"witness w1 {W1}\ngroup g \u0661 w1\nquorum g\n", "canonical"),
        (f"witness w1 {W1}\ngroup g some w1\nquorum g\n", "canonical"),
        (f"witness w1 {W1}\ngroup g any\nquorum g\n", "group line"),
        (f"witness w1 {W1}\ngroup g\nquorum g\n", "group line"),
        (f"witness w1 {W1}\nwitness w1 {W2}\nquorum w1\n", "defined twice"),
        (f"witness w1 {W1}\ngroup w1 any w1\nquorum w1\n", "defined twice"),
        (f"witness none {W1}\nquorum none\n", "reserved"),
        (f"witness w1 {W1}\ngroup none any w1\nquorum none\n", "reserved"),
        (f"witness w1 {W1}\ngroup g any none\nquorum g\n", "not defined"),
        (f"witness w1 {W1}\nwitness w2 {W1}\nquorum w1\n", "same public key"),
        (f"witness w1 {W1}\nwitness w2 {RENAMED_VKEY}\nquorum w1\n", "key ID"),
        (f"{LOG_LINE}{LOG_LINE}quorum none\n", "same public key"),
        (f"log {SAME_KEY_OTHER_NAME}\n{LOG_LINE}quorum none\n", "same public key"),
        (f"witness w1 {LOG.vkey}\nquorum w1\n", "0x01"),
        (f"log {W1}\nquorum none\n", "0x04"),
        (f"log {LOG.vkey} url extra\nquorum none\n", "log line"),
        ("log\nquorum none\n", "log line"),
        (f"witness w1 {W1} url extra\nquorum w1\n", "witness line"),
        ("witness w1\nquorum w1\n", "witness line"),
        ("quorum\n", "quorum line"),
        ("quorum a b\n", "quorum line"),
        ("Quorum none\n", "unknown keyword"),
        ("logs x\nquorum none\n", "unknown keyword"),
        (f"log {LOG.vkey} # comment\nquorum none\n", "log line"),
        ("quorum none\r\n", "forbidden"),
        ("quorum none\x00\n", "forbidden"),
        ("quorum none\x7f\n", "forbidden"),
        ("quorum\x0bnone\n", "forbidden"),
        ("quorum\u00a0none\n", "unknown keyword"),
        (f"log {LOG.vkey[:-1]}\nquorum none\n", "vkey"),
    ],
)
def test_policy_strictness(text: str, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        parse_policy(text)


def test_errors_name_the_line() -> None:
    with pytest.raises(MalformedError, match="policy line 3"):
        parse_policy(f"# c\nwitness w1 {W1}\ngroup g 2 w1\nquorum g\n")


def test_policy_values_are_validated() -> None:
    witness = PolicyWitness("w1", W1)
    with pytest.raises(MalformedError, match="not defined"):
        Policy((), (witness,), (PolicyGroup("g", 1, ("w2",)),), "g")
    with pytest.raises(MalformedError, match="not a defined"):
        Policy((), (witness,), (), "w2")
    with pytest.raises(MalformedError, match="defined before"):
        Policy(
            (),
            (witness,),
            (PolicyGroup("g", 1, ("h",)), PolicyGroup("h", 1, ("w1",))),
            "g",
        )
    with pytest.raises(MalformedError):
        PolicyGroup("g", 2, ("a",))
    with pytest.raises(MalformedError):
        PolicyGroup("g", 1, ())
    with pytest.raises(MalformedError):
        PolicyLog(LOG.vkey, "has space")
    many = tuple(PolicyGroup(f"g{i}", 1, ("w1",) if i == 0 else (f"g{i - 1}",))
                 for i in range(MAX_POLICY_ITEMS + 1))
    with pytest.raises(MalformedError, match="at most"):
        Policy((), (witness,), many, "none")


# --------------------------------------------------------------------------- quorums


@pytest.mark.parametrize(
    ("cosigners", "met"),
    [
        (set(), False),
        ({"X1", "X2", "Y1"}, True),
        ({"X1", "X3", "Y3"}, True),
        ({"X1", "Y1"}, False),  # X-witnesses short by one
        ({"X1", "X2"}, False),  # no Y witness
        ({"Y1", "Y2", "Y3"}, False),
        ({"X1", "X2", "X3", "Y1", "Y2", "Y3"}, True),
        ({"X1", "X2", "X3"}, False),
        ({"X1", "X-witnesses", "Y-witnesses"}, False),  # group names are not cosigners
    ],
)
def test_spec_quorum(cosigners: set[str], met: bool) -> None:
    assert parse_policy(SPEC_POLICY).is_satisfied(cosigners) is met


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_k_of_n(k: int) -> None:
    lines = [f"witness w{i} {POOL[i].vkey}" for i in range(5)]
    policy = parse_policy("\n".join([*lines, f"group g {k} w0 w1 w2 w3 w4", "quorum g"]) + "\n")
    for size in range(6):
        for chosen in itertools.combinations(range(5), size):
            assert policy.is_satisfied({f"w{i}" for i in chosen}) is (size >= k)


def test_any_and_all_keywords() -> None:
    lines = [f"witness w{i} {POOL[i].vkey}" for i in range(3)]
    for keyword, k in (("any", 1), ("all", 3)):
        policy = parse_policy("\n".join([*lines, f"group g {keyword} w0 w1 w2", "quorum g"]) + "\n")
        assert policy.groups[0].threshold == k


def test_single_witness_quorum() -> None:
    policy = parse_policy(f"witness w1 {W1}\nquorum w1\n")
    assert policy.is_satisfied({"w1"})
    assert not policy.is_satisfied(set())


def test_deeply_nested_groups() -> None:
    lines = [f"witness w{i} {POOL[i].vkey}" for i in range(4)]
    lines += ["group a all w0 w1", "group b any a w2", "group c 2 b w3", "quorum c"]
    policy = parse_policy("\n".join(lines) + "\n")
    assert policy.is_satisfied({"w2", "w3"})
    assert policy.is_satisfied({"w0", "w1", "w3"})
    assert not policy.is_satisfied({"w0", "w3"})
    assert not policy.is_satisfied({"w0", "w1", "w2"})


# --------------------------------------------------------------------------- verify_checkpoint


@pytest.mark.parametrize(
    ("cosigners", "met"),
    [
        (["X1", "X2", "Y1"], True),
        (["X1", "Y1"], False),
        (["X1", "X2"], False),
        ([], False),
        (["X3", "Y2", "X1"], True),
    ],
)
def test_verify_checkpoint_quorum(cosigners: list[str], met: bool) -> None:
    policy = parse_policy(SPEC_POLICY)
    note = _cosigned(cosigners)
    if met:
        checkpoint, parsed = verify_checkpoint(policy, note)
        assert checkpoint.origin == ORIGIN
        assert parsed.text == _checkpoint()
    else:
        with pytest.raises(PolicyError, match="X-and-Y"):
            verify_checkpoint(policy, note)


def test_verify_parsed_checkpoint() -> None:
    policy = parse_policy(SPEC_POLICY)
    good = parse_note(_cosigned(["X1", "X2", "Y3"]))
    verify_parsed_checkpoint(policy, good, parse_checkpoint(good.text))
    short = parse_note(_cosigned(["X1", "Y3"]))
    with pytest.raises(PolicyError):
        verify_parsed_checkpoint(policy, short, parse_checkpoint(short.text))


def test_verify_checkpoint_quorum_none() -> None:
    policy = parse_policy(f"{LOG_LINE}quorum none\n")
    assert verify_checkpoint(policy, sign_note(_checkpoint(), [LOG]))[0].tree_size == 10


def test_verify_checkpoint_ignores_unknown_witnesses() -> None:
    policy = parse_policy(SPEC_POLICY)
    stranger = CosignatureSigner("stranger.example", b"\x99" * 32)
    note = add_signatures(_cosigned(["X1", "X2", "Y1"]), [stranger.signer_at(5)])
    verify_checkpoint(policy, note)


def test_verify_checkpoint_rejects_bad_cosignature() -> None:
    policy = parse_policy(SPEC_POLICY)
    note = _cosigned(["X1", "X2", "Y1", "Y2"])
    lines = note.split(b"\n")
    prefix, encoded = lines[-2].rsplit(b" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[20] ^= 1
    lines[-2] = prefix + b" " + base64.b64encode(bytes(raw))
    # Y2's cosignature is not needed for the quorum, yet a bad known signature fails the note.
    with pytest.raises(SignatureError, match="y2"):
        verify_checkpoint(policy, b"\n".join(lines))


def test_verify_checkpoint_requires_a_policy_log() -> None:
    policy = parse_policy(SPEC_POLICY)
    other_log = Ed25519Signer(ORIGIN, b"\x05" * 32)
    note = add_signatures(
        sign_note(_checkpoint(), [other_log]),
        [WITNESSES[n].signer_at(1) for n in ("X1", "X2", "Y1")],
    )
    with pytest.raises(UnverifiedNoteError, match="log"):
        verify_checkpoint(policy, note)
    foreign = Ed25519Signer("foreign.example/log", b"\x01" * 32)
    foreign_note = sign_note(
        format_checkpoint(Checkpoint(foreign.name, 1, bytes(32))), [foreign]
    )
    with pytest.raises(UnknownKeyError, match="origin"):
        verify_checkpoint(policy, foreign_note)
    with pytest.raises(PolicyError, match="no log"):
        verify_checkpoint(parse_policy("quorum none\n"), foreign_note)


def test_verify_checkpoint_rejects_forged_log_signature() -> None:
    policy = parse_policy(SPEC_POLICY)
    note = _cosigned(["X1", "X2", "Y1"], size=10).replace(b"\n10\n", b"\n11\n", 1)
    with pytest.raises(SignatureError):
        verify_checkpoint(policy, note)


def test_verify_checkpoint_with_several_logs() -> None:
    second = LOG_POOL[0]
    policy = parse_policy(f"{LOG_LINE}log {second.vkey}\nquorum none\n")
    text = format_checkpoint(Checkpoint(second.name, 3, bytes(32)))
    assert verify_checkpoint(policy, sign_note(text, [second]))[0].origin == second.name


# --------------------------------------------------------------------------- round trip


@st.composite
def _policies(draw: st.DrawFn) -> Policy:
    urls = st.none() | st.sampled_from(["https://a.example/", "http://b.example/x?y=1"])
    log_keys = draw(st.lists(st.sampled_from(LOG_POOL), unique=True, max_size=3))
    logs = tuple(PolicyLog(signer.vkey, draw(urls)) for signer in log_keys)
    keys = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=len(POOL)))
    witnesses = tuple(
        PolicyWitness(f"w{i}", signer.vkey, draw(urls)) for i, signer in enumerate(keys)
    )
    available = [w.name for w in witnesses]  # defined and never used as a member yet
    groups: list[PolicyGroup] = []
    for number in range(draw(st.integers(0, 4))):
        if not available:
            break
        members = draw(st.lists(st.sampled_from(available), unique=True, min_size=1))
        threshold = draw(st.integers(1, len(members)))
        group = PolicyGroup(f"g{number}", threshold, tuple(members))
        groups.append(group)
        available = [name for name in available if name not in members] + [group.name]
    defined = [w.name for w in witnesses] + [g.name for g in groups]
    quorum = draw(st.sampled_from(["none", *defined]))
    return Policy(logs, witnesses, tuple(groups), quorum)


@settings(max_examples=100, deadline=None)
@given(_policies())
def test_parse_inverts_format(policy: Policy) -> None:
    assert parse_policy(format_policy(policy)) == policy
