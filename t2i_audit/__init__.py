"""`t2i-audit`: the command line of t2i-auditor, one module per command group.

    main(argv) -> int     what the console script runs; tests call it directly

The CLI sits on top of both libraries (`auditor`, `export`); neither imports it.
Exit codes are the contract with batch schedulers: 0 done, 1 verification failed,
2 bad input (do not retry), 75 transient (retry), 70 internal error (a bug). Every non-zero exit prints exactly
one line on stderr; tracebacks are for bugs, never for foreseen bad input.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from auditor import __version__
from auditor.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, AuditorError
from t2i_audit import _common

__all__ = ["build_parser", "main", "main_entry"]


def build_parser() -> _common.Parser:
    from t2i_audit import audit, batch, demo, evidence, export, keys, references, serve, statistical, zoo

    parser = _common.Parser(
        prog="t2i-audit",
        description="Training data attribution for text-to-image models: "
        "was this suspicious model trained on images that my model generated?",
        parents=[_common.global_options(False)],
    )
    parser.add_argument("--version", action="version", version=f"t2i-audit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_common.Parser, required=True)
    for module in (zoo, keys, references, audit, demo, evidence, export, batch, serve, statistical):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from auditor.backends import hf_offline_environment

    hf_offline_environment()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args, _common.Context(args.format))
    except AuditorError as exc:
        print(f"t2i-audit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("t2i-audit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one scrubbed line (secrets never printed), the traceback on request
        import os

        from auditor.errors import first_line

        if os.environ.get("T2I_AUDITOR_TRACEBACK") == "1":
            raise
        print(
            f"t2i-audit: internal error: {type(exc).__name__}: {first_line(exc)} (a bug; rerun with"
            " T2I_AUDITOR_TRACEBACK=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def main_entry() -> None:
    sys.exit(main())
