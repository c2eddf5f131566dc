"""Evidence commands: keygen, verify, report show.

    t2i-audit keygen --out owner            -> owner.key (0600), owner.pub; prints the keyid
    t2i-audit verify report.dsse.json --key owner.pub [--keys KEYS_DIR]
    t2i-audit report show report.json [--html page.html] [--keys KEYS_DIR] [--images REGEN_DIR]

`verify` imports no ML library: a third party checking a signature needs none.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from auditor.errors import BadInputError
from t2i_audit._common import Context, add_command, add_group


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "keygen", "create an Ed25519 signing key pair (PREFIX.key 0600, PREFIX.pub)", cmd_keygen
    )
    p.add_argument("--out", required=True, metavar="PREFIX", help="path prefix of the two key files")

    p = add_command(
        sub, "verify", "verify a signed report offline (exit 0 valid, 1 invalid, 2 bad input)", cmd_verify
    )
    p.add_argument("envelope", metavar="ENVELOPE", help="the DSSE envelope (report.dsse.json)")
    p.add_argument("--key", required=True, metavar="PUB", help="the owner's Ed25519 public key (PEM)")
    p.add_argument("--keys", metavar="DIR", help="the keyset folder: check its images, digest and commitment")
    p.add_argument(
        "--images",
        metavar="DIR",
        help="the suspect's regenerations (audit --save-images DIR): recompute their distances (needs --keys)",
    )

    report = add_group(sub, "report", "attribution reports")
    p = add_command(
        report, "show", "summarize a report (or an envelope, unverified); --html for a page", cmd_report_show
    )
    p.add_argument("report", metavar="REPORT", help="report JSON or DSSE envelope")
    p.add_argument("--html", metavar="OUT", help="write a self-contained HTML evidence page")
    p.add_argument("--keys", metavar="DIR", help="the keyset folder, to show each key image")
    p.add_argument("--images", metavar="DIR", help="the suspect's regenerations (audit --save-images DIR)")


# ---------------------------------------------------------------- keygen


def cmd_keygen(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.signing import generate_keypair

    prefix = str(args.out)
    if not prefix or prefix.endswith(("/", "\\")):
        raise BadInputError(f"--out {prefix!r}: expected a file name prefix, e.g. --out keys/owner")
    private, public = Path(prefix + ".key"), Path(prefix + ".pub")
    keyid = generate_keypair(private, public)
    if ctx.format == "json":
        ctx.emit_json({"keyid": keyid, "private_key": str(private), "public_key": str(public)})
    else:
        ctx.plain(keyid)
    return 0


# ---------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.documents import read_bytes
    from auditor.evidence import verify_signed_report_details

    path = Path(args.envelope)
    envelope_bytes = read_bytes(path, "envelope file")
    verified = verify_signed_report_details(
        envelope_bytes, args.key, args.keys, source=str(path), images_dir=args.images
    )
    report = verified.report
    test = report.verdict.test
    if ctx.format == "json":
        ctx.emit_json(
            {
                "valid": True,
                "verdict": report.verdict.verdict,
                "rule": report.verdict.rule,
                "p_value": test.p_value if test else None,
                "alpha": report.verdict.alpha,
                "n_references": report.verdict.n_references,
                "suspect": {"name": report.suspect.name, "digest": report.suspect.digest},
                "source": {"name": report.source.name, "digest": report.source.digest},
                "keyset_digest": report.keyset.digest,
                "commitment": report.keyset.commitment,
                "keyid": verified.keyid,
                "created_at": report.created_at,
                "checks": list(verified.checks),
            }
        )
    else:
        extra = "keyset checked" if "keyset" in verified.checks else "keyset not checked (pass --keys DIR)"
        if "commitment" in verified.checks:
            extra += ", commitment opened"
        v = report.verdict
        ctx.plain(
            f"valid: {v.verdict} ({v.rule} at alpha {v.alpha:g}, {v.n_references} innocent references) for suspect"
            f" {report.suspect.name} sha256 {report.suspect.digest}, keyset {report.keyset.digest[:16]}..., signed by"
            f" keyid {verified.keyid[:16]}...; {extra}",
        )
        if v.alpha > 0.05:
            ctx.plain(
                f"caution: the report was decided at alpha {v.alpha:g}, above the usual 0.05 (default 0.01)"
            )
    return 0


# ---------------------------------------------------------------- report show


def cmd_report_show(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.evidence import key_pngs, read_report_or_envelope, regeneration_pngs
    from auditor.views import print_report_summary, render_report_html

    loaded = read_report_or_envelope(args.report)
    report = loaded.report
    name = Path(args.report).name
    if loaded.signed:
        note = (
            f"Rendered from the signed envelope {name} WITHOUT verifying its signature; "
            f"run `t2i-audit verify {name} --key OWNER.pub --keys KEYS_DIR` to verify it."
        )
    else:
        note = (
            f"Rendered from the unsigned report {name}: nothing on this page is verified; "
            "the evidence is the signed envelope (check it with `t2i-audit verify`)."
        )
    html_path = None
    if args.html:
        from auditor.fileio import atomic_write_text

        key_images = key_pngs(report, args.keys) if args.keys else None
        regenerations = regeneration_pngs(report, args.images) if args.images else None
        page = render_report_html(report, key_images=key_images, regenerations=regenerations, provenance=note)
        html_path = atomic_write_text(args.html, page)
    elif args.keys or args.images:
        raise BadInputError(
            "report show: --keys and --images only apply to the --html page; add --html OUT.html"
        )
    if ctx.format == "json":
        ctx.emit_json(
            {
                "report": report.model_dump(mode="json"),
                "signed_envelope": loaded.signed,
                "verified": False,
                "html": str(html_path) if html_path else None,
            }
        )
    else:
        if loaded.signed:
            ctx.plain(
                f"note: {name} is a signed envelope shown UNVERIFIED; run `t2i-audit verify` to check it"
            )
        print_report_summary(report, ctx.console)
        if html_path:
            ctx.plain(f"evidence page written to {html_path}")
    return 0
