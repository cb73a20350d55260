"""Submitting jobs and talking to them: :class:`AsyncClient` and its blocking twin :class:`Client`.

Commands go through Kafka (key = tenant id, so they land on the tenant's partition); status and
results are read from Postgres, and ``result`` wakes on the worker's ``NOTIFY`` instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from pydantic import BaseModel

from aetheris.config import Settings, load_settings
from aetheris.endpoints import Endpoints, resolve
from aetheris.errors import (
    InfrastructureError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
)
from aetheris.kafka import messages as m
from aetheris.kafka.clients import COMMAND_PRODUCER, DeliveryPoller, make_producer
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import COMMANDS, topic_name
from aetheris.notices import CHANNEL, FinishedNotice, parse_notice
from aetheris.registry import agent_name
from aetheris.values import to_json_value

T = TypeVar("T")


class JobInfo(BaseModel):
    """A job as the registry records it."""

    job_id: str
    tenant_id: str
    agent: str
    status: str
    waiting_reason: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    pending_steps: list[str] = []
    """Keys of the steps the job waits on (a confirmation, a signal, an in-doubt tool)."""


_STATUS_SQL = """
SELECT j.job_id, j.tenant_id, j.agent, j.status, j.waiting_reason, j.result, j.error,
       j.created_at, j.updated_at, j.finished_at,
       coalesce(array_agg(l.step_key ORDER BY l.seq) FILTER (WHERE l.step_key IS NOT NULL), '{}')
  FROM jobs j
  LEFT JOIN ledger l ON l.job_id = j.job_id AND l.seq IS NOT NULL
                    AND l.status IN ('started', 'in_doubt') AND j.status = 'WAITING'
 WHERE j.job_id = %s
 GROUP BY j.job_id
