"""The change applier: the one writer of the live search state.

It owns the live `SearchState` and is the only code that changes it. Its thread loads the index at
start-up (saved, or built from the database), then tails the database's change log: every
`applier_poll_ms`, or at once when a write in this process asks, it reads the changes after the
index's revision and applies them (idempotently: replaying a change is harmless, so the index
converges to the database whatever order restarts and crashes happen in). The same poll follows
the active model's generation, so a reindex that switches the model on one worker switches every
worker; and it saves the index now and then (one saver at a time per directory: storage.py).

A write commits, then calls `wait_visible(revision)`: it returns once this process's index has
applied that revision and every other live replica reports it has too, so a question is
searchable on every worker when its call returns; it wakes the workers on this machine that are
behind (wakeup.py), so they apply it now rather than at their next poll. Searches and the readiness probe only read the
published state and what the last poll learnt: they never touch the database, and never wait on
another writer's encoding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.admin.repository import ActiveModel, ReplicaProgress, ServiceStateRepository
from app.core.config import Settings
from app.core.db import Database
from app.core.errors import ConflictError, Unavailable
from app.model.encoder import QuestionEncoder
from app.questions import repository
from app.questions.models import CHANGE_DELETE, CHANGE_META, CHANGE_UPSERT
from app.similarity.catalog import CatalogEntry
from app.similarity.state import SearchState, StateBuilder
from app.similarity.wakeup import WakeupListener, WakeupSender

logger = logging.getLogger(__name__)

# Replica rows nobody refreshed for this long are deleted (a worker killed without a goodbye).
FORGET_REPLICAS_AFTER_SECONDS = 3600.0
# A write that woke the workers behind it re-reads their progress after this long, then ever less often.
WOKEN_REPLICA_CHECK_SECONDS = 0.004


class NotReady(Unavailable):
    """No model or index is loaded yet."""


class ModelChangedDuringRebuild(ConflictError):
    """A rebuild with the live model finished after another worker switched every worker to
    another model: publishing it would serve the old model under the new generation."""


# A model switch waits for workers heard from within max(FACTOR x QSIM_REPLICA_TIMEOUT_SECONDS,
# SECONDS): longer than a write does, since one given up on keeps answering with the old model.
FOLLOWER_LIVENESS_FACTOR = 5
FOLLOWER_LIVENESS_SECONDS = 10.0


class ChangeApplier:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        builder: StateBuilder,
        service_state: ServiceStateRepository,
        on_lagging_write: Callable[[], None] | None = None,
        on_heartbeat: Callable[[], None] | None = None,
    ):
        self.db = database
        self.settings = settings
        self.builder = builder
        self.service_state = service_state
        self.replica_id = uuid.uuid4().hex
        self.load_error: str | None = None
        self._on_lagging_write = on_lagging_write or (lambda: None)
        self._on_heartbeat = on_heartbeat or (lambda: None)
        self._state: SearchState | None = None
        self._live = threading.Event()
        self._loading_lock = threading.Lock()  # load_now's last catch-up and publication against wait_visible
        self._write_lock = threading.RLock()  # every change of the live state holds it
        self._save_lock = threading.Lock()
        self._wake = threading.Event()
        self._applied = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_marker: tuple[int, int, str] | None = None  # (revision, questions, model id) on disk
        self._database_revision = 0  # the latest change the last successful poll saw
        self._database_error: str | None = None
        self._reported: tuple[int, int] | None = None
        self._built_for: str | None = None  # the database id the live index was built from
        self._report_lock = threading.Lock()  # a heartbeat never writes older progress over newer
        self._reported_at = time.monotonic()  # when the applier last reported (each poll ends so)
        self._heartbeat: threading.Thread | None = None
        self._listener: WakeupListener | None = None
        self._wakeups = WakeupSender()

    @classmethod
    def for_tools(cls, database: Database, settings: Settings) -> tuple[ChangeApplier, ActiveModel]:
        """An applier for command-line tools that work on the index while no thread tails the log
        (`qsim reindex`, `qsim cluster`), with the active model."""
        from app.similarity.model_registry import ModelRegistry

        service_state = ServiceStateRepository(database)
        applier = cls(database, settings, StateBuilder(database, settings, service_state), service_state)
        return applier, ModelRegistry(settings, service_state).active()

    # ------------------------------------------------------------------ reading the live state

    @property
    def state(self) -> SearchState:
        state = self._state
        if state is None:
            raise NotReady(self.load_error or "the search index is still loading")
        return state

    @property
    def loaded(self) -> bool:
        return self._state is not None

    def wait_until_loaded(self, timeout: float | None) -> bool:
        """Blocks until an index is live (at most `timeout` seconds); True when it is."""
        return self._live.wait(timeout)

    def status(self) -> dict:
        """What the probes and metrics report, from memory only."""
        state = self._state
        report: dict = {
            "loaded": state is not None, "database": self._database_error or "ok", "index_backend": self.builder.backend,
        }
        if state is not None:
            revision = state.revision  # the Milvus index reads it from the collection
            report.update(
                model=state.encoder.name,
                model_id=state.encoder.model_id,
                model_generation=state.generation,
                questions=len(state.index),
                revision=revision,
                pending_changes=max(0, self._database_revision - revision),
                device=state.index.device,
                index_kind=state.index.kind,
            )
        return report

    # ------------------------------------------------------------------ lifecycle

    def start(self, encoder: QuestionEncoder, active: ActiveModel) -> None:
        """Starts the applier thread: it loads (or builds) the index for `encoder`, retrying while
        the database is away, then tails the change log; another worker's write wakes it at once."""
        if self._listener is None:
            self._listener = WakeupListener(self.replica_id, self._wake.set)
        self._thread = threading.Thread(target=self._run, args=(encoder, active.generation), name="change-applier",
                                        daemon=True)
        self._thread.start()
        self._heartbeat = threading.Thread(target=self._beat, name="replica-heartbeat", daemon=True)
        self._heartbeat.start()

    def load_now(self, encoder: QuestionEncoder, generation: int = 0) -> SearchState:
        """Loads the saved index (or builds one) for `encoder`, reconciles it with the database and
        publishes it; for tools that run without the thread (`qsim cluster`)."""
        started = time.perf_counter()
        state = self.builder.load_saved(encoder, generation)
        built = state is None
        if built:
            state = self.builder.build(encoder, generation)
        else:  # what is on disk: the catch-up below makes the live index newer than that
            self._saved_marker = (state.revision, len(state.index), state.index.model_id)
        # Registered as a replica before the last catch-up: a write committed after this report
        # waits for this worker to apply it, and one committed before it is in the catch-up. (Reported
        # only after publishing, a write landing in between was acknowledged without this worker,
        # which then answered without it.)
        self._report(state, force=True)
        catch_up(self.db, state)
        if built:
            self.builder.publish(state)
        else:
            reconcile(state)
        self._built_for = self.service_state.database_id()
        # A write committed during the reconcile (or the build's publication) is in no catch-up yet,
        # and its wait_visible, seeing no live state here, waits only for the other workers: the
        # last catch-up and the publication happen under the lock wait_visible checks the state in.
        with self._loading_lock:
            catch_up(self.db, state)
            self._publish(state)
        self._report(state, force=True)
        logger.info(
            "ready: model %s (%s), %d questions, revision %d, %.1f s",
            encoder.name, encoder.model_id, len(state.index), state.revision, time.perf_counter() - started,
        )
        return state

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
        if self._listener is not None:
            self._listener.close()
        self._wakeups.close()
        if self._state is not None:
            self.save()
            with contextlib.suppress(SQLAlchemyError):  # it ages out
                self.service_state.forget_replica(self.replica_id)

    def _run(self, encoder: QuestionEncoder, generation: int) -> None:
        delay = 0.5
        while not self._stopping.is_set() and self._state is None:
            try:
                self.load_now(encoder, generation)
                self.load_error = None
            except SQLAlchemyError as error:  # the database went away during the load: try again
                self.load_error = f"database unavailable while loading the index: {error.__class__.__name__}"
            except Exception as error:
                self.load_error = f"{type(error).__name__}: {error}"
                logger.exception("loading the index failed; retrying")
            if self._state is None:
                logger.warning("%s; retrying in %.1f s", self.load_error, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)
        last_save = time.monotonic()
        interval = self.settings.index_save_interval_seconds
        poll = self.settings.applier_poll_ms / 1000.0
        with contextlib.suppress(SQLAlchemyError):
            self.service_state.forget_stale_replicas(FORGET_REPLICAS_AFTER_SECONDS)
        while not self._stopping.is_set():
            self._wake.wait(poll)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.poll()
                if interval > 0 and time.monotonic() - last_save >= interval:
                    last_save = time.monotonic()
                    self.save()
            except SQLAlchemyError as error:
                if self._database_error is None:
                    logger.warning("database unavailable; serving the index as it is: %s", error.__class__.__name__)
                self._database_error = f"not answering ({error.__class__.__name__})"
            except Exception:
                logger.exception("applying changes failed; retrying")
                self._stopping.wait(1.0)

    # ------------------------------------------------------------------ applying

    def poll(self) -> None:
        """One round: follow the active model, apply the changes the index lacks, report progress."""
        with self._write_lock:
            state = self.state
            with self.db.reading_rows() as session:  # one small transaction: this runs every applier_poll_ms
                latest = repository.last_change(session)
                active = self.service_state.active_model(self.settings.model_dir, session)
                database_id = self.service_state.stored_database_id(session)
            self._database_revision, self._database_error = latest, None
            if database_id != self._built_for:
                state = self._rebuild(state, "the database was replaced under this worker (its id changed)")
            elif latest < state.revision and self.builder.backend == "faiss":
                # (A Milvus index is shared: another replica may have applied a change this poll's
                # read of the log predates, so there the id alone says the database changed.)
                state = self._rebuild(
                    state, f"the database went back to change {latest}, the index is at {state.revision} "
                    "(restored from a backup?)",
                )
            if active.generation != state.generation:
                state = self._follow(state, active)
            if latest > state.revision:
                catch_up(self.db, state)
                self._notify_applied()
        self._report(state)

    def _rebuild(self, state: SearchState, reason: str) -> SearchState:
        """The index rebuilt from the database as it is now, as a start-up would (a start-up refuses
        a saved index ahead of the database or made for another one)."""
        logger.warning("%s: rebuilding the index from the database", reason)
        self.service_state.forget_database_id()
        self.service_state.database_id()  # a database without an id gets one now, not at the next poll
        # Behind until rebuilt: writes wait for this worker (the beats keep that fresh) rather than
        # take its old revision for the new database's.
        self._record((0, state.generation), force=True)
        # Milvus: a replica that noticed first built the new database's collection; the others open it.
        rebuilt = self.builder.load_saved(state.encoder, state.generation) if self.builder.backend == "milvus" else None
        built = rebuilt is None
        if built:
            rebuilt = self.builder.build(state.encoder, state.generation)
            self.builder.publish(rebuilt)
        self._report(rebuilt, force=True)
        catch_up(self.db, rebuilt)
        if not built:
            reconcile(rebuilt)
        self._saved_marker = None
        self._built_for = self.service_state.database_id()  # only now: a rebuild that failed is retried
        self._publish(rebuilt)
        return rebuilt

    def _follow(self, state: SearchState, active: ActiveModel) -> SearchState:
        """Another worker switched the model: serve the same one (its saved index when there is one)."""
        encoder = self.builder.load_encoder(active.path)
        if encoder.model_id == state.encoder.model_id and self.builder.backend == "faiss":
            # The same codes: this worker's own index holds as it is.
            followed = SearchState(encoder, state.index, state.catalog, active.generation)
        else:
            logger.info("following model generation %d: %s (%s)", active.generation, encoder.name, encoder.model_id)
            # FAISS: the switcher saved its index first; Milvus: the collection the alias now names.
            followed = self.builder.load_saved(encoder, active.generation)
            if followed is None:
                followed = self.builder.build(encoder, active.generation)
            catch_up(self.db, followed)
        self._publish(followed)
        return followed

    def _report(self, state: SearchState, force: bool = False) -> None:
        self._record((state.revision, state.generation), force)

    def _record(self, progress: tuple[int, int], force: bool = False) -> None:
        """Records (revision, generation) as this worker's progress when it changed (or `force`)."""
        with self._report_lock:
            if force or progress != self._reported:
                self.service_state.record_replica(ReplicaProgress(self.replica_id, *progress, time.time()))
                self._reported = progress
            self._reported_at = time.monotonic()

    def _beat(self) -> None:
        """Re-records this worker's last reported progress every QSIM_REPLICA_HEARTBEAT_SECONDS, on
        its own thread: a poll that runs long (following another worker's model switch, catching up
        a large import) must not make this worker look gone, or writes and switches stop waiting for
        it while it still answers with what it had. A poll that has not completed for longer than
        QSIM_MODEL_SWITCH_TIMEOUT_SECONDS (a worker stuck, or failing to follow) stops the beats: the
        worker then ages out instead of holding every write up."""
        while not self._stopping.wait(self.settings.replica_heartbeat_seconds):
            limit = max(self.settings.model_switch_timeout_seconds, self.settings.replica_timeout_seconds)
            if self._reported is not None and time.monotonic() - self._reported_at <= limit:
                with self._report_lock, contextlib.suppress(SQLAlchemyError):
                    if not self._stopping.is_set():
                        self.service_state.record_replica(ReplicaProgress(self.replica_id, *self._reported, time.time()))
            try:
                self._on_heartbeat()  # after the beat: a slow metrics read must not delay it
            except Exception:
                logger.exception("updating the metrics on the heartbeat failed")

    def _publish(self, state: SearchState) -> None:
        self._state = state
        self._live.set()
        self._notify_applied()

    def _notify_applied(self) -> None:
        with self._applied:
            self._applied.notify_all()

    def wait_visible(self, revision: int, timeout: float | None = None) -> bool:
        """After a write committed change `revision`: wakes the applier and waits until this
        process's index has it and every other live replica reports it (at most `timeout`, default
        QSIM_WRITE_VISIBILITY_TIMEOUT_SECONDS). False when that did not happen in time: the write
        is stored and will be applied, but may not be searchable everywhere yet."""
        timeout = self.settings.write_visibility_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._wake.set()
        # A worker still loading replays the log in its load, this change included: its last
        # catch-up takes the lock after this write committed (load_now); the workers already
        # serving must apply it too.
        if not self._loading_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return self._lagging(revision, "this worker (loading)")
        try:
            live = self._state is not None
        finally:
            self._loading_lock.release()
        if live and not self._wait_applied_here(revision, deadline):
            return self._lagging(revision, "this worker")
        return self._wait_replicas(lambda replica: replica.revision >= revision, deadline, f"change {revision}")

    def _wait_applied_here(self, revision: int, deadline: float) -> bool:
        """Until this process's live index has `revision` (True at once while none is live)."""
        with self._applied:
            while self._state is not None and self._state.revision < revision:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return False
                self._wake.set()
                self._applied.wait(min(remaining, 0.05))
        return True

    def wait_followers(self, generation: int, timeout: float) -> bool:
        """After this worker switched the model: waits (at most `timeout`) until every other worker
        reports serving `generation`. A worker whose beats paused for a few seconds (a loaded machine,
        the follow itself) still counts here: given up on, it would go on answering with the previous
        model after the switch was reported done."""
        alive_within = max(self.settings.replica_timeout_seconds * FOLLOWER_LIVENESS_FACTOR, FOLLOWER_LIVENESS_SECONDS)
        return self._wait_replicas(lambda replica: replica.generation >= generation, time.monotonic() + timeout,
                                   f"model generation {generation}", alive_within)

    def _wait_replicas(self, reached: Callable[[ReplicaProgress], bool], deadline: float, what: str,
                       alive_within: float | None = None) -> bool:
        slowest = poll = max(self.settings.applier_poll_ms / 2000.0, 0.005)
        nudged = False
        while True:
            try:
                replicas = self.service_state.live_replicas(alive_within or self.settings.replica_timeout_seconds)
            except SQLAlchemyError as error:
                # The write this waits for is committed: a database blip now must not answer it
                # "unavailable, retry" (the retry would store it twice). It is stored; say it lags.
                logger.warning("could not read the other workers' progress (%s)", type(error).__name__)
                return self._lagging(what, "the other workers (progress unreadable)")
            behind = [r for r in replicas if r.replica_id != self.replica_id and not reached(r)]
            if not behind:
                return True
            if time.monotonic() >= deadline:
                return self._lagging(what, f"{len(behind)} other worker(s)")
            if not nudged:
                nudged = True
                if self._wakeups.wake(r.replica_id for r in behind) == len(behind):
                    poll = WOKEN_REPLICA_CHECK_SECONDS  # they poll now: look again soon
            time.sleep(poll)
            poll = min(poll * 2, slowest)  # a woken worker that is slow is not read every 4 ms

    def _lagging(self, what, who: str) -> bool:
        logger.warning("%s has not reached %s in time; it will", who, what)
        self._on_lagging_write()
        return False

    # ------------------------------------------------------------------ reindex

    def switch(self, new_state: SearchState, activate: Path | None = None) -> SearchState:
        """Makes a freshly built state live after replaying the changes made while it was built, and
        saves it. With `activate` (its model directory), records it as the model every worker serves
        (a new generation) and waits until the other live workers follow."""
        rebuild_of_the_served_model = activate is None
        if self.builder.backend == "milvus" and activate is None:
            # Every replica reads the collection the alias names: a rebuild is a new generation
            # they all follow, even with the same model.
            activate = Path(self.service_state.active_model(self.settings.model_dir).path)
        if activate is not None:
            self.save_state(new_state)  # before the switch is recorded: followers load it instead of building
        with self._write_lock:
            live = self.state
            if rebuild_of_the_served_model and live.encoder.model_id != new_state.encoder.model_id:
                if self.builder.backend == "milvus":
                    self.builder.drop_collection(new_state.index.name)  # saved above; never served
                raise ModelChangedDuringRebuild(
                    f"the served model changed to {live.encoder.name} ({live.encoder.model_id}) while this rebuild "
                    f"with {new_state.encoder.name} ran; nothing was switched: reindex again"
                )
            catch_up(self.db, new_state)
            previous = self.builder.publish(new_state)
            if activate is not None:
                generation = self.service_state.activate_model(activate, self.settings.model_dir).generation
            else:
                generation = self.state.generation
            new_state = dataclasses.replace(new_state, generation=generation)  # the same index and catalog
            self._publish(new_state)
        self._report(new_state, force=True)
        self.save()
        if activate is not None:
            followed = self.wait_followers(new_state.generation, self.settings.model_switch_timeout_seconds)
            if previous is not None and followed:
                self.builder.drop_collection(previous)  # nobody reads the previous build any more
        return new_state

    # ------------------------------------------------------------------ persistence

    def save(self) -> bool:
        """Saves the live index when it changed since the last save (atomically: a crash during the
        save leaves the previous copy)."""
        state = self._state
        return False if state is None else self.save_state(state)

    def save_state(self, state: SearchState) -> bool:
        with self._save_lock:
            marker = (state.revision, len(state.index), state.index.model_id)
            if self._saved_marker == marker:
                return False
            path = self.builder.save(state)  # one consistent snapshot
            self._saved_marker = marker
        logger.info("saved index at change %d (%d questions) to %s", marker[0], marker[1], path)
        return True

