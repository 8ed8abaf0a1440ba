"""A comparison's runs in a database, shared by workers on many processes and machines.

::

    queue = RunQueue.create("sqlite:///results/runs.db", settings, name="my-study")
    records = queue.run([("attn=dense", plan), ...], execute)   # every worker calls this

Two tables through SQLAlchemy (SQLite in the output folder by default; PostgreSQL, or any other
SQLAlchemy URL, for several machines): ``plugformer_comparisons`` holds each comparison's
settings (the arguments of `plugformer.compare.compare` that define its runs), and
``plugformer_runs`` one row per planned run, keyed by (comparison, `RunPlan.key`, variant), with
its status (``pending``, ``running``, ``done``), the worker that holds it, how many times it was
claimed (``attempts``), a heartbeat counter (``beat``) and, once done, its `RunRecord` as JSON.

Why not an Optuna study: every worker plans the same runs (the grid, or the next rung of a
search once a rung is done) and must add them without duplicates; a unique key makes that
adding idempotent here, while ``enqueue_trial`` checks and inserts in two steps, and Optuna's
``RetryFailedTrialCallback`` re-queues a dead worker's trial as a new trial, so "each run once"
would need deduplication by key on top anyway.

How it stays correct, on any database with atomic single-row updates:

- Claim is a compare-and-swap: read a pending row, then ``UPDATE ... SET status='running',
  attempts=attempts+1 WHERE id=? AND status='pending'``; the worker whose update touched the row
  holds it, the others look for another.
- While a run trains, a thread of its worker increments ``beat`` every ``heartbeat`` seconds.
  A worker with nothing to claim watches the running rows; one whose ``(attempts, beat)`` has
  not changed for `STALE_BEATS` heartbeats by the watcher's own clock (no clocks are compared
  across machines) is taken over with the same kind of conditional update.
- Finishing is conditional on the claim still being the worker's (same ``attempts``): a worker
  that was taken for dead and finishes anyway has its record dropped, so a run is counted once.
- A run taken over `MAX_ATTEMPTS` times (it kills whatever runs it) is recorded as failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Optional, Sequence

import attrs

from plugformer.compare.store import RunPlan, RunRecord

__all__ = ["MAX_ATTEMPTS", "STALE_BEATS", "Claim", "RunQueue", "comparison_name", "engine_url",
           "shown_url", "sqlite_url"]

_log = logging.getLogger("plugformer")

#: A running row whose heartbeat has not moved for this many heartbeats is taken over.
STALE_BEATS = 5
#: Claims of one run before it is recorded as failed instead of being tried again.
MAX_ATTEMPTS = 3


def sqlite_url(directory: "os.PathLike[str] | str") -> str:
    """The default storage: ``sqlite:///<directory>/runs.db``."""
    return f"sqlite:///{os.path.abspath(os.path.join(os.fspath(directory), 'runs.db'))}"


