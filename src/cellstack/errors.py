"""User-facing errors.

Every problem a user can fix (a corrupt file, a bad CSV row, a wrong size) raises a
:class:`CellstackError` whose message is one line naming the file or row. The CLI prints
that line and exits with status 2 instead of showing a traceback.
"""


class CellstackError(ValueError):
    """A problem with the user's input, described in one line."""


class DataError(CellstackError):
    """Unreadable or inconsistent data: a corrupt image, a malformed CSV row or RLE."""


class ArgumentTypeError(CellstackError, TypeError):
    """A Python API argument of the wrong type (both a ``TypeError`` and, like every
    cellstack error, a one-line message the CLI can print)."""


class ConfigError(CellstackError):
    """An unknown key, a value of the wrong type or an out-of-range value in a config,
    thresholds or ensemble file."""


def quote(reason: str, width: int = 200) -> str:
    """A library's message, quoted in one of ours: its first line, at most ``width``
    characters, cut between words (with "...") rather than inside one."""
    import textwrap

    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    return textwrap.shorten(lines[0], width, placeholder=" ...") if lines else ""
