"""Atomic checkpoints, finding the newest complete one, retention, and safe, verified loading.

A checkpoint is a directory ``checkpoints/step-N/`` (the names: constants of :mod:`launcher.rundir`)::

    model.safetensors   unwrapped model weights (no ``module.``/``_orig_mod.`` prefixes)
    state.pt            optimizer, scheduler, scaler, progress, early-stopping/best state
    rng-rank<R>.pt      RNG states of rank R (python, numpy, torch, CUDA)
    meta.json           step, epoch and metrics, for retention and for humans
    config.yaml         the resolved config it was trained with
    deepspeed/          DeepSpeed's engine state (``--strategy deepspeed`` only), every rank's share
    dcp/                FSDP's sharded model and optimizer (``--strategy fsdp`` only), written by every
                        rank with torch.distributed.checkpoint; such a checkpoint has no model.safetensors
    COMPLETE            written last: only directories with this marker are ever loaded

Writing goes to a hidden temporary directory, every file is fsynced, the directory is renamed
to ``step-N`` and only then the marker is written. A crash at any instant leaves either a
complete checkpoint or something that resume ignores (and the next save cleans up).

The marker is the manifest (format contract)::

    {"step": N, "checksum": "crc32", "files": {"model.safetensors": [SIZE, "CRC32 HEX"], ...}}

naming every file of the directory (``deepspeed/...`` too) with its size and zlib CRC-32, taken
when the checkpoint is written (by the background thread with ``checkpoint.async``); it is
written to ``COMPLETE.tmp``, fsynced and renamed, so "complete" and "verifiable" are one atomic
step. Loading checks every listed file's size, and the checksum of every file this rank reads
(shared files, its own ``rng-rank<R>.pt``, its own ZeRO shards), before anything is unpickled: a
damaged file is reported as damaged and resume falls back to the newest checkpoint that
verifies. A marker that holds only the step number (checkpoints written before manifests) is
still loaded, unverified. The checksum guards against damage (bit flips, truncation), not
against an attacker, who can rewrite the manifest too; that is what safe loading is for:
safetensors and ``torch.load(weights_only=True)`` (:mod:`launcher.weights`; DeepSpeed's files
with the few DeepSpeed classes they hold allowed), so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from launcher.errors import LaunchError, first_line
from launcher.rundir import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_TMP_PREFIX,
    COMPLETE_MARKER,
    COMPLETE_MARKER_TMP,
    CONFIG_FILE,
    DCP_DIR,
    ENGINE_DIR,
    META_FILE,
    MODEL_FILE,
    RNG_FILE_RE,
    SHARD_DIRS,
    STATE_FILE,
    RunDir,
    file_mode,
    rng_file,
)
from launcher.weights import DamagedFile, safe_torch_load, strip_prefixes
from launcher.weights import load_state_file as load_state_file  # (re-exported: launcher/runtime/worker.py)

# Names of the entries of state.pt (a checkpoint format contract).
K_FORMAT = "format_version"
K_OPTIMIZER = "optimizer"
K_SCHEDULER = "scheduler"
K_SCALER = "scaler"
K_PROGRESS = "progress"
K_TRACKERS = "trackers"
K_RECIPE = "recipe"
FORMAT_VERSION = 1


class CorruptCheckpoint(DamagedFile):
    """A checkpoint that cannot be read or does not verify (truncated, partial, damaged)."""


class CheckpointWriteError(Exception):
    """A background write of shards failed (raised from its future)."""


# ---------------------------------------------------------------------------- manifest
# zlib's CRC-32: faster than sha256 and blake2b (benchmarks/checkpoint.py, docs/performance.md).
# It detects damage; it is no signature (see the module docstring).
CHECKSUM = "crc32"
_CHUNK = 1 << 22  # bytes read at a time: the page-cache copy stays in the CPU caches
_SHARD_RANK = re.compile(r"zero_pp_rank_(\d+)_")  # DeepSpeed's per-rank files (ZeRO shards)
_DCP_RANK = re.compile(r"__(\d+)_\d+\.distcp")  # torch.distributed.checkpoint's per-rank files


def file_checksum(path: Path) -> tuple[int, str]:
    """(size, CRC-32 as 8 hex digits) of a file's bytes, read in chunks (the GIL is released)."""
    crc, size = 0, 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
            size += n
    return size, f"{crc:08x}"


