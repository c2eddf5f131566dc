"""What a weights file holds: its format, its tensors, and a digest of the weights alone.

A model's *content digest* identifies it by its weights alone: every tensor's name
(qualified by the component folder and weight variant it lies in), dtype, shape and data,
and nothing else. It does not change when a model is re-saved: a new library version
writing its version into config.json, changed safetensors metadata, an added README,
sharding, or a pickle converted to safetensors. It is what says that a "reference" is the
base or the source re-saved (docs/method.md), and what a golden file can pin across
library releases. What it does not catch: a copy with its weights moved at all (noise
added, one step of training, another dtype). `auditor.identity` computes it in the same
read as the byte digest (`TensorDigests`).

Nothing here deserializes anything but pickles. Pickled weights are the exception that is
checked here: the auditor will have to load them, and unpickling runs arbitrary code,
so they are only accepted when torch's restricted `weights_only` unpickler can read
them. A pickle is recognized by its content (`sniff_weights`: the pickle protocol
opcode, or the zip archive torch.save writes), never by its suffix, so a pickle named
`.safetensors`, `.weights` or anything else is checked or refused all the same; and no
refusal repeats torch's advice to load the file with `weights_only=False`.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from auditor.documents import parse_json
from auditor.errors import BadInputError
from auditor.fileio import canonical_json, sha256_bytes

CONTENT_SCHEME = "t2i-auditor-model-content-v1"
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})
SAFETENSORS_SUFFIX = ".safetensors"

# The safetensors format itself caps the header at 100 MB; a larger length field is a
# corrupt or hostile file, and must not make us allocate gigabytes.
_SAFETENSORS_MAX_HEADER = 100_000_000


def is_skipped(name: str) -> bool:
    """Caches and bytecode are not part of a model; hidden names are tool state (.cache, .git)."""
    return name.startswith(".") or name == "__pycache__"


# ---------------------------------------------------------------- content digest

# safetensors dtype names, the vocabulary the content digest records for every format
_TORCH_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}  # fmt: skip
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")


def weights_slot(relative: str) -> tuple[str, str] | None:
    """(component folder, variant) of a weights file, or None for a file that holds no weights.

    `unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors` is component "unet",
    variant "fp16": shards of one variant pool their tensors, and an fp16 variant beside the
    fp32 weights is a second set of tensors, not a clash. The file's own name is left out,
    so a renamed or resharded file keeps the digest.
    """
    path = Path(relative)
    suffix = path.suffix.lower()
    if suffix != SAFETENSORS_SUFFIX and suffix not in PICKLE_SUFFIXES:
        return None
    stem = _SHARD.sub("", path.stem)
    variant = stem.partition(".")[2]
    return path.parent.as_posix() if str(path.parent) != "." else "", variant


# a weights file's tensors: name -> (dtype, shape, sha256 of its data)
Tensors = dict[str, tuple[str, list[int], str]]


def content_digest(files: list[tuple[str, Path, Tensors | None]]) -> str | None:
    """sha256 over the sorted (component, variant, tensor, dtype, shape, data sha256) rows of
    every weights file (safetensors: the rows `_file_entry` read beside the file's own digest,
    never deserialized; pickles through torch's weights_only unpickler, already required of
    them); None when there are none.

    Where a component holds the same weights as safetensors and as a pickle (older hub
    folders ship both), the safetensors are what a loader takes, and all that is counted. A
    tensor stored twice with the same content counts once; twice with other content is a
    folder no loader reads unambiguously, and is refused.
    """
    formats: dict[tuple[str, str], dict[str, list[tuple[Path, Tensors | None]]]] = {}
    for relative, file, tensors in files:
        slot = weights_slot(relative)
        kind = "safetensors" if tensors is not None else sniff_weights(file) if slot is not None else "other"
        if slot is not None and kind in ("safetensors", "pickle", "zip"):
            form = "safetensors" if kind == "safetensors" else "pickle"
            formats.setdefault(slot, {}).setdefault(form, []).append((file, tensors))
    rows: dict[tuple[str, str, str], tuple[str, list[int], str]] = {}
    for slot, by_format in formats.items():
        form = "safetensors" if "safetensors" in by_format else "pickle"
        for file, tensors in by_format[form]:
            for tensor, described in tensors.items() if tensors is not None else _pickled_tensors(file):
                row = (*slot, tensor)
                if rows.setdefault(row, described) != described:
                    raise BadInputError(
                        f"{file}: tensor {tensor!r} is also in another weights file of {slot[0] or 'the model'}"
                        f"{' (variant ' + slot[1] + ')' if slot[1] else ''} with other content; expected"
                        " each tensor once"
                    )
    if not rows:
        return None
    document = {
        "scheme": CONTENT_SCHEME,
        "tensors": [[*row, dtype, shape, data] for row, (dtype, shape, data) in sorted(rows.items())],
    }
    return sha256_bytes(canonical_json(document))


class TensorDigests:
    """Each tensor's sha256 of a safetensors file, fed the file's bytes in order by the read that
    hashes the whole file: the header is parsed from those very bytes, so the file's digest and
    its tensors' digests describe one and the same content."""

    def __init__(self, file: Path, size: int) -> None:
        self.file, self.size = file, size
        self.head: bytearray | None = bytearray()  # the bytes up to the end of the header
        self.header: dict[str, Any] = {}
        self.spans: list[tuple[int, int, str]] = []  # (begin, end, name) in the data section, end to end
        self.offset = 0  # how far into the data section the bytes fed so far reach
        self.next = 0
        self.current = hashlib.sha256()
        self.digests: dict[str, str] = {}

    def feed(self, chunk: bytes) -> None:
        if self.head is not None:
            self.head += chunk
            if len(self.head) < 8:
                return
            (header_len,) = struct.unpack("<Q", self.head[:8])
            _check_header_length(self.file, header_len, self.size)
            if len(self.head) < 8 + header_len:
                return
            raw, chunk = bytes(self.head[8 : 8 + header_len]), bytes(self.head[8 + header_len :])
            self.head = None
            self.header = _checked_header(self.file, raw, self.size - 8 - header_len)
            self.spans = sorted((*info["data_offsets"], name) for name, info in self.header.items())
        end = self.offset + len(chunk)
        while self.next < len(self.spans):
            begin, stop, name = self.spans[self.next]
            if stop > self.offset:
                self.current.update(
                    chunk[max(begin, self.offset) - self.offset : min(stop, end) - self.offset]
                )
            if stop > end:
                break
            self.digests[name] = self.current.hexdigest()
            self.current, self.next = hashlib.sha256(), self.next + 1
        self.offset = end

    def finish(self) -> Tensors:
        """name -> (dtype, shape, data sha256); the read must have reached every tensor's end."""
        if self.head is not None or len(self.digests) != len(self.spans):
            raise BadInputError(f"{self.file}: weights file changed or shrank while it was read")
        return {
            name: (info["dtype"], list(info["shape"]), self.digests[name])
            for name, info in self.header.items()
        }


