"""`t2i-audit serve`: a model behind the AUTOMATIC1111 txt2img API, on loopback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.errors import EXIT_OK, BadInputError, TransientError
from t2i_audit._common import (
    Context,
    add_command,
    generation_options,
    model_options,
    positive_int,
    runtime_options,
    settings,
    suspect_spec,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "serve",
        "serve a model through the AUTOMATIC1111 txt2img API (loopback)",
        cmd_serve,
        parents=(
            generation_options("defaults for fields a request leaves out"),
            runtime_options(batch_size=1),
            model_options(),
        ),
    )
    p.add_argument(
        "model", help="diffusers folder, single-file checkpoint (with --config) or LoRA (with --base)"
    )
    p.add_argument("--port", type=int, default=7860, help="TCP port (0: any free port; default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    g = p.add_argument_group("limits per request and for the server (503 when full)")
    g.add_argument(
        "--max-pixels", type=positive_int, help="width x height per request (default: the model's resolution)"
    )
    g.add_argument("--max-steps", type=positive_int, default=150, help="denoising steps per request (150)")
    g.add_argument("--queue", type=int, default=4, help="requests that may wait for the model (default 4)")
    g.add_argument("--max-connections", type=positive_int, default=16, help="connections at once (16)")
    g.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds per request, queue included",
    )


def cmd_serve(args: argparse.Namespace, ctx: Context) -> int:
    import signal
    import threading

    from auditor.backends import open_suspect
    from auditor.documents import validate
    from auditor.serve import ServeLimits, start_server, stop_server

    if not 0 <= args.port <= 65535:
        raise BadInputError(f"--port {args.port}: expected 0 to 65535")
    limits = validate(
        ServeLimits,
        {
            "max_pixels": args.max_pixels,
            "max_steps": args.max_steps,
            "queue": args.queue,
            "max_connections": args.max_connections,
            "request_timeout_s": args.request_timeout,
        },
        "serve limits",
    )
    defaults = settings(args)
    generator = open_suspect(suspect_spec(args.model, args))
    try:
        server, thread = start_server(
            generator, host=args.host, port=args.port, defaults=defaults, limits=limits
        )
    except OSError as exc:
        raise TransientError(f"serve: cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"serving {Path(args.model).name} on {server.url} (at most {server.max_pixels} pixels and "
        f"{limits.max_steps} steps per request; Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server, thread)
    return EXIT_OK
