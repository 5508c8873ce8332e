"""One exception type for problems in what the user gave us (a file, a config, a request)."""

import difflib


class UserError(ValueError):
    """Bad input: the message names the file, line or field and what was expected."""


def did_you_mean(name: str, known) -> str:
    """"; did you mean 'x'?" with the closest of `known` to a mistyped name, else "" (for an error message's end)."""
    near = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""
