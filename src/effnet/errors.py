"""The root of effnet's errors.

Every error the library raises on purpose derives from :class:`EffnetError` and says what was
wrong (with the path or value) and what to do. Each also derives from the built-in type a
Python caller would expect (``ValueError`` for a bad value, ``FileNotFoundError`` for a
missing file, ``OSError`` for a file that cannot be written), so ``except ValueError`` keeps
working. The command line maps :class:`EffnetError` to its ``exit_code`` (:attr:`ExitCode.REFUSED`) and a
one-line message (see :mod:`effnet.cli`); :class:`ExitCode` is the table every command uses.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of every ``effnet`` command."""

    OK = 0
    PARTLY_DONE = 1
    REFUSED = 2
    NOTHING_FITS = 3
    INTERNAL_ERROR = 70
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.PARTLY_DONE: "done, but some inputs failed (each reported)",
    ExitCode.REFUSED: "refused: bad input or settings, nothing done",
    ExitCode.NOTHING_FITS: "effnet pick: no candidate within the budget",
    ExitCode.INTERNAL_ERROR: "internal error (a bug: please report it)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or SIGTERM), outputs closed whole",
}


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of ``error``'s message, at most ``limit`` characters ("" for none): how
    another library's multi-line error is quoted inside one of ours."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: how a value read from a file, which may be
    anything (a huge or deeply nested list), is quoted in a message."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


class EffnetError(Exception):
    """A problem the user can act on: bad input, an unusable file, an impossible setting."""

    exit_code: int = ExitCode.REFUSED


class ConfigError(EffnetError, ValueError):
    """A setting, recipe or argument that cannot be used."""


class InputFileError(EffnetError, FileNotFoundError):
    """A file or folder the user named that is not there."""


class OutputError(EffnetError, OSError):
    """A file or folder that cannot be written: a folder where a file is wanted, no permission,
    an existing file of another kind, or a full disk."""


class DiskFullError(OutputError):
    """The disk filled up while writing; the partial file was removed and the previous one kept."""