def _workers() -> int:
    """Threads that compute checksums (zlib releases the GIL): the cores this process may use."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(8, os.cpu_count() or 1))


def _checksums(paths: list[Path]) -> list[tuple[int, str]]:
    """:func:`file_checksum` of each path, in order, computed by a few threads at once."""
    if len(paths) < 2 or _workers() == 1:
        return [file_checksum(p) for p in paths]
    with ThreadPoolExecutor(min(_workers(), len(paths)), thread_name_prefix="checksum") as pool:
        return list(pool.map(file_checksum, paths))


def _manifest(directory: Path, fsync: bool = False, checksums: bool = True) -> dict[str, list]:
    """relative path -> [size, checksum] of every file under ``directory`` but the marker
    (``fsync``: each file and directory is also flushed to disk, as the writer must, while
    other threads compute the checksums: CPU and disk at once; without ``checksums`` that is
    all it does)."""
    found = sorted(directory.rglob("*"))
    files = [f for f in found if f.is_file() and f.name not in (COMPLETE_MARKER, COMPLETE_MARKER_TMP)]
    pool = (
        ThreadPoolExecutor(min(_workers(), len(files)), thread_name_prefix="checksum") if checksums and files else None
    )
    try:
        sums = [pool.submit(file_checksum, f) for f in files] if pool is not None else []
        if fsync:
            for f in found:
                (_fsync_dir if f.is_dir() else _fsync_file)(f)
        return {f.relative_to(directory).as_posix(): list(s.result()) for f, s in zip(files, sums, strict=False)}
    finally:
        if pool is not None:
            pool.shutdown()


def _write_marker(directory: Path, step: int, files: dict[str, list]) -> None:
    """The manifest as the ``COMPLETE`` marker, atomically (temporary name, fsync, rename)."""
    tmp = directory / COMPLETE_MARKER_TMP
    listed = ",\n".join(f" {json.dumps(rel)}: {json.dumps(entry)}" for rel, entry in files.items())
    tmp.write_text(f'{{"step": {step}, "checksum": "{CHECKSUM}", "files": {{\n{listed}\n}}}}\n')  # a file a line
    _fsync_file(tmp)
    os.rename(tmp, directory / COMPLETE_MARKER)
    _fsync_dir(directory)


def write_manifest(directory: Path, step: int | None = None) -> None:
    """(Re)write the marker of ``directory`` from the files it holds now. What the writer does;
    also what anyone able to change the files can do, so the manifest is not a signature."""
    if step is None:
        step = int(directory.name.removeprefix(CHECKPOINT_PREFIX))
    _write_marker(directory, step, _manifest(directory))


def read_manifest(path: Path) -> dict[str, tuple[int, str]] | None:
    """The manifest of checkpoint ``path`` (relative path -> (size, checksum)), or None for a
    marker written before manifests (empty or the step number only): such a checkpoint is
    loaded unverified. Raises CorruptCheckpoint if the marker is damaged."""
    try:
        raw = (path / COMPLETE_MARKER).read_bytes()
    except OSError as e:
        raise CorruptCheckpoint(f"{COMPLETE_MARKER}: unreadable ({e.strerror})") from None
    if not raw.strip() or raw.strip().isdigit():
        return None
    try:
        doc = json.loads(raw)  # (bytes that are not UTF-8: a ValueError too)
        files = doc["files"]
        if doc["checksum"] != CHECKSUM:
            raise CorruptCheckpoint(f"{COMPLETE_MARKER}: unknown checksum {doc['checksum']!r}")
        out = {}
        for rel, (size, crc) in files.items():
            if not isinstance(size, int) or not isinstance(crc, str) or rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(rel)
            out[rel] = (size, crc)
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptCheckpoint(f"{COMPLETE_MARKER}: damaged manifest") from None


def _reads(rel: str, rank: int) -> bool:
    """Does rank ``rank`` read this file of a checkpoint? (Each rank verifies what it reads:
    the shared files, its own RNG file and its own ZeRO or DCP shards; after a change of the
    process count DCP reads other ranks' shards too: those are checked for size.)"""
    m = (
        RNG_FILE_RE.fullmatch(rel)
        or (_SHARD_RANK.search(rel) if rel.startswith(ENGINE_DIR + "/") else None)
        or (_DCP_RANK.search(rel) if rel.startswith(DCP_DIR + "/") else None)
    )
    return m is None or int(m.group(1)) == rank


def verify(path: Path, manifest: dict[str, tuple[int, str]], rank: int | None = None) -> set[str]:
    """Check every listed file's size, and the checksum of each file ``rank`` reads (None: of
    every file); returns the files verified. Raises CorruptCheckpoint naming the first bad file."""
    for rel, (size, _) in manifest.items():
        try:
            got = (path / rel).stat().st_size
        except OSError:
            raise CorruptCheckpoint(f"{rel}: missing") from None
        if got != size:
            raise CorruptCheckpoint(f"{rel}: {got} bytes, {size} when written")
    read = [rel for rel in manifest if rank is None or _reads(rel, rank)]
    try:
        sums = _checksums([path / rel for rel in read])
    except OSError as e:
        raise CorruptCheckpoint(f"{Path(e.filename or '?').name}: unreadable ({e.strerror})") from None
    for rel, (_, crc) in zip(read, sums, strict=True):
        if crc != manifest[rel][1]:
            raise CorruptCheckpoint(f"{rel}: checksum mismatch")
    return set(read)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class EngineLoads:
    """``load(path, map_location)`` for the files a strategy's engine reads itself (DeepSpeed's
    ``deepspeed/``) from the checkpoint ``loaded`` came from: each is verified against the
    manifest unless :meth:`CheckpointManager.load` already did, then loaded with
    ``weights_only=True``. At this point it is too late to fall back, so a damaged or
    unlisted file is a LaunchError."""

    def __init__(self, loaded: dict[str, Any]):
        self.root = Path(loaded["path"])
        self.manifest = loaded.get("manifest")
        self.verified = set(loaded.get("verified", ()))

    def __call__(self, path: str | Path, map_location: Any = None, allowed: Iterable[type] = ()) -> Any:
        path = Path(path)
        try:
            rel = path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            rel = None
        try:
            if self.manifest is not None and rel not in self.verified:
                if rel not in self.manifest:
                    raise CorruptCheckpoint(f"{path.name}: not in the checkpoint's manifest")
                verify(self.root, {rel: self.manifest[rel]})
                self.verified.add(rel)
            return safe_torch_load(path, "cpu" if map_location is None else map_location, allowed)
        except DamagedFile as e:  # (a CorruptCheckpoint too)
            raise LaunchError(
                f"checkpoint {self.root} is damaged ({e}); resume from an earlier checkpoint with run.resume=PATH"
            ) from None


def copy_to_cpu(obj: Any, reuse: Any = None) -> Any:
    """A deep copy with every tensor copied to CPU memory (for writing off the training path).

    ``reuse`` is an earlier copy of the same structure: tensors of equal shape and dtype are
    copied into it instead of into fresh memory. Fresh memory costs page faults -- about as
    much as the copy itself -- so steady-state saves reuse one staging buffer.
    """
    if isinstance(obj, torch.Tensor):
        src = obj.detach()
        if (
            isinstance(reuse, torch.Tensor)
            and reuse.shape == src.shape
            and reuse.dtype == src.dtype
            and reuse.is_contiguous()
        ):
            return reuse.copy_(src)
        return src.to("cpu", copy=True)
    if isinstance(obj, dict):
        reuse = reuse if isinstance(reuse, dict) else {}
        return {k: copy_to_cpu(v, reuse.get(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        reuse = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(obj) else [None] * len(obj)
        return type(obj)(copy_to_cpu(v, r) for v, r in zip(obj, reuse, strict=True))
    return obj


class CheckpointManager:
    """Saves and finds checkpoints of one run directory. Only rank 0 writes shared files;
    every rank writes its own RNG file.

    With ``async_write`` the state is copied to CPU memory on the training thread and written
    by a background thread; at most one save is in flight (a new save first waits for the
    previous one), and :meth:`wait` blocks until it is on disk (final save, stop requests).
    An error of a background write is raised by the next ``save`` or ``wait``.
    """

    def __init__(
        self,
        run_dir: RunDir,
        keep_last: int,
        keep_best: int,
        monitor: str,
        mode: str,
        rank: int = 0,
        async_write: bool = False,
        checksums: bool = True,
    ):
        self.root = run_dir.checkpoints
        self.run_dir = run_dir
        self.keep_last, self.keep_best = keep_last, keep_best
        self.monitor, self.mode = monitor, mode
        self.rank = rank
        self.async_write = async_write
        self.private_config = False  # config.yaml copies 0600 (a config that holds a credential)
        self.checksums = checksums  # False only to measure their cost (benchmarks/checkpoint.py)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._staging: Any = None  # CPU copy of the last async save, reused by the next
        self.damaged: set[str] = set()  # checkpoints load_latest skipped: a save at their step replaces them
        self.pending: Any = None  # ranks other than 0: the background write of this rank's shards

    # ------------------------------------------------------------------ writing
    def save(
        self,
        step: int,
        model_state: dict[str, torch.Tensor],
        state: dict[str, Any],
        rngs: list[dict[str, Any]],
        meta: dict[str, Any],
        config_text: str,
        shards: tuple[str, Path] | None = None,
        pending: Any = None,
    ) -> Path:
        """Write ``step-N`` atomically (in the background with ``async_write``); returns its path.

        ``rngs`` holds every rank's RNG states (gathered on rank 0), written as ``rng-rank<R>.pt``.
        ``model_state`` None: no model.safetensors (the shards hold the model). ``shards``:
        (name inside the checkpoint, staging directory every rank wrote its share into);
        ``pending``: the future of that write when it goes on in the background (waited for
        before the checkpoint is renamed and marked complete).

        Raises LaunchError if the disk refuses."""
        self.wait()
        final = self.root / f"{CHECKPOINT_PREFIX}{step}"
        if self.is_complete(step):
            return final  # already saved at this step (e.g. epoch end == every_steps)
        if not self.async_write:
            self._write(step, model_state, state, rngs, meta, config_text, shards, pending)
            return final
        # safe to overwrite: wait() above guarantees the previous write has finished
        payload = self._staging = copy_to_cpu((model_state, state, rngs), self._staging)
        self._thread = threading.Thread(
            target=self._write_in_background,
            args=(step, *payload, meta, config_text, shards, pending),
            name=f"checkpoint-{step}",
        )
        self._thread.start()
        return final

    def is_complete(self, step: int) -> bool:
        """Is there a complete checkpoint at ``step`` (one resume did not find damaged)?"""
        name = f"{CHECKPOINT_PREFIX}{step}"
        return name not in self.damaged and (self.root / name / COMPLETE_MARKER).is_file()

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete; re-raise its error. On ranks
        other than 0: until this rank's share of it (``pending``) is written."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            try:
                pending.result()
            except BaseException as e:  # (DCP's CheckpointException is a BaseException)
                raise LaunchError(
                    f"cannot write this rank's checkpoint shards in {self.root}: {first_line(e)}"
                ) from None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _write_in_background(self, *args) -> None:
        try:
            self._write(*args)
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def _write(self, step, model_state, state, rngs, meta, config_text, shards=None, pending=None) -> None:
        final = self.root / f"{CHECKPOINT_PREFIX}{step}"
        tmp = self.root / f"{CHECKPOINT_TMP_PREFIX}{CHECKPOINT_PREFIX}{step}-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            if model_state is not None:
                tensors = {k: v.detach().to("cpu").contiguous() for k, v in strip_prefixes(model_state).items()}
                save_file(tensors, str(tmp / MODEL_FILE))
                os.chmod(tmp / MODEL_FILE, file_mode())  # (safetensors creates 0600 files)
            torch.save({K_FORMAT: FORMAT_VERSION, **state}, tmp / STATE_FILE)
            for rank, rng in enumerate(rngs):
                torch.save(rng, tmp / rng_file(rank))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=float))
            (tmp / CONFIG_FILE).write_text(config_text)
            if self.private_config:  # the config holds a credential (rundir.file_mode)
                os.chmod(tmp / CONFIG_FILE, file_mode(private=True))
            if shards is not None:
                if pending is not None:  # every rank's share (rank 0's DCP future completes after all of them)
                    try:
                        pending.result()
                    except BaseException as e:  # (DCP's CheckpointException is a BaseException)
                        raise CheckpointWriteError(first_line(e)) from None
                os.rename(shards[1], tmp / shards[0])
            # every file is read back (from the page cache) for its checksum, then fsynced
            files = _manifest(tmp, fsync=True, checksums=self.checksums)
            _fsync_dir(tmp)
            if final.exists():  # an incomplete leftover from a crash, or a damaged one: never loaded
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            self.damaged.discard(final.name)
            if self.checksums:
                _write_marker(final, step, files)
            else:  # (benchmarks/checkpoint.py: the cost of the checksums) the legacy marker
                marker = final / COMPLETE_MARKER
                marker.write_text(f"{step}\n")
                _fsync_file(marker)
                _fsync_dir(final)
        except (OSError, RuntimeError, SafetensorError, CheckpointWriteError) as e:  # ENOSPC, EFBIG, EACCES...
            shutil.rmtree(tmp, ignore_errors=True)
            if shards is not None:
                shutil.rmtree(shards[1], ignore_errors=True)
            reason = getattr(e, "strerror", None) or first_line(e)
            raise LaunchError(
                f"cannot write checkpoint step-{step} in {self.root}: {reason}; "
                "free disk space or fix permissions, then run the same command again to resume "
                "(earlier checkpoints are intact)"
            ) from None
        self._retain(final)

    def _retain(self, newest: Path) -> None:
        """Remove what retention does not keep -- only after ``newest`` is complete."""
        complete = self.run_dir.complete_checkpoints()
        keep = set(complete[: self.keep_last]) | {newest}
        if self.keep_best:
            scored = []
            for p in complete:
                value = self.read_meta(p).get("metrics", {}).get(self.monitor)
                if isinstance(value, (int, float)):
                    scored.append((value, p))
            scored.sort(key=lambda vp: vp[0], reverse=self.mode == "max")
            keep |= {p for _, p in scored[: self.keep_best]}
        for p in complete:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)
        self.clean_partial()

    def clean_partial(self) -> None:
        """Remove temporary and incomplete directories left by a crash."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.name.startswith(CHECKPOINT_TMP_PREFIX) or (
                p.name.startswith(CHECKPOINT_PREFIX) and p.is_dir() and not (p / COMPLETE_MARKER).exists()
            ):
                shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def read_meta(path: Path) -> dict:
        try:
            return json.loads((path / META_FILE).read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def load(path: Path, rank: int = 0, verify_files: bool = True) -> dict[str, Any]:
        """Load one checkpoint directory as rank ``rank``: its manifest verified first (see the
        module docstring), then the files unpickled safely. Raises CorruptCheckpoint (damaged,
        incomplete) or LaunchError (a file that verifies but holds pickled code: not damage)."""
        if not (path / COMPLETE_MARKER).is_file():
            raise CorruptCheckpoint(f"{path} is incomplete (no {COMPLETE_MARKER} marker)")
        manifest = read_manifest(path) if verify_files else None
        verified: set[str] = set()
        rng_name = rng_file(rank)
        if manifest is not None:
            sharded = any(rel.split("/", 1)[0] in SHARD_DIRS for rel in manifest)
            for rel in (MODEL_FILE, STATE_FILE, rng_name, CONFIG_FILE):
                required = rel == STATE_FILE or (rel == MODEL_FILE and not sharded)
                if rel not in manifest and (required or (path / rel).exists()):
                    raise CorruptCheckpoint(f"{rel}: not in the manifest")
            verified = verify(path, manifest, rank)
        model = None
        if (path / MODEL_FILE).exists() or not any((path / d).is_dir() for d in SHARD_DIRS):
            try:
                model = load_file(str(path / MODEL_FILE))
            except Exception as e:
                raise CorruptCheckpoint(f"{MODEL_FILE}: {e}") from None
        state = _load_member(path, STATE_FILE)
        rng = _load_member(path, rng_name) if (path / rng_name).is_file() else None
        if not isinstance(state, dict) or state.get(K_FORMAT) != FORMAT_VERSION:
            raise CorruptCheckpoint(f"{STATE_FILE} is not a checkpoint state of this tool")
        meta = CheckpointManager.read_meta(path)
        return {
            "model": model, "state": state, "rng": rng, "path": path, "meta": meta,
            "manifest": manifest, "verified": verified,
        }  # fmt: skip

    def load_agreed(self, path: Path, world: Any = None) -> tuple[dict[str, Any] | None, str | None]:
        """:meth:`load` on every rank, and the ranks agree: (loaded, None) where every rank's
        files verify, else (None, the reason: on rank 0 the first failing rank's). A refusal
        (LaunchError) on any rank is raised on every rank. ``world``: the strategy (its
        ``gather`` and ``any``), None for one process."""
        loaded = damaged = refused = None
        try:
            loaded = self.load(path, self.rank)
        except CorruptCheckpoint as e:
            damaged = str(e)
        except LaunchError as e:
            refused = str(e)
        if world is None:
            if refused is not None:
                raise LaunchError(refused)
            return loaded, damaged
        told = world.gather((damaged, refused)) or [(damaged, refused)]  # every rank's, on rank 0
        if world.any(refused is not None):
            raise LaunchError(refused or next((r for _, r in told if r), f"another process refused checkpoint {path}"))
        if world.any(damaged is not None):
            return None, damaged or next((d for d, _ in told if d), "damaged on another process")
        return loaded, None

    def load_latest(
        self,
        warn: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
        world: Any = None,
        otherwise: str = "starting fresh",
    ) -> dict[str, Any] | None:
        """Newest complete checkpoint that verifies and reads on every rank. Each one skipped
        is named in one warning line with its bad file and what happens instead (``otherwise``
        when none is left); training replaces it when it reaches its step again."""
        loaded, skipped = None, []
        for path in self.run_dir.complete_checkpoints():
            loaded, reason = self.load_agreed(path, world)
            if loaded is not None:
                break
            skipped.append((path.name, reason))
            self.damaged.add(path.name)
        then = f"resuming from {loaded['path'].name}" if loaded is not None else otherwise
        for name, reason in skipped:
            warn(f"warning: checkpoint {name} is damaged ({reason}); {then}")
        return loaded


def _load_member(path: Path, rel: str) -> Any:
    """A torch file of checkpoint ``path``, safely; damage named by the file's name."""
    try:
        return safe_torch_load(path / rel)
    except DamagedFile as e:
        raise CorruptCheckpoint(f"{rel}: {str(e).removeprefix(f'{path / rel}: ')}") from None
