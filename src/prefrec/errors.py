"""One exception type for problems in what the user gave us (a file, a config, a request)."""

import difflib

MAX_MESSAGE_CHARS = 2000  # an error's most characters on the terminal: a message quotes the user's own text


class UserError(ValueError):
    """Bad input: the message names the file, line or field and what was expected."""


def did_you_mean(name: str, known) -> str:
    """"; did you mean 'x'?" with the closest of `known` to a mistyped name, else "" (for an error message's end)."""
    near = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def printable(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message` safe to print on a terminal: control characters (an escape sequence from a crafted file or path
    would drive the terminal) shown as escapes, newlines and tabs kept, and at most `limit` characters."""
    shown = "".join(c if c.isprintable() or c in "\n\t" else ascii(c)[1:-1] for c in message)
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}… ({len(shown) - limit:,} more characters)"
