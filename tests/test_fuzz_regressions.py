"""Inputs the fuzzers (``make fuzz``: atheris, hypothesis, schemathesis) found to crash a parser.

Each test feeds the exact crashing input to the fuzz target that found it (the target allows
only the parser's documented errors, so the old crash fails the test) and checks the refusal
the fixed parser now gives.
"""

from __future__ import annotations

import pytest

from client.errors import VerificationError
from client.logclient import verify_client_evidence
from tests.fuzz.seeds import material
from tests.fuzz.targets import run_target
from witness.errors import EvidenceError
from witness.evidence import verify_evidence

# client.logclient.verify_client_evidence: a JSON "\ud800" escape in the trusted checkpoint
# decoded to a lone surrogate, and encoding the note raised UnicodeEncodeError.
CLIENT_EVIDENCE_LONE_SURROGATE = (
    b'{"format": "etch-client-evidence/v1", "kind": "rollback", "origin": "o", "log": "l", '
    b'"trusted": {"tree_size": 1, "checkpoint": "\\ud800"}, "presented": null, "proof": [], '
    b'"checked": "c", "reason": "r", "details": {}, "observed_at": 0}'
)


def test_client_evidence_lone_surrogate() -> None:
    run_target("client_evidence", CLIENT_EVIDENCE_LONE_SURROGATE)
    with pytest.raises(VerificationError, match="not UTF-8 JSON"):
        verify_client_evidence(CLIENT_EVIDENCE_LONE_SURROGATE, material().log_verifier.vkey)


# witness.evidence.verify_evidence: the same lone surrogate in a side's checkpoint.
WITNESS_EVIDENCE_LONE_SURROGATE = (
    b'{"first": {"checkpoint": "\\ud800", "source": "s", "tree_size": 1}, '
    b'"format": "etch-witness-evidence/v1", "kind": "same-size", "observed_at": 0, '
    b'"origin": "o", "proof": [], "reason": "r", "second": null, "witness": "w"}'
)


def test_witness_evidence_lone_surrogate() -> None:
    run_target("witness_evidence", WITNESS_EVIDENCE_LONE_SURROGATE)
    with pytest.raises(EvidenceError, match="not UTF-8 JSON"):
        verify_evidence(WITNESS_EVIDENCE_LONE_SURROGATE, material().log_verifier.vkey)
