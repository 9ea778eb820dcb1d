"""Errors the user can fix, and the process exit codes we document."""

from __future__ import annotations

# Exit codes of `launch` (and of the worker processes it starts). Documented in README.md.
EXIT_COMPLETED = 0  # training finished (or the run was already complete)
EXIT_FAILED = 1  # training raised an unexpected error; summary.json says `failed`
EXIT_BAD_INPUT = 2  # bad command line, config or data: one line on stderr, nothing written
EXIT_STOPPED = 130  # stopped by Ctrl-C / SIGINT after saving a checkpoint (status `stopped`)
EXIT_PREEMPTED = 143  # stopped by SIGTERM / SIGUSR2 after saving a checkpoint (status `preempted`)


class LaunchError(Exception):
    """A problem the user can fix. Printed as one line, exit status 2, no traceback.

    The message should name the problem *and* the fix.
    """


class ConfigError(LaunchError):
    """A bad key, value or combination in the resolved config."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when it has none), at most
    ``limit`` characters: what a one-line error shows of an error from a library."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
