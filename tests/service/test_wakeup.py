"""Wake-ups between workers on one machine: a nudge reaches the worker it names, and nothing else;
a nudge nobody listens for is dropped without an error (the change-log poll covers it)."""

from __future__ import annotations

import threading
import uuid

import pytest

from app.similarity import wakeup
from app.similarity.wakeup import WakeupListener, WakeupSender

pytestmark = pytest.mark.skipif(not wakeup.SUPPORTED, reason="abstract Unix sockets are Linux only")


def listener() -> tuple[WakeupListener, threading.Event, str]:
    woken = threading.Event()
    replica_id = uuid.uuid4().hex
    return WakeupListener(replica_id, woken.set), woken, replica_id


def test_a_nudge_wakes_the_replica_it_names_and_no_other():
    first, first_woken, first_id = listener()
    second, second_woken, _ = listener()
    sender = WakeupSender()
    try:
        assert first.listening and second.listening
        assert sender.wake([first_id]) == 1
        assert first_woken.wait(2)
        assert not second_woken.wait(0.2)
    finally:
        for closing in (first, second, sender):
            closing.close()


def test_a_nudge_to_a_replica_that_is_not_listening_is_dropped_quietly():
    sender = WakeupSender()
    stopped, _, stopped_id = listener()
    stopped.close()
    try:
        assert sender.wake([uuid.uuid4().hex, stopped_id]) == 0
    finally:
        sender.close()


def test_closing_a_listener_ends_its_thread_and_frees_its_name():
    closing, _, replica_id = listener()
    closing.close()
    assert not closing.listening and not closing._thread.is_alive()
    again = WakeupListener(replica_id, threading.Event().set)
    try:
        assert again.listening  # the abstract name is free again: nothing left on disk or bound
    finally:
        again.close()


def test_a_sender_closed_while_writes_still_nudge_delivers_nothing_and_raises_nothing():
    target, _, target_id = listener()
    sender = WakeupSender()
    try:
        assert sender.wake([target_id]) == 1
        sender.close()
        assert sender.wake([target_id]) == 0
    finally:
        target.close()


def test_a_stopped_applier_stops_listening(settings):
    from app.core.db import open_database
    from app.similarity.applier import ChangeApplier

    database = open_database(settings.database_url)
    applier, active = ChangeApplier.for_tools(database, settings)
    try:
        applier.start(applier.builder.load_encoder(active.path), active)
        assert applier.wait_until_loaded(60)
        assert WakeupSender().wake([applier.replica_id]) == 1
        applier.stop()
        assert WakeupSender().wake([applier.replica_id]) == 0
    finally:
        applier.stop()
        database.dispose()
