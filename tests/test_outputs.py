"""Output files (fdrl/outputs.py), the feature cache's writes and the skip log: the pieces under the
bad-input corpus's output cases (tests/test_bad_input.py), tested one by one."""
from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from fdrl.errors import UserError
from fdrl.features import FeatureCache
from fdrl.outputs import OutputError, atomic_write, check_outputs, os_reason, path_kind, write_atomic
from fdrl.skips import SkipLog
from stream.events import SpeechStarted
from stream.record import JsonlWriter, RecordingError, SessionRecorder, load_session


def leftovers(folder: Path) -> list[str]:
    """Temporaries or probes left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def fail_fsync(monkeypatch) -> None:
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)


# -- atomic_write ---------------------------------------------------------------------------------------


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_atomic(path, '{"a": 1}')
    write_atomic(path, b'{"a": 2}')
    assert json.loads(path.read_text()) == {"a": 2} and leftovers(path.parent) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the previous checkpoint")
    fail_fsync(monkeypatch)  # a full disk shows at the flush to disk
    with pytest.raises(OutputError, match=r"cannot write .*model\.pt: No space left on device \(free some disk space"):
        write_atomic(path, b"x" * 100_000)
    assert path.read_bytes() == b"the previous checkpoint" and leftovers(tmp_path) == []


def test_an_error_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(ValueError), atomic_write(path) as f:
        f.write(b"half")
        raise ValueError("the plot failed")
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_atomic_write_keeps_permissions_and_follows_symlinks(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}")
    real.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_atomic(link, "[]")
    assert link.is_symlink() and real.read_text() == "[]"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_concurrent_writers_of_one_target_never_share_a_temporary(tmp_path):
    path = tmp_path / "entry.bin"
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(20):
                write_atomic(path, bytes([k]) * 10_000, durable=False)
        except BaseException as e:  # noqa: BLE001 - collected for the assert below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = path.read_bytes()
    assert errors == [] and len(data) == 10_000 and len(set(data)) == 1 and leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["/dev/null", "/dev/full"])
def test_atomic_write_refuses_a_device(target):
    with pytest.raises(OutputError, match="not a regular file"):
        write_atomic(target, b"x")
    assert stat.S_ISCHR(os.stat(target).st_mode)  # still the device: a rename would have replaced it


@pytest.mark.parametrize("code, fix", [
    (errno.ENOSPC, "free some disk space"),
    (errno.EROFS, "not mounted read-only"),
    (errno.EACCES, "a folder you may write to"),
    (errno.ENOTDIR, "a part of the path is a file"),
])
def test_each_errno_gets_its_own_fix(code, fix):
    reason = os_reason(OSError(code, os.strerror(code)))
    assert reason.startswith(os.strerror(code)) and fix in reason
    assert ("free some disk space" in reason) == (code == errno.ENOSPC)


# -- check_outputs --------------------------------------------------------------------------------------


def test_check_outputs_accepts_new_and_existing_files(tmp_path):
    (tmp_path / "old.png").write_bytes(b"old")
    check_outputs({"--plot": tmp_path / "old.png", "--jsonl": tmp_path / "new" / "e.jsonl", "--out": None},
                  [tmp_path / "in.wav"])
    assert (tmp_path / "new").is_dir() and leftovers(tmp_path / "new") == [] and leftovers(tmp_path) == []


def test_a_stream_may_be_a_fifo_or_a_device_but_a_file_output_may_not(tmp_path):
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    check_outputs({"--jsonl": fifo}, streams={"--jsonl"})
    check_outputs({"--jsonl": Path("/dev/null")}, streams={"--jsonl"})
    with pytest.raises(UserError, match="is a FIFO, not a regular file"):
        check_outputs({"--plot": fifo})


def test_path_kind_names_what_is_there(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    assert [path_kind(p) for p in (tmp_path / "nope", tmp_path, fifo, "/dev/zero", __file__)] == [
        "missing", "a folder", "a FIFO", "a device", "a file"]


# -- the feature cache ----------------------------------------------------------------------------------


def test_two_writers_of_one_cache_entry_both_succeed(tmp_path):
    """Two runs encoding the same item at once used to collide on one temporary name (FileNotFoundError)."""
    caches = [FeatureCache(tmp_path) for _ in range(6)]
    barrier = threading.Barrier(len(caches))
    errors: list[BaseException] = []
    arrays = {"audio": np.arange(50_000, dtype=np.float16)}

    def put(cache: FeatureCache) -> None:
        try:
            barrier.wait()
            for _ in range(10):
                cache.put("audio", "ab" * 32, arrays)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=put, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and all(c.writable for c in caches)
    got = caches[0].get("audio", "ab" * 32)
    assert got is not None and np.array_equal(got["audio"], arrays["audio"])
    assert leftovers(tmp_path / "features" / "audio" / "ab") == []


def test_an_unwritable_cache_warns_once_at_construction_and_the_run_goes_on(tmp_path):
    (tmp_path / "features").write_text("a file where the cache folder should be")
    warnings: list[str] = []
    cache = FeatureCache(tmp_path, warn=warnings.append)
    assert not cache.writable and len(warnings) == 1
    assert "cannot be written" in warnings[0] and "going on without storing features" in warnings[0]
    cache.put("text", "cd" * 32, {"text": np.zeros(3, np.float16)})  # no error, no second warning
    assert cache.get("text", "cd" * 32) is None and len(warnings) == 1


def test_a_cache_write_that_fails_later_stops_caching_with_one_warning(tmp_path, monkeypatch):
    warnings: list[str] = []
    cache = FeatureCache(tmp_path, warn=warnings.append)
    assert cache.writable
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    cache.put("text", "ef" * 32, {"text": np.zeros(3, np.float16)})
    cache.put("text", "ef" * 32, {"text": np.zeros(3, np.float16)})
    assert not cache.writable and len(warnings) == 1 and "No space left on device" in warnings[0]
    assert leftovers(tmp_path / "features" / "text" / "ef") == []


# -- the skip log ---------------------------------------------------------------------------------------


def test_skip_log_warns_per_line_unless_strict_and_counts_repeats_apart():
    warned: list[str] = []
    lenient = SkipLog(strict=False, warn=warned.append)
    lenient.skip("m.jsonl line 3", "bad")
    lenient.repeat("m.jsonl line 5", "line 1")
    lenient.check()  # lenient: nothing raised
    assert len(lenient) == 1 and lenient.summary() == {"skipped": 1, "repeated": 1}
    assert warned == ["m.jsonl line 3: bad (skipped)",
                      "m.jsonl line 5: repeats line 1 (an item counted twice would weigh double) (dropped)"]
    strict = SkipLog(warn=warned.append)
    strict.skip("m.jsonl line 3", "bad")
    strict.skip("m.jsonl line 4", "worse")
    with pytest.raises(UserError, match=r"^m\.jsonl line 3: bad \(and 1 more bad lines\)$"):
        strict.check()


# -- the recording ----------------------------------------------------------------------------------------


def test_session_json_rewrite_on_a_full_disk_leaves_no_temporary(tmp_path, monkeypatch):
    d = tmp_path / "s"
    rec = SessionRecorder(d)
    rec.write_event(SpeechStarted("mic", 0.0))
    fail_fsync(monkeypatch)
    rec.close()  # the final session.json cannot be written: the first one stays, the truth so far
    assert leftovers(d) == [] and load_session(d).meta["complete"] is False


def test_a_recording_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"is not empty \(it holds notes\.txt\): pass a new or empty folder"):
        SessionRecorder(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_jsonl_under_a_file_names_the_real_reason(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecordingError) as info:
        JsonlWriter(tmp_path / "file" / "events.jsonl")
    assert "Not a directory" in str(info.value) and "free some disk space" not in str(info.value)


def test_a_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    from fdrl import checkpoint
    ckpt = checkpoint.load(tiny_checkpoint)
    path = tmp_path / "fdrl.safetensors"
    path.write_bytes(tiny_checkpoint.read_bytes())
    checkpoint.settings_path(path).write_bytes(checkpoint.settings_path(tiny_checkpoint).read_bytes())
    fail_fsync(monkeypatch)
    with pytest.raises(OutputError, match=r"fdrl\.safetensors: No space left on device"):
        checkpoint.save(path, ckpt.model, ckpt.labels, ckpt.dims, ckpt.encoders, ckpt.model_config,
                        speaker_norm=ckpt.speaker_norm)
    assert path.read_bytes() == tiny_checkpoint.read_bytes() and leftovers(tmp_path) == []
    assert checkpoint.settings_path(path).read_bytes() == checkpoint.settings_path(tiny_checkpoint).read_bytes()
