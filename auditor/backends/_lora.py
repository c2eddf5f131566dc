"""A LoRA file applied to a base diffusers folder, through diffusers' `load_lora_weights` (needs peft).

A LoRA is checked against the base before it is applied, twice. First from the files alone
(`check_lora_file`, run before any model is loaded or any image generated): the base's
pipeline (model_index.json), the LoRA's family when its names tell it (an SDXL LoRA adapts
`text_encoder_2`), and every module it names against the tensor names and shapes in the
base's safetensors headers. Then against the loaded modules. A module the base lacks, or a
shape that differs (an SDXL LoRA on an SD 1.5 base, or the reverse), is a one-line
BadInputError naming both files instead of a deep stack trace or, worse, a silently
ignored LoRA.
"""

from __future__ import annotations

import os
from pathlib import Path

from auditor.backends._diffusers import TorchGenerator
from auditor.backends._pipelines import PipelineInfo, lora_pipeline, read_pipeline
from auditor.errors import BadInputError, first_line
from auditor.weights import SAFETENSORS_SUFFIX, read_safetensors_header, sniff_weights

_LORA_SUFFIXES = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora.down.weight",
    ".lora.up.weight",
    ".lora_down.weight",
    ".lora_up.weight",
)
_DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_down.weight")
LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

Shapes = dict[str, tuple[int, int]]  # module path -> (out_features, in_features) of its weight


def lora_modules(names_and_shapes: dict[str, tuple[int, ...]]) -> dict[tuple[str, str], dict[str, tuple]]:
    """{(component, module path): {"down": shape, "up": shape}} for diffusers/PEFT-style LoRA keys.

    Keys of other layouts (kohya's `lora_unet_...`) are left out: diffusers converts those
    itself, and the check after loading still catches a LoRA that attached to nothing.
    """
    found: dict[tuple[str, str], dict[str, tuple]] = {}
    for key, shape in names_and_shapes.items():
        component, _, rest = key.partition(".")
        if component not in LORA_COMPONENTS or not rest:
            continue
        for suffix in _LORA_SUFFIXES:
            if rest.endswith(suffix):
                module = rest[: -len(suffix)]
                found.setdefault((component, module), {})["down" if suffix in _DOWN else "up"] = tuple(shape)
                break
    return found


def _lookup(shapes: Shapes, module: str) -> tuple[int, int] | None:
    """A module's weight shape; text encoders are saved with or without the `text_model.` prefix."""
    for name in (module, f"text_model.{module}", module.removeprefix("text_model.")):
        if name in shapes:
            return shapes[name]
    return None


def _check_fit(lora: Path, modules: dict, base: dict[str, Shapes | None], what: str) -> None:
    """Every LoRA module exists in `base` (per component; None: not known, skipped) with matching shapes."""
    for (component, module_path), shapes in sorted(modules.items()):
        known = base.get(component)
        if known is None:
            if component not in base:  # the base has no such component at all
                raise BadInputError(
                    f"LoRA {lora.name} does not fit base {what}: it adapts {component}, which the base does not "
                    "have (an SDXL LoRA on an SD base?)"
                )
            continue
        weight = _lookup(known, module_path)
        if weight is None:
            raise BadInputError(
                f"LoRA {lora.name} does not fit base {what}: it names {component} module "
                f"{module_path!r}, which the base does not have (a LoRA for another architecture?)"
            )
        out_features, in_features = weight
        down, up = shapes.get("down"), shapes.get("up")
        if (down is not None and (len(down) < 2 or down[1] != in_features)) or (
            up is not None and (len(up) < 2 or up[0] != out_features)
        ):
            raise BadInputError(
                f"LoRA {lora.name} does not fit base {what}: {component} module {module_path!r} is "
                f"{in_features}->{out_features} in the base, the LoRA's matrices are {down} and {up} "
                "(a LoRA for another base model?)"
            )


def _header_shapes(folder: Path) -> Shapes | None:
    """Weight shapes from a component folder's safetensors headers (no tensor is read); None: no such files."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shapes: Shapes = {}
    for file in files:
        for name, entry in read_safetensors_header(file).items():
            shape = entry["shape"]
            if name.endswith(".weight") and len(shape) >= 2:
                shapes[name.removesuffix(".weight")] = (int(shape[0]), int(shape[1]))
    return shapes


def _describe(base: Path, info: PipelineInfo) -> str:
    return f"{base.name} (a {info.pipeline}, {info.index})"


def check_lora_file(lora: Path, base: str | os.PathLike[str] | None) -> PipelineInfo:
    """The checks that read no weights, made before the base is loaded (and before any generation)."""
    if base is None:
        raise BadInputError(
            f"{lora}: a LoRA file needs `base`, the diffusers folder of the model it was trained on"
        )
    if lora.suffix.lower() != SAFETENSORS_SUFFIX:
        raise BadInputError(f"{lora}: expected a LoRA in .safetensors format")
    base_path = Path(base)
    info = read_pipeline(base_path)
    header = read_safetensors_header(lora)
    family = lora_pipeline(header.keys())
    if family is not None and family != info.pipeline:
        raise BadInputError(
            f"LoRA {lora.name} is for a {family} (it adapts text_encoder_2), but base {base_path.name} is a "
            f"{info.pipeline} ({info.index}); expected an SDXL base"
        )
    components = ("unet", "text_encoder", *(("text_encoder_2",) if info.is_xl else ()))
    weights = {c: _header_shapes(base_path / c) for c in components}
    modules = lora_modules({k: tuple(v["shape"]) for k, v in header.items()})
    _check_fit(lora, modules, weights, _describe(base_path, info))
    return info


def check_lora_fits(lora: Path, pipe, base_name: str) -> int:
    """Check every LoRA module exists in the loaded base with matching shapes; return the count."""
    header = read_safetensors_header(lora)
    modules = lora_modules({k: tuple(v["shape"]) for k, v in header.items()})
    loaded: dict[str, Shapes | None] = {}
    for component in LORA_COMPONENTS:
        module = getattr(pipe, component, None)
        if module is not None:
            loaded[component] = {
                name: (int(m.weight.shape[0]), int(m.weight.shape[1]))
                for name, m in module.named_modules()
                if getattr(m, "weight", None) is not None and m.weight.ndim >= 2
            }
    _check_fit(lora, modules, loaded, base_name)
    return len(modules)


def load_lora(
    path: Path, base: str | os.PathLike[str] | None, *, device: str, dtype: str, batch_size: int
) -> TorchGenerator:
    from auditor.identity import hash_model

    if sniff_weights(path) in ("pickle", "zip"):
        raise BadInputError(f"{path}: expected a LoRA in safetensors format (a pickle is refused)")
    check_lora_file(path, base)
    base_path = Path(base)  # type: ignore[arg-type]  # checked above
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

    parts = [getattr(pipe, c) for c in LORA_COMPONENTS if getattr(pipe, c, None) is not None]
    attached = sum(isinstance(m, BaseTunerLayer) for part in parts for m in part.modules())
    if attached == 0:
        raise BadInputError(
            f"LoRA {path.name} does not fit base {base_path.name}: none of its weights matched a module of the base"
        )
    # diffusers loads a file of mixed key styles without the modules of the minority style, silently
    expected = len(lora_modules({k: tuple(v["shape"]) for k, v in read_safetensors_header(path).items()}))
    if attached < expected:
        raise BadInputError(
            f"LoRA {path.name} on base {base_path.name}: only {attached} of its {expected} modules attached "
            "(a file mixing key styles, e.g. lora.down and lora_A?); expected every module it names"
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
