"""The reproduction's report stage: the paper's Figures 6 and 7 and Tables 1 and 2, from audit records.

Everything here is arithmetic on the audit stage's records, so the report can be
rebuilt (and checked) without a model. The statistical level is evaluated by 2-fold
cross-fitting over each family's models: the discriminator is fit on one replicate fold
(the shadow models), its decision threshold is 0.5 and its FPR thresholds come from the
shadow fold's own scores, and it is scored on the other fold; the folds then swap and the
held-out decisions are pooled. No threshold ever sees a held-out model.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from pydantic import Field

from auditor.config import FrozenModel
from auditor.discriminator import Discriminator
from auditor.fileio import atomic_write_bytes, atomic_write_text
from auditor.metrics import evaluate, roc_auc
from auditor.reproduction import paper
from auditor.reproduction.experiment import FamilyRecord, ModelAudit
from auditor.reproduction.scales import Scale
from auditor.views import distance_shares

METHODS = {
    "generation": "ours, generation-based keys",
    "detection": "ours, detection-based keys",
    "random": "baseline 2, random keys",
    "watermark": "baseline 1, 32-bit watermark",
}


class StatisticalRow(FrozenModel):
    family: str
    method: str = Field(description="discriminator, or conf (the instance-level conf used as a score)")
    accuracy: float
    auc: float = Field(description="ROC AUC of the held-out scores of all folds together")
    auc_per_fold: float = Field(description="mean of each fold's own held-out ROC AUC")
    tpr_at_10_fpr: float
    fpr_at_10_threshold: float = Field(
        description="the FPR the 10% threshold actually gave on held-out models"
    )
    tpr_at_1_fpr: float
    n_positive: int
    n_negative: int
    discriminators: tuple[str, ...] = ()


def conf(distances: tuple[float, ...], m: int, delta0: float) -> float:
    d = np.asarray(distances[:m], dtype=float)
    return float((d < delta0).mean()) if d.size else math.nan


def method_conf(audit: ModelAudit, method: str, scale: Scale, threshold: float) -> float:
    if method == "watermark":
        return float((np.asarray(audit.watermark_bit_accuracy) > threshold).mean())
    return conf(audit.distances[method], scale.num_keys, scale.delta0)


def figure6(scale: Scale, families: list[FamilyRecord], audits: list[ModelAudit]) -> list[dict]:
    """Average conf per (family, method, rho). Baseline 1's infringing points come from the
    watermarked models (the others never saw a mark); every method's rho = 0 point comes
    from the innocent models."""
    rows = []
    for record in families:
        mine = [a for a in audits if a.family == record.family]
        for method in METHODS:
            roles = ("watermarked",) if method == "watermark" else ("infringing",)
            groups: dict[float, list[float]] = {}
            for a in mine:
                if method != "watermark" and method not in a.distances:
                    continue  # no key qualified under this strategy (family.json says so)
                if a.role in roles or a.role == "innocent":
                    groups.setdefault(a.rho, []).append(
                        method_conf(a, method, scale, record.watermark_threshold)
                    )
            for rho in sorted(groups):
                rows.append(
                    {
                        "family": record.family,
                        "method": method,
                        "rho": rho,
                        "mean_conf": float(np.mean(groups[rho])),
                        "models": len(groups[rho]),
                    }
                )
    return rows


def figure7(scale: Scale, audits: list[ModelAudit]) -> list[dict]:
    """conf against the key count M: the first M generation keys (keys are ranked by margin)."""
    rows = []
    for family in scale.families:
        mine = [a for a in audits if a.family == family.name and a.role in ("infringing", "innocent")]
        groups: dict[float, list[ModelAudit]] = {}
        for a in mine:
            groups.setdefault(a.rho, []).append(a)
        available = min(len(a.distances["generation"]) for a in mine)
        for m in scale.key_counts:
            if m > available:
                continue
            for rho in sorted(groups):
                values = [conf(a.distances["generation"], m, scale.delta0) for a in groups[rho]]
                rows.append(
                    {"family": family.name, "num_keys": m, "rho": rho, "mean_conf": float(np.mean(values))}
                )
    return rows


def table2(scale: Scale, audits: list[ModelAudit]) -> list[dict]:
    """Distance distribution on the generation keys: infringing at rho = 1 vs innocent, per family."""
    rows = []
    for family in scale.families:
        for label, pick in (
            ("infringing rho=1.0", lambda a: a.role == "infringing" and a.rho == 1.0),
            ("innocent", lambda a: a.role == "innocent"),
            ("base", lambda a: a.role == "base"),
        ):
            chosen = [a for a in audits if a.family == family.name and pick(a)]
            if not chosen:
                continue
            d = [np.asarray(a.distances["generation"][: scale.num_keys]) for a in chosen]
            shares = [distance_shares(x) for x in d]
            row = {"family": family.name, "model": label, "models": len(chosen)}
            for band in shares[0]:
                row[band] = float(np.mean([s[band] for s in shares]))
            row["mean"] = float(np.mean([x.mean() for x in d]))
            row["best"] = float(np.min([x.min() for x in d]))
            rows.append(row)
    return rows


def _folds(scale: Scale, audits: list[ModelAudit], family: str):
    clean = [a for a in audits if a.family == family and a.fold is not None]
    features = np.array([a.distances["generation"][: scale.num_keys] for a in clean], dtype=float)
    labels = np.array([1 if a.rho > 0 else 0 for a in clean])
    folds = np.array([a.fold for a in clean])
    return features, labels, folds


def _pooled(family: str, method: str, parts: list[tuple], names: tuple[str, ...] = ()) -> StatisticalRow:
    """Pool held-out decisions over folds; each fold's thresholds came from its own shadow fold."""
    labels = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    metrics = [p[2] for p in parts]
    n = len(labels)
    positives = int(labels.sum())
    correct = sum(m.accuracy * (m.n_positive + m.n_negative) for m in metrics)
    # A fold without positives (negatives) has a NaN TPR (FPR) and contributes no count.
    tp10 = sum(m.tpr_at_10_fpr * m.n_positive for m in metrics if m.n_positive)
    tp1 = sum(m.tpr_at_1_fpr * m.n_positive for m in metrics if m.n_positive)
    fp10 = sum(m.fpr_at_10_threshold * m.n_negative for m in metrics if m.n_negative)
    fold_aucs = [m.auc for m in metrics if not math.isnan(m.auc)]
    return StatisticalRow(
        family=family,
        method=method,
        accuracy=correct / n,
        auc=roc_auc(labels, scores),
        auc_per_fold=float(np.mean(fold_aucs)) if fold_aucs else math.nan,
        tpr_at_10_fpr=tp10 / positives if positives else math.nan,
        fpr_at_10_threshold=fp10 / (n - positives) if n > positives else math.nan,
        tpr_at_1_fpr=tp1 / positives if positives else math.nan,
        n_positive=positives,
        n_negative=n - positives,
        discriminators=names,
    )


