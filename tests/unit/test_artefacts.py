"""Every artefact a command writes is usable by the next command (issue 15): a ``prepare`` output trains, a
LoRA adapter merges and loads, a classifier evaluates and predicts, a pairs fine-tune translates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmcore.cli import main
from llmcore.errors import ConfigError
from llmcore.training.run import RunConfig


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[k]) for r in rows for k in ("train_loss", "val_loss") if k in r]


# ---------------------------------------------------------------------------------------------- prepare -> train
def test_train_on_a_prepared_directory_equals_training_on_its_text(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200)),
                    encoding="utf-8")
    assert main(["prepare", "--data", str(text), "--tokenizer", "char", "--out", str(tmp_path / "prep"),
                 "--no-progress"]) == 0
    common = ["train", "--preset", "debug", "--max-steps", "4", "--batch-size", "2", "--eval-interval", "2",
              "--device", "cpu", "--no-progress", "--set", "max_seq_len=32", "--set", "log_interval=1"]
    assert main([*common, "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--data", str(text), "--tokenizer", "char", "--out", str(tmp_path / "b")]) == 0
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) >= 4 and a == b  # same ids, same model, same order: the same losses exactly
    for name in ("meta.json", "train-00000.bin", "val-00000.bin"):  # linked as they are
        assert (tmp_path / "a" / "data" / name).read_bytes() == (tmp_path / "prep" / name).read_bytes()
    # resuming the run reuses its linked data; a tokenizer flag beside a prepared directory is refused
    assert main([*common, "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "a"), "--max-steps", "6",
                 "--resume"]) == 0
    capsys.readouterr()
    assert main([*common, "--data", str(tmp_path / "prep"), "--tokenizer", "byte", "--out", str(tmp_path / "c")]) == 2
    assert "prepared directory with its own tokenizer" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="only --data entry"):
        RunConfig(data=[str(tmp_path / "prep"), str(text)])


# ---------------------------------------------------------------------------------------------- LoRA
@pytest.fixture
def base(tiny_config, tmp_path):
    """A tiny byte-level LM with the translator's tags, its directory and a text file to fine-tune on."""
    from llmcore.models import TransformerLM
    from llmcore.tokenizer import ByteTokenizer

    tok = ByteTokenizer(specials=("<bos>", "<eos>", "<pad>", "<2en>", "<2zh>"))
    TransformerLM(tiny_config.replace(vocab_size=tok.vocab_size)).save_pretrained(tmp_path / "base", tokenizer=tok)
    text = tmp_path / "lm.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return tmp_path / "base", text


FAST = ["--batch-size", "2", "--device", "cpu", "--no-progress", "--set", "eval_batches=1"]


def test_lora_adapter_merges_and_loads_in_every_command(base, tmp_path, capsys):
    import torch

    from llmcore.finetune import load_adapter_model
    from llmcore.models import load_model

    model, text = base
    adapter, merged = tmp_path / "lora", tmp_path / "lora-merged"
    assert main(["finetune", "--model", str(model), "--data", str(text), "--out", str(adapter), "--strategy", "lora",
                 "--max-steps", "4", "--lr", "0.02", *FAST]) == 0
    assert main(["merge", "--adapter", str(adapter)]) == 0  # default --out: ADAPTER-merged
    assert f"model in {merged}" in capsys.readouterr().out
    assert (merged / "config.json").is_file() and (merged / "tokenizer").is_dir()
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        want = load_adapter_model(adapter)(ids)  # base + unmerged adapter
        got = load_model(merged)(ids)
        plain = load_model(model)(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (want - plain).abs().max() > 1e-3  # the adapter changed the model: the comparison above means something
    outputs = []
    for d in (adapter, merged):
        assert main(["generate", "--model", str(d), "--prompt", "the quick", "--max-new-tokens", "12",
                     "--device", "cpu"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("the quick")
    for d in (adapter, merged):
        assert main(["eval", "--model", str(d), "--data", str(text), "--device", "cpu", "--max-batches", "2"]) == 0
        outputs.append(capsys.readouterr().out.split(": ", 1)[1])
    assert outputs[2] == outputs[3]  # same loss / perplexity / accuracy printed
    # a moved base is named with the fix; --base points at it
    model.rename(tmp_path / "moved")
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "m2")]) == 2
    assert "--base BASE_DIR" in capsys.readouterr().err
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "m2"), "--base", str(tmp_path / "moved")]) == 0
    assert main(["merge", "--adapter", str(tmp_path / "moved")]) == 2
    assert "has no adapter_config.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- classification
