"""Are trained suspects noisier from seed to seed than their references flagged more often?

The simulated soft spot of the noise matching (docs/method.md: a sampler that adds seed noise
to a model that is otherwise innocent) asks whether real noisier models behave so. This reads
a committed study table, draws reference sets of 8 from the references' recipe (the rescore's
pool), fits a registered verdict test on each, and scores every other innocent and infringer;
each (set, suspect) pair is binned by the suspect's seed noise over the references', both read
as v3 reads them (the median within-key variance over the farther half of keys), as a ratio
of standard deviations. Pairs, not models: a model counts once per set, so a bin's rate is a
description, not an interval.

    .venv/bin/python docs/studies/noisier_suspects.py docs/studies/confirm-distances.csv.gz
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from auditor.key_null_test import far_noise, key_logs, matching
from auditor.reproduction.records import read_table
from auditor.reproduction.rescore import innocent_pool
from auditor.verdict_tests import DEFAULT, verdict_test

BINS = ((0.0, 1.2), (1.2, 1.5), (1.5, 2.0), (2.0, np.inf))


def kind(role: str, group: str, rho: float) -> str | None:
    if role == "innocent":
        return "innocent, " + (
            "references' recipe"
            if group == "reference recipe"
            else "sampling"
            if group.startswith("sampling")
            else "shifted"
        )
    if role == "infringing" and not group.startswith("lora"):
        return f"infringing full fine-tune, rho {rho:g}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table")
    parser.add_argument("--test", default=DEFAULT.method)
    parser.add_argument("--sets", type=int, default=40)
    parser.add_argument("--references", type=int, default=8)
    args = parser.parse_args()
    table = read_table(args.table)
    test = verdict_test(args.test)
    pool = innocent_pool(table)
    rng = np.random.default_rng(0)
    cells: dict[tuple[str, int], list[tuple[bool, bool]]] = defaultdict(list)
    for _ in range(args.sets):
        chosen = [pool[i] for i in rng.choice(len(pool), args.references, replace=False)]
        names = {m.name for m in chosen}
        fitted = test.fit([m.seed_distances for m in chosen], delta0=table.delta0)
        logs = [key_logs(m.seed_distances) for m in chosen]
        means = np.stack([x.min(axis=1) for x in logs]).mean(axis=0)
        target = matching(logs, means).target
        for m in table.models.values():
            label = kind(m.role, m.group, m.rho)
            if m.name in names or label is None:
                continue
            x = key_logs(m.seed_distances)
            ratio = float(np.sqrt(far_noise(x, x.min(axis=1) - means) / target))
            b = next(i for i, (lo, hi) in enumerate(BINS) if lo <= ratio < hi)
            p = fitted.score(m.seed_distances).p_value
            cells[(label, b)].append((p <= 0.01, p <= 0.05))
    print(f"{table.study}: {args.test}, {args.sets} sets of {args.references} references\n")
    print(
        "| suspects | seed noise / references' | (set, suspect) pairs | share | flagged at 0.01 | at 0.05 |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for label in sorted({k for k, _ in cells}):
        total = sum(len(cells[(label, b)]) for b in range(len(BINS)))
        for b, (lo, hi) in enumerate(BINS):
            flags = np.array(cells.get((label, b), []), dtype=float).reshape(-1, 2)
            if len(flags):
                band = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">= {lo:g}"
                share, f01, f05 = len(flags) / total, flags[:, 0].mean(), flags[:, 1].mean()
                print(f"| {label} | {band} | {len(flags)} | {share:.2f} | {f01:.3f} | {f05:.3f} |")


if __name__ == "__main__":
    main()
