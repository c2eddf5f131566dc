"""A registered verdict test scored on a study table: its level over many reference sets, and power.

One set of references is one draw of what an auditor may hold, and a false-positive rate
measured against one set is that set's rate (over sets it varies: some sets are closer
to the keys than others). So each suspect is audited once (the table) and judged against
many reference sets drawn from the innocent pool: the references' recipe, that is the
study's references and its same-recipe innocents; a set never holds the suspect judged.
A set is fitted once (`VerdictTest.fit`) and scores every suspect not in it once; the record
is judged at each alpha by the same gates as an audit's (`verdict_test.judge`).

Per (number of references, group) the tables give the rate averaged over sets, the
spread of the per-set rate (5th and 95th percentiles, and the share of sets at more
than twice alpha), and a Clopper-Pearson 95% interval whose unit is the model, not the
(set, model) pair: x = the models' summed flag rates, rounded up, out of the group's
distinct models (a model flagged in a share f of the sets counts f; rounding up keeps
the interval on the cautious side; sampling variants of one trained model, which share its
content digest, count as that one model). Power is averaged over sets the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auditor.fileio import atomic_write_text
from auditor.reproduction.records import ModelRecord, StudyTable
from auditor.verdict_test import VerdictTest, judge, seed_noise

POOL_GROUP = "reference recipe"
ALPHAS = (0.01, 0.05)


@dataclass(frozen=True)
class Rates:
    """One table cell: a rate over reference sets, its spread over sets, and its interval."""

    n_references: int
    group: str
    rho: float
    models: int
    mean: float
    low: float
    high: float
    p05: float
    p95: float
    over_twice: float  # share of sets whose rate exceeds 2 alpha
    inconclusive: float


def innocent_pool(table: StudyTable) -> list[ModelRecord]:
    """The population references are drawn from: fine-tunes of the references' recipe, never the
    base, a panel model (it screened the keys) or an infringer."""
    return [
        m
        for m in table.models.values()
        if m.role == "reference" or (m.role == "innocent" and m.group == POOL_GROUP)
    ]


def _judged(table: StudyTable) -> list[ModelRecord]:
    return [m for m in table.models.values() if m.role in ("innocent", "infringing")]


def flag_rates(
    table: StudyTable,
    test: VerdictTest,
    *,
    n_references: int,
    sets: int,
    min_references: int,
    seed: int = 0,
) -> dict[float, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Per alpha, per judged model, its verdict in each set that does not hold it: (flagged,
    inconclusive), each an array over sets, NaN where the set holds the model. One fit per set."""
    pool = innocent_pool(table)
    if len(pool) <= n_references:
        raise ValueError(f"{n_references} references need a pool of more than {n_references} innocents")
    rng = np.random.default_rng(seed)
    judged = _judged(table)
    out = {
        alpha: (
            {m.name: np.full(sets, np.nan) for m in judged},
            {m.name: np.full(sets, np.nan) for m in judged},
        )
        for alpha in ALPHAS
    }
    for s in range(sets):
        chosen = [pool[i] for i in rng.choice(len(pool), n_references, replace=False)]
        refs = [m.seed_distances for m in chosen]
        fitted = test.fit(refs, delta0=table.delta0)
        held = {m.digest for m in chosen}  # by content: a model audited again with other sampling is still it
        noise = seed_noise(refs)
        for model in judged:
            if model.digest in held:
                continue
            record = fitted.score(model.seed_distances) if fitted.varies else None  # once per (set, model)
            for alpha, (flagged, unsure) in out.items():
                verdict, _ = judge(
                    record,
                    test=test,
                    n_references=n_references,
                    alpha=alpha,
                    min_references=min_references,
                    noise=noise,
                )
                flagged[model.name][s] = verdict == "infringing"
                unsure[model.name][s] = verdict == "inconclusive"
    return out


def _interval(x: int, n: int) -> tuple[float, float]:
    from auditor.reproduction.calibration_report import clopper_pearson

    return clopper_pearson(x, n)


