"""RealtimeSTT on one WAV file fed at realtime pace: run by bench.peer in RealtimeSTT's own virtualenv
(it imports nothing of fdrl-stream). Prints one JSON object: each final transcript with the stream
time (seconds since the first sample was fed) at which RealtimeSTT returned it.

    PEER_VENV/bin/python bench/peer_realtimestt.py FILE.wav WHISPER_FOLDER '{"post_speech_silence_duration": 0.5}'
"""
from __future__ import annotations

import json
import sys
import threading
import time
import wave

import numpy as np

CHUNK_S = 0.1      # what fdrl's realtime replay feeds at a time
TRAILING_S = 3.0   # silence fed after the file, so the last sentence can end


def main() -> None:
    path, model, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    from RealtimeSTT import AudioToTextRecorder

    with wave.open(path, "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, "16 kHz mono PCM16 expected"
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    pcm = np.concatenate([pcm, np.zeros(int(TRAILING_S * 16000), np.int16)])
    # The same Whisper tiny.en int8 fdrl-stream bundles, from its folder; nothing is downloaded.
    recorder = AudioToTextRecorder(model=model, language="en", use_microphone=False, spinner=False, device="cpu",
                                   compute_type="int8", **options)
    finals: list[tuple[float, str]] = []
    t0 = 0.0
    feeding = threading.Event()

    def listen() -> None:
        while feeding.is_set():
            text = recorder.text()
            if text:
                finals.append((round(time.perf_counter() - t0, 4), text))

    step = int(CHUNK_S * 16000)
    t0 = time.perf_counter()
    feeding.set()
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    for k, lo in enumerate(range(0, len(pcm), step)):
        delay = t0 + k * CHUNK_S - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        recorder.feed_audio(pcm[lo:lo + step].tobytes(), 16000)
    feeding.clear()
    time.sleep(1.0)
    recorder.shutdown()
    print(json.dumps({"finals": finals, "options": options}))


if __name__ == "__main__":
    main()
