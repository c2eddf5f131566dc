"""A study's raw evidence as one table: every (model, key, seed) distance, with the digests.

A study costs hours of training; scoring a statistic on its distances costs seconds. So the
audit stage's per-model records are written as one compact table (gzip-compressed CSV, kept
in the repository under docs/studies/), from which any registered verdict test can be scored
again (`t2i-audit reproduce --study calibration --rescore TABLE`) without retraining.

One row per (model, key, seed); the columns that are the same on every row (study, keyset
digest, distance, delta0) repeat, which gzip makes almost free, so each row is
self-describing and a table cannot be mixed with another study's rows unnoticed. A model
audited again as an honest suspect may serve it (another sampler, steps, precision: a
`sampling` variant, issue 20) is its own row set with its own audit token; every model
audited with the keyset's own settings shares one. Reading is
hostile-input checked: every field is parsed strictly, every model must hold every key
with the same seeds count, constant columns must be constant, and the decompressed size is
capped, each failure one line naming the file, line and field.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.errors import BadInputError
from auditor.fileio import atomic_write_bytes
from auditor.text import unsafe_char

if TYPE_CHECKING:
    from auditor.report import ReferenceResult

SCHEMA = "t2i-auditor.study-distances/v2"
COLUMNS = (
    "schema",
    "study",
    "keyset_digest",
    "distance_name",
    "delta0",
    "model",
    "role",
    "group",
    "rho",
    "model_digest",
    "sampling",
    "audit_token",
    "key",
    "key_id",
    "seed",
    "distance",
)
CONSTANT = ("schema", "study", "keyset_digest", "distance_name", "delta0")
PER_MODEL = ("role", "group", "rho", "model_digest", "sampling", "audit_token")
ROLES = ("reference", "panel", "innocent", "infringing", "base")
MAX_BYTES = 256 << 20  # decompressed: about ten times a 1,000-model study
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


@dataclass(frozen=True)
class ModelRecord:
    name: str
    role: str
    group: str
    rho: float
    digest: str
    seed_distances: tuple[tuple[float, ...], ...]  # per key, per audit seed
    seeds: tuple[tuple[int, ...], ...]
    token: str
    sampling: str = ""  # "" for the keyset's own settings, else the study's SAMPLING variant

    @property
    def distances(self) -> tuple[float, ...]:
        """Per key, the min over its seeds: what the audit reports."""
        return tuple(min(d) for d in self.seed_distances)


@dataclass(frozen=True)
class StudyTable:
    study: str
    keyset_digest: str
    audit_token: str  # of every model audited with the keyset's own settings
    distance_name: str
    delta0: float
    key_ids: tuple[str, ...]
    models: dict[str, ModelRecord]


def write_table(path: Path, table: StudyTable) -> Path:
    """The table as gzip'd CSV, byte-identical for the same numbers (no timestamp in the gzip header;
    distances written with repr, so they read back exactly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for model in table.models.values():
        for k, (key_id, distances, seeds) in enumerate(
            zip(table.key_ids, model.seed_distances, model.seeds, strict=True)
        ):
            for seed, distance in zip(seeds, distances, strict=True):
                writer.writerow(
                    (
                        SCHEMA,
                        table.study,
                        table.keyset_digest,
                        table.distance_name,
                        repr(float(table.delta0)),
                        model.name,
                        model.role,
                        model.group,
                        repr(float(model.rho)),
                        model.digest,
                        model.sampling,
                        model.token,
                        k,
                        key_id,
                        seed,
                        repr(float(distance)),
                    )
                )
    data = gzip.compress(buffer.getvalue().encode("utf-8"), compresslevel=9, mtime=0)
    atomic_write_bytes(path, data)
    return path


def _fail(path: Path, line: int, field: str, expected: str, got: object) -> BadInputError:
    shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
    return BadInputError(f"{path}: line {line}: field {field!r}: expected {expected}, got {shown}")


def _float(path: Path, line: int, field: str, text: str, low: float = 0.0, high: float = math.inf) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, line, field, "a number", text) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise _fail(path, line, field, f"a finite number in [{low:g}, {high:g}]", text)
    return value