def _calibration_scores(model: Discriminator, x: np.ndarray, y: np.ndarray, delta0: float) -> np.ndarray:
    """Leave-one-out scores of the shadow fold: what each shadow gets from a discriminator
    that did not see it, so thresholds set on them are not fooled by in-sample fit. Only a
    shadow that is the last of its class cannot be left out; it keeps its in-sample score."""
    scores = model.predict_proba(x)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        if min(y[keep].sum(), (1 - y[keep]).sum()) >= 1:
            scores[i] = Discriminator(delta0=delta0).fit(x[keep], y[keep]).predict_proba(x[i : i + 1])[0]
    return scores


def table1(
    scale: Scale, audits: list[ModelAudit], out: Path, keysets: dict[str, str] | None = None
) -> list[StatisticalRow]:
    """`keysets`: family -> generation keyset digest, recorded in the saved discriminators."""
    rows = []
    for family in scale.families:
        x, y, folds = _folds(scale, audits, family.name)
        disc_parts, conf_parts, names = [], [], []
        for fold in sorted(set(folds.tolist())):
            train, test = folds != fold, folds == fold
            model = Discriminator(delta0=scale.delta0).fit(x[train], y[train])
            path = out / "discriminators" / f"{family.name}-fit-without-fold{fold}.json"
            model.save(path, keyset_digest=(keysets or {}).get(family.name))
            names.append(path.name)
            cal = _calibration_scores(model, x[train], y[train], scale.delta0)
            held = model.predict_proba(x[test])
            disc_parts.append((y[test], held, evaluate(y[train], cal, y[test], held, decision_threshold=0.5)))
            conf_train = (x[train] < scale.delta0).mean(axis=1)
            conf_test = (x[test] < scale.delta0).mean(axis=1)
            conf_parts.append((y[test], conf_test, evaluate(y[train], conf_train, y[test], conf_test)))
        rows.append(_pooled(family.name, "discriminator", disc_parts, tuple(names)))
        rows.append(_pooled(family.name, "conf", conf_parts))
    return rows


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _figure(panels: int):
    """A row of axes on a bare Agg figure: no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * panels, 3.6))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)


def _conf_axes(ax, title: str, xlabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("average conf")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def _legend(axes, loc: str) -> None:
    """One legend, on the first panel that drew anything (a family may have no point to plot)."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc=loc)
            return


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    # No "Software" metadata, so the same numbers give the same bytes.
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def _plot_figure6(rows: list[dict], families: list[str], scale: str) -> bytes:
    fig, axes = _figure(len(families))
    for ax, family in zip(axes[0], families, strict=True):
        for method, label in METHODS.items():
            points = [
                (r["rho"], r["mean_conf"]) for r in rows if r["family"] == family and r["method"] == method
            ]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", label=label)
        _conf_axes(
            ax,
            f"Figure 6 ({scale} scale, family {family})",
            "rho, share of source generations in the suspect's training set",
        )
    _legend(axes[0], loc="upper left")
    return _png(fig)


