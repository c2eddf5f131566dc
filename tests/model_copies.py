"""Copies of a saved pipeline that hold the same weights in other bytes, as a re-save would make.

Each way changes the folder's byte digest and leaves its weights alone, so the content digest
(auditor.identity) must not move: another library release writing its version into every
config, an added README, rewritten safetensors metadata, a pickle instead of safetensors,
and the weights split into shards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

RESAVES = ("versions", "readme", "metadata", "pickle", "sharded")
_UNET = "unet/diffusion_pytorch_model.safetensors"


def rewrite_library_versions(folder: Path) -> int:
    """Make every saved config claim other library versions, as another release would write;
    return how many version fields were rewritten."""
    rewritten = 0
    for config in sorted(folder.rglob("*.json")):
        document = json.loads(config.read_text())
        if not isinstance(document, dict):
            continue
        for field in ("transformers_version", "_diffusers_version"):
            if field in document:
                document[field] = "99.0.0"
                rewritten += 1
        config.write_text(json.dumps(document, indent=2))
    return rewritten


def resaved_copy(source: Path, dest: Path, how: str) -> Path:
    """`source` copied to `dest` and re-saved `how` (one of RESAVES); returns `dest`."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    weights = dest / _UNET
    if how == "versions":
        rewrite_library_versions(dest)
    elif how == "readme":
        (dest / "README.md").write_text("# a fine-tune of our own, honest\n")
    elif how == "metadata":
        save_file(load_file(weights), weights, metadata={"format": "pt", "trained_by": "someone else"})
    elif how == "pickle":
        tensors = load_file(weights)
        weights.unlink()
        torch.save(tensors, weights.with_suffix(".bin"))
    elif how == "sharded":
        tensors = load_file(weights)
        weights.unlink()
        names = sorted(tensors)
        for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), start=1):
            shard = weights.with_name(f"diffusion_pytorch_model-{i:05d}-of-00002.safetensors")
            save_file({name: tensors[name] for name in part}, shard)
    else:
        raise ValueError(f"re-save {how!r}: expected one of {RESAVES}")
    return dest
