"""The calibration study's report: error rates with Clopper-Pearson intervals, a CSV, a plot, markdown."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.figures import figure_png
from auditor.fileio import atomic_write_bytes, atomic_write_text
from auditor.reproduction.calibration_study import ALPHAS, Study, verdicts

if TYPE_CHECKING:
    from auditor.report import ReferenceResult


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """Every row under the union of their columns, sorted (a study's records differ in their fields)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=sorted({k for r in rows for k in r}))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """Exact two-sided 95% interval for a proportion k / n."""
    from scipy import stats

    if n == 0:
        return (0.0, 1.0)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def _rate(rows: list[dict], key: str, value: str = "infringing") -> tuple[int, int]:
    return sum(r[key] == value for r in rows), len(rows)


def _binomial_flag(rows: list[dict], alpha: float, column: str) -> list[dict]:
    return [{**r, "_old": "infringing" if r[column] <= alpha else "not_infringing"} for r in rows]


def _cell(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]" if n else "-"


def _power_rows(rows: list[dict]) -> list[tuple[str, float]]:
    """(recipe, rho) of the infringers: the reference recipe's full fine-tunes first, then LoRA."""
    found = {(r["group"], r["rho"]) for r in rows if r["role"] == "infringing"}
    return sorted(found, key=lambda g: (g[0] != "reference recipe", g[0], g[1]))


def _infringers(rows: list[dict], recipe: str, rho: float) -> list[dict]:
    """One power row's models: the infringers of that recipe at that rho."""
    return [r for r in rows if r["role"] == "infringing" and r["group"] == recipe and r["rho"] == rho]


def tables(rows: list[dict]) -> tuple[list[list[str]], list[list[str]]]:
    """(false-positive table by innocent group, power table by recipe and rho) as rows of strings."""
    innocents = [r for r in rows if r["role"] == "innocent"]
    groups: dict[str, list[dict]] = {"reference recipe (the level's population)": []}
    for r in innocents:
        key = "reference recipe (the level's population)" if r["group"] == "reference recipe" else r["group"]
        groups.setdefault(key, []).append(r)
    sampled = [r for r in innocents if r.get("sampling")]
    trained = [r for r in innocents if not r.get("sampling")]
    shifted = [r for r in trained if r["group"] != "reference recipe"]
    ordered = [
        *groups.items(),
        ("all shifted recipes", shifted),
        ("all sampling variants (each model again, served otherwise)", sampled),
        ("all innocent models", trained),
    ]
    fpr = []
    for name, members in ordered:
        if not members:
            continue
        line = [name, str(len(members))]
        for alpha in ALPHAS:
            line.append(_cell(*_rate(members, f"verdict@{alpha:g}")))
        for alpha in ALPHAS:
            line.append(_cell(*_rate(_binomial_flag(members, alpha, "p_binomial"), "_old")))
        line.append(_cell(*_rate(_binomial_flag(members, 0.01, "p_binomial_with_base"), "_old")))
        line.append(f"{_rate(members, 'verdict@0.01', 'inconclusive')[0]}/{len(members)}")
        fpr.append(line)
    power = []
    for recipe, rho in _power_rows(rows):
        members = _infringers(rows, recipe, rho)
        line = [recipe, f"{rho:g}", str(len(members))]
        for alpha in ALPHAS:
            line.append(_cell(*_rate(members, f"verdict@{alpha:g}")))
        line.append(_cell(*_rate(_binomial_flag(members, 0.01, "p_binomial"), "_old")))
        line.append(f"{sum(r['hits'] for r in members) / len(members):.1f}")
        power.append(line)
    return fpr, power


FPR_HEADER = [
    "innocent group",
    "n",
    "test FPR @0.01",
    "test FPR @0.05",
    "binomial FPR @0.01",
    "binomial FPR @0.05",
    "binomial+base FPR @0.01",
    "inconclusive @0.01",
]
POWER_HEADER = [
    "recipe",
    "rho",
    "n",
    "test power @0.01",
    "test power @0.05",
    "binomial power @0.01",
    "mean hits",
]


def _markdown(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def plot_png(rows: list[dict]) -> bytes:
    """False-positive rate per innocent group (test and binomial, alpha 0.05) and power per rho."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    innocents = [r for r in rows if r["role"] == "innocent"]
    groups = sorted({r["group"] for r in innocents}, key=lambda g: (g != "reference recipe", g))
    for offset, (label, column, colour) in enumerate(
        (("model-level test", None, "#1f6f8b"), ("binomial (v1)", "p_binomial", "#c0392b"))
    ):
        xs, ys, errs = [], [], [[], []]
        for i, group in enumerate(groups):
            members = [r for r in innocents if r["group"] == group]
            if column is None:
                k = sum(r["verdict@0.05"] == "infringing" for r in members)
            else:
                k = sum(r[column] <= 0.05 for r in members)
            n = len(members)
            lo, hi = clopper_pearson(k, n)
            xs.append(i + (offset - 0.5) * 0.35)
            ys.append(k / n)
            errs[0].append(k / n - lo)
            errs[1].append(hi - k / n)
        left.errorbar(xs, ys, yerr=errs, fmt="o", color=colour, capsize=3, label=label)
    left.axhline(0.05, color="black", linestyle="--", linewidth=1, label="alpha 0.05")
    left.set_xticks(range(len(groups)))
    left.set_xticklabels(groups, rotation=40, ha="right", fontsize=7)
    left.set_ylabel("false-positive rate (95% CI)")
    left.set_title("innocent suspects, alpha = 0.05", fontsize=9)
    left.legend(fontsize=7)
    power = _power_rows(rows)
    styles = {"reference recipe": ("o-", ("#1f6f8b", "#7fb3d5"))}
    for recipe in dict.fromkeys(g for g, _ in power):
        marker, colours = styles.get(recipe, ("s--", ("#b9770e", "#f0b27a")))
        rhos = [rho for g, rho in power if g == recipe]
        for alpha, colour in zip(ALPHAS, colours, strict=True):
            ys, errs = [], [[], []]
            for rho in rhos:
                members = _infringers(rows, recipe, rho)
                k, n = sum(r[f"verdict@{alpha:g}"] == "infringing" for r in members), len(members)
                lo, hi = clopper_pearson(k, n)
                ys.append(k / n)
                errs[0].append(k / n - lo)
                errs[1].append(hi - k / n)
            label = f"{'full fine-tune' if recipe == 'reference recipe' else recipe}, alpha {alpha:g}"
            right.errorbar(rhos, ys, yerr=errs, fmt=marker, color=colour, capsize=3, label=label)
    right.set_xlabel("rho (share of the source's generations)")
    right.set_ylabel("power (95% CI)")
    right.set_ylim(-0.05, 1.05)
    right.set_title("infringing suspects", fontsize=9)
    right.legend(fontsize=7)
    return figure_png(fig)


def study_table(study: Study, records: dict[str, ReferenceResult], out: Path) -> Path:
    """Every (model, key, seed) distance of the study's audits as one table (auditor.reproduction.records),
    `OUT/distances.csv.gz`: what `--rescore` scores any registered test on without retraining."""
    from auditor.audit import audit_seeds, with_nonce
    from auditor.keys import load_keyset
    from auditor.reproduction.calibration_study import _config
    from auditor.reproduction.records import table_from_records, write_table

    keyset, _ = load_keyset(out / "keys")
    config = with_nonce(_config(study), keyset)
    assert config.audit_nonce is not None
    seeds = audit_seeds(config.audit_nonce, keyset.keys, config.seeds_per_key, keyset.forbidden_seeds())
    table = table_from_records(
        study.name,
        [(m.name, m.role, m.group, m.rho, m.sampling or "") for m in study.members],
        records,
        keyset_digest=keyset.digest,
        key_ids=tuple(k.id for k in keyset.keys),
        key_seeds=tuple(seeds[k.id] for k in keyset.keys),
        distance_name=study.distance,
        delta0=study.delta0,
    )
    return write_table(out / "distances.csv.gz", table)


def report_stage(study: Study, records: dict[str, ReferenceResult], out: Path, context: dict) -> Path:
    study_table(study, records, out)
    rows = verdicts(study, records)
    write_rows_csv(out / "calibration.csv", rows)
    atomic_write_bytes(out / "calibration.png", plot_png(rows))
    fpr, power = tables(rows)
    timings = ", ".join(f"{k} {v / 60:.1f} min" for k, v in context["timings"].items())
    references = sum(m.role == "reference" for m in study.members)
    # The keys that qualified (a world may offer fewer than asked: selection keeps only those the source
    # reproduces and the base and panel do not), read from the records, not from the request.
    m_keys = next(iter(records.values())).num_keys if records else study.num_keys
    asked = "" if m_keys == study.num_keys else f" (of {study.num_keys} asked: the others did not qualify)"
    text = f"""# Calibration study ({study.name})

Machine: {context["machine"]}. Stage times: {timings or "n/a"}.
{len(study.members)} models: {references} references, {sum(m.role == "panel" for m in study.members)} panel,
{sum(m.role == "innocent" for m in study.members)} innocent and {sum(m.role == "infringing" for m in study.members)}
infringing suspects; M = {m_keys} keys{asked}, J = {study.seeds_per_key} seeds per key, delta0 = {study.delta0:g};
audit distance {study.distance} (auditor.distance; keys selected with l2).
Intervals are Clopper-Pearson 95%. "binomial" is the first version's rule (exact binomial on hit counts, null rate
from the references); "binomial+base" the same with the base among the references, as the first demo ran it.

## False positives (innocent suspects)

{_markdown(FPR_HEADER, fpr)}

## Power (infringing suspects)

{_markdown(POWER_HEADER, power)}

Hits are keys under delta0 out of M = {m_keys}.

![calibration](calibration.png)
"""
    path = out / "calibration.md"
    atomic_write_text(path, text)
    return path
