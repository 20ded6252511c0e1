"""Subcommands of the ``etch`` command line, one module each (see :mod:`client.cli`)."""
