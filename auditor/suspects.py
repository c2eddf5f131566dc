"""Suspect sources beyond diffusers folders, behind the one `Generator` interface.

- a single-file Stable Diffusion checkpoint (`.safetensors`, or a pickled `.ckpt` that
  torch's `weights_only` unpickler accepts), in the original (LDM) layout most checkpoints
  are shared in. diffusers' `from_single_file` converts it, but it needs the component
  configs of the architecture, which it would download from the Hub; offline it needs a
  local diffusers folder of the same architecture (`config`: only its configs and
  tokenizer are read, its weights are not used);
- a LoRA file applied to a named base diffusers folder (`base`), through diffusers'
  `load_lora_weights` (which needs `peft`). A LoRA is checked against the base before it
  is applied: a module it names that the base lacks, or a shape that differs, is a
  one-line BadInputError instead of a deep stack trace or, worse, a silently ignored LoRA;
- an HTTP endpoint (AUTOMATIC1111 or generic JSON API): `auditor.remote.HttpGenerator`.

`open_suspect` picks the right one; `open_model` also routes diffusers folders (and engine
bundles) to `auditor.generation.load_generator`, so callers need one entry point.
"""

from __future__ import annotations

import os
from pathlib import Path

from auditor.errors import BadInputError
from auditor.generation import BackendInfo, TorchGenerator, resolve_device, validate_pipeline_folder
from auditor.identity import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    check_pickle_weights_only,
    read_safetensors_header,
)

SUSPECT_KINDS = ("auto", "diffusers_folder", "safetensors_file", "lora_file", "http")
_LORA_SUFFIXES = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora.down.weight",
    ".lora.up.weight",
    ".lora_down.weight",
    ".lora_up.weight",
)
_DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_down.weight")


def is_url(model: str) -> bool:
    return str(model).startswith(("http://", "https://"))


def detect_kind(model: str | os.PathLike[str]) -> str:
    """http, diffusers_folder, lora_file or safetensors_file (a single checkpoint file)."""
    if is_url(str(model)):
        return "http"
    path = Path(model)
    if path.is_dir():
        return "diffusers_folder"
    if not path.is_file():
        raise BadInputError(
            f"{path}: model not found (expected a diffusers folder, a checkpoint file or a URL)"
        )
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        names = read_safetensors_header(path).keys()
        return "lora_file" if any("lora" in name.lower() for name in names) else "safetensors_file"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return "safetensors_file"  # a single checkpoint all the same; loading checks the pickle first
    raise BadInputError(
        f"{path}: unknown model file type {path.suffix!r} (expected .safetensors, .ckpt, a folder or a URL)"
    )


def open_model(
    model: str,
    *,
    kind: str = "auto",
    config: str | None = None,
    base: str | None = None,
    http=None,
    backend: str = "torch",
    device: str = "auto",
    dtype: str = "float32",
    batch_size: int = 16,
    name: str | None = None,
):
    """Any suspect or reference: diffusers folder, engine bundle, single file, LoRA or URL."""
    resolved = detect_kind(model) if kind == "auto" else kind
    if resolved not in SUSPECT_KINDS:
        raise BadInputError(f"kind {kind!r}: expected one of {', '.join(SUSPECT_KINDS)}")
    if resolved == "diffusers_folder":
        from auditor.generation import load_generator

        if not Path(model).is_dir():
            raise BadInputError(f"{model}: kind diffusers_folder expects a folder")
        return load_generator(model, backend=backend, device=device, dtype=dtype, batch_size=batch_size)
    return open_suspect(
        model,
        backend=backend,
        kind=resolved,
        config=config,
        base=base,
        http=http,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        name=name,
    )


