"""The VAD segmenter: exact timings with a scripted per-frame decision, then real webrtcvad on generated audio.

With the defaults (30 ms frames) the rules become whole frames: trigger window 10 frames, 6 voiced
open a segment, pre-roll 10 frames, hangover ceil(500/30) = 17, tail ceil(200/30) = 7, minimum
voiced span ceil(400/30) = 14 frames.
"""
from __future__ import annotations

import dataclasses

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fdrl.audio import SAMPLE_RATE, decode_audio
from fdrl.config import load
from fdrl.errors import UserError
from fdrl.config import Vad
from fdrl.vad import Segment, SegmentDiscarded, SegmentPause, Segmenter, SegmentStart, level_db

FRAME = 480  # 30 ms at 16 kHz


def pattern(spec: str) -> np.ndarray:
    """One 30 ms frame per character: '1' = voiced (constant 0.5), '0' = silence."""
    return np.concatenate([np.full(FRAME, 0.5 if c == "1" else 0.0, np.float32) for c in spec])


def vad_options(**changes) -> Vad:
    """config.toml's `[vad]`, with a 200 ms tail (the scripted patterns below count it), no early
    pauses (their own tests below turn them on) and `changes`."""
    return dataclasses.replace(load().vad, **{"tail_ms": 200, "asr_tail_ms": 0, "early_ms": 0, **changes})


def scripted(pcm: bytes) -> bool:
    """Voiced iff the frame is not silent: the pattern above decides every frame."""
    return bool(np.any(np.frombuffer(pcm, "<i2")))


def run(audio: np.ndarray, options: Vad | None = None, flush: bool = True) -> tuple[list, Segmenter]:
    seg = Segmenter(options or vad_options(), is_speech=scripted)
    events = list(seg.feed(audio))
    if flush:
        events += list(seg.flush())
    return events, seg


def summary(events: list) -> list[tuple]:
    """Events as comparable tuples, times rounded to the microsecond."""
    out = []
    for e in events:
        if isinstance(e, Segment):
            out.append(("segment", round(e.start, 6), round(e.end, 6), e.forced_split, len(e.audio)))
        elif isinstance(e, SegmentDiscarded):
            out.append(("discarded", round(e.start, 6), round(e.end, 6)))
        elif isinstance(e, SegmentPause):
            out.append(("pause", round(e.start, 6), round(e.end, 6), len(e.audio)))
        else:
            out.append(("start", round(e.start, 6)))
    return out


def test_one_utterance_exact_times_with_preroll_and_tail():
    audio = pattern("0" * 20 + "1" * 30 + "0" * 40)  # speech from 0.60 s to 1.50 s
    events, seg = run(audio)
    # Trigger at frame 25 (frames 20..25 voiced); start = onset 20 - 10 frames pre-roll = frame 10.
    # Last voiced frame 49; end = frame 50 + 7 tail frames = frame 57.
    assert summary(events) == [("start", 0.30), ("segment", 0.30, 1.71, False, 47 * FRAME)]
    assert 0.60 - events[1].start >= 0.25                      # first word not clipped
    np.testing.assert_array_equal(events[1].audio, audio[10 * FRAME:57 * FRAME])
    assert seg.discarded == 0 and not seg.speaking


def test_events_come_out_on_the_deciding_frame():
    audio = pattern("0" * 20 + "1" * 30 + "0" * 40)
    seg = Segmenter(vad_options(), is_speech=scripted)
    assert list(seg.feed(audio[:25 * FRAME])) == []            # frames 0..24: only 5 voiced
    (start,) = seg.feed(audio[25 * FRAME:26 * FRAME])          # frame 25 is the 6th voiced frame
    assert isinstance(start, SegmentStart) and seg.speaking
    assert list(seg.feed(audio[26 * FRAME:66 * FRAME])) == []  # 16 silent frames: still in hangover
    (closed,) = seg.feed(audio[66 * FRAME:67 * FRAME])         # the 17th closes it
    assert isinstance(closed, Segment) and not seg.speaking


def test_segment_at_stream_start_has_only_the_preroll_there_is():
    events, _ = run(pattern("000" + "1" * 30 + "0" * 30))
    assert summary(events)[1] == ("segment", 0.0, round((33 + 7) * 0.03, 6), False, 40 * FRAME)


def test_sparse_voiced_frames_do_not_trigger():
    # 5 voiced in every 10 frames stays below speech_ratio = 0.6.
    events, _ = run(pattern("1010101010" * 20))
    assert events == []


def test_short_burst_discarded_and_counted():
    events, seg = run(pattern("0" * 20 + "1" * 13 + "0" * 40))  # 390 ms of speech < 400 ms
    assert summary(events) == [("start", 0.30), ("discarded", 0.30, round((33 + 7) * 0.03, 6))]
    assert seg.discarded == 1
    events, seg = run(pattern("0" * 20 + "1" * 14 + "0" * 40))  # 420 ms: kept
    assert [type(e) for e in events] == [SegmentStart, Segment] and seg.discarded == 0


