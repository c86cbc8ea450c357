"""Worklist benchmark: the worklist query at 100,000 open items, claims under contention, and a
replayed day comparing reading orders with and without AI prioritisation.

1. Worklist query: a fresh database (SQLite file migrated with ``migrate``; PostgreSQL in a throwaway
   cluster, ``initdb`` + ``pg_ctl`` from ``tests/pg_cluster.py``) gets ``--items`` open items in
   the ``cardiology`` worklist, bulk-inserted with their studies (one ECG series each): priorities
   10 % stat / 30 % urgent / 60 % routine, received uniformly over the last 4 h, AI scores uniform,
   20 % unscored. ``list_worklist(session, "cardiology", targets, limit=50)`` is timed ``--calls``
   times (fresh session each call, ``now`` advancing 0.5 s per call), interleaved with the naive
   baseline "all open items of the worklist ORDER BY CASE(band), score DESC, received_at LIMIT 50"
   (same join, same summaries), which must return the same items. The SQL of one call is captured
   to count statements, split the time by statement, and show the plans (SQLite ``EXPLAIN QUERY
   PLAN``, PostgreSQL ``EXPLAIN ANALYZE``).
2. Claims under contention, in a second worklist of ``--claim-items`` open items in the same database
   (so that the loop measures claiming, not the 100k-item list of part 1): readers (one user each,
   grade attending) loop ``list_worklist`` → first unread item → ``act(claim)`` → on
   ``ConflictError`` the next unread item, until ``--claims`` items are claimed in all; 1 thread
   (baseline, half as many claims), ``--claim-threads`` threads, and on PostgreSQL also
   ``--claim-processes`` processes of ``claim-threads / claim-processes`` threads each. After a claim
   the reader marks the item read (``open = false``, a stand-in for draft/sign/co-sign) so that the
   top of the list stays unread work, as in steady state. Checked afterwards: no item claimed twice
   (by the readers' own records and by the ``claim`` events in the database) and every claimed item's
   first reader is the reader that recorded it.
3. A replayed day (no database): ``--studies`` studies arriving over 24 h on a daytime curve, AI
   priority (8 % flagged stat, 25 % urgent, rest routine) with scores, lognormal reading times
   (median 6 min), readers on shifts (``--night-readers`` around the clock, ``--day-readers`` in all
   08–18); three orders: FIFO (no AI), AI priority without aging ``(priority, score, received)``, and
   prescreen's ``sort_key`` (AI priority with aging). Turnaround = read − received, in minutes; the
   same day again understaffed, and a robustness line over ``--sim-seeds`` seeds.

Usage: ``python benchmarks/bench_worklist.py [--items 100000] [--calls 200] [--baseline-every 4]
[--claims 500] [--claim-items 5000] [--claim-threads 4] [--claim-processes 2] [--studies 2000]
[--day-readers 18] [--night-readers 5] [--short-day-readers 16] [--short-night-readers 4]
[--sim-seeds 20] [--seed 7] [--skip-sqlite] [--skip-postgres] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from common import percentile, write_section
from sqlalchemy import Engine, case, event, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.errors import ConflictError
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.queue import changed, utcnow
from prescreen.store.reading import act
from prescreen.store.schema import Series, Study
from prescreen.store.schema_triage import ItemEvent, WorklistItem
from prescreen.store.users import Principal, add_user
from prescreen.store.worklist import item_summary, list_worklist
from prescreen.triage.priority import Priority, SlaTargets, due_at, rank, sort_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers: one throwaway cluster
from tests.pg_cluster import PG_USER, PgCluster

WORKLIST = "cardiology"
CLAIM_WORKLIST = "cardiology-claims"
TARGETS = SlaTargets()
LEASE = timedelta(minutes=30)
LIMIT = 50
GOAL_P95_MS = 50.0


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database in a throwaway cluster; its SQLAlchemy URL."""
    cluster = PgCluster()
    try:
        cluster.start()
        with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user={PG_USER} dbname=postgres") as conn:
            conn.autocommit = True
            conn.execute("CREATE DATABASE bench")
        yield f"postgresql+psycopg://{PG_USER}@127.0.0.1:{cluster.port}/bench"
    finally:
        cluster.stop()


