"""fdrl-stream as a library: emotion-labelled utterances from a file, then from your own audio chunks.

    python examples/library.py [AUDIO] [--checkpoint PATH]

AUDIO defaults to demo/session/audio.wav, the checkpoint to `paths.checkpoint` in config.toml.
Both runs share one `Recognizer`: the models load once, whatever the number of sources.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from fdrl import config
from fdrl.audio import SAMPLE_RATE, decode_audio
from fdrl.errors import UserError
from stream.events import Event, Utterance
from stream.pipeline import Recognizer
from stream.sources import ChunkSource, FileSource

DEMO = Path(__file__).resolve().parent.parent / "demo" / "session" / "audio.wav"


async def print_final(events: AsyncIterator[Event]) -> None:
    async for event in events:
        # Each segment gives a provisional utterance (voice only) and then the final one (voice + words).
        if isinstance(event, Utterance) and event.final:
            # `label` is "uncertain" below labels.uncertain_below; `best_guess` is always the best label.
            print(f"  {event.start:6.2f}-{event.end:6.2f} s  {event.label:<10} {event.best_guess:<10} "
                  f"{event.scores[event.best_guess]:.2f}  {event.text.strip()}")


async def my_audio(path: Path, block_ms: int = 20) -> AsyncIterator[np.ndarray]:
    """Stands in for your own capture loop: any async iterator of numpy blocks will do.

    Blocks may have any length, any sample rate (tell ChunkSource which) and shape (frames,) or
    (frames, channels); here they are 20 ms slices of a 16 kHz mono file.
    """
    audio = decode_audio(path)
    step = SAMPLE_RATE * block_ms // 1000
    for k in range(0, len(audio), step):
        yield audio[k:k + step]
        await asyncio.sleep(0)  # a real source would await its device here


async def main(path: Path, checkpoint: Path | None) -> None:
    file_source = FileSource(path)  # checks the file before the models load
    async with Recognizer(config.load(), checkpoint) as recognizer:
        print(f"{path}, through FileSource (as fast as the models go):")
        await print_final(recognizer.run(file_source))
        print("the same audio as your own chunks, through ChunkSource:")
        await print_final(recognizer.run(ChunkSource(audio=my_audio(path), sample_rate=SAMPLE_RATE), stream="mine"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path, nargs="?", default=DEMO, help="an audio or video file")
    parser.add_argument("--checkpoint", type=Path, help="default: paths.checkpoint in config.toml")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.audio, args.checkpoint))
    except UserError as e:
        print(f"library.py: error: {e}", file=sys.stderr)
        sys.exit(2)
