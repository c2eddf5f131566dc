"""Typed failures of the export stage, mapped onto the project's exit codes.

Everything here is foreseen bad input or a bundle that cannot be trusted: the CLI
prints one line and exits 2 (`ExportError`) or 1 (`BundleIntegrityError`, a digest
that did not verify).
"""

from __future__ import annotations

from auditor.errors import BadInputError, VerificationError


class ExportError(BadInputError):
    """The model cannot be exported as asked (unsupported architecture, opset, host)."""


class ParityError(ExportError):
    """An exported component disagrees with torch beyond its contract's tolerance."""


class BundleIntegrityError(VerificationError):
    """A bundle file is missing or its sha256 differs from the manifest (tampered or corrupt)."""


class BackendUnavailable(Exception):
    """Internal: an engine backend cannot run this bundle here; the loader may fall back to torch.

    Not an `AuditorError`: it never reaches the CLI. `load_engine_generator` turns it into
    a fallback with `BackendInfo.note` set, or into a `BadInputError` when no source model
    is at hand.
    """
