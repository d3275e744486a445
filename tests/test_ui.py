"""The live view's state machine, its rendering, and the plain line output."""
from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

import stream.ui as ui
from fdrl.errors import UserError
from fdrl.labels import CANONICAL
from stream.events import Error, FaceUpdate, Level, SpeechStarted, Stats, Utterance
from stream.ui import LABEL_COLOURS, LiveView, ViewState, level_fraction, pick_view, run_live, run_plain

SCORES = {"neutral": 0.05, "happiness": 0.02, "sadness": 0.03, "anger": 0.81, "fear": 0.04, "disgust": 0.03,
          "surprise": 0.02}


def utt(index: int, start: float, end: float, text: str = "", label: str = "anger", final: bool = True,
        scores: dict[str, float] | None = None, latency: float | None = None, stream: str = "mic") -> Utterance:
    timings = {"end_to_label": latency} if latency is not None else {}
    return Utterance(stream=stream, index=index, start=start, end=end, text=text, label=label, scores=scores or SCORES,
                     final=final, modalities=("audio", "text") if final else ("audio",), timings=timings)


def stats(**kw) -> Stats:
    base = dict(stream="mic", time=9.0, segments_closed=3, utterances=3, errors=1, no_speech=0, audio_dropped_s=0.5,
                frames_dropped=3, queue_depths={"asr": 0, "model": 2}, compute_ratio=0.35, overflows=2)
    return Stats(**{**base, **kw})


async def agen(events, pause: float = 0.0):
    for e in events:
        yield e
    if pause:
        await asyncio.sleep(pause)


def test_colour_map_covers_every_canonical_label_with_distinct_hex():
    assert set(LABEL_COLOURS) == set(CANONICAL)
    assert len(set(LABEL_COLOURS.values())) == len(CANONICAL)
    assert all(c.startswith("#") and len(c) == 7 for c in LABEL_COLOURS.values())


def test_level_fraction_maps_db_onto_meter():
    assert level_fraction(-60.0) == 0.0
    assert level_fraction(-30.0) == 0.5
    assert level_fraction(0.0) == 1.0
    assert level_fraction(-90.0) == 0.0 and level_fraction(6.0) == 1.0  # clamped


def test_final_replaces_provisional_in_place_and_late_provisional_is_ignored():
    s = ViewState()
    s.apply(utt(0, 1.0, 2.0, "", label="neutral", final=False, scores={"neutral": 0.6, "anger": 0.4}))
    assert [(u.text, u.final) for u in s.lines()] == [("", False)]
    assert s.label == "neutral" and s.scores == {"neutral": 0.6, "anger": 0.4}
    s.apply(utt(0, 1.0, 2.0, "stop it", final=True))
    assert [(u.text, u.final, u.label) for u in s.lines()] == [("stop it", True, "anger")]
    assert s.label == "anger" and s.scores["anger"] == 0.81
    s.apply(utt(0, 1.0, 2.0, "", label="neutral", final=False))  # reordered duplicate
    assert [(u.text, u.final) for u in s.lines()] == [("stop it", True)]
    assert s.label == "anger"


def test_current_emotion_follows_the_newest_segment():
    s = ViewState()
    s.apply(utt(0, 1.0, 2.0, final=False, label="anger"))
    s.apply(utt(1, 3.0, 4.0, final=False, label="sadness", scores={"sadness": 0.7, "neutral": 0.3}))
    s.apply(utt(0, 1.0, 2.0, "late final", final=True, label="anger"))  # older segment finishes later
    assert s.label == "sadness" and s.current == ("mic", 1)
    assert [u.index for u in s.lines()] == [0, 1]


def test_transcript_keeps_the_last_n_utterances():
    s = ViewState(max_transcript=3)
    for i in range(5):
        s.apply(utt(i, float(i), i + 0.5, f"line {i}"))
    assert [u.text for u in s.lines()] == ["line 2", "line 3", "line 4"]


def test_latency_last_and_median_from_final_utterances_only():
    s = ViewState()
    assert s.latency_p50 is None
    s.apply(utt(0, 0, 1, final=False, latency=5.0))  # provisional latency is not the label the user keeps
    for i, lat in enumerate([0.2, 0.9, 0.4]):
        s.apply(utt(i, i, i + 1, "x", latency=lat))
    assert s.latency_last == 0.4
    assert s.latency_p50 == 0.4
    s.apply(utt(3, 3, 4, "x", latency=0.6))
    assert s.latency_p50 == pytest.approx(0.5)


def test_counters_face_level_and_errors():
    s = ViewState()
    s.apply(Level("mic", 1.0, -23.0, True))
    assert (s.rms_db, s.speaking) == (-23.0, True)
    s.apply(Level("mic", 1.1, -55.0, False))
    s.apply(SpeechStarted("mic", 1.2))
    assert s.speaking
    assert not s.face_seen
    s.apply(FaceUpdate("cam", 2.0, "happiness", {"happiness": 0.7, "neutral": 0.3}, (1, 2, 30, 30)))
    assert (s.face_seen, s.face_label, s.face_score) == (True, "happiness", 0.7)
    s.apply(FaceUpdate("cam", 2.2, None, None, None))
    assert (s.face_label, s.face_score) == (None, None)
    s.apply(stats())
    assert s.stats is not None and s.stats.frames_dropped == 3
    for k in range(5):
        s.apply(Error("mic", 3.0 + k, f"boom {k}", "asr", None))
    assert s.error_count == 5 and [e.message for e in s.errors] == ["boom 2", "boom 3", "boom 4"]


def render_text(view: LiveView) -> str:
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(view.render())
    return console.export_text()


