"""t2i-auditor: injection-free training data attribution for text-to-image models.

Answers one forensic question for a model owner: was this suspicious model trained on
images that my model generated? (Zhang et al., KDD 2025.)

The public API, importable from here (loaded on first use, so `import auditor` stays
cheap and a signature verifier never loads an ML library):

    load_keys, resolve_settings, Audit, save_outcome, envelope_path   the audit (auditor.workflow)
    SuspectSpec, open_suspect, identify                               any model (auditor.backends)
    Selection, SelectionConfig                                        key samples (auditor.key_selection)
    select_keys                                                       the algorithm on generators (auditor.selection)
    AuditConfig, GenerationSettings                                   settings (auditor.config)
    AttributionReport, load_report                                    the report (auditor.report)
    verify_signed_report                                              evidence (auditor.evidence)

Subpackages: `auditor.backends` (and `.engines`), `auditor.batch`, `auditor.zoo`,
`auditor.reproduction`; see docs/architecture.md for the layers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Audit": "auditor.workflow",
    "load_keys": "auditor.workflow",
    "resolve_settings": "auditor.workflow",
    "save_outcome": "auditor.workflow",
    "envelope_path": "auditor.workflow",
    "SuspectSpec": "auditor.backends",
    "open_suspect": "auditor.backends",
    "identify": "auditor.backends",
    "Selection": "auditor.key_selection",
    "select_keys": "auditor.selection",
    "SelectionConfig": "auditor.selection",
    "AuditConfig": "auditor.config",
    "GenerationSettings": "auditor.config",
    "AttributionReport": "auditor.report",
    "load_report": "auditor.report",
    "verify_signed_report": "auditor.evidence",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'auditor' has no attribute {name!r}")
