"""The one error type users see: a single line naming what is wrong."""


class GlasswingError(Exception):
    """Bad input or a failed operation, reported as one line and a non-zero exit."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
