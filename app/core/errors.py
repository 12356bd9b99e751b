"""Domain errors shared across the app's domains (the HTTP layer maps them to status codes)."""


class NotFoundError(LookupError):
    """The thing asked for does not exist (HTTP 404)."""
