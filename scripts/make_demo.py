"""Generate the committed demo session: espeak-ng speaking sentences whose words carry emotions.

Writes demo/clips/NN-label.wav, demo/manifest.jsonl (for `fdrl eval`) and demo/session/audio.wav
(the same clips joined with pauses, for `fdrl replay`). The synthetic voice is flat, so the emotion
lives in the words: the demo exercises the whole path (VAD, Whisper, text and audio branches),
it is not an accuracy benchmark. Reproduce: `python scripts/make_demo.py` (needs espeak-ng).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from fdrl.audio import SAMPLE_RATE, decode_audio, write_wav

SENTENCES = [
    ("happiness", "I am so happy today, this is wonderful news!"),
    ("sadness", "I miss her so much, everything feels empty and sad."),
    ("anger", "Stop it right now, I am furious with you!"),
    ("neutral", "The meeting starts at ten in the second room."),
    ("fear", "I am scared, something is moving in the dark."),
    ("disgust", "That smell is disgusting, it makes me sick."),
    ("surprise", "Wow, I really did not expect that at all!"),
    ("happiness", "We won the game, I love you all!"),
    ("sadness", "He passed away last night and I cannot stop crying."),
    ("anger", "You lied to me again and I hate it."),
]
PAUSE_S = 1.2


def speak(text: str, path: Path, voice: str = "en-us", speed: int = 150) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)


def main(out: Path = Path("demo")) -> None:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: sudo apt-get install espeak-ng")
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    (out / "session").mkdir(exist_ok=True)
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    session = [pause]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, text) in enumerate(SENTENCES):
            raw = Path(tmp) / f"{k}.wav"
            speak(text, raw, voice="en-us" if k % 2 == 0 else "en-gb")
            audio = decode_audio(raw)
            clip = clips_dir / f"{k:02d}-{label}.wav"
            write_wav(clip, audio)
            session += [audio, pause]
            lines.append({"audio": str(clip.relative_to(out)), "label": label, "speaker": "espeak"})
    write_wav(out / "session" / "audio.wav", np.concatenate(session))
    (out / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"wrote {len(lines)} clips, {out / 'manifest.jsonl'} and {out / 'session' / 'audio.wav'}")


if __name__ == "__main__":
    main()
