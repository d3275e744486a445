"""`fdrl serve` end to end: a real server (a subprocess on an ephemeral loopback port, the shipped
checkpoint, real Whisper) and real clients: the protocol round trip, the same labels as a replay,
auth, origin, limits, TLS, every malformed message, a client that stops reading, the browser page in
a real headless Chromium, and the shutdown on SIGINT and SIGTERM.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.datastructures import Headers
from websockets.http11 import Request

from fdrl import config
from fdrl.audio import SAMPLE_RATE, decode_audio
from stream.events import Stats, Utterance, event_from_json
from stream.pipeline import Recognizer
from stream.server.app import Gate, ServeOptions
from stream.sources import FileSource
from tests.conftest import MIN_RECALL, word_recall
from tests.test_pipeline import THREE, Speech, assert_accounting, speech_file

TOKEN = "test-secret"
LIMITS = {"idle_timeout_s": 1.5, "max_audio_s": 900.0, "max_connections": 4, "send_queue": 8,
          "send_timeout_s": 1.0, "max_message_bytes": 65536}
DEMO = Path(__file__).resolve().parent.parent / "demo" / "session" / "audio.wav"  # committed: 10 utterances


@dataclass
class Served:
    proc: subprocess.Popen
    port: int

    def url(self, token: str | None = TOKEN) -> str:
        return f"ws://127.0.0.1:{self.port}/ws" + (f"?token={token}" if token else "")


@dataclass
class Talk:
    """What one client got back: the events in order and how the server closed."""

    events: list[dict] = field(default_factory=list)
    code: int | None = None
    reason: str = ""

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def finals(self) -> list[dict]:
        return [e for e in self.of("utterance") if e["final"]]

    def stats(self) -> Stats:
        [last] = self.of("stats")[-1:]
        assert self.events[-1] is last, "the final stats is the last event"
        return event_from_json(last)  # type: ignore[return-value]


def start_server(folder: Path, *flags: str, scheme: str = "ws") -> Served:
    """`fdrl serve` on an ephemeral loopback port, once it says where it listens."""
    args = [sys.executable, "-m", "stream.cli", "serve", "--port", "0", *flags,
            "--set", f"paths.cache_dir='{folder / 'cache'}'", *(a for k, v in LIMITS.items() for a in ("--set", f"serve.{k}={v}"))]
    log = folder / "stderr.txt"
    with open(log, "w") as err:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(args, stderr=err, text=True)
    deadline = time.monotonic() + 120
    while not (found := re.search(rf"listening on {scheme}://127\.0\.0\.1:(\d+)/ws", log.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, f"fdrl serve did not start: {log.read_text()}"
        time.sleep(0.1)
    return Served(proc, int(found.group(1)))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Served:
    served = start_server(tmp_path_factory.mktemp("serve"), "--token", TOKEN)
    yield served
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait()


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Speech:
    return speech_file(tmp_path_factory.mktemp("speech") / "three.wav", THREE, pause=1.0)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def wav_pcm(path: Path) -> bytes:
    """A 16 kHz mono 16-bit WAV's samples, as a client sends them by default."""
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        return w.readframes(w.getnframes())


def blocks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


async def talk(url: str, messages: list[str | bytes], pace_s: float = 0.0, read: bool = True, **kw) -> Talk:
    """Send `messages` (every `pace_s`), then read every event until the server closes."""
    got = Talk()
    async with connect(url, compression=None, **kw) as ws:
        async def send() -> None:
            for m in messages:
                await ws.send(m)
                await asyncio.sleep(pace_s)
        sender = asyncio.create_task(send())
        try:
            async for text in ws:
                got.events.append(json.loads(text))
        except ConnectionClosed:
            pass
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        got.code, got.reason = ws.close_code, ws.close_reason or ""
    return got


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def start(**fields) -> str:
    return json.dumps({"type": "start", **fields})


END = json.dumps({"type": "end"})


# -- the protocol round trip -----------------------------------------------------------------------

