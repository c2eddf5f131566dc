from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from auditor.errors import BadInputError
from auditor.identity import ModelIdentity, hash_model

FILES = {
    "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
    "unet/config.json": b'{"sample_size": 8}',
    "unet/diffusion_pytorch_model.safetensors": b"\x00weights\x01" * 100,
    "vae/diffusion_pytorch_model.safetensors": b"vae-bytes",
}


def _make_folder(root: Path, order: list[str] | None = None) -> Path:
    for relative in order or list(FILES):
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(FILES[relative])
    return root


def test_folder_digest_is_independent_of_creation_order_and_location(tmp_path: Path) -> None:
    first = hash_model(_make_folder(tmp_path / "a"))
    second = hash_model(_make_folder(tmp_path / "b", order=list(reversed(FILES))))
    assert first.digest == second.digest
    assert first.kind == "diffusers_folder"
    assert [entry.path for entry in first.files] == sorted(FILES)
    assert first.name == "a"
    assert hash_model(tmp_path / "a").digest == first.digest


def test_hidden_and_pycache_entries_are_skipped(tmp_path: Path) -> None:
    clean = hash_model(_make_folder(tmp_path / "clean"))
    noisy = _make_folder(tmp_path / "noisy")
    (noisy / ".cache").mkdir()
    (noisy / ".cache" / "lock").write_bytes(b"x")
    (noisy / ".DS_Store").write_bytes(b"y")
    (noisy / "unet" / "__pycache__").mkdir()
    (noisy / "unet" / "__pycache__" / "m.pyc").write_bytes(b"z")
    assert hash_model(noisy).digest == clean.digest


def test_one_changed_byte_changes_digest(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "m")
    before = hash_model(folder)
    target = folder / "unet/diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[500] ^= 0x01
    target.write_bytes(bytes(data))
    after = hash_model(folder)
    assert after.digest != before.digest


def test_renamed_file_changes_digest(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "m")
    before = hash_model(folder)
    (folder / "vae/diffusion_pytorch_model.safetensors").rename(folder / "vae/renamed.safetensors")
    assert hash_model(folder).digest != before.digest


def test_added_file_changes_digest(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "m")
    before = hash_model(folder)
    (folder / "extra.txt").write_bytes(b"")
    assert hash_model(folder).digest != before.digest


def test_symlink_inside_root_is_followed(tmp_path: Path) -> None:
    plain = hash_model(_make_folder(tmp_path / "plain"))
    linked = _make_folder(tmp_path / "linked")
    (linked / "blobs").mkdir()
    blob = linked / "blobs" / "vae"
    vae = linked / "vae/diffusion_pytorch_model.safetensors"
    vae.rename(blob)
    vae.symlink_to(os.path.relpath(blob, vae.parent))
    identity = hash_model(linked)
    vae_entry = next(
        entry for entry in identity.files if entry.path == "vae/diffusion_pytorch_model.safetensors"
    )
    assert vae_entry == next(entry for entry in plain.files if entry.path == vae_entry.path)


def test_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not part of the model")
    folder = _make_folder(tmp_path / "m")
    (folder / "unet" / "leak.bin").symlink_to(secret)
    with pytest.raises(BadInputError, match="leak.bin"):
        hash_model(folder)


def test_symlinked_directory_escaping_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w").write_bytes(b"w")
    folder = _make_folder(tmp_path / "m")
    (folder / "text_encoder").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadInputError, match="text_encoder"):
        hash_model(folder)


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "m")
    (folder / "unet" / "up").symlink_to("..", target_is_directory=True)
    with pytest.raises(BadInputError, match="loop"):
        hash_model(folder)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        hash_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no files"):
        hash_model(tmp_path / "empty")


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="kind"):
        hash_model(_make_folder(tmp_path / "m"), kind="onnx")


def _safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def test_safetensors_file_and_lora_detection(tmp_path: Path) -> None:
    full = hash_model(_safetensors(tmp_path / "model.safetensors", {"w": torch.arange(16.0)}))
    assert full.kind == "safetensors_file"
    assert full.name == "model.safetensors"
    assert len(full.files) == 1 and full.files[0].path == "model.safetensors"
    lora = hash_model(
        _safetensors(tmp_path / "adapter.safetensors", {"unet.to_q.lora_A.weight": torch.ones(2, 4)})
    )
    assert lora.kind == "lora_file"
    assert hash_model(tmp_path / "model.safetensors", kind="lora_file").kind == "lora_file"


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    path = _safetensors(tmp_path / "model.safetensors", {"w": torch.arange(64.0)})
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(BadInputError, match="model.safetensors"):
        hash_model(path)
    path.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(BadInputError, match="malformed"):
        hash_model(path)
    path.write_bytes(data[:5])
    with pytest.raises(BadInputError, match="8-byte"):
        hash_model(path)


