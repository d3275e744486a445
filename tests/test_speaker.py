"""Speaker normalization: pooled moments, shrinkage toward the prior, offline and running statistics."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fdrl.inputs import Sample
from fdrl.speaker import BatchSpeakers, Moments, RunningSpeaker, SpeakerNorm, standardize

rng = np.random.default_rng(0)


def frames(n: int, offset: float, scale: float = 1.0, dim: int = 3) -> np.ndarray:
    return (offset + scale * rng.standard_normal((n, dim))).astype(np.float32)


def test_pooled_moments_equal_the_moments_of_the_concatenation():
    a, b = frames(4, 1.0), frames(9, -2.0, 3.0)
    pooled = Moments.of(a) + Moments.of(b)
    whole = np.concatenate([a, b]).astype(np.float64)
    assert pooled.n == 13
    np.testing.assert_allclose(pooled.mean, whole.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled.var, whole.var(0), rtol=1e-12)
    empty = Moments.of(np.zeros((0, 3), np.float32))
    assert (empty + Moments.of(a)).n == 4 and np.allclose((empty + Moments.of(a)).mean, a.mean(0))


def test_the_prior_counts_as_prior_frames():
    """Speaker mean 4, variance 1 over 10 frames; prior mean 0, variance 1 weighted as 10 frames:
    pooled mean 2, pooled variance 1 + (4-2)^2 = 5 (hand-computed)."""
    norm = SpeakerNorm(Moments(1000.0, np.zeros(1), np.ones(1)), prior_frames=10)
    heard = Moments(10.0, np.full(1, 4.0), np.ones(1))
    out = norm.standardize(np.array([[4.0]], np.float32), heard)
    assert out[0, 0] == pytest.approx((4 - 2) / np.sqrt(5 + 1e-6))
    # No prior weight: the speaker's own statistics alone.
    alone = SpeakerNorm(norm.prior, prior_frames=0).standardize(np.array([[5.0]], np.float32), heard)
    assert alone[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_apply_standardizes_each_speaker_by_its_own_frames():
    samples = [Sample(0, "a", audio=frames(20, 5.0, 2.0)), Sample(1, "b", audio=frames(30, -3.0, 0.5)),
               Sample(2, "a", audio=frames(25, 5.0, 2.0)), Sample(3, "", text=np.zeros((4, 3), np.float32)),
               Sample(4, "", audio=frames(15, 9.0))]
    norm = SpeakerNorm.fit(samples, prior_frames=0)
    out = norm.apply(samples)
    a = np.concatenate([out[0].audio, out[2].audio])
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(a.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(out[1].audio.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out[4].audio.mean(0), 0, atol=1e-5)   # no speaker id: a speaker of its own
    assert out[3] is samples[3]                                       # no audio: untouched
    assert samples[0].audio.mean() > 4                                # the inputs are not modified
    assert standardize(samples, None) == samples


def test_fit_is_none_without_audio():
    assert SpeakerNorm.fit([Sample(0, "", text=np.zeros((2, 3), np.float32))], 500) is None


def test_running_speaker_matches_offline_once_everything_is_heard():
    utterances = [frames(n, 2.0, 1.5) for n in (12, 30, 7)]
    samples = [Sample(0, "s", audio=u) for u in utterances]
    norm = SpeakerNorm(Moments.of(frames(200, 0.0)), prior_frames=50)
    running = RunningSpeaker()
    first = norm.standardize(utterances[0], running.heard_with(utterances[0]))
    assert running.heard is None                         # heard_with does not count the utterance yet
    np.testing.assert_allclose(first, norm.standardize(utterances[0], Moments.of(utterances[0])))
    for u in utterances:
        running.add(u)
    offline = norm.apply(samples)
    np.testing.assert_allclose(norm.standardize(utterances[1], running.heard), offline[1].audio, atol=1e-5)


def test_batch_speakers_count_earlier_batch_mates_and_commit_once():
    a, b, c = frames(10, 1.0), frames(20, -1.0, 2.0), frames(5, 3.0)
    speaker, other = RunningSpeaker(), RunningSpeaker()
    speaker.add(a)
    batch = BatchSpeakers()
    heard = batch.heard_with(speaker, b)
    np.testing.assert_allclose(heard.mean, Moments.of(np.concatenate([a, b])).mean)
    batch.add(speaker, b)
    # The next utterance of the same stream counts b; another stream's does not.
    np.testing.assert_allclose(batch.heard_with(speaker, c).mean, Moments.of(np.concatenate([a, b, c])).mean)
    np.testing.assert_allclose(batch.heard_with(other, c).mean, Moments.of(c).mean)
    np.testing.assert_allclose(batch.heard_with(None, c).var, Moments.of(c).var)
    assert speaker.heard.n == 10                          # nothing handed over before commit (a retried batch)
    batch.commit()
    assert speaker.heard.n == 30 and other.heard is None


def test_a_final_label_does_not_depend_on_how_the_worker_batched(mini_corpus, tiny_checkpoint, monkeypatch):
    """Two utterances of one stream in one batch, or one batch each: the model sees the same input."""
    from fdrl import config
    from fdrl.audio import decode_audio
    from stream.inference import Engine, Request

    engine = Engine(config.load(), tiny_checkpoint, device="cpu")
    assert engine.ckpt.speaker_norm is not None
    seen: list[np.ndarray] = []
    classify = engine.classify
    monkeypatch.setattr(engine, "classify", lambda samples: (seen.extend(s.audio for s in samples), classify(samples))[1])
    clips = [decode_audio(mini_corpus / f"en-us-{k}.wav") for k in (0, 1)]

    def run(batches: list[list[np.ndarray]]) -> list[np.ndarray]:
        speaker, inputs = RunningSpeaker(), []
        for batch in batches:
            requests = [Request(audio, speaker=speaker) for audio in batch]
            seen.clear()
            engine.run_batch(requests, lambda future, result: None)
            inputs += seen[len(batch):]  # the final pass's inputs (after the provisional pass's)
        return inputs

    together, apart = run([clips]), run([[clips[0]], [clips[1]]])
    for x, y in zip(together, apart, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_an_early_pass_changes_nothing_until_its_final_claims_it(mini_corpus, tiny_checkpoint):
    """The worker's early pass (a pause, not yet the end) publishes nothing and touches neither the
    speaker's statistics nor the context; the final for the same samples reuses its frames and
    transcript and gives exactly the result of a plain pass. A pass whose speech went on stays unclaimed."""
    from collections import deque

    from fdrl import config
    from fdrl.audio import decode_audio
    from stream.inference import Engine, Request

    engine = Engine(config.load(), tiny_checkpoint, device="cpu")
    clip = decode_audio(mini_corpus / "en-us-0.wav")

    def final(request: Request):
        out = []
        engine.run_batch([request], lambda future, result: out.append(result))
        return out

    plain = final(Request(clip, speaker=RunningSpeaker(), history=deque(maxlen=2)))[-1]
    speaker, history = RunningSpeaker(), deque(maxlen=2)
    assert final(Request(clip, speaker=speaker, history=history, early=True)) == []
    assert final(Request(clip[:-800], speaker=speaker, history=history, early=True)) == []  # speech went on
    assert speaker.heard is None and not history and len(engine.ahead) == 2
    claimed = final(Request(clip, speaker=speaker, history=history))[-1]
    assert (claimed.label, claimed.scores, claimed.text) == (plain.label, plain.scores, plain.text)
    assert "early" in claimed.timings and "early" not in plain.timings
    assert speaker.heard is not None and list(history) == [plain.text] and len(engine.ahead) == 1


def test_round_trip_through_a_dict():
    norm = SpeakerNorm(Moments.of(frames(50, 1.0)), prior_frames=123)
    again = SpeakerNorm.from_dict(norm.to_dict())
    assert again.prior_frames == 123 and again.prior.n == 50
    np.testing.assert_allclose(again.prior.mean, norm.prior.mean)
    assert dataclasses.asdict(again.prior).keys() == {"n", "mean", "var"}


def test_subset_norm_draws_the_clip_itself_and_up_to_all_of_its_speaker():
    """Every subset holds the clip itself and only its speaker's clips; sizes span 1 .. all (log-uniform:
    about half at most sqrt(n)); the moments are those of the subset's frames pooled; a clip without
    a speaker id is normalized by itself alone."""
    from fdrl.speaker import SubsetNorm
    samples = [Sample(0, "a", audio=frames(5 + k, 1.0)) for k in range(16)] + [Sample(1, "b", audio=frames(8, -1.0)),
                                                                             Sample(2, "", audio=frames(6, 3.0))]
    norm = SpeakerNorm.fit(samples, prior_frames=0)
    subsets = SubsetNorm(samples, norm)
    draw = np.random.default_rng(0)
    sizes = []
    for _ in range(400):
        idx = subsets.subset(3, draw)
        assert idx[0] == 3 and len(set(idx)) == len(idx) and set(idx) <= set(range(16))
        sizes.append(len(idx))
    assert min(sizes) == 1 and max(sizes) == 16 and 0.35 < np.mean(np.array(sizes) <= 4) < 0.65
    idx = np.array([3, 7, 0])
    pooled = subsets.heard(idx)
    whole = np.concatenate([samples[i].audio for i in idx]).astype(np.float64)
    np.testing.assert_allclose(pooled.mean, whole.mean(0), rtol=1e-9)
    np.testing.assert_allclose(pooled.var, whole.var(0), rtol=1e-6)
    assert list(subsets.subset(17, draw)) == [17] and list(subsets.subset(16, draw)) == [16]
    [alone] = subsets.draw(samples, [17], draw)
    np.testing.assert_allclose(alone.audio, norm.apply([samples[17]])[0].audio, atol=1e-5)
