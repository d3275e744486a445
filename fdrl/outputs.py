"""Output files: checked before any work starts, and written so that a failure never destroys anything.

A recording and training tool must never overwrite what it reads, and must not spend an hour of
work only to fail on a path it could have checked first. So every command passes its output paths
to `check_outputs` before it loads a model: an output may not be one of the inputs (the same file
by identity, so symlinks and hard links count), may not replace an existing file inside an input
folder, may not be a folder (or, for a folder output, a folder that already holds files), may not
be a device or FIFO that a rename would replace, and its folder must take a new file (probed by
creating and removing one).

Files written whole (checkpoints, reports, plots, metadata, cache entries) go through
`atomic_write`: a temporary file in the same folder with a name unique to this process and thread,
flushed to disk, then renamed over the target. A reader sees the old file or the new one, never
half of one; a failed write (disk full, killed process) leaves the old file as it was and removes
its temporary. Files that grow while a session runs (the recording, `--jsonl`) are written in place
instead, so they can be read while they grow; `check_outputs` is what protects the inputs there.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fdrl.errors import UserError

if TYPE_CHECKING:
    from fdrl.config import Config


class OutputError(OSError):
    """Writing an output failed (disk full, no permission, ...). The message is one line naming the
    file, the reason and the fix; what was there before is unchanged."""


# The fix to suggest for each errno; the reason itself is the system's own message.
_FIXES = {
    errno.ENOSPC: "free some disk space or write to another disk",
    errno.EDQUOT: "free some space within your quota or write to another disk",
    errno.EACCES: "write to a folder you may write to",
    errno.EPERM: "write to a folder you may write to",
    errno.EROFS: "write to a disk that is not mounted read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.ENOENT: "a folder on the path is missing: create it or fix the path",
    errno.EISDIR: "it is a folder: pass a file name",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.EFBIG: "the file system cannot hold a file this large: write to another disk",
    errno.EIO: "the disk reported an error: check it, or write to another disk",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files on the system: close some programs",
    errno.EXDEV: "the temporary file and the target are on different disks: write elsewhere",
}


def os_reason(e: OSError) -> str:
    """`e` as "reason (fix)", the fix chosen by errno: a full disk and a read-only one need different advice."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.EEXIST:  # what mkdir says when a file stands where a folder must be
        e = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        reason = e.strerror
    fix = _FIXES.get(e.errno) if e.errno is not None else None
    return f"{reason} ({fix})" if fix else reason


def write_error(path: Path | str, e: OSError) -> OutputError:
    """The OutputError for a failed write of `path`."""
    return OutputError(f"cannot write {path}: {os_reason(e)}")


# -- checking before any work -------------------------------------------------------------------------


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file `path` names, symlinks followed; None when there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def path_kind(path: Path | str) -> str:
    """What `path` names, for messages: "missing", "a file", "a folder", "a FIFO", "a device", "a socket".

    Symlinks are followed; a path the system cannot look at (too long, no permission) is "missing".
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return "missing"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def config_inputs(cfg: Config) -> list[Path]:
    """The files every model command reads through the config besides its checkpoint: config.toml,
    the face weights and the tuned text layers. No output may replace them either."""
    from fdrl.config import DEFAULT_CONFIG
    files = [DEFAULT_CONFIG, cfg.resolve(cfg.paths.face_weights)]
    return files + ([cfg.resolve(cfg.encoders.text_tuned)] if cfg.encoders.text_tuned else [])


def _real(path: Path) -> Path:
    """`path` absolute with every symlink resolved (never raises, unlike Path.resolve on a loop)."""
    return Path(os.path.realpath(path))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def folder_entries(folder: Path) -> list[str]:
    """The names in `folder` (sorted; empty when it does not exist)."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def require_empty_folder(what: str, folder: Path) -> None:
    """UserError unless `folder` is missing or empty: a command that fills a folder never mixes its
    files with someone else's, nor overwrites them."""
    path = Path(folder)
    kind = path_kind(path)
    if kind not in ("missing", "a folder"):
        raise UserError(f"{what} {path} is {kind}, not a folder (pass a new folder name)")
    try:
        names = folder_entries(path)
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read: {os_reason(e)}") from None
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"{what} {path} is not empty (it holds {shown}): pass a new or empty folder")


