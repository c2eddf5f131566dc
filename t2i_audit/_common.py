"""What every command shares: the global options, the option groups, the output context.

Option groups are argparse parents defined once. The global options (`--format`,
`--threads`) are accepted before *or* after the subcommand: every subparser gets them
again with `default=SUPPRESS`, so a value given after the subcommand wins and one given
before is not overwritten by the subparser's default (the Kubernetes example puts
`--format json` after `batch`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from auditor.errors import BadInputError

FORMATS = ("human", "json")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str):  # type: ignore[override]
        raise BadInputError(f"{self.prog}: {message}")


class Context:
    """How a command talks to its caller: rich for humans (progress on stderr), JSON for machines."""

    def __init__(self, fmt: str) -> None:
        from rich.console import Console

        from auditor.progress import Reporter, RichReporter

        self.format = fmt
        # Piped to a file or a CI log, rich would wrap tables at 80 columns.
        self.console = Console(width=None if sys.stdout.isatty() else 160)
        self.reporter = Reporter() if fmt == "json" else RichReporter()

    def emit_json(self, obj: object) -> None:
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
        sys.stdout.flush()

    def plain(self, text: str) -> None:
        """One line on stdout, printed as typed (no rich markup, highlighting or wrapping)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_jobs_argument(parser: argparse.ArgumentParser, trained: str) -> None:
    """`--jobs`, shared by every command that trains models: one-thread worker processes, since
    on small CPU machines two of those beat one process with two threads (docs/design.md)."""
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=2,
        help=f"one-thread worker processes that train {trained} (default 2)",
    )


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number strictly between 0 and 1, got {text!r}"
        ) from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {value:g}")
    return value


def pair(text: str) -> tuple[int, int]:
    """'HxW' (or 'H,W'): SDXL's size conditioning on the command line."""
    parts = re.split(r"[x,]", text.strip().lower())
    try:
        first, second = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two integers as HxW (e.g. 1024x1024), got {text!r}"
        ) from None
    return first, second


def device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


# ---------------------------------------------------------------- option groups (parents)


def global_options(suppress: bool) -> argparse.ArgumentParser:
    """--format and --threads; `suppress`: the copy every subcommand gets (see module docstring)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=argparse.SUPPRESS if suppress else "human",
        help="output format on stdout (default human)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=argparse.SUPPRESS if suppress else None,
        help="torch intra-op threads (default: torch's choice)",
    )
    return p


def generation_options(
    title: str = "generation (defaults: the keyset's settings)",
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group(title)
    g.add_argument("--steps", type=int, help="denoising steps")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    g.add_argument("--scheduler", help="ddim, pndm, euler, euler_a, dpm++, ddpm, lms")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--original-size", type=pair, metavar="HxW", help="SDXL size conditioning (default HxW)")
    g.add_argument(
        "--crop-top-left", type=pair, metavar="TOPxLEFT", help="SDXL crop conditioning (default 0x0)"
    )
    g.add_argument("--target-size", type=pair, metavar="HxW", help="SDXL size conditioning (default HxW)")
    return p


def runtime_options(batch_size: int = 16) -> argparse.ArgumentParser:
    from auditor.backends import BACKENDS, DTYPES

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--dtype", default="float32", choices=DTYPES)
    g.add_argument("--batch-size", type=positive_int, default=batch_size)
    g.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="torch or torch-compiled (a diffusers folder, checkpoint or LoRA; torch-compiled: torch.compile,"
        " SDPA, channels-last) or onnx / tensorrt (an exported bundle)",
    )
    return p


def model_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("single-file checkpoints and LoRA files")
    g.add_argument("--config", help="single-file checkpoint: local diffusers folder of the same architecture")
    g.add_argument("--base", help="LoRA file: the diffusers folder of its base model")
    return p


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, func, parents: tuple = ()
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, parents=[global_options(True), *parents])
    p.set_defaults(func=func)
    return p


def add_group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A command with subcommands of its own (zoo, keys, report, shadow)."""
    p = sub.add_parser(name, help=help, parents=[global_options(True)])
    return p.add_subparsers(
        dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND", parser_class=Parser, required=True
    )


# ---------------------------------------------------------------- shared readings of the options


def generation_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The generation fields given on the command line (None: not given)."""
    return {
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "scheduler": args.scheduler,
        "height": args.height,
        "width": args.width,
        "original_size": args.original_size,
        "crops_coords_top_left": args.crop_top_left,
        "target_size": args.target_size,
    }


def settings(args: argparse.Namespace, keyset=None):
    """GenerationSettings from the options, over the keyset's settings when there is a keyset."""
    from auditor.config import GenerationSettings
    from auditor.documents import validate
    from auditor.workflow import resolve_settings

    if keyset is not None:
        return resolve_settings(keyset, generation_overrides(args))
    values = {k: v for k, v in generation_overrides(args).items() if v is not None}
    return validate(GenerationSettings, values, "generation settings")


def suspect_spec(model: str, args: argparse.Namespace, **extra):
    """A SuspectSpec for `model` from the runtime (and, where present, model) options."""
    from auditor.backends import SuspectSpec
    from auditor.documents import validate

    values = {
        "model": model,
        "backend": args.backend,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "config": getattr(args, "config", None),
        "base": getattr(args, "base", None),
        **extra,
    }
    return validate(SuspectSpec, values, f"model {model}")


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInputError(f"{p}: prompts file not found") from None
    except IsADirectoryError:
        raise BadInputError(f"{p}: is a folder, expected a prompts file (one prompt per line)") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{p}: expected UTF-8 text, one prompt per line") from None
    from auditor.text import unsafe_char

    for number, line in enumerate(lines, 1):  # a keyset refuses them later, after hours of selection
        bad = unsafe_char(line.strip())
        if bad is not None:
            raise BadInputError(f"{p}: line {number}: the prompt holds a control or bidi character ({bad})")
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise BadInputError(f"{p}: expected one prompt per line, the file has none")
    return prompts