def summarize(
    table: StudyTable,
    flagged: dict[str, np.ndarray],
    unsure: dict[str, np.ndarray],
    n_references: int,
    alpha: float,
) -> list[Rates]:
    """One row per innocent group (the pool's group first, then each shift, then all shifted) and per
    infringing (group, rho)."""
    judged = _judged(table)
    cells: dict[tuple[str, float], list[ModelRecord]] = {}
    for m in judged:
        group = m.group if m.role == "innocent" else f"infringing: {m.group}"
        cells.setdefault((group, m.rho), []).append(m)
    shifted = [m for m in judged if m.role == "innocent" and m.group != POOL_GROUP and not m.sampling]
    if shifted:
        cells[("all shifted recipes", 0.0)] = shifted
    sampled = [m for m in judged if m.role == "innocent" and m.sampling]
    if sampled:
        cells[("all sampling variants", 0.0)] = sampled
    order = sorted(cells, key=lambda c: (c[0].startswith("infringing"), c[0] != POOL_GROUP, c))
    rows = []
    for group, rho in order:
        members = cells[(group, rho)]
        f = np.stack([flagged[m.name] for m in members])  # models x sets
        u = np.stack([unsure[m.name] for m in members])
        judged_in = np.isfinite(f).any(axis=1)  # a pool model drawn into every set was never judged
        if not judged_in.any():
            continue
        f, u = f[judged_in], u[judged_in]
        digests = [m.digest for m, kept in zip(members, judged_in, strict=True) if kept]
        per_row = np.nanmean(f, axis=1)
        # the unit is the trained model: sampling variants of one model are averaged into one
        per_model = np.array([per_row[[d == x for x in digests]].mean() for d in dict.fromkeys(digests)])
        counts = np.isfinite(f).sum(axis=0)  # per set: the group's models it judged
        per_set = np.nansum(f, axis=0)[counts > 0] / counts[counts > 0]
        x = math.ceil(float(per_model.sum()) - 1e-9)
        low, high = _interval(x, len(per_model))
        rows.append(
            Rates(
                n_references=n_references,
                group=group,
                rho=rho,
                models=len(per_model),
                mean=float(per_model.mean()),
                low=low,
                high=high,
                p05=float(np.percentile(per_set, 5)) if per_set.size else math.nan,
                p95=float(np.percentile(per_set, 95)) if per_set.size else math.nan,
                over_twice=float(np.mean(per_set > 2 * alpha)) if per_set.size else math.nan,
                inconclusive=float(np.nanmean(u)),
            )
        )
    return rows


def rescore(
    table: StudyTable,
    test: VerdictTest,
    *,
    sets: int = 200,
    reference_counts: tuple[int, ...] = (5, 8, 16),
    min_references: int = 5,
    seed: int = 0,
) -> dict[float, list[Rates]]:
    """Per alpha, every row for each reference count the pool allows (more innocents than references)."""
    pool = len(innocent_pool(table))
    counts = [n for n in reference_counts if 3 <= n < pool]
    out: dict[float, list[Rates]] = {alpha: [] for alpha in ALPHAS}
    for n in counts:
        verdicts = flag_rates(
            table, test, n_references=n, sets=sets, min_references=min(min_references, n), seed=seed + n
        )
        for alpha, (flagged, unsure) in verdicts.items():
            out[alpha] += summarize(table, flagged, unsure, n, alpha)
    return out


HEADER = [
    "references",
    "group",
    "rho",
    "models",
    "rate (mean over sets)",
    "95% CI (models)",
    "per-set 5th-95th pct",
    "sets over 2 alpha",
    "inconclusive",
]


def _line(r: Rates) -> list[str]:
    return [
        str(r.n_references),
        r.group,
        f"{r.rho:g}",
        str(r.models),
        f"{r.mean:.3f}",
        f"[{r.low:.3f}, {r.high:.3f}]",
        f"{r.p05:.3f}-{r.p95:.3f}",
        f"{r.over_twice:.2f}",
        f"{r.inconclusive:.2f}",
    ]


def write_rescore(
    out: Path, table: StudyTable, test: VerdictTest, results: dict[float, list[Rates]], context: dict
) -> Path:
    """`OUT/rescore.csv` (every cell) and `OUT/rescore.md` (the tables, and what they rest on)."""
    from auditor.reproduction.calibration_report import _markdown, write_rows_csv

    rows = [
        {"alpha": alpha, "test": test.method, **{k: getattr(r, k) for k in Rates.__dataclass_fields__}}
        for alpha, cells in results.items()
        for r in cells
    ]
    write_rows_csv(out / "rescore.csv", rows)
    pool = len(innocent_pool(table))
    sections = "\n\n".join(
        f"## alpha = {alpha:g}\n\n{_markdown(HEADER, [_line(r) for r in cells])}"
        for alpha, cells in results.items()
    )
    text = f"""# Rescore of study `{table.study}` with `{test.method}`

{test.title}. Table: keyset {table.keyset_digest[:16]}..., audit token {table.audit_token[:16]}...,
distance {table.distance_name}, delta0 {table.delta0:g}, {context.get("keys", f"{len(table.key_ids)} keys")}, {len(table.models)} models.
Each suspect is judged against {context["sets"]} reference sets per reference count, drawn from the
{pool} innocents of the references' recipe (never the suspect itself); rates are averaged over sets.
Innocent rows are false-positive rates, infringing rows power. The interval counts models, not
(set, model) pairs (auditor/reproduction/rescore.py). Machine: {context["machine"]}; {context["seconds"]:.0f} s.

{sections}
"""
    path = out / "rescore.md"
    atomic_write_text(path, text)
    return path
