"""Saving and loading: a saved index comes back identical; a damaged, truncated, mismatched or
missing one is refused with an error that says what is wrong; an interrupted save never costs the
previous snapshot."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from app.search import IndexFileError, SimilarityIndex

MODEL = "0123456789abcdef"


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(11)
    index = SimilarityIndex(6, 3, "cosine", model_id=MODEL, device="cpu", cluster_min_questions=50)
    index.add(np.arange(200), rng.standard_normal((200, 3, 6)).astype(np.float32), revision=41)
    index.add(np.arange(200, 230), rng.standard_normal((30, 3, 6)).astype(np.float32), revision=42)
    index.remove(np.array([3, 4, 210]))
    directory = tmp_path / "index"
    index.save(directory)
    return index, directory


def snapshot_of(directory: Path) -> Path:
    return directory / (directory / "CURRENT").read_text().strip()


def a_codes_file(directory: Path) -> Path:
    return next(snapshot_of(directory).glob("*.codes.npy"))


def test_a_saved_index_loads_back_identical(saved):
    index, directory = saved
    assert SimilarityIndex.exists(directory)
    loaded = SimilarityIndex.load(directory, expected_model_id=MODEL, expected_dim=6, expected_samples=3,
                                  expected_metric="cosine", device="cpu")
    assert (loaded.model_id, loaded.metric, loaded.kind, loaded.revision) == (MODEL, "cosine", "exact", 42)
    assert np.array_equal(loaded.ids(), index.ids())
    assert np.array_equal(loaded.get_codes(index.ids()), index.get_codes(index.ids()))
    queries = np.random.default_rng(0).standard_normal((4, 3, 6)).astype(np.float32)
    for threshold in (0.2, math.inf):
        assert loaded.search(queries, threshold=threshold) == index.search(queries, threshold=threshold)
    manifest = json.loads((snapshot_of(directory) / "manifest.json").read_text())
    assert manifest["count"] == 227 and manifest["format_version"] == 1 and manifest["created_at"]


def test_loading_on_several_threads_gives_the_index_one_thread_gives(saved):
    index, directory = saved
    one = SimilarityIndex.load(directory, device="cpu", threads=1)
    four = SimilarityIndex.load(directory, device="cpu", threads=4)
    assert np.array_equal(four.ids(), one.ids())
    assert np.array_equal(four.get_codes(one.ids()), one.get_codes(one.ids()))
    queries = np.random.default_rng(1).standard_normal((6, 3, 6)).astype(np.float32)
    for threshold in (0.3, math.inf):
        assert four.search(queries, threshold=threshold, min_pairs=2) == one.search(queries, threshold=threshold, min_pairs=2)


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ({"expected_model_id": "fedcba9876543210"}, f"built by model {MODEL}, this service runs model fedcba9876543210"),
        ({"expected_dim": 8}, "latent dimension 6, expected 8"),
        ({"expected_samples": 5}, r"samples per question \(K\) 3, expected 5"),
        ({"expected_metric": "l2"}, "metric 'cosine', expected 'l2'"),
        ({"expected_kind": "hnsw"}, "index kind 'exact', expected 'hnsw'"),
    ],
)
def test_a_mismatched_index_is_refused(saved, expectation, message):
    _, directory = saved
    with pytest.raises(IndexFileError, match=message):
        SimilarityIndex.load(directory, device="cpu", **expectation)


def test_a_corrupt_file_is_refused(saved):
    _, directory = saved
    path = a_codes_file(directory)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40
    path.write_bytes(bytes(data))
    for threads in (1, 4):
        with pytest.raises(IndexFileError, match=r"codes\.npy is truncated or corrupt \(checksum mismatch\)"):
            SimilarityIndex.load(directory, device="cpu", threads=threads)


def test_a_truncated_file_is_refused(saved):
    _, directory = saved
    path = a_codes_file(directory)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(IndexFileError, match="truncated or corrupt"):
        SimilarityIndex.load(directory, device="cpu")


def test_a_missing_file_is_refused(saved):
    _, directory = saved
    a_codes_file(directory).unlink()
    with pytest.raises(IndexFileError, match="is missing"):
        SimilarityIndex.load(directory, device="cpu")


def test_a_garbled_manifest_is_refused(saved):
    _, directory = saved
    (snapshot_of(directory) / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="missing or unreadable"):
        SimilarityIndex.load(directory, device="cpu")


def test_a_manifest_of_another_format_version_is_refused(saved):
    _, directory = saved
    path = snapshot_of(directory) / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(IndexFileError, match="format version 99"):
        SimilarityIndex.load(directory, device="cpu")


def test_a_manifest_whose_count_disagrees_is_refused(saved):
    _, directory = saved
    path = snapshot_of(directory) / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"count": 5}))
    with pytest.raises(IndexFileError, match="227 live questions, manifest says 5"):
        SimilarityIndex.load(directory, device="cpu")


def test_a_manifest_naming_a_file_outside_its_snapshot_is_refused(saved):
    _, directory = saved
    path = snapshot_of(directory) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["segments"][0]["name"] = "../elsewhere"
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="names a file outside its snapshot: '../elsewhere'"):
        SimilarityIndex.load(directory, device="cpu")


def test_a_manifest_of_an_impossible_index_is_refused_as_a_bad_file(saved):
    _, directory = saved
    path = snapshot_of(directory) / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"metric": "manhattan"}))
    with pytest.raises(IndexFileError, match="describes no index qsim can serve"):
        SimilarityIndex.load(directory, device="cpu")


def test_codes_beyond_what_the_search_bounds_cover_are_refused(saved):
    """The bounds of the exact search assume |code| <= MAX_ABS_CODE: a file beyond it is not served."""
    import hashlib

    _, directory = saved
    codes_path = a_codes_file(directory)
    codes = np.load(codes_path)
    codes[0, 0, 0] = 1e30
    np.save(codes_path, codes)
    manifest_path = snapshot_of(directory) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    data = codes_path.read_bytes()  # the checksums vouch for the file: only the values are wrong
    manifest["files"][codes_path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="codes above 1e\\+15"):
        SimilarityIndex.load(directory, device="cpu")


def test_no_index_and_a_dangling_pointer_are_refused(tmp_path, saved):
    _, directory = saved
    assert not SimilarityIndex.exists(tmp_path / "nothing")
    with pytest.raises(IndexFileError, match="no index directory"):
        SimilarityIndex.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFileError, match="no CURRENT file"):
        SimilarityIndex.load(tmp_path / "empty")
    (directory / "CURRENT").write_text("snapshot-gone\n")
    with pytest.raises(IndexFileError, match="'snapshot-gone', which is missing"):
        SimilarityIndex.load(directory)


def test_an_interrupted_save_leaves_the_previous_snapshot_in_service(saved):
    index, directory = saved
    # A save killed midway: a staging directory and a renamed snapshot with partial files, CURRENT
    # not yet switched.
    for name in (".tmp-snapshot-99999999999999999999-dead", "snapshot-99999999999999999999-dead"):
        (directory / name).mkdir()
        (directory / name / "half.codes.npy").write_bytes(b"\x93NUMPY partial")
    loaded = SimilarityIndex.load(directory, device="cpu")
    assert np.array_equal(loaded.ids(), index.ids()) and loaded.revision == 42
    index.save(directory)  # the next save clears the debris
    # (.lock: the file the savers lock, one saver at a time)
    assert sorted(p.name.split("-")[0] for p in directory.iterdir()) == [".lock", "CURRENT", "snapshot"]


def test_a_save_leaves_the_staging_directory_of_a_live_process_and_clears_a_dead_ones(saved):
    import subprocess
    import sys

    index, directory = saved
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid in (live.pid, dead.pid):
            (directory / f".tmp-{pid}-snapshot-99999999999999999999-busy").mkdir()
        index.save(directory)
        names = {p.name for p in directory.iterdir()}
        assert f".tmp-{live.pid}-snapshot-99999999999999999999-busy" in names
        assert f".tmp-{dead.pid}-snapshot-99999999999999999999-busy" not in names
    finally:
        live.kill()
        live.wait()


def test_unchanged_segments_are_linked_not_rewritten(saved):
    index, directory = saved
    before = {p.name: p.stat().st_ino for p in snapshot_of(directory).glob("*.codes.npy")}
    index.add(np.array([5000]), np.ones((1, 3, 6), dtype=np.float32), revision=43)
    index.save(directory)
    after = {p.name: p.stat().st_ino for p in snapshot_of(directory).glob("*.codes.npy")}
    assert set(before) < set(after)
    assert all(after[name] == inode for name, inode in before.items())
    assert SimilarityIndex.load(directory, device="cpu").revision == 43


def test_saving_an_empty_index_round_trips(tmp_path):
    index = SimilarityIndex(3, 2, model_id=MODEL, device="cpu")
    index.save(tmp_path)
    loaded = SimilarityIndex.load(tmp_path, device="cpu")
    assert len(loaded) == 0 and loaded.revision is None
    assert os.listdir(tmp_path).count("CURRENT") == 1


def test_a_load_racing_a_save_by_another_process_reads_the_new_snapshot(saved, monkeypatch):
    index, directory = saved
    from app.search import storage

    read = storage._read_named
    calls = []

    def save_in_between(directory_, name, expected, threads=1):
        if not calls:  # another process saves (and deletes this snapshot) while we read it
            index.add(np.array([7000]), np.ones((1, 3, 6), dtype=np.float32), revision=50)
            index.save(directory)
        calls.append(name)
        return read(directory_, name, expected)

    monkeypatch.setattr(storage, "_read_named", save_in_between)
    loaded = SimilarityIndex.load(directory, device="cpu")
    assert len(calls) == 2 and calls[0] != calls[1]
    assert loaded.revision == 50 and 7000 in loaded


SAVER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from app.search import SimilarityIndex

directory, worker, saves, start = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rng = np.random.default_rng(worker)
index = SimilarityIndex(6, 3, "cosine", model_id="0123456789abcdef", device="cpu", cluster_min_questions=50)
index.add(np.arange(worker * 10**6, worker * 10**6 + 300), rng.standard_normal((300, 3, 6)).astype(np.float32),
          revision=1)
errors = []
while time.time() < start:  # both savers start together
    time.sleep(0.001)
for i in range(saves):
    # a write between saves: each save has a new live mask to write and old segments to link
    index.add(np.array([worker * 10**6 + 1000 + i]), rng.standard_normal((1, 3, 6)).astype(np.float32),
              revision=2 + i)
    try:
        index.save(directory)
    except Exception as error:
        errors.append(f"save {i}: {error!r}")
        continue
    try:
        loaded = SimilarityIndex.load(directory, expected_model_id="0123456789abcdef", device="cpu")
        assert len(loaded) >= 301, len(loaded)
    except Exception as error:
        errors.append(f"load after save {i}: {error!r}")
print(json.dumps(errors))
"""


