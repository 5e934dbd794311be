"""Warm starts: `python -m harness train|evaluate` on one machine without importing torch each time.

A job's process spent about 7 of its 9 seconds outside training importing torch (3 s) and
torch._dynamo (3 s more: every optimizer's first `add_param_group` imports it) and the harness.
The first job of a checkout starts a server that imports all of that once and then forks one child
per job. The child is the job: it takes the job's stdin/stdout/stderr (passed over a Unix socket),
working folder, environment and arguments, so it writes the same log and files, holds the same run
lock and exits with the same status as a process of its own would. The job's own process (the
client) imports nothing heavy and waits for the child's exit status:
  - SIGTERM, SIGINT or SIGHUP to the client is passed on to the child (Snakemake stopping a job);
  - a client that dies (SIGKILL) takes its child with it, before the server starts another job.
The server imports but never computes, so that the children start their own OpenMP threads and CUDA.
It is keyed by the checkout, the interpreter and the modification times of the harness's code, so
an edit starts a new one; it exits after IDLE_S seconds without a job, or when its checkout goes.

Not used (the job runs in its own process as before) under torchrun (one process per rank), in a
SLURM job (one job per allocation: nothing to share), with HARNESS_WARM=0, or when the server cannot
start (its log, next to its socket, says why)."""
import hashlib
import importlib.util
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "harness", "methods", "models", "data")
COMMANDS = ("train", "evaluate")
IDLE_S = 30            # a Snakemake run starts its next job within a second of the last (HARNESS_WARM_IDLE_S)
SUN_PATH_BYTES = 108
START_TIMEOUT_S = 120  # the server's imports take about 7 s on a quiet machine
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HEADER = struct.Struct("!I")


def wanted(argv, environ=os.environ):
    return (bool(argv) and argv[0] in COMMANDS and environ.get("HARNESS_WARM", "1") != "0"
            and not any(k in environ for k in ("RANK", "SLURM_JOB_ID", "HARNESS_WARM_CHILD")))


def socket_path():
    """One server per checkout, interpreter and state of the code (and of torch's install)."""
    h = hashlib.sha256(f"{ROOT}\0{sys.executable}".encode())
    files = [f for pkg in PACKAGES for f in sorted((ROOT / pkg).glob("*.py"))]
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec and torch_spec.origin:
        files.append(Path(torch_spec.origin))
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    name = Path(f"harness-warm-{os.getuid()}") / f"{h.hexdigest()[:20]}.sock"
    path = Path(tempfile.gettempdir()) / name
    # a socket's path must fit in sun_path (108 bytes on Linux); a deep TMPDIR (a cluster job's
    # scratch folder, pytest's) would leave every job without the server
    return path if len(os.fsencode(path)) < SUN_PATH_BYTES else Path("/tmp") / name


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)


