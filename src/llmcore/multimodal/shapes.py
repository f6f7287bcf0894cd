"""Coloured shapes: a deterministic, offline image-caption-question dataset for multimodal fusion.

Every image (default 32×32 RGB, uint8 (H, W, 3), black background) holds one to three objects, each a
*size* (small, large), a *colour* (:data:`COLOURS`), a *shape* (:data:`SHAPES`) and a *position*, one of
the nine cells of a 3×3 grid (:data:`POSITIONS`: "top left", "top", "top right", "left", "centre", ...).
One object per cell, each drawn inside its cell, so objects never overlap. Each :class:`ShapeExample` has

* ``caption``, from a fixed grammar, objects in reading order (row by row, left to right), so a caption is
  one canonical string per scene and exact match is meaningful::

      a large red circle at the top left and a small blue square at the bottom right

* ``qa``, question/answer pairs, asked only where the answer is unambiguous:
  ``what colour is the square?`` → ``blue`` / ``where is the square?`` → ``bottom right`` /
  ``what size is the square?`` → ``small`` (each only when exactly one square is there),
  ``what shape is the red object?`` → ``circle`` (only when exactly one object is red),
  ``how many circles?`` → ``one`` (for every shape present, plus one absent shape → ``zero``).

Splits and held-out combinations (compositional generalisation). The colour-shape pairs in
:data:`HELD_OUT` — blue triangle, red square, green circle, yellow diamond — never occur in ``train``;
every colour and every shape still does, with the other pairs. Half of the ``validation`` and ``test``
images contain at least one held-out pair (``ShapeExample.held_out``), the other half only pairs seen in
training, so one test set scores both "seen" and "novel combination". Beyond that, a *scene* (the caption:
sizes, colours, shapes, positions) belongs to exactly one split, by SHA-1 of the caption (:func:`split_of`;
independent of the seed): no test scene is ever a training scene, only a new arrangement of known parts.

Determinism: ``make_shapes_dataset(n, split, seed)`` draws from ``numpy.random.default_rng((seed, split))``,
so the same arguments give identical arrays on every machine, and the splits draw from separate streams.
Within a cell an object's centre is jittered by up to a pixel or two (not part of the scene), so repeated
scenes are not pixel-identical.

Metrics score generated text against the examples: :func:`caption_exact_match`, :func:`attribute_accuracy`
(colour, shape, size, position per object and count per image, read back by :func:`parse_caption`),
:func:`qa_accuracy`; :func:`majority_answers` is the blind baseline (the most common training answer per
question kind). Pure numpy (no Pillow); 10 000 images take about a second.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import DataError

# Bright on black, pairwise far apart in RGB so a small model can tell them apart from a few pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
SIZES: tuple[str, ...] = ("small", "large")
# Cell (row, col) -> name, row by row; the middle row and the centre column drop their word.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
MAX_OBJECTS = 3
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Colour-shape pairs that appear only in validation and test: one per shape and one per colour, so every
# colour and every shape is still seen in training (with 5 of the 6 colours / 3 or 4 of the 4 shapes).
HELD_OUT: frozenset[tuple[str, str]] = frozenset({
    ("blue", "triangle"), ("red", "square"), ("green", "circle"), ("yellow", "diamond")})
HELD_OUT_FRACTION = 0.5  # of validation / test images that contain a held-out pair
EVAL_SCENES = 20  # 1 scene in 20 (by hash) is validation-only, 1 in 20 test-only, the rest train-only
QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "size", "position", "count")
# Half-sizes as a fraction of the cell side: large leaves at least one black pixel to the cell's edge (two
# large squares side by side stay two squares), small is about half as wide and can still be told apart by
# shape at 32x32 (a small circle is 6 px wide, a small diamond a 5-px plus).
_HALF_SIZE = {"small": 0.28, "large": 0.42}


class ShapeObject(NamedTuple):
    """One object of a scene, in caption order: ``a {size} {colour} {shape} at the {position}``.

    :func:`parse_caption` may leave a field ``None`` where a generated caption names no valid value.
    """

    size: str | None
    colour: str | None
    shape: str | None
    position: str | None


class QA(NamedTuple):
    """A question, its one-word-or-phrase answer, and its ``kind`` (one of :data:`QUESTION_KINDS`)."""

    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class ShapeExample:
    """One image with its scene.

    Attributes:
        image: uint8 array (H, W, 3), RGB, black background.
        objects: the scene's objects in caption (reading) order.
        caption: the canonical caption of ``objects`` (:func:`caption_of`).
        qa: the unambiguous question/answer pairs about the image.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        held_out: True when an object's (colour, shape) is in :data:`HELD_OUT`.
    """

    image: np.ndarray
    objects: tuple[ShapeObject, ...]
    caption: str
    qa: tuple[QA, ...]
    split: str
    held_out: bool


# ---------------------------------------------------------------------------------------------- scenes
def caption_of(objects: Sequence[ShapeObject]) -> str:
    """``"a large red circle at the top left and a small blue square at the bottom right"``."""
    return " and ".join(f"a {o.size} {o.colour} {o.shape} at the {o.position}" for o in objects)


def has_held_out(objects: Sequence[ShapeObject]) -> bool:
    """True when any object's (colour, shape) pair is one of :data:`HELD_OUT`."""
    return any((o.colour, o.shape) in HELD_OUT for o in objects)


