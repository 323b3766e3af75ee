"""The one exception type users see.

Every problem caused by input (a file, a config key, a model path, a dimension) raises
:class:`SmecError` with a single-line message that names the culprit. The CLI prints the
message alone, without a traceback, and exits with status 2.
"""


class SmecError(Exception):
    """A user-facing error: one line, naming the file and line, or the key, at fault."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
