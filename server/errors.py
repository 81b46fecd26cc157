"""The few exceptions the server raises; the API maps them to 4xx responses, the CLI to messages."""


class ClipalbumError(Exception):
    """Base class: the message says what failed, where, and what to do."""


class BundleError(ClipalbumError):
    """A model bundle is missing, corrupt or incompatible."""


class ImageDecodeError(ClipalbumError):
    """A file could not be read as a photo (not an image, truncated, too large, ...)."""


class NotFoundError(ClipalbumError):
    """An id or path that the index does not know."""


class InvalidQueryError(ClipalbumError):
    """A query the API refuses: empty, too long, k out of range."""


class NoVectorError(ClipalbumError):
    """A photo the index knows but has no vector for yet (waiting to be embedded, or unreadable)."""


class ServerBusyError(ClipalbumError):
    """The server is at its limit for this kind of work (decoding uploads) right now; try again shortly."""