def split_of(objects: Sequence[ShapeObject]) -> str:
    """The one split a scene belongs to, from the SHA-1 of its caption (the same for every seed).

    Scenes with a held-out pair go to validation or test (half each); the others 1 in ``EVAL_SCENES`` to
    validation, 1 in ``EVAL_SCENES`` to test, the rest to train. So no scene is in two splits.
    """
    h = int.from_bytes(hashlib.sha1(caption_of(objects).encode("utf-8")).digest()[:8], "big")
    if has_held_out(objects):
        return SPLITS[1 + h % 2]
    return {0: "validation", 1: "test"}.get(h % EVAL_SCENES, "train")


_ALL_PAIRS = [(c, s) for c in COLOURS for s in SHAPES]
_SEEN_PAIRS = [p for p in _ALL_PAIRS if p not in HELD_OUT]
_HELD_PAIRS = sorted(HELD_OUT)  # sorted: a frozenset's order may vary between runs


def _draw_scene(rng: np.random.Generator, held_out: bool) -> tuple[ShapeObject, ...]:
    """1-3 objects in distinct cells, reading order; with ``held_out``, one of them (at random) has a held-out
    pair and the others any pair, so the object count is uniform in both halves of an evaluation split."""
    # One draw of uniforms per scene, turned into choices by hand: a numpy call per choice costs more than
    # the drawing of the image itself.
    u = rng.random(2 + len(POSITIONS) + 2 * MAX_OBJECTS).tolist()
    n = 1 + int(u[0] * MAX_OBJECTS)
    order = sorted(range(len(POSITIONS)), key=lambda i: u[2 + i])  # a random permutation of the cells
    cells = sorted(order[:n])  # distinct cells, sorted: reading order
    pool = _ALL_PAIRS if held_out else _SEEN_PAIRS
    rest = u[2 + len(POSITIONS):]
    pairs = [pool[int(v * len(pool))] for v in rest[:n]]
    if held_out:  # u[1] picks both the object and the held-out pair: n * 4 equally likely outcomes
        k = int(u[1] * n * len(_HELD_PAIRS))
        pairs[k // len(_HELD_PAIRS)] = _HELD_PAIRS[k % len(_HELD_PAIRS)]
    sizes = [SIZES[int(v * len(SIZES))] for v in rest[MAX_OBJECTS:MAX_OBJECTS + n]]
    return tuple(ShapeObject(z, *pair, POSITIONS[c]) for c, pair, z in zip(cells, pairs, sizes))


def _scene_for(rng: np.random.Generator, split: str) -> tuple[ShapeObject, ...]:
    """Rejection sampling: draw scenes until one belongs to ``split`` (by :func:`split_of`).

    Train scenes never hold a held-out pair; an evaluation scene holds one with probability
    ``HELD_OUT_FRACTION``. About 1 draw in 2 (held-out) or 1 in ``EVAL_SCENES`` (seen pairs) is accepted.
    """
    held_out = split != "train" and bool(rng.random() < HELD_OUT_FRACTION)
    while True:
        scene = _draw_scene(rng, held_out)
        if split_of(scene) == split:
            return scene


# ---------------------------------------------------------------------------------------------- drawing
@functools.lru_cache(maxsize=16)
def _cell_bounds(image_size: int) -> tuple[int, ...]:
    """Pixel edges of the 3 grid cells along one axis: 4 ints, cells as wide as rounding allows."""
    return tuple(round(i * image_size / 3) for i in range(4))


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Pixels (offsets dy, dx from the centre, in pixels) that ``shape`` of half-size ``r`` covers."""
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "triangle":  # apex up, base at the bottom: the half-width grows from 0 to r going down
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2 + 0.5)
    raise AssertionError(shape)  # SHAPES is closed; a new shape needs a mask here


@functools.lru_cache(maxsize=4096)
def _object_mask(shape: str, h: int, w: int, r: float, jy: int, jx: int) -> np.ndarray:
    """Boolean (h, w) mask of ``shape`` (half-size ``r`` px) in an h×w cell, centre moved by (jy, jx) px.

    Cached: at a given image size there are only a few hundred distinct masks, and drawing is then one
    indexed assignment per object (10 000 images in about a second).
    """
    ys = np.arange(h)[:, None] - ((h - 1) / 2 + jy)  # (h, 1) offsets of the pixel centres from the centre
    xs = np.arange(w)[None, :] - ((w - 1) / 2 + jx)  # (1, w)
    mask = _shape_mask(shape, ys, xs, r)
    mask.flags.writeable = False  # shared by every caller of the cache
    return mask


def draw_scene(objects: Sequence[ShapeObject], image_size: int = 32,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Render ``objects`` into a uint8 (image_size, image_size, 3) RGB array on black.

    Each object is centred in its grid cell, moved per axis by a whole number of pixels drawn from ``rng``
    (None: centred) within the room the cell leaves around it (±1 px for a small object at 32×32, none for a
    large one), and clipped to its cell, so objects never overlap.
    """
    image = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    edges = _cell_bounds(image_size)
    for o in objects:
        row, col = divmod(POSITIONS.index(o.position), 3)
        y0, y1, x0, x1 = edges[row], edges[row + 1], edges[col], edges[col + 1]
        r = _HALF_SIZE[o.size] * image_size / 3
        # Jitter only where the cell leaves room, so the shape stays whole inside its own cell.
        room = int(max(0.0, min(y1 - y0, x1 - x0) / 2 - r - 0.5))
        jy, jx = rng.integers(-room, room + 1, size=2).tolist() if rng is not None and room else (0, 0)
        image[y0:y1, x0:x1][_object_mask(o.shape, y1 - y0, x1 - x0, r, jy, jx)] = COLOURS[o.colour]
    return image


# ---------------------------------------------------------------------------------------------- questions
def questions_for(objects: Sequence[ShapeObject], rng: np.random.Generator | None = None) -> tuple[QA, ...]:
    """The unambiguous questions about a scene, in a fixed order (see the module docstring).

    ``rng`` picks the absent shape of the ``zero`` count question (None: the first absent one).
    """
    shapes = Counter(o.shape for o in objects)
    colours = Counter(o.colour for o in objects)
    qa: list[QA] = []
    for shape in SHAPES:
        if shape not in shapes:
            continue
        qa.append(QA(f"how many {PLURALS[shape]}?", COUNT_WORDS[shapes[shape]], "count"))
        if shapes[shape] == 1:
            o = next(o for o in objects if o.shape == shape)
            qa.append(QA(f"what colour is the {shape}?", o.colour, "colour"))
            qa.append(QA(f"what size is the {shape}?", o.size, "size"))
            qa.append(QA(f"where is the {shape}?", o.position, "position"))
    for colour in COLOURS:
        if colours[colour] == 1:
            o = next(o for o in objects if o.colour == colour)
            qa.append(QA(f"what shape is the {colour} object?", o.shape, "shape"))
    absent = [s for s in SHAPES if s not in shapes]
    if absent:  # one "zero" per image: without any, "how many" would never be answered zero
        shape = absent[int(rng.integers(len(absent)))] if rng is not None else absent[0]
        qa.append(QA(f"how many {PLURALS[shape]}?", "zero", "count"))
    return tuple(qa)


# ---------------------------------------------------------------------------------------------- dataset
def make_shapes_dataset(n: int, split: str = "train", seed: int = 0, image_size: int = 32) -> list[ShapeExample]:
    """``n`` examples of ``split`` ("train", "validation" or "test"), identical for identical arguments.

    ``image_size`` (pixels per side, at least 12) sets the resolution; the scenes do not depend on it.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DataError(f"make_shapes_dataset n={n!r} is invalid: it must be an integer >= 0.")
    if split not in SPLITS:
        raise DataError(f"make_shapes_dataset split={split!r} is unknown; use one of {', '.join(SPLITS)}.")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 12:
        raise DataError(f"make_shapes_dataset image_size={image_size!r} is too small: it must be an integer "
                        ">= 12 (3 grid cells of at least 4 pixels).")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"make_shapes_dataset seed={seed!r} is invalid: it must be an integer >= 0.")
    rng = np.random.default_rng((seed, SPLITS.index(split)))
    out = []
    for _ in range(n):
        objects = _scene_for(rng, split)
        out.append(ShapeExample(image=draw_scene(objects, image_size, rng), objects=objects,
                                caption=caption_of(objects), qa=questions_for(objects, rng), split=split,
                                held_out=has_held_out(objects)))
    return out


# ---------------------------------------------------------------------------------------------- parsing
_POSITION_RE = re.compile(r"\bat the (.+)$")


def _normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or final punctuation."""
    return " ".join(text.lower().split()).rstrip(".?!").strip()


def parse_caption(caption: str, strict: bool = False) -> list[ShapeObject]:
    """Read the objects back from a caption of the :func:`caption_of` grammar (for scoring generated text).

    The caption is split on ``" and "``; in each part, the first size, colour and shape word found and the
    words after ``"at the "`` (a name in :data:`POSITIONS`) make an object, with ``None`` for what is
    missing or unknown, so a half-right caption still scores its right attributes. ``strict=True`` raises
    :class:`DataError` on the first part that is not exactly ``a {size} {colour} {shape} at the {position}``.
    """
    text = _normalise(caption)
    objects = []
    for part in (p.strip() for p in text.split(" and ")) if text else ():
        words = part.split()
        m = _POSITION_RE.search(part)
        obj = ShapeObject(
            size=next((w for w in words if w in SIZES), None),
            colour=next((w for w in words if w in COLOURS), None),
            shape=next((w for w in words if w in SHAPES), None),
            position=m.group(1) if m and m.group(1) in POSITIONS else None,
        )
        if strict and (None in obj or part != caption_of([obj])):
            raise DataError(f"caption part {part!r} is not 'a SIZE COLOUR SHAPE at the POSITION' (sizes "
                            f"{'/'.join(SIZES)}, positions like 'top left'); fix the caption or pass strict=False.")
        objects.append(obj)
    return objects


# ---------------------------------------------------------------------------------------------- metrics
def _check_lengths(predictions: Sequence[object], references: Sequence[object], what: str) -> None:
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions for {len(references)} {what}; give one prediction each.")


def caption_exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference caption, ignoring case, spacing and a final period."""
    _check_lengths(predictions, references, "references")
    if not references:
        return 0.0
    return sum(_normalise(p) == _normalise(r) for p, r in zip(predictions, references)) / len(references)


def attribute_accuracy(predictions: Sequence[str],
                       references: Sequence[ShapeExample | Sequence[ShapeObject]]) -> dict[str, float]:
    """Per-attribute accuracy of generated captions against the true scenes.

    Objects are compared in caption order (the i-th object named against the i-th true object; the
    grammar lists them in reading order, so a correct caption aligns exactly). ``colour``, ``shape``,
    ``size`` and ``position`` are the fractions of true objects whose aligned predicted object has that
    attribute right (a missing object counts as wrong); ``count`` is the fraction of images with the right
    number of objects; ``parsed`` the fraction of captions that follow the grammar exactly.
    """
    _check_lengths(predictions, references, "references")
    right = Counter()
    n_objects = 0
    for pred, ref in zip(predictions, references):
        truth = ref.objects if isinstance(ref, ShapeExample) else tuple(ref)
        got = parse_caption(pred)
        n_objects += len(truth)
        right["count"] += len(got) == len(truth)
        try:
            parse_caption(pred, strict=True)
            right["parsed"] += 1
        except DataError:
            pass
        for t, g in zip(truth, got):
            for attr in ("colour", "shape", "size", "position"):
                right[attr] += getattr(t, attr) == getattr(g, attr)
    n_images = max(len(references), 1)
    return {
        **{a: right[a] / max(n_objects, 1) for a in ("colour", "shape", "size", "position")},
        "count": right["count"] / n_images,
        "parsed": right["parsed"] / n_images,
    }


def normalise_answer(answer: str) -> str:
    """Lower case, single spaces, no final punctuation, digits 0-3 as words ("2" → "two")."""
    a = _normalise(answer)
    return COUNT_WORDS[int(a)] if a.isdigit() and int(a) < len(COUNT_WORDS) else a


def qa_accuracy(predictions: Sequence[str], qa: Sequence[QA]) -> dict[str, float]:
    """``{"all": ..., kind: ...}``: the fraction of answers right, overall and per question kind.

    Answers compare after :func:`normalise_answer`; a kind with no question is left out.
    """
    _check_lengths(predictions, qa, "questions")
    right, total = Counter(), Counter()
    for pred, q in zip(predictions, qa):
        ok = normalise_answer(pred) == normalise_answer(q.answer)
        for key in ("all", q.kind):
            total[key] += 1
            right[key] += ok
    return {k: right[k] / total[k] for k in ("all", *QUESTION_KINDS) if total[k]}


def all_questions(examples: Sequence[ShapeExample]) -> list[QA]:
    """Every question of ``examples``, example by example (the order :func:`qa_accuracy` expects)."""
    return [q for ex in examples for q in ex.qa]


def majority_answers(train: Sequence[ShapeExample]) -> dict[str, str]:
    """The blind baseline: {question kind: its most common answer in ``train``} (ties: alphabetical first)."""
    counts: dict[str, Counter] = {}
    for q in all_questions(train):
        counts.setdefault(q.kind, Counter())[q.answer] += 1
    return {kind: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, c in counts.items()}


def majority_predictions(majority: Mapping[str, str], qa: Sequence[QA]) -> list[str]:
    """The baseline's answer to each question: ``majority[q.kind]`` ("" for a kind never seen)."""
    return [majority.get(q.kind, "") for q in qa]


__all__ = [
    "COLOURS", "SHAPES", "SIZES", "POSITIONS", "HELD_OUT", "SPLITS", "QUESTION_KINDS",
    "ShapeObject", "QA", "ShapeExample", "make_shapes_dataset", "draw_scene", "caption_of", "questions_for",
    "split_of", "has_held_out", "parse_caption", "caption_exact_match", "attribute_accuracy", "qa_accuracy",
    "normalise_answer", "all_questions", "majority_answers", "majority_predictions",
]
