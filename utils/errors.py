"""The error a run ends with when the user can act on it: the script prints its one-line message and exits."""
from __future__ import annotations


class RunError(Exception):
    """A run cannot start or go on (a bad setting or file, a diverged loss, Ctrl-C): `str(error)` is the one-line
    message for the user, `exit_code` the status the script exits with."""

    exit_code: int = 1