def _pickled_tensors(file: Path) -> Iterator[tuple[str, tuple[str, list[int], str]]]:
    """The tensors of a checkpoint torch's weights_only unpickler reads, nested dicts flattened
    with dots (a checkpoint's "state_dict" wrapper included, as every loader unwraps it)."""
    import torch

    loaded = _load_weights_only(file)

    def flatten(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from flatten(value, f"{prefix}{key}." if prefix or key != "state_dict" else "")
        elif isinstance(node, torch.Tensor):
            yield prefix.rstrip("."), node

    for tensor, value in flatten(loaded, ""):
        dtype = _TORCH_DTYPES.get(str(value.dtype).removeprefix("torch."))
        if dtype is None:
            raise BadInputError(f"{file}: tensor {tensor!r} has dtype {value.dtype}, not a weights dtype")
        data = value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        yield tensor, (dtype, list(value.shape), sha256_bytes(data))


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """Parse and check a safetensors header; return its tensor entries (without __metadata__).

    The layout is an 8-byte little-endian header length, that many bytes of JSON, then
    the tensor data; every tensor's [begin, end) offsets must lie inside the data and
    together they must cover it exactly, which is how a truncated download shows.
    """
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise BadInputError(f"{file}: not a safetensors file (shorter than its 8-byte header length)")
        (header_len,) = struct.unpack("<Q", prefix)
        _check_header_length(file, header_len, size)
        raw = handle.read(header_len)
    return _checked_header(file, raw, size - 8 - header_len)


def _check_header_length(file: Path, header_len: int, size: int) -> None:
    if header_len == 0 or header_len > _SAFETENSORS_MAX_HEADER or 8 + header_len > size:
        raise BadInputError(
            f"{file}: malformed safetensors file (header length {header_len} does not fit a {size}-byte file)"
        )


def _checked_header(file: Path, raw: bytes, data_len: int) -> dict[str, Any]:
    """The header's tensor entries, every one checked against a `data_len`-byte data section."""
    try:
        header = parse_json(raw, "header")
    except BadInputError as exc:
        raise BadInputError(f"{file}: malformed safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise BadInputError(f"{file}: malformed safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    end_max = 0
    for tensor, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(value) is int for value in offsets)
            or not 0 <= offsets[0] <= offsets[1]
            or not isinstance(info.get("dtype"), str)
            or not isinstance(info.get("shape"), list)
            or len(info["shape"]) > 8
            or not all(type(dim) is int and dim >= 0 for dim in info["shape"])
        ):
            raise BadInputError(f"{file}: malformed safetensors file (bad entry for tensor {tensor!r})")
        if offsets[1] > data_len:
            raise BadInputError(
                f"{file}: truncated safetensors file (tensor {tensor!r} ends at byte {offsets[1]}"
                f" of a {data_len}-byte data section)"
            )
        end_max = max(end_max, offsets[1])
    # safetensors lays tensors end to end: overlapping ranges would make one byte count for
    # many tensors (and a reader of each tensor's range read the file many times over)
    position = 0
    for begin, end in sorted(tuple(info["data_offsets"]) for info in header.values()):
        if begin != position:
            raise BadInputError(
                f"{file}: malformed safetensors file (tensor data ranges overlap or leave a gap at byte {begin})"
            )
        position = end
    if end_max != data_len:
        raise BadInputError(
            f"{file}: malformed safetensors file (tensors cover {end_max} bytes of a {data_len}-byte data section)"
        )
    return header