def reuse_freed_memory():
    """Have glibc's malloc keep freed memory for the next allocation instead of unmapping it. By
    default a tensor above 128 kB is a fresh mmap whose pages the kernel faults in and zeroes, until
    glibc's threshold has adapted to the process's sizes. Fixed here: up to 32 MiB (glibc's largest
    on 64-bit) from the heap, and freed heap memory kept up to 1 GiB. (mallopt takes C ints: the
    4 GiB asked for here before came out as 0, every allocation an mmap, LCS's evaluation 1.7x
    slower.) Measured against that, 1 epoch each: ADMM's LeNet-5 loop 11.1-11.4 -> 9.0-9.6 s, an LCS
    unstructured evaluation 43 -> 26-28 s, page faults 5-7x fewer. Same numbers; no effect off glibc."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


# -- the client: the job's own process ---------------------------------------------------------------

def run(argv):
    """Run `python -m harness ARGV` in a child of the warm server; its exit status, or None when no
    server could be reached or started (then the caller runs the job itself)."""
    path = socket_path()
    conn = _connect(path) or _start_server(path)
    if conn is None:
        return None
    payload = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with conn:
        socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
        conn.sendall(payload)
        replies = conn.makefile("r")
        first = replies.readline().split()
        if first[:1] != ["pid"]:     # the server went away before forking: run here instead
            return None
        child = int(first[1])
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, lambda signum, _frame: _signal(child, signum))
        last = replies.readline().split()
    return int(last[1]) if last[:1] == ["exit"] else 1


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _connect(path):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:
        conn.close()
        return None


def _start_server(path):
    """Start the server (one job at a time does, under a lock) and connect to it."""
    import fcntl
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)
        if conn:
            return conn
        path.unlink(missing_ok=True)
        with open(path.with_suffix(".log"), "ab") as log:
            server = subprocess.Popen([sys.executable, "-m", "harness.warm", str(path)], cwd=ROOT,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            conn = _connect(path)
            if conn:
                return conn
            time.sleep(0.05)
        if server.poll() is None:
            server.kill()
        return None


# -- the server -----------------------------------------------------------------------------------

def serve(path):
    reuse_freed_memory()   # before the imports: the children inherit the setting
    import torch
    import torch._dynamo  # noqa: F401  (what every optimizer imports on its first use)

    import harness.evaluate  # noqa: F401
    import harness.tables  # noqa: F401  (every job checks its --spec as the tables do: jsonschema, yaml)
    import harness.trainer  # noqa: F401
    torch.empty(0)   # nothing that starts OpenMP's threads: a forked child could not use them
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    inode = path.stat().st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    # a child's exit wakes the loop at once (the signal's byte on this socket), so the client gets its
    # exit status without waiting out the select timeout: ~0.25 s a job, on average, before
    wakeup, wakeup_w = socket.socketpair()
    for s in (wakeup, wakeup_w):
        s.setblocking(False)
    signal.set_wakeup_fd(wakeup_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel.register(wakeup, selectors.EVENT_READ)
    idle_s = float(os.environ.get("HARNESS_WARM_IDLE_S", IDLE_S))
    jobs, last_job = {}, time.monotonic()   # child pid -> its client's connection (None once gone)
    try:
        while True:
            events = sel.select(timeout=0.5)
            # a vanished client first: its child must let go of its run folder before another starts
            for key, _ in sorted(events, key=lambda e: e[0].fileobj is listener):
                if key.fileobj is listener:
                    _accept(listener, sel, jobs, inherited=(wakeup, wakeup_w))
                elif key.fileobj is wakeup:
                    _drain(wakeup)
                else:
                    _client_gone(key, sel, jobs)
            _reap(sel, jobs)
            if jobs:
                last_job = time.monotonic()
            elif time.monotonic() - last_job > idle_s or not _still_ours(path, inode):
                return
    finally:
        for pid in jobs:
            _kill(pid)
        listener.close()
        if _still_ours(path, inode):
            path.unlink(missing_ok=True)


def _still_ours(path, inode):
    try:
        return path.stat().st_ino == inode and (ROOT / "harness").is_dir()
    except OSError:
        return False


def _drain(sock):
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


def _accept(listener, sel, jobs, inherited=()):
    conn, _ = listener.accept()
    try:
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        size, = _HEADER.unpack(header)
        payload = b""
        while len(payload) < size:
            chunk = conn.recv(size - len(payload))
            if not chunk:
                raise ConnectionError("client left")
            payload += chunk
        request = json.loads(payload)
    except (OSError, ValueError, struct.error):
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(request, fds, [listener, conn, *inherited, *(c for c in jobs.values() if c)])
    try:
        os.setpgid(pid, pid)   # as the child does: whichever runs first, the group exists at once
    except OSError:
        pass
    for fd in fds:
        os.close(fd)
    jobs[pid] = conn
    conn.sendall(f"pid {pid}\n".encode())
    sel.register(conn, selectors.EVENT_READ, pid)


def _client_gone(key, sel, jobs):
    """The client sends nothing after its request: readable means it has gone. Its child goes too."""
    pid = key.data
    sel.unregister(key.fileobj)
    key.fileobj.close()
    _kill(pid)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    jobs.pop(pid, None)


def _kill(pid):
    """The child and whatever it started (data-loading workers)."""
    for kill in (os.killpg, os.kill):
        try:
            return kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _reap(sel, jobs):
    while jobs:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = jobs.pop(pid, None)
        if conn is not None:
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(f"exit {code if code >= 0 else 128 - code}\n".encode())
            except OSError:
                pass
            sel.unregister(conn)
            conn.close()


def _child(request, fds, inherited):
    """The job, in a fork of the server: the client's stdio, folder, environment and arguments."""
    code = 1
    try:
        os.setpgid(0, 0)    # its own group: the server can stop it with whatever it started
        signal.set_wakeup_fd(-1)
        for s in inherited:
            s.close()
        for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL),
                             (signal.SIGHUP, signal.SIG_DFL), (signal.SIGCHLD, signal.SIG_DFL)):
            signal.signal(sig, handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"], HARNESS_WARM_CHILD="1")
        sys.argv = [str(ROOT / "harness" / "__main__.py"), *request["argv"]]
        import runpy
        runpy.run_module("harness", run_name="__main__")   # as `python -m harness ARGV` would
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (print(stop.code, file=sys.stderr) or 1)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code or 0)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
