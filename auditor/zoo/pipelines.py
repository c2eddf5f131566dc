"""Zoo components saved as real diffusers pipeline folders: StableDiffusionPipeline and StableDiffusionXLPipeline.

The folders are what any diffusers tooling writes (model_index.json, one subfolder per
component, safetensors), so the loader, scheduler and generation code that serve a full
SD 1.5 or SDXL checkpoint serve the zoo unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from auditor.fileio import atomic_write_text
from auditor.identity import forget_load_paths
from auditor.zoo.models import make_inference_scheduler

SDXL_TOKENIZER_2_PAD = "!"  # SDXL's second tokenizer pads with "!" (id 0), not with <|endoftext|>


def _keep_slow_tokenizer_files(tokenizer, target: Path) -> None:
    # transformers 5 saves only tokenizer.json; keep the slow-tokenizer files too, so
    # older transformers (and other CLIP tooling) can load the folder.
    source = Path(tokenizer.name_or_path)
    for name in ("vocab.json", "merges.txt"):
        if (source / name).is_file() and not (target / name).exists():
            shutil.copyfile(source / name, target / name)


# Loading options transformers copies from `from_pretrained`'s arguments (and HF_HUB_OFFLINE)
# into tokenizer_config.json. They say how a folder was read, not what the tokenizer is, and
# left in they make a model's bytes, hence its digest in every report, depend on whether
# HF_HUB_OFFLINE was set in the process that built it.
_LOAD_OPTIONS = ("local_files_only",)


def _finish_tokenizer_folder(tokenizer, target: Path) -> None:
    _keep_slow_tokenizer_files(tokenizer, target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if any(name in config for name in _LOAD_OPTIONS):
        kept = {name: value for name, value in config.items() if name not in _LOAD_OPTIONS}
        atomic_write_text(config_path, json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


def save_pipeline(directory: Path, unet, vae, text_encoder, tokenizer) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    forget_load_paths(directory)
    _finish_tokenizer_folder(tokenizer, Path(directory) / "tokenizer")


def make_tokenizer_2(tokenizer):
    """SDXL's second tokenizer: the same CLIP BPE, padded with "!" like SDXL's tokenizer_2."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        tokenizer.name_or_path, model_max_length=tokenizer.model_max_length, pad_token=SDXL_TOKENIZER_2_PAD
    )


def save_xl_pipeline(directory: Path, unet, vae, text_encoder, text_encoder_2, tokenizer) -> None:
    """A StableDiffusionXLPipeline folder (no refiner, no watermarker), the zoo's DDIM scheduler."""
    from diffusers import StableDiffusionXLPipeline

    tokenizer_2 = make_tokenizer_2(tokenizer)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=make_inference_scheduler(),
        add_watermarker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    forget_load_paths(directory)
    for name in ("tokenizer", "tokenizer_2"):
        _finish_tokenizer_folder(tokenizer, Path(directory) / name)


class ZooParts:
    """What differs between the zoo's two families: the frozen text side, a new UNet, how a pipeline is saved.

    "sd": one CLIP text encoder, StableDiffusionPipeline folders. "sdxl": two text encoders (the
    second with a projection, seeded apart), UNets with SDXL's added conditioning, whose training
    gets pooled embeddings and size-conditioning time_ids, StableDiffusionXLPipeline folders.
    Both share the VAE, the tokenizer's BPE and the schedulers.
    """

    def __init__(self, family: str, seed: int, workdir: Path) -> None:
        from auditor.zoo.models import TOKENIZER_MAX_LENGTH, make_text_encoder, make_text_encoder_2
        from auditor.zoo.tokenizer import build_clip_tokenizer

        if family not in ("sd", "sdxl"):
            raise ValueError(f"zoo family {family!r}: expected sd or sdxl")
        self.family = family
        self.tokenizer = build_clip_tokenizer(workdir / "tokenizer", model_max_length=TOKENIZER_MAX_LENGTH)
        self.text_encoder = make_text_encoder(seed)
        self.xl = family == "sdxl"
        if self.xl:
            self.tokenizer_2 = make_tokenizer_2(self.tokenizer)
            self.text_encoder_2 = make_text_encoder_2(seed + 1000)

    def make_unet(self, seed: int, resolution: int, channels: tuple[int, int], attention: str = "low"):
        from auditor.zoo.models import make_unet, make_xl_unet

        return (make_xl_unet if self.xl else make_unet)(seed, resolution, channels, attention)

    def encode(self, captions: list[str]) -> tuple[dict, dict | None]:
        """(caption -> text states, caption -> pooled embedding or None), as the pipeline computes them."""
        from auditor.finetune import encode_captions, encode_xl_captions

        if self.xl:
            return encode_xl_captions(
                [self.tokenizer, self.tokenizer_2], [self.text_encoder, self.text_encoder_2], captions
            )
        return encode_captions(self.tokenizer, self.text_encoder, captions), None

    def time_ids(self, resolution: int):
        from auditor.finetune import xl_time_ids

        return xl_time_ids(resolution, resolution) if self.xl else None

    def save(self, directory: Path, unet, vae) -> None:
        if self.xl:
            save_xl_pipeline(directory, unet, vae, self.text_encoder, self.text_encoder_2, self.tokenizer)
        else:
            save_pipeline(directory, unet, vae, self.text_encoder, self.tokenizer)
