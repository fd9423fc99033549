"""The one exception type users see: a clear message naming the file/line or field at fault.

The CLI prints it without a traceback and exits with status 2.
"""


class TwofilesError(Exception):
    """A user-facing error: bad input, a missing file, an invalid option."""


class BadInputError(TwofilesError):
    """Input data that cannot be used as it is (names the file and, where known, the line)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path, self.line = path, line
