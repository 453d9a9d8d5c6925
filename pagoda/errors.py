"""Exceptions that name what was wrong, so entry points can map them to precise errors."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request (prompt or sampling parameters) is invalid; ``param`` names the field.

    Raised for that request only: the engine and the other requests go on.
    The server maps it to an OpenAI-style 400 error with ``param`` set.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
