"""Human views of attribution reports: rich on the terminal, a self-contained HTML evidence page.

The HTML page is a *view*: the evidence is the signed envelope, which `t2i-audit verify`
checks. The page therefore says where it came from, and it loads nothing from anywhere
(images are data: URIs, styles are inline, a Content-Security-Policy forbids the rest),
so it renders the same offline, years later, as on the day it was made.
"""

from __future__ import annotations

import html
import json

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from auditor.figures import distance_histogram_png, strip_plot_png
from auditor.report import AttributionReport

VERDICT_STYLE = {"infringing": "bold red", "not_infringing": "bold green", "inconclusive": "bold yellow"}


def distance_shares(distances, edges=(0.1, 0.15, 0.2)) -> dict[str, float]:
    """Shares of keys per distance band, the shape of the paper's Table 2."""
    import numpy as np

    d = np.asarray(distances, dtype=float)
    bounds = (0.0, *edges, float("inf"))
    labels = [f"[{lo:g}, {hi:g})" for lo, hi in zip(bounds[:-2], bounds[1:-1], strict=True)]
    labels.append(f">= {edges[-1]:g}")
    pairs = zip(labels, bounds[:-1], bounds[1:], strict=True)
    return {label: float(np.mean((d >= lo) & (d < hi))) for label, lo, hi in pairs}


def precision_caution(report: AttributionReport) -> str | None:
    """Why a reduced-precision audit is a screen, not evidence; None for float32.

    Measured (docs/benchmarks.md): fp16 regenerations moved single key distances by up
    to 0.024 and flipped 1 of 90 keys whose distance lay near delta0.
    """
    if report.backend.dtype == "float32":
        return None
    return (
        f"regenerated in {report.backend.dtype}: a key within about 0.03 of delta0 may fall on the other"
        " side in a float32 rerun; rerun in float32 before relying on this report"
    )


def print_report_summary(report: AttributionReport, console: Console | None = None) -> None:
    console = console or Console()
    s = report.summary
    style = VERDICT_STYLE[report.verdict.verdict]
    # Names and reasons are data, not markup: "[red]" in a model name must print as typed.
    table = Table(title=f"Attribution audit of {rich_escape(report.suspect.name)}", show_header=False)
    table.add_row("source", rich_escape(report.source.name))
    table.add_row("keyset", f"{report.keyset.digest[:16]}... ({report.keyset.strategy}, {s.num_keys} keys)")
    table.add_row("hits", f"{s.hits}/{s.num_keys} under delta0 = {report.audit.delta0:g}")
    table.add_row("conf", f"{s.conf:.3f}")
    table.add_row("distance", f"mean {s.mean_distance:.3f}, best {s.best_distance:.3f}")
    for label, share in distance_shares([k.distance for k in report.results]).items():
        table.add_row(f"  share {rich_escape(label)}", f"{share:.0%}")
    b = report.backend
    table.add_row("backend", rich_escape(f"{b.backend} on {b.device} ({b.dtype})"))
    if caution := precision_caution(report):
        table.add_row("caution", f"[yellow]{rich_escape(caution)}[/yellow]")
    table.add_row("verdict", f"[{style}]{report.verdict.verdict}[/{style}]")
    table.add_row("reason", rich_escape(report.verdict.reason))
    v = report.verdict
    table.add_row("references", f"{v.n_references} innocent (min {v.min_references}); alpha {v.alpha:g}")
    if test := v.test:
        table.add_row(
            "model-level test",
            f"p = {test.p_value:.3g} (sparse {test.p_values['sparse']:.3g}, global {test.p_values['global']:.3g});"
            f" smallest reachable {test.min_p_value:.3g}",
        )
        null = {k: (min(vals), max(vals)) for k, vals in test.reference_statistics.items()}
        table.add_row(
            "  statistics",
            f"sparse {test.statistics['sparse']:.2f} (references {null['sparse'][0]:.2f}..{null['sparse'][1]:.2f}),"
            f" global {test.statistics['global']:.2f} (references {null['global'][0]:.2f}..{null['global'][1]:.2f})",
        )
        lowest = sorted(zip(test.normalized, report.results, strict=True), key=lambda pair: pair[0])[:5]
        table.add_row(
            "  closest keys (z)",
            ", ".join(f"{r.key_id} {z:+.1f}" for z, r in lowest),
        )
    table.add_row(
        "paper's figures",
        f"conf {s.conf:.3f}: {s.paper_verdict} at threshold {report.audit.conf_threshold:g}",
    )
    if b := v.binomial:
        table.add_row(
            "  binomial", f"p = {b.p_value:.3g} (p0 {b.p0:.3g}; assumes {rich_escape(b.assumption)})"
        )
    if st := report.statistical:
        table.add_row(
            "discriminator",
            f"{st.decision} (score {st.score:.3f}, threshold {st.threshold:g}; {rich_escape(st.candidate)} "
            f"fit on {st.shadows['infringing']} infringing + {st.shadows['innocent']} innocent shadows)",
        )
    console.print(table)