def _plot_figure7(rows: list[dict], families: list[str], scale: str) -> bytes:
    fig, axes = _figure(len(families))
    for ax, family in zip(axes[0], families, strict=True):
        for rho in sorted({r["rho"] for r in rows if r["family"] == family}):
            points = [
                (r["num_keys"], r["mean_conf"]) for r in rows if r["family"] == family and r["rho"] == rho
            ]
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label="innocent" if rho == 0 else f"rho = {rho:g}")
        _conf_axes(ax, f"Figure 7 ({scale} scale, family {family})", "key count M (generation-based keys)")
    _legend(axes[0], loc="best")
    return _png(fig)


def _value(rows: list[dict], **match) -> float:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row["mean_conf"]
    return math.nan


def _check(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _claims(
    scale: Scale, fig6: list[dict], fig7: list[dict], t1: list[StatisticalRow], t2: list[dict]
) -> str:
    lines = ["| paper's figure | paper | " + " | ".join(f"ours, {f.name}" for f in scale.families) + " |"]
    lines.append("|---" * (2 + len(scale.families)) + "|")

    def row(claim: str, published: str, values: list[tuple[float, bool | None]]) -> None:
        cells = [
            "n/a" if math.isnan(v) else f"{v:.2f}" + ("" if ok is None else f" ({_check(ok)})")
            for v, ok in values
        ]
        lines.append(f"| {claim} | {published} | " + " | ".join(cells) + " |")

    fams = [f.name for f in scale.families]
    g03 = [_value(fig6, family=f, method="generation", rho=0.3) for f in fams]
    row(
        "Fig. 6: conf at rho = 0.3, generation keys",
        "> 0.6",
        [(v, None if math.isnan(v) else v > paper.FIGURE6_GENERATION_CONF_AT_RHO_03) for v in g03],
    )

    def gaps(baseline: str, sign: float, pick) -> list[float]:
        """Per family, `pick` over rho > 0 of sign * (ours - baseline) (generation keys)."""
        out = []
        for f in fams:
            diffs = [
                sign * (_value(fig6, family=f, method="generation", rho=r["rho"]) - r["mean_conf"])
                for r in fig6
                if r["family"] == f and r["method"] == baseline and r["rho"] > 0
            ]
            out.append(pick(diffs) if diffs else math.nan)
        return out

    margins = gaps("random", 1.0, min)
    row(
        "Fig. 6: ours minus random keys, smallest over rho",
        "> 0.2",
        [(v, None if math.isnan(v) else v > paper.FIGURE6_MARGIN_OVER_RANDOM) for v in margins],
    )
    shortfalls = gaps("watermark", -1.0, max)
    row(
        "Fig. 6: watermark minus ours, largest over rho",
        "<= 0.1",
        [(v, None if math.isnan(v) else v <= paper.FIGURE6_GAP_TO_WATERMARK) for v in shortfalls],
    )
    stats = {r.family: r for r in t1 if r.method == "discriminator"}
    row(
        "Table 1: accuracy",
        "> 0.85",
        [(stats[f].accuracy, stats[f].accuracy > paper.TABLE1_ACCURACY) for f in fams],
    )
    row("Table 1: AUC", "> 0.8", [(stats[f].auc, stats[f].auc > paper.TABLE1_AUC) for f in fams])
    row(
        "Table 1: TPR at 10% FPR",
        "> 0.7",
        [(stats[f].tpr_at_10_fpr, stats[f].tpr_at_10_fpr > paper.TABLE1_TPR_AT_10_FPR) for f in fams],
    )
    row(
        "Table 1: the FPR that threshold gave on held-out innocent models",
        "0.1",
        [(stats[f].fpr_at_10_threshold, None) for f in fams],
    )
    innocent = {r["family"]: r for r in t2 if r["model"] == "innocent"}
    infringing = {r["family"]: r for r in t2 if r["model"] == "infringing rho=1.0"}
    row("Table 2: innocent keys in [0.15, 0.2)", "0.739", [(innocent[f]["[0.15, 0.2)"], None) for f in fams])
    row(
        "Table 2: innocent keys under 0.15",
        "0.043",
        [(innocent[f]["[0, 0.1)"] + innocent[f]["[0.1, 0.15)"], None) for f in fams],
    )
    row(
        "Table 2: infringing (rho = 1) keys under 0.1",
        "about 0.20",
        [(infringing[f]["[0, 0.1)"], None) for f in fams],
    )
    gains = []
    for f in fams:
        at = {r["num_keys"]: r["mean_conf"] for r in fig7 if r["family"] == f and r["rho"] == 1.0}
        gains.append(at[30] - at[20] if 20 in at and 30 in at else math.nan)
    row("Fig. 7: conf at M = 30 minus M = 20 (rho = 1)", "about +0.1", [(v, None) for v in gains])
    return "\n".join(lines)


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{r[h]:.3f}" if isinstance(r[h], float) else str(r[h]) for h in head) + " |"
        )
    return "\n".join(lines)


