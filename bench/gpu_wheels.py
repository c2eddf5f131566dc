"""`make gpu-wheels`: the wheels `make gpu-check` needs beyond torch, for a GPU host with no package index.

    python bench/gpu_wheels.py [--out .cache/gpu-wheels] [--constraints constraints.txt] [--max-mib 64]
                               [--python-version 3.11] [--platform manylinux_2_28_x86_64 ...]

The host this is for has a CUDA build of torch (with Triton) and nothing else; what it is given
has to travel, in at most 64 MiB. gpu-check's torch steps import, beyond torch, the
distributions bench/gpu_check.py lists in `TORCH_STACK` (diffusers, transformers, and what this
repository's modules on that path import: numpy, pillow, pydantic, rich). This downloads them
and every dependency they declare, binary wheels only, for the target (CPython 3.11, manylinux
x86_64: `pip download --only-binary=:all: --platform ... --python-version ... --implementation
cp --abi cp311`, whatever this host is), at the lock's versions (`-c constraints.txt`); torch is
none of their dependencies, so none of torch's GBs come along. Then it writes
`requirements.txt` (the listed distributions at the lock's pins) beside the wheels, prints every
wheel with its size and the total, and exits 1 when the total is over `--max-mib`.

On the host (docs/benchmarks.md, "gpu-check"):

    pip install --no-index --find-links WHEELS -r WHEELS/requirements.txt
    make gpu-check PYTHON=python3

scipy, scikit-learn, matplotlib, ray, accelerate and peft are left out on purpose: transformers
and diffusers import them only where installed, and gpu-check's steps never need them.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MIB = 2**20


def torch_stack() -> dict[str, str]:
    """gpu_check.TORCH_STACK (import name: distribution), read from the orchestrator beside this file."""
    spec = importlib.util.spec_from_file_location("bench_gpu_check", Path(__file__).with_name("gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return dict(module.TORCH_STACK)


def pins(constraints: Path, names: list[str]) -> list[str]:
    """`name==version` for each of `names` from a pip constraints file (the name alone when unpinned)."""
    found: dict[str, str] = {}
    for line in constraints.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[_normal(match.group(1))] = match.group(2)
    return [f"{name}=={found[_normal(name)]}" if _normal(name) in found else name for name in names]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sizes(folder: Path) -> list[tuple[str, int]]:
    """(file name, bytes) of every wheel in `folder`, largest first."""
    return sorted(((p.name, p.stat().st_size) for p in folder.glob("*.whl")), key=lambda x: (-x[1], x[0]))


def report(rows: list[tuple[str, int]], max_mib: float) -> tuple[str, bool]:
    """The size listing and whether the total fits in `max_mib`."""
    total = sum(size for _, size in rows)
    lines = [f"{size / MIB:8.2f} MiB  {name}" for name, size in rows]
    fits = total <= max_mib * MIB
    verdict = "fits" if fits else "OVER"
    lines.append(f"{total / MIB:8.2f} MiB  total, {len(rows)} wheels: {verdict} the {max_mib:g} MiB limit")
    return "\n".join(lines), fits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".cache/gpu-wheels", help="the folder (emptied first)")
    parser.add_argument("--constraints", default=str(ROOT / "constraints.txt"), help="the lock (pip -c)")
    parser.add_argument("--max-mib", type=float, default=64.0)
    parser.add_argument("--python-version", default="3.11")
    parser.add_argument(
        "--platform", action="append", help=f"wheel platform tags (default {', '.join(PLATFORMS)})"
    )
    args = parser.parse_args(argv)
    out, constraints = Path(args.out), Path(args.constraints)
    requirements = pins(constraints, list(torch_stack().values()))
    abi = "cp" + args.python_version.replace(".", "")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(out), "--only-binary=:all:"]
    for platform in args.platform or PLATFORMS:
        command += ["--platform", platform]
    command += ["--python-version", args.python_version, "--implementation", "cp", "--abi", abi]
    command += ["-c", str(constraints), *requirements]
    print("$ " + " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        print("pip download failed (above)", file=sys.stderr)
        return 1
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    text, fits = report(sizes(out), args.max_mib)
    print(text)
    print(f"install on the GPU host: pip install --no-index --find-links {out} -r {out}/requirements.txt")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
