"""Typed errors mapped to process exit codes.

Batch schedulers (Kubernetes Indexed Jobs, Ray, shell loops) decide whether to retry
from the exit code alone, so every failure the CLI can foresee belongs to exactly one
of these classes. Messages are one line: what was expected, what was found, what to do.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VERIFICATION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: the caller may retry


class AuditorError(Exception):
    """Base of all foreseen failures; carries the exit code the CLI returns."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        # Keep messages to one line: they are printed as the single stderr line.
        super().__init__(" ".join(str(message).split()))


class BadInputError(AuditorError):
    """The input can never succeed as given (do not retry)."""

    exit_code = EXIT_BAD_INPUT


class VerificationError(AuditorError):
    """A signature, digest or commitment did not verify."""

    exit_code = EXIT_VERIFICATION_FAILED


class TransientError(AuditorError):
    """A failure that may pass on retry (network, busy device)."""

    exit_code = EXIT_TRANSIENT


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (its first line, whitespace folded), or its type's name.

    Third-party libraries raise multi-line messages with advice (and sometimes values);
    our errors carry one line only.
    """
    text = str(exc).strip()
    line = " ".join(text.splitlines()[0].split())[:limit] if text else ""
    return line or type(exc).__name__
