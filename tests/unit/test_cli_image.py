"""``llmcore generate --image FILE``: a fusion model conditioned on one image, the same tokens as the Python API,
and one-line errors (exit 2) for an image a model cannot take."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from llmcore.cli import main
from llmcore.config import ModelConfig
from llmcore.models import CrossAttentionFusionLM, FusionConfig, PrefixFusionLM, TransformerLM
from llmcore.multimodal import images_to_tensor
from llmcore.tokenizer import ByteTokenizer

VISION = dict(image_size=16, patch_size=4, d_model=32, n_layers=1, n_heads=4)
PROMPT = "ab"
HAS_PIL = importlib.util.find_spec("PIL") is not None


def fusion_dir(tmp_path, kind):
    torch.manual_seed(0)
    model = kind(FusionConfig.from_preset("debug", vocab_size=259, max_seq_len=48, vision=VISION)).eval()
    for name, p in model.named_parameters():  # open the gates, so the image changes the output
        if name.endswith("_gate"):
            torch.nn.init.constant_(p, 0.7)
    d = tmp_path / kind.__name__
    model.save_pretrained(d, tokenizer=ByteTokenizer())
    return d, model


def image_file(tmp_path, size=16, channels=3, name="image.npy", dtype=np.uint8):
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, channels)).astype(dtype)
    path = tmp_path / name
    np.save(path, pixels)
    return path, pixels


def expected(model, pixels, new=5, with_image=True):
    ids = torch.tensor([ByteTokenizer().encode(PROMPT)])
    kw = {"images": images_to_tensor(pixels[None])} if with_image else {}
    seq = model.generate(ids, max_new_tokens=new, **kw)
    return PROMPT + ByteTokenizer().decode(seq[0, ids.shape[1]:].tolist())


def generate(capsys, *argv):
    code = main(["generate", *argv, "--prompt", PROMPT, "--max-new-tokens", "5", "--device", "cpu"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind", [PrefixFusionLM, CrossAttentionFusionLM])
@pytest.mark.parametrize("stream", [False, True])
def test_image_conditions_generation_as_the_python_api_does(kind, stream, tmp_path, capsys):
    d, model = fusion_dir(tmp_path, kind)
    path, pixels = image_file(tmp_path)
    code, out, err = generate(capsys, "--model", str(d), "--image", str(path), *(["--stream"] if stream else []))
    assert code == 0, err
    assert out == expected(model, pixels) + "\n"
    assert out != expected(model, pixels, with_image=False) + "\n"  # the image mattered


def test_fusion_model_without_image_generates_text_only_with_a_note(tmp_path, capsys):
    d, model = fusion_dir(tmp_path, CrossAttentionFusionLM)
    code, out, err = generate(capsys, "--model", str(d))
    assert code == 0
    assert out == expected(model, None, with_image=False) + "\n"
    assert "no --image" in err and "--image FILE" in err


def test_image_on_a_text_only_model_is_one_line(tmp_path, capsys):
    d = tmp_path / "lm"
    TransformerLM(ModelConfig.from_preset("debug", vocab_size=259)).save_pretrained(d, tokenizer=ByteTokenizer())
    path, _ = image_file(tmp_path)
    code, out, err = generate(capsys, "--model", str(d), "--image", str(path))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "--image needs a multimodal model" in err and "TransformerLM" in err and "drop --image" in err


@pytest.mark.parametrize("bad, match", [
    (dict(size=32), "32x32 pixels, the model takes 16x16"),
    (dict(channels=4), "expected uint8 (H, W, 3)"),
    (dict(dtype=np.float32), "float32 pixels, expected uint8"),
])
def test_an_image_the_model_cannot_take_is_one_line(bad, match, tmp_path, capsys):
    d, _ = fusion_dir(tmp_path, PrefixFusionLM)
    path, _ = image_file(tmp_path, **bad)
    code, out, err = generate(capsys, "--model", str(d), "--image", str(path))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and match in err, err
    if "size" in bad:
        assert "--resize-image" in err


def test_missing_image_file_is_one_line(tmp_path, capsys):
    d, _ = fusion_dir(tmp_path, PrefixFusionLM)
    code, _, err = generate(capsys, "--model", str(d), "--image", str(tmp_path / "nope.npy"))
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not HAS_PIL, reason="PNG needs Pillow (the vision extra)")
def test_png_gives_the_same_tokens_as_npy_and_resize_image_resizes(tmp_path, capsys):
    from PIL import Image

    d, model = fusion_dir(tmp_path, CrossAttentionFusionLM)
    _, pixels = image_file(tmp_path)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    code, out, err = generate(capsys, "--model", str(d), "--image", str(tmp_path / "image.png"))
    assert code == 0, err
    assert out == expected(model, pixels) + "\n"
    big, _ = image_file(tmp_path, size=32, name="big.npy")
    code, out, err = generate(capsys, "--model", str(d), "--image", str(big), "--resize-image")
    assert code == 0, err


def test_an_empty_prompt_starts_from_the_image_prefix_alone(tmp_path, capsys):
    d, model = fusion_dir(tmp_path, PrefixFusionLM)
    path, pixels = image_file(tmp_path)
    assert main(["generate", "--model", str(d), "--image", str(path), "--max-new-tokens", "4", "--device", "cpu"]) == 0
    new = model.generate(None, images=images_to_tensor(pixels[None]), max_new_tokens=4)  # (1, 4): new tokens only
    assert capsys.readouterr().out == ByteTokenizer().decode(new[0].tolist()) + "\n"