def test_classify_fine_tune_evaluates_and_predicts_by_label_name(base, tmp_path, capsys, caplog):
    model, _ = base
    rows = [("good fine great nice", "pos"), ("bad awful poor sad", "neg")] * 12
    data = tmp_path / "cls.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{t}\t{lb}\n" for t, lb in rows), encoding="utf-8")
    out = tmp_path / "cls"
    with caplog.at_level("INFO", logger="llmcore"):
        assert main(["finetune", "--model", str(model), "--data", str(data), "--task", "classify", "--out", str(out),
                     "--max-steps", "30", "--lr", "0.003", "--eval-interval", "10", *FAST]) == 0
    evals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert evals and all("acc" in e and "ppl" not in e for e in evals)  # a class loss has no perplexity
    assert json.loads((out / "config.json").read_text())["config"]["extra"]["label_names"] == ["neg", "pos"]
    capsys.readouterr()
    assert main(["eval", "--task", "classify", "--model", str(out), "--data", str(data), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "24 examples, accuracy 1.0000" in text
    assert [line.split() for line in text.splitlines()[2:]] == [["neg", "12", "0"], ["pos", "0", "12"]]
    assert main(["classify", "--model", str(out), "bad awful poor sad", "good fine great nice", "--device", "cpu"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["neg", "pos"]
    assert main(["classify", "--model", str(model), "x"]) == 2  # a plain LM is not a classifier
    assert "finetune --task classify" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- pairs -> translate
def test_pairs_fine_tune_without_tags_translates(base, tmp_path, capsys):
    from llmcore.translation.translator import Translator

    model, _ = base
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("src\ttgt\n" + "hello\tni hao\nthank you\txie xie\n" * 8, encoding="utf-8")
    want = {"src_lang_tag": "<2en>", "tgt_lang_tag": "<2zh>", "template": "Q: {src} A:", "memory": None}
    for strategy in ("full", "lora"):
        out = tmp_path / strategy
        assert main(["finetune", "--model", str(model), "--data", str(pairs), "--task", "pairs", "--out", str(out),
                     "--template", "Q: {src} A:", "--strategy", strategy, "--max-steps", "2", *FAST]) == 0
        assert Translator.from_pretrained(out).settings == want  # the prompt it was trained on, read back
        capsys.readouterr()
        assert main(["translate", "--model", str(out), "hello", "--max-new-tokens", "4", "--device", "cpu"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 1


def test_pairs_fine_tune_refuses_a_tokenizer_without_tags_at_the_start(tiny_config, tmp_path, capsys):
    from llmcore.models import TransformerLM
    from llmcore.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    TransformerLM(tiny_config.replace(vocab_size=tok.vocab_size)).save_pretrained(tmp_path / "m", tokenizer=tok)
    argv = ["finetune", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "missing.tsv"), "--task", "pairs",
            "--out", str(tmp_path / "o")]
    assert main(argv) == 2  # before the (missing) data is read
    err = capsys.readouterr().err
    assert "--tgt-tag" in err and "<2zh>" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--tgt-tag", "<2xx>"]) == 2
    assert "--tgt-tag '<2xx>' is not one token" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("flag,task", [("--max-len", "classify"), ("--max-len", "pairs"), ("--block-size", "lm")])
def test_lengths_past_the_context_are_refused_naming_it(base, tmp_path, capsys, flag, task):
    model, text = base
    context = json.loads((model / "config.json").read_text())["config"]["max_seq_len"]
    assert main(["finetune", "--model", str(model), "--data", str(text), "--task", task, "--out", str(tmp_path / "o"),
                 flag, str(context + 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llmcore finetune: error: {flag} {context + 1} is outside the model's context of {context} tokens "
                   f"(max_seq_len); pass {flag} {context} or less, or leave it out to use the whole context.")


def test_lora_classifier_adapter_predicts_as_its_merged_model(base, tmp_path, capsys):
    model, _ = base
    data = tmp_path / "cls.tsv"
    data.write_text("text\tlabel\n" + "good fine\tpos\nbad awful\tneg\n" * 6, encoding="utf-8")
    out = tmp_path / "clora"
    assert main(["finetune", "--model", str(model), "--data", str(data), "--task", "classify", "--strategy", "lora",
                 "--out", str(out), "--max-steps", "3", "--lr", "0.02", *FAST]) == 0
    assert main(["merge", "--adapter", str(out)]) == 0
    capsys.readouterr()
    printed = []
    for d in (out, tmp_path / "clora-merged"):  # head, label names and adapter all come along
        assert main(["classify", "--model", str(d), "good fine", "bad awful", "--device", "cpu"]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and {line.split("\t")[0] for line in printed[0].splitlines()} <= {"neg", "pos"}
