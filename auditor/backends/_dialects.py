"""The HTTP dialects, one table: `http.api` names a row, and the client, the HTTP suspect kind and
the workflow's settings check read everything dialect-specific from it.

A new API is a module with an object of the `_dialect.HttpDialect` protocol, one row here and
its name in `_http_options.HttpApi` (`tests/test_suspect_kinds.py` holds the two equal and runs
the shared generator checks on every row through a fake server).
"""

from __future__ import annotations

from typing import Any

from auditor.backends._a1111 import A1111_DIALECT, GENERIC_DIALECT
from auditor.backends._comfyui import COMFYUI_DIALECT
from auditor.backends._dialect import HttpDialect

DIALECTS: dict[str, HttpDialect] = {d.name: d for d in (A1111_DIALECT, GENERIC_DIALECT, COMFYUI_DIALECT)}


def dialect_of(options: Any) -> HttpDialect:
    """The dialect `options.api` names (None: the default options, a1111)."""
    return DIALECTS["a1111" if options is None else options.api]
