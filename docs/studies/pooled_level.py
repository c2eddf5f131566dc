"""The false-positive rate on the references' recipe, pooled over the worlds that confirmed a test.

Each world's rescore (`t2i-audit reproduce --study calibration --rescore TABLE`) averages each
innocent's verdicts over reference sets drawn from that world's own pool; a world cannot lend
references to another. So the worlds pool at the level of models: the sum of the per-model rates
(a row's mean times its models), rounded up as the rescore rounds it, over all their models, with
the same Clopper-Pearson interval. Only worlds that confirmed the test, unchanged, belong in the
pool; for v3 these are the holdout, wide and level worlds (docs/reproduction.md).

    for w in holdout wide level; do
      .venv/bin/t2i-audit reproduce --study calibration --rescore docs/studies/$w-distances.csv.gz --out /tmp/$w
    done
    .venv/bin/python docs/studies/pooled_level.py /tmp/{holdout,wide,level}/rescore/rescore.csv
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from auditor.reproduction.calibration_report import clopper_pearson
from auditor.reproduction.rescore import POOL_GROUP


def row(path: Path, alpha: float, references: int) -> tuple[float, int, str]:
    """(mean rate, models, test) of the pool group's row in one rescore's CSV."""
    with path.open(encoding="utf-8", newline="") as handle:
        for r in csv.DictReader(handle):
            if (
                float(r["alpha"]) == alpha
                and int(r["n_references"]) == references
                and r["group"] == POOL_GROUP
            ):
                return float(r["mean"]), int(r["models"]), r["test"]
    raise SystemExit(f"{path}: no {POOL_GROUP!r} row at alpha {alpha} with {references} references")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rescores", nargs="+", type=Path, help="each world's OUT/rescore/rescore.csv")
    args = parser.parse_args()
    print("| alpha | references | " + " | ".join(p.parent.parent.name for p in args.rescores) + " | pooled |")
    print("| --- | --- | " + " | ".join("---" for _ in args.rescores) + " | --- |")
    for alpha in (0.01, 0.05):
        for references in (5, 8, 16):
            parts = [row(p, alpha, references) for p in args.rescores]
            if len({test for _, _, test in parts}) != 1:
                raise SystemExit("the rescores score different tests; pool one test's")
            total = sum(mean * models for mean, models, _ in parts)
            models = sum(m for _, m, _ in parts)
            flagged = math.ceil(total - 1e-9)
            low, high = clopper_pearson(flagged, models)
            cells = " | ".join(f"{mean:.4f} ({m})" for mean, m, _ in parts)
            print(
                f"| {alpha:g} | {references} | {cells} | {total / models:.4f} [{low:.3f}, {high:.3f}]"
                f" ({flagged} of {models}) |"
            )


if __name__ == "__main__":
    main()
