"""Runnable examples of Etch in use (not installed with the package)."""