# -- 1. the worklist query ------------------------------------------------------------------------
def populate(sessions: sessionmaker[Session], worklist: str, n: int, now: datetime, seed: int) -> dict[str, int]:
    """``n`` open items of ``worklist`` with their studies and series; returns the count per priority."""
    rng = random.Random(seed)
    studies, series, items = [], [], []
    counts = {"stat": 0, "urgent": 0, "routine": 0}
    for i in range(n):
        study_id = uuid.UUID(int=rng.getrandbits(128)).hex
        draw = rng.random()
        priority: Priority = "stat" if draw < 0.10 else "urgent" if draw < 0.40 else "routine"
        counts[priority] += 1
        received = now - timedelta(seconds=rng.uniform(0, 4 * 3600))
        score = None if rng.random() < 0.20 else rng.random()
        studies.append(
            {
                "id": study_id,
                "study_uid": f"2.25.{seed}.{study_id[:24]}.{i}",
                "patient_id": f"P{i:07d}",
                "patient_name": f"Bench^{i}",
                "institution": "Bench Hospital",
                "sender": "BENCH",
                "order_priority": None,
                "status": "screened",
                "received_at": received,
                "last_instance_at": received,
                "updated_at": received,
                "screened_at": received,
                "triaged_at": received,
            }
        )
        series.append(
            {
                "id": uuid.UUID(int=rng.getrandbits(128)).hex,
                "study_id": study_id,
                "series_uid": f"2.25.{seed}.{study_id[:24]}.{i}.1",
                "modality": "ECG",
                "body_part": None,
            }
        )
        items.append(
            {
                "id": uuid.UUID(int=rng.getrandbits(128)).hex,
                "study_id": study_id,
                "worklist": worklist,
                "priority": priority,
                "rule": "ecg-to-cardiology",
                "task": None if score is None else "ecg-rhythm",
                "label": None if score is None else ("af" if score > 0.5 else "normal"),
                "flagged": None if score is None else priority == "stat",
                "score": score,
                "received_at": received,
                "due_at": due_at(received, priority, TARGETS),
                "open": True,
                "state": "unread",
                "escalation": 0,
                "created_at": received,
                "revision": 1,
            }
        )
    with sessions.begin() as session:
        for table, rows in ((Study, studies), (Series, series), (WorklistItem, items)):
            for k in range(0, n, 10_000):
                session.execute(insert(table), rows[k : k + 10_000])
    return counts


def naive_worklist(session: Session, now: datetime, limit: int = LIMIT) -> list[dict[str, Any]]:
    """Baseline: every open item of the worklist sorted by band (CASE on due), score, received."""
    stat_high, urgent_high = now + TARGETS.stat, now + TARGETS.urgent
    band = case((WorklistItem.due_at <= stat_high, 0), (WorklistItem.due_at <= urgent_high, 1), else_=2)
    query = (
        select(WorklistItem, Study)
        .join(Study, Study.id == WorklistItem.study_id)
        .where(WorklistItem.worklist == WORKLIST, WorklistItem.open.is_(True))
        .order_by(band, WorklistItem.score.is_(None), WorklistItem.score.desc(), WorklistItem.received_at)
        .limit(limit)
    )
    return [item_summary(item, study, TARGETS, now) for item, study in session.execute(query)]


@contextmanager
def statements(engine: Engine) -> Iterator[list[tuple[str, Any, float]]]:
    """Record (SQL, parameters, seconds) of every statement run on ``engine`` meanwhile."""
    seen: list[tuple[str, Any, float]] = []
    started: list[float] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        started.append(time.perf_counter())

    def after(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters, time.perf_counter() - started.pop()))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def kind_of(statement: str) -> str:
    flat = " ".join(statement.split())
    if "FROM worklist_items JOIN studies" in flat:
        return "band query"
    if "FROM series" in flat:
        return "series lazy load"
    return "other"


def explain(engine: Engine, statement: str, parameters: Any) -> list[str]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return [str(r[-1]) for r in rows]
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF, BUFFERS OFF) " + statement, parameters).all()
        return [str(r[0]) for r in rows if not str(r[0]).strip().startswith(("Planning", "Worker "))]


