"""A procedural world of captioned images for training tiny text-to-image models on CPU.

Each image is one shape on a plain background, described by a caption such as
"a large red circle on a blue background". The caption fixes four attributes; position,
exact size, rotation and a small colour jitter are drawn at random per image and are *not*
in the caption. That split is the point: a model that has only learnt the caption's meaning
produces fresh layouts, so a model that reproduces one specific draw has memorised that
training image, which is exactly the signal training-data attribution looks for.

Images are rendered at 4x and box-averaged down so edges are anti-aliased the same way at
every resolution, in pure numpy so the output does not depend on a drawing library version.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from auditor.errors import BadInputError
from auditor.fileio import atomic_write_bytes, atomic_write_text, canonical_json, sha256_bytes

CAPTION_TEMPLATE = "a {size} {colour} {shape} on a {background} background"
SIZES: tuple[str, ...] = ("small", "large")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
BACKGROUNDS: tuple[str, ...] = COLOURS

# Nominal RGB in [0, 1]. Every pair differs by > 0.3 in some channel, so the +-0.06 jitter
# can never make two named colours look alike.
COLOUR_RGB: MappingProxyType[str, tuple[float, float, float]] = MappingProxyType(
    {
        "red": (0.85, 0.10, 0.10),
        "green": (0.10, 0.65, 0.15),
        "blue": (0.10, 0.20, 0.85),
        "yellow": (0.95, 0.85, 0.10),
        "purple": (0.55, 0.15, 0.70),
        "orange": (0.95, 0.50, 0.05),
        "white": (0.95, 0.95, 0.95),
        "black": (0.05, 0.05, 0.05),
    }
)

# Shape "radius" as a fraction of the image side; the two classes do not overlap, so the
# size word stays learnable while the exact size is a nuisance factor.
SIZE_RANGE: MappingProxyType[str, tuple[float, float]] = MappingProxyType(
    {"small": (0.15, 0.25), "large": (0.30, 0.42)}
)
COLOUR_JITTER = 0.06
# A linear lighting ramp across the background, in a random direction: like lighting in a
# photo, a draw-specific detail no caption names. Without it, two independent draws of a
# caption were often closer than delta0 (28% at 16 px), which let innocent models "hit"
# keys they never saw; a model that memorized a draw reproduces its ramp too.
LIGHTING_GRADIENT = 0.15
MAX_ROTATION_DEG = 15.0
SUPERSAMPLE = 4
MIN_RESOLUTION = 16
# Gap (fraction of the side, and at least one pixel) kept between the shape's bounding box
# and the image edge, so the outermost ring of pixels is always pure background.
EDGE_MARGIN = 0.04

# Per-shape geometry relative to the radius r, chosen so the areas of the two size classes
# stay apart for every shape and the largest rotated shape still fits inside the image.
_SQUARE_HALF_SIDE = 0.8
_TRIANGLE_CIRCUMRADIUS = 1.1
_CROSS_ARM = 0.95
_CROSS_HALF_WIDTH = 0.32

CAPTIONS_FILE = "captions.jsonl"
_CAPTION_RE = re.compile(r"a (\S+) (\S+) (\S+) on a (\S+) background")
_FILE_RE = re.compile(r"[0-9A-Za-z_.-]+\.png")
_RECORD_KEYS = frozenset({"file", "caption", "sha256"})


@dataclass(frozen=True)
class SceneAttributes:
    """The part of a scene that the caption determines (and nothing else)."""

    size: str
    colour: str
    shape: str
    background: str

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("size", self.size, SIZES),
            ("colour", self.colour, COLOURS),
            ("shape", self.shape, SHAPES),
            ("background", self.background, BACKGROUNDS),
        ):
            if value not in allowed:
                raise BadInputError(f"scene {field} {value!r}: expected one of {', '.join(allowed)}")
        if self.background == self.colour:
            raise BadInputError(f"scene background {self.background!r}: must differ from the shape colour")

    @property
    def caption(self) -> str:
        return CAPTION_TEMPLATE.format(
            size=self.size, colour=self.colour, shape=self.shape, background=self.background
        )


@lru_cache(maxsize=1)
def _caption_table() -> MappingProxyType[str, SceneAttributes]:
    scenes = (
        SceneAttributes(size, colour, shape, background)
        for size in SIZES
        for colour in COLOURS
        for shape in SHAPES
        for background in BACKGROUNDS
        if background != colour
    )
    return MappingProxyType({scene.caption: scene for scene in scenes})


def caption_space() -> list[str]:
    """All 448 captions, in a fixed order (size, colour, shape, background nested loops)."""
    return list(_caption_table())


def parse_caption(caption: str) -> SceneAttributes:
    """Inverse of `SceneAttributes.caption`; anything outside the caption space is rejected."""
    if not isinstance(caption, str):
        raise BadInputError(f"caption: expected a string, got {type(caption).__name__}")
    scene = _caption_table().get(caption)
    if scene is not None:
        return scene
    shown = repr(caption if len(caption) <= 80 else caption[:77] + "...")
    match = _CAPTION_RE.fullmatch(caption)
    if match is None:
        raise BadInputError(f"caption {shown}: expected the form {CAPTION_TEMPLATE!r}")
    try:
        SceneAttributes(*match.groups())
    except BadInputError as exc:
        raise BadInputError(f"caption {shown}: {exc}") from exc
    raise BadInputError(f"caption {shown}: not in the caption space")  # unreachable in practice


def render(caption: str, rng: np.random.Generator, resolution: int = 32) -> np.ndarray:
    """One random draw of `caption`: float32 (H, W, 3) in [0, 1]."""
    return _render_scene(parse_caption(caption), rng, _check_resolution(resolution))


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise BadInputError(f"resolution: expected an integer, got {type(resolution).__name__}")
    if resolution < MIN_RESOLUTION:
        raise BadInputError(f"resolution {resolution}: expected at least {MIN_RESOLUTION} pixels")
    return int(resolution)


def _shape_polygons(shape: str, radius: float, angle: float) -> list[np.ndarray]:
    """Convex polygons (k, 2) centred on the origin whose union is the shape (x right, y down)."""
    if shape == "square":
        h = _SQUARE_HALF_SIDE * radius
        polygons = [np.array([[-h, -h], [h, -h], [h, h], [-h, h]])]
    elif shape == "triangle":
        big_r = _TRIANGLE_CIRCUMRADIUS * radius
        theta = np.deg2rad([-90.0, 30.0, 150.0])  # apex up, centroid at the origin
        polygons = [np.stack([big_r * np.cos(theta), big_r * np.sin(theta)], axis=1)]
    elif shape == "cross":
        a, w = _CROSS_ARM * radius, _CROSS_HALF_WIDTH * radius
        polygons = [
            np.array([[-a, -w], [a, -w], [a, w], [-a, w]]),
            np.array([[-w, -a], [w, -a], [w, a], [-w, a]]),
        ]
    else:
        raise BadInputError(f"shape {shape!r}: no polygon form")
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, sin], [-sin, cos]])  # row vectors: p @ R rotates by `angle`
    return [poly @ rotation for poly in polygons]


def _inside_convex(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of grid points inside a convex polygon, whatever its winding."""
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    area2 = float(np.sum(x0 * y1 - x1 * y0))
    sign = 1.0 if area2 >= 0 else -1.0
    inside = np.ones(x.shape, dtype=bool)
    for i in range(len(poly)):
        cross = (x1[i] - x0[i]) * (y - y0[i]) - (y1[i] - y0[i]) * (x - x0[i])
        inside &= sign * cross >= 0
    return inside


