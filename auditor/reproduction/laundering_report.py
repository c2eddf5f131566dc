"""The laundering study's report: per attack, distance to the keys, power, and the innocents' level.

Every verdict is the calibration study's (`calibration_study.verdicts`: the shipped model-level
test against the study's references); this module only groups them by attack and draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from auditor.figures import figure_png
from auditor.fileio import atomic_write_bytes, atomic_write_text
from auditor.reproduction.calibration_report import _markdown, clopper_pearson, study_table, write_rows_csv
from auditor.reproduction.calibration_study import ALPHAS, Study, verdicts

if TYPE_CHECKING:
    from auditor.report import ReferenceResult

__all__ = ["HEADER", "plot_png", "report_stage", "rows_with_distances", "table"]

HEADER = [
    "suspects",
    "rho",
    "n",
    "median key distance",
    "keys under delta0",
    "flagged @0.01 [95% CI]",
    "flagged @0.05 [95% CI]",
]


def rows_with_distances(study: Study, records: dict[str, ReferenceResult]) -> list[dict]:
    """The verdict rows, each with its model's median distance to the keys, share of keys under
    delta0, and how the study made it (its laundering and further training)."""
    rows = verdicts(study, records)
    specs = {s.name: s for s in study.zoo.suspects}
    models = {m.name: m.model or m.name for m in study.members}
    for row in rows:
        distances = np.asarray(records[row["name"]].distances, dtype=float)
        row["median_d"] = float(np.median(distances))
        row["share_under_delta0"] = float(np.mean(distances < study.delta0))
        made = specs[models[row["name"]]].model_dump(mode="json", exclude_none=True)
        row["launder"] = made.get("launder")
        row["then"] = made.get("then")
    return rows


def _cell(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]" if n else "-"


def _groups(rows: list[dict]) -> list[tuple[str, float, list[dict]]]:
    """(label, rho, rows): the innocents first (those of the references' recipe, then any other
    kind, e.g. LoRA innocents), then every attack in the study's order."""
    innocents: dict[str, list[dict]] = {"reference recipe": []}
    seen: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        if r["role"] == "innocent":
            innocents.setdefault(r["group"], []).append(r)
        elif r["role"] == "infringing":
            seen.setdefault((r["group"], r["rho"]), []).append(r)
    out = [(f"innocent ({group})", 0.0, members) for group, members in innocents.items()]
    out += [(f"infringing, {group}", rho, members) for (group, rho), members in seen.items()]
    return out


def table(rows: list[dict]) -> list[list[str]]:
    """One line per group: the median over its models of each model's median key distance
    (with the range), the mean share of keys under delta0, and the flagged share per alpha:
    power for infringers, the false-positive rate for innocents."""
    lines = []
    for label, rho, members in _groups(rows):
        if not members:
            continue
        d = [r["median_d"] for r in members]
        line = [
            label,
            f"{rho:g}",
            str(len(members)),
            f"{np.median(d):.3f} ({min(d):.3f}-{max(d):.3f})",
            f"{np.mean([r['share_under_delta0'] for r in members]):.2f}",
        ]
        for alpha in ALPHAS:
            k = sum(r[f"verdict@{alpha:g}"] == "infringing" for r in members)
            line.append(_cell(k, len(members)))
        lines.append(line)
    return lines


def plot_png(rows: list[dict], delta0: float) -> bytes:
    """Left: each model's median key distance per group; right: flagged share at alpha 0.01 with CI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = _groups(rows)
    labels = [
        label.replace("infringing, ", "") + (f" (rho {rho:g})" if rho else "") for label, rho, _ in groups
    ]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for i, (label, _, members) in enumerate(groups):
        colour = "#2e7d32" if label.startswith("innocent") else "#c0392b"
        ys = [r["median_d"] for r in members]
        xs = i + np.linspace(-0.15, 0.15, num=max(len(ys), 1))[: len(ys)]
        left.scatter(xs, ys, s=14, color=colour)
    left.axhline(delta0, color="black", linestyle="--", linewidth=1, label=f"delta0 {delta0:g}")
    left.set_xticks(range(len(groups)))
    left.set_xticklabels(labels, rotation=40, ha="right", fontsize=7)
    left.set_ylabel("median distance to the key images")
    left.set_title("each model's median key distance", fontsize=9)
    left.legend(fontsize=7)
    ys, errs = [], [[], []]
    for _, _, members in groups:
        n = len(members)
        k = sum(r["verdict@0.01"] == "infringing" for r in members)
        lo, hi = clopper_pearson(k, n)
        ys.append(k / max(n, 1))
        errs[0].append(k / max(n, 1) - lo)
        errs[1].append(hi - k / max(n, 1))
    colours = ["#2e7d32" if label.startswith("innocent") else "#c0392b" for label, _, _ in groups]
    for i, (y, lo, hi) in enumerate(zip(ys, errs[0], errs[1], strict=True)):
        right.errorbar([i], [y], yerr=[[lo], [hi]], fmt="o", color=colours[i], capsize=3)
    right.set_xticks(range(len(groups)))
    right.set_xticklabels(labels, rotation=40, ha="right", fontsize=7)
    right.set_ylim(-0.05, 1.05)
    right.set_ylabel("flagged at alpha 0.01 (95% CI)")
    right.set_title("power per attack; false-positive rate of the innocents (green)", fontsize=9)
    return figure_png(fig)


def report_stage(study: Study, records: dict[str, ReferenceResult], out: Path, context: dict) -> Path:
    """laundering.csv (every model), laundering.png, laundering.md (the table) and the study's
    distances table (distances.csv.gz) under `out`."""
    study_table(study, records, out)
    rows = rows_with_distances(study, records)
    write_rows_csv(out / "laundering.csv", rows)
    atomic_write_bytes(out / "laundering.png", plot_png(rows, study.delta0))
    timings = ", ".join(f"{k} {v / 60:.1f} min" for k, v in context["timings"].items())
    base_d = float(np.median(records["base"].distances))
    m_keys = len(records["base"].distances)  # the keys that qualified, at most num_keys
    text = f"""# Laundering study ({study.name})

Machine: {context["machine"]}. Stage times: {timings or "n/a"}.
{len(study.members)} models: {sum(m.role == "reference" for m in study.members)} references,
{sum(m.role == "panel" for m in study.members)} panel, {sum(m.role == "innocent" for m in study.members)} innocent
and {sum(m.role == "infringing" for m in study.members)} infringing suspects; M = {m_keys} keys (of {study.num_keys} asked),
J = {study.seeds_per_key} seeds per key, delta0 = {study.delta0:g}; audit distance {study.distance} (auditor.distance;
keys selected with l2). Verdicts: the model-level test against the references, audited with the same distance. Intervals are Clopper-Pearson 95%. "Median key distance": the median over a group's models of each
model's median distance to the key images (range in parentheses); the base's is {base_d:.3f}.
For infringers "flagged" is power; for innocents it is the false-positive rate.

{_markdown(HEADER, table(rows))}

![laundering](laundering.png)
"""
    path = out / "laundering.md"
    atomic_write_text(path, text)
    return path
