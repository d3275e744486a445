"""The streaming pipeline end to end: real VAD, Whisper tiny.en and a tiny trained checkpoint on generated speech.

Every file here is made by espeak-ng with known sentences at known places, so the tests can say
which words must come out, in which order, and roughly when.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fdrl import config
from fdrl.audio import SAMPLE_RATE, decode_audio, write_wav
from fdrl.calibration import UNCERTAIN
from fdrl.config import Config
from fdrl.errors import UserError
from fdrl.labels import CANONICAL
from stream.events import Error, Event, Level, SpeechStarted, Stats, Utterance
from stream.inference import Engine
from stream.pipeline import Recognizer
from stream.sources import ChunkSource, FileSource
from tests.conftest import MIN_RECALL, speak, word_recall

# Sentences tiny.en transcribes reliably from espeak-ng, with their key words (most must be heard).
THREE = [("I am very happy to see you", {"happy", "see"}),
         ("please open the window", {"open", "window"}),
         ("the dog is sitting by the door", {"dog", "sitting", "door"})]
MORE_B = [("the sun is shining today", {"sun", "shining"}),
          ("we are going to the market", {"going", "market"})]
MORE_C = [("my brother plays the guitar", {"brother", "guitar"}),
          ("where is the train station", {"train", "station"})]


@dataclass
class Speech:
    """A generated file and where its sentences are."""

    path: Path
    spans: list[tuple[float, float]]   # first and last voiced sample of each sentence, seconds
    keys: list[set[str]]               # each sentence's key words: its transcript holds most (MIN_RECALL)
    duration: float


def speech_file(path: Path, sentences: list[tuple[str, set[str]]], lead: float = 0.5, pause: float = 1.5,
                repeat: int = 1, voice: str = "en-us") -> Speech:
    """The sentences spoken one after another (by espeak-ng's `voice`), `pause` seconds apart; the whole list `repeat` times."""
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * SAMPLE_RATE), np.float32)

    clips = [speak(text, path.with_name(f"{path.stem}-{k}.wav"), voice) for k, (text, _) in enumerate(sentences)]
    parts, spans, t = [silence(lead)], [], lead
    for _ in range(repeat):
        for audio in clips:
            voiced = np.flatnonzero(np.abs(audio) > 0.01)
            spans.append((t + voiced[0] / SAMPLE_RATE, t + (voiced[-1] + 1) / SAMPLE_RATE))
            parts += [audio, silence(pause)]
            t += len(audio) / SAMPLE_RATE + pause
    write_wav(path, np.concatenate(parts))
    return Speech(path, spans, [keys for _ in range(repeat) for _, keys in sentences], t)


def finals(events: list[Event]) -> list[Utterance]:
    return [e for e in events if isinstance(e, Utterance) and e.final]


def utterances(events: list[Event]) -> list[Utterance]:
    return [e for e in events if isinstance(e, Utterance)]


def final_stats(events: list[Event]) -> Stats:
    assert isinstance(events[-1], Stats), "a run ends with its final Stats"
    return events[-1]


def assert_accounting(stats: Stats) -> None:
    assert stats.segments_closed == stats.utterances + stats.errors + stats.no_speech


def fdrl_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("fdrl")}