def test_safetensors_with_bad_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    header = b"not json"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(BadInputError, match="expected JSON"):
        hash_model(path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", 10**12) + header + b"\0" * 4)
    with pytest.raises(BadInputError, match="header length"):
        hash_model(path)


class _Payload:
    """A pickle that writes a marker file when loaded: the classic checkpoint exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    # Prove the payload is live: an unrestricted load does write its marker.
    live_marker = tmp_path / "live-marker"
    torch.save({"w": _Payload(live_marker)}, tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert live_marker.exists()

    marker = tmp_path / "marker"
    checkpoint = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, checkpoint)
    with pytest.raises(BadInputError, match="evil.ckpt.*GLOBAL exec"):
        hash_model(checkpoint)
    assert not marker.exists()


def test_weights_only_safe_checkpoint_is_accepted(tmp_path: Path) -> None:
    checkpoint = tmp_path / "plain.pt"
    torch.save({"w": torch.arange(4.0), "b": torch.zeros(2)}, checkpoint)
    identity = hash_model(checkpoint)
    assert identity.kind == "file"
    assert identity.name == "plain.pt"


def test_garbage_pickle_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "broken.bin"
    checkpoint.write_bytes(b"this is not a checkpoint")
    with pytest.raises(BadInputError, match="broken.bin"):
        hash_model(checkpoint)


def test_identity_round_trips_and_forbids_absolute_names(tmp_path: Path) -> None:
    identity = hash_model(_make_folder(tmp_path / "m"))
    assert ModelIdentity.model_validate_json(identity.model_dump_json()) == identity
    data = identity.model_dump()
    data["name"] = "/home/someone/m"
    with pytest.raises(ValueError):
        ModelIdentity.model_validate(data)


# ---------------------------------------------------------------- pickles by content, not by name


def _no_unsafe_advice(text: str) -> None:
    assert "weights_only=False" not in text and "set to `False`" not in text and "\n" not in text


@pytest.mark.parametrize("name", ["evil.weights", "evil.model", "evil"])
def test_a_pickle_under_any_name_is_checked(tmp_path: Path, name: str) -> None:
    from auditor.backends import SuspectSpec, identify

    marker = tmp_path / "marker"
    checkpoint = tmp_path / name
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, checkpoint)
    for kind in ("safetensors_file", "auto"):
        with pytest.raises(BadInputError) as info:
            identify(SuspectSpec(model=str(checkpoint), kind=kind))
        _no_unsafe_advice(str(info.value))
    with pytest.raises(BadInputError, match="GLOBAL exec") as info:
        hash_model(checkpoint)
    _no_unsafe_advice(str(info.value))
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_refused_as_a_pickle(tmp_path: Path) -> None:
    checkpoint = tmp_path / "innocent.safetensors"
    torch.save({"w": torch.zeros(2)}, checkpoint)  # even a harmless one: the name lies
    for kind in (None, "lora_file"):
        with pytest.raises(BadInputError, match="its content is a pickle"):
            hash_model(checkpoint, kind)
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)  # a bare pickle
    with pytest.raises(BadInputError, match="its content is a pickle"):
        hash_model(legacy)


def test_sniff_weights_reads_content_only(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from auditor.weights import sniff_weights

    torch.save({"w": torch.zeros(2)}, tmp_path / "a.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "b.txt", _use_new_zipfile_serialization=False)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "c.ckpt"))
    (tmp_path / "d.bin").write_bytes(b"")
    kinds = [sniff_weights(tmp_path / n) for n in ("a.safetensors", "b.txt", "c.ckpt", "d.bin")]
    assert kinds == ["zip", "pickle", "safetensors", "other"]


def test_the_refusal_keeps_torchs_reason_and_drops_its_advice() -> None:
    from auditor.weights import unpickling_reason

    message = (
        "Weights only load failed. This file can still be loaded, to do so you have two options, "
        "\x1b[1mdo those steps only if you trust the source of the checkpoint.\x1b[0m\n"
        "\t(1) Re-running `torch.load` with `weights_only` set to `False` will likely succeed.\n"
        "\t(2) Alternatively, to load with `weights_only=True` please check the steps below.\n"
        "\tWeightsUnpickler error: Unsupported global: GLOBAL exec was not an allowed global by default. "
        "Please use `torch.serialization.add_safe_globals([exec])`.\n\n"
        "Check the documentation of torch.load to learn more about types accepted by default with weights_only"
    )
    reason = unpickling_reason(RuntimeError(message))
    assert reason == "Unsupported global: GLOBAL exec was not an allowed global by default"
    assert unpickling_reason(RuntimeError("Weights only load failed. weights_only")) == "RuntimeError"


# ---------------------------------------------------------------- content digest


@pytest.mark.parametrize("how", ["versions", "readme", "metadata", "pickle", "sharded"])
def test_a_resaved_model_keeps_its_content_digest(how: str, tiny_pipeline: Path, tmp_path: Path) -> None:
    from model_copies import resaved_copy

    original = hash_model(tiny_pipeline)
    copy = hash_model(resaved_copy(tiny_pipeline, tmp_path / "copy", how))
    assert copy.digest != original.digest  # other bytes
    assert original.content_digest is not None
    assert copy.content_digest == original.content_digest  # the same weights


def test_one_changed_weight_changes_the_content_digest(tiny_pipeline: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(tiny_pipeline, copy)
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, weights)
    assert hash_model(copy).content_digest != hash_model(tiny_pipeline).content_digest


def test_content_digest_sees_names_dtypes_shapes_and_components(tmp_path: Path) -> None:
    def digest(tensors: dict[str, torch.Tensor], where: str = "unet") -> str | None:
        folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        (folder / where).mkdir(parents=True)
        save_file(tensors, str(folder / where / "diffusion_pytorch_model.safetensors"))
        return hash_model(folder).content_digest

    w = torch.arange(6, dtype=torch.float32)
    first = digest({"w": w})
    assert first == digest({"w": w.clone()})
    assert len({first, digest({"v": w}), digest({"w": w.double()}), digest({"w": w.reshape(2, 3)}),
                digest({"w": w}, where="vae")}) == 5  # fmt: skip


def test_a_variant_beside_the_weights_is_other_tensors_and_a_repeated_tensor_is_refused(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "m"
    (folder / "unet").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    save_file({"w": torch.zeros(2).half()}, str(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    assert hash_model(folder).content_digest is not None
    save_file(
        {"w": torch.ones(2)}, str(folder / "unet" / "diffusion_pytorch_model-00002-of-00002.safetensors")
    )
    with pytest.raises(BadInputError, match="'w' is also in another weights file of unet"):
        hash_model(folder)


def test_a_model_without_weights_has_no_content_digest(tmp_path: Path) -> None:
    assert hash_model(_make_folder(tmp_path / "m")).content_digest is None  # no real safetensors there


def test_a_component_in_both_formats_counts_its_safetensors_and_top_level_files_not_at_all(
    tiny_pipeline: Path, tmp_path: Path
) -> None:
    """Older hub folders ship .bin beside .safetensors, and some a single-file checkpoint at the top:
    a loader takes the safetensors and ignores the top level, and so does the content digest."""
    import shutil

    from safetensors.torch import load_file

    copy = tmp_path / "both"
    shutil.copytree(tiny_pipeline, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save({k: v + 1 for k, v in load_file(weights).items()}, weights.with_suffix(".bin"))  # stale
    save_file({"w": torch.zeros(3)}, str(copy / "v1-5-pruned.safetensors"))
    save_file({"w": torch.ones(3)}, str(copy / "v1-5-pruned-emaonly.safetensors"))
    assert hash_model(copy).content_digest == hash_model(tiny_pipeline).content_digest


def test_a_tensor_twice_counts_once_and_twice_with_other_content_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "unet").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "unet" / "a-00001-of-00002.safetensors"))
    save_file({"w": torch.zeros(2)}, str(folder / "unet" / "a-00002-of-00002.safetensors"))
    single = tmp_path / "s"
    (single / "unet").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(single / "unet" / "a.safetensors"))
    assert hash_model(folder).content_digest == hash_model(single).content_digest
    save_file({"w": torch.ones(2)}, str(folder / "unet" / "a-00002-of-00002.safetensors"))
    with pytest.raises(BadInputError, match="with other content"):
        hash_model(folder)


def test_overlapping_tensor_ranges_are_refused(tmp_path: Path) -> None:
    """Ten thousand tensors over one range would have the content digest read it ten thousand times."""
    data = b"\0" * 64
    header = {f"t{i}": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]} for i in range(10_000)}
    raw = json.dumps(header).encode()
    file = tmp_path / "w.safetensors"
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    with pytest.raises(BadInputError, match="overlap or leave a gap"):
        hash_model(file)


def test_content_digest_from_one_read_matches_each_tensor_read_alone(tmp_path: Path) -> None:
    """The digester splits one streaming read among tensors: a header longer than a read chunk
    (30,000 tensors) and tensors across chunk borders must give what each tensor alone gives."""
    from safetensors.torch import load_file

    from auditor.fileio import canonical_json, sha256_bytes
    from auditor.weights import CONTENT_SCHEME

    tensors = {f"t{i:05d}": torch.full((3,), float(i)) for i in range(30_000)}
    tensors["big"] = torch.arange(900_000, dtype=torch.float32)  # 3.6 MB: crosses 1 MB reads
    tensors["empty"] = torch.zeros(0)
    (tmp_path / "m" / "unet").mkdir(parents=True)
    file = tmp_path / "m" / "unet" / "w.safetensors"
    save_file(tensors, str(file))
    assert struct.unpack("<Q", file.read_bytes()[:8])[0] > 1 << 20
    loaded = load_file(file)
    dtypes = {torch.float32: "F32"}
    rows = sorted(
        ["unet", "", name, dtypes[t.dtype], list(t.shape), sha256_bytes(t.numpy().tobytes())]
        for name, t in loaded.items()
    )
    expected = sha256_bytes(canonical_json({"scheme": CONTENT_SCHEME, "tensors": rows}))
    assert hash_model(tmp_path / "m").content_digest == expected
