"""Etch client library: submit events, fetch and verify proofs, checkpoints and receipts."""
