"""A throwaway single-node SLURM cluster on localhost for the tests: munge, slurmctld and slurmd
(Debian's slurm-wlm), state in a temporary folder, two fake GPUs so that GPU requests schedule.

It follows ../shared/reference/local-slurm.md, except that the daemons run in the foreground as
our own child processes, so that they are stopped by the PIDs we hold. The configuration has to be
at /etc/slurm/slurm.conf (srun inside a job ignores SLURM_CONF); a file there that we did not
write is never touched. Needs root: slurmd runs jobs and munged has to run as the munge user.
"""
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ETC = Path("/etc/slurm")
MARKER = "# written by tests/slurm_cluster.py; removed when the test session ends\n"
MUNGE_DIRS = [Path(p) for p in ("/etc/munge", "/var/log/munge", "/var/lib/munge", "/run/munge")]
MUNGE_KEY = Path("/etc/munge/munge.key")
LOCK = Path(tempfile.gettempdir()) / "harness-test-slurm.lock"   # one cluster per machine: fixed ports and paths
COMMANDS = ["munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo"]

SLURM_CONF = """\
ClusterName=local
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/run/slurmctld.pid
SlurmdPidFile={state}/run/slurmd.pid
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
GresTypes=gpu
NodeName={host} CPUs={cpus} RealMemory={memory} Gres=gpu:2 State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
GRES_CONF = "AutoDetect=off\nNodeName={host} Name=gpu File={state}/fakegpu[0-1]\n"


class Unavailable(Exception):
    """The cluster cannot run here; the message says why (the tests skip with it)."""


def missing_requirements():
    """Why this machine cannot host the cluster, or None."""
    missing = [c for c in COMMANDS if not shutil.which(c)]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found); "
                "as root: apt-get install slurm-wlm munge (setup.sh does this)")
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs the jobs, munged runs as user munge)"
    for path in (ETC / "slurm.conf", ETC / "gres.conf"):
        if path.exists() and not path.read_text().startswith(MARKER):
            return f"{path} exists and was not written by these tests; not overwriting a real SLURM setup"
    return None


def _munge_works():
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0


class LocalSlurm:
    partition = "debug"
    memory_mb = 4000     # what the node offers; the smoke jobs ask for at most 2000 MB each

    def __init__(self, state: Path):
        self.state = Path(state)
        self.host = socket.gethostname().split(".")[0]
        self.procs = {}          # name -> Popen of the daemons we started, stopped in reverse order
        self.lock = None

    # -- start ------------------------------------------------------------------------------------
    def start(self, timeout=60):
        reason = missing_requirements()
        if reason:
            raise Unavailable(reason)
        self.lock = open(LOCK, "w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            raise Unavailable(f"another test session is running the local SLURM cluster (holds {LOCK})") from None
        for d in ("state", "spool", "log", "run"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge(timeout)
            self._write_config()
            self._spawn("slurmctld", ["slurmctld", "-D"])
            self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), "slurmctld to answer", timeout)
            self._spawn("slurmd", ["slurmd", "-D"])
            self._wait(lambda: self._ok(["sinfo", "-h", "-o", "%T"], "idle"), "the node to be idle", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self, timeout):
        if _munge_works():       # a munged is already running: use it, and leave it running
            return
        for d in MUNGE_DIRS:
            d.mkdir(parents=True, exist_ok=True)
        if not MUNGE_KEY.exists():
            MUNGE_KEY.write_bytes(os.urandom(1024))
        for d in MUNGE_DIRS:
            shutil.chown(d, "munge", "munge")
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
        self._spawn("munged", ["munged", "--foreground"], user="munge", group="munge")
        self._wait(_munge_works, "munged to answer", timeout)

    def _write_config(self):
        for i in range(2):       # device files for the fake GPUs: GPU requests schedule, nothing runs on them
            (self.state / f"fakegpu{i}").touch()
        values = dict(host=self.host, state=self.state, cpus=len(os.sched_getaffinity(0)), memory=self.memory_mb,
                      partition=self.partition)
        ETC.mkdir(parents=True, exist_ok=True)
        (ETC / "slurm.conf").write_text(MARKER + SLURM_CONF.format(**values))
        (ETC / "gres.conf").write_text(MARKER + GRES_CONF.format(**values))

    def _spawn(self, name, cmd, **kwargs):
        with open(self.state / "log" / f"{name}.out", "wb") as log:
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, **kwargs)

    @staticmethod
    def _ok(cmd, expect):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return proc.returncode == 0 and expect in proc.stdout

    def _wait(self, ready, what, timeout):
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"no answer in {timeout} s"
                raise Unavailable(f"local SLURM cluster did not start: waiting for {what}, {why}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self, lines=8):
        """The tail of each daemon's output (in the foreground, slurmctld and slurmd copy their logs there)."""
        out = []
        for path in sorted((self.state / "log").glob("*.out")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- use --------------------------------------------------------------------------------------
    def jobs(self, *fields):
        """squeue's view of every job of the session, finished ones too (MinJobAge is an hour; the
        plugin's squeue status checks rely on that as well), one dict per job with the given
        squeue --Format fields, e.g. "JobID", "State"."""
        fmt = ",".join(f"{f}:|" for f in fields)
        out = subprocess.run(["squeue", "--states=all", "--noheader", f"--Format={fmt}"],
                             capture_output=True, text=True, check=True).stdout
        return [dict(zip(fields, (v.strip() for v in line.split("|")))) for line in out.splitlines() if line]

    @staticmethod
    def _active_jobs():
        """Pending, running or completing jobs (squeue's default states)."""
        proc = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True)
        return proc.stdout.split() if proc.returncode == 0 else []

    # -- stop -------------------------------------------------------------------------------------
    def stop(self):
        """Cancel what is left on the cluster, stop our daemons by PID, remove our configuration."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--partition", self.partition], capture_output=True)
            deadline = time.monotonic() + 60   # slurmd has to outlive the job steps it cleans up
            while self._active_jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        for path in (ETC / "slurm.conf", ETC / "gres.conf"):
            if path.exists() and path.read_text().startswith(MARKER):
                path.unlink()
        if self.lock:
            self.lock.close()     # releases the lock
            self.lock = None