def catch_up(database: Database, state: SearchState, batch_size: int = 5000) -> int:
    """Applies to `state` the changes logged after its revision, in pages; returns how many
    changes were read. Every change is idempotent, so replaying one twice is harmless."""
    read = 0
    while True:
        with database.reading() as session:
            changes = repository.changes_after(session, state.revision, batch_size)
            if not changes:
                return read
            last_op: dict[int, str] = {}
            for change in changes:
                if change.op == CHANGE_META and last_op.get(change.question_id) == CHANGE_UPSERT:
                    continue  # the pending re-encode covers it
                last_op[change.question_id] = change.op
            touched = [qid for qid, op in last_op.items() if op != CHANGE_DELETE]
            summaries = repository.summaries(session, touched)
        _apply(state, last_op, summaries, revision=changes[-1].seq)
        read += len(changes)
        if len(changes) < batch_size:
            return read


def _apply(state: SearchState, last_op: dict[int, str], summaries: dict[int, tuple], revision: int) -> None:
    # A row gone by now was deleted by a change we will also replay: remove it already.
    removed = [qid for qid, op in last_op.items() if op == CHANGE_DELETE or qid not in summaries]
    encode = [qid for qid, op in last_op.items() if qid in summaries and (op == CHANGE_UPSERT or qid not in state.index)]
    state.catalog.update((qid, CatalogEntry(*summary)) for qid, summary in summaries.items())
    codes = state.encoder.sample([summaries[qid][0] for qid in encode]) if encode else None
    state.index.apply(
        upsert_ids=np.asarray(encode, dtype=np.int64) if encode else None,
        upsert_codes=codes,
        remove_ids=np.asarray(removed, dtype=np.int64) if removed else None,
        revision=revision,
    )
    for qid in removed:
        state.catalog.pop(qid, None)


def reconcile(state: SearchState) -> tuple[int, int]:
    """Safety net after a restart: ids the catalog (the database) has and the index lacks are
    added, ids the database no longer has are removed. Returns (added, removed)."""
    in_database = np.fromiter(state.catalog.keys(), dtype=np.int64, count=len(state.catalog))
    in_index = state.index.ids()
    missing = np.setdiff1d(in_database, in_index)
    extra = np.setdiff1d(in_index, in_database)
    if len(missing) or len(extra):
        logger.warning("reconciling index with database: %d missing, %d extra", len(missing), len(extra))
        codes = state.encoder.sample([state.catalog[int(q)][0] for q in missing]) if len(missing) else None
        state.index.apply(
            upsert_ids=missing if len(missing) else None,
            upsert_codes=codes,
            remove_ids=extra if len(extra) else None,
        )
    return len(missing), len(extra)
