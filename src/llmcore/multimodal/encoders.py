"""Modality encoders: anything that turns an input into a sequence of feature vectors (B, N, d_enc).

A fusion model (prefix or cross-attention) needs only this from the other modality, so the contract is
small and structural, :class:`ModalityEncoder`: an ``nn.Module`` whose ``forward(inputs)`` returns
features (B, N, d_enc), with ``feature_dim`` (d_enc) and ``num_features`` (N, or None when it varies with
the input). Two encoders ship here:

* :class:`VisionEncoder` — a small Vision Transformer (Dosovitskiy et al., 2021) built from llmcore's own
  :class:`~llmcore.modules.EncoderBlock`: patch embedding (a Conv2d whose stride is its kernel, i.e. one
  linear map per non-overlapping patch), learned 1-D or factorised 2-D position embeddings, an optional CLS
  token, N pre-norm encoder blocks, a final norm, and pooling (``"none"``: every token; ``"cls"`` or
  ``"mean"``: one vector, still (B, 1, d_enc)). Configured by :class:`VisionConfig`, a flat dataclass that
  round-trips through a dict so a fusion model's config can hold it. Trainable from scratch on
  :mod:`llmcore.multimodal.shapes` in minutes on a CPU.
* :class:`PrecomputedFeatures` — the way to plug in *any* other encoder (a frozen CLIP / SigLIP / Whisper,
  or your own): run it once offline, save its features (``.npy`` or ``.safetensors``, read back with
  :func:`llmcore.multimodal.load_features`), and feed them through this pass-through module, which only
  checks their shape. A live encoder fits too: wrap it in an ``nn.Module`` with the two attributes.

Images enter the ViT as float (B, C, H, W) in [0, 1], like ``torchvision.transforms.ToTensor`` gives;
:func:`images_to_tensor` converts uint8 (H, W, C) / (B, H, W, C) arrays (what image files and the shapes
generator hold). Wrong rank, size, channel count or dtype raises a one-line :class:`DataError` with the fix.
The checks read shapes and dtypes only (never values) so ``forward`` never syncs with the device.

Not here: per-layer attention maps of the ViT, and the fusion models themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig, check_field, check_keys, is_int, is_number
from ..errors import ConfigError, DataError
from ..modules import EncoderBlock, build_norm, build_positions, dropout, init_weights

# Float dtypes a model computes in; float64 (numpy's default) is refused rather than silently downcast, so a
# caller learns that its pipeline makes float64 and converts once, where the data is made.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
POOLS = ("none", "cls", "mean")
POS_EMBEDDINGS = ("1d", "2d")


@runtime_checkable
class ModalityEncoder(Protocol):
    """What a fusion model needs from an encoder (structural: no base class to inherit).

    ``encoder(inputs)`` returns features (B, N, d_enc) for a batch of B inputs, where
    ``d_enc == encoder.feature_dim`` and ``N == encoder.num_features`` (None: N varies with the input, e.g.
    audio of different lengths). ``isinstance(obj, ModalityEncoder)`` checks that the attributes exist.
    """

    feature_dim: int
    num_features: int | None

    def __call__(self, inputs: Any) -> torch.Tensor: ...


@dataclass
class VisionConfig:
    """Hyper-parameters of :class:`VisionEncoder`, validated on construction.

    The image is cut into (image_size / patch_size)² non-overlapping patches; each becomes one token.
    ``cls_token`` prepends a learned token (ViT's classification token) to the patches; ``pool`` chooses the
    output: ``"none"`` every token (B, N, d_model) with N = patches (+1 with a CLS token), ``"cls"`` the CLS
    token (B, 1, d_model; needs ``cls_token``), ``"mean"`` the mean of the patch tokens (B, 1, d_model).
    ``pos_embedding`` is ``"1d"`` (one learned vector per patch, as in ViT) or ``"2d"`` (a learned row vector
    plus a learned column vector: 2·grid instead of grid² vectors, and neighbouring patches share one of
    them). ``d_ff`` None means 4·d_model.
    """

    image_size: int = 32
    patch_size: int = 4  # 32/4 = 8x8 = 64 patches: one 3x3-grid cell of the shapes data spans ~2.7 patches
    channels: int = 3
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None
    dropout: float = 0.0
    cls_token: bool = False
    pool: str = "none"
    pos_embedding: str = "1d"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "d_model", "n_layers", "n_heads"):
            check_field(self, name, lambda v: is_int(v, 1), "a positive integer")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_field(self, "d_ff", lambda v: is_int(v, 1), "a positive integer or None (4*d_model)")
        if self.image_size % self.patch_size:
            raise ConfigError(f"VisionConfig.image_size={self.image_size} is not divisible by patch_size="
                              f"{self.patch_size}; pick a patch size that divides it (e.g. "
                              f"{max(d for d in range(1, self.patch_size + 1) if self.image_size % d == 0)}).")
        if self.d_model % self.n_heads:
            raise ConfigError(f"VisionConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                              f"pick d_model as a multiple of n_heads.")
        check_field(self, "dropout", lambda v: is_number(v) and 0.0 <= v < 1.0, "in [0, 1)")
        check_field(self, "init_std", lambda v: is_number(v) and v > 0, "> 0")
        check_field(self, "cls_token", lambda v: isinstance(v, bool), "True or False")
        check_field(self, "pool", lambda v: v in POOLS, " or ".join(map(repr, POOLS)))
        check_field(self, "pos_embedding", lambda v: v in POS_EMBEDDINGS, " or ".join(map(repr, POS_EMBEDDINGS)))
        if self.pool == "cls" and not self.cls_token:
            raise ConfigError("VisionConfig.pool='cls' needs cls_token=True; set it, or use pool='mean'.")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_tokens(self) -> int:
        """Tokens through the blocks: the patches, plus the CLS token when there is one."""
        return self.num_patches + int(self.cls_token)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionConfig:
        """Build from a dict; unknown keys raise :class:`ConfigError` listing the valid ones."""
        check_keys(cls, d)
        return cls(**d)

    def block_config(self) -> ModelConfig:
        """The :class:`ModelConfig` the encoder blocks are built from (pre-norm LayerNorm, GELU, biases).

        ``pos_encoding="none"``: positions are added to the patch embeddings by the encoder, not inside the
        blocks; ``vocab_size`` is unused by blocks (1); ``max_seq_len`` is the token count.
        """
        return ModelConfig(vocab_size=1, max_seq_len=self.num_tokens, d_model=self.d_model, n_layers=self.n_layers,
                           n_heads=self.n_heads, d_ff=self.d_ff, pos_encoding="none", norm="layernorm",
                           activation="gelu", bias=True, dropout=self.dropout, init_std=self.init_std)


def _shape_str(t: torch.Tensor | np.ndarray) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_images(images: torch.Tensor, image_size: int, channels: int) -> None:
    """Raise a one-line :class:`DataError` unless ``images`` is float (B, channels, image_size, image_size).

    Shapes and dtype only (no value is read, so no device sync); the [0, 1] range is the caller's promise.
    """
    want = f"float32 (B, {channels}, {image_size}, {image_size}) in [0, 1]"
    if not isinstance(images, torch.Tensor):
        raise DataError(f"images must be a torch.Tensor {want}, got {type(images).__name__}; convert arrays "
                        "with llmcore.multimodal.images_to_tensor(images).")
    if images.dtype == torch.uint8:
        raise DataError(f"images are uint8 {_shape_str(images)}; the encoder takes {want}: convert with "
                        "llmcore.multimodal.images_to_tensor(images) (uint8 (B, H, W, C) -> float / 255).")
    if images.dtype not in FLOAT_DTYPES:
        fix = ("convert with images.float()" if images.is_floating_point() else
               "for 0..255 pixels, convert with images.float() / 255 (or images_to_tensor(...) if channels-last)")
        raise DataError(f"images have dtype {str(images.dtype).removeprefix('torch.')}; the encoder takes {want}: "
                        f"{fix}.")
    if images.dim() != 4:
        hint = "add the batch dimension with images[None]" if images.dim() == 3 else "pass a batch (B, C, H, W)"
        raise DataError(f"images must be 4-D {want}, got shape {_shape_str(images)}; {hint}.")
    _, c, h, w = images.shape
    if c != channels:
        hint = ("channels-last? permute with images.permute(0, 3, 1, 2)" if images.shape[-1] == channels
                else "drop the alpha channel (RGBA -> RGB)" if c == 4 and channels == 3
                else f"convert the images to {channels} channel(s)")
        raise DataError(f"images have {c} channels (shape {_shape_str(images)}), the encoder takes {want}; {hint}.")
    if (h, w) != (image_size, image_size):
        raise DataError(f"images are {h}x{w} (shape {_shape_str(images)}), the encoder takes {want}; resize them "
                        f"to {image_size}x{image_size} (load_image(path, {image_size}, resize=True)) or build the "
                        f"encoder with VisionConfig(image_size=...).")


def images_to_tensor(images: np.ndarray | torch.Tensor | list[np.ndarray], image_size: int | None = None,
                     channels: int | None = None) -> torch.Tensor:
    """Images as the encoder takes them: float32 (B, C, H, W) in [0, 1].

    Accepts uint8 images channels-last — one (H, W, C), a batch (B, H, W, C), one grayscale (H, W), or a
    list of (H, W, C) — divided by 255; or float32 / float16 (C, H, W) / (B, C, H, W) already in [0, 1]
    (checked, so pixel values in 0..255 stored as floats are caught). numpy arrays and tensors alike. With
    ``image_size`` / ``channels``, the result is checked against them (:func:`check_images`).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise DataError("images_to_tensor got an empty list; give at least one image.")
        try:
            images = torch.stack([torch.as_tensor(np.ascontiguousarray(i)) if not isinstance(i, torch.Tensor) else i
                                  for i in images])
        except (RuntimeError, TypeError, ValueError) as e:
            shapes = sorted({tuple(np.shape(i)) for i in images})
            raise DataError(f"images_to_tensor got a list of images of different shapes or kinds {shapes}; "
                            "resize them to one size first.") from e
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(t, torch.Tensor):
        raise DataError(f"images_to_tensor takes a numpy array or a torch.Tensor, got {type(images).__name__}.")
    if t.dtype == torch.uint8:
        if t.dim() == 2:
            t = t[None, :, :, None]  # one grayscale (H, W) -> (1, H, W, 1)
        elif t.dim() == 3:
            t = t[None]  # one (H, W, C) -> a batch of one
        elif t.dim() != 4:
            raise DataError(f"uint8 images must be (H, W), (H, W, C) or (B, H, W, C), got shape {_shape_str(t)}.")
        t = t.permute(0, 3, 1, 2).float().div_(255.0)  # channels-last uint8 -> (B, C, H, W) float in [0, 1]
    elif t.dtype in FLOAT_DTYPES:
        t = t[None] if t.dim() == 3 else t
        if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
            raise DataError(f"float images must lie in [0, 1], got values in [{float(t.min()):.4g}, "
                            f"{float(t.max()):.4g}]; divide 0..255 pixel values by 255.")
        t = t.float()
    else:
        raise DataError(f"images have dtype {str(t.dtype).removeprefix('torch.')}; give uint8 (H, W, C) pixels or "
                        "float32 (B, C, H, W) in [0, 1] (e.g. array.astype(numpy.float32), or numpy.uint8 pixels).")
    if image_size is not None or channels is not None:
        check_images(t, image_size if image_size is not None else t.shape[-1],
                     channels if channels is not None else t.shape[1])
    return t


class VisionEncoder(nn.Module):
    """A small ViT: images (B, C, H, W) float in [0, 1] -> features (B, N, d_model).

    ``N`` is ``config.num_tokens`` with ``pool="none"`` (patches in row-major order, the CLS token first when
    there is one) and 1 with ``pool="cls"`` / ``"mean"``. Extension points are the class attributes
    ``block_cls`` (the encoder block) and :meth:`embed` (patches -> token embeddings).
    """

    config_cls = VisionConfig
    block_cls: type[nn.Module] = EncoderBlock

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if not isinstance(config, VisionConfig):
            raise ConfigError(f"VisionEncoder takes a VisionConfig, got {type(config).__name__}; build one with "
                              "VisionConfig(...) or VisionConfig.from_dict(d).")
        self.config = config
        block_config = config.block_config()
        d = config.d_model
        # One linear map per non-overlapping patch, written as a convolution whose stride is its kernel.
        self.patch_embed = nn.Conv2d(config.channels, d, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if config.cls_token else None
        if config.pos_embedding == "1d":
            # llmcore's learned absolute positions over the patch sequence (the CLS token has none: it is
            # the only token of its kind, so its own learned vector already tells it apart).
            self.pos_embed = build_positions(block_config.replace(pos_encoding="learned",
                                                                   max_seq_len=config.num_patches))
            self.row_embed = self.col_embed = None
        else:
            self.pos_embed = None
            self.row_embed = nn.Embedding(config.grid_size, d)
            self.col_embed = nn.Embedding(config.grid_size, d)
        self.drop = dropout(config.dropout)
        self.blocks = nn.ModuleList(self.block_cls(block_config, i) for i in range(config.n_layers))
        self.norm = build_norm(block_config)
        # Fixed index tables (not saved: functions of the config) for the 2-D positions and the 1-D ids.
        g = config.grid_size
        self.register_buffer("patch_ids", torch.arange(config.num_patches)[None], persistent=False)  # (1, P)
        self.register_buffer("rows", torch.arange(g).repeat_interleave(g)[None], persistent=False)  # (1, P)
        self.register_buffer("cols", torch.arange(g).repeat(g)[None], persistent=False)  # (1, P)
        self.init_weights()

    @property
    def feature_dim(self) -> int:
        """d_enc, the width of each output feature vector."""
        return self.config.d_model

    @property
    def num_features(self) -> int:
        """N, the number of output vectors per image (fixed for a ViT)."""
        return self.config.num_tokens if self.config.pool == "none" else 1

    def init_weights(self) -> None:
        """N(0, init_std) for linears, embeddings, the patch projection and the CLS token; norms at identity;
        the blocks' residual projections scaled by 1/√(2·n_layers) (:func:`llmcore.modules.init_weights`)."""
        std = self.config.init_std
        init_weights(self, std, [self.blocks])
        # The patch projection is a linear map over (C·p·p) pixels; init_weights knows only nn.Linear.
        nn.init.normal_(self.patch_embed.weight, mean=0.0, std=std)
        nn.init.zeros_(self.patch_embed.bias)
        if self.cls is not None:
            nn.init.normal_(self.cls, mean=0.0, std=std)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> token embeddings (B, N, d_model) with positions, before the blocks."""
        x = images.to(self.patch_embed.weight.dtype) * 2.0 - 1.0  # zero-centred pixels: [0, 1] -> [-1, 1]
        x = self.patch_embed(x)  # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, P, D), patches row by row
        if self.pos_embed is not None:
            x = x + self.pos_embed(self.patch_ids)  # (1, P, D) broadcast over the batch
        else:
            x = x + self.row_embed(self.rows) + self.col_embed(self.cols)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + P, D)
        return self.drop(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a batch of images.

        Args:
            images: float (B, channels, image_size, image_size) with values in [0, 1] (see
                :func:`images_to_tensor` for uint8 arrays); float32, float16 or bfloat16.

        Returns:
            features (B, num_features, d_model): final-normed tokens, pooled as ``config.pool`` says.
        """
        check_images(images, self.config.image_size, self.config.channels)
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)  # bidirectional: every patch attends to every patch, no mask
        x = self.norm(x)  # (B, N, D)
        if self.config.pool == "cls":
            return x[:, :1]  # (B, 1, D)
        if self.config.pool == "mean":
            return x[:, int(self.cls is not None):].mean(dim=1, keepdim=True)  # patches only: (B, 1, D)
        return x


class PrecomputedFeatures(nn.Module):
    """Pass-through encoder for features computed elsewhere: (B, N, feature_dim) in, the same tensor out.

    The way to use any other encoder (a frozen pretrained one, another modality): compute its features once,
    store them (``numpy.save`` / ``safetensors.torch.save_file``), load them with
    :func:`llmcore.multimodal.load_features`, and give them to the fusion model through this module, which
    has no parameters and only checks the shape: rank 3, the last dimension ``feature_dim``, N equal to
    ``num_features`` unless that is None, and a float dtype (not float64).
    """

    def __init__(self, feature_dim: int, num_features: int | None = None) -> None:
        super().__init__()
        if not is_int(feature_dim, 1):
            raise ConfigError(f"PrecomputedFeatures feature_dim={feature_dim!r} is invalid: it must be a positive integer.")
        if num_features is not None and not is_int(num_features, 1):
            raise ConfigError(f"PrecomputedFeatures num_features={num_features!r} is invalid: it must be a positive "
                              "integer or None (any N).")
        self.feature_dim = feature_dim
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Check and return ``features`` (B, N, feature_dim) unchanged."""
        n = "N" if self.num_features is None else str(self.num_features)
        want = f"float32 (B, {n}, {self.feature_dim})"
        if not isinstance(features, torch.Tensor):
            raise DataError(f"features must be a torch.Tensor {want}, got {type(features).__name__}; convert with "
                            "torch.from_numpy(array).float() or load them with load_features(path).")
        if features.dtype not in FLOAT_DTYPES:
            raise DataError(f"features have dtype {str(features.dtype).removeprefix('torch.')}, expected {want}; "
                            "convert with features.float().")
        if features.dim() != 3:
            hint = "add the batch dimension with features[None]" if features.dim() == 2 else "pass (B, N, d)"
            raise DataError(f"features must be 3-D {want}, got shape {_shape_str(features)}; {hint}.")
        if features.shape[-1] != self.feature_dim:
            raise DataError(f"features have width {features.shape[-1]} (shape {_shape_str(features)}), expected "
                            f"{want}; build PrecomputedFeatures(feature_dim={features.shape[-1]}) or project them.")
        if self.num_features is not None and features.shape[1] != self.num_features:
            raise DataError(f"features hold {features.shape[1]} vectors per input (shape {_shape_str(features)}), "
                            f"expected {want}; use num_features=None for a variable count.")
        return features


__all__ = ["ModalityEncoder", "VisionConfig", "VisionEncoder", "PrecomputedFeatures", "images_to_tensor",
           "check_images"]