# ---------------------------------------------------------------- HTML page

_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 80em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code, .mono { font-family: monospace; word-break: break-all; }
.verdict { font-size: 1.3em; font-weight: bold; padding: 0.3em 0.6em; display: inline-block; }
.infringing { background: #f8d7d4; color: #8b1a10; }
.not_infringing { background: #d8f0dc; color: #1d5e2a; }
.inconclusive { background: #fbefc7; color: #6b5000; }
.note { background: #eef3fb; border-left: 4px solid #5b7fb9; padding: 0.5em 1em; }
.hit { color: #8b1a10; font-weight: bold; }
img.px { width: 128px; height: auto; image-rendering: pixelated; image-rendering: crisp-edges; display: block; }
figure { display: inline-block; margin: 0 0.5em 0.3em 0; font-size: 0.8em; }
.missing { color: #888; font-style: italic; }
"""

# Forbid every load except the page's own inline style and data: images.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def _rows(pairs) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _code(value: object) -> str:
    return "<code>n/a</code>" if value is None else f"<code>{_e(value)}</code>"


def _img(png: bytes | None, alt: str, caption: str, pixelated: bool = True) -> str:
    from auditor.evidence import data_uri

    if png is None:
        return f'<figure><span class="missing">{_e(caption)}: not available</span></figure>'
    cls = ' class="px"' if pixelated else ""
    return f'<figure><img{cls} src="{data_uri(png)}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'


def render_report_html(
    report: AttributionReport,
    *,
    key_images: dict[str, bytes] | None = None,
    regenerations: dict[str, bytes] | None = None,
    provenance: str = "",
    histogram: bytes | None = None,
) -> str:
    """One self-contained HTML page for `report`.

    `key_images` maps key_id -> PNG bytes (from the keyset folder), `regenerations` maps
    sha256 -> PNG bytes (the suspect's regenerations); either may be None to leave the
    column out. `provenance` says where the report was read from (shown as a note).
    """
    v = report.verdict
    test = v.test
    s = report.summary
    histogram = histogram if histogram is not None else distance_histogram_png(report)
    strip = strip_plot_png(report)

    verdict_rows = [
        ("verdict", f'<span class="verdict {_e(v.verdict)}">{_e(v.verdict)}</span>'),
        ("rule", _e(v.rule)),
        ("reason", _e(v.reason)),
        ("hits", f"{s.hits} / {s.num_keys} keys under delta0 = {_e(format(report.audit.delta0, 'g'))}"),
        ("conf", _e(f"{s.conf:.4f}")),
    ]
    verdict_rows += [
        ("alpha", _e(format(v.alpha, "g"))),
        ("innocent references", _e(f"{v.n_references} (at least {v.min_references} needed)")),
    ]
    if test is not None:
        verdict_rows += [
            ("p-value (model-level test)", _e(f"{_num(test.p_value)} = min(1, 2 min(sparse, global))")),
            (
                "sparse statistic",
                _e(
                    f"{test.statistics['sparse']:.3f}, t = {test.t['sparse']:.2f}, p = {_num(test.p_values['sparse'])}"
                ),
            ),
            (
                "global statistic",
                _e(
                    f"{test.statistics['global']:.3f}, t = {test.t['global']:.2f}, p = {_num(test.p_values['global'])}"
                ),
            ),
            ("degrees of freedom", _e(test.df)),
            ("smallest reachable p", _e(_num(test.min_p_value))),
            (
                "reference sanity check",
                _e(f"smallest outlier p {_num(test.sanity_p_value)} (reference {test.sanity_reference})"),
            ),
        ]
    verdict_rows += [
        (
            "paper's figure: conf",
            _e(f"{s.conf:.4f} ({s.paper_verdict} at threshold {report.audit.conf_threshold:g})"),
        ),
    ]
    if (b := v.binomial) is not None:
        verdict_rows += [
            (
                "binomial figure (not the verdict)",
                _e(f"p = {_num(b.p_value)} with p0 = {_num(b.p0)}; assumes {b.assumption}"),
            ),
        ]
    if st := report.statistical:
        verdict_rows += [
            (
                "discriminator (statistical level)",
                f"{_e(st.decision)}: score {_e(f'{st.score:.3f}')} against threshold {_e(format(st.threshold, 'g'))}; "
                f"{_e(st.candidate)} fit on {_e(st.shadows['infringing'])} infringing and "
                f"{_e(st.shadows['innocent'])} innocent shadow models<br>{_code(st.discriminator_sha256)}",
            )
        ]

    identity_rows = [
        (
            "suspect",
            f"{_e(report.suspect.name)} ({_e(report.suspect.kind)})<br>{_code(report.suspect.digest)}",
        ),
        ("source (owner's model)", f"{_e(report.source.name)}<br>{_code(report.source.digest)}"),
        (
            "keyset",
            f"{_e(report.keyset.strategy)}, {_e(report.keyset.num_keys)} keys<br>{_code(report.keyset.digest)}",
        ),
        ("keyset commitment", _code(report.keyset.commitment) if report.keyset.commitment else "none cited"),
        ("report created", _e(report.created_at)),
        (
            "tool",
            _e(
                f"{report.tool.name} {report.tool.version} (python {report.tool.python}, {report.tool.platform})"
            ),
        ),
    ]

    ref_table = ""
    if report.references:
        loo = test.reference_statistics if test is not None else {}
        body = "".join(
            f"<tr><td>{_e(r.name)}</td><td>{_code(r.digest)}</td><td>{r.hits} / {r.num_keys}</td>"
            f"<td>{_e(f'{r.conf:.4f}')}</td>"
            + "".join(
                f"<td>{_e(f'{loo[c][i]:.3f}')}</td>" if loo else "<td>n/a</td>" for c in ("sparse", "global")
            )
            + "</tr>"
            for i, r in enumerate(report.references)
        )
        ref_table = (
            "<h3>Innocent reference models</h3><table><tr><th>name</th><th>digest</th><th>hits</th>"
            f"<th>conf</th><th>sparse (leave-one-out)</th><th>global (leave-one-out)</th></tr>{body}</table>"
        )

    b = report.backend
    settings_rows = [
        ("generation", _code(json.dumps(report.generation.model_dump(mode="json"), sort_keys=True))),
        ("audit", _code(json.dumps(report.audit.model_dump(mode="json"), sort_keys=True))),
        (
            "backend",
            _e(f"{b.backend} on {b.device} ({b.dtype})")
            + (f"<br>{_e(b.note)}" if b.note else "")
            + (f"<br><strong>{_e(caution)}</strong>" if (caution := precision_caution(report)) else ""),
        ),
        ("versions", _code(", ".join(f"{k} {val}" for k, val in sorted(b.versions.items())) or "n/a")),
        ("audit time", _e(f"{s.seconds:.1f} s")),
    ]
    share_rows = [
        (label, _e(f"{share:.0%}"))
        for label, share in distance_shares([k.distance for k in report.results]).items()
    ]

    show_keys = key_images is not None
    show_regen = regenerations is not None
    header = (
        "<th>#</th><th>key</th><th>prompt</th><th>seed(s)</th><th>distance per seed</th><th>distance</th>"
        "<th>z vs references</th><th>hit</th>"
    )
    normalized = test.normalized if test is not None else (None,) * len(report.results)
    if show_keys:
        header += "<th>key image (owner)</th>"
    if show_regen:
        header += "<th>suspect regeneration(s)</th>"
    key_rows = []
    for i, k in enumerate(report.results, start=1):
        per_seed = ", ".join(format(d, ".4f") for d in k.distances)
        hit = '<span class="hit">hit</span>' if k.hit else "no"
        row = (
            f'<tr class="key-row" id="{_e(k.key_id)}"><td>{i}</td><td><code>{_e(k.key_id)}</code></td>'
            f"<td>{_e(k.prompt)}</td><td>{_e(', '.join(str(x) for x in k.seeds))}</td><td>{_e(per_seed)}</td>"
            f"<td>{_e(format(k.distance, '.4f'))}</td><td>{_e(_num(normalized[i - 1], '+.2f'))}</td><td>{hit}</td>"
        )
        if show_keys:
            row += f"<td>{_img(key_images.get(k.key_id), f'key image {k.key_id}', k.key_id)}</td>"
        if show_regen:
            cells = []
            for seed, sha, d in zip(k.seeds, k.image_sha256s, k.distances, strict=False):
                caption = f"seed {seed}, d = {d:.4f}, sha256 {sha[:12]}"
                cells.append(
                    _img(regenerations.get(sha), f"suspect regeneration of {k.key_id}, seed {seed}", caption)
                )
            row += f"<td>{''.join(cells)}</td>"
        key_rows.append(row + "</tr>")
    image_note = ""
    if not (show_keys and show_regen):
        image_note = (
            '<p class="note">Images are shown when the page is rendered with <code>--keys DIR</code> (the keyset) '
            "and <code>--images DIR</code> (the suspect's regenerations from <code>audit --save-images</code>).</p>"
        )

    histogram_html = _img(
        histogram,
        "histogram of per-key distances: suspect against innocent references, delta0 marked",
        "per-key distances; dashed line: delta0",
        pixelated=False,
    )
    strip_html = (
        _img(
            strip,
            "the suspect's model-level statistics against the references' leave-one-out statistics",
            "model-level test: each reference scored against the others (grey), the suspect (red), "
            "and the value a statistic must pass for the verdict's alpha (dashed)",
            pixelated=False,
        )
        if strip is not None
        else '<p class="note">No model-level test: fewer than three innocent references.</p>'
    )
    title = f"Attribution audit of {report.suspect.name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="referrer" content="no-referrer">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p class="note">{_e(provenance)}</p>
<h2 id="verdict">Verdict</h2>
<table>{_rows(verdict_rows)}</table>
{strip_html}
<h2 id="identities">Identities and digests</h2>
<table>{_rows(identity_rows)}</table>
{ref_table}
<h2 id="settings">Settings</h2>
<table>{_rows(settings_rows)}</table>
<h2 id="distances">Distances</h2>
{histogram_html}
<table><tr><th>distance band</th><th>share of the suspect's keys</th></tr>{_rows(share_rows)}</table>
<h2 id="keys">Keys ({len(report.results)})</h2>
{image_note}
<table>
<tr>{header}</tr>
{"".join(key_rows)}
</table>
</body>
</html>
"""