def test_pause_shorter_than_hangover_keeps_one_segment():
    events, _ = run(pattern("0" * 20 + "1" * 30 + "0" * 16 + "1" * 30 + "0" * 40))
    assert summary(events) == [("start", 0.30), ("segment", 0.30, round(103 * 0.03, 6), False, 93 * FRAME)]


def test_pause_of_hangover_splits_into_contiguous_segments():
    # 17 silent frames close the first segment (end = frame 57); the second opens at frame 72
    # and its pre-roll reaches back exactly to where the first ended (no overlap).
    events, _ = run(pattern("0" * 20 + "1" * 30 + "0" * 17 + "1" * 30 + "0" * 40))
    assert summary(events) == [("start", 0.30), ("segment", 0.30, 1.71, False, 47 * FRAME),
                               ("start", 1.71), ("segment", 1.71, round(104 * 0.03, 6), False, 47 * FRAME)]


@pytest.mark.parametrize("tail_ms, asr_tail_ms", [(0, 0), (200, 0), (0, 200)])
def test_a_pause_holds_the_samples_the_segment_closes_with(tail_ms, asr_tail_ms):
    # early_ms 200 = 7 frames of silence: the pause comes on frame 56, the close on frame 66; tails
    # no longer than early_ms together are already heard when the pause comes.
    audio = pattern("0" * 20 + "1" * 30 + "0" * 40)
    seg = Segmenter(vad_options(tail_ms=tail_ms, asr_tail_ms=asr_tail_ms, early_ms=200), is_speech=scripted)
    assert [type(e) for e in seg.feed(audio[:56 * FRAME])] == [SegmentStart]
    (pause,) = seg.feed(audio[56 * FRAME:57 * FRAME])
    assert isinstance(pause, SegmentPause) and seg.speaking
    assert list(seg.feed(audio[57 * FRAME:66 * FRAME])) == []   # one pause per silence
    (closed,) = seg.feed(audio[66 * FRAME:67 * FRAME])
    assert isinstance(closed, Segment) and (pause.start, pause.end) == (closed.start, closed.end)
    assert closed.end == pytest.approx((50 + (7 if tail_ms else 0)) * 0.03)  # the tail: 200 ms, rounded up to frames
    np.testing.assert_array_equal(pause.audio, closed.audio)
    np.testing.assert_array_equal(pause.after, closed.after)
    assert closed.after.size == (7 * FRAME if asr_tail_ms else 0)


def test_whisper_hears_what_follows_a_segment_as_far_as_the_stream_goes():
    """`after` is the audio right after the segment's end: none after a forced split (the next
    segment goes on from the cut), and only what there is when the stream ends."""
    audio = pattern("0" * 20 + "1" * 30 + "0" * 40)
    events, _ = run(audio, vad_options(tail_ms=0, asr_tail_ms=200))
    [closed] = [e for e in events if isinstance(e, Segment)]
    end = round(closed.end / 0.03)
    np.testing.assert_array_equal(closed.after, audio[end * FRAME:(end + 7) * FRAME])
    seg = Segmenter(vad_options(tail_ms=0, asr_tail_ms=200), is_speech=scripted)
    list(seg.feed(audio[:53 * FRAME]))  # 3 frames of silence, then the stream ends
    [last] = seg.flush()
    assert isinstance(last, Segment) and last.after.size == 3 * FRAME
    split, _ = run(pattern("0" * 20 + "1" * 250 + "0" * 40), vad_options(max_utterance_ms=3000, asr_tail_ms=200))
    assert [e.after.size for e in split if isinstance(e, Segment) and e.forced_split] == [0, 0]


def test_speech_that_resumes_after_a_pause_changes_nothing_but_the_pauses():
    audio = pattern("0" * 20 + "1" * 30 + "0" * 10 + "1" * 30 + "0" * 40)
    plain, _ = run(audio, vad_options(tail_ms=0))
    early, _ = run(audio, vad_options(tail_ms=0, early_ms=200))
    assert [e for e in summary(early) if e[0] != "pause"] == summary(plain)
    assert summary(early)[1:] == [("pause", 0.30, 1.50, 40 * FRAME), ("pause", 0.30, 2.70, 80 * FRAME),
                                  ("segment", 0.30, 2.70, False, 80 * FRAME)]


def test_no_pause_for_speech_too_short_to_keep_nor_with_early_off():
    events, _ = run(pattern("0" * 20 + "1" * 13 + "0" * 40), vad_options(early_ms=200))
    assert [type(e) for e in events] == [SegmentStart, SegmentDiscarded]
    for off in (vad_options(early_ms=0), vad_options(early_ms=500), vad_options(early_ms=600, hangover_ms=300)):
        events, _ = run(pattern("0" * 20 + "1" * 30 + "0" * 40), off)  # none, or none before the hangover ends
        assert not any(isinstance(e, SegmentPause) for e in events)


