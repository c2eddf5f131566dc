"""fp16 parity the way an audit uses the graphs: the whole denoising loop on real prompts.

Per-component checks on seeded random inputs never reach the activation ranges a real
prompt drives through twenty guided steps, which is where fp16 overflows (a NaN in
step 14 of one prompt). So `--precision fp16` also runs the bundle's own tokenizer,
scheduler and graphs through `engines.loop` on a few prompts, fp32 graphs and fp16
graphs alike, on ONNX Runtime (the CUDA provider when it works here, else the CPU), and
holds the fp16 images to a PSNR floor against the fp32 images. A NaN or inf anywhere
fails it outright (the loop's finiteness guard). The result is `fp16_loop_parity` in the
manifest; a miss marks the bundle failed, like a component off its tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.backends.engines.bundle import Bundle, LoopParityRecord

# A few prompts of the kinds Stable Diffusion is prompted with; `--parity-prompts FILE` gives the
# model owner's own (the key prompts are the best choice: they are what the audit will regenerate).
DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red circle on a blue background",
    "an oil painting of an old fisherman, detailed face",
    "a city street at night in the rain, neon signs",
)
DEFAULT_STEPS = 8
DEFAULT_GUIDANCE = 7.5
MIN_PSNR_DB = 25.0  # healthy fp16 runs sit far above (measured: docs/export.md); a blown one far below


def read_prompts(path: str) -> tuple[str, ...]:
    from auditor.documents import read_bytes
    from auditor.errors import BadInputError

    text = read_bytes(path, "parity prompts file").decode("utf-8", errors="replace")
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not prompts:
        raise BadInputError(f"--parity-prompts {path}: expected one prompt per line, found none")
    return prompts


def fp16_loop_parity(
    bundle: Bundle,
    prompts: Sequence[str] = DEFAULT_PROMPTS[:2],
    *,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    min_psnr_db: float = MIN_PSNR_DB,
    device: str = "auto",
) -> LoopParityRecord:
    """Generate `prompts` through the fp32 and the fp16 graphs with the same seeds and compare."""
    import numpy as np

    from auditor.backends.engines.loop import NonFiniteOutputError
    from auditor.backends.engines.ort import OnnxGenerator
    from auditor.config import GenerationSettings
    from auditor.images import psnr

    prompts = tuple(prompts)
    seeds = tuple(range(len(prompts)))
    settings = GenerationSettings(steps=steps, guidance_scale=guidance_scale)
    batch = max(1, min(len(prompts), min(bundle.manifest.shapes.batch_sizes)))
    fp32 = OnnxGenerator(bundle, device=device, precision="fp32", validate="never", batch_size=batch)
    runtime = f"onnxruntime {fp32.providers[0]}"
    common = dict(
        prompts=prompts,
        seeds=seeds,
        steps=steps,
        guidance_scale=guidance_scale,
        runtime=runtime,
        min_psnr_db=min_psnr_db,
    )
    reference = fp32.generate(prompts, seeds, settings)
    fp16 = OnnxGenerator(bundle, device=device, precision="fp16", validate="never", batch_size=batch)
    try:
        images = fp16.generate(prompts, seeds, settings)
    except NonFiniteOutputError as exc:
        return LoopParityRecord(
            **common, finite=False, psnr_db=None, max_pixel_diff=None, passed=False, detail=str(exc)
        )
    value = min(psnr(images, reference), 100.0)  # identical images: inf, which JSON cannot hold
    diff = int(np.abs(images.astype(int) - reference.astype(int)).max())
    return LoopParityRecord(
        **common, finite=True, psnr_db=value, max_pixel_diff=diff, passed=bool(value >= min_psnr_db)
    )
