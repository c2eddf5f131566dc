"""`t2i-audit shadow` (the statistical level's training set) and `t2i-audit reproduce`.

shadow build --scale S --family F --out SHADOWS.json   train a family's shadow models in the tiny zoo
shadow fit --keys KEYS --shadows SHADOWS.json --out D  audit the shadows, fit and save the discriminator
reproduce [--study paper|calibration|laundering] --scale tiny|smoke|... [--stage build|audit|report] --out DIR
          [--distance NAME]                            the paper's evaluation (docs/reproduction.md); the
                                                       studies' audits with another registered distance
"""

from __future__ import annotations

import argparse
from pathlib import Path

from auditor.errors import EXIT_OK, BadInputError
from t2i_audit._common import Context, add_command, add_group, add_jobs_argument, device, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from auditor.distance import available_distances
    from auditor.reproduction.scales import SCALES, STAGES

    shadow_sub = add_group(sub, "shadow", "shadow models and the statistical-level discriminator")
    p = add_command(
        shadow_sub, "build", "train one reproduction family's shadow models (tiny zoo)", cmd_shadow_build
    )
    p.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    p.add_argument("--family", default="v1", help="model family of the scale (default v1)")
    p.add_argument("--out", required=True, help="shadow-set file to write (JSON)")
    p.add_argument("--cache", type=Path, help="zoo cache directory")
    add_jobs_argument(p, "the models")

    p = add_command(
        shadow_sub, "fit", "audit the shadows with the keys and fit the discriminator", cmd_shadow_fit
    )
    p.add_argument("--keys", required=True, help="keyset folder")
    p.add_argument("--shadows", required=True, help="shadow-set file (from `shadow build`, or your own)")
    p.add_argument("--out", required=True, help="discriminator file to write (JSON, no pickle)")
    p.add_argument("--delta0", type=float, help="hit threshold (default: the keyset's selection delta0)")
    p.add_argument("--device", type=device, default="cpu")

    p = add_command(
        sub,
        "reproduce",
        "the paper's evaluation (Figures 6-7, Tables 1-2) or the verdict's calibration study, on the tiny zoo",
        cmd_reproduce,
    )
    p.add_argument(
        "--study",
        choices=["paper", "calibration", "laundering"],
        default="paper",
        help="paper: the paper's figures; calibration: the verdict's false-positive rate and power;"
        " laundering: its power against infringers who post-processed their data",
    )
    # checked per study in cmd_reproduce: the studies' scales are not imported to build the parser
    p.add_argument(
        "--scale",
        default="tiny",
        help=f"{' or '.join(sorted(SCALES))} (default tiny); the laundering study also has tiny-further"
        " (its further fine-tunes and their controls only, to compare distances), the calibration study"
        " tiny-lora (its references, panel and first LoRAs) and issue 20's worlds dev, confirm, holdout, wide"
        " and level (docs/reproduction.md)",
    )
    p.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    p.add_argument(
        "--distance",
        help="calibration and laundering studies: audit with this registered distance"
        f" ({', '.join(available_distances())}; default l2). Keys are selected with l2 whatever it is",
    )
    p.add_argument(
        "--rescore",
        type=Path,
        metavar="TABLE",
        help="calibration study: score a verdict test on a study table (OUT/calibration/distances.csv.gz"
        " of a run, or docs/studies/*.csv.gz) against many reference sets, without training",
    )
    p.add_argument(
        "--test",
        help="with --rescore: a registered verdict test's method (default: the shipped one), a design"
        " candidate's (auditor.reproduction.candidates), or `candidates` to compare them all",
    )
    p.add_argument(
        "--reference-sets",
        type=positive_int,
        default=200,
        help="with --rescore: reference sets drawn (default 200)",
    )
    p.add_argument(
        "--keys",
        type=positive_int,
        help="with --rescore: score on the table's first K keys, the ones a K-key selection picks"
        " (a keyset lists its keys best-ranked first; default all)",
    )
    p.add_argument("--out", type=Path, default=Path("reproduction-out"), help="output folder")
    p.add_argument("--cache", type=Path, help="zoo cache directory")
    add_jobs_argument(p, "the models")


def _family(scale_name: str, family: str):
    from auditor.reproduction.scales import get_scale

    scale = get_scale(scale_name)
    for f in scale.families:
        if f.name == family:
            return scale, f
    names = ", ".join(f.name for f in scale.families)
    raise BadInputError(f"--family: expected one of {names}, got {family!r}")


