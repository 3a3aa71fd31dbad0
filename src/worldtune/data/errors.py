"""The one error class for bad user data: `DataError(path, problem)`, message "PATH: PROBLEM".

Every reader raises it (or a subclass: `BadEpisode`, `LatentDataError`, `BadRecording`,
`BadCtrlWorldSample`, `VideoError`, `ManifestError`) so that a user sees which file is bad and why,
and so that callers can catch one class. `StaleCacheError` / `CacheMissError` (a latent cache that
does not match its data) live here too, so that the command line catches them without importing torch.

Errors raised in a DataLoader worker reach the main process pickled (the trainer carries them
over, see `worldtune.train.loop`), so every subclass must rebuild from `__reduce__`: the default
pickling calls `cls(*self.args)`, which for a two-argument constructor passes the one formatted
message and fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


class DataError(ValueError):
    """A file the user gave cannot be used; the message is f"{path}: {problem}".

    A ValueError so that code catching ValueError (the readers' older contract) still catches it.
    """

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # (class, constructor arguments, attribute dict): keeps extra attributes and __notes__.
        return type(self), self._constructor_args(), dict(self.__dict__)

    def _constructor_args(self) -> tuple[Any, ...]:
        """The arguments that rebuild this error; subclasses with another signature override it."""
        return self.path, self.problem


def split_message(message: str) -> tuple[str, str]:
    """("PATH", "PROBLEM") from a message formatted "PATH: PROBLEM" (for errors raised by message)."""
    path, separator, problem = str(message).partition(": ")
    return (path, problem) if separator else ("", str(message))


class MessageDataError(DataError):
    """A DataError its call sites raise with one formatted message, "PATH: PROBLEM".

    Accepts both `Error("PATH: PROBLEM")` and `Error(path, problem)`; the message is the same.
    """

    def __init__(self, path_or_message: PathLike, problem: str | None = None) -> None:
        if problem is None:
            path_or_message, problem = split_message(str(path_or_message))
        super().__init__(path_or_message, problem)

    def __str__(self) -> str:
        # A message without "PATH: " keeps its text (Path("") would otherwise show as ".").
        return f"{self.path}: {self.problem}" if str(self.path) != "." else self.problem



class StaleCacheError(Exception):
    """A latent cache does not match the data or settings it is used with (`worldtune.data.cache`).

    Defined here rather than in cache.py so that the command line can catch it without importing torch.
    """

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class CacheMissError(StaleCacheError, KeyError):
    """An item key is not in the cache: the item changed or the cache is incomplete."""
