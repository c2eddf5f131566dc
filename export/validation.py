"""The export's checks on ONNX Runtime: which providers run them, and the offline CPU graphs.

Every exported graph runs the seeded validation inputs and is held to its contract's
tolerance against torch's outputs. On the CPU provider by default; `validate_on="auto"`
uses the CUDA provider when it really runs here (TF32 off for fp32 graphs). A parity
record names the provider the session *actually* ran on (`session.get_providers()`, after
the session was created), never the one asked for: onnxruntime-gpu on a host without a
usable GPU silently runs the CPU provider. ONNX Runtime's offline-optimized CPU graph
(`model.ort.onnx`) is tried best level first, and the first level whose graph still
validates is kept; for a UNet the best level starts from ONNX Runtime's transformer
optimizer's fused graph (`export.ort_fusion`). A bundle meant for GPU hosts
(`cpu_graphs=False`) keeps only the portable graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auditor.backends.engines.components import ComponentContract, ParityRecord, compare


def validation_providers(validate_on: str, precision: str = "fp32") -> list:
    """ONNX Runtime providers for the export's checks: the CPU, or ("auto") the CUDA provider when it
    is installed (TF32 off for fp32), which on a GPU host takes seconds where the CPU takes minutes.
    Whether it really ran is read from the session afterwards (`run_graph`)."""
    from auditor.backends.engines.ort import (
        CPU_PROVIDER,
        CUDA_PROVIDER,
        available_providers,
        provider_options,
    )

    if validate_on == "cpu" or CUDA_PROVIDER not in available_providers():
        return [CPU_PROVIDER]
    cuda = provider_options(CUDA_PROVIDER, device_index=0, precision=precision, contract=None, cache_dir=None)
    return [cuda, CPU_PROVIDER]


def run_graph(
    path: Path, contract: ComponentContract, inputs: dict[str, np.ndarray], providers: list | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """The graph's outputs on `inputs`, and the provider the session really ran on (its first)."""
    from auditor.backends.engines.ort import make_session

    session = make_session(path, providers) if providers else make_session(path)
    values = session.run(contract.output_names, {name: inputs[name] for name in contract.input_names})
    return dict(zip(contract.output_names, values, strict=True)), session.get_providers()[0]


def optimize_and_validate(
    comp_dir: Path,
    contract: ComponentContract,
    external: bool,
    inputs: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    seed: int,
    *,
    cpu_graphs: bool = True,
    providers: list | None = None,
    fused: Path | None = None,
) -> tuple[str, str, ParityRecord]:
    """Offline ORT optimization, best level first; keep the first graph that validates.

    `fused`: ONNX Runtime's transformer optimizer's graph of the portable one (CPU fusions only),
    tried first at the extended level ("transformers+extended"). Without `cpu_graphs` (a bundle
    for GPU hosts) only the portable graph is kept, validated on `providers`."""
    from auditor.backends.engines.ort import OFFLINE_LEVELS, optimize_offline

    portable = comp_dir / "model.onnx"
    parity: ParityRecord | None = None
    if not cpu_graphs:
        outputs, ran_on = run_graph(portable, contract, inputs, providers)
        label = f"onnxruntime {ran_on} (none)"
        return portable.name, "none", compare(outputs, references, contract.tolerance, label, seed)
    levels = [("transformers+extended", fused, "extended")] if fused is not None else []
    levels += [(level, portable, level) for level in OFFLINE_LEVELS]
    for name, source, level in levels:
        if level == "none":
            candidate = portable
        else:
            candidate = comp_dir / "model.ort.onnx"
            try:
                optimize_offline(source, candidate, level, external)
            except Exception:  # an optimizer failure only rules this level out
                _remove_graph(candidate)
                continue
        outputs, ran_on = run_graph(candidate, contract, inputs)
        parity = compare(outputs, references, contract.tolerance, f"onnxruntime {ran_on} ({name})", seed)
        if parity.passed or level == "none":
            return candidate.name, name, parity
        _remove_graph(candidate)
    raise AssertionError("unreachable: the 'none' level always returns")


def _remove_graph(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(str(path) + ".data").unlink(missing_ok=True)
