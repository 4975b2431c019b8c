"""The one error type for bad input: its message is the single line the user sees."""


class LfxError(Exception):
    """Bad input (file, record, field named in the message); the CLI exits 2 on it."""

    exit_code = 2


# What a path the user named raises when it is missing, of the wrong kind or not theirs to read or write: their
# input too (exit 2). Any other exception no check of ours turned into an LfxError is a bug of ours (exit 1).
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, LfxError) or (isinstance(err, PATH_ERRORS) and bool(getattr(err, "filename", None)))