def open_suspect(
    model: str,
    backend: str = "torch",
    *,
    kind: str | None = None,
    config: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    http=None,
    device: str = "auto",
    dtype: str = "float32",
    batch_size: int = 16,
    name: str | None = None,
    **unused,
):
    """A single-file checkpoint, a LoRA on a base, or an HTTP endpoint as a Generator."""
    if is_url(model) or kind == "http":
        from auditor.remote import HttpGenerator, HttpOptions

        if not is_url(model):
            raise BadInputError(f"{model}: kind http expects an http:// or https:// URL")
        if http is not None and not isinstance(http, HttpOptions):
            http = HttpOptions.model_validate(http)
        return HttpGenerator(model, http, name=name)
    path = Path(model)
    kind = kind or detect_kind(path)
    if backend != "torch":
        raise BadInputError(
            f"{path}: single-file checkpoints and LoRA files load with the torch backend only (got {backend!r}); "
            "export a diffusers folder to use an engine backend"
        )
    if kind == "lora_file":
        return load_lora(path, base, device=device, dtype=dtype, batch_size=batch_size)
    if kind == "safetensors_file":
        return load_single_file(path, config, device=device, dtype=dtype, batch_size=batch_size)
    raise BadInputError(f"{path}: kind {kind!r} is not a single-file suspect")


class LoadedPipelineGenerator(TorchGenerator):
    """TorchGenerator around a pipeline assembled here (single file, LoRA) instead of from a folder."""

    def __init__(self, pipe, *, path: Path, device: str, dtype: str, batch_size: int, note: str) -> None:
        self.path = path
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.note = note
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self._base_scheduler_config = dict(pipe.scheduler.config)

    def describe(self) -> BackendInfo:
        return super().describe().model_copy(update={"note": self.note})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split())[:300] if text else type(exc).__name__


def _check_dtype(dtype: str) -> None:
    if dtype not in ("float32", "float16", "bfloat16"):
        raise BadInputError(f"dtype {dtype!r}: expected float32, float16 or bfloat16")


# ---------------------------------------------------------------- single-file checkpoints


def load_single_file(
    path: Path, config: str | os.PathLike[str] | None, *, device: str, dtype: str, batch_size: int
) -> LoadedPipelineGenerator:
    import torch
    from diffusers import StableDiffusionPipeline

    from auditor.generation import quiet_hf_libraries

    if config is None:
        raise BadInputError(
            f"{path}: a single-file checkpoint needs `config`, a local diffusers folder of the same architecture "
            "(offline, diffusers' from_single_file cannot fetch the component configs it needs)"
        )
    config_dir = Path(config)
    try:
        validate_pipeline_folder(config_dir)
    except BadInputError as exc:
        raise BadInputError(f"config for {path.name}: {exc}") from None
    if path.suffix.lower() in PICKLE_SUFFIXES:
        check_pickle_weights_only(path)
    elif path.suffix.lower() == SAFETENSORS_SUFFIX:
        read_safetensors_header(path)  # a truncated or malformed file fails here, with its name
    _check_dtype(dtype)
    quiet_hf_libraries()
    device = resolve_device(device)
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            dtype=getattr(torch, dtype),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except Exception as exc:  # diffusers raises many types while converting a checkpoint
        raise BadInputError(
            f"{path.name}: could not load it as a single-file Stable Diffusion checkpoint with the configs of "
            f"{config_dir.name} ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    return LoadedPipelineGenerator(
        pipe,
        path=path,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        note=f"single-file checkpoint {path.name} with the component configs of {config_dir.name}",
    )


# ---------------------------------------------------------------- LoRA


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
) -> LoadedPipelineGenerator:
    from auditor.identity import hash_model

    if base is None:
        raise BadInputError(
            f"{path}: a LoRA file needs `base`, the diffusers folder of the model it was trained on"
        )
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise BadInputError(f"{path}: expected a LoRA in .safetensors format")
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
            f"LoRA {path.name} does not fit base {base_path.name}: {type(exc).__name__}: {_first_line(exc)}"
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
    return LoadedPipelineGenerator(
        pipe,
        path=path,
        device=base_gen.device,
        dtype=dtype,
        batch_size=batch_size,
        note=f"LoRA {path.name} ({attached} layers) on base {base_path.name} (digest {base_digest})",
    )