def run(coro, timeout: float = 120):
    """Run a test coroutine; a hang fails the test instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def replay(rec: Recognizer, path: Path, stream: str = "0") -> list[Event]:
    return [event async for event in rec.run(FileSource(path), stream=stream)]


# -- fixtures: generated once per module -----------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Speech | Path]:
    d = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(5 * SAMPLE_RATE) * 10 ** (-50 / 20)  # white noise at -50 dBFS RMS
    write_wav(d / "silence.wav", np.zeros(5 * SAMPLE_RATE, np.float32))
    write_wav(d / "noise.wav", noise.astype(np.float32))
    return {
        "three": speech_file(d / "three.wav", THREE),
        "long": speech_file(d / "long.wav", THREE, repeat=4),  # 12 utterances, ~40 s
        "b": speech_file(d / "b.wav", MORE_B),
        "c": speech_file(d / "c.wav", MORE_C),
        "silence": d / "silence.wav",
        "noise": d / "noise.wav",
    }


def make_config(tmp_path: Path, *overrides: str) -> Config:
    return config.load(overrides=[f"paths.cache_dir='{tmp_path / 'cache'}'", *overrides])


@pytest.fixture(scope="module")
def replays(media, tiny_checkpoint, tmp_path_factory) -> dict[str, list[Event]]:
    """One recognizer, several files replayed one after another (fast pace)."""
    cfg = make_config(tmp_path_factory.mktemp("cfg"))

    async def main() -> dict[str, list[Event]]:
        async with Recognizer(cfg, tiny_checkpoint) as rec:
            return {"three": await replay(rec, media["three"].path),
                    "three again": await replay(rec, media["three"].path),
                    "silence": await replay(rec, media["silence"]),
                    "noise": await replay(rec, media["noise"])}

    return run(main())


# -- one file, the whole story ---------------------------------------------------------------------


def test_three_utterances_in_order_at_the_right_places(media, replays):
    speech, events = media["three"], replays["three"]
    final = finals(events)
    assert [u.index for u in final] == [0, 1, 2]
    assert sum(isinstance(e, SpeechStarted) for e in events) == 3
    for u in final:  # each final comes after exactly one provisional of the same segment
        provisional = [e for e in utterances(events) if e.index == u.index and not e.final]
        assert len(provisional) == 1
        assert events.index(provisional[0]) < events.index(u)
        assert (provisional[0].start, provisional[0].end) == (u.start, u.end)
        assert provisional[0].modalities == ("audio",) and "text" in u.modalities
    for u, keys, (voice_start, voice_end) in zip(final, speech.keys, speech.spans):
        assert word_recall(keys, u.text) >= MIN_RECALL, u.text
        assert 0.0 <= u.start < u.end <= speech.duration
        assert abs(u.start - voice_start) <= 0.5 and abs(u.end - voice_end) <= 0.5, (u, voice_start, voice_end)
    assert all(a.end <= b.start for a, b in zip(final, final[1:]))
    for u in utterances(events):
        assert u.best_guess in CANONICAL and u.label in (u.best_guess, UNCERTAIN) and set(u.scores) == set(CANONICAL)
        assert u.scores[u.best_guess] == max(u.scores.values())
        assert sum(u.scores.values()) == pytest.approx(1.0, abs=2e-3)
    stats = final_stats(events)
    assert (stats.segments_closed, stats.utterances, stats.errors, stats.no_speech) == (3, 3, 0, 0)
    assert stats.time == pytest.approx(speech.duration, abs=0.05)
    assert_accounting(stats)


@pytest.mark.parametrize("name", ["silence", "noise"])
def test_no_utterances_from_silence_or_low_noise(replays, name):
    events = replays[name]
    assert utterances(events) == []
    stats = final_stats(events)
    assert stats.utterances == 0 and stats.time == pytest.approx(5.0, abs=0.05)
    assert_accounting(stats)


def test_fast_replay_is_deterministic(replays):
    def key(events: list[Event]) -> list[tuple]:
        return [(u.text, u.label, u.start, u.end) for u in finals(events)]

    assert len(key(replays["three"])) == 3
    assert key(replays["three"]) == key(replays["three again"])


def test_live_work_started_at_the_first_pause_gives_the_replay_labels(media, replays, tiny_checkpoint, tmp_path):
    """Live, Whisper starts on a segment at its first pause (`vad.early_ms`), so the final label is
    nearly ready when the hangover ends; the labels, scores and words are those of a replay, which
    never starts early. Speech that resumed after a pause is covered in test_vad and test_speaker."""
    cfg = make_config(tmp_path, "vad.early_ms=200")

    async def main() -> list[Event]:
        async with Recognizer(cfg, tiny_checkpoint, face=False) as rec:
            return [e async for e in rec.run(FileSource(media["three"].path, pace="realtime"), live=True)]

    live = finals(run(main()))
    assert [(u.text, u.label, u.scores) for u in live] == [(u.text, u.label, u.scores) for u in finals(replays["three"])]
    assert sum("early" in u.timings for u in live) >= 2, [u.timings for u in live]  # one may miss on a loaded machine
    assert all(u.timings["end_to_label"] > 0 for u in live)


def test_audio_only_replay_longer_than_the_queues(media, tiny_checkpoint, tmp_path):
    """12 segments through a 2-deep job queue: replay must not wait for face results that never come."""
    speech = media["long"]
    cfg = make_config(tmp_path, "runtime.max_batch=2")

    async def main() -> list[Event]:
        async with Recognizer(cfg, tiny_checkpoint) as rec:
            return await replay(rec, speech.path)

    events = run(main(), timeout=90)
    final = finals(events)
    assert len(final) == 12
    assert all(word_recall(keys, u.text) >= MIN_RECALL for u, keys in zip(final, speech.keys))
    assert_accounting(final_stats(events))


# -- cancellation ----------------------------------------------------------------------------------


def test_cancelling_the_consumer_stops_every_stage(media, tiny_checkpoint, tmp_path):
    """Cancel while a slow consumer has let every queue fill up: nothing hangs, no thread is left."""
    cfg = make_config(tmp_path)
    before = fdrl_threads()

    async def main() -> None:
        async with Recognizer(cfg, tiny_checkpoint) as rec:
            own = fdrl_threads()
            first = asyncio.Event()

            async def consume() -> None:
                async for _ in rec.run(FileSource(media["long"].path, chunk_ms=20)):
                    first.set()
                    await asyncio.sleep(0.05)  # a slow view: the queues behind it fill up

            task = asyncio.create_task(consume())
            await first.wait()
            await asyncio.sleep(1.0)
            assert fdrl_threads() - own == {"fdrl-file-decoder"}  # still decoding: cancelled mid-stream
            task.cancel()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
            assert task.cancelled()
        # The cancelled task left `rec.run()` suspended (async generators close when collected):
        # leaving the recognizer stops its stages and the decoder thread all the same.
        assert fdrl_threads() <= before

    run(main(), timeout=30)


# -- several streams, one worker -------------------------------------------------------------------


def test_concurrent_streams_share_one_worker(media, tiny_checkpoint, tmp_path, monkeypatch):
    batch_sizes: list[int] = []
    run_batch = Engine.run_batch

    def counting(self, batch, publish):
        batch_sizes.append(len(batch))
        return run_batch(self, batch, publish)

    monkeypatch.setattr(Engine, "run_batch", counting)
    cfg = make_config(tmp_path)
    files = {"a": media["three"], "b": media["b"], "c": media["c"]}

    async def main() -> dict[str, list[Event]]:
        async with Recognizer(cfg, tiny_checkpoint) as rec:
            results = await asyncio.gather(*(replay(rec, s.path, stream=name) for name, s in files.items()))
        return dict(zip(files, results))

    results = run(main())
    total = 0
    for name, speech in files.items():
        events = results[name]
        assert {e.stream for e in events} == {name}
        final = finals(events)
        assert len(final) == len(speech.keys)
        assert all(word_recall(keys, u.text) >= MIN_RECALL for u, keys in zip(final, speech.keys)), [u.text for u in final]
        assert_accounting(final_stats(events))
        total += len(final)
    # Every utterance went through the one worker, and streams shared batches.
    assert sum(batch_sizes) == total == 7
    assert len(batch_sizes) < total and max(batch_sizes) > 1


# -- faults ----------------------------------------------------------------------------------------


def test_a_failed_transcription_fails_only_its_segment(media, tiny_checkpoint, tmp_path, monkeypatch):
    calls: list[int] = []
    transcribe = Engine.transcribe

    def flaky(self, request, window):
        calls.append(len(request.audio))
        if len(calls) == 2:
            raise RuntimeError("decoder fell over")
        return transcribe(self, request, window)

    monkeypatch.setattr(Engine, "transcribe", flaky)
    cfg = make_config(tmp_path)

    async def main() -> list[Event]:
        async with Recognizer(cfg, tiny_checkpoint) as rec:
            return await replay(rec, media["three"].path)

    events = run(main())
    speech = media["three"]
    errors = [e for e in events if isinstance(e, Error)]
    final = finals(events)
    assert len(errors) == 1 and "decoder fell over" in errors[0].message and errors[0].stage == "inference"
    assert [u.index for u in final] == [0, 2]
    assert word_recall(speech.keys[0], final[0].text) >= MIN_RECALL and word_recall(speech.keys[2], final[1].text) >= MIN_RECALL
    provisional = {u.index: u for u in utterances(events) if not u.final}
    assert sorted(provisional) == [0, 1, 2]  # the audio-only label came before the failure
    assert errors[0].segment == (provisional[1].start, provisional[1].end)
    stats = final_stats(events)
    assert (stats.segments_closed, stats.utterances, stats.errors, stats.no_speech) == (3, 2, 1, 0)
    assert_accounting(stats)


def test_a_crashing_stage_ends_the_run_with_its_error(media, tiny_checkpoint, tmp_path, monkeypatch):
    """A bug in a stage must surface as an exception from run(), not hang the consumer."""
    import stream.pipeline

    def broken(self, audio):
        raise RuntimeError("segmenter bug")

    monkeypatch.setattr(stream.pipeline.Segmenter, "feed", broken)
    cfg = make_config(tmp_path)

    async def main() -> None:
        async with Recognizer(cfg, tiny_checkpoint) as rec:
            await replay(rec, media["three"].path)

    with pytest.raises(RuntimeError, match="segmenter bug"):
        run(main(), timeout=60)


async def events_until_error(cfg: Config, checkpoint: Path, audio, error: str) -> list[Event]:
    """The events of a run over `audio` chunks, which must end by raising a UserError matching `error`."""
    seen: list[Event] = []
    async with Recognizer(cfg, checkpoint) as rec:
        with pytest.raises(UserError, match=error):
            async for event in rec.run(ChunkSource(audio=audio)):
                seen.append(event)
    return seen


def test_a_source_that_fails_between_segments_ends_the_run_with_its_error(tiny_checkpoint, tmp_path):
    """Nothing in flight when the source fails: what it gave is finished and delivered, then run() raises its error."""
    cfg = make_config(tmp_path)

    async def unplugged():
        for _ in range(10):  # 1 s of silence: levels and stats, no segment
            yield np.zeros(SAMPLE_RATE // 10, np.float32)
        raise UserError("microphone unplugged")

    seen = run(events_until_error(cfg, tiny_checkpoint, unplugged(), "microphone unplugged"), timeout=60)
    assert not any(isinstance(e, (SpeechStarted, Utterance)) for e in seen)
    assert len([e for e in seen if isinstance(e, Level)]) == 10  # one per 100 ms chunk: all it gave
    stats = final_stats(seen)  # the run got to its end before raising
    assert stats.time == 1.0 and stats.segments_closed == 0


def test_a_source_that_fails_mid_segment_finishes_it_then_raises(media, tiny_checkpoint, tmp_path):
    """The first sentence is read and closed (its tail of silence too) before the source fails:
    its utterance is delivered, then run() raises the source's error."""
    cfg = make_config(tmp_path)
    speech = media["three"]
    audio = decode_audio(speech.path)
    cut = round((speech.spans[0][1] + 1.0) * SAMPLE_RATE)  # a second after the first sentence ends

    async def cut_short():
        for k in range(0, cut, 1600):
            yield audio[k:min(k + 1600, cut)]
        raise UserError("file truncated")

    seen = run(events_until_error(cfg, tiny_checkpoint, cut_short(), "file truncated"), timeout=60)
    final = finals(seen)
    assert len(final) == 1 and word_recall(speech.keys[0], final[0].text) >= MIN_RECALL, [u.text for u in final]
    assert_accounting(final_stats(seen))