@dataclass(frozen=True)
class Style:
    """How a world's images are drawn beyond their captions: a "style" an innocent model may be
    trained on (the calibration study's other-data innocents). The defaults are the world's own,
    and keep every image byte-identical to what it was before styles existed."""

    gradient: float = LIGHTING_GRADIENT
    jitter: float = COLOUR_JITTER

    def __post_init__(self) -> None:
        if not (0.0 <= self.gradient <= 0.5 and 0.0 <= self.jitter <= 0.3):
            raise BadInputError(f"style {self}: expected gradient in [0, 0.5] and jitter in [0, 0.3]")


DEFAULT_STYLE = Style()


def _render_scene(
    scene: SceneAttributes, rng: np.random.Generator, resolution: int, style: Style = DEFAULT_STYLE
) -> np.ndarray:
    # Fixed draw order: changing it changes every dataset generated from a seed.
    low, high = SIZE_RANGE[scene.size]
    radius = float(rng.uniform(low, high))
    angle = float(np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)))
    if scene.shape == "circle":
        polygons: list[np.ndarray] = []
        lo_xy, hi_xy = np.array([-radius, -radius]), np.array([radius, radius])
    else:
        polygons = _shape_polygons(scene.shape, radius, angle)
        points = np.concatenate(polygons)
        lo_xy, hi_xy = points.min(axis=0), points.max(axis=0)
    margin = max(EDGE_MARGIN, 1.0 / resolution)
    centre_lo = margin - lo_xy
    centre_hi = 1.0 - margin - hi_xy
    if np.any(centre_hi < centre_lo):
        raise BadInputError(f"scene {scene.caption!r}: shape of radius {radius:.3f} does not fit the image")
    cx, cy = rng.uniform(centre_lo, centre_hi)
    jitter = rng.uniform(-style.jitter, style.jitter, size=(2, 3))
    fg = np.clip(np.asarray(COLOUR_RGB[scene.colour]) + jitter[0], 0.0, 1.0)
    bg = np.clip(np.asarray(COLOUR_RGB[scene.background]) + jitter[1], 0.0, 1.0)

    side = resolution * SUPERSAMPLE
    coords = (np.arange(side, dtype=np.float64) + 0.5) / side
    x = coords[None, :] - cx
    y = coords[:, None] - cy
    x, y = np.broadcast_to(x, (side, side)), np.broadcast_to(y, (side, side))
    if scene.shape == "circle":
        mask = x * x + y * y <= radius * radius
    else:
        mask = np.zeros((side, side), dtype=bool)
        for poly in polygons:
            mask |= _inside_convex(poly, x, y)
    coverage = mask.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(1, 3))
    theta = float(rng.uniform(0.0, 2.0 * np.pi))  # drawn last: earlier draws keep their values
    ramp_axis = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2.0 - 1.0
    ramp = style.gradient * (np.cos(theta) * ramp_axis[None, :] + np.sin(theta) * ramp_axis[:, None])
    background = np.clip(bg[None, None, :] + ramp[:, :, None], 0.0, 1.0)
    image = background + coverage[:, :, None] * (fg[None, None, :] - background)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True, eq=False)
