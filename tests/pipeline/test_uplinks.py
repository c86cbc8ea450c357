"""Edge uplink failover: the pure decision (which uplink a study goes to, given the health checks) as
tables and Hypothesis properties; the checker threads with a scripted probe; and the outbox failing
over between two real DICOM listeners (C-STORE, C-ECHO checks) and back."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import func, select

from prescreen.config import Settings
from prescreen.errors import DeliveryError, InvalidDestinationError
from prescreen.integration.dicom_send import DicomDestination, c_echo
from prescreen.integration.forward import service_ready
from prescreen.integration.listener import start_listener
from prescreen.pipeline.outbox import OutboxStep
from prescreen.pipeline.runtime import open_store
from prescreen.pipeline.uplinks import (
    UplinkHealth,
    Uplinks,
    check_uplinks,
    current_uplink,
    observe,
    observe_send,
    probe,
    send_order,
)
from prescreen.store.ingest import Ingestor
from prescreen.store.schema import Delivery, Instance, Study
from tests.fixtures_dicom import free_port, make_instance
from tests.waiting import wait_until

FAST = settings(max_examples=200, deadline=None)
UP, DOWN = UplinkHealth(True), UplinkHealth(False)
A, B, C = "http://a:3000", "http://b:3000", "PACS@c:104"


# -- the pure decision --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("before", "ok", "rise", "fall", "after"),
    [
        (UP, True, 2, 2, UP),
        (UP, False, 2, 2, UplinkHealth(True, 1)),  # one failed check: still up
        (UplinkHealth(True, 1), False, 2, 2, DOWN),  # the second in a row: down
        (UplinkHealth(True, 1), True, 2, 2, UP),  # a good check in between starts over
        (UP, False, 2, 1, DOWN),  # fall 1: down at once
        (DOWN, True, 2, 2, UplinkHealth(False, 1)),
        (UplinkHealth(False, 1), True, 2, 2, UP),  # back after two good checks
        (UplinkHealth(False, 1), False, 2, 2, DOWN),
        (DOWN, True, 1, 2, UP),
    ],
)
def test_observe_flips_after_enough_checks_in_a_row(
    before: UplinkHealth, ok: bool, rise: int, fall: int, after: UplinkHealth
) -> None:
    assert observe(before, ok, rise=rise, fall=fall) == after


def test_a_send_decides_at_once() -> None:
    assert observe_send(False) == DOWN and observe_send(True) == UP


@pytest.mark.parametrize(
    ("health", "current", "order"),
    [
        ({}, A, [A, B, C]),  # nothing checked yet: the first
        ({A: UP, B: UP, C: UP}, A, [A, B, C]),
        ({A: DOWN, B: UP, C: UP}, B, [B, C]),
        ({A: DOWN, B: DOWN, C: UP}, C, [C]),
        ({A: UP, B: DOWN, C: DOWN}, A, [A]),  # back to the first as soon as it is up
        ({A: DOWN, B: DOWN, C: DOWN}, A, [A, B, C]),  # none up: every one, in order
        ({A: UplinkHealth(True, 1), B: UP, C: DOWN}, A, [A, B]),  # one failed check does not move
    ],
)
def test_which_uplink(health: dict[str, UplinkHealth], current: str, order: list[str]) -> None:
    assert current_uplink([A, B, C], health) == current
    assert send_order([A, B, C], health) == order


uplink_lists = st.lists(st.sampled_from([A, B, C, "D@d:104", "http://e"]), min_size=1, unique=True)
healths = st.builds(UplinkHealth, st.booleans(), st.integers(0, 3))


@FAST
@given(uplink_lists, st.data())
def test_the_current_uplink_is_the_first_up_else_the_primary(uplinks: list[str], data: st.DataObject) -> None:
    health = {u: data.draw(healths) for u in uplinks if data.draw(st.booleans())}  # some never checked
    current = current_uplink(uplinks, health)
    order = send_order(uplinks, health)
    up = [u for u in uplinks if health.get(u, UP).up]
    assert current in uplinks
    assert current == (up[0] if up else uplinks[0])
    assert order == (up or uplinks)  # a subsequence of the configured order, never empty
    assert order[0] == current


@FAST
@given(st.lists(st.booleans(), max_size=40), st.integers(1, 4), st.integers(1, 4), st.booleans())
def test_the_state_follows_the_last_run_of_checks(checks: list[bool], rise: int, fall: int, start: bool) -> None:
    """Reference model: the state flips exactly when the current run of contrary checks reaches rise/fall."""
    health = UplinkHealth(start)
    state, run = start, 0
    for ok in checks:
        before = health
        health = observe(health, ok, rise=rise, fall=fall)
        run = 0 if ok == state else run + 1
        if run and run >= (rise if ok else fall):
            state, run = ok, 0
        assert (health.up, health.against) == (state, run)
        assert health.up == before.up or health.up == ok  # it only ever flips towards the observation


@FAST
@given(st.integers(2, 5), st.booleans())
def test_alternating_checks_never_flip_with_thresholds_above_one(threshold: int, start: bool) -> None:
    health = UplinkHealth(start)
    for index in range(30):
        health = observe(health, index % 2 == 0, rise=threshold, fall=threshold)
        assert health.up == start


@pytest.mark.parametrize(
    ("given_values", "uplinks"),
    [
        (["http://central:3000/"], ["http://central:3000"]),
        (["http://a:3000", "https://b.example.org"], ["http://a:3000", "https://b.example.org"]),
        (["http://a:3000, PACS@b:104"], ["http://a:3000", "PACS@b:104"]),
        (["tls:PACS@[::1]:2762"], ["tls:PACS@[::1]:2762"]),
    ],
)
def test_check_uplinks_keeps_the_order(given_values: list[str], uplinks: list[str]) -> None:
    assert check_uplinks(given_values) == uplinks


@pytest.mark.parametrize(
    ("given_values", "message"),
    [
        ([], "no uplink"),
        ([" , "], "no uplink"),
        (["http://a:3000", "http://a:3000/"], "twice"),
        (["http:///nohost"], "no host"),
        (["http://a:99999"], "http://a:99999"),
        (["central:3000"], "AE@host:port"),
        (["PACS@host:notaport"], "not a number"),
        (["http://" + "a" * 130], "longer than 128"),
    ],
)
def test_check_uplinks_refuses(given_values: list[str], message: str) -> None:
    with pytest.raises(InvalidDestinationError, match=message):
        check_uplinks(given_values)


# -- the checker threads, with a scripted probe ---------------------------------------------------
class Script:
    """A probe whose answers the test sets; counts the checks."""

    def __init__(self, answers: dict[str, bool]) -> None:
        self.answers = answers
        self.calls = 0

    def __call__(self, uplink: str) -> bool:
        self.calls += 1
        return self.answers[uplink]


@pytest.fixture
def scripted() -> Iterator[tuple[Uplinks, Script]]:
    script = Script({A: True, B: True})
    uplinks = Uplinks([A, B], script, interval=0.02, keepalive=0.5)
    yield uplinks, script
    uplinks.stop()


def test_checks_move_the_current_uplink_and_back(scripted: tuple[Uplinks, Script]) -> None:
    uplinks, script = scripted
    uplinks.keep_checking()
    assert uplinks.current() == A
    script.answers[A] = False
    start = time.monotonic()
    wait_until(lambda: uplinks.current() == B, 3, 0.01, "B not current after A stopped answering")
    assert time.monotonic() - start < 1.0
    revivals = uplinks.revivals
    script.answers[A] = True
    wait_until(lambda: uplinks.current() == A, 3, 0.01, "A not current again")
    assert uplinks.revivals == revivals + 1


def test_checks_stop_when_the_outbox_stops_asking(scripted: tuple[Uplinks, Script]) -> None:
    uplinks, script = scripted
    uplinks.keep_checking()
    wait_until(lambda: script.calls >= 4, 3, 0.01)
    wait_until(lambda: not any(t.name in ("uplink-0", "uplink-1") for t in threading.enumerate()), 3, 0.05)
    calls = script.calls
    time.sleep(0.1)
    assert script.calls == calls
    uplinks.keep_checking()  # asked again: checking again
    wait_until(lambda: script.calls > calls, 3, 0.01)


def test_one_uplink_is_never_checked() -> None:
    script = Script({A: False})
    uplinks = Uplinks([A], script, interval=0.01)
    uplinks.keep_checking()
    time.sleep(0.05)
    assert script.calls == 0 and uplinks.current() == A and uplinks.next_to_try([]) == A


def test_a_failed_send_moves_on_at_once_and_a_good_one_brings_back(scripted: tuple[Uplinks, Script]) -> None:
    uplinks, _ = scripted
    uplinks.record_send(A, ok=False)
    assert uplinks.current() == B and uplinks.next_to_try([]) == B
    assert uplinks.next_to_try([B]) is None  # A is down: this attempt is over
    uplinks.record_send(B, ok=False)
    assert uplinks.next_to_try([B]) == A  # none up: every one is tried
    uplinks.record_send(A, ok=True)
    assert uplinks.current() == A


def test_a_send_in_flight_is_given_up_when_its_uplink_goes_silent(scripted: tuple[Uplinks, Script]) -> None:
    uplinks, script = scripted
    uplinks.keep_checking()
    release = threading.Event()

    def hang() -> None:  # a link gone silent: the send would wait for its own timeout
        release.wait(10)

    def fail() -> None:
        raise ValueError("boom")

    threading.Timer(0.1, lambda: script.answers.update({A: False})).start()
    start = time.monotonic()
    with pytest.raises(DeliveryError, match="stopped answering during the send"):
        uplinks.run_watched(A, hang)
    assert time.monotonic() - start < 1.0
    release.set()
    sent: list[str] = []
    uplinks.run_watched(B, lambda: sent.append(B))
    assert sent == [B]
    with pytest.raises(ValueError, match="boom"):  # what the send raised, on the watching thread
        uplinks.run_watched(B, fail)


# -- real probes ---------------------------------------------------------------------------------
def test_probes_of_nothing_listening_fail_fast() -> None:
    port = free_port()
    start = time.monotonic()
    assert not service_ready(f"http://127.0.0.1:{port}", timeout=0.5)
    assert not probe(f"NOBODY@127.0.0.1:{port}", timeout=0.5)
    with pytest.raises(DeliveryError, match="cannot associate"):
        c_echo(DicomDestination("NOBODY", "127.0.0.1", port), timeout=0.5)
    assert time.monotonic() - start < 3


# -- the outbox between two real DICOM listeners ------------------------------------------------
class Central:
    """A DICOM listener with its own store, standing in for a central service (C-STORE uplink)."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home, dicom_port=free_port(), dicom_ae_title="CENTRAL")
        self.ingestor: Ingestor = open_store(self.settings)
        self.server: ThreadedAssociationServer | None = None

    @property
    def uplink(self) -> str:
        return f"CENTRAL@127.0.0.1:{self.settings.dicom_port}"

    def start(self) -> None:
        self.server = start_listener(self.ingestor, self.settings, host="127.0.0.1")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def studies(self) -> set[str]:
        with self.ingestor.sessions() as session:
            return set(session.scalars(select(Study.study_uid)))

    def most_copies_of_an_instance(self) -> int:
        with self.ingestor.sessions() as session:
            counts = session.scalars(select(func.count()).select_from(Instance).group_by(Instance.sop_instance_uid))
            return max(counts, default=0)


def encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_outbox_fails_over_to_the_standby_and_back(tmp_path: Path) -> None:
    a, b = Central(tmp_path / "a"), Central(tmp_path / "b")
    settings = Settings(
        home=tmp_path / "edge",
        forward_to=f"{a.uplink},{b.uplink}",
        study_quiet_seconds=0,
        delivery_backoff_seconds=60,
        uplink_probe_seconds=0.05,
        uplink_probe_timeout_seconds=0.5,
    )
    edge = open_store(settings)
    outbox = OutboxStep(edge.sessions, edge.blobs, settings)
    assert outbox.uplinks is not None
    try:
        first = make_instance("CR")  # both centrals down: the attempt tries both, then backs off
        edge.store_dicom(encode(first), sender="MODALITY")
        assert outbox.run_once()
        with edge.sessions() as session:
            waiting = session.scalars(select(Delivery)).one()
        assert (waiting.state, waiting.attempts, waiting.destination) == ("pending", 1, a.uplink)
        assert waiting.last_error and a.uplink in waiting.last_error and b.uplink in waiting.last_error

        b.start()  # the standby answers: the waiting study goes now, not after its 60 s backoff
        wait_until(lambda: outbox.uplinks and outbox.uplinks.current() == b.uplink, 5, 0.02, "B not up")
        assert outbox.run_once()
        with edge.sessions() as session:
            sent = session.scalars(select(Delivery)).one()
        assert (sent.state, sent.attempts, sent.destination) == ("delivered", 2, b.uplink)
        assert b.studies() == {first.StudyInstanceUID}

        second = make_instance("CR")  # A still down: straight to B, one attempt
        edge.store_dicom(encode(second), sender="MODALITY")
        assert outbox.run_once()

        a.start()  # the primary is back: new studies go to it again
        wait_until(lambda: outbox.uplinks and outbox.uplinks.current() == a.uplink, 5, 0.02, "A not back")
        third = make_instance("CR")
        edge.store_dicom(encode(third), sender="MODALITY")
        assert outbox.run_once()

        b.stop()  # the standby goes away; the primary keeps taking studies
        fourth = make_instance("CR")
        edge.store_dicom(encode(fourth), sender="MODALITY")
        assert outbox.run_once()
    finally:
        outbox.uplinks.stop()
        a.stop()
        b.stop()
    with edge.sessions() as session:
        rows = session.execute(select(Delivery.state, Delivery.attempts, Delivery.destination)).all()
    assert sorted(rows) == sorted(
        [("delivered", 2, b.uplink), ("delivered", 1, b.uplink), ("delivered", 1, a.uplink), ("delivered", 1, a.uplink)]
    )
    assert b.studies() == {first.StudyInstanceUID, second.StudyInstanceUID}
    assert a.studies() == {third.StudyInstanceUID, fourth.StudyInstanceUID}
    assert a.most_copies_of_an_instance() == b.most_copies_of_an_instance() == 1
