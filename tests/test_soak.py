"""The soak script, short: a minute of generated speech through one Recognizer, its accounting and report."""
from __future__ import annotations

import importlib.util
import json
import sys
import wave
from dataclasses import asdict, fields

import pytest

from fdrl.config import PROJECT_ROOT
from tests.test_pipeline import make_config


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", PROJECT_ROOT / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["soak"]


def test_short_soak_accounts_for_every_segment(soak, tmp_path):
    report = soak.soak(minutes=1.0, cfg=make_config(tmp_path), warmup_s=20.0, cache_dir=tmp_path / "audio")
    r = asdict(report)
    assert set(r) == {f.name for f in fields(soak.SoakReport)}
    assert json.loads(json.dumps(r)) == r  # the report is plain JSON

    assert 60.0 <= report.audio_s < 80.0 and report.minutes == pytest.approx(report.audio_s / 60, abs=0.01)
    assert report.accounting_ok and report.errors == 0
    assert report.segments_closed == report.utterances + report.errors + report.no_speech
    # Groups are 1-3 sentences (or a monologue cut at vad.max_utterance_ms): the VAD finds about one
    # segment per group; espeak's voice is clean, so nearly all of them are heard as speech.
    assert 0.8 * report.groups <= report.segments_closed <= 1.5 * report.groups
    assert report.utterances >= 0.8 * report.segments_closed

    assert report.x_realtime == pytest.approx(report.audio_s / report.wall_s, rel=0.02)
    assert report.warmup_s == 20.0
    assert 100 < report.rss_loaded_mb <= report.rss_peak_mb and report.rss_end_mb <= report.rss_peak_mb
    assert report.growth_mb == pytest.approx(report.rss_end_mb - report.rss_warm_mb, abs=0.11)
    assert [m for m, _, _ in report.series] == [0, 1]  # a median per minute of stream time
    if report.allocator == "glibc":  # what malloc holds for the program is measured
        # Not bounded by the RSS: CTranslate2 (4.8) takes ~700 MB of mmapped chunks when it loads
        # Whisper and touches few of their pages, so the heap counted may exceed the memory resident.
        assert report.heap_end_mb > 0 and all(heap > 0 for _, _, heap in report.series)
    assert report.passed == (report.accounting_ok and report.growth_mb < report.growth_limit_mb == 50.0)


def test_audio_is_cached_and_complete(soak, tmp_path):
    first = soak.make_audio(0.25, tmp_path)
    again = soak.make_audio(0.25, tmp_path)  # from the cache: no espeak-ng
    assert again == first
    with wave.open(first.path) as w:
        assert (w.getnchannels(), w.getframerate()) == (1, 16000)
        assert w.getnframes() / 16000 == pytest.approx(first.duration_s, abs=1e-3)
    assert first.duration_s >= 15.0 and first.groups >= 2


def test_slope_per_hour(soak):
    assert soak.slope_per_hour([(0.0, 100.0), (1800.0, 101.0), (3600.0, 102.0)]) == pytest.approx(2.0)
    assert soak.slope_per_hour([(60.0, 500.0)]) == 0.0


def test_warmup_longer_than_the_audio_is_a_user_error(soak, tmp_path, capsys):
    assert soak.main(["--minutes", "1", "--warmup-minutes", "2", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--warmup-minutes" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing was generated
