"""Typed errors mapped to process exit codes.

Batch schedulers (Kubernetes Indexed Jobs, Ray, shell loops) decide whether to retry
from the exit code alone, so every failure the CLI can foresee belongs to exactly one
of these classes. Messages are one line: what was expected, what was found, what to do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

EXIT_OK = 0
EXIT_VERIFICATION_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: the caller may retry
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug (the CLI prints one scrubbed line, never a traceback)
MAX_MESSAGE_CHARS = 2000


class AuditorError(Exception):
    """Base of all foreseen failures; carries the exit code the CLI returns."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        # One line, never a secret, never a novel: a hostile file's value quoted in a message
        # (a 1 MB schema_version) must not become a 1 MB stderr line or error record.
        text = scrub(" ".join(scrub(str(message)).split()))
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[: MAX_MESSAGE_CHARS - 25] + " ... (message shortened)"
        super().__init__(text)


class BadInputError(AuditorError):
    """The input can never succeed as given (do not retry)."""

    exit_code = EXIT_BAD_INPUT


class VerificationError(AuditorError):
    """A signature, digest or commitment did not verify."""

    exit_code = EXIT_VERIFICATION_FAILED


class TransientError(AuditorError):
    """A failure that may pass on retry (network, busy device)."""

    exit_code = EXIT_TRANSIENT


# ---------------------------------------------------------------- secrets

REDACTED = "[redacted]"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Remember a configured secret (an auth header value) so `scrub` removes it from anything written.

    Also its escaped spellings (repr, JSON, unicode_escape), the forms a traceback or an
    error message would show it in.
    """
    import json

    if not value:
        return
    escaped = value.encode("unicode_escape").decode("ascii")  # what repr shows of it, quotes aside
    forms = {
        value,
        repr(value)[1:-1],
        json.dumps(value)[1:-1],
        escaped,
        escaped.replace("'", "\\'"),
        escaped.replace('"', '\\"'),
        escaped.replace("'", "\\'").replace('"', '\\"'),
    }
    with _secrets_lock:
        _secrets.update(form for form in forms if form)


def registered_secrets() -> frozenset[str]:
    with _secrets_lock:
        return frozenset(_secrets)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret (and every value in `extra`) replaced by [redacted]."""
    secrets = registered_secrets() | {value for value in extra if value}
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: no half-replaced secret
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (its first line, whitespace folded), or its type's name.

    Third-party libraries raise multi-line messages with advice (and sometimes values);
    our errors carry one line only.
    """
    text = scrub(str(exc)).strip()
    line = " ".join(text.splitlines()[0].split())[:limit] if text else ""
    return line or type(exc).__name__
