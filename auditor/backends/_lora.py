"""A LoRA file applied to a base diffusers folder, through diffusers' `load_lora_weights` (needs peft).

A LoRA is checked against the base before it is applied: a module it names that the
base lacks, or a shape that differs, is a one-line BadInputError instead of a deep stack
trace or, worse, a silently ignored LoRA.
"""

from __future__ import annotations

import os
from pathlib import Path

from auditor.backends._diffusers import TorchGenerator
from auditor.errors import BadInputError, first_line
from auditor.identity import SAFETENSORS_SUFFIX, read_safetensors_header, sniff_weights

_LORA_SUFFIXES = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora.down.weight",
    ".lora.up.weight",
    ".lora_down.weight",
    ".lora_up.weight",
)
_DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_down.weight")


def lora_modules(names_and_shapes: dict[str, tuple[int, ...]]) -> dict[tuple[str, str], dict[str, tuple]]:
    """{(component, module path): {"down": shape, "up": shape}} for diffusers/PEFT-style LoRA keys.

    Keys of other layouts (kohya's `lora_unet_...`) are left out: diffusers converts those
    itself, and the check after loading still catches a LoRA that attached to nothing.
    """
    found: dict[tuple[str, str], dict[str, tuple]] = {}
    for key, shape in names_and_shapes.items():
        component, _, rest = key.partition(".")
        if component not in ("unet", "text_encoder") or not rest:
            continue
        for suffix in _LORA_SUFFIXES:
            if rest.endswith(suffix):
                module = rest[: -len(suffix)]
                found.setdefault((component, module), {})["down" if suffix in _DOWN else "up"] = tuple(shape)
                break
    return found


def check_lora_fits(lora: Path, pipe, base_name: str) -> int:
    """Check every LoRA module the file names exists in the base with matching shapes; return the count."""
    header = read_safetensors_header(lora)
    modules = lora_modules({k: tuple(v["shape"]) for k, v in header.items()})
    components = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    named = {c: dict(m.named_modules()) for c, m in components.items()}
    for (component, module_path), shapes in sorted(modules.items()):
        module = named[component].get(module_path)
        weight = getattr(module, "weight", None)
        if module is None or weight is None:
            raise BadInputError(
                f"LoRA {lora.name} does not fit base {base_name}: it names {component} module "
                f"{module_path!r}, which the base does not have (a LoRA for another architecture?)"
            )
        out_features, in_features = int(weight.shape[0]), int(weight.shape[1])
        down, up = shapes.get("down"), shapes.get("up")
        if (down is not None and (len(down) < 2 or down[1] != in_features)) or (
            up is not None and (len(up) < 2 or up[0] != out_features)
        ):
            raise BadInputError(
                f"LoRA {lora.name} does not fit base {base_name}: {component} module {module_path!r} is "
                f"{in_features}->{out_features} in the base, the LoRA's matrices are {down} and {up} "
                "(a LoRA for another base model?)"
            )
    return len(modules)


def load_lora(
    path: Path, base: str | os.PathLike[str] | None, *, device: str, dtype: str, batch_size: int
) -> TorchGenerator:
    from auditor.identity import hash_model

    if base is None:
        raise BadInputError(
            f"{path}: a LoRA file needs `base`, the diffusers folder of the model it was trained on"
        )
    if path.suffix.lower() != SAFETENSORS_SUFFIX or sniff_weights(path) in ("pickle", "zip"):
        raise BadInputError(f"{path}: expected a LoRA in safetensors format (a pickle is refused)")
    base_path = Path(base)
    base_gen = TorchGenerator(base_path, device=device, dtype=dtype, batch_size=batch_size)
    pipe = base_gen.pipe
    check_lora_fits(path, pipe, base_path.name)
    try:
        import peft  # noqa: F401
    except ImportError:
        raise BadInputError(
            f"{path.name}: applying a LoRA needs the 'peft' package (pip install peft)"
        ) from None
    try:
        pipe.load_lora_weights(str(path), adapter_name="suspect")
    except Exception as exc:  # peft/diffusers raise ValueError, RuntimeError, KeyError on mismatches
        raise BadInputError(
            f"LoRA {path.name} does not fit base {base_path.name}: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    from peft.tuners.tuners_utils import BaseTunerLayer

    attached = sum(
        isinstance(m, BaseTunerLayer) for part in (pipe.unet, pipe.text_encoder) for m in part.modules()
    )
    if attached == 0:
        raise BadInputError(
            f"LoRA {path.name} does not fit base {base_path.name}: none of its weights matched a module of the base"
        )
    base_digest = hash_model(base_path).digest
    return TorchGenerator.from_pipeline(
        pipe,
        path=path,
        device=base_gen.device,
        dtype=dtype,
        batch_size=batch_size,
        note=f"LoRA {path.name} ({attached} layers) on base {base_path.name} (digest {base_digest})",
    )
