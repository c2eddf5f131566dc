"""Typed failures of the export stage, mapped onto the project's exit codes.

Everything here is foreseen bad input: the CLI prints one line and exits 2. (A bundle
whose files do not match its manifest is the runtime's `BundleIntegrityError`, exit 1.)
"""

from __future__ import annotations

from auditor.errors import BadInputError


class ExportError(BadInputError):
    """The model cannot be exported as asked (unsupported architecture, opset, host)."""


class ParityError(ExportError):
    """An exported component disagrees with torch beyond its contract's tolerance."""