def sniff_weights(file: Path) -> str:
    """What a weights file holds, from its first bytes: "pickle" (protocol 2 or later, which
    torch's legacy format and every pickle of this century use), "zip" (torch.save's archive,
    a pickle inside), "safetensors" or "other"."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise BadInputError(f"{file}: cannot read model file ({exc.strerror})") from None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "other"


def check_folder_pickles(folder: Path) -> int:
    """Check every pickled file in the component folders of a pipeline (unet/, text_encoder/, ...);
    return how many there were. Top-level files are not loaded by a pipeline and are left alone."""
    count = 0
    for component in sorted(folder.iterdir()):
        if not component.is_dir() or is_skipped(component.name):
            continue
        for path in sorted(component.rglob("*")):
            if path.is_file() and sniff_weights(path) in ("pickle", "zip"):
                check_pickle_weights_only(path)
                count += 1
    return count


def unpickling_reason(exc: BaseException) -> str:
    """Why torch's `weights_only` unpickler refused a file, without its advice to load it unsafely.

    torch's message is advice ("Re-running `torch.load` with `weights_only` set to `False`
    will likely succeed") around one line of reason ("Unsupported global: GLOBAL exec ...");
    only that line is kept, its first sentence.
    """
    inner = exc.__cause__ or exc.__context__ or exc
    for candidate in (inner, exc):
        for raw in re.sub(r"\x1b\[[0-9;]*m", "", str(candidate)).splitlines():
            line = " ".join(raw.split())
            if (
                not line
                or "weights_only" in line
                or line.startswith(("Weights only load failed", "Check the"))
            ):
                continue
            line = line.removeprefix("WeightsUnpickler error: ")
            return line.split(". ")[0].rstrip(".")[:160]
    return type(inner).__name__


def check_pickle_weights_only(file: Path) -> None:
    """Refuse a pickled checkpoint unless torch's `weights_only` unpickler accepts it.

    That unpickler only rebuilds tensors and plain containers, so a checkpoint whose
    pickle would call anything else (the classic `__reduce__` payload) is rejected
    without running it. torch is imported here only, because hashing needs it for
    nothing else.
    """
    _load_weights_only(file)


def _load_weights_only(file: Path) -> Any:
    import torch  # heavy import, only needed for pickled checkpoints

    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except Exception as exc:  # corrupt archives and refused globals raise many types
        # torch wraps the unpickler's reason in advice on how to load the file unsafely;
        # only the reason itself (e.g. "Unsupported global: GLOBAL exec ...") is kept.
        raise BadInputError(
            f"{file}: pickled checkpoint refused by torch.load(weights_only=True): {unpickling_reason(exc)};"
            " a pickle can run arbitrary code when loaded, convert it to .safetensors where it is trusted"
        ) from None