def comparison_name(settings: dict[str, Any]) -> str:
    """The default name of a comparison: ``compare-`` and 12 hex digits of a hash of its
    settings, so the same command on another machine finds the same comparison."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return "compare-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _tables() -> tuple[Any, Any, Any]:
    import sqlalchemy as sa

    meta = sa.MetaData()
    comparisons = sa.Table(
        "plugformer_comparisons", meta,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False))
    runs = sa.Table(
        "plugformer_runs", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("comparison", sa.String(200), nullable=False),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("variant", sa.String(500), nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, default="pending"),
        sa.Column("worker", sa.String(200)),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("beat", sa.Integer, nullable=False, default=0),
        sa.Column("record", sa.Text),
        sa.UniqueConstraint("comparison", "key", "variant", name="plugformer_runs_once"),
        sa.Index("plugformer_runs_status", "comparison", "status"))
    return meta, comparisons, runs


@attrs.frozen
class Claim:
    """A run this worker holds: row ``id`` of the table, claimed on attempt ``attempts``, the
    variant's label and the run's plan."""

    id: int
    attempts: int
    variant: str
    plan: RunPlan


class RunQueue:
    """The runs of one comparison ``name`` in the database at ``url`` (see the module).

    Args:
        url: a SQLAlchemy URL, e.g. ``sqlite:///out/runs.db``,
            ``postgresql+psycopg2://user@host/db``.
        name: the comparison's name in that database.
        heartbeat: seconds between heartbeats of a running run; one silent for `STALE_BEATS`
            heartbeats is taken over. Default: 10.
        poll: seconds between looks at the database while waiting for other workers. Default: 0.5.

    Raises:
        ImportError: SQLAlchemy is not installed (``pip install 'plugformer[dist]'``).
    """

    def __init__(self, url: str, name: str, *, heartbeat: float = 10.0, poll: float = 0.5) -> None:
        try:
            import sqlalchemy as sa
        except ImportError as err:
            raise ImportError("a comparison in a database needs SQLAlchemy: "
                              "pip install 'plugformer[dist]'") from err
        if heartbeat <= 0 or poll <= 0:
            raise ValueError(f"heartbeat and poll must be positive seconds, got {heartbeat}, {poll}")
        self.url, self.name, self.heartbeat, self.poll = url, name, float(heartbeat), float(poll)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._sa = sa
        options: dict[str, Any] = {}
        if url.startswith("sqlite"):
            options["connect_args"] = {"timeout": 60}
        self.engine = sa.create_engine(engine_url(url), **options)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_wal)
        meta, self.comparisons, self.runs = _tables()
        try:
            meta.create_all(self.engine, checkfirst=True)
        except sa.exc.DatabaseError:  # another worker created them at the same moment
            meta.create_all(self.engine, checkfirst=True)
        self._watched: dict[int, tuple[int, int, float]] = {}

    @classmethod
    def create(cls, url: str, settings: dict[str, Any], *, name: Optional[str] = None,
               heartbeat: float = 10.0, poll: float = 0.5) -> "RunQueue":
        """The comparison ``name`` (default: `comparison_name` of ``settings``) with
        ``settings``, added to the database unless it is there already.

        Raises:
            ValueError: ``name`` is in the database with other settings.
        """
        name = name or comparison_name(settings)
        queue = cls(url, name, heartbeat=heartbeat, poll=poll)
        text = json.dumps({"compare": settings, "heartbeat": queue.heartbeat}, sort_keys=True)
        try:
            with queue.engine.begin() as conn:
                conn.execute(queue.comparisons.insert().values(name=name, settings=text,
                                                              created=time.time()))
        except queue._sa.exc.IntegrityError:
            pass
        stored = queue.stored()
        if stored["compare"] != json.loads(json.dumps(settings, sort_keys=True)):
            where = shown_url(url)
            raise ValueError(f"comparison {name!r} in {where} has other settings: join it with "
                             f"--join {where} --study {name}, or give another --study name")
        queue.heartbeat = float(stored["heartbeat"])
        return queue

    @classmethod
    def join(cls, url: str, name: Optional[str] = None, *, poll: float = 0.5) -> "RunQueue":
        """The comparison ``name`` in the database at ``url`` (default: the only one there),
        with the heartbeat it was created with.

        Raises:
            ValueError: there is no such comparison, or several and no ``name``.
        """
        queue = cls(url, name or "", poll=poll)
        with queue.engine.connect() as conn:
            names = list(conn.execute(queue._sa.select(queue.comparisons.c.name)).scalars())
        if name is None and len(names) == 1:
            name = names[0]
        if name not in names:
            have = ", ".join(names) or "none"
            what = "name one with --study" if name is None else f"no comparison {name!r}"
            raise ValueError(f"{shown_url(url)}: {what}; comparisons there: {have}")
        queue.name = name
        queue.heartbeat = float(queue.stored()["heartbeat"])
        return queue

    def stored(self) -> dict[str, Any]:
        """What the comparison was created with: ``compare`` (the settings) and ``heartbeat``."""
        sa, table = self._sa, self.comparisons
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(table.c.settings).where(table.c.name == self.name)).scalar()
        if text is None:
            raise ValueError(f"{shown_url(self.url)}: no comparison {self.name!r}")
        return json.loads(text)

    def add(self, jobs: Sequence[tuple[str, RunPlan]]) -> None:
        """Plan ``jobs`` (variant label, plan); a run already planned is left as it is."""
        for variant, plan in jobs:
            row = dict(comparison=self.name, key=plan.key, variant=variant, status="pending",
                       plan=json.dumps([plan.spec, plan.task, plan.seed, plan.lr, plan.steps]),
                       attempts=0, beat=0)
            try:
                with self.engine.begin() as conn:
                    conn.execute(self.runs.insert().values(**row))
            except self._sa.exc.IntegrityError:
                pass

    def claim(self) -> Optional[Claim]:
        """A pending run of this comparison, or a stale running one, now held by this worker;
        None when there is neither."""
        sa, runs = self._sa, self.runs
        mine = (runs.c.comparison == self.name)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs.c.id, runs.c.attempts, runs.c.variant, runs.c.plan)
                                .where(mine, runs.c.status == "pending").order_by(runs.c.id)).all()
        for row in rows:
            if self._take(runs.c.status == "pending", row.id, row.attempts):
                return self._claim(row)
        with self.engine.connect() as conn:
            running = conn.execute(sa.select(runs.c.id, runs.c.key, runs.c.attempts, runs.c.beat,
                                             runs.c.variant, runs.c.plan, runs.c.worker)
                                   .where(mine, runs.c.status == "running")).all()
        now = time.monotonic()
        for row in running:
            seen = self._watched.get(row.id)
            if seen is None or seen[:2] != (row.attempts, row.beat):
                self._watched[row.id] = (row.attempts, row.beat, now)
                continue
            if now - seen[2] < STALE_BEATS * self.heartbeat:
                continue
            held = (runs.c.status == "running") & (runs.c.beat == row.beat)
            if row.attempts >= MAX_ATTEMPTS:
                self._give_up(row, held)
            elif self._take(held, row.id, row.attempts):
                _log.warning("worker %s: taking over run %s (%s) from %s, silent for %.1f s",
                             self.worker, row.key,
                             row.variant, row.worker, now - seen[2])
                return self._claim(row)
        return None

    def _take(self, condition: Any, id: int, attempts: int) -> bool:
        runs = self.runs
        with self.engine.begin() as conn:
            done = conn.execute(runs.update()
                                .where(runs.c.id == id, runs.c.attempts == attempts, condition)
                                .values(status="running", worker=self.worker,
                                        attempts=attempts + 1, beat=0))
        return done.rowcount == 1

    def _claim(self, row: Any) -> Claim:
        spec, task, seed, lr, steps = json.loads(row.plan)
        claim = Claim(row.id, row.attempts + 1, row.variant,
                      RunPlan(spec=spec, task=task, seed=seed, lr=lr, steps=steps))
        _log.info("worker %s: run %s (%s seed %d lr %g steps %d) started, attempt %d",
                  self.worker, claim.plan.key, claim.variant, seed, lr, steps, claim.attempts)
        return claim

    def _give_up(self, row: Any, held: Any) -> None:
        spec, task, seed, lr, steps = json.loads(row.plan)
        record = RunRecord(variant=row.variant, spec=spec, task=task, seed=seed, lr=lr,
                           steps=steps, status="failed",
                           error=f"its worker died on each of {row.attempts} attempts")
        self._finish(row.id, row.attempts, record, held)

    def beat(self, claim: Claim) -> bool:
        """One heartbeat of ``claim``; False when another worker has taken the run over."""
        runs = self.runs
        with self.engine.begin() as conn:
            done = conn.execute(runs.update()
                                .where(runs.c.id == claim.id, runs.c.attempts == claim.attempts,
                                       runs.c.status == "running")
                                .values(beat=runs.c.beat + 1))
        return done.rowcount == 1

    def finish(self, claim: Claim, record: RunRecord) -> bool:
        """Store ``record`` as the result of ``claim``; False (and nothing stored) when another
        worker has taken the run over."""
        held = self.runs.c.status == "running"
        stored = self._finish(claim.id, claim.attempts, record, held)
        _log.info("worker %s: run %s (%s) %s", self.worker, claim.plan.key, claim.variant,
                  "finished" if stored else "finished, but another worker holds it now: dropped")
        return stored

    def _finish(self, id: int, attempts: int, record: RunRecord, condition: Any) -> bool:
        runs = self.runs
        text = json.dumps(record.to_dict(), separators=(",", ":"))
        with self.engine.begin() as conn:
            done = conn.execute(runs.update()
                                .where(runs.c.id == id, runs.c.attempts == attempts, condition)
                                .values(status="done", record=text))
        return done.rowcount == 1

    def release(self, claim: Claim) -> None:
        """Give ``claim`` back unfinished (Ctrl-C), for another worker to take at once."""
        runs = self.runs
        with self.engine.begin() as conn:
            conn.execute(runs.update()
                         .where(runs.c.id == claim.id, runs.c.attempts == claim.attempts,
                                runs.c.status == "running")
                         .values(status="pending", worker=None))

    def rows(self) -> list[Any]:
        """Every run row of this comparison, in the order they were planned."""
        sa, runs = self._sa, self.runs
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(runs).where(runs.c.comparison == self.name)
                                     .order_by(runs.c.id)).all())

    def records(self) -> dict[tuple[str, str], RunRecord]:
        """The finished runs by (`RunPlan.key`, variant)."""
        return {(row.key, row.variant): RunRecord.from_dict(json.loads(row.record))
                for row in self.rows() if row.status == "done"}

    def run(self, jobs: Sequence[tuple[str, RunPlan]],
            execute: Callable[[str, RunPlan], RunRecord]) -> list[RunRecord]:
        """Plan ``jobs`` and work until every one of them is done, here or by other workers.

        ``execute(variant, plan)`` trains one run; this worker calls it for every run it
        claims (any pending run of the comparison, not only of ``jobs``), with a heartbeat
        thread beside it. Returns the records of ``jobs`` in their order.
        """
        self.add(jobs)
        wanted = [(plan.key, variant) for variant, plan in jobs]
        while True:
            claim = self.claim()
            if claim is not None:
                self._execute(claim, execute)
                continue
            done = self.records()
            if all(key in done for key in wanted):
                return [done[key] for key in wanted]
            time.sleep(self.poll)

    def _execute(self, claim: Claim, execute: Callable[[str, RunPlan], RunRecord]) -> None:
        stop = threading.Event()

        def beating() -> None:
            while not stop.wait(self.heartbeat):
                try:
                    if not self.beat(claim):
                        return
                except Exception as err:  # a lost connection: try again at the next beat
                    _log.warning("worker %s: heartbeat failed: %s", self.worker, err)

        thread = threading.Thread(target=beating, name="plugformer-heartbeat", daemon=True)
        thread.start()
        try:
            record = execute(claim.variant, claim.plan)
        except BaseException:
            stop.set()
            thread.join()
            self.release(claim)
            raise
        stop.set()
        thread.join()
        self.finish(claim, record)


def engine_url(url: str) -> str:
    """``postgresql://...`` with the driver that is installed (SQLAlchemy 2.1 defaults to
    psycopg 3, 2.0 to psycopg2; ``plugformer[dist]`` brings psycopg2-binary)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://" + url[len("postgresql://"):]
    return url


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: nothing to hide in it
        return url


def _sqlite_wal(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
