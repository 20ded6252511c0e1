"""Etch's log server: HTTP API, sequencer, storage backends and configuration."""
