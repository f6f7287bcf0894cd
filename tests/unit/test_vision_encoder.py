"""The ViT encoder, the pass-through encoder, the encoder protocol and image-tensor conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcore.errors import ConfigError, DataError
from llmcore.modules import EncoderBlock
from llmcore.multimodal import (
    ModalityEncoder,
    PrecomputedFeatures,
    VisionConfig,
    VisionEncoder,
    images_to_tensor,
    make_shapes_dataset,
)


def tiny(**kw) -> VisionConfig:
    return VisionConfig(**{"image_size": 16, "patch_size": 4, "d_model": 32, "n_layers": 2, "n_heads": 4, **kw})


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return images_to_tensor([ex.image for ex in make_shapes_dataset(3, "train", seed=0, image_size=16)])


@pytest.mark.parametrize("pool,cls_token,n", [("none", False, 16), ("none", True, 17), ("cls", True, 1),
                                                ("mean", False, 1), ("mean", True, 1)])
@pytest.mark.parametrize("pos", ["1d", "2d"])
def test_output_shape_per_pool_mode(images, pool, cls_token, n, pos):
    enc = VisionEncoder(tiny(pool=pool, cls_token=cls_token, pos_embedding=pos))
    out = enc(images)
    assert out.shape == (3, n, 32)
    assert (enc.num_features, enc.feature_dim) == (n, 32)
    assert isinstance(enc, ModalityEncoder)
    assert all(isinstance(b, EncoderBlock) for b in enc.blocks) and len(enc.blocks) == 2
    assert torch.isfinite(out).all()


def test_pooling_is_what_it_says(images):
    torch.manual_seed(0)
    enc = VisionEncoder(tiny(cls_token=True)).eval()
    tokens = enc(images)  # (B, 17, D), CLS first
    enc.config.pool = "cls"
    torch.testing.assert_close(enc(images), tokens[:, :1])
    enc.config.pool = "mean"
    torch.testing.assert_close(enc(images), tokens[:, 1:].mean(1, keepdim=True))


def test_gradients_reach_every_parameter(images):
    for kw in ({"cls_token": True, "pool": "cls"}, {"pos_embedding": "2d", "pool": "mean"}):
        enc = VisionEncoder(tiny(**kw))
        enc(images).pow(2).sum().backward()
        missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient for {missing}"


def test_features_depend_on_the_image_and_its_positions(images):
    enc = VisionEncoder(tiny()).eval()
    out = enc(images)
    assert not torch.allclose(out[0], out[1])  # different images, different features
    # Shift the image right by one patch (wrapping): patch (r, c) moves to (r, c + 1). Attention is
    # permutation-equivariant, so only the position embeddings can make the moved patch's feature differ.
    g = 4
    perm = torch.tensor([r * g + (c + 1) % g for r in range(g) for c in range(g)])  # new index of each patch
    moved = torch.roll(images[:1], shifts=4, dims=-1)
    assert not torch.allclose(enc(moved)[:, perm], enc(images[:1]), atol=1e-4)
    with torch.no_grad():
        enc.pos_embed.weight.zero_()  # without positions only content counts: the check above would fail
    torch.testing.assert_close(enc(moved)[:, perm], enc(images[:1]), atol=1e-5, rtol=1e-5)


def test_batched_equals_one_by_one(images):
    enc = VisionEncoder(tiny(cls_token=True)).eval()
    batch = enc(images)
    alone = torch.cat([enc(images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_init_is_reproducible_and_config_round_trips():
    torch.manual_seed(1)
    a = VisionEncoder(tiny())
    torch.manual_seed(1)
    b = VisionEncoder(tiny())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not any(k in a.state_dict() for k in ("patch_ids", "rows", "cols"))  # tables are not saved
    cfg = tiny(cls_token=True, pool="cls", dropout=0.1, pos_embedding="2d")
    d = cfg.to_dict()
    assert d["d_ff"] == 128 and VisionConfig.from_dict(d) == cfg
    import json

    assert VisionConfig.from_dict(json.loads(json.dumps(d))) == cfg


@pytest.mark.parametrize("kw,match", [
    ({"image_size": 30}, "image_size=30 is not divisible by patch_size=4"),
    ({"pool": "max"}, "pool='max' is invalid"),
    ({"pool": "cls"}, "pool='cls' needs cls_token=True"),
    ({"d_model": 30}, "d_model=30 is not divisible by n_heads=4"),
    ({"pos_embedding": "rope"}, "pos_embedding='rope' is invalid"),
    ({"patch_size": 0}, "patch_size=0 is invalid"),
])
def test_bad_config_raises_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kw)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"Unknown VisionConfig keys \['patchsize'\]"):
        VisionConfig.from_dict({"patchsize": 4})


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(2, 3, 16, 16, dtype=torch.float64), r"dtype float64; the encoder takes float32 \(B, 3, 16, 16\)"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.int32), r"dtype int32.*images.float\(\) / 255"),
    (torch.zeros(2, 16, 16, 3, dtype=torch.uint8), r"uint8 .*images_to_tensor"),
    (torch.zeros(2, 16, 16, 3), r"have 16 channels .*channels-last\? permute"),
    (torch.zeros(2, 1, 16, 16), r"have 1 channels"),
    (torch.zeros(2, 4, 16, 16), r"have 4 channels .*drop the alpha channel"),
    (torch.zeros(2, 3, 32, 32), r"images are 32x32 .*takes float32 \(B, 3, 16, 16\).*resize them to 16x16"),
    (torch.zeros(3, 16, 16), r"must be 4-D .*images\[None\]"),
    (np.zeros((2, 3, 16, 16), np.float32), r"must be a torch.Tensor .*images_to_tensor"),
])
def test_bad_images_raise_one_line_data_error(bad, match):
    enc = VisionEncoder(tiny())
    with pytest.raises(DataError, match=match) as e:
        enc(bad)
    assert "\n" not in str(e.value)


def test_half_precision_inputs_are_accepted(images):
    enc = VisionEncoder(tiny()).eval()
    torch.testing.assert_close(enc(images.half()), enc(images), atol=2e-2, rtol=2e-2)


def test_images_to_tensor_layouts_and_errors():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    t = images_to_tensor(hwc)
    assert t.shape == (1, 3, 16, 16) and t.dtype == torch.float32
    assert torch.equal(t[0, :, 2, 5], torch.from_numpy(hwc[2, 5]).float() / 255)  # channels moved first
    assert torch.equal(images_to_tensor(np.stack([hwc, hwc])), images_to_tensor([hwc, hwc]))
    assert images_to_tensor(hwc[:, :, 0]).shape == (1, 1, 16, 16)  # one grayscale image
    assert torch.equal(images_to_tensor(t), t)  # float (B, C, H, W) in [0, 1] passes through
    assert images_to_tensor(t[0]).shape == (1, 3, 16, 16)
    with pytest.raises(DataError, match="dtype float64; give uint8"):
        images_to_tensor(hwc / 255.0)
    with pytest.raises(DataError, match="dtype int32"):
        images_to_tensor(hwc.astype(np.int32))
    with pytest.raises(DataError, match=r"must lie in \[0, 1\].*divide 0..255 pixel values by 255"):
        images_to_tensor(torch.from_numpy(hwc).permute(2, 0, 1).float())
    with pytest.raises(DataError, match="different shapes"):
        images_to_tensor([hwc, hwc[:8]])
    with pytest.raises(DataError, match="have 4 channels"):
        images_to_tensor(np.zeros((16, 16, 4), np.uint8), image_size=16, channels=3)
    with pytest.raises(DataError, match="images are 16x16"):
        images_to_tensor(hwc, image_size=32)


def test_precomputed_features_pass_through_and_check():
    enc = PrecomputedFeatures(feature_dim=8, num_features=5)
    assert isinstance(enc, ModalityEncoder) and not list(enc.parameters())
    x = torch.randn(2, 5, 8)
    assert enc(x) is x
    assert PrecomputedFeatures(8)(torch.randn(2, 7, 8)).shape == (2, 7, 8)  # any N when None
    for bad, match in [(torch.randn(5, 8), r"must be 3-D float32 \(B, 5, 8\).*features\[None\]"),
                       (torch.randn(2, 5, 6), r"width 6 .*expected float32 \(B, 5, 8\)"),
                       (torch.randn(2, 4, 8), r"hold 4 vectors per input"),
                       (torch.randn(2, 5, 8, dtype=torch.float64), r"dtype float64.*features.float\(\)"),
                       (np.zeros((2, 5, 8), np.float32), r"must be a torch.Tensor")]:
        with pytest.raises(DataError, match=match):
            enc(bad)
    with pytest.raises(ConfigError, match="feature_dim=0 is invalid"):
        PrecomputedFeatures(0)


def test_protocol_is_structural():
    class Audio(torch.nn.Module):  # any module with the two attributes is an encoder
        feature_dim, num_features = 16, None

        def forward(self, wav):
            return wav.unfold(-1, 16, 16)  # (B, T) -> (B, T // 16, 16)

    assert isinstance(Audio(), ModalityEncoder)
    assert not isinstance(torch.nn.Linear(2, 2), ModalityEncoder)


def test_colour_reaches_the_features_of_an_untrained_encoder():
    # Issue 17's fused models answered colour questions at chance; the first suspect was an input path that
    # erases colour (a grey conversion, a per-channel normalisation). It does not: the same square in each
    # of the six colours gives six feature vectors far apart, at the object's patch, before any training.
    from llmcore.multimodal.shapes import COLOURS, ShapeObject, draw_scene

    enc = VisionEncoder(VisionConfig(image_size=36, patch_size=12, d_model=32, n_layers=1, n_heads=4,
                                     pos_embedding="2d")).eval()
    imgs = images_to_tensor([draw_scene([ShapeObject("large", c, "square", "centre")], 36) for c in COLOURS])
    with torch.no_grad():
        centre = enc(imgs)[:, 4]  # (6, d): the centre cell's token
    dist = torch.cdist(centre, centre)  # (6, 6)
    off = dist[~torch.eye(len(COLOURS), dtype=torch.bool)]
    assert off.min() > 0.1 * centre.norm(dim=-1).mean()  # every pair of colours apart by >10 % of a norm