def test_max_length_splits_and_continues():
    options = vad_options(max_utterance_ms=3000)  # 100 frames
    audio = pattern("0" * 20 + "1" * 250 + "0" * 40)  # voiced frames 20..269
    events, _ = run(audio, options)
    assert summary(events) == [
        ("start", 0.30), ("segment", 0.30, 3.30, True, 100 * FRAME),
        ("start", 3.30), ("segment", 3.30, 6.30, True, 100 * FRAME),
        ("start", 6.30), ("segment", 6.30, round(277 * 0.03, 6), False, 67 * FRAME),
    ]
    joined = np.concatenate([e.audio for e in events if isinstance(e, Segment)])
    np.testing.assert_array_equal(joined, audio[10 * FRAME:277 * FRAME])  # nothing lost or repeated


def test_continuation_without_speech_is_discarded():
    options = vad_options(max_utterance_ms=3000)
    events, seg = run(pattern("0" * 20 + "1" * 90 + "0" * 40), options)  # speech ends exactly at the cut
    assert summary(events) == [("start", 0.30), ("segment", 0.30, 3.30, True, 100 * FRAME),
                               ("start", 3.30), ("discarded", 3.30, 3.51)]
    assert seg.discarded == 1


def test_flush_closes_open_segment():
    audio = np.concatenate([pattern("0" * 20 + "1" * 30 + "00000"), np.zeros(100, np.float32)])
    seg = Segmenter(vad_options(), is_speech=scripted)
    assert [type(e) for e in seg.feed(audio)] == [SegmentStart]
    (closed,) = seg.flush()
    # Only 5 frames after the last voiced one exist: end = frame 55, not 57; the partial frame is ignored.
    assert (round(closed.start, 6), round(closed.end, 6), len(closed.audio)) == (0.30, 1.65, 45 * FRAME)
    assert not seg.speaking and list(seg.flush()) == []


def test_flush_discards_short_and_ignores_idle():
    events, seg = run(pattern("0" * 20 + "1" * 10))
    assert [type(e) for e in events] == [SegmentStart, SegmentDiscarded] and seg.discarded == 1
    events, _ = run(pattern("0" * 50))
    assert events == []


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(7)
    runs = [("1" if i % 2 else "0") * int(n) for i, n in enumerate(rng.integers(3, 60, size=40))]
    audio = pattern("".join(runs)) * rng.uniform(0.5, 1.0, size=len("".join(runs)) * FRAME).astype(np.float32)
    options = vad_options(max_utterance_ms=1500)
    whole, _ = run(audio, options)
    seg = Segmenter(options, is_speech=scripted)
    pieces, pos = [], 0
    while pos < len(audio):
        n = int(rng.integers(1, 2000))
        pieces += list(seg.feed(audio[pos:pos + n]))
        pos += n
    pieces += list(seg.flush())
    assert len(whole) > 6 and summary(pieces) == summary(whole)
    for a, b in zip(whole, pieces):
        if isinstance(a, Segment):
            np.testing.assert_array_equal(a.audio, b.audio)


def test_fed_buffer_may_be_reused_by_the_caller():
    audio = pattern("0" * 20 + "1" * 30 + "0" * 40)
    seg = Segmenter(vad_options(), is_speech=scripted)
    block = np.empty(FRAME, np.float32)
    events = []
    for i in range(0, len(audio), FRAME):
        block[:] = audio[i:i + FRAME]           # like sounddevice's indata
        events += list(seg.feed(block))
    np.testing.assert_array_equal(events[1].audio, audio[10 * FRAME:57 * FRAME])


def test_feed_works_even_if_events_are_ignored():
    audio = pattern("0" * 20 + "1" * 30 + "0" * 40)
    seg = Segmenter(vad_options(), is_speech=scripted)
    seg.feed(audio[:30 * FRAME])  # events not iterated: the frames are still consumed
    assert seg.speaking
    (closed,) = seg.feed(audio[30 * FRAME:])
    assert isinstance(closed, Segment) and round(closed.end, 6) == 1.71


def test_level_db():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    assert level_db(np.sin(2 * np.pi * 440 * t).astype(np.float32)) == pytest.approx(-3.01, abs=0.01)
    assert level_db(np.full(100, 0.1, np.float32)) == pytest.approx(-20.0, abs=1e-4)
    assert level_db(np.zeros(100, np.float32)) == -100.0
    assert level_db(np.zeros(0, np.float32)) == -100.0
    assert Segmenter.level_db(np.full(10, 1.0, np.float32)) == pytest.approx(0.0, abs=1e-6)