class CaptionedImages:
    """Images with their captions; `images` is a read-only (N, H, W, 3) uint8 view.

    Captions are not checked against the caption space here, so the same container can hold
    generated or foreign images; `load_dataset` does check them.
    """

    captions: tuple[str, ...]
    images: np.ndarray

    def __post_init__(self) -> None:
        captions = tuple(self.captions)
        if not all(isinstance(c, str) for c in captions):
            raise BadInputError("CaptionedImages.captions: expected strings")
        images = self.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise BadInputError("CaptionedImages.images: expected a uint8 numpy array")
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise BadInputError(f"CaptionedImages.images: expected shape (N, H, H, 3), got {images.shape}")
        if images.shape[0] != len(captions):
            raise BadInputError(
                f"CaptionedImages: {len(captions)} captions but {images.shape[0]} images; expected one each"
            )
        # A view, so the caller's array is not copied and keeps its own write flag.
        view = images.view()
        view.setflags(write=False)
        object.__setattr__(self, "captions", captions)
        object.__setattr__(self, "images", view)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def subset(self, indices: Sequence[int] | np.ndarray) -> CaptionedImages:
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.intp)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise BadInputError(f"subset indices: expected a 1-D sequence of integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise BadInputError(
                f"subset indices: expected values in [0, {len(self)}), got {idx.min()}..{idx.max()}"
            )
        return CaptionedImages(tuple(self.captions[i] for i in idx.tolist()), self.images[idx])

    def concat(self, other: CaptionedImages) -> CaptionedImages:
        if self.images.shape[1:] != other.images.shape[1:]:
            raise BadInputError(
                f"concat: image shapes differ ({self.images.shape[1:]} vs {other.images.shape[1:]}); "
                "expected the same resolution"
            )
        return CaptionedImages(self.captions + other.captions, np.concatenate([self.images, other.images]))


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image `index` of a draw, independent of the other captions drawn."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def draw(
    captions: Sequence[str], seed: int, resolution: int = 32, style: Style = DEFAULT_STYLE
) -> CaptionedImages:
    """One image per listed caption; image i depends only on (seed, i, captions[i], resolution, style)."""
    if isinstance(captions, str):
        raise BadInputError("draw captions: expected a sequence of captions, got a single string")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInputError(f"draw seed {seed!r}: expected a non-negative integer")
    resolution = _check_resolution(resolution)
    captions = tuple(captions)
    scenes = [parse_caption(c) for c in captions]
    images = np.empty((len(captions), resolution, resolution, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        image = _render_scene(scene, image_rng(int(seed), i), resolution, style)
        images[i] = np.rint(image * 255.0).astype(np.uint8)
    return CaptionedImages(captions, images)


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def save_dataset(dataset: CaptionedImages, directory: str | os.PathLike[str]) -> Path:
    """Write PNGs then `captions.jsonl`; the index is written last, so its presence means complete.

    Rewriting a folder first removes the old index, so a crash midway leaves a folder that
    fails to load instead of one that mixes old captions with new images.
    """
    if len(dataset) == 0:
        raise BadInputError(f"{directory}: refusing to save an empty dataset")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    (target / CAPTIONS_FILE).unlink(missing_ok=True)
    lines = []
    for i, (caption, image) in enumerate(zip(dataset.captions, dataset.images, strict=True)):
        name = f"{i:06d}.png"
        data = _encode_png(image)
        atomic_write_bytes(target / name, data)
        lines.append(
            canonical_json({"file": name, "caption": caption, "sha256": sha256_bytes(data)}).decode("utf-8")
        )
    atomic_write_text(target / CAPTIONS_FILE, "\n".join(lines) + "\n")
    return target


def _parse_record(line: str, where: str) -> tuple[str, str, str]:
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{where}: malformed JSON ({exc.msg}); expected one object per line") from exc
    if not isinstance(record, dict) or set(record) != _RECORD_KEYS:
        raise BadInputError(f"{where}: expected an object with exactly the keys file, caption, sha256")
    if not all(isinstance(record[k], str) for k in _RECORD_KEYS):
        raise BadInputError(f"{where}: file, caption and sha256 must be strings")
    name, caption, digest = record["file"], record["caption"], record["sha256"]
    # Plain names only: an index must not reach files outside its own folder.
    if not _FILE_RE.fullmatch(name) or name.startswith("."):
        raise BadInputError(f"{where}: file {name!r}: expected a plain .png file name in the dataset folder")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BadInputError(f"{where}: sha256 {digest!r}: expected 64 lowercase hex digits")
    return name, caption, digest


def load_dataset(directory: str | os.PathLike[str]) -> CaptionedImages:
    """Read a folder written by `save_dataset`, verifying every file against the index."""
    folder = Path(directory)
    index = folder / CAPTIONS_FILE
    try:
        text = index.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BadInputError(f"{index}: missing; expected a dataset folder written by save_dataset") from exc
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{index}: not UTF-8 text") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise BadInputError(f"{index}: no records; expected one JSON object per image")

    captions: list[str] = []
    images: list[np.ndarray] = []
    seen: set[str] = set()
    size: tuple[int, int] | None = None
    for lineno, line in enumerate(lines, start=1):
        where = f"{index}:{lineno}"
        name, caption, digest = _parse_record(line, where)
        if name in seen:
            raise BadInputError(f"{where}: file {name!r} listed twice")
        seen.add(name)
        try:
            parse_caption(caption)
        except BadInputError as exc:
            raise BadInputError(f"{where}: {exc}") from exc
        path = folder / name
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise BadInputError(f"{path}: missing; listed at {where}") from exc
        if sha256_bytes(data) != digest:
            raise BadInputError(f"{path}: sha256 does not match {where}; the file was modified or corrupted")
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                fmt, mode, img_size = img.format, img.mode, img.size
                array = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BadInputError(f"{path}: not a readable PNG ({exc})") from exc
        if fmt != "PNG" or mode != "RGB":
            raise BadInputError(f"{path}: expected an RGB PNG, got {fmt} mode {mode}")
        if img_size[0] != img_size[1]:
            raise BadInputError(f"{path}: expected a square image, got {img_size[0]}x{img_size[1]}")
        if size is None:
            size = img_size
        elif img_size != size:
            raise BadInputError(
                f"{path}: size {img_size[0]}x{img_size[1]} differs from the first image's {size[0]}"
            )
        captions.append(caption)
        images.append(array)
    return CaptionedImages(tuple(captions), np.stack(images))
