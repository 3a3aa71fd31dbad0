"""Readers for on-disk dataset formats, one module per format, each validating on open."""
