"""Running the ``etch`` command line in process, as the CLI tests do."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from client.cli import main


@dataclass
class Run:
    """What one ``etch`` invocation did."""

    status: int
    out: str
    err: str

    def json(self) -> Any:
        """The last line of standard output, parsed (what ``--json`` prints)."""
        return json.loads(self.out.strip().splitlines()[-1])


def run_etch(
    capsys: pytest.CaptureFixture[str], argv: Sequence[str], stdin: bytes | None = None
) -> Run:
    """Run ``etch argv`` in process, with ``stdin`` as standard input when given.

    A usage error (argparse's ``SystemExit``) is a status like any other.
    """
    capsys.readouterr()
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = saved
    captured = capsys.readouterr()
    return Run(status, captured.out, captured.err)
