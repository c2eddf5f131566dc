"""`t2i-audit demo`: the whole method on the built-in tiny zoo, in one command.

Builds (or loads) the zoo, selects keys from the source with the base as control,
audits five innocent references (fine-tunes of the base like the innocent suspect, never
the base itself), then each suspect (infringing at rho = 1.0 and 0.3, one innocent), and
writes one signed report and one evidence page per suspect under the output folder. The
verdict is the model-level test against the references; the paper's figure (a fixed
threshold on conf) is shown beside it. `family="sdxl"` runs the same world with
SDXL-architecture models (StableDiffusionXLPipeline folders); its keys record SDXL's size
conditioning.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from auditor.backends import SuspectSpec
from auditor.config import AuditConfig, FrozenModel
from auditor.fileio import atomic_write_text, sha256_bytes
from auditor.images import encode_png
from auditor.key_selection import Selection
from auditor.progress import Reporter
from auditor.selection import SelectionConfig
from auditor.signing import generate_keypair
from auditor.views import VERDICT_STYLE, distance_shares, render_report_html
from auditor.workflow import Audit, LoadedKeys, resolve_settings, save_outcome
from auditor.zoo.build import build_zoo
from auditor.zoo.config import preset as zoo_preset
from auditor.zoo.data import load_dataset


class DemoSuspect(FrozenModel):
    name: str
    rho: float
    conf: float
    hits: int
    num_keys: int
    verdict: str
    paper_verdict: str
    p_value: float | None
    mean_distance: float
    best_distance: float
    shares: dict[str, float]
    report: str
    model: str


class DemoResult(FrozenModel):
    family: str = "sd"
    zoo: str
    keyset_digest: str
    strategy: str
    num_keys: int
    references: dict[str, float]
    suspects: tuple[DemoSuspect, ...]
    timings: dict[str, float]


def run_demo(
    *,
    family: str = "sd",
    preset: str = "demo",
    out: Path = Path("demo-out"),
    cache_dir: Path | None = None,
    strategy: str = "generation",
    reporter: Reporter | None = None,
    jobs: int = 1,
) -> DemoResult:
    reporter = reporter or Reporter()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    config = zoo_preset(family, preset)
    zoo = build_zoo(config, cache_dir=cache_dir, reporter=reporter, jobs=jobs)
    timings["zoo"] = time.perf_counter() - start

    t = time.perf_counter()
    train = load_dataset(zoo.source_train)
    keyset, images = Selection(
        SelectionConfig(strategy=strategy),
        source=SuspectSpec(model=zoo.source, device="cpu"),
        prompts=list(train.captions),
        settings=config.generation,  # an SDXL source adds its size conditioning (key_selection)
        train_images=np.asarray(train.images),
        base=SuspectSpec(model=zoo.base, device="cpu"),
        source_name=Path(zoo.source).parent.name,  # the zoo's artifact name, not its "pipeline" folder
    ).run(out / "keys", replace=True, reporter=reporter)
    timings["keys"] = time.perf_counter() - t

    config = AuditConfig()
    t = time.perf_counter()
    keys = LoadedKeys(out / "keys", keyset, images, commitment=None)
    references = dict(zoo.references)  # innocent fine-tunes only: never the base (method.md)
    audit = Audit(
        keys=keys,
        config=config,
        settings=resolve_settings(keyset),
        references=tuple(SuspectSpec(model=str(path), device="cpu") for path in references.values()),
        reference_names=tuple(references),
        signing_key=_demo_signing_key(out),
    )
    reference_results = audit.reference_results(reporter)
    timings["references"] = time.perf_counter() - t

    key_pngs = {key.id: encode_png(image) for key, image in zip(keyset.keys, images, strict=True)}
    rows = []
    for name, path in zoo.suspects.items():
        t = time.perf_counter()
        regenerated: list[np.ndarray] = []
        outcome = audit.run(
            SuspectSpec(model=str(path), device="cpu"), name=name, reporter=reporter, images_out=regenerated
        )
        report = outcome.report
        report_path = out / "reports" / f"{name}.json"
        save_outcome(outcome, report_path, audit.signing_key)
        regen_pngs = {
            sha256_bytes(png): png for png in (encode_png(im) for batch in regenerated for im in batch)
        }
        page = render_report_html(
            report,
            key_images=key_pngs,
            regenerations=regen_pngs,
            provenance=f"Demo report {name}.json, signed with the demo key in {out.name}/ (demo-owner.pub).",
        )
        atomic_write_text(report_path.with_suffix(".html"), page)
        result = report.summary
        test = report.verdict.test
        rows.append(
            DemoSuspect(
                name=name,
                rho=zoo.rho[name],
                conf=result.conf,
                hits=result.hits,
                num_keys=result.num_keys,
                verdict=report.verdict.verdict,
                paper_verdict=report.summary.paper_verdict,
                p_value=test.p_value if test else None,
                mean_distance=result.mean_distance,
                best_distance=result.best_distance,
                shares=distance_shares([k.distance for k in report.results]),
                report=str(report_path),
                model=str(path),
            )
        )
        timings[f"audit {name}"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    result = DemoResult(
        family=family,
        zoo=zoo.config_digest,
        keyset_digest=keyset.digest,
        strategy=strategy,
        num_keys=len(keyset.keys),
        references={name: r.conf for name, r in zip(references, reference_results, strict=True)},
        suspects=tuple(rows),
        timings={k: round(v, 2) for k, v in timings.items()},
    )
    atomic_write_text(out / "summary.json", result.model_dump_json(indent=2) + "\n")
    return result


def _demo_signing_key(out: Path) -> Path:
    """The demo signs its reports with its own throwaway key, made once per output folder."""
    key = out / "demo-owner.key"
    if not key.exists():
        generate_keypair(key, out / "demo-owner.pub")
    return key


def print_demo(result: DemoResult, console: Console | None = None) -> None:
    console = console or Console()
    models = "SDXL" if result.family == "sdxl" else "SD"
    table = Table(
        title=f"t2i-auditor demo ({models} models): {result.num_keys} {result.strategy} keys, delta0 0.15"
    )
    for col in (
        "suspect",
        "rho",
        "conf",
        "mean d",
        "best d",
        "d<0.1",
        "d<0.15",
        "paper verdict",
        "verdict",
        "p (model-level)",
    ):
        table.add_column(col, justify="left" if col in ("suspect", "paper verdict", "verdict") else "right")
    for s in result.suspects:
        under_010 = s.shares["[0, 0.1)"]
        under_015 = under_010 + s.shares["[0.1, 0.15)"]
        style = VERDICT_STYLE.get(s.verdict, "")
        table.add_row(
            s.name,
            f"{s.rho:.1f}",
            f"{s.conf:.2f}",
            f"{s.mean_distance:.3f}",
            f"{s.best_distance:.3f}",
            f"{under_010:.0%}",
            f"{under_015:.0%}",
            s.paper_verdict,
            f"[{style}]{s.verdict}[/{style}]",
            "-" if s.p_value is None else f"{s.p_value:.2g}",
        )
    console.print(table)
    refs = ", ".join(f"{k} conf {v:.2f}" for k, v in result.references.items())
    console.print(f"innocent references ({len(result.references)}, never the base): {refs}")
    console.print(
        "verdict: the model-level test against the references at alpha 0.01 (docs/method.md);"
        " paper verdict: conf >= 0.5, a figure, not calibrated"
    )
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    reports = Path(result.suspects[0].report).parent
    console.print(f"reports (JSON, signed .dsse.json, .html evidence pages): {reports}/")
    console.print(f"keyset digest {result.keyset_digest[:16]}...; check a signed report offline with:")
    console.print(
        f"  t2i-audit verify {reports}/{result.suspects[0].name}.dsse.json "
        f"--key {reports.parent}/demo-owner.pub --keys {reports.parent}/keys"
    )