def test_two_processes_saving_into_one_directory_never_break_each_other_or_current(tmp_path):
    """Every worker saves into the same index directory: a save must never remove the staging
    directory of another process's save in progress, nor the snapshot CURRENT names."""
    import json
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    directory = tmp_path / "index"
    start = time.time() + 3.0
    savers = [
        subprocess.Popen([sys.executable, "-c", SAVER, str(directory), str(worker), "60", str(start)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for worker in (1, 2)
    ]
    results = [saver.communicate(timeout=120) for saver in savers]
    for saver, (out, err) in zip(savers, results, strict=True):
        assert saver.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == []
    loaded = SimilarityIndex.load(directory, expected_model_id=MODEL, device="cpu")
    assert len(loaded) == 360  # the last save, whichever process made it, is complete
    leftovers = [entry.name for entry in directory.iterdir() if entry.name.startswith((".tmp-", "snapshot-"))]
    assert leftovers == [(directory / "CURRENT").read_text().strip()]


def test_a_garbled_current_file_is_refused_like_a_dangling_one(saved):
    _, directory = saved
    (directory / "CURRENT").write_bytes(b"\xff\xfe\x00")  # the service rebuilds on IndexFileError
    with pytest.raises(IndexFileError, match="CURRENT cannot be read"):
        SimilarityIndex.load(directory)


def test_a_save_that_fails_midway_removes_its_staging_directory(saved, monkeypatch):
    from app.search import storage

    index, directory = saved
    before = sorted(p.name for p in directory.iterdir())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "_write_array", disk_full)
    index.add(np.array([999]), np.ones((1, 3, 6), dtype=np.float32), revision=43)  # a new segment to write
    with pytest.raises(OSError, match="No space left"):
        index.save(directory)
    assert sorted(p.name for p in directory.iterdir()) == before  # no half-written staging left behind
    monkeypatch.undo()
    assert SimilarityIndex.load(directory, device="cpu").revision == 42  # the previous snapshot serves