def test_options_are_checked_by_the_config_rules():
    with pytest.raises(UserError, match="frame_ms"):
        Segmenter(vad_options(frame_ms=25), is_speech=scripted)
    with pytest.raises(UserError, match="aggressiveness"):
        Segmenter(vad_options(aggressiveness=4), is_speech=scripted)
    with pytest.raises(UserError, match="tail_ms"):
        Segmenter(vad_options(tail_ms=600), is_speech=scripted)
    with pytest.raises(UserError, match="sample rate"):
        Segmenter(vad_options(), sample_rate=44100, is_speech=scripted)
    assert Segmenter(is_speech=scripted).options == load().vad  # the default is config.toml's


def test_other_frame_size_scales_times():
    # 10 ms frames: window 30 frames, 18 voiced open; pre-roll 30 frames; tail 20 frames.
    ten = 160
    spec = "0" * 60 + "1" * 90 + "0" * 120
    audio = np.concatenate([np.full(ten, 0.5 if c == "1" else 0.0, np.float32) for c in spec])
    seg = Segmenter(vad_options(frame_ms=10), is_speech=scripted)
    events = list(seg.feed(audio)) + list(seg.flush())
    assert summary(events) == [("start", 0.30), ("segment", 0.30, 1.70, False, 140 * ten)]


# -- real webrtcvad ---------------------------------------------------------------------------------


def voiced(seconds: float, f0: float = 140.0) -> np.ndarray:
    """A vowel-like harmonic complex with a 4 Hz syllable envelope, peak 0.1."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 28))
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    return (0.1 * x / np.max(np.abs(x))).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def segments(audio: np.ndarray) -> list[Segment]:
    seg = Segmenter(vad_options())
    events = [e for block in np.array_split(audio, max(1, len(audio) // 1000)) for e in seg.feed(block)]
    return [e for e in events + list(seg.flush()) if isinstance(e, Segment)]


def test_webrtcvad_bursts_give_one_segment_each():
    bursts = [(0.5, 1.3), (2.5, 3.5), (4.7, 5.5)]
    audio = np.concatenate([silence(0.5), voiced(0.8), silence(1.2), voiced(1.0), silence(1.2), voiced(0.8), silence(1.0)])
    found = segments(audio)
    assert len(found) == 3
    for s, (on, off) in zip(found, bursts):
        assert s.start <= on - 0.25 and on - 0.65 <= s.start   # pre-roll before the onset
        assert off + 0.15 < s.end <= off + 0.4                 # ~200 ms tail (webrtcvad lags a frame or two)


def test_webrtcvad_silence_and_low_noise_give_nothing():
    assert segments(silence(3.0)) == []
    noise = np.random.default_rng(0).normal(0, 10 ** (-50 / 20), 3 * SAMPLE_RATE).astype(np.float32)
    assert level_db(noise) == pytest.approx(-50, abs=0.5)
    assert segments(noise) == []


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_webrtcvad_on_synthetic_speech(tmp_path: Path):
    phrases = ["hello there, how are you today", "I am feeling rather happy", "see you tomorrow"]
    parts = []
    for i, text in enumerate(phrases):
        wav = tmp_path / f"{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        parts += [decode_audio(wav), silence(1.2)]
    found = segments(np.concatenate([silence(0.5)] + parts))
    assert len(found) == len(phrases)


def test_speech_span_crops_a_clip_like_the_live_segmenter(tmp_path):
    """Training crops clips with the pipeline's VAD: silence around the speech goes, pre-roll stays."""
    from fdrl.features import speech_span
    from tests.conftest import speak

    speech = speak("please open the window", tmp_path / "s.wav")
    silence = np.zeros(SAMPLE_RATE, np.float32)
    clip = np.concatenate([silence, speech, silence])
    options = vad_options()
    start, end, heard = speech_span(clip, options)
    assert 0.5 * SAMPLE_RATE < start < SAMPLE_RATE + len(speech) // 4   # near the speech onset, pre-roll included
    assert SAMPLE_RATE + len(speech) // 2 < end < 1.5 * SAMPLE_RATE + len(speech)
    assert heard == end  # nothing more for Whisper
    assert speech_span(clip, vad_options(asr_tail_ms=200))[1:] == (end, end + 7 * FRAME)
    assert speech_span(silence, options) is None


def test_early_ms_is_not_part_of_the_crop_so_cached_features_stay_valid():
    """When work starts does not change what a segment holds: the training crop's cache key ignores it."""
    assert vad_options(early_ms=0).crop() == vad_options(early_ms=250).crop()
    assert vad_options(asr_tail_ms=0).crop() == vad_options(asr_tail_ms=200).crop()  # a transcript's key has it
    assert "early_ms" not in vad_options().crop() and "hangover_ms" in vad_options().crop()
