"""One exception type for problems in what the user gave us (a file, a config, a request)."""


class UserError(ValueError):
    """Bad input: the message names the file, line or field and what was expected."""
