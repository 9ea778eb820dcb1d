"""One owner per run directory: ``RUN_DIR/.lock`` (no torch; the parent and the workers use it).

Run directories live on NFS or Lustre on clusters, where ``flock``/``fcntl`` locks may be missing
or only node-local, so the lock is a file whose *creation* is the atomic step: its JSON (host,
pid, the pid's start time, the boot id, the Slurm job and restart, since when) is written to a
private temporary file first and hard-linked to ``.lock`` (``link`` fails if the name exists, on
NFSv2+ and Lustre; a retransmitted NFS ``link`` whose first reply was lost is told by the
temporary file's link count), so a reader never sees a half-written lock; where hard links are
not supported, ``O_CREAT|O_EXCL`` is used instead. The holder refreshes the lock's mtime every
:data:`HEARTBEAT_S` from a daemon thread (``os.utime`` without a time: NFS stamps the server's).

A lock is stale (and taken over) when its holder is provably gone:

- same host (and boot): the pid is gone or is another process (another start time);
- a Slurm holder whose job Slurm says is no longer running (``squeue``), or an earlier attempt of
  the job asking now (Slurm runs one attempt of a job at a time);
- another host: the lock's mtime is older than :data:`STALE_S` against the mtime of a probe file
  created in the same directory just now (both stamped by the same file server: no clock skew
  between nodes counts).

Taking over: one taker at a time (it holds ``.lock.break``, created the same way) removes the
stale lock, and only if it is still the one judged stale; then it creates a fresh one as usual, so
of several takers exactly one wins and the others get the ordinary "in use" line. Release removes the lock only if it is still this holder's.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.errors import LaunchError
from launcher.rundir import LOCK_BREAK_FILE, LOCK_FILE, missing_dirs, remove_empty

HEARTBEAT_S = 10.0
STALE_S = 60.0  # a lock of another host not refreshed for this long (server time) is stale
# Slurm job states in which the job's tasks may still run (anything else: they are gone)
SLURM_LIVE_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "RESIZING"}


class RunBusy(LaunchError):
    """The run directory has a live owner (the one line says who)."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: int | None  # the pid's start time (/proc/PID/stat, clock ticks since boot): against pid reuse
    boot: str | None  # /proc/sys/kernel/random/boot_id: a pid from before a reboot is gone
    since: float  # wall time it took the lock
    what: str  # "launch" (a local run) | "worker" (rank 0 inside a Slurm job)
    token: str  # unique: tells this holder's lock apart from any other
    slurm_job: str | None = None
    slurm_restart: int | None = None

    @classmethod
    def parse(cls, raw: bytes) -> Holder | None:
        try:
            d = json.loads(raw)
            return cls(
                host=str(d["host"]),
                pid=int(d["pid"]),
                started=None if d.get("started") is None else int(d["started"]),
                boot=d.get("boot"),
                since=float(d["since"]),
                what=str(d.get("what", "launch")),
                token=str(d["token"]),
                slurm_job=None if d.get("slurm_job") is None else str(d["slurm_job"]),
                slurm_restart=None if d.get("slurm_restart") is None else int(d["slurm_restart"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` (field 22 of /proc/PID/stat); None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def me(what: str = "launch", slurm_job: str | None = None, slurm_restart: int | None = None) -> Holder:
    pid = os.getpid()
    return Holder(
        host=socket.gethostname(),
        pid=pid,
        started=process_start(pid),
        boot=boot_id(),
        since=time.time(),
        what=what,
        token=secrets.token_hex(8),
        slurm_job=slurm_job,
        slurm_restart=slurm_restart,
    )


def own_slurm_job(environ=os.environ) -> str | None:
    """The id that names this Slurm job to scontrol, squeue and scancel: ``ARRAY_TASK`` for a
    task of a job array (its own SLURM_JOB_ID can be the array's id, which would address every
    task: ``scontrol requeue`` of it requeues them all), else SLURM_JOB_ID."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def slurm_job_state(job_id: str) -> str | None:
    """Slurm's state of the job (``squeue``): "" once Slurm no longer has it, None when unknown
    (no squeue here, the controller does not answer)."""
    if shutil.which("squeue") is None:
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode == 0:
        words = r.stdout.split()
        return words[0] if words else ""
    return "" if "invalid job id" in r.stderr.lower() else None


# ---------------------------------------------------------------- reading and judging


@dataclass(frozen=True)
class Found:
    raw: bytes
    holder: Holder | None  # None: unreadable (being written by an O_EXCL holder, or garbage)
    mtime: float


def read(run_dir: Path, name: str = LOCK_FILE) -> Found | None:
    """The lock as it is now, or None if there is none."""
    try:
        with open(Path(run_dir) / name, "rb") as f:
            raw = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    return Found(raw, Holder.parse(raw), mtime)


def server_now(run_dir: Path, probe: bool = True) -> float:
    """The file server's clock: the mtime of a probe file created (and removed) in ``run_dir``
    now; this machine's clock where that cannot be done (or ``probe`` is False)."""
    if probe:
        path = Path(run_dir) / f"{LOCK_FILE}.probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                return os.fstat(fd).st_mtime
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
        except OSError:
            pass
    return time.time()


def stale_reason(
    run_dir: Path,
    found: Found,
    *,
    job_state: Callable[[str], str | None] = slurm_job_state,
    own_job: tuple[str, int] | None = None,
    probe: bool = True,
) -> str | None:
    """Why the holder of ``found`` is gone (the lock may be taken over), or None if it may be alive.

    ``job_state``: Slurm's state of a job ("" gone, None unknown); ``own_job``: (job id, restart)
    of the Slurm attempt asking; ``probe``: False to read the server's clock without writing."""
    h = found.holder
    if h is None:
        age = server_now(run_dir, probe) - found.mtime
        return f"an unreadable lock not refreshed for {age:.0f} s" if age > STALE_S else None
    if own_job is not None and h.slurm_job == own_job[0] and h.slurm_restart != own_job[1]:
        return f"attempt {(h.slurm_restart or 0) + 1} of this Slurm job is over"
    if h.host == socket.gethostname() and (h.boot is None or boot_id() is None or h.boot == boot_id()):
        if h.pid <= 0 or not _pid_alive(h.pid):
            return f"pid {h.pid} is gone"
        now_started = process_start(h.pid)
        if h.started is not None and now_started is not None and now_started != h.started:
            return f"pid {h.pid} is another process now"
        return None
    if h.host == socket.gethostname():
        return "this machine has rebooted since"
    if h.slurm_job:
        state = job_state(h.slurm_job)
        if state is not None and state not in SLURM_LIVE_STATES:
            return f"Slurm job {h.slurm_job} is {state.lower() or 'gone'}"
    age = server_now(run_dir, probe) - found.mtime
    return f"not refreshed for {age:.0f} s" if age > STALE_S else None


def describe(h: Holder | None) -> str:
    """Who holds it, for one line: ``launch pid 1234 on host node7 since 12:03:05``."""
    if h is None:
        return "another launch (its lock is being written)"
    t = time.localtime(h.since)
    since = time.strftime("%H:%M:%S" if t[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S", t)
    if h.slurm_job:
        return f"Slurm job {h.slurm_job} ({h.what} pid {h.pid} on host {h.host}) since {since}"
    return f"{h.what} pid {h.pid} on host {h.host} since {since}"


def in_use_line(run_dir: Path, h: Holder | None) -> str:
    if h is not None and h.slurm_job:
        how = f"launch cancel {run_dir}"
    elif h is not None:
        how = f"kill {h.pid}" + ("" if h.host == socket.gethostname() else f" on {h.host}")
    else:
        how = "launch cancel / kill"
    return f"{run_dir} is in use by {describe(h)}; wait for it, stop it ({how}), or pass another run.name=..."


def live(run_dir: Path, probe: bool = False, **judge) -> Found | None:
    """The lock of ``run_dir`` if its holder may be alive (read-only unless ``probe``); None when
    there is none or it is stale."""
    found = read(run_dir)
    if found is None or stale_reason(run_dir, found, probe=probe, **judge) is not None:
        return None
    return found


def check(run_dir: Path, **judge) -> None:
    """Refuse (RunBusy, one line) if ``run_dir`` has a live owner; writes nothing that stays."""
    found = read(run_dir)
    if found is not None and stale_reason(run_dir, found, **judge) is None:
        raise RunBusy(in_use_line(run_dir, found.holder))


# ---------------------------------------------------------------- taking and holding


_HELD: list[Lock] = []


class Lock:
    """A held lock: refreshed from a daemon thread until :meth:`release`."""

    def __init__(self, run_dir: Path, holder: Holder, created: list[Path]):
        self.run_dir, self.holder, self.created = run_dir.absolute(), holder, created  # (the cwd may change)
        self.path = self.run_dir / LOCK_FILE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        _HELD.append(self)

    def ours(self) -> bool:
        found = read(self.run_dir)
        return found is not None and found.holder is not None and found.holder.token == self.holder.token

    def _beat(self) -> None:
        from launcher.signals import STOP_SIGNALS

        # the stop signals are the main thread's (launcher/signals.py): never delivered here
        with contextlib.suppress(AttributeError, ValueError, OSError):
            signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self.ours():
                    return  # removed (a worker removed a fresh run directory) or taken over: not ours to touch
                os.utime(self.path)  # no explicit time: NFS stamps the server's
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock if it is still ours, and the directories taking it created if they are
        empty now (a run refused or stopped before it wrote anything). Idempotent."""
        if self in _HELD:
            _HELD.remove(self)
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            if self.ours():
                os.unlink(self.path)
        _remove_empty(self.created)


def release_all() -> None:
    """Release every lock this process holds (``launch`` when the run has ended)."""
    for lock in list(_HELD):
        lock.release()


def _make_dirs(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` and its missing parents; returns those created, outermost first."""
    missing = missing_dirs(run_dir.absolute())
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(missing[::-1])
        raise LaunchError(
            f"cannot create the run directory {run_dir} ({e.strerror or e}); pass run.output_dir=<a writable directory>"
        ) from None
    return missing[::-1]


def _remove_empty(created: list[Path]) -> None:
    remove_empty(created[::-1])


def _create(run_dir: Path, holder: Holder, name: str = LOCK_FILE) -> bool:
    """Create ``name`` holding ``holder``, complete, if there is none; False if there is one."""
    lock = run_dir / name
    tmp = run_dir / f"{LOCK_FILE}.{holder.token}.tmp"
    data = holder.to_bytes()
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # (the umask applies)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, lock)
            return True
        except FileExistsError:
            # a retransmitted NFS link whose first reply was lost says EEXIST although it worked
            return os.stat(tmp).st_nlink == 2
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
        # no hard links on this file system: O_EXCL (atomic on NFSv3+ and Lustre)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _remove_if(run_dir: Path, name: str, judged: Found) -> None:
    """Remove ``name`` if it is still ``judged`` (renamed aside, checked, else put back)."""
    path = run_dir / name
    aside = run_dir / f"{LOCK_FILE}.stale-{secrets.token_hex(8)}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        moved = aside.read_bytes()
    except OSError:
        moved = None
    if moved != judged.raw:  # not the one judged stale: put it back, unless another exists by now
        try:
            os.link(aside, path)
        except OSError:
            if not path.exists():
                with contextlib.suppress(OSError):
                    os.rename(aside, path)
    with contextlib.suppress(OSError):
        os.unlink(aside)


def _break(run_dir: Path, judged: Found, holder: Holder, **judge) -> None:
    """Remove the stale lock ``judged``, and only that one. One taker at a time does it, holding
    ``.lock.break`` (created like the lock): a taker that acted on a lock judged stale a moment
    ago must never remove the fresh one a faster taker has made since. A break lock left by a
    taker that died during those milliseconds is judged like a lock."""
    if not _create(run_dir, holder, LOCK_BREAK_FILE):
        other = read(run_dir, LOCK_BREAK_FILE)
        if other is not None and stale_reason(run_dir, other, **judge) is not None:
            _remove_if(run_dir, LOCK_BREAK_FILE, other)
        else:
            time.sleep(0.01 + secrets.randbelow(20) / 1000)  # another taker is at it: see what it made
        return
    try:
        current = read(run_dir)
        if current is not None and current.raw == judged.raw:
            _remove_if(run_dir, LOCK_FILE, judged)
    finally:
        mine = read(run_dir, LOCK_BREAK_FILE)
        if mine is not None and mine.holder is not None and mine.holder.token == holder.token:
            with contextlib.suppress(OSError):
                os.unlink(run_dir / LOCK_BREAK_FILE)


def acquire(
    run_dir: Path,
    what: str = "launch",
    *,
    slurm_job: str | None = None,
    slurm_restart: int | None = None,
    job_state: Callable[[str], str | None] = slurm_job_state,
) -> Lock:
    """Own ``run_dir`` (created with its parents if missing) or raise RunBusy naming its live
    owner. A refused call leaves nothing behind: no lock, no directory it created."""
    run_dir = Path(run_dir)
    holder = me(what, slurm_job, slurm_restart)
    own = (slurm_job, slurm_restart or 0) if slurm_job else None
    created: list[Path] = []
    try:
        for _ in range(50):
            found = read(run_dir)
            if found is not None:
                if stale_reason(run_dir, found, job_state=job_state, own_job=own) is None:
                    raise RunBusy(in_use_line(run_dir, found.holder))
                _break(run_dir, found, holder, job_state=job_state, own_job=own)
            if not run_dir.is_dir():
                created += _make_dirs(run_dir)
            try:
                if _create(run_dir, holder):
                    return Lock(run_dir, holder, created)
            except FileNotFoundError:  # the directory went (another's refused attempt removed it): again
                continue
            except OSError as e:
                raise LaunchError(
                    f"cannot create {run_dir / LOCK_FILE} ({e.strerror or e}); "
                    "pass run.output_dir=<a writable directory>"
                ) from None
        found = read(run_dir)
        raise RunBusy(in_use_line(run_dir, found.holder if found else None))
    except BaseException:
        _remove_empty(created)
        raise


def acquire_for_exit(run_dir: Path, what: str = "worker", **kw) -> Lock:
    """:func:`acquire`, released when this interpreter exits (a worker inside a Slurm job)."""
    lock = acquire(run_dir, what, **kw)
    atexit.register(lock.release)
    return lock
