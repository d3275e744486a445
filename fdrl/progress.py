"""What a long job tells its user, on stderr so stdout stays clean for `--json` output and pipes:
Rich progress bars on a terminal, and log lines (`setup_logging`) that also reach a file or a
non-terminal stderr, where no bar is drawn.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True)
log = logging.getLogger(__name__)
# The project's loggers: `setup_logging` shows their INFO lines; other libraries' stay at WARNING.
PROJECT_LOGGERS = ("fdrl", "stream")
_installed: list[logging.Handler] = []  # the handlers the last setup_logging call added, for the next to replace


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield an `advance(n)` callback driving one progress bar; log the stage's size and time when it
    ends, the record that a log file or a non-terminal stderr keeps instead of the bar."""
    with progress_bars({description: total}) as advance:
        yield advance[description]


@contextmanager
def progress_bars(totals: dict[str, float]) -> Iterator[dict[str, Callable[[float], None]]]:
    """One bar per entry of `totals` (e.g. files and audio seconds), drawn together; yields each one's
    `advance(n)` by its description, and logs every total and the time taken when they end."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    start = time.perf_counter()
    with Progress(*columns, console=stderr, transient=False, disable=not stderr.is_terminal) as bar:
        tasks = {description: bar.add_task(description, total=total) for description, total in totals.items()}
        yield {description: (lambda n=1, task=task: bar.advance(task, n)) for description, task in tasks.items()}
    for description, total in totals.items():
        log.info("%s: %s in %.1f s", description, round(total, 1), time.perf_counter() - start)


def setup_logging(verbose: bool = False, log_file: Path | None = None) -> None:
    """Show the project's log lines on stderr, INFO or with `verbose` DEBUG too: through Rich, above
    any progress bar, on a terminal; one unwrapped `fdrl: ...` line each otherwise, for grep and pipes.
    With `log_file`, also append every line (DEBUG included) with its time there.

    For the `fdrl` command; a program using the library configures logging its own way. Calling it
    again replaces what the previous call set up. The file is opened here, so a path that cannot be
    written fails before the work starts.
    """
    file_handler = None
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")  # appends: never truncates
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = (RichHandler(console=stderr, show_path=False, markup=False, rich_tracebacks=False)
               if stderr.is_terminal else _PlainHandler())
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    new = [h for h in (console, file_handler) if h is not None]
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        for handler in _installed:
            logger.removeHandler(handler)
        for handler in new:
            logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose or file_handler else logging.INFO)
    for handler in _installed:
        handler.close()
    _installed[:] = new


class _PlainHandler(logging.Handler):
    """`fdrl: message` (`fdrl: warning: message` above INFO) as one line on stderr, like `warn`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
            stderr.print(f"fdrl: {level}{record.getMessage()}", markup=False, highlight=False, soft_wrap=True)
        except Exception:  # logging's contract: a failed emit reports itself and never raises
            self.handleError(record)