def test_render_shows_emotion_scores_transcript_and_counters():
    v = LiveView(device="cuda:0 (float16)")
    v.apply(Level("mic", 5.0, -23.0, True))
    v.apply(utt(0, 3.2, 5.1, "i told you not to do that", latency=0.42))
    v.apply(utt(1, 6.0, 7.0, "", label="sadness", final=False, scores={"sadness": 0.66, "neutral": 0.34}))
    v.apply(utt(1, 6.0, 7.0, "", label="sadness", final=False, scores={"sadness": 0.66, "neutral": 0.34}))
    v.apply(FaceUpdate("cam", 5.0, "fear", {"fear": 0.55}, (0, 0, 10, 10)))
    v.apply(stats())
    v.apply(Error("mic", 7.5, "whisper crashed", "asr", (6.0, 7.0)))
    text = render_text(v)
    assert "emotion: sadness" in text
    assert "sadness" in text and "0.66" in text and "0.34" in text  # per-class bars of the current segment
    assert "i told you not to do that" in text
    assert text.count("(provisional)") == 1  # the duplicate provisional did not add a line
    assert "speaking" in text and "-23 dB" in text
    assert "fear 0.55" in text
    assert "cuda:0 (float16)" in text
    assert "latency 0.42 s (p50 0.42 s)" in text
    for counter in ("audio dropped 0.5 s", "frames dropped 3", "overflows 2", "errors 1", "compute 0.35x",
                    "asr=0", "model=2"):
        assert counter in text
    assert "error in asr at 7.5 s: whisper crashed" in text


def test_render_shows_every_label_of_the_scores():
    v = LiveView()
    v.apply(utt(0, 0.0, 1.0, "hello"))
    text = render_text(v)
    for name in CANONICAL:
        assert name in text
    assert "0.81" in text


def test_render_empty_state():
    text = render_text(LiveView(device="cpu"))
    for phrase in ("waiting for speech", "nothing said yet", "no camera", "no stats yet", "silent", "cpu"):
        assert phrase in text


def test_plain_output_lines():
    events = [
        Level("mic", 0.5, -30.0, True),
        SpeechStarted("mic", 3.0),
        utt(0, 3.2, 5.1, "", final=False, scores={**SCORES, "anger": 0.55}),
        utt(0, 3.2, 5.1, "i told you not to do that"),
        FaceUpdate("cam", 4.0, "happiness", {"happiness": 0.9}, (0, 0, 5, 5)),
        FaceUpdate("cam", 4.2, "happiness", {"happiness": 0.8}, (0, 0, 5, 5)),
        stats(utterances=1),
        FaceUpdate("cam", 4.4, None, None, None),
        Error("mic", 6.0, "decoder failed", "asr", (5.5, 6.0)),
        stats(time=12.0, utterances=2, errors=1),
    ]
    out = io.StringIO()
    asyncio.run(run_plain(agen(events), out))
    assert out.getvalue().splitlines() == [
        '[  3.20-  5.10] anger      0.55  "" (provisional)',
        '[  3.20-  5.10] anger      0.81  "i told you not to do that"',
        "[  4.00       ] face: happiness",
        "[  4.40       ] face: none",
        "[  6.00       ] error in asr: decoder failed",
        "stats [mic] at 12.0 s: 2 utterances, 3 segments, 0 without speech, 1 errors, 0.5 s audio dropped, 3 frames dropped, "
        "2 overflows, compute 0.35x",
    ]


def test_run_live_redraws_on_a_timer_not_per_event(monkeypatch):
    renders = 0
    real_render = LiveView.render

    def counting_render(self):
        nonlocal renders
        renders += 1
        return real_render(self)

    monkeypatch.setattr(LiveView, "render", counting_render)
    events = [Level("mic", i * 0.01, -40.0, i % 2 == 0) for i in range(2000)]
    events += [utt(i, i, i + 0.5, f"utterance number {i}") for i in range(20)]
    file = io.StringIO()
    console = Console(file=file, force_terminal=True, width=100)
    # 2020 events arrive at once, then the stream stays open for 0.35 s at 10 Hz: the first render,
    # one timer redraw for the burst (the idle ticks after it skip drawing), and the final one.
    asyncio.run(run_live(agen(events, pause=0.35), console, refresh_hz=10, device="cpu"))
    assert 2 <= renders <= 3
    assert "utterance number 19" in file.getvalue()  # the last state was drawn


def test_a_bad_refresh_rate_is_a_config_error():
    from fdrl import config
    with pytest.raises(UserError, match="ui.refresh_hz"):
        config.load(overrides=["ui.refresh_hz=0"])


def test_pick_view_by_terminal():
    plain_console = Console(file=io.StringIO())
    assert pick_view(plain_console).func is ui.run_plain
    assert pick_view(Console(file=io.StringIO(), force_terminal=True)).func is ui.run_live


def test_an_uncertain_voice_only_label_says_so_and_keeps_its_best_guess():
    """Below `labels.uncertain_below` the headline says "uncertain" with the best guess beside it; a
    label from the voice alone says why the words did not count, in the view and in plain lines."""
    import dataclasses
    u = dataclasses.replace(utt(0, 1.0, 2.5, "I'm going to go to the next one."), label="uncertain", best_guess="anger",
                            modalities=("audio",), text_dropped="low_asr_confidence")
    v = LiveView()
    v.apply(u)
    text = render_text(v)
    assert "emotion: uncertain (best guess anger)" in text and "0.81" in text
    assert "voice only: the ASR was unsure of the words" in text
    line = ui.format_utterance(u)
    assert "uncertain" in line and "0.81" in line and "(best guess anger)" in line and "voice only" in line
