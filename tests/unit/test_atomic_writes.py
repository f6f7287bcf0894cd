"""Atomic writes never go through a planted symlink and leave nothing behind when they fail (issue 16: "never
write through a symlink"; save_pretrained called directly, outside a run directory's own checks)."""

from __future__ import annotations

import os

import pytest
import torch

import llmcore.io
from llmcore import ModelConfig, TransformerLM
from llmcore.io import atomic_write_json, save_safetensors


def test_planted_temporary_and_target_symlinks_are_not_written_through(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me", encoding="utf-8")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    # The names the old code wrote its temporary files to, and the final names, all pointing at the secret.
    for name in ("config.json.tmp", "model.safetensors.tmp", "model.safetensors"):
        (model_dir / name).symlink_to(secret)
    TransformerLM(ModelConfig.from_preset("debug")).save_pretrained(model_dir)
    assert secret.read_text(encoding="utf-8") == "keep me"
    assert not (model_dir / "model.safetensors").is_symlink()  # the link itself was replaced by the real file
    assert TransformerLM.from_pretrained(model_dir).config.d_model == 32
    assert (model_dir / "config.json").stat().st_mode & 0o777 == 0o666 & ~llmcore.io.UMASK  # as open() would give


def test_a_failed_write_removes_its_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(tensors, name, metadata=None):  # half a file written, then the disk is full
        with open(name, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert os.listdir(tmp_path) == []
    atomic_write_json(tmp_path / "a.json", {"b": 1})
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_saved_tokenizer_replaces_planted_links_instead_of_following_them(tmp_path):
    from llmcore.tokenizer import SentencePieceTokenizer, load_tokenizer

    text = [f"line {i} of some text to train on, with words and more words" for i in range(200)]
    tok = SentencePieceTokenizer.train(text, vocab_size=320)
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me", encoding="utf-8")
    d = tmp_path / "m" / "tokenizer"
    d.mkdir(parents=True)
    for name in ("tokenizer.model", "llmcore_tokenizer.json"):
        (d / name).symlink_to(secret)
    TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size)).save_pretrained(tmp_path / "m",
                                                                                              tokenizer=tok)
    assert secret.read_text(encoding="utf-8") == "keep me"
    assert load_tokenizer(tmp_path / "m").encode("line 3") == tok.encode("line 3")
    tok.save_hf(tmp_path / "hf")  # the Hugging Face files go the same way
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["special_tokens_map.json", "tokenizer.model",
                                                                   "tokenizer_config.json"]


def test_a_rewritten_file_keeps_its_mode(tmp_path):
    target = tmp_path / "private.json"
    target.write_text("{}", encoding="utf-8")
    target.chmod(0o600)
    atomic_write_json(target, {"a": 1})
    assert target.stat().st_mode & 0o777 == 0o600 and target.read_text(encoding="utf-8").startswith("{")
