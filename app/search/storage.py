"""Saving and loading an index directory, crash-safe and verified.

Layout:

    <directory>/CURRENT                  name of the complete snapshot in use (one line)
    <directory>/snapshot-<time>-<tag>/   one complete snapshot:
        manifest.json                    format, version, model id, dim, K, metric, kind, count,
                                         revision, created_at, segments, sha256 and size of each file
        <segment>.ids.npy                (n,) int64
        <segment>.codes.npy              (n, K, D) float32
        <segment>.live.npy               (n,) bool
        <segment>.partition.npz          the two-level ball partition (block and group offsets, centres, radii)
        <segment>.approximate.faiss      serialized FAISS structure (approximate kinds only)

A save writes a new snapshot under a temporary name, fsyncs every file, renames it into place, then
atomically replaces CURRENT (os.replace) and only then deletes older snapshots. A crash at any point
leaves CURRENT naming a complete snapshot. Every worker saves into the same directory, so one saver
at a time: a save holds an exclusive lock on `<directory>/.lock` (fcntl.flock, released by the
kernel if the process dies) from reading the previous snapshot to the end of its cleanup. The
cleanup never removes the snapshot CURRENT names, nor a staging directory
(`.tmp-<pid>-snapshot-...`) whose process is still alive. Segments are immutable, so a segment already present in
the previous snapshot is hard-linked rather than rewritten: saving a large index after a few writes
costs little more than its live masks. Loading verifies every checksum, size, shape and count, and
what the caller expects (model, dimension, samples per question, metric), and refuses anything else
with an `IndexFileError` that says what is wrong.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.search.bounds import MAX_ABS_CODE

FORMAT = "qsim-latent-index"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
SNAPSHOT_PREFIX = "snapshot-"
TEMPORARY_PREFIX = ".tmp-"
LOCK = ".lock"
PARTITION_ARRAYS = (
    "offsets", "centres", "centre_norms", "radii", "max_norms",
    "group_offsets", "group_centres", "group_centre_norms", "group_radii",
)


# The file and segment names a manifest may use: plain names inside its snapshot directory.
_PLAIN_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]*")


class IndexFileError(Exception):
    """An index directory that cannot be served: missing, corrupt, truncated or built for another model."""


@dataclass
class StoredSegment:
    """One segment as read from disk, verified. partition: the arrays named in PARTITION_ARRAYS."""

    name: str
    ids: np.ndarray
    codes: np.ndarray
    live: np.ndarray
    partition: dict[str, np.ndarray]
    approximate: np.ndarray | None


@dataclass
class StoredIndex:
    header: dict[str, Any]
    segments: list[StoredSegment]


def index_exists(directory: Path) -> bool:
    return (Path(directory) / CURRENT).is_file()


# ----------------------------------------------------------------------------------------- saving


class _HashingWriter:
    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        return self.handle.write(view)


def _write_file(path: Path, write) -> dict[str, Any]:
    with open(path, "wb") as handle:
        writer = _HashingWriter(handle)
        write(writer)
        handle.flush()
        os.fsync(handle.fileno())
    return {"sha256": writer.digest.hexdigest(), "bytes": writer.size}


def _write_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    return _write_file(path, lambda out: np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False))


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    # zipfile wants a seekable file, so this one is hashed after writing.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return {"sha256": _file_sha256(path), "bytes": path.stat().st_size}


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _previous_files(directory: Path) -> tuple[Path | None, dict[str, Any]]:
    """The snapshot CURRENT names and its manifest's file table, or (None, {}) when unreadable."""
    try:
        name = (directory / CURRENT).read_text().strip()
        snapshot = directory / name
        manifest = json.loads((snapshot / MANIFEST).read_text())
        return snapshot, dict(manifest.get("files", {}))
    except (OSError, ValueError):
        return None, {}