def report_stage(
    scale: Scale, families: list[FamilyRecord], audits: list[ModelAudit], out: Path, context: dict
) -> Path:
    """Write CSV files, PNG plots and reproduction.md under `out`; returns the markdown's path."""
    fig6, fig7, t2 = figure6(scale, families, audits), figure7(scale, audits), table2(scale, audits)
    t1 = table1(scale, audits, out, {f.family: f.keysets["generation"] for f in families})
    t1_rows = [r.model_dump(exclude={"discriminators"}) for r in t1]
    names = [f.name for f in scale.families]
    for name, rows in (
        ("figure6_conf_vs_rho", fig6),
        ("figure7_conf_vs_keys", fig7),
        ("table1_statistical", t1_rows),
        ("table2_distances", t2),
    ):
        atomic_write_text(out / f"{name}.csv", _csv(rows))
    atomic_write_bytes(out / "figure6_conf_vs_rho.png", _plot_figure6(fig6, names, scale.name))
    atomic_write_bytes(out / "figure7_conf_vs_keys.png", _plot_figure7(fig7, names, scale.name))

    used = {f.family: min(scale.num_keys, f.eligible["generation"]) for f in families}
    fam_lines = "\n".join(
        f"- **{f.family}**: M = {used[f.family]} generation keys in Figure 6, Tables 1 and 2; "
        f"source `{f.source.digest[:16]}`, base `{f.base.digest[:16]}`; keys eligible "
        + ", ".join(f"{s} {n}" for s, n in f.eligible.items())
        + f" of {f.candidates} candidates; watermark threshold bit accuracy > {f.watermark_threshold:.3f} "
        f"(1% FPR on {f.watermark_clean_images} clean images), {f.watermark_marked_accuracy:.3f} right after "
        f"embedding, PSNR {f.watermark_psnr_db:.1f} dB"
        for f in families
    )
    counts = {f.name: len(f.members) for f in scale.families}
    text = f"""# Reproduction of the paper's evaluation: scale `{scale.name}`

Machine: {context.get("machine", "unknown")}. Stage timings (s): {context.get("timings", {})}.
Models per family: {counts} (plus base and source); keys M = {scale.num_keys}, delta0 = {scale.delta0}.
Paper's scale: {"; ".join(f"{k}: {v}" for k, v in paper.SCALE.items())}.

{fam_lines}

## The paper's figures beside ours

{_claims(scale, fig6, fig7, t1, t2)}

## Figure 6: average conf against rho

![figure 6](figure6_conf_vs_rho.png)

{_md_table(fig6)}

## Table 1: statistical level (cross-fitting over replicate folds; held-out decisions pooled)

`discriminator`: fit on one fold's models (the shadows), scored on the other fold's; `conf`: the
instance-level conf used as the score, its thresholds set on the same shadow fold. The 10%
and 1% FPR thresholds come from leave-one-out scores of the shadows; `fpr_at_10_threshold`
is the FPR that threshold actually gave on the held-out innocent models.

{_md_table(t1_rows)}

## Table 2: distance distribution on the generation keys

{_md_table(t2)}

## Figure 7: conf against the key count

![figure 7](figure7_conf_vs_keys.png)

{_md_table(fig7)}
"""
    path = out / "reproduction.md"
    atomic_write_text(path, text)
    return path
