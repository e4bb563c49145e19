"""The data-set errors and warnings, and how their messages list files."""
from __future__ import annotations

import warnings

from utils.log import printable

MAX_LISTED = 200


class DatasetError(ValueError):
    """A data set cannot be built as asked (missing folders or files, bad pairs, bad split list)."""


class UnusableFilesError(DatasetError):
    """The set's files are there but some cannot be used as they are (e.g. colour masks): an error even where
    a missing set is only reported (test.py --skip-missing)."""


class DatasetWarning(UserWarning):
    """Something in a test set was left out or flagged; the message lists the files and the rule."""


_standard_format = warnings.formatwarning


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """A DatasetWarning as one line, 'warning: <message>' (it names the files itself; the place in this code that
    noticed is of no use to the reader); other warnings as Python formats them."""
    if issubclass(category, DatasetWarning):
        return f"warning: {message}\n"
    return _standard_format(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning


def format_names(names: list[str], limit: int = MAX_LISTED) -> str:
    """Comma-separated names (printable, utils.log), cut after `limit` with a count of the rest."""
    shown = ", ".join(map(printable, names[:limit]))
    return shown if len(names) <= limit else f"{shown}, ... and {len(names) - limit} more"


def warn(message: str) -> None:
    """Emit a DatasetWarning attributed to the caller of the data-set API."""
    warnings.warn(message, DatasetWarning, stacklevel=3)