def write_index(directory: Path, header: dict[str, Any], segments: list[tuple[Any, np.ndarray]]) -> Path:
    """header: format fields (model_id, dim, samples_per_item, metric, kind, count, revision);
    segments: (segment, live mask) pairs. Returns the new snapshot directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _save_lock(directory):
        return _write_locked(directory, header, segments)


@contextlib.contextmanager
def _save_lock(directory: Path):
    """One saver at a time per index directory, across processes (workers share the directory)."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_owner(entry_name: str) -> int | None:
    """The pid in a staging name `.tmp-<pid>-snapshot-...`, or None (an older, pid-less name)."""
    head = entry_name[len(TEMPORARY_PREFIX):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _clean_up(directory: Path, keep: str) -> None:
    """Remove older snapshots and abandoned staging directories; under the save lock. Never the
    snapshot CURRENT names (read again here), nor staging that a live process owns."""
    try:
        current = _current_name(directory)
    except IndexFileError:
        current = keep
    for entry in directory.iterdir():
        if entry.name in (keep, current):
            continue
        if entry.name.startswith(TEMPORARY_PREFIX):
            owner = _staging_owner(entry.name)
            if owner is not None and owner != os.getpid() and _pid_alive(owner):
                continue
        elif not entry.name.startswith(SNAPSHOT_PREFIX):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _write_locked(directory: Path, header: dict[str, Any], segments: list[tuple[Any, np.ndarray]]) -> Path:
    previous, previous_files = _previous_files(directory)
    name = f"{SNAPSHOT_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    staging = directory / f"{TEMPORARY_PREFIX}{os.getpid()}-{name}"
    staging.mkdir()
    try:
        _stage(staging, previous, previous_files, header, segments)
    except BaseException:  # a full disk, say: the half-written staging directory must not eat the next save's room
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = directory / name
    os.rename(staging, final)
    _fsync_directory(directory)
    pointer = directory / f"{CURRENT}.tmp"
    _write_file(pointer, lambda out: out.write(f"{name}\n".encode()))
    os.replace(pointer, directory / CURRENT)
    _fsync_directory(directory)
    _clean_up(directory, name)
    return final


def _stage(staging: Path, previous: Path | None, previous_files: dict, header: dict[str, Any],
           segments: list[tuple[Any, np.ndarray]]) -> None:
    """Writes a snapshot's files and manifest into `staging` (linking unchanged files from `previous`)."""
    files: dict[str, Any] = {}
    described = []
    for segment, live in segments:
        immutable = {
            f"{segment.name}.ids.npy": lambda p, s=segment: _write_array(p, s.ids),
            f"{segment.name}.codes.npy": lambda p, s=segment: _write_array(p, s.codes),
            f"{segment.name}.partition.npz": lambda p, s=segment: _write_npz(p, s.partition.arrays()),
        }
        if segment.approximate is not None:
            immutable[f"{segment.name}.approximate.faiss"] = lambda p, s=segment: _write_array(
                p, s.approximate.serialize()
            )
        for filename, write in immutable.items():
            files[filename] = _link_or_write(previous, previous_files, filename, staging / filename, write)
        files[f"{segment.name}.live.npy"] = _write_array(staging / f"{segment.name}.live.npy", live)
        described.append({
            "name": segment.name,
            "questions": int(segment.size),
            "live": int(live.sum()),
            "blocks": int(segment.partition.block_count),
            "groups": int(len(segment.partition.group_offsets) - 1),
            "approximate": segment.approximate is not None,
        })
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **header,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "segments": described,
        "files": files,
    }
    _write_file(staging / MANIFEST, lambda out: out.write(json.dumps(manifest, indent=2).encode()))
    _fsync_directory(staging)


def _link_or_write(previous: Path | None, previous_files: dict, filename: str, target: Path, write) -> dict:
    if previous is not None and filename in previous_files:
        try:
            os.link(previous / filename, target)
            return previous_files[filename]
        except OSError:
            pass
    return write(target)


# ---------------------------------------------------------------------------------------- loading


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def load_threads() -> int:
    """Threads that read a saved index: numpy's copies and hashlib's digests release the GIL, so a
    start-up reads and checks files on every core (at most 4)."""
    return max(1, min(4, os.cpu_count() or 1))


def parallel_map(function, items: list, threads: int) -> list:
    """[function(item) for item in items], on `threads` threads when there is more than one item;
    an item that raises makes the call raise that exception (the earliest such item in `items`)."""
    if threads <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="qsim-index-load") as pool:
        return list(pool.map(function, items))