def probe_folder(folder: Path, prefix: str = ".fdrl-probe.") -> None:
    """Create `folder` if needed, then create, write, flush and remove a file in it.

    Raises the OSError that a real write would meet (read-only disk, no permission, a full disk, a
    name too long), so it is found before the work, not after it. `atomic_write`'s temporaries are
    named `.NAME.` + 8 characters + `.tmp`, so the prefix `.NAME.` probes exactly that name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    try:
        os.write(fd, b"\0")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def check_outputs(outputs: Mapping[str, Path | str | None], inputs: Iterable[Path | str | None] = (), *,
                  folders: Mapping[str, Sequence[str]] | None = None, streams: Collection[str] = ()) -> None:
    """Refuse, before any work, output paths that would destroy an input or cannot be written.

    `outputs` maps each output's name as the user knows it (the flag, e.g. "--plot") to its path;
    None means not given. A name in `folders` is a folder output that the command fills with the
    listed file names; it must be missing or empty. A name in `streams` is written line by line
    and may also be a FIFO or a character device (`--jsonl /dev/stdout`); every other file output
    must be a regular file or not exist yet, since it is renamed into place. `inputs` are the files
    and folders the command reads; None entries are ignored. Raises a one-line UserError.
    """
    folders = folders or {}
    given = [Path(p).expanduser() for p in inputs if p is not None]
    input_ids = {ident: p for p in given if (ident := _identity(p)) is not None}
    input_dirs = [_real(p) for p in given if p.is_dir()]
    written: dict[Path, str] = {}  # each file some output will write (symlinks resolved) -> its output's name
    probes: list[tuple[str, Path, Path, str]] = []  # made once every output passed: a refused run creates nothing
    for name, value in outputs.items():
        if value is None:
            continue
        path = Path(value).expanduser()
        if name in folders:
            for source in given:
                if _is_within(_real(source), _real(path)):
                    raise UserError(f"{name} {path} holds the input {source}: pass a new folder")
            require_empty_folder(name, path)
            files, folder, prefix = [path / f for f in folders[name]], path, ".fdrl-probe."
        else:
            _check_file_target(name, path, stream=name in streams)
            files, folder, prefix = [path], path.parent, f".{path.name}."
        for f in files:
            ident = _identity(f)
            if ident is not None and ident in input_ids:
                same = input_ids[ident]
                what = "the input" if _real(same) == _real(f) else "the same file as the input"
                raise UserError(f"{name} {f} is {what} {same}: writing it would destroy it (pass another path)")
            real = _real(f)
            if ident is not None and any(_is_within(real, d) for d in input_dirs):
                raise UserError(f"{name} {path} would overwrite a file inside an input folder (pass another path)")
            if real in written:
                raise UserError(f"{name} {path} and {written[real]} would write the same file (pass two different paths)")
            written[real] = name
        if not _is_pipe(path):
            probes.append((name, path, folder, prefix))
    for name, path, folder, prefix in probes:
        try:
            probe_folder(folder, prefix)
        except (OSError, ValueError) as e:
            reason = os_reason(e) if isinstance(e, OSError) else str(e)
            raise UserError(f"{name} {path}: cannot write in {folder}: {reason}") from None


def _is_pipe(path: Path) -> bool:
    """A FIFO or a device: written straight through, never replaced by a rename."""
    return path_kind(path) in ("a FIFO", "a device")


def _check_file_target(name: str, path: Path, stream: bool) -> None:
    """A file output must be a regular file or not exist (a stream may also be a FIFO or character device)."""
    kind = path_kind(path)
    if kind in ("missing", "a file") or (stream and _is_pipe(path)):
        return
    if kind == "a folder":
        raise UserError(f"{name} {path} is a folder: pass the path of a file (inside it or elsewhere)")
    raise UserError(f"{name} {path} is {kind}, not a regular file: pass a file path")


# -- writing whole files ------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask alone must set it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_mode(path: Path) -> int:
    """The permissions the file gets: those of the file it replaces, else what `open` would give it."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system lets a folder be synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path | str, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces `path` when the block ends without an error.

    The temporary file sits beside the target (a rename is atomic only within one file system)
    under a name unique to this process and thread, so concurrent writers of one target never
    share a temporary. A symlink target is followed: the file it points to is replaced, the link
    stays. An existing target that is not a regular file (a device, a FIFO, a folder) is refused,
    since the rename would replace it. `durable=False` skips the fsync calls (a cache entry that
    is lost in a power cut is just recomputed). Any OSError becomes an OutputError naming `path`.
    """
    target = Path(os.path.realpath(Path(path).expanduser()))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise write_error(path, e) from None
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"cannot write {path}: it is not a regular file (pass a file path)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _new_mode(target))
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise write_error(path, e) from None
        raise
    if durable:
        _sync_folder(target.parent)


def write_atomic(path: Path | str, data: bytes | str, durable: bool = True) -> None:
    """Write `data` (str as UTF-8) to `path` through `atomic_write`."""
    with atomic_write(path, durable) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
