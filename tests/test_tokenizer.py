from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from auditor.zoo.tokenizer import (
    VOCAB_SIZE,
    build_clip_tokenizer,
    bytes_to_unicode,
    write_clip_tokenizer_files,
)

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clip_tokenizer")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> CLIPTokenizer:
    return build_clip_tokenizer(tokenizer_dir)


def test_bytes_to_unicode_is_a_bijection_on_bytes() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256


def test_written_files(tmp_path: Path) -> None:
    folder = write_clip_tokenizer_files(tmp_path)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == VOCAB_SIZE == 49408
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert merges[1] == "i n" and len(merges) - 1 == 49152 - 256 - 2
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_known_ids_and_vocab_size(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 49407
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407
    # Case and whitespace are normalised like OpenAI's tokenizer.
    assert tokenizer("A  Photo of a CAT").input_ids == CAT_IDS


def test_saved_folder_reloads_and_pads(tokenizer: CLIPTokenizer, tokenizer_dir: Path) -> None:
    assert (tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file()
    assert not [p for p in tokenizer_dir.iterdir() if p.name.startswith(".")]
    reloaded = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=16)
    assert len(reloaded) == 49408
    assert reloaded.pad_token_id == 49407
    batch = reloaded(
        ["a photo of a cat", "a large red circle on a blue background"],
        padding="max_length",
        max_length=16,
        truncation=True,
    )
    assert batch.input_ids[0] == CAT_IDS + [49407] * (16 - len(CAT_IDS))
    assert all(len(ids) == 16 for ids in batch.input_ids)
    assert batch.attention_mask[0] == [1] * len(CAT_IDS) + [0] * (16 - len(CAT_IDS))
    assert batch.input_ids[1][0] == 49406 and batch.input_ids[1][-1] == 49407
    assert reloaded.decode(batch.input_ids[0], skip_special_tokens=True) == "a photo of a cat"
