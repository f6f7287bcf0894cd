"""Reading images and precomputed features from disk, with one-line errors that name the fix.

* :func:`load_image` — ``.npy`` always (numpy only); PNG, JPEG, BMP, GIF and WebP through Pillow, the
  optional ``vision`` extra (``pip install llmcore[vision]``). Returns uint8 pixels (H, W, C), the format of
  :mod:`llmcore.multimodal.shapes`; :func:`~llmcore.multimodal.images_to_tensor` turns a batch of them into
  the encoder's float input.
* :func:`load_features` — features another encoder computed offline (``.npy`` or ``.safetensors``), for
  :class:`~llmcore.multimodal.PrecomputedFeatures`.

Files are untrusted input: ``.npy`` is read with ``allow_pickle=False`` and memory-mapped, so its header's
shape is checked against the file's real size and against a pixel budget before anything is copied; a
PNG's size is read from its header before it is decoded (Pillow also refuses decompression bombs itself).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:  # torch loads when features are read: load_image needs numpy only
    import torch

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_IMAGE_PIXELS = 2**26  # 8192 x 8192: far beyond what a small ViT takes, well below a memory problem
_MODES = {1: "L", 3: "RGB"}  # channels -> the Pillow mode an image is converted to


def _pillow() -> Any:
    """``PIL.Image``, or a DataError saying how to get it (the optional ``vision`` extra)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError("reading PNG/JPEG images needs Pillow: pip install 'llmcore[vision]' (or pip install "
                        "Pillow), or save the image as .npy (numpy.save(path, uint8 array (H, W, C))).") from e
    return Image


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():  # follows symlinks; a directory, FIFO or missing path is refused before any read
        state = "does not exist" if not p.exists() else "is not a regular file"
        raise DataError(f"{what} {p} {state}; give the path of a file.")
    return p


def _npy(p: Path, what: str) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped (never unpickled)."""
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # truncated, pickled (object arrays) or not .npy at all
        raise DataError(f"cannot read {p} as a .npy file of {what} ({e}); save it with numpy.save(path, array).") from e


def load_image(path: str | os.PathLike, image_size: int | None = None, channels: int = 3,
               resize: bool = False) -> np.ndarray:
    """Read one image as uint8 pixels (H, W, channels).

    Args:
        path: a ``.npy`` file holding uint8 (H, W, C) — or (H, W) for ``channels=1`` — or an image file Pillow
            reads (PNG, JPEG, ...; converted to RGB for 3 channels, grayscale for 1, an alpha channel dropped).
        image_size: when given, the image must be image_size × image_size, else DataError naming the fix;
            with ``resize=True`` it is resized to that instead (bilinear, through Pillow, also for ``.npy``).
        channels: 3 (RGB) or 1 (grayscale).

    ``.npy`` pixels are taken as they are (no channel conversion): a float array or the wrong channel count
    is a DataError saying how to save it.
    """
    if channels not in _MODES:
        raise DataError(f"load_image channels={channels!r} is unsupported; use 3 (RGB) or 1 (grayscale).")
    p = _existing_file(path, "image file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _npy(p, "pixels")
        if arr.ndim == 2 and channels == 1:
            arr = arr[:, :, None]
        want = f"uint8 (H, W, {channels})"
        if arr.dtype != np.uint8:
            raise DataError(f"{p} holds {arr.dtype} pixels, expected {want}; save uint8 pixels, e.g. "
                            "numpy.save(path, (image * 255).round().astype(numpy.uint8)) for floats in [0, 1].")
        if arr.ndim != 3 or arr.shape[-1] != channels:
            hint = ("channels-first? save image.transpose(1, 2, 0)" if arr.ndim == 3 and arr.shape[0] == channels
                    else f"save one {channels}-channel image (H, W, {channels})")
            raise DataError(f"{p} holds an array of shape {arr.shape}, expected {want}; {hint}.")
        if arr.shape[0] * arr.shape[1] > MAX_IMAGE_PIXELS:
            raise DataError(f"{p} is {arr.shape[0]}x{arr.shape[1]} pixels, over the limit of {MAX_IMAGE_PIXELS}; "
                            "downscale it first.")
        arr = np.array(arr)  # copy out of the memory map (checked above)
        if image_size is not None and arr.shape[:2] != (image_size, image_size):
            if not resize:
                raise _wrong_size(p, arr.shape[0], arr.shape[1], image_size)
            Image = _pillow()
            img = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)  # mode from the shape: L or RGB
            arr = _pixels(img.resize((image_size, image_size), Image.Resampling.BILINEAR), channels)
        return arr
    if suffix not in PILLOW_SUFFIXES:
        raise DataError(f"cannot read {p}: unknown image type {suffix or '(no suffix)'}; use .npy (uint8 (H, W, C)) "
                        f"or one of {', '.join(PILLOW_SUFFIXES)} (with Pillow).")
    Image = _pillow()
    try:
        with Image.open(p) as img:
            w, h = img.size  # from the header: nothing is decoded yet
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"{p} is {h}x{w} pixels, over the limit of {MAX_IMAGE_PIXELS}; downscale it first.")
            if image_size is not None and (h, w) != (image_size, image_size) and not resize:
                raise _wrong_size(p, h, w, image_size)
            img = img.convert(_MODES[channels])
            if image_size is not None and (h, w) != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return _pixels(img, channels)
    except (OSError, Image.DecompressionBombError) as e:  # not an image, truncated, or a bomb
        raise DataError(f"cannot read {p} as an image ({e}); check the file, or save it as .npy.") from e


def _pixels(img: Any, channels: int) -> np.ndarray:
    """A Pillow image as uint8 (H, W, channels)."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr.copy()


