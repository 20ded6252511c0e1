"""``python -m witness``: run a witness process (see :mod:`witness.run`)."""

from __future__ import annotations

import sys

from witness.run import main

if __name__ == "__main__":
    sys.exit(main())
