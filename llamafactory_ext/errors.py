"""The one error type for bad input: its message is the single line the user sees."""


class LfxError(Exception):
    """Bad input (file, record, field named in the message); the CLI exits 2 on it."""

    exit_code = 2
