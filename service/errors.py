"""Errors: what the data plane and the trainer refuse, as domain errors.

They say nothing of HTTP: `service.api.errors` maps each class to its status code, in one
place (the way kserve's `errors.py` does).
"""

from __future__ import annotations


class StreamfitError(Exception):
    """Base of the domain errors; the message is what the client is told."""


class ModelNotFound(StreamfitError):
    """A request names a model this service does not serve."""


class ModelNotReady(StreamfitError):
    """No model is loaded yet."""


class InvalidInput(StreamfitError):
    """A request's content does not fit the model (width, finiteness, shape)."""


class NotTraining(StreamfitError):
    """A training operation asked of a process that does not train (or has not started)."""


class VersionNotFound(StreamfitError):
    """A checkpoint version that is not retained."""


class VersionUnusable(StreamfitError):
    """A retained checkpoint version that cannot be read."""


class AdminDisabled(StreamfitError):
    """Admin routes are off: no API key is configured."""


class Unauthorized(StreamfitError):
    """A missing or wrong bearer token."""


class UnsupportedMediaType(StreamfitError):
    """A request body that is not JSON."""