def _int(path: Path, line: int, field: str, text: str, high: int) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]{0,18}", text) or int(text) >= high:
        raise _fail(path, line, field, f"an integer in [0, {high})", text)
    return int(text)


def _decompressed(path: Path) -> str:
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file (a study table, distances.csv.gz)") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BadInputError(f"{path}: not a gzip-compressed study table ({exc})") from None
    if len(data) > MAX_BYTES:
        raise BadInputError(f"{path}: decompresses to more than {MAX_BYTES >> 20} MiB; not a study table")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not UTF-8 text") from None


def read_table(path: str | Path) -> StudyTable:
    """The table at `path`, checked field by field (module docstring); BadInputError otherwise."""
    path = Path(path)
    reader = csv.reader(io.StringIO(_decompressed(path), newline=""))
    header = next(reader, None)
    if header != list(COLUMNS):
        raise _fail(path, 1, "header", f"the columns {', '.join(COLUMNS)} ({SCHEMA})", header)
    constant: dict[str, str] | None = None
    per_model: dict[str, tuple[str, ...]] = {}
    cells: dict[str, dict[int, list[tuple[int, float]]]] = {}
    key_ids: dict[int, str] = {}
    for line, row in enumerate(reader, start=2):
        if len(row) != len(COLUMNS):
            raise _fail(path, line, "row", f"{len(COLUMNS)} fields", f"{len(row)} fields")
        fields = dict(zip(COLUMNS, row, strict=True))
        here = {c: fields[c] for c in CONSTANT}
        if constant is None:
            constant = here
            if here["schema"] != SCHEMA:
                raise _fail(path, line, "schema", SCHEMA, here["schema"])
            if not _HEX64.match(here["keyset_digest"]):
                raise _fail(path, line, "keyset_digest", "64 lowercase hex digits", here["keyset_digest"])
            if not _NAME.match(here["study"]) or not _NAME.match(here["distance_name"]):
                raise _fail(path, line, "study", "a plain name", here["study"] + "/" + here["distance_name"])
            _float(path, line, "delta0", here["delta0"], 0.0, 10.0)
        for name in CONSTANT:
            if here[name] != constant[name]:
                raise _fail(
                    path, line, name, f"{constant[name]!r} as on line 2 (one study per table)", here[name]
                )
        model = fields["model"]
        if not _NAME.match(model):
            raise _fail(path, line, "model", "a plain name", model)
        if fields["role"] not in ROLES:
            raise _fail(path, line, "role", " or ".join(ROLES), fields["role"])
        for name in ("model_digest", "audit_token"):
            if not _HEX64.match(fields[name]):
                raise _fail(path, line, name, "64 lowercase hex digits", fields[name])
        if fields["sampling"] and not _NAME.match(fields["sampling"]):
            raise _fail(path, line, "sampling", "empty or a plain name", fields["sampling"])
        _float(path, line, "rho", fields["rho"], 0.0, 1.0)
        if not fields["group"] or len(fields["group"]) > 100 or unsafe_char(fields["group"]):
            raise _fail(path, line, "group", "a printable name of at most 100 characters", fields["group"])
        described = tuple(fields[c] for c in PER_MODEL)
        if per_model.setdefault(model, described) != described:
            raise _fail(path, line, "/".join(PER_MODEL), "one value per model", described)
        key = _int(path, line, "key", fields["key"], 100_000)
        if not _NAME.match(fields["key_id"]):
            raise _fail(path, line, "key_id", "a plain name", fields["key_id"])
        if key_ids.setdefault(key, fields["key_id"]) != fields["key_id"]:
            raise _fail(path, line, "key_id", f"{key_ids[key]!r} for key {key}", fields["key_id"])
        seed = _int(path, line, "seed", fields["seed"], 2**63)
        distance = _float(path, line, "distance", fields["distance"])
        seeds = cells.setdefault(model, {}).setdefault(key, [])
        if any(s == seed for s, _ in seeds):
            raise _fail(path, line, "seed", f"each seed once per (model, key) ({model}, key {key})", seed)
        seeds.append((seed, distance))
    if constant is None:
        raise BadInputError(f"{path}: no rows; a study table holds every (model, key, seed) distance")
    return _assemble(path, constant, per_model, cells, key_ids)


