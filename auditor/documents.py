"""The one loader for every document the project reads: read, parse, version, validate.

Keysets, reports, envelopes, bundle manifests, discriminators, shadow sets, commitments,
job files and HTTP replies may all come from someone else, so each is treated as hostile
the same way:

- **size**: a file is refused past `max_bytes` before it is read whole;
- **syntax**: JSON (also YAML and TOML for job files) parsed with duplicate keys, NaN,
  Infinity, numbers beyond a float, integers of more than 40 digits and nesting deeper
  than `MAX_DEPTH` refused, each as a one-line `BadInputError` naming the file (Python's
  own parsers would raise RecursionError or ValueError, or silently keep the last of two
  keys, which lets two readers see two different documents);
- **version**: one field, `schema_version`, checked before validation, so a document of
  another version gets "expected X" rather than a list of unknown fields. Documents
  written before the field had this name (`format` in shadow sets, bundle manifests and
  discriminators, no field in commitments) still load: their old marker is named in
  `legacy` and is mapped onto the current version;
- **validation**: a frozen pydantic model; its first error becomes one line naming the
  field (`format_validation_error`, the one formatter).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from auditor.errors import BadInputError

VERSION_FIELD = "schema_version"
MAX_DEPTH = 64
MAX_INT_DIGITS = 40  # seeds are < 2**63 (19 digits), byte counts far shorter
DEFAULT_MAX_BYTES = 64 << 20

Model = TypeVar("Model", bound=BaseModel)


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Pydantic's multi-line report -> one line naming the first offending field."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"])
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "(top level)")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"field '{field}': {err['msg']}{more}"


def validate(model: type[Model], data: Any, where: str, prefix: str = "") -> Model:
    """`model.model_validate(data)`, its failure one BadInputError line naming `where` and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInputError(f"{where}: {format_validation_error(exc, prefix)}") from None


# ---------------------------------------------------------------- reading


