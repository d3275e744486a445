"""Lines a batch job leaves out: each reported with where it is and why, counted, fatal only when strict.

One bad line in a long manifest or corpus (a 10 ms clip, a damaged file, a stray byte that is not
UTF-8) must not lose a whole evaluation or training run. Loaders and the encoding step hand every
line they cannot use to a `SkipLog` instead of raising: it warns once per line (file and line
number, the reason) and counts them, so the command can say how many lines its figures leave out
and exit non-zero. With `strict` (the library default, `--strict` on the command line) the first
bad line is a UserError instead, after every line of the file has been checked, so the message can
say how many more there are.

A line that repeats an earlier one is not an error but would silently count twice: it is dropped
with a warning naming both lines (`repeat`), under `strict` too, and counted apart.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fdrl.errors import UserError

if TYPE_CHECKING:
    from fdrl.data import Item
    from fdrl.features import FeatureExtractor, Sample

log = logging.getLogger(__name__)
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Skip:
    where: str    # "data/m.jsonl line 7", or a file for corpora without lines
    reason: str   # one line: what is wrong and, where it helps, the fix


class SkipLog:
    """The lines a run left out. `skip` records a bad line (and, unless strict, warns); `check`
    raises under strict; `repeat` drops a repeated line with a warning."""

    def __init__(self, strict: bool = True, warn: Callable[[str], None] | None = None) -> None:
        self.strict = strict
        self.skips: list[Skip] = []
        self.repeats: list[Skip] = []
        self._warn = warn or log.warning  # a warning reaches stderr even where no logging is set up

    def __len__(self) -> int:
        """Bad lines skipped (repeats not counted: they are not errors)."""
        return len(self.skips)

    def skip(self, where: str, reason: str) -> None:
        if len(reason) > MAX_REASON_CHARS:  # a reason that quotes the line (a 5000-character path) stays readable
            reason = reason[:MAX_REASON_CHARS - 1] + "…"
        self.skips.append(Skip(where, reason))
        if not self.strict:
            self._warn(f"{where}: {reason} (skipped)")

    def repeat(self, where: str, first: str) -> None:
        reason = f"repeats {first} (an item counted twice would weigh double)"
        self.repeats.append(Skip(where, reason))
        self._warn(f"{where}: {reason} (dropped)")

    def summary(self) -> dict[str, int]:
        """The counts a command's result reports."""
        return {"skipped": len(self.skips), "repeated": len(self.repeats)}

    def check(self) -> None:
        """Strict: the first line skipped so far as a UserError, with how many more there are."""
        if self.strict and self.skips:
            first, more = self.skips[0], len(self.skips) - 1
            raise UserError(f"{first.where}: {first.reason}" + (f" (and {more} more bad lines)" if more else ""))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def extract_each(extractor: FeatureExtractor, items: Sequence[Item], labels: Sequence[str], skips: SkipLog,
                 batch_size: int = 16, progress: Callable[[int], None] | None = None) -> tuple[list[Item], list[Sample]]:
    """Encode `items` as `FeatureExtractor.extract` does, leaving out the ones that cannot be encoded.

    Batches keep their speed: a batch that fails is encoded again item by item, so only the item
    that fails alone is skipped, with the encoder's own message (an undecodable file) or the
    exception it raised (a clip too short for Whisper). Returns the items kept and their samples,
    in input order. A MemoryError is not an item's fault and stops the run.
    """
    kept: list[Item] = []
    samples: list[Sample] = []
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        try:
            samples += extractor.extract(chunk, labels, batch_size=batch_size)
            kept += chunk
        except MemoryError:
            raise
        except Exception:
            for item in chunk:
                try:
                    samples += extractor.extract([item], labels)
                    kept.append(item)
                except MemoryError:
                    raise
                except UserError as e:
                    skips.skip(item.where or str(item.audio or item.video), _first_line(e))
                except Exception as e:
                    what = item.audio or item.video or "its text"
                    skips.skip(item.where or str(what), f"cannot encode {what}: {type(e).__name__}: {_first_line(e)}")
                skips.check()
        if progress:
            progress(len(chunk))
    return kept, samples
