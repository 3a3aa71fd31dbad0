"""The configuration's one error type (its own module, so that every config module can raise it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key (and file, when known)."""