def _wrong_size(p: Path, h: int, w: int, image_size: int) -> DataError:
    return DataError(f"{p} is {h}x{w} pixels, the model takes {image_size}x{image_size}; resize it, or pass "
                     "resize=True (bilinear, needs Pillow).")


def load_features(path: str | os.PathLike, key: str | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Features saved by another encoder: (N, d) for one input or (B, N, d) for many, as float32 by default.

    ``.npy``: the array. ``.safetensors``: the tensor named ``key``; without ``key``, the only tensor in the
    file, else the one named ``"features"``. Feed a batch (B, N, d) — ``features[None]`` for one — to
    :class:`~llmcore.multimodal.PrecomputedFeatures`. ``dtype`` (default float32) is what the tensor is
    converted to: float64 features (numpy's default) become float32 here, where they enter.
    """
    import torch

    p = _existing_file(path, "features file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _npy(p, "features")
        if arr.dtype.kind != "f":
            raise DataError(f"{p} holds {arr.dtype} values, expected floating-point features (N, d) or (B, N, d); "
                            "save them with numpy.save(path, features.astype(numpy.float32)).")
        t = torch.from_numpy(np.array(arr))
    elif suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                names = list(f.keys())
                name = key if key is not None else names[0] if len(names) == 1 else "features"
                if name not in names:
                    raise DataError(f"{p} has no tensor {name!r} (it holds {names}); pass key=NAME to choose one.")
                t = f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise DataError(f"cannot read {p} as safetensors ({e}); save with safetensors.torch.save_file.") from e
        if not t.is_floating_point():
            raise DataError(f"{p}[{name!r}] holds {str(t.dtype).removeprefix('torch.')} values, expected "
                            "floating-point features (N, d) or (B, N, d).")
    else:
        raise DataError(f"cannot read features from {p}: use .npy or .safetensors, got {suffix or '(no suffix)'}.")
    if t.dim() not in (2, 3):
        raise DataError(f"{p} holds features of shape {tuple(t.shape)}, expected (N, d) for one input or (B, N, d).")
    return t.to(dtype or torch.float32)


__all__ = ["load_image", "load_features", "MAX_IMAGE_PIXELS"]
