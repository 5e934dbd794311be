"""Who may write where: one training process per run folder, and Snakemake's own lock, which a
killed Snakemake leaves behind.

Both rest on `flock`, which the kernel releases when its holder dies, however it dies: a lock file
is never stale while its holder runs and never blocks once it has gone. The file names its holder
(PID, host, since when), so that a refused process can say who holds it. On a network file system
Linux maps flock to fcntl locks, which the NFS lock service shares between hosts."""
import datetime
import fcntl
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from core import io
from core.errors import HarnessError

RUN_LOCK = ".lock"                      # in each run folder, while `harness train` writes there
OWNER = "harness-owner.lock"            # in .snakemake/, held by the Snakemake that holds its lock


class FileLock:
    """An exclusive flock on `path`, taken without waiting, with the holder's name in the file."""

    def __init__(self, path):
        self.path, self.fd = Path(path), None

    def acquire(self):
        """True once held; False when another live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:   # the last holder may have removed the file between our open and flock: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self.fd = fd
        return True

    def holder(self):
        """Who holds it, as its file says: 'PID 123 on host h since 2026-01-01T12:00:00'."""
        try:
            h = json.loads(self.path.read_text())
            return f"PID {h['pid']} on host {h['host']} since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def release(self):
        if self.fd is not None:
            self.path.unlink(missing_ok=True)   # while still held, so nobody locks the old file
            os.close(self.fd)
            self.fd = None


@contextmanager
def run_lock(folder):
    """Hold `<folder>/.lock` while training and evaluating into the run folder: a second process
    (an orphaned job of a killed Snakemake still running, a second Snakemake) stops with one line
    naming the holder instead of writing into the same files. Once held, the temporary files of
    an atomic write that a kill interrupted are removed."""
    lock = FileLock(Path(folder) / RUN_LOCK)
    if not lock.acquire():
        raise HarnessError(f"{folder} is being trained by {lock.holder()}; wait for it to end or stop it, "
                           f"then run again")
    try:
        io.remove_temp_files(folder)
        yield
    finally:
        lock.release()


def hold_snakemake_owner(snakemake_dir=".snakemake"):
    """Called by the Snakemake that holds the workflow's lock, before its jobs start (onstart): hold
    OWNER until this process ends. Returns the lock (keep it referenced), or None where another
    running Snakemake holds it (one on other outputs of the same folder)."""
    lock = FileLock(Path(snakemake_dir) / OWNER)
    return lock if lock.acquire() else None


def clear_stale_snakemake_lock(snakemake_dir=".snakemake"):
    """Remove Snakemake's lock if the Snakemake that took it has died (killed, machine lost), as
    `snakemake --unlock` would; return a one-line note saying so, or None.

    The lock is stale when no process holds OWNER and no lock file is newer than OWNER: a
    Snakemake takes its lock, then OWNER (hold_snakemake_owner), so a lock file newer than OWNER
    belongs to a Snakemake that may still be starting, and is left alone (Snakemake then says
    how to unlock it by hand)."""
    locks_dir, owner = Path(snakemake_dir) / "locks", Path(snakemake_dir) / OWNER
    lock_files = [p for p in locks_dir.glob("*.lock") if p.is_file()] if locks_dir.is_dir() else []
    if not lock_files or not owner.exists():
        return None
    probe = FileLock(owner)
    last_holder = probe.holder()
    try:
        owner_written = owner.stat().st_mtime
    except FileNotFoundError:
        return None
    if any(p.stat().st_mtime > owner_written for p in lock_files):
        return None
    if not probe.acquire():
        return None
    try:
        for p in lock_files:
            p.unlink(missing_ok=True)
    finally:
        probe.release()
    return f"note: removed the lock of a Snakemake that is no longer running ({last_holder})"