def cmd_shadow_build(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.identity import hash_model
    from auditor.shadow import ShadowModel, write_shadow_set
    from auditor.zoo.build import build_zoos

    _, family = _family(args.scale, args.family)
    # Only the shadows: the family's watermarked models belong to baseline 1, not here.
    marked = {m.name for m in family.members if m.watermarked}
    zoo = family.zoo.model_copy(
        update={"suspects": tuple(s for s in family.zoo.suspects if s.name not in marked)}
    )
    (index,) = build_zoos([zoo], args.cache, ctx.reporter, args.jobs)
    models = [
        ShadowModel(
            name=m.name,
            path=index.suspects[m.name],
            label=1 if m.rho > 0 else 0,
            rho=m.rho,
            digest=hash_model(index.suspects[m.name]).digest,
        )
        for m in family.members
        if not m.watermarked
    ]
    write_shadow_set(Path(args.out), models)
    if ctx.format == "json":
        ctx.emit_json(
            {"shadows": args.out, "models": len(models), "source": index.source, "base": index.base}
        )
    else:
        ctx.console.print(f"{len(models)} shadow models of family {family.name} listed in {args.out}")
        ctx.console.print(f"  source {index.source}\n  base   {index.base}")
    return EXIT_OK


def cmd_shadow_fit(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.config import AuditConfig
    from auditor.discriminator import Discriminator
    from auditor.documents import validate
    from auditor.shadow import load_shadows, shadow_distances
    from auditor.workflow import load_keys

    keys = load_keys(args.keys)
    keyset = keys.keyset
    shadows, root = load_shadows(args.shadows)
    delta0 = args.delta0 if args.delta0 is not None else keyset.selection.delta0
    config = validate(AuditConfig, {"delta0": delta0}, "audit config")
    distances, labels = shadow_distances(shadows, root, keys, config, ctx.reporter, args.device)
    model = Discriminator(delta0=config.delta0, distance=config.distance, seeds_per_key=config.seeds_per_key)
    model.fit(distances, labels)
    model.save(args.out, keyset_digest=keyset.digest)
    record = model.to_dict()
    if ctx.format == "json":
        ctx.emit_json({"discriminator": args.out, **record})
    else:
        ctx.console.print(
            f"discriminator ({model.candidate.id}) fit on {len(shadows.models)} shadows -> {args.out}"
        )
    return EXIT_OK


def _rescore(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.reproduction.run import rescore_study

    if args.study != "calibration" or args.rescore is None:
        raise BadInputError("--rescore TABLE (and --test, --keys) go with --study calibration")
    out = args.out / "rescore"
    summary = rescore_study(
        args.rescore, out, method=args.test, sets=args.reference_sets, keys=args.keys, reporter=ctx.reporter
    )
    if ctx.format == "json":
        ctx.emit_json({"out": str(out), "summary": str(summary)})
    else:
        from rich.markdown import Markdown

        ctx.console.print(Markdown(summary.read_text(encoding="utf-8")))
    return EXIT_OK


def cmd_reproduce(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.reproduction.run import reproduce, reproduce_calibration
    from auditor.reproduction.scales import get_scale

    if args.rescore is not None or args.test is not None or args.keys is not None:
        return _rescore(args, ctx)
    if args.study in ("calibration", "laundering"):
        from auditor.distance import get_distance

        if args.study == "calibration":
            from auditor.reproduction.calibration_worlds import STUDIES
        else:
            from auditor.reproduction.laundering_study import STUDIES

        if args.scale not in STUDIES:
            raise BadInputError(
                f"--scale: the {args.study} study has {', '.join(sorted(STUDIES))}, got {args.scale!r}"
            )
        study = STUDIES[args.scale]()
        if args.distance is not None:
            get_distance(args.distance)  # an unknown name: one line naming the known ones, exit 2
            study = study.model_copy(update={"distance": args.distance})
        options = {"stage": args.stage, "cache_dir": args.cache, "jobs": args.jobs, "reporter": ctx.reporter}
        out = args.out / args.study
        try:
            summary = reproduce_calibration(study, out, kind=args.study, **options)
        except FileNotFoundError as exc:
            raise BadInputError(str(exc).strip("'\"")) from None
        if ctx.format == "json":
            ctx.emit_json({"out": str(out), "summary": str(summary) if summary else None})
        elif summary:
            from rich.markdown import Markdown

            ctx.console.print(Markdown(summary.read_text(encoding="utf-8").split("![", 1)[0]))
            ctx.console.print(f"{args.study} study: {summary}")
        return EXIT_OK
    if args.distance is not None:
        raise BadInputError("--distance: only the calibration and laundering studies take another distance")
    try:
        scale = get_scale(args.scale)
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    try:
        summary = reproduce(
            scale, args.out, stage=args.stage, cache_dir=args.cache, jobs=args.jobs, reporter=ctx.reporter
        )
    except FileNotFoundError as exc:
        raise BadInputError(str(exc).strip("'\"")) from None
    if ctx.format == "json":
        ctx.emit_json({"out": str(args.out), "summary": str(summary) if summary else None})
    elif summary:
        from rich.markdown import Markdown

        text = summary.read_text(encoding="utf-8")
        claims = text.split("## The paper's figures beside ours", 1)[-1].split("\n## ", 1)[0]
        ctx.console.print(Markdown("## The paper's figures beside ours\n" + claims))
        ctx.console.print(f"reproduction summary: {summary}")
    return EXIT_OK
