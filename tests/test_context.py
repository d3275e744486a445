"""Conversation context (issue 13): one window offline and live, the sentence-pair tokenization, the
text cache keyed by context, and the manifest's `"context"` field."""
from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from fdrl import config, data
from fdrl.data import Item
from fdrl.features import FeatureExtractor
from fdrl.inputs import Recipe, context_window
from fdrl.skips import SkipLog
from fdrl.text import TextEncoder
from stream.inference import Engine, Request

DIALOGUE = ["Hi, how are you?", "Terrible. My car broke down again.", "Oh no, I'm so sorry.", "Thanks. What a day."]
LABELS = list(config.load().labels.names)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_context_window_keeps_the_last_turns_oldest_first() -> None:
    assert context_window(DIALOGUE, 2) == (DIALOGUE[2], DIALOGUE[3])
    assert context_window(["a", "  ", "", " b "], 5) == ("a", "b")  # empty turns are no turns
    assert context_window(DIALOGUE, 0) == () and context_window([], 3) == ()
    assert Recipe(2, True, 3).context(deque(DIALOGUE)) == tuple(DIALOGUE[1:])


def test_the_turn_keeps_its_tokens_and_word_ids_with_context(encoder: TextEncoder) -> None:
    words = ["oh", "really?"]
    [alone] = encoder.tokenize([words])
    [paired] = encoder.tokenize([words], [("I won the lottery.",)])
    assert paired.ids[: alone.own] == alone.ids and paired.word_ids.tolist() == alone.word_ids.tolist()
    assert paired.segments == [0] * alone.own + [1] * (len(paired.ids) - alone.own)
    assert paired.ids[-1] == encoder.tokenizer.token_to_id("[SEP]")
    (plain, ids_a), (informed, ids_b) = encoder.encode([words, words], contexts=[(), ("I won the lottery.",)])
    assert plain.shape == informed.shape and ids_a.tolist() == ids_b.tolist()  # only the turn's own tokens
    assert not np.allclose(plain, informed, atol=1e-3)  # ... now read in the light of what came before


def test_context_is_cut_from_the_oldest_side_and_never_displaces_the_turn() -> None:
    short = TextEncoder(max_tokens=12)
    [row] = short.tokenize([["well", "ok"]], [("one two three four five six", "seven eight nine")])
    assert len(row.ids) == 12 and row.own == 4
    assert short.tokenizer.decode(row.ids[row.own:]) == "four five six seven eight nine"  # the most recent 8 tokens, [SEP]s included
    [long] = short.tokenize(["a b c d e f g h i j k l m n"], [("context",)])
    assert len(long.ids) == 12 and long.own == 12  # no room left: no context


def test_offline_and_live_read_the_same_context(tmp_path: Path) -> None:
    """A DailyDialog-style item (offline) and the live engine's stream history give one context and one input."""
    cfg = config.load(overrides=[f"paths.cache_dir='{tmp_path}'", "encoders.text_context_turns=2"])
    extractor = FeatureExtractor(cfg)
    items = [Item("neutral", "d1", text=turn, context=tuple(DIALOGUE[:k])) for k, turn in enumerate(DIALOGUE)]
    offline = extractor.encode(items)

    engine = object.__new__(Engine)  # the live context path needs only the recipe, not the models
    engine.recipe = Recipe.from_config(cfg)
    history: deque[str] = deque(maxlen=cfg.encoders.text_context_turns)
    first, rest = DIALOGUE[:2], DIALOGUE[2:]  # two batches: the second reads the first's transcripts from history
    contexts = engine.contexts([Request(np.zeros(1), history=history) for _ in first], first)
    history.extend(first)
    contexts += engine.contexts([Request(np.zeros(1), history=history) for _ in rest], rest)
    assert contexts == [extractor.recipe.context(it.context) for it in items]
    live = extractor.text.encode([t.split() for t in DIALOGUE], contexts=contexts)
    for arrays, (states, word_ids) in zip(offline, live):
        np.testing.assert_array_equal(arrays["text"], Recipe.text(states))


def test_a_request_without_history_has_no_context() -> None:
    engine = object.__new__(Engine)
    engine.recipe = Recipe(2, True, 2)
    assert engine.contexts([Request(np.zeros(1)), Request(np.zeros(1))], ["a", "b"]) == [(), ()]


def test_text_cache_is_keyed_by_context(tmp_path: Path) -> None:
    cfg = config.load(overrides=[f"paths.cache_dir='{tmp_path}'", "encoders.text_context_turns=2"])
    extractor = FeatureExtractor(cfg)
    a, b, c = extractor.encode([Item("neutral", "", text="Really?", context=("I won the lottery!",)),
                                Item("neutral", "", text="Really?", context=("My dog died.",)),
                                Item("neutral", "", text="Really?")])
    assert not np.allclose(a["text"], b["text"]) and not np.allclose(a["text"], c["text"])
    again = FeatureExtractor(cfg).encode([Item("neutral", "", text="Really?", context=("My dog died.",))])[0]
    np.testing.assert_array_equal(again["text"], b["text"])  # read back from the cache under its own key


def write_lines(path: Path, *records: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_manifest_context_field_loads_and_round_trips(tmp_path: Path) -> None:
    m = write_lines(tmp_path / "m.jsonl", {"label": "surprise", "text": "Really?", "context": [" Guess what. ", "I won!"]},
                    {"label": "neutral", "text": "Really?"})
    items = data.load_manifest(m, LABELS)
    assert items[0].context == ("Guess what.", "I won!") and items[1].context == ()
    data.write_manifest(tmp_path / "again.jsonl", items)
    assert [it.context for it in data.load_manifest(tmp_path / "again.jsonl", LABELS)] == [it.context for it in items]


@pytest.mark.parametrize("value, message", [
    ("I won!", "'context' must be a list of strings"),
    (["fine", 3], "'context' must be a list of strings"),
    ({"turn": "hi"}, "'context' must be a list of strings"),
    (["x" * 60, "y" * 60], "'context' is 120 characters long in all, over the limit of 100"),
])
def test_manifest_context_bad_values_name_the_line(tmp_path: Path, value: object, message: str) -> None:
    m = write_lines(tmp_path / "m.jsonl", {"label": "neutral", "text": "ok"}, {"label": "neutral", "text": "hm", "context": value})
    skips = SkipLog(strict=False)
    items = data.load_manifest(m, LABELS, skips, max_text_chars=100)
    assert len(items) == 1 and len(skips) == 1
    [skip] = skips.skips
    assert skip.where.endswith("line 2") and message in skip.reason