def _assemble(path, constant, per_model, cells, key_ids) -> StudyTable:
    num_keys = len(key_ids)
    if sorted(key_ids) != list(range(num_keys)):
        raise BadInputError(f"{path}: field 'key': keys must be numbered 0..{num_keys - 1} without gaps")
    models = {}
    per_key: int | None = None
    for name, keys in cells.items():
        if sorted(keys) != list(range(num_keys)):
            raise BadInputError(f"{path}: model {name}: has {len(keys)} of the table's {num_keys} keys")
        counts = {len(keys[k]) for k in keys}
        per_key = per_key or next(iter(counts))
        if counts != {per_key}:
            raise BadInputError(
                f"{path}: model {name}: field 'seed': {sorted(counts)} seeds per key, expected {per_key} for every key"
            )
        role, group, rho, digest, sampling, token = per_model[name]
        ordered = [keys[k] for k in range(num_keys)]
        models[name] = ModelRecord(
            name=name,
            role=role,
            group=group,
            rho=float(rho),
            digest=digest,
            seed_distances=tuple(tuple(d for _, d in seeds) for seeds in ordered),
            seeds=tuple(tuple(s for s, _ in seeds) for seeds in ordered),
            token=token,
            sampling=sampling,
        )
    plain = {m.token for m in models.values() if not m.sampling}
    if len(plain) != 1:
        raise BadInputError(
            f"{path}: field 'audit_token': the models audited with the keyset's settings (sampling empty)"
            f" must share one token, found {len(plain)}"
        )
    return StudyTable(
        study=constant["study"],
        keyset_digest=constant["keyset_digest"],
        audit_token=plain.pop(),
        distance_name=constant["distance_name"],
        delta0=float(constant["delta0"]),
        key_ids=tuple(key_ids[k] for k in range(num_keys)),
        models=models,
    )


def first_keys(table: StudyTable, count: int) -> StudyTable:
    """The table cut to its first `count` keys. A keyset lists its keys best-ranked first
    (auditor.selection), so these are the keys a `count`-key selection of the same candidates picks:
    one audit with 60 keys also scores the 30-key audit, without auditing again."""
    total = len(table.key_ids)
    if not 1 <= count <= total:
        raise ValueError(f"--keys: expected 1 to the table's {total} keys, got {count}")
    if count == total:
        return table
    models = {
        name: replace(m, seed_distances=m.seed_distances[:count], seeds=m.seeds[:count])
        for name, m in table.models.items()
    }
    return replace(table, key_ids=table.key_ids[:count], models=models)


def table_from_records(
    study_name: str,
    members: Iterable[tuple[str, str, str, float, str]],
    records: dict[str, ReferenceResult],
    *,
    keyset_digest: str,
    key_ids: tuple[str, ...],
    key_seeds: tuple[tuple[int, ...], ...],
    distance_name: str,
    delta0: float,
) -> StudyTable:
    """A study's per-model records (`calibration_study.load_records`: the workflow's one record,
    `Audit.record`) as a table; `members` are (name, role, group, rho, sampling) and the base
    (role "base") is added from the records."""
    rows = {}
    for name, role, group, rho, sampling in [*members, ("base", "base", "base", 0.0, "")]:
        record = records[name]
        rows[name] = ModelRecord(
            name=name,
            role=role,
            group=group,
            rho=rho,
            digest=record.digest,
            seed_distances=tuple(tuple(float(d) for d in seeds) for seeds in record.seed_distances),
            seeds=key_seeds,
            token=record.audit_token,
            sampling=sampling,
        )
    (token,) = {r.token for r in rows.values() if not r.sampling}
    return StudyTable(
        study=study_name,
        keyset_digest=keyset_digest,
        audit_token=token,
        distance_name=distance_name,
        delta0=delta0,
        key_ids=key_ids,
        models=rows,
    )
