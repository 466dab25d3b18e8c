"""Domain errors and the gRPC status code each one maps to.

Core modules raise these; the server's error interceptor turns them into a
status code and a readable message. Anything else becomes INTERNAL without a
traceback reaching the client.
"""

from __future__ import annotations

import grpc


class GenSearchError(Exception):
    """Base class of errors whose message is safe to show to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInputError(GenSearchError):
    """The request is malformed or out of bounds."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(GenSearchError):
    """A named entity (item, user, version) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class NotReadyError(GenSearchError):
    """Models or indexes are not loaded yet (or are being unloaded)."""

    code = grpc.StatusCode.UNAVAILABLE


class VersionMismatchError(GenSearchError):
    """The request is pinned to an artifact version this process has not loaded."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceededError(GenSearchError):
    """The caller's time budget ran out before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ArtifactIntegrityError(GenSearchError):
    """An artifact file is missing or does not match its manifest checksum."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ConfigurationError(GenSearchError):
    """The process's settings ask for something this machine cannot do (e.g. an ONNX
    Runtime execution provider that is not installed); raised at start, never per request."""

    code = grpc.StatusCode.FAILED_PRECONDITION
