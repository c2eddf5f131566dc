"""OpenAI CLIP's tokenizer built from a vendored BPE file, with no Hugging Face Hub access.

Stable Diffusion 1.x conditions on CLIP ViT-L/14 token ids. Auditing must run on air-gapped
hosts, so the tokenizer is rebuilt from `bpe_simple_vocab_16e6.txt.gz` (shipped with open_clip,
MIT licence in `assets/LICENSE.open_clip`) using exactly the rules of OpenAI's
`simple_tokenizer.py`, which yields the same 49,408 ids the published checkpoints were trained on.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.errors import BadInputError
from auditor.fileio import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BPE_ASSET = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI keeps only the first 49152 - 256 - 2 merges of the 262k in the file, so that
# 256 byte tokens + 256 byte</w> tokens + merges + 2 specials = 49,408 ids.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# Stable Diffusion 1.x pads prompts with the end-of-text token (id 49407), not a separate pad id.
PAD_TOKEN = EOS_TOKEN
_MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable character table (order matters: it fixes ids 0..255)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _read_bpe_lines() -> list[str]:
    data = resources.files("auditor.zoo").joinpath("assets", BPE_ASSET).read_bytes()
    try:
        return gzip.decompress(data).decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"auditor/zoo/assets/{BPE_ASSET}: not a gzip UTF-8 BPE file ({exc})") from exc


def clip_merges_and_vocab() -> tuple[list[str], dict[str, int]]:
    """The merges (as 'a b' lines) and token -> id map, exactly as simple_tokenizer.py builds them."""
    lines = _read_bpe_lines()
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES or any(len(m.split()) != 2 for m in merges):
        raise BadInputError(
            f"auditor/zoo/assets/{BPE_ASSET}: expected {N_MERGES} 'a b' merge lines after the header"
        )
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens.extend("".join(m.split()) for m in merges)
    tokens.extend([BOS_TOKEN, EOS_TOKEN])
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise BadInputError(
            f"auditor/zoo/assets/{BPE_ASSET}: built {len(vocab)} distinct tokens, expected {VOCAB_SIZE}"
        )
    return merges, vocab


def write_clip_tokenizer_files(directory: str | os.PathLike[str]) -> Path:
    """Write `vocab.json` and `merges.txt` (the Hugging Face layout) into `directory`."""
    target = Path(directory)
    merges, vocab = clip_merges_and_vocab()
    atomic_write_text(target / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(target / "merges.txt", "\n".join([_MERGES_HEADER, *merges]) + "\n")
    return target


def build_clip_tokenizer(directory: str | os.PathLike[str], model_max_length: int = 77) -> CLIPTokenizer:
    """Build the tokenizer and leave `directory` as a folder `CLIPTokenizer.from_pretrained` loads.

    `CLIPTokenizer(vocab_file=..., merges_file=...)` is silently ignored by transformers 5 (it
    builds a 3-token vocabulary), so the only reliable constructor is `from_pretrained(folder)`.
    """
    from transformers import CLIPTokenizer

    target = write_clip_tokenizer_files(directory)
    tokenizer = CLIPTokenizer.from_pretrained(
        str(target),
        model_max_length=model_max_length,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )
    if len(tokenizer) != VOCAB_SIZE or tokenizer.pad_token_id != VOCAB_SIZE - 1:
        raise BadInputError(
            f"{target}: built a CLIP tokenizer with {len(tokenizer)} tokens and pad id "
            f"{tokenizer.pad_token_id}; expected {VOCAB_SIZE} and {VOCAB_SIZE - 1}"
        )
    # save_pretrained writes files in place; stage it and move each file in atomically so a
    # crash never leaves a half-written tokenizer.json next to good vocab/merges files.
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=target))
    try:
        tokenizer.save_pretrained(str(staging))
        for path in sorted(staging.iterdir()):
            if path.is_file():
                atomic_write_bytes(target / path.name, path.read_bytes())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer
