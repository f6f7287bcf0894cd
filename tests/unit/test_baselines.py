"""The translation-memory baselines (llmcore.translation.baselines): nearest neighbour by TF-IDF cosine over
word uni+bigrams, and memory + dictionary with a threshold chosen on held-out pairs."""

from __future__ import annotations

import pytest

from llmcore.errors import DataError
from llmcore.translation import DictionaryBaseline, MemoryDictionaryBaseline, TranslationMemory

PAIRS = [("I like tea.", "我喜欢茶。"), ("Tea likes me.", "茶喜欢我。"), ("Where is the station?", "车站在哪里？"),
         ("I like tea.", "我爱茶。"), ("Good morning.", "早上好。")]


def test_memory_returns_the_target_of_the_nearest_source():
    memory = TranslationMemory(PAIRS)
    assert memory.sources == ["I like tea.", "Tea likes me.", "Where is the station?", "Good morning."]
    assert memory(["I like tea."]) == ["我喜欢茶。"]  # a duplicate source keeps its first target
    index, score = memory.search(["I like tea.", "i LIKE tea"])
    assert index == [0, 0] and score[0] == pytest.approx(1.0) and 0.5 < score[1] < 1.0
    # Bigrams carry word order: the same words in another order are a worse match than the sentence itself.
    assert memory(["Where is the tea station?"]) == ["车站在哪里？"]
    assert memory.search(["tea like I"])[1][0] < memory.search(["I like tea"])[1][0]
    # Nothing in common: cosine 0 (the first pair is returned, and memory + dictionary falls back).
    assert memory.search(["zebra"]) == ([0], [0.0])
    with pytest.raises(DataError, match="at least one"):
        TranslationMemory([])


def test_memory_and_dictionary_switch_at_the_threshold_fitted_on_held_out_pairs():
    memory = TranslationMemory(PAIRS)
    combined = MemoryDictionaryBaseline(memory, DictionaryBaseline({"good": "好", "night": "晚上"}), threshold=0.5)
    assert combined(["Good morning.", "good night"]) == ["早上好。", "好晚上"]
    exact = lambda hyps, refs: sum(h == r for h, r in zip(hyps, refs))  # noqa: E731
    # Held-out pairs where the memory is right only on near-exact matches: a high threshold wins.
    assert combined.fit_threshold(["Good morning.", "good night"], ["早上好。", "好晚上"], exact) > 0.3
    assert combined(["good night"]) == ["好晚上"]
    # Where the memory is always right, the lowest threshold wins the tie.
    assert combined.fit_threshold(["Good morning.", "I like tea."], ["早上好。", "我喜欢茶。"], exact) == 0.0


def test_search_never_returns_an_excluded_group_and_is_unchanged_without_one():
    keys = ["tea", "tea2", "station", "tea", "morning"]  # the duplicate "I like tea." keeps its first key
    memory = TranslationMemory(PAIRS, keys=keys)
    queries = ["I like tea.", "Good morning.", "Where is the station?"]
    assert memory.search(queries, exclude_keys=["nothing", "nothing", "nothing"]) == memory.search(queries)
    index, score = memory.search(queries, exclude_keys=["tea", "morning", "station"])
    assert [memory.sources[i] for i in index[:1]] == ["Tea likes me."]  # the next-best, not its own group
    assert all(keys[i] != k for i, k in zip(index, ["tea", "morning", "station"]))
    assert score[0] < 1.0
    with pytest.raises(DataError, match="keys for"):
        TranslationMemory(PAIRS, keys=["a"])
    with pytest.raises(DataError, match="exclude_keys"):
        memory.search(queries, exclude_keys=["tea"])


def test_augmented_sources_carry_the_match_and_the_fifth_of_its_cosine():
    from llmcore.translation.fuzzy import FUZZY_TAGS, augment_sources, fuzzy_tag

    assert [fuzzy_tag(s) for s in (0.0, 0.19, 0.2, 0.79, 0.8, 1.0)] == ["<fm0>", "<fm0>", "<fm1>", "<fm3>",
                                                                         "<fm4>", "<fm4>"]
    assert len(FUZZY_TAGS) == 5
    memory = TranslationMemory(PAIRS, keys=["a", "b", "c", "a", "d"])
    assert augment_sources(memory, ["I like tea."]) == ["I like tea. <fm4> 我喜欢茶。"]
    # In training a sentence's own group is skipped, so the match is never the answer itself.
    (row,) = augment_sources(memory, ["I like tea."], exclude_keys=["a"])
    assert row.startswith("I like tea. <fm") and "茶喜欢我。" in row and not row.startswith("I like tea. <fm4>")