def bench_query(
    engine: Engine, sessions: sessionmaker[Session], label: str, calls: int, every: int, now: datetime
) -> tuple[dict[str, float], list[str]]:
    list_ms: list[float] = []
    naive_ms: list[float] = []
    mismatches = 0
    warmup = 5
    for k in range(calls + warmup):
        at = now + timedelta(seconds=0.5 * k)
        timed: dict[str, float] = {}
        results: dict[str, list[str]] = {}
        runs: list[tuple[str, Callable[[Session], list[dict[str, Any]]]]] = [
            ("list", lambda s, at=at: list_worklist(s, WORKLIST, TARGETS, now=at, limit=LIMIT)),
            ("naive", lambda s, at=at: naive_worklist(s, at)),
        ]
        if k % every:
            runs = runs[:1]  # the baseline runs every ``every`` calls
        elif (k // every) % 2:
            runs = runs[::-1]  # and alternately first and second
        for name, fn in runs:
            start = time.perf_counter()
            with sessions() as session:
                results[name] = [row["id"] for row in fn(session)]
            timed[name] = (time.perf_counter() - start) * 1000
        if k >= warmup:
            list_ms.append(timed["list"])
        if "naive" in results:
            mismatches += results["list"] != results["naive"]
            if k >= warmup:
                naive_ms.append(timed["naive"])

    # one more call with its SQL captured: statements, where the time goes, plans
    per_kind: dict[str, list[float]] = {}
    profiled = 20
    for k in range(profiled):
        with statements(engine) as seen, sessions() as session:
            list_worklist(session, WORKLIST, TARGETS, now=now + timedelta(seconds=0.5 * k), limit=LIMIT)
        for kind in ("band query", "series lazy load", "other"):
            per_kind.setdefault(kind, []).append(sum(sec for st, _p, sec in seen if kind_of(st) == kind) * 1000)
    counts = {kind: sum(kind_of(st) == kind for st, _p, _s in seen) for kind in ("band query", "series lazy load")}
    plans = [explain(engine, st, p) for st, p, _s in seen if kind_of(st) == "band query"]
    with statements(engine) as naive_seen, sessions() as session:
        naive_worklist(session, now)
    naive_plan = next(explain(engine, st, p) for st, p, _s in naive_seen if kind_of(st) == "band query")

    p95 = percentile(list_ms, 95)
    rows = {
        f"{label}: list_worklist p50 ms": statistics.median(list_ms),
        f"{label}: list_worklist p95 ms": p95,
        f"{label}: naive query p50 ms": statistics.median(naive_ms),
        f"{label}: naive query p95 ms": percentile(naive_ms, 95),
        f"{label}: naive/list_worklist p50 ratio": statistics.median(naive_ms) / statistics.median(list_ms),
        f"{label}: list_worklist statements per call": float(counts["band query"] + counts["series lazy load"]),
    }
    split = ", ".join(f"{kind} {statistics.median(v):.1f} ms" for kind, v in per_kind.items())
    total = sum(statistics.median(v) for v in per_kind.values())
    notes = [
        f"- {label}: p95 {p95:.1f} ms — goal ≤ {GOAL_P95_MS:.0f} ms **{'met' if p95 <= GOAL_P95_MS else 'missed'}**. "
        f"One call = {counts['band query']} band quer{'y' if counts['band query'] == 1 else 'ies'} + "
        f"{counts['series lazy load']} lazy loads of `study.series` (one per item, from `item_summary`). "
        f"Median SQL time per call over {profiled} profiled calls: {split} (SQL {total:.1f} ms of the call; "
        f"the rest is ORM/Python). {len(list_ms)} timed list_worklist calls, {len(naive_ms)} naive ones (every "
        f"{every}th call, alternately before and after); both returned "
        f"{'the same items' if not mismatches else f'different items in {mismatches} calls'}.",
    ]
    for i, plan in enumerate(plans):
        notes.append(f"- {label} plan, band query {i + 1}: " + " / ".join(f"`{line.strip()}`" for line in plan[:12]))
    notes.append(f"- {label} plan, naive query: " + " / ".join(f"`{line.strip()}`" for line in naive_plan[:12]))
    return rows, notes


# -- 2. claims under contention -------------------------------------------------------------------
def mark_read(sessions: sessionmaker[Session], item_id: str, user_id: str) -> None:
    """Stand-in for draft/sign/co-sign: the claimed item leaves the open list."""
    with sessions.begin() as session:
        done = session.execute(
            update(WorklistItem)
            .where(WorklistItem.id == item_id, WorklistItem.claimed_by == user_id, WorklistItem.state == "claimed")
            .values(
                open=False,
                state="final",
                finalized_at=utcnow(),
                claimed_by=None,
                claim_expires=None,
                revision=WorklistItem.revision + 1,
            )
        )
        if changed(done) != 1:
            raise RuntimeError(f"item {item_id} was not held by {user_id} after its claim")


def claimer(
    sessions: sessionmaker[Session], user: Principal, counter: Any, target: int, worklist: str = CLAIM_WORKLIST
) -> dict[str, Any]:
    """Claim from the top of the list until ``target`` claims were made in all; what this reader did."""
    claimed: list[str] = []
    conflicts = 0
    list_ms: list[float] = []
    claim_ms: list[float] = []

    def room() -> bool:
        with counter.get_lock():
            return bool(counter.value < target)

    while room():
        start = time.perf_counter()
        with sessions() as session:
            rows = list_worklist(session, worklist, TARGETS, limit=LIMIT)
        list_ms.append((time.perf_counter() - start) * 1000)
        for row in rows:
            if row["state"] != "unread" or not room():
                continue
            start = time.perf_counter()
            try:
                act(sessions, row["id"], "claim", user, lease=LEASE)
            except ConflictError:
                conflicts += 1
                continue
            claim_ms.append((time.perf_counter() - start) * 1000)
            with counter.get_lock():
                counter.value += 1
            claimed.append(row["id"])
            mark_read(sessions, row["id"], user.id)
            break
    return {"user": user.id, "claimed": claimed, "conflicts": conflicts, "list_ms": list_ms, "claim_ms": claim_ms}


def run_threads(sessions: sessionmaker[Session], users: list[Principal], counter: Any, target: int) -> list[Any]:
    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def work(user: Principal) -> None:
        try:
            out.append(claimer(sessions, user, counter, target))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def claim_process(
    url: str, users: list[Principal], counter: Any, target: int, ready: Any, go: Any, results: Any
) -> None:
    """One reader process (spawned): its own engine, one thread per user."""
    engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions() as session:  # connect and warm up before the clock starts
        list_worklist(session, CLAIM_WORKLIST, TARGETS, limit=LIMIT)
    ready.put(os.getpid())
    go.wait()
    results.put(run_threads(sessions, users, counter, target))
    engine.dispose()


def make_users(sessions: sessionmaker[Session], prefix: str, n: int) -> list[Principal]:
    return [
        add_user(
            sessions,
            login=f"{prefix}-{i}",
            name=f"Reader {prefix} {i}",
            password="bench-password",
            grade="attending",
            specialties=[CLAIM_WORKLIST],
        )
        for i in range(n)
    ]


def bench_claims(
    url: str, sessions: sessionmaker[Session], label: str, args: argparse.Namespace, processes: bool
) -> tuple[dict[str, float], list[str], list[dict[str, Any]]]:
    ctx = mp.get_context("spawn")
    runs: list[tuple[str, int, int, int]] = [("1 thread", 1, 1, max(1, args.claims // 2))]
    runs.append((f"{args.claim_threads} threads", 1, args.claim_threads, args.claims))
    if processes and args.claim_processes > 1:
        per = max(1, args.claim_threads // args.claim_processes)
        runs.append((f"{args.claim_processes} processes × {per} threads", args.claim_processes, per, args.claims))
    rows: dict[str, float] = {}
    notes: list[str] = []
    everything: list[dict[str, Any]] = []
    rates: dict[str, float] = {}
    for name, n_proc, n_threads, target in runs:
        counter = ctx.Value("i", 0)
        users = make_users(sessions, f"{label.lower()}-{n_proc}p{n_threads}t", n_proc * n_threads)
        if n_proc == 1:
            start = time.perf_counter()
            results = run_threads(sessions, users, counter, target)
            wall = time.perf_counter() - start
        else:
            ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
            procs = [
                ctx.Process(
                    target=claim_process,
                    args=(url, users[i * n_threads : (i + 1) * n_threads], counter, target, ready, go, done),
                )
                for i in range(n_proc)
            ]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=120)
            start = time.perf_counter()
            go.set()
            results = [r for _ in procs for r in done.get(timeout=600)]
            wall = time.perf_counter() - start
            for p in procs:
                p.join(timeout=60)
                if p.exitcode != 0:
                    raise RuntimeError(f"claim process {p.pid} exited with {p.exitcode}")
        everything.extend(results)
        claims = sum(len(r["claimed"]) for r in results)
        conflicts = sum(r["conflicts"] for r in results)
        list_ms = [x for r in results for x in r["list_ms"]]
        claim_ms = [x for r in results for x in r["claim_ms"]]
        rates[name] = claims / wall
        rows[f"{label}: claims/s, {name}"] = claims / wall
        rows[f"{label}: conflicts, {name}"] = float(conflicts)
        notes.append(
            f"- {label} claims, {name}: {claims} claims in {wall:.1f} s ({claims / wall:.0f}/s), {conflicts} "
            f"conflicts; per reader loop: list_worklist p50 {statistics.median(list_ms):.1f} ms / p95 "
            f"{percentile(list_ms, 95):.1f} ms, act(claim) p50 {statistics.median(claim_ms):.1f} ms / p95 "
            f"{percentile(claim_ms, 95):.1f} ms (successful claims)."
        )
    base = rates["1 thread"]
    for name, rate in rates.items():
        if name != "1 thread":
            rows[f"{label}: claims/s ratio {name} / 1 thread"] = rate / base
    # verification: nobody claimed an item twice, and the database agrees with what readers recorded
    ids = [i for r in everything for i in r["claimed"]]
    owner = {i: r["user"] for r in everything for i in r["claimed"]}
    with sessions() as session:
        twice = session.execute(
            select(ItemEvent.item_id)
            .where(ItemEvent.action == "claim")
            .group_by(ItemEvent.item_id)
            .having(func.count() > 1)
        ).all()
        first = dict(
            session.execute(select(WorklistItem.id, WorklistItem.first_reader_id).where(WorklistItem.id.in_(ids))).all()
        )
        events = session.scalar(select(func.count()).where(ItemEvent.action == "claim"))
    wrong_owner = sum(first.get(i) != u for i, u in owner.items())
    dup = len(ids) - len(set(ids))
    rows[f"{label}: items claimed twice"] = float(dup + len(twice) + wrong_owner)
    notes.append(
        f"- {label} claim check: {len(ids)} claims recorded by readers, {events} claim events in the database, "
        f"{dup} ids recorded twice, {len(twice)} items with more than one claim event, {wrong_owner} items whose "
        "first reader is not the reader that recorded the claim."
    )
    return rows, notes, everything


def bench_backend(
    url: str, label: str, args: argparse.Namespace, processes: bool
) -> tuple[dict[str, float], list[str]]:
    migrate(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    try:
        now = utcnow()
        start = time.perf_counter()
        counts = populate(sessions, WORKLIST, args.items, now, args.seed)
        fill = time.perf_counter() - start
        if args.claims > 0:
            populate(sessions, CLAIM_WORKLIST, args.claim_items, now, args.seed + 1)
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")  # what autovacuum does within a minute of a bulk load
        rows, notes = bench_query(engine, sessions, label, args.calls, args.baseline_every, now)
        notes.insert(
            0,
            f"- {label}: {args.items} open items ({counts['stat']} stat, {counts['urgent']} urgent, "
            f"{counts['routine']} routine) + studies + series bulk-inserted in {fill:.1f} s.",
        )
        if args.claims > 0:
            more_rows, more_notes, _ = bench_claims(url, sessions, label, args, processes)
            rows |= more_rows
            notes += more_notes
        return rows, notes
    finally:
        engine.dispose()


# -- 3. a replayed day ----------------------------------------------------------------------------
#: relative arrival rate per hour of the day (00–23): quiet night, morning ramp, busy day, evening tail
HOURLY = (1, 1, 1, 1, 1, 1.2, 1.8, 3, 6, 8, 8, 8, 7, 7, 8, 8, 7, 6, 4, 3, 2.5, 2, 1.5, 1.2)
DAY_START, DAY_END = 8 * 60, 18 * 60
T0 = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday, 00:00


@dataclass(frozen=True)
class SimStudy:
    arrival: float  # minutes after T0
    priority: Priority
    score: float | None
    read_minutes: float
    received: datetime
    due: datetime


def day_of_studies(n: int, rng: random.Random, read_median: float, read_sigma: float) -> list[SimStudy]:
    hours = rng.choices(range(24), weights=HOURLY, k=n)
    studies = []
    for hour in hours:
        arrival = hour * 60 + rng.random() * 60
        draw = rng.random()
        priority: Priority = "stat" if draw < 0.08 else "urgent" if draw < 0.33 else "routine"
        if priority == "stat":  # flagged by the model: high scores
            score: float | None = rng.betavariate(8, 2)
        elif priority == "urgent":
            score = rng.betavariate(4, 3)
        else:  # routine: a fifth had no model to run (no score)
            score = None if rng.random() < 0.20 else rng.betavariate(2, 5)
        received = T0 + timedelta(minutes=arrival)
        read = read_median * math.exp(rng.gauss(0, read_sigma))
        studies.append(SimStudy(arrival, priority, score, read, received, due_at(received, priority, TARGETS)))
    return sorted(studies, key=lambda s: s.arrival)


def on_shift(reader: int, night_readers: int, t: float) -> bool:
    return reader < night_readers or DAY_START <= t % 1440 < DAY_END


def next_shift(t: float) -> float:
    day = math.floor(t / 1440)
    return day * 1440 + DAY_START if t % 1440 < DAY_START else (day + 1) * 1440 + DAY_START


def replay(studies: list[SimStudy], order: str, day_readers: int, night_readers: int) -> list[float]:
    """Readers take the top study whenever free and on shift; the turnaround (minutes) of each study."""
    import heapq

    def key(s: SimStudy, now: float) -> Any:
        if order == "fifo":
            return s.arrival
        if order == "priority":
            return (rank(s.priority), s.score is None, -(s.score or 0.0), s.arrival)
        return sort_key(s.due, s.score, s.received, T0 + timedelta(minutes=now), TARGETS)

    readers = max(day_readers, night_readers)
    free = [(0.0, r) for r in range(readers)]
    heapq.heapify(free)
    waiting: list[int] = []
    nxt = 0
    done: dict[int, float] = {}
    while len(done) < len(studies):
        t, r = heapq.heappop(free)
        if not on_shift(r, night_readers, t):
            heapq.heappush(free, (next_shift(t), r))
            continue
        while nxt < len(studies) and studies[nxt].arrival <= t:
            waiting.append(nxt)
            nxt += 1
        if not waiting:
            if nxt < len(studies):
                heapq.heappush(free, (studies[nxt].arrival, r))
            continue
        best = min(waiting, key=lambda i: key(studies[i], t))
        waiting.remove(best)
        finish = t + studies[best].read_minutes
        done[best] = finish - studies[best].arrival
        heapq.heappush(free, (finish, r))
    return [done[i] for i in range(len(studies))]


ORDERS = {"fifo": "FIFO (no AI)", "priority": "AI priority, no aging", "aging": "AI priority + aging (sort_key)"}


def day_measures(studies: list[SimStudy]) -> dict[str, Callable[[list[float]], float]]:
    """What the replay reports, each a function of the turnarounds (minutes, in study order)."""
    target = {p: TARGETS.target(p).total_seconds() / 60 for p in ("stat", "urgent", "routine")}
    flagged = [i for i, s in enumerate(studies) if s.priority == "stat"]
    routine = [i for i, s in enumerate(studies) if s.priority == "routine"]
    everyone = range(len(studies))

    def share(values: list[float], idx: Any, limit: Callable[[int], float]) -> float:
        return 100 * sum(values[i] <= limit(i) for i in idx) / max(len(idx), 1)

    return {
        "turnaround p50 min": lambda v: statistics.median(v),
        "turnaround p95 min": lambda v: percentile(v, 95),
        "flagged (stat) p50 min": lambda v: statistics.median([v[i] for i in flagged]),
        "flagged (stat) p95 min": lambda v: percentile([v[i] for i in flagged], 95),
        "flagged within 30 min %": lambda v: share(v, flagged, lambda _i: 30),
        "routine p95 min": lambda v: percentile([v[i] for i in routine], 95),
        "longest wait min": lambda v: max(v),
        "within 4 h %": lambda v: share(v, everyone, lambda _i: 240),
        "within own target %": lambda v: share(v, everyone, lambda i: target[studies[i].priority]),
    }


def day_table(studies: list[SimStudy], day_readers: int, night_readers: int, title: str) -> tuple[list[str], Any]:
    """A Markdown table (measures × orders) of one replayed day; and the turnarounds per order."""
    table = {order: replay(studies, order, day_readers, night_readers) for order in ORDERS}
    lines = [f"| {title} | " + " | ".join(ORDERS.values()) + " |", "| --- |" + " --- |" * len(ORDERS)]
    for measure, fn in day_measures(studies).items():
        lines.append(f"| {measure} | " + " | ".join(f"{fn(table[o]):.1f}" for o in ORDERS) + " |")
    return [*lines, ""], table


def capacity_hours(day_readers: int, night_readers: int) -> float:
    day_h = (DAY_END - DAY_START) / 60
    return day_readers * day_h + night_readers * (24 - day_h)


def bench_day(args: argparse.Namespace) -> tuple[dict[str, float], list[str]]:
    studies = day_of_studies(args.studies, random.Random(args.seed), args.read_median, args.read_sigma)
    work_h = sum(s.read_minutes for s in studies) / 60
    counts = {p: sum(s.priority == p for s in studies) for p in ("stat", "urgent", "routine")}
    capacity = capacity_hours(args.day_readers, args.night_readers)
    params = (
        f"- Replayed day parameters: seed {args.seed}; {args.studies} studies over 24 h, hourly weights "
        f"{'/'.join(f'{w:g}' for w in HOURLY)} (00–23 h); AI priority {counts['stat']} flagged stat / "
        f"{counts['urgent']} urgent / {counts['routine']} routine; scores Beta(8,2) stat, Beta(4,3) urgent, "
        "Beta(2,5) routine (20 % of routine unscored); reading time lognormal, median "
        f"{args.read_median:g} min, σ {args.read_sigma:g} (mean {work_h * 60 / args.studies:.1f} min); readers "
        f"{args.night_readers} around the clock + {args.day_readers - args.night_readers} more 08–18; a reader "
        "finishes the study in hand past the shift end; SLA targets stat 30 min, urgent 2 h, routine 4 h. Work "
        f"{work_h:.0f} reader-hours vs capacity {capacity:.0f} (utilisation {100 * work_h / capacity:.0f} %). "
        "The day starts with an empty list at 00:00 and runs until every study is read; the same studies and "
        "reading times for every order. Turnaround = read − received, minutes."
    )
    lines, table = day_table(
        studies, args.day_readers, args.night_readers, f"replayed day, {args.day_readers}/{args.night_readers} readers"
    )
    flagged = [i for i, s in enumerate(studies) if s.priority == "stat"]
    rows = {
        "replay: flagged p95 turnaround, FIFO / AI+aging ratio": percentile([table["fifo"][i] for i in flagged], 95)
        / max(percentile([table["aging"][i] for i in flagged], 95), 1e-9)
    }
    notes = [params, "", *lines]
    if args.short_day_readers > 0:
        short = capacity_hours(args.short_day_readers, args.short_night_readers)
        title = f"understaffed: {args.short_day_readers}/{args.short_night_readers} readers"
        more, _ = day_table(studies, args.short_day_readers, args.short_night_readers, title)
        notes += [f"- Same day, understaffed (utilisation {100 * work_h / short:.0f} %):", "", *more]
    if args.sim_seeds > 1:
        keys = ("flagged within 30 min %", "within own target %", "longest wait min")
        spread: dict[tuple[str, str], list[float]] = {}
        for seed in range(args.seed, args.seed + args.sim_seeds):
            day = day_of_studies(args.studies, random.Random(seed), args.read_median, args.read_sigma)
            measures = day_measures(day)
            for order in ORDERS:
                turnaround = replay(day, order, args.day_readers, args.night_readers)
                for key in keys:
                    spread.setdefault((order, key), []).append(measures[key](turnaround))
        parts = [
            f"{ORDERS[o]}: "
            + ", ".join(
                f"{k} {statistics.mean(spread[o, k]):.1f} ({min(spread[o, k]):.1f}–{max(spread[o, k]):.1f})"
                for k in keys
            )
            for o in ORDERS
        ]
        notes.append(
            f"- Over {args.sim_seeds} seeds ({args.seed}–{args.seed + args.sim_seeds - 1}, "
            f"{args.day_readers}/{args.night_readers} readers), mean (min–max): " + "; ".join(parts) + "."
        )
    return rows, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000, help="open worklist items in the database")
    ap.add_argument("--calls", type=int, default=200, help="timed list_worklist calls (and baseline calls)")
    ap.add_argument("--baseline-every", type=int, default=4, help="time the naive baseline every Nth call")
    ap.add_argument("--claims", type=int, default=500, help="claims per contention run (0: skip)")
    ap.add_argument("--claim-items", type=int, default=5000, help="open items of the worklist claimed from")
    ap.add_argument("--claim-threads", type=int, default=4)
    ap.add_argument("--claim-processes", type=int, default=2, help="PostgreSQL only (1: skip)")
    ap.add_argument("--studies", type=int, default=2000, help="studies in the replayed day (0: skip)")
    ap.add_argument("--day-readers", type=int, default=18, help="readers on shift 08–18 (night crew included)")
    ap.add_argument("--night-readers", type=int, default=5, help="readers on shift 18–08 (on duty all day)")
    ap.add_argument("--short-day-readers", type=int, default=16, help="understaffed variant (0: skip)")
    ap.add_argument("--short-night-readers", type=int, default=4, help="understaffed variant, night")
    ap.add_argument("--sim-seeds", type=int, default=20, help="seeds of the replay's robustness line")
    ap.add_argument("--read-median", type=float, default=6.0, help="median reading time, minutes")
    ap.add_argument("--read-sigma", type=float, default=0.5, help="σ of log reading time")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="append a Markdown section to this file")
    args = ap.parse_args()
    if args.day_readers < args.night_readers or args.short_day_readers < args.short_night_readers * bool(
        args.short_day_readers
    ):
        ap.error("--day-readers counts the night crew too: it must be >= --night-readers")

    started = time.monotonic()
    rows: dict[str, float] = {}
    notes: list[str] = []
    if args.items > 0 and not args.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
            more_rows, more_notes = bench_backend(f"sqlite:///{tmp}/bench.db", "SQLite", args, processes=False)
            rows |= more_rows
            notes += more_notes
    if args.items > 0 and not args.skip_postgres:
        try:
            with postgres_database() as url:
                more_rows, more_notes = bench_backend(url, "PostgreSQL", args, processes=True)
                rows |= more_rows
                notes += more_notes
        except (RuntimeError, KeyError) as exc:
            notes.append(f"- PostgreSQL skipped: {exc}")
    if args.studies > 0:
        more_rows, more_notes = bench_day(args)
        rows |= more_rows
        notes += more_notes
    notes.append(f"- Whole benchmark: {time.monotonic() - started:.0f} s.")
    intro = (
        f"Worklist `{WORKLIST}`, `list_worklist(limit={LIMIT})` with default SLA targets; SQLite (WAL, "
        "`synchronous=FULL`, file in a temp dir) and PostgreSQL 15 (throwaway cluster, `fsync=off`) on this "
        "machine; p50/p95 over the timed calls, baseline interleaved in the same run."
    )
    write_section("Worklists", intro, rows, notes, args.out)


if __name__ == "__main__":
    main()