"""


_REMEMBERED_TENANTS = 10_000
_DELIVERY_TIMEOUT_S = 30.0
RECHECK_INTERVAL_S = 1.0
"""How often a waiting ``result`` looks at the job's row without being woken by a notice: the
safety net for a listening connection that broke unnoticed."""


class AsyncClient:
    """Submit jobs, await results, confirm, signal, cancel and resolve them."""

    def __init__(self, settings: Settings | None = None, *, endpoints: Endpoints | None = None) -> None:
        self.settings = settings or load_settings()
        self.endpoints = endpoints or resolve(self.settings)
        self.serde = AvroSerde(registry_url=self.settings.schema_registry_url)
        self.topic = topic_name(self.settings, COMMANDS)
        self._producer = DeliveryPoller(make_producer(self.endpoints.bootstrap, **COMMAND_PRODUCER))
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._notices: dict[str, FinishedNotice] = {}
        self._listener: asyncio.Future[None] | None = None
        self._listenings = 0
        """How many listening connections this client has opened (the current one's number)."""
        self._watched: dict[str, int] = {}
        """Jobs submitted here while a listener ran, with that listener's number: their notice
        cannot be missed, so it is kept even before result() waits, and result() needs no
        status query unless that listener has been replaced since."""
        self._listen_lock = asyncio.Lock()
        self._query_conn: psycopg.AsyncConnection | None = None
        self._tenants: dict[str, str] = {}
        """Tenants of the jobs this client submitted: commands to a job the worker has not
        recorded yet (a cancel right after submit) need no lookup."""

    async def submit(
        self, agent: Callable[..., Any] | str, input: dict[str, Any] | BaseModel, tenant: str,
        job_id: str | None = None, *, submitted_by: str | None = None,
    ) -> str:
        """Submit a job; return its id. A caller-provided ``job_id`` makes submission idempotent."""
        job_id = job_id or uuid.uuid4().hex
        body = m.SubmitJob(job_id=job_id, agent=agent_name(agent),
                           input=json.dumps(to_json_value(input, "job input")),
                           submitted_by=submitted_by)
        self._watch(job_id)
        await self._send(tenant, body)
        self._remember(job_id, tenant)
        return job_id

    async def submit_many(
        self, agent: Callable[..., Any] | str, inputs: list[dict[str, Any]],
        tenant: str | Callable[[int], str],
    ) -> list[str]:
        """Submit many jobs with one flush; ``tenant`` may be a function of the input's index."""
        name, job_ids, deliveries = agent_name(agent), [], []
        for index, job_input in enumerate(inputs):
            job_ids.append(uuid.uuid4().hex)
            body = m.SubmitJob(job_id=job_ids[-1], agent=name,
                               input=json.dumps(to_json_value(job_input, "job input")))
            self._watch(job_ids[-1])
            job_tenant = tenant(index) if callable(tenant) else tenant
            deliveries.append(self._produce(job_tenant, body))
            self._remember(job_ids[-1], job_tenant)
        await _delivered(deliveries)
        return job_ids

    async def results(self, job_ids: list[str], timeout: float = 60.0) -> dict[str, Any]:
        """Wait for many jobs; map job id -> result, or the exception it raised."""
        outcomes: dict[str, Any] = {}

        async def one(job_id: str) -> None:
            try:
                outcomes[job_id] = await self.result(job_id, timeout)
            except (JobFailedError, JobCancelledError) as exc:
                outcomes[job_id] = exc

        await asyncio.gather(*(one(job_id) for job_id in job_ids))
        return outcomes

    async def status(self, job_id: str) -> JobInfo:
        """The job's current state; :class:`JobNotFoundError` if there is no such job."""
        async with await psycopg.AsyncConnection.connect(self.endpoints.database_url) as conn:
            info = await self._status(conn, job_id)
        if info is None:
            raise JobNotFoundError(f"no job {job_id}")
        return info

    async def result(self, job_id: str, timeout: float = 60.0) -> Any:
        """Wait for the job to finish and return its result (raises if it failed or was cancelled)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        woken = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(woken)
        try:
            await self._listen()
            # Submitted here while this same listener ran: its notice comes, or came already.
            notified = self._watched.get(job_id) == self._listenings
            while True:
                woken.clear()
                notice = self._notices.get(job_id)
                if notice is not None and notice.complete:
                    return _outcome(job_id, notice.status, notice.result, notice.error)
                # (A notice without the outcome, too large to ride with it, needs the query.)
                info = (None if notified and notice is None
                        else await self._status(self._queries(), job_id))
                notified = False  # the re-checks below query, in case the listener broke
                if info is not None and info.status in m.TERMINAL_STATUSES:
                    return _outcome(job_id, info.status, info.result, info.error)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise JobTimeoutError(f"job {job_id} did not finish within {timeout}s")
                # Woken by the worker's NOTIFY for this job, or by the re-check interval.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, RECHECK_INTERVAL_S))
        finally:
            self._waiters[job_id].discard(woken)
            if not self._waiters[job_id]:
                del self._waiters[job_id]
                self._notices.pop(job_id, None)
                self._watched.pop(job_id, None)

    async def _listen(self) -> None:
        """Open (once) a listening connection whose notifications wake the waiting ``result``s."""
        async with self._listen_lock:  # many result() calls may start at once
            if self._listener is not None and not self._listener.done():
                return
            url = self.endpoints.database_url
            self._query_conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            listen_conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            await listen_conn.execute(f"LISTEN {CHANNEL}")
            self._listenings += 1
            self._listener = asyncio.ensure_future(self._dispatch(listen_conn))

    async def _dispatch(self, conn: psycopg.AsyncConnection) -> None:
        async with conn:
            async for notify in conn.notifies():
                notice = parse_notice(notify.payload)
                if notice is None or (notice.job_id not in self._waiters
                                      and notice.job_id not in self._watched):
                    continue
                self._notices[notice.job_id] = notice  # kept until its result() has it
                for woken in self._waiters.get(notice.job_id, ()):
                    woken.set()

    def _queries(self) -> psycopg.AsyncConnection:
        assert self._query_conn is not None
        return self._query_conn

    async def confirm(self, job_id: str, approved: bool = True, by: str = "client",
                      comment: str | None = None, step_key: str | None = None, *,
                      tenant: str | None = None) -> None:
        """Answer the job's pending confirmation."""
        await self._send(await self._tenant(job_id, tenant), m.ConfirmStep(
            job_id=job_id, step_key=step_key, approved=approved, by=by, comment=comment))

    async def signal(self, job_id: str, name: str, payload: Any = None, *,
                     tenant: str | None = None) -> None:
        """Deliver signal ``name`` to the job."""
        body = m.SignalJob(job_id=job_id, name=name, payload=json.dumps(to_json_value(payload, "payload")))
        await self._send(await self._tenant(job_id, tenant), body)

    async def cancel(self, job_id: str, reason: str | None = None, by: str | None = None, *,
                     tenant: str | None = None) -> None:
        """Cancel the job, whatever state it is in (even before a worker has recorded it)."""
        await self._send(await self._tenant(job_id, tenant),
                         m.CancelJob(job_id=job_id, reason=reason, by=by))

    async def resolve(self, job_id: str, step: str, action: str = "retry", result: Any = None,
                      by: str | None = None, *, tenant: str | None = None) -> None:
        """Resolve an in-doubt step: ``retry`` it, ``complete`` it with ``result``, or ``fail`` it."""
        body = m.ResolveInDoubt(
            job_id=job_id, step_key=step, action=m.InDoubtAction(action.upper()),
            result=None if result is None else json.dumps(to_json_value(result, "result")), by=by)
        await self._send(await self._tenant(job_id, tenant), body)

    async def close(self) -> None:
        """Flush pending commands and close the connections."""
        await asyncio.to_thread(self._producer.close, 10)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._listener
        if self._query_conn is not None:
            await self._query_conn.close()

    def _watch(self, job_id: str) -> None:
        """Before a submit: keep the job's notice if a listener runs (it then cannot miss it)."""
        if self._listener is None or self._listener.done():
            return
        if len(self._watched) >= _REMEMBERED_TENANTS:  # never awaited here: forget the oldest
            oldest = next(iter(self._watched))
            del self._watched[oldest]
            if oldest not in self._waiters:
                self._notices.pop(oldest, None)
        self._watched[job_id] = self._listenings

    def _remember(self, job_id: str, tenant: str) -> None:
        if len(self._tenants) >= _REMEMBERED_TENANTS:
            del self._tenants[next(iter(self._tenants))]  # the oldest: recorded by now
        self._tenants[job_id] = tenant

    async def _tenant(self, job_id: str, given: str | None) -> str:
        """The job's tenant (its commands' key): given, submitted here, or recorded."""
        if given is not None:
            return given
        if job_id in self._tenants:
            return self._tenants[job_id]
        return (await self.status(job_id)).tenant_id

    async def _send(self, tenant: str, body: m.CommandBody) -> None:
        await _delivered([self._produce(tenant, body)])

    def _produce(self, tenant: str, body: m.CommandBody) -> asyncio.Future[None]:
        value = self.serde.encode_command(m.Command(tenant_id=tenant, body=body))
        return self._producer.produce(self.topic, key=tenant.encode(), value=value)

    @staticmethod
    async def _status(conn: psycopg.AsyncConnection, job_id: str) -> JobInfo | None:
        cursor = await conn.execute(_STATUS_SQL, (job_id,))
        row = await cursor.fetchone()
        if row is None:
            return None
        names = list(JobInfo.model_fields)
        return JobInfo.model_validate(dict(zip(names, row, strict=True)))


async def _delivered(deliveries: list[asyncio.Future[None]]) -> None:
    """Wait until Kafka has acknowledged every command (a submit is durable from then on)."""
    try:
        await asyncio.wait_for(asyncio.gather(*deliveries), _DELIVERY_TIMEOUT_S)
    except TimeoutError:
        raise InfrastructureError(
            f"commands could not be delivered to Kafka within {_DELIVERY_TIMEOUT_S:.0f}s") from None


def _outcome(job_id: str, status: str, result: Any, error: dict[str, Any] | None) -> Any:
    if status == "COMPLETED":
        return result
    if status == "CANCELLED":
        raise JobCancelledError(f"job {job_id} was cancelled")
    error = error or {}
    raise JobFailedError(job_id, str(error.get("type")), str(error.get("message")))


class Client:
    """The blocking twin of :class:`AsyncClient`: each method runs the async one on a private loop."""

    def __init__(self, settings: Settings | None = None, *, endpoints: Endpoints | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="aetheris-client")
        self._thread.start()
        self._async = AsyncClient(settings, endpoints=endpoints)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, agent: Callable[..., Any] | str, input: dict[str, Any] | BaseModel, tenant: str,
               job_id: str | None = None, *, submitted_by: str | None = None) -> str:
        """See :meth:`AsyncClient.submit`."""
        return self._run(self._async.submit(agent, input, tenant, job_id, submitted_by=submitted_by))

    def status(self, job_id: str) -> JobInfo:
        """See :meth:`AsyncClient.status`."""
        return self._run(self._async.status(job_id))

    def result(self, job_id: str, timeout: float = 60.0) -> Any:
        """See :meth:`AsyncClient.result`."""
        return self._run(self._async.result(job_id, timeout))

    def confirm(self, job_id: str, approved: bool = True, by: str = "client",
                comment: str | None = None, step_key: str | None = None, *,
                tenant: str | None = None) -> None:
        """See :meth:`AsyncClient.confirm`."""
        self._run(self._async.confirm(job_id, approved, by, comment, step_key, tenant=tenant))

    def signal(self, job_id: str, name: str, payload: Any = None, *, tenant: str | None = None) -> None:
        """See :meth:`AsyncClient.signal`."""
        self._run(self._async.signal(job_id, name, payload, tenant=tenant))

    def cancel(self, job_id: str, reason: str | None = None, by: str | None = None, *,
               tenant: str | None = None) -> None:
        """See :meth:`AsyncClient.cancel`."""
        self._run(self._async.cancel(job_id, reason, by, tenant=tenant))

    def resolve(self, job_id: str, step: str, action: str = "retry", result: Any = None,
                by: str | None = None, *, tenant: str | None = None) -> None:
        """See :meth:`AsyncClient.resolve`."""
        self._run(self._async.resolve(job_id, step, action, result, by, tenant=tenant))

    def close(self) -> None:
        """Flush pending commands and stop the private loop."""
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