def read_bytes(path: str | os.PathLike[str], what: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A file's bytes, or one line saying why not (missing, a folder, unreadable, too large)."""
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO or device in place of a file must not block the open itself
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as handle:
            stat = os.fstat(handle.fileno())
            if S_ISDIR(stat.st_mode):
                raise IsADirectoryError
            if not S_ISREG(stat.st_mode):
                raise BadInputError(f"{p}: not a regular file (a pipe, socket or device), expected a {what}")
            size = stat.st_size
            if size > max_bytes:
                raise BadInputError(f"{p}: {what} is {size} bytes, more than the {max_bytes} accepted")
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise BadInputError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise BadInputError(f"{p}: is a folder, expected a {what}") from None
    except OSError as exc:
        raise BadInputError(f"{p}: cannot read {what} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > max_bytes:  # grew while being read (a pipe, a file being written)
        raise BadInputError(f"{p}: {what} is more than the {max_bytes} bytes accepted")
    return data


# ---------------------------------------------------------------- parsing


class _Refused(ValueError):
    """A value the strict JSON parser refuses; the message says which."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number JSON allows")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS} accepted)")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:20]}... is beyond the range of a float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key!r}")
        out[key] = value
    return out


def check_structure(value: Any, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """Refuse nesting deeper than `max_depth`, non-finite floats and over-long integers.

    Iterative, and each container is visited once (YAML aliases can make one object
    appear a million times, which a recursive walk would follow each time).
    """
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if depth > max_depth:
                raise BadInputError(f"{where}: nested deeper than {max_depth} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(node, float) and not math.isfinite(node):
            raise BadInputError(f"{where}: {node} is not an accepted number (NaN and infinities are refused)")
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 10**MAX_INT_DIGITS:
            raise BadInputError(f"{where}: an integer of more than {MAX_INT_DIGITS} digits is refused")
    return value


def count_values(data: bytes | str) -> int:
    """An upper bound on the number of arrays, objects and their members in JSON text.

    Counts `[`, `{` and `,` (inside strings too, so it may overcount, never undercount by
    more than one per container): cheap on bytes, and enough to refuse a reply of
    millions of tiny objects before the parser turns it into gigabytes of Python objects.
    """
    if isinstance(data, str):
        return data.count("[") + data.count("{") + data.count(",")
    return data.count(b"[") + data.count(b"{") + data.count(b",")


def parse_json(
    data: bytes | str, where: str, max_depth: int = MAX_DEPTH, max_values: int | None = None
) -> Any:
    """Strict JSON (see the module docstring); every failure is one BadInputError line.

    `max_values`: refuse text with more JSON values than this (see `count_values`) before
    parsing it; for untrusted replies whose expected shape is small.
    """
    if max_values is not None and (found := count_values(data)) > max_values:
        raise BadInputError(
            f"{where}: expected JSON of at most {max_values} values, refused text with about {found}"
        )
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        value = json.loads(
            text,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except UnicodeDecodeError:
        raise BadInputError(f"{where}: expected JSON, found bytes that are not UTF-8 text") from None
    except _Refused as exc:
        raise BadInputError(f"{where}: expected JSON, refused it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{where}: expected JSON, could not parse it ({exc})") from None
    except RecursionError:
        raise BadInputError(f"{where}: expected JSON, refused it: nested too deeply") from None
    except ValueError as exc:  # anything else the decoder raises on hostile text
        raise BadInputError(f"{where}: expected JSON, refused it ({exc})") from None
    return check_structure(value, where, max_depth)


def _strict_yaml_loader():
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the keys written here; merged ones (<<) may be overridden
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader refuses it itself
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:80]!r}", key_node.start_mark
                )
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def parse_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        value = yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadInputError(
            f"{where}: not valid YAML{line} ({getattr(exc, 'problem', None) or exc})"
        ) from None
    except RecursionError:
        raise BadInputError(f"{where}: not accepted YAML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise BadInputError(f"{where}: not accepted YAML ({exc})") from None
    return check_structure(value, where)


def parse_toml(text: str, where: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise BadInputError(f"{where}: TOML needs Python 3.11+ (or tomli); use YAML or JSON") from None
    try:
        value = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{where}: not valid TOML ({exc})") from None
    except RecursionError:
        raise BadInputError(f"{where}: not accepted TOML: nested too deeply") from None
    except ValueError as exc:
        raise BadInputError(f"{where}: not accepted TOML ({exc})") from None
    return check_structure(value, where)


def parse_text(data: bytes, where: str, syntax: str) -> Any:
    """Parse `data` as json, yaml or toml."""
    if syntax == "json":
        return parse_json(data, where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{where}: expected UTF-8 {syntax.upper()} text") from None
    if syntax == "yaml":
        return parse_yaml(text, where)
    if syntax == "toml":
        return parse_toml(text, where)
    raise ValueError(f"unknown syntax {syntax!r}")


def syntax_of(path: str | os.PathLike[str]) -> str:
    """json for .json, toml for .toml, yaml otherwise (YAML is a superset of JSON)."""
    suffix = Path(path).suffix.lower()
    return {".json": "json", ".toml": "toml"}.get(suffix, "yaml")


# ---------------------------------------------------------------- versions and documents


def check_version(
    data: Any,
    where: str,
    version: str,
    what: str,
    legacy: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`data` as a dict carrying `schema_version: version`, or one line naming the expected version.

    `legacy` maps an old marker field to the value today's code wrote there (for
    example {"format": "t2i-auditor-shadows-v1"}): such a document is accepted as the
    current version, the old field dropped. A document with neither is taken as the
    current version only when `legacy` says so with {VERSION_FIELD: ""}.
    """
    if not isinstance(data, dict):
        raise BadInputError(f"{where}: expected a JSON object ({what}), got {type(data).__name__}")
    data = dict(data)
    if VERSION_FIELD in data:
        found = data[VERSION_FIELD]
        if found != version:
            raise BadInputError(f"{where}: {VERSION_FIELD} {found!r} is not supported (expected {version!r})")
        return data
    for field, value in (legacy or {}).items():
        if field == VERSION_FIELD and value == "":
            data[VERSION_FIELD] = version
            return data
        if field in data:
            if data[field] != value:
                raise BadInputError(
                    f"{where}: {field} {data[field]!r} is not supported (expected {VERSION_FIELD} {version!r})"
                )
            del data[field]
            data[VERSION_FIELD] = version
            return data
    raise BadInputError(f"{where}: expected a {what} with {VERSION_FIELD} {version!r}, the field is missing")


def load_document(
    path: str | os.PathLike[str],
    model: type[Model],
    *,
    what: str,
    version: str | None = None,
    legacy: Mapping[str, str] | None = None,
    syntax: str = "json",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Model:
    """Read, parse, version-check and validate one document (see the module docstring)."""
    where = str(Path(path))
    data = parse_text(read_bytes(path, what, max_bytes), where, syntax)
    if version is not None:
        data = check_version(data, where, version, what, legacy)
    return validate(model, data, where)