@pytest.mark.parametrize("rate, fmt", [(16000, "pcm16"), (44100, "f32")])
def test_round_trip_any_rate_and_format(server, speech, rate, fmt):
    """Speech in (resampled by the server), every event back as JSONL's schema, a final stats, a normal close."""
    audio = decode_audio(speech.path)
    if rate != SAMPLE_RATE:
        audio = resample_poly(audio, rate // 100, SAMPLE_RATE // 100).astype(np.float32)
    data = pcm16(audio) if fmt == "pcm16" else audio.astype("<f4").tobytes()
    got = run(talk(server.url(), [start(sample_rate=rate, format=fmt), *blocks(data, rate // 5 * (2 if fmt == "pcm16" else 4)), END]))
    assert (got.code, got.reason) == (1000, "end of audio")
    for e in got.events:  # the --jsonl schema: each event parses back into its dataclass
        event_from_json(e)
    finals = got.finals()
    assert len(finals) == len(THREE)
    for u, (s, e), keys in zip(finals, speech.spans, speech.keys):
        assert word_recall(keys, u["text"]) >= MIN_RECALL, u["text"]
        assert u["start"] <= s + 0.05 and u["end"] >= e - 0.05  # seconds of the client's own audio
        assert u["label"] in config.load().labels.names + ["uncertain"] and set(u["scores"]) >= {u["best_guess"]}
    stats = got.stats()
    assert_accounting(stats)
    assert stats.segments_closed == len(THREE) and stats.errors == 0
    assert len(got.of("speech_started")) == stats.segments_closed + stats.discarded
    assert not got.of("level")  # only on request (`"levels": true`)


def test_same_labels_as_replay(server, tmp_path):
    """The demo session through the socket gives the labels `fdrl replay` gives on the same file."""
    data = wav_pcm(DEMO)
    got = run(talk(server.url(), [start(), *blocks(data, 32000), END]))

    async def replayed() -> list[Utterance]:
        cfg = config.load(overrides=[f"paths.cache_dir='{tmp_path}'"])
        async with Recognizer(cfg, face=False) as rec:
            return [e async for e in rec.run(FileSource(DEMO)) if isinstance(e, Utterance) and e.final]

    replay = run(replayed())
    assert len(replay) == 10
    assert [(u["start"], u["end"], u["label"]) for u in got.finals()] == [(u.start, u.end, u.label) for u in replay]


def test_levels_on_request(server, speech):
    tenth = pcm16(np.zeros(SAMPLE_RATE // 10, np.float32))
    got = run(talk(server.url(), [start(levels=True), *[tenth] * 10, END]))
    assert got.code == 1000 and len(got.of("level")) == 10  # one per 0.1 s


# -- who may connect -------------------------------------------------------------------------------

def status_of(url: str, **kw) -> int:
    async def attempt() -> int:
        try:
            async with connect(url, **kw):
                return 101
        except InvalidStatus as e:
            return e.response.status_code
    return run(attempt())


def test_token_required_before_any_audio(server):
    assert status_of(server.url(token=None)) == 401
    assert status_of(server.url(token="wrong")) == 401
    assert status_of(server.url(token=None), additional_headers={"Authorization": "Bearer wrong"}) == 401
    assert status_of(server.url(token=None), additional_headers={"Authorization": f"Bearer {TOKEN}"}) == 101
    assert status_of(server.url()) == 101


def test_cross_origin_rejected(server):
    assert status_of(server.url(), origin="http://evil.example") == 403
    assert status_of(server.url(), origin=f"http://127.0.0.1:{server.port + 1}") == 403
    assert status_of(server.url(), origin=f"http://localhost:{server.port}") == 101


def test_loopback_without_token_answers_loopback_names_only():
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as Host."""
    settings = config.load().serve
    gate = Gate(settings, ServeOptions(), 8765, lambda: 0)
    ok = Request("/ws", Headers({"Host": "127.0.0.1:8765", "Origin": "http://127.0.0.1:8765"}))
    rebound = Request("/ws", Headers({"Host": "attacker.example:8765", "Origin": "http://attacker.example:8765"}))
    assert gate.refusal(ok) is None
    assert gate.refusal(rebound)[0] == 403


def test_connection_limit(server):
    async def keep_talking(ws) -> None:  # within the idle timeout, however slowly the others connect
        while True:
            await ws.send(SILENCE)
            await asyncio.sleep(0.2)

    async def main() -> int:
        held, talking = [], []
        try:
            for _ in range(LIMITS["max_connections"]):
                held.append(await connect(server.url()))
                talking.append(asyncio.create_task(keep_talking(held[-1])))
            return await asyncio.to_thread(status_of, server.url())
        finally:
            for task in talking:
                task.cancel()
            for ws in held:
                await ws.close()
    assert run(main()) == 503


def test_serving_off_loopback_needs_a_token(monkeypatch, capsys):
    from stream.cli import main
    monkeypatch.delenv("FDRL_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fdrl: error: serving on 0.0.0.0 (not loopback) needs a token") and "\n" not in err


def test_tls(tmp_path):
    """--certfile/--keyfile: the page over https://, the protocol over wss://, with a self-signed certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    served = start_server(tmp_path, "--certfile", str(cert), "--keyfile", str(key), scheme="wss")
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        page = urllib.request.urlopen(f"https://127.0.0.1:{served.port}/", context=trust, timeout=10)
        assert page.status == 200 and b"fdrl-stream" in page.read()
        got = run(talk(f"wss://127.0.0.1:{served.port}/ws", [start(), SILENCE, END], ssl=trust))
        assert got.code == 1000 and got.of("stats")
        with pytest.raises(ssl.SSLError):  # a client that does not trust the certificate cannot talk to it
            run(talk(f"wss://127.0.0.1:{served.port}/ws", [END]))
    finally:
        served.proc.terminate()
        served.proc.wait(10)


# -- malformed input -------------------------------------------------------------------------------

F32_NAN = np.array([0.0, np.nan], "<f4").tobytes()
SILENCE = pcm16(np.zeros(1600, np.float32))
MALFORMED = {
    "not json": ["hello"],
    "json array": ["[1, 2]"],
    "json number": ["42"],
    "no type": ["{}"],
    "unknown type": [json.dumps({"type": "pause"})],
    "rate as text": [start(sample_rate="16000")],
    "rate as bool": [start(sample_rate=True)],
    "fractional rate": [start(sample_rate=16000.5)],
    "NaN rate": ['{"type": "start", "sample_rate": NaN}'],
    "zero rate": [start(sample_rate=0)],
    "huge rate": [start(sample_rate=10 ** 9)],
    "unknown format": [start(format="mp3")],
    "format not text": [start(format=5)],
    "unknown start field": [start(channels=2)],
    "levels not bool": [start(levels="yes")],
    "start after audio": [SILENCE, start()],
    "second start": [start(), start()],
    "odd pcm16 bytes": [start(), b"\x00\x01\x02"],
    "f32 bytes not whole": [start(format="f32"), b"\x00" * 6],
    "f32 NaN": [start(format="f32"), F32_NAN],
    "f32 infinity": [start(format="f32"), np.array([np.inf], "<f4").tobytes()],
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_message_gets_one_error_and_a_policy_close(server, case):
    got = run(talk(server.url(), MALFORMED[case], pace_s=0.05))
    [error] = got.of("error")
    assert error["stage"] == "protocol" and error["message"]
    assert got.code == 1008, (got.code, got.reason)
    assert_accounting(got.stats())


def test_message_after_end(server, speech):
    """While the server still labels what it holds after `end`, the client may only read."""
    got = run(talk(server.url(), [start(), *blocks(wav_pcm(speech.path), 32000), END, SILENCE]))
    [error] = got.of("error")
    assert "nothing may follow the end message" in error["message"] and got.code == 1008
    assert len(got.finals()) == len(THREE)  # what was sent before it is still labelled
    assert_accounting(got.stats())


def test_idle_client_is_closed(server):
    t0 = time.monotonic()
    got = run(talk(server.url(), [start(), SILENCE]))
    assert got.code == 1008 and "idle_timeout_s" in got.of("error")[0]["message"]
    assert time.monotonic() - t0 < LIMITS["idle_timeout_s"] + 2


def test_audio_limit(server):
    second = pcm16(np.zeros(SAMPLE_RATE, np.float32))
    got = run(talk(server.url(), [start(), *[second] * int(LIMITS["max_audio_s"] + 2)]))
    [error] = got.of("error")
    assert got.code == 1008 and "max_audio_s" in error["message"]
    assert got.stats().time == pytest.approx(LIMITS["max_audio_s"], abs=0.1)  # what came before the limit was heard


def test_message_too_big(server):
    got = run(talk(server.url(), [start(), b"\x00" * (LIMITS["max_message_bytes"] + 2)]))
    assert got.code == 1009


def test_a_bad_client_does_not_disturb_the_others(server, speech):
    good = blocks(wav_pcm(speech.path), 6400)

    async def main() -> tuple[Talk, list[Talk]]:
        return await asyncio.gather(talk(server.url(), [start(), *good, END], pace_s=0.02),
                                    asyncio.gather(*(talk(server.url(), MALFORMED[c], pace_s=0.05)
                                                     for c in ("not json", "f32 NaN", "odd pcm16 bytes"))))

    ok, bad = run(main())
    assert ok.code == 1000 and len(ok.finals()) == len(THREE) and not ok.of("error")
    assert [b.code for b in bad] == [1008] * 3


# -- a client that stops reading -------------------------------------------------------------------

def test_client_that_stops_reading_is_cut_off(server):
    """It asks for level events and sends audio, but never reads: the server cuts it off instead of
    queueing for it (no final stats, no idle-timeout error: it was not waiting), and goes on serving."""
    async def main() -> tuple[Talk, float]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills quickly
        sock.connect(("127.0.0.1", server.port))
        tenth = pcm16(0.001 * np.random.default_rng(0).standard_normal(SAMPLE_RATE // 10).astype(np.float32))
        got = Talk()
        async with connect(server.url(), sock=sock, max_queue=1, compression=None) as ws:
            await ws.send(start(levels=True))
            t0 = time.monotonic()
            try:  # ten minutes of audio, a level event per tenth of a second: the client never reads them
                for _ in range(6000):
                    await ws.send(tenth)
            except ConnectionClosed:
                pass
            cut_after = time.monotonic() - t0
            with contextlib.suppress(ConnectionClosed):  # now read what got through
                while True:
                    got.events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            got.code = ws.close_code
        return got, cut_after

    got, cut_after = run(main())
    assert got.code in (1006, 1008) and not got.of("stats") and not got.of("error"), (got.code, len(got.events))
    assert len(got.of("level")) < 6000
    assert status_of(server.url()) == 101


# -- the browser page ------------------------------------------------------------------------------

def chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        message = "the browser test needs Debian's chromium and chromium-driver (make setup installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return browser, driver


def test_browser_page_shows_live_labels_and_transcript(server, speech, tmp_path):
    """Chromium's fake microphone plays the speech file into the page; the page shows its words and labels."""
    browser, driver = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={speech.path}",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1000,900"):
        options.add_argument(flag)
    page = webdriver.Chrome(service=Service(driver), options=options)
    page.set_page_load_timeout(20)
    try:
        page.get(f"http://127.0.0.1:{server.port}/?token={TOKEN}")
        page.find_element(By.ID, "start").click()
        transcript = lambda: page.find_element(By.ID, "transcript").text.lower()
        WebDriverWait(page, 60).until(lambda _: all(word_recall(keys, transcript()) >= MIN_RECALL for keys in speech.keys))
        labels = [line.get_attribute("data-label") for line in page.find_elements(By.CSS_SELECTOR, "#transcript p")]
        names = config.load().labels.names + ["uncertain"]
        assert labels and all(label in names for label in labels)
        assert page.find_element(By.ID, "label").text in names
        assert len(page.find_elements(By.CSS_SELECTOR, "#bars .bar")) == len(config.load().labels.names)
        assert "label" in page.find_element(By.ID, "latency").text
        shot = tmp_path / "serve-page.png"
        page.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        page.find_element(By.ID, "stop").click()
        WebDriverWait(page, 10).until(lambda _: "closed (1000" in page.find_element(By.ID, "status").text)
    finally:
        page.quit()


# -- shutdown ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_closes_every_connection_with_final_stats_within_2_s(tmp_path, speech, signum):
    served = start_server(tmp_path, "--token", TOKEN)
    data = blocks(wav_pcm(speech.path), 3200)  # 0.1 s a message, sent at real-time pace

    async def main() -> tuple[list[Talk], float, float]:
        # One client in its second sentence when the signal comes (that segment is labelled first),
        # one that has only sent silence so far.
        clients = [asyncio.create_task(talk(served.url(), [start(), *data], pace_s=0.1))]
        await asyncio.sleep(speech.spans[1][0] + 0.5)  # 0.7 s into the second sentence at the signal
        clients.append(asyncio.create_task(talk(served.url(), [start(), *data], pace_s=0.1)))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        served.proc.send_signal(signum)
        talks = await asyncio.gather(*clients)
        closed = time.monotonic() - t0
        await asyncio.to_thread(served.proc.wait, 5)
        return talks, closed, time.monotonic() - t0

    try:
        talks, closed_s, exited_s = run(main())
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    for got in talks:
        assert (got.code, got.reason) == (1001, "server stopping")
        assert_accounting(got.stats())
    assert talks[0].stats().utterances == 2 and talks[1].stats().segments_closed == 0
    assert closed_s < 2.0 and exited_s < 2.0 and served.proc.returncode == 0