def read_index(directory: Path, expected: dict[str, Any], attempts: int = 10, threads: int = 1) -> StoredIndex:
    """Read and verify the snapshot CURRENT names, its files checked and read on `threads` threads.
    expected: header fields the caller requires (None values are not checked). If another process
    saves meanwhile, it deletes the snapshot being read once CURRENT has moved on: the read is then
    retried on the new snapshot, up to `attempts` times while CURRENT keeps moving (saves are
    serialized, so each retry needs another whole save to land in between)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFileError(f"no index directory at {directory}")
    name = _current_name(directory)
    for _ in range(attempts - 1):
        try:
            return _read_named(directory, name, expected, threads)
        except IndexFileError:
            newer = _current_name(directory)
            if newer == name:
                raise
            name = newer
    return _read_named(directory, name, expected, threads)


def _current_name(directory: Path) -> str:
    try:
        return (directory / CURRENT).read_text().strip()
    except FileNotFoundError:
        raise IndexFileError(
            f"no index in {directory} (no {CURRENT} file: never saved, or not an index directory)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:  # unreadable or garbled: rebuild, as for a missing snapshot
        raise IndexFileError(f"index in {directory} is damaged: {CURRENT} cannot be read ({error})") from None


def _read_named(directory: Path, name: str, expected: dict[str, Any], threads: int = 1) -> StoredIndex:
    snapshot = directory / name
    if not name.startswith(SNAPSHOT_PREFIX) or "/" in name or not snapshot.is_dir():
        raise IndexFileError(f"index in {directory} is damaged: {CURRENT} names snapshot {name!r}, which is missing")
    try:
        manifest = json.loads((snapshot / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise IndexFileError(f"index manifest {snapshot / MANIFEST} is missing or unreadable: {error}") from None
    try:
        return _read_snapshot(directory, snapshot, manifest, expected, threads)
    except (KeyError, TypeError, AttributeError) as error:
        raise IndexFileError(f"index manifest {snapshot / MANIFEST} is malformed ({error!r})") from None


def _verify_file(path: Path, entry: dict) -> None:
    try:
        size = path.stat().st_size
        digest = _file_sha256(path) if size == entry["bytes"] else None
    except FileNotFoundError:
        raise IndexFileError(f"index file {path} is missing") from None
    if size != entry["bytes"]:
        raise IndexFileError(f"index file {path} is truncated or corrupt ({size} bytes, expected {entry['bytes']})")
    if digest != entry["sha256"]:
        raise IndexFileError(f"index file {path} is truncated or corrupt (checksum mismatch)")


def _read_snapshot(
    directory: Path, snapshot: Path, manifest: dict, expected: dict[str, Any], threads: int = 1
) -> StoredIndex:
    _check_header(directory, manifest, expected)
    files = manifest["files"]
    for name in [*files, *(described["name"] for described in manifest["segments"])]:
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
            raise IndexFileError(f"index manifest {snapshot / MANIFEST} names a file outside its snapshot: {name!r}")
    # Largest first, so that the threads finish together.
    by_size = sorted(files.items(), key=lambda item: -item[1]["bytes"])
    parallel_map(lambda item: _verify_file(snapshot / item[0], item[1]), by_size, threads)
    segments = parallel_map(lambda described: _read_segment(snapshot, described, manifest, files), manifest["segments"], threads)
    total = sum(int(s.live.sum()) for s in segments)
    if total != manifest["count"]:
        raise IndexFileError(f"index in {directory} is inconsistent: {total} live questions, manifest says {manifest['count']}")
    live_ids = np.concatenate([s.ids[s.live] for s in segments]) if segments else np.empty(0, np.int64)
    if len(np.unique(live_ids)) != len(live_ids):
        raise IndexFileError(f"index in {directory} is inconsistent: a question id is stored twice")
    return StoredIndex(header=manifest, segments=segments)


def _check_header(directory: Path, manifest: dict, expected: dict[str, Any]) -> None:
    if manifest.get("format") != FORMAT:
        raise IndexFileError(f"{directory} does not hold a qsim index (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFileError(
            f"index in {directory} has format version {manifest.get('format_version')}, this qsim reads "
            f"version {FORMAT_VERSION}: rebuild the index"
        )
    required = ("model_id", "dim", "samples_per_item", "metric", "kind", "count", "revision", "segments", "files")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise IndexFileError(f"index manifest in {directory} lacks {', '.join(missing)}")
    if expected.get("model_id") is not None and manifest["model_id"] != expected["model_id"]:
        raise IndexFileError(
            f"index in {directory} was built by model {manifest['model_id']}, this service runs model "
            f"{expected['model_id']}: rebuild the index with the current model"
        )
    wording = {
        "dim": "latent dimension",
        "samples_per_item": "samples per question (K)",
        "metric": "metric",
        "kind": "index kind",
    }
    for key, words in wording.items():
        if expected.get(key) is not None and manifest[key] != expected[key]:
            raise IndexFileError(
                f"index in {directory} has {words} {manifest[key]!r}, expected {expected[key]!r}"
            )


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise IndexFileError(f"index file {path} is truncated or corrupt: {error}") from None


def _read_segment(snapshot: Path, described: dict, manifest: dict, files: dict) -> StoredSegment:
    name = described["name"]
    expected_files = [f"{name}.ids.npy", f"{name}.codes.npy", f"{name}.live.npy", f"{name}.partition.npz"]
    if described.get("approximate"):
        expected_files.append(f"{name}.approximate.faiss")
    for filename in expected_files:
        if filename not in files:
            raise IndexFileError(f"index manifest in {snapshot} does not list {filename}")
    n, k, dim = described["questions"], manifest["samples_per_item"], manifest["dim"]
    ids = _load_array(snapshot / f"{name}.ids.npy")
    codes = _load_array(snapshot / f"{name}.codes.npy")
    live = _load_array(snapshot / f"{name}.live.npy")
    _expect(ids, (n,), np.int64, snapshot / f"{name}.ids.npy")
    _expect(codes, (n, k, dim), np.float32, snapshot / f"{name}.codes.npy")
    _expect(live, (n,), np.bool_, snapshot / f"{name}.live.npy")
    if int(live.sum()) != described["live"]:
        raise IndexFileError(f"index file {snapshot / f'{name}.live.npy'} disagrees with the manifest")
    if not np.isfinite(codes).all() or (codes.size and float(np.abs(codes).max()) > MAX_ABS_CODE):
        raise IndexFileError(
            f"index file {snapshot / f'{name}.codes.npy'} holds non-finite codes or codes above {MAX_ABS_CODE:g}"
        )
    path = snapshot / f"{name}.partition.npz"
    try:
        with np.load(path, allow_pickle=False) as archive:
            partition = {key: archive[key] for key in PARTITION_ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise IndexFileError(f"index file {path} is truncated or corrupt: {error}") from None
    if not _partition_fits(partition, n, described["blocks"], described["groups"], dim):
        raise IndexFileError(
            f"index file {path} does not match its segment ({n} questions, {described['blocks']} blocks)"
        )
    approximate = None
    if described.get("approximate"):
        approximate = _load_array(snapshot / f"{name}.approximate.faiss")
    return StoredSegment(name, ids, codes, live, partition, approximate)


def _partition_fits(partition: dict[str, np.ndarray], questions: int, blocks: int, groups: int, dim: int) -> bool:
    offsets, group_offsets = partition["offsets"], partition["group_offsets"]
    shapes = {
        "offsets": (blocks + 1,), "centres": (blocks, dim), "centre_norms": (blocks,), "radii": (blocks,),
        "max_norms": (blocks,), "group_offsets": (groups + 1,), "group_centres": (groups, dim),
        "group_centre_norms": (groups,), "group_radii": (groups,),
    }
    return (
        all(partition[key].shape == shape for key, shape in shapes.items())
        and partition["centres"].dtype == np.float32 and partition["group_centres"].dtype == np.float32
        and offsets[0] == 0 and offsets[-1] == questions and bool((np.diff(offsets) > 0).all())
        and group_offsets[0] == 0 and group_offsets[-1] == blocks and bool((np.diff(group_offsets) > 0).all())
    )


def _expect(array: np.ndarray, shape: tuple, dtype, path: Path) -> None:
    if array.shape != shape or array.dtype != dtype:
        raise IndexFileError(
            f"index file {path} holds {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{list(shape)}"
        )
