"""What an HTTP dialect is: how one query becomes requests, and which settings its requests can carry.

The HTTP client (`_http.HttpGenerator`) owns everything a hostile or flaky endpoint can do
(deadline, retries, rate, budget, size caps, decoys, transcript); a dialect owns only what
differs between APIs: the default path, the requests of one query and how each reply is
parsed, and the settings it refuses because no request of its API can carry them. Dialects
are objects in one table (`_dialects.DIALECTS`), so a new API is one module and one row,
never a branch in the client, the factory or the workflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import numpy as np

from auditor.config import GenerationSettings

T = TypeVar("T")


class Exchange(Protocol):
    """What a dialect may ask of the client: requests under the client's every limit."""

    name: str  # how errors name the endpoint (never its path or query string)
    endpoint: str  # scheme://host:port
    path: str  # the request path of the URL given (or the dialect's default), its query string included

    def call(
        self,
        parse: Callable[[bytes], T],
        body: bytes | None = None,
        *,
        method: str = "POST",
        path: str | None = None,
    ) -> T:
        """One request (to `path`, default the URL's), retried and budgeted; `parse` turns a 200
        reply's body into the value, raising `_replies.Retryable` for a malformed one."""
        ...

    def url_path(self, suffix: str, params: Mapping[str, str] | None = None) -> str:
        """The URL's path joined with `suffix`, its query string and `params` appended."""
        ...


class HttpDialect(Protocol):
    """One HTTP image-generation API."""

    name: str  # the value of `http.api`
    default_path: str  # used when the URL has no path
    requests_per_query: int  # the fewest requests one query takes (the budget check's unit)

    def prepare(self, options: Any) -> Any:
        """What one generator's queries work with (the options, and whatever they name, loaded and
        checked once: a template); BadInputError naming the field for options it cannot work with."""
        ...

    def check_settings(self, settings: GenerationSettings, context: Any, where: str) -> None:
        """Refuse settings no request of this API can carry, before the first query."""
        ...

    def fetch(
        self, exchange: Exchange, context: Any, prompt: str, seed: int, settings: GenerationSettings
    ) -> tuple[bytes, np.ndarray]:
        """The returned PNG's bytes and its pixels (checked: `_replies.decode_png`) for one query."""
        ...

    def record(self, context: Any) -> dict[str, str]:
        """What a transcript and describe() record of this dialect besides its name ({} for none)."""
        ...
