"""The evidence page's figures, as PNG bytes: distances, and the model-level test's strip plot.

Drawn with matplotlib's Agg canvas directly: no pyplot state, no display, no PNG
"Software" metadata, so the same report always gives the same bytes.
"""

from __future__ import annotations

import io

from auditor.report import AttributionReport
from auditor.verdict_tests import VERDICT_TESTS, shown


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes with no software stamp, so the same figure gives the same bytes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def distance_histogram_png(report: AttributionReport) -> bytes:
    """The suspect's per-key distances against the innocent references', delta0 marked (PNG bytes).

    Each group is drawn as shares of its own keys, so 3 references of M keys and one
    suspect of M keys are comparable. Drawn with the Agg canvas directly: no pyplot
    state, no display, no PNG "Software" metadata.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    suspect = np.array([k.distance for k in report.results], dtype=float)
    reference = np.array([d for r in report.references for d in r.distances], dtype=float)
    delta0 = report.audit.delta0
    everything = np.concatenate([suspect, reference, [delta0]])
    everything = everything[np.isfinite(everything)]
    lo, hi = float(everything.min()), float(everything.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    bins = np.linspace(lo, hi, 31)

    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference.size:
        ax.hist(
            reference,
            bins=bins,
            weights=np.full(reference.size, 1.0 / reference.size),
            color="#8a8a8a",
            alpha=0.6,
            label=f"innocent references ({len(report.references)} models, {reference.size} keys)",
        )
    if suspect.size:
        ax.hist(
            suspect,
            bins=bins,
            weights=np.full(suspect.size, 1.0 / suspect.size),
            histtype="step",
            linewidth=2.0,
            color="#c0392b",
            label=f"suspect ({suspect.size} keys)",
        )
    ax.axvline(delta0, color="black", linestyle="--", linewidth=1.2, label=f"delta0 = {delta0:g}")
    ax.set_xlabel("per-key distance (min over audit seeds)")
    ax.set_ylabel("share of keys")
    ax.set_title("hits are keys left of delta0")
    ax.legend(fontsize=8)
    return figure_png(fig)


def strip_plot_png(report: AttributionReport) -> bytes | None:
    """The suspect's model-level statistics against the references' leave-one-out ones, with the
    value each must pass for the verdict's alpha (the test's own `thresholds`); None without the
    test."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    test = report.verdict.test
    if test is None:
        return None
    names, _ = shown(test)
    if not names:
        return None
    kind = VERDICT_TESTS.get(test.method)
    if kind is not None and set(kind.statistics) != set(names):  # a hostile record under a known name
        kind = None
    thresholds = kind.thresholds(test, report.verdict.alpha) if kind is not None else {}
    labels = kind.statistics if kind is not None else {}
    fig = Figure(figsize=(3.2 * len(names), 2.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names, strict=True):
        null = np.asarray(test.reference_statistics[name], dtype=float)
        jitter = np.linspace(-0.15, 0.15, len(null)) if len(null) > 1 else np.zeros(1)
        ax.scatter(null, jitter, color="#8a8a8a", s=24, label=f"references ({len(null)}, leave-one-out)")
        ax.scatter([test.statistics[name]], [0.0], color="#c0392b", marker="D", s=48, label="suspect")
        if name in thresholds:
            ax.axvline(
                thresholds[name],
                color="black",
                linestyle="--",
                linewidth=1.1,
                label=f"alpha {report.verdict.alpha:g}",
            )
        ax.set_yticks([])
        ax.set_ylim(-0.6, 0.6)
        ax.set_title(f"{labels.get(name, name)}\np = {test.p_values[name]:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="upper left")
    return figure_png(fig)
