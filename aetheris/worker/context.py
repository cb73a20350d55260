"""The worker's implementation of :class:`~aetheris.context.Context`: steps with replay.

Each ``ctx`` call takes the next position in the agent's call order and a step key
(``position:kind:name:args digest``). A position already in the ledger returns its recorded
outcome without running anything; a different key there is non-determinism. A new position runs
the step under the protocol of ARCHITECTURE.md: ledger row committed, effect, result committed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from aetheris.chaos import crash_point, reply_point
from aetheris.context import Context, Decision, Signal
from aetheris.errors import (
    AetherisError,
    ConfigError,
    JobCancelled,
    JobParked,
    NonDeterminismError,
    RetryableError,
    StepFailedError,
    StepTimeoutError,
    TerminalError,
)
from aetheris.kafka import messages as m
from aetheris.ledger import (
    COMPLETED,
    DATABASE_UNAVAILABLE,
    FAILED,
    IN_DOUBT,
    STARTED,
    FencedTransaction,
    StepRecord,
    hashed_args,
)
from aetheris.registry import ToolDefinition, tool_definition
from aetheris.retry import RetryPolicy
from aetheris.values import from_json_value, to_json_value
from aetheris.worker.handle import JobHandle
from aetheris.worker.runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")

_idempotency_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aetheris_idempotency_key", default=None
)
_UUID_NAMESPACE = uuid.UUID("6f2f1c1e-6c1a-4b8e-9a57-0d1f6c9b7a11")
LLM_RETRY = RetryPolicy(max_attempts=5, backoff_s=1.0)


def idempotency_key() -> str | None:
    """Inside a running tool: the key that stays the same across every attempt of this step."""
    return _idempotency_key.get()


class JobEvicted(BaseException):
    """The worker is draining: the job stops at a step boundary and resumes elsewhere."""


def _now() -> datetime:
    return datetime.now(UTC)


def error_record(exc: BaseException, *, final: bool) -> dict[str, Any]:
    """How a failure is stored: importable type name, message, whether retries are over."""
    kind = type(exc)
    message = exc.message if isinstance(exc, TerminalError | RetryableError) else str(exc)
    return {"type": f"{kind.__module__}.{kind.__qualname__}", "message": message, "final": final}


def rebuild_error(error: dict[str, Any]) -> BaseException:
    """The recorded failure as an exception of the same type and message."""
    module_name, _, name = str(error.get("type", "")).rpartition(".")
    message = str(error.get("message", ""))
    try:
        kind = getattr(importlib.import_module(module_name), name)
        if isinstance(kind, type) and issubclass(kind, Exception):
            return kind(message)
    except Exception:  # not importable or not constructible from a message
        pass
    return StepFailedError(str(error.get("type")), message)


class JobContext(Context):
    """One run (first execution or replay) of one job."""

    def __init__(self, runtime: Runtime, handle: JobHandle) -> None:
        self._runtime = runtime
        self._job = handle
        self.job_id = handle.job_id
        self.tenant_id = handle.tenant_id
        self.attempt = handle.runs
        self._position = 0
        self._uuids = 0
        self._random = random.Random(handle.job_id)
        self._clock = handle.created_at
        self._digests: dict[str, tuple[bytes, str]] = {}
        """Step key -> SHA-256 and canonical JSON of a new step's arguments, made with its key
        (a replayed step writes no row; a retried one computes them again)."""
        self._unwritten: set[str] = set()
        """Keys of idempotent steps running without a ledger row yet (written with the outcome)."""
        self.nondeterminism: NonDeterminismError | None = None
        """Set once detected: every later step raises it again, so an agent that catches it
        can never run a step the history does not have; the runner fails the job with it."""

    # -- determinism ----------------------------------------------------------------------

    def now(self) -> datetime:
        return self._clock

    def uuid(self) -> uuid.UUID:
        self._uuids += 1
        return uuid.uuid5(_UUID_NAMESPACE, f"{self.job_id}:{self._uuids}")

    def random(self) -> float:
        return self._random.random()

    def _next(self, kind: str, name: str, args: Any) -> tuple[int, str, StepRecord | None]:
        """Take the next call position; return it, its key, and the recorded row if any."""
        if self._runtime.evicting(self._job.partition):
            raise JobEvicted(self.job_id)
        if self.nondeterminism is not None:
            raise self.nondeterminism
        self._position += 1
        digest, encoded = hashed_args(args)
        key = f"{self._position}:{kind}:{name}:{digest.hex()[:16]}"
        recorded = self._job.steps.get(self._position)
        if recorded is None:
            self._digests[key] = (digest, encoded)  # its new row and ToolStarted carry them too
        if recorded is not None and recorded.step_key != key:
            self.nondeterminism = NonDeterminismError(
                f"step {self._position}: the ledger recorded "
                f"{_describe(recorded.kind, recorded.name, recorded.args)} but the agent now asks "
                f"for {_describe(kind, name, args)}",
                expected=recorded.step_key, actual=key,
            )
            raise self.nondeterminism
        return self._position, key, recorded

    def _advance_clock(self, step: StepRecord) -> None:
        if step.finished_at is not None:
            self._clock = step.finished_at

    async def _commit(self, build: Callable[[FencedTransaction], None]) -> None:
        await self._runtime.commit(self._job, build)

    # -- tools and LLM calls ----------------------------------------------------------------

    async def tool(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("ctx.tool takes keyword arguments only, so the ledger can name them")
        definition = tool_definition(fn)
        call_args = to_json_value(dict(kwargs), f"{definition.name} arguments")
        executor = self._runtime.tool_executor
        result = await self._effect("tool", definition.name, call_args, definition,
                                    lambda key: _invoke(definition, dict(kwargs), key, executor))
        return from_json_value(definition.fn, result)

    async def llm(self, messages: list[dict[str, Any]] | list[Any], *, model: str, **params: Any) -> Any:
        from aetheris.llm import LlmMessage, LlmResponse

        provider = self._runtime.llm
        if provider is None:
            raise ConfigError("this worker has no LLM provider configured")
        typed = [LlmMessage.model_validate(msg) for msg in messages]
        call_args = {"model": model, "messages": [msg.model_dump(mode="json") for msg in typed],
                     "params": to_json_value(params, "llm params")}
        # A lost LLM response costs tokens, not a side effect: an in-doubt call is re-made.
        definition = ToolDefinition(provider.complete, model, idempotent=True, retry=LLM_RETRY)

        async def call(_key: str) -> Any:
            response = await provider.complete(typed, model=model, **params)
            return response.model_dump(mode="json", exclude={"raw"})

        result = await self._effect("llm", model, call_args, definition, call)
        return LlmResponse.model_validate(result)

    async def _effect(
        self, kind: str, name: str, call_args: Any, definition: ToolDefinition,
        call: Callable[[str], Awaitable[Any]],
    ) -> Any:
        position, key, step = self._next(kind, name, call_args)
        idem_key = f"{self.job_id}:{key}"
        if step is None:
            crash_point("before_start", name)
            step = StepRecord(key, position, kind, name, STARTED, args=call_args, attempt=1,
                              idempotency_key=idem_key, started_at=_now())
            if definition.idempotent and kind != "llm":
                # A repeat is harmless, so the row is written once, with the outcome: one
                # commit per step. A crash before it simply runs the step again, same key.
                # LLM calls are recorded before they are made all the same: a call that cost
                # tokens stays visible in the history even if its response is lost.
                self._unwritten.add(key)
                await self._job_recorded()
            else:
                if self._job.unsettled_effect:
                    # The previous effect's outcome first, on its own, so that a crash between
                    # the two finds a clean boundary. Lazily: the start below waits for its
                    # flush, which makes the outcome durable too (the WAL is flushed in order).
                    await self._runtime.flush(self._job, lazy=True)
                await self._commit_start(step, insert=True)
        else:
            outcome = self._recorded_outcome(step)
            if outcome is not None:
                return outcome[0]
            known = self._job.known_outcomes.get(step.step_key)
            if step.status == STARTED and known is not None and known[0].attempt == step.attempt:
                return self._record_known_outcome(step, *known, definition)
            await self._recover(step, definition)
        return await self._attempts(step, definition, call)

    async def _job_recorded(self) -> None:
        """Wait until the submission that records this job has committed.

        A new job runs while its submission is on its way (its first write commits with it),
        but no effect may begin before then: a submission that fails (a repeated one, say)
        must leave nothing behind. An effect with a start row waits anyway, for that commit.
        """
        if self._job.recorded is None:
            return
        try:
            await self._job.recorded  # at once if it has committed already
        except BaseException:
            raise JobCancelled(self.job_id) from None  # never recorded: the job is dropped

    def _recorded_outcome(self, step: StepRecord) -> tuple[Any] | None:
        """The result of a finished step (raising a recorded final failure), else None."""
        if step.status == COMPLETED:
            self._advance_clock(step)
            return (step.result,)
        if step.status == FAILED and step.error and step.error.get("final"):
            self._advance_clock(step)
            raise rebuild_error(step.error)
        return None

    async def _recover(self, step: StepRecord, definition: ToolDefinition) -> None:
        """A step found started (in doubt) or failed-but-retryable: decide how to go on."""
        if step.status == FAILED:
            step.attempt += 1
            await self._commit_start(step, insert=False)
        elif step.status == STARTED and self._job.unrun_starts.get(step.step_key) == step.attempt:
            pass  # this process wrote the start and never ran the effect: nothing is in doubt
        elif step.status == STARTED and definition.idempotent:
            step.attempt += 1  # same idempotency key: the tool can deduplicate the repeat
            await self._commit_start(step, insert=False)
        elif step.status == STARTED:
            await self._park_in_doubt(step, "the worker stopped while the tool ran; it is not idempotent")
        else:
            raise JobParked("in_doubt")  # parked already, waiting for an operator's resolve

    async def _park_in_doubt(self, step: StepRecord, reason: str) -> None:
        """The step may or may not have had its effect: an operator decides, never a retry."""
        step.status = IN_DOUBT
        await self._commit(lambda tx: self._in_doubt(tx, step, reason))
        raise JobParked("in_doubt")

    async def _attempts(
        self, step: StepRecord, definition: ToolDefinition, call: Callable[[str], Awaitable[Any]]
    ) -> Any:
        while True:
            self._job.unrun_starts.pop(step.step_key, None)  # from here on it may have run
            began = time.monotonic()
            try:
                value = await _with_timeout(call(step.idempotency_key or step.step_key),
                                            definition.timeout_s, step.name)
                result = to_json_value(value, f"{step.name} result")
            except StepTimeoutError as exc:
                if not definition.idempotent:
                    # The tool may still have had its effect (a sync tool's thread even runs
                    # on): retrying could repeat it, so the step is in doubt like a crash.
                    await self._park_in_doubt(step, f"{exc}; it is not idempotent")
                await self._failed(step, definition, exc, began)
                continue
            except (TerminalError, RetryableError, Exception) as exc:
                await self._failed(step, definition, exc, began)
                continue
            step.status, step.result, step.finished_at = COMPLETED, result, _now()
            # The outcome rides with the job's next write (the next step's start, a wait, the
            # job's end) or is committed as soon as the job awaits anything else. Lost in a
            # crash before that, an idempotent step runs again with the same key; any other is
            # in doubt, exactly as if the crash had come just before its own commit.
            return self._settle(step, int((time.monotonic() - began) * 1000), definition)

    def _settle(self, step: StepRecord, duration_ms: int, definition: ToolDefinition) -> Any:
        """Defer the completed step's outcome write and go on with its result."""
        self._job.known_outcomes[step.step_key] = (step, duration_ms)
        complete = functools.partial(self._completed, step=step, duration_ms=duration_ms)
        self._runtime.defer(self._job, complete, effect_outcome=not definition.idempotent)
        self._advance_clock(step)
        return step.result

    def _record_known_outcome(self, row: StepRecord, ran: StepRecord, duration_ms: int,
                              definition: ToolDefinition) -> Any:
        """A reload found the step started, but this process ran it: the write of its outcome
        had an unknown fate (and did not land). Its result is known, so nothing is in doubt."""
        row.status, row.result, row.finished_at = COMPLETED, ran.result, ran.finished_at
        return self._settle(row, duration_ms, definition)

    async def _failed(
        self, step: StepRecord, definition: ToolDefinition, exc: BaseException, began: float
    ) -> None:
        retryable = not isinstance(exc, TerminalError | AetherisError) or isinstance(exc, RetryableError)
        final = not retryable or step.attempt >= definition.retry.max_attempts
        step.status, step.error, step.finished_at = FAILED, error_record(exc, final=final), _now()
        await self._commit(lambda tx: self._failure(tx, step, began, retryable))
        if final:
            self._advance_clock(step)
            raise exc
        delay = definition.retry.delay_after(step.attempt, getattr(exc, "retry_after", None))
        await asyncio.sleep(delay)
        step.attempt += 1
        step.status, step.error, step.finished_at = STARTED, None, None
        await self._commit_start(step, insert=False)

    # -- the transactions of an effect step ---------------------------------------------------

    async def _commit_start(self, step: StepRecord, *, insert: bool) -> None:
        """Commit the step's start; the effect runs only once this has returned."""
        try:
            await self._commit(lambda tx: self._started(tx, step, insert=insert))
            reply_point("after_start", step.name)
        except DATABASE_UNAVAILABLE:
            # The start may have committed, but the effect has certainly not begun. Remembered
            # so that the replay after the reload runs it instead of parking it in doubt.
            self._job.unrun_starts[step.step_key] = step.attempt
            raise

    def _write(self, tx: FencedTransaction, step: StepRecord) -> None:
        """The row's first write inserts it (announcing the start), later writes update it."""
        if step.step_key in self._unwritten:
            # Only once committed: a transaction built again after a failure must insert again.
            tx.committed.append(functools.partial(self._unwritten.discard, step.step_key))
            self._started(tx, step, insert=True)
        else:
            tx.update_step(self.job_id, step)

    def _started(self, tx: FencedTransaction, step: StepRecord, *, insert: bool) -> None:
        digest, encoded = self._digests.get(step.step_key) or hashed_args(step.args)
        if insert:
            # With its current status: started, or already the outcome of an unwritten step.
            tx.insert_step(self._job.cursor, step, digest)
            self._job.add_step(step)
        else:
            step.status = STARTED
            tx.update_step(self.job_id, step)
        if step.kind == "llm":
            tx.event(self._job.cursor, m.LlmRequested(
                step_key=step.step_key, model=step.name, attempt=step.attempt,
                provider=getattr(self._runtime.llm, "name", None),
                request=_dumps(step.args)))
        else:
            tx.event(self._job.cursor, m.ToolStarted(
                step_key=step.step_key, name=step.name, attempt=step.attempt,
                args=encoded, args_hash=digest.hex(),
                idempotency_key=step.idempotency_key))

    def _completed(self, tx: FencedTransaction, step: StepRecord, duration_ms: int) -> None:
        crash_point("before_complete", step.name)
        reply_point("before_complete", step.name)
        self._write(tx, step)
        tx.durable.append(functools.partial(self._job.outcome_committed, step.step_key))
        tx.committed.append(functools.partial(crash_point, "after_complete", step.name))
        if step.kind == "llm":
            usage = step.result.get("usage", {}) if isinstance(step.result, dict) else {}
            tx.event(self._job.cursor, m.LlmCompleted(
                step_key=step.step_key, model=step.name, attempt=step.attempt,
                response=_dumps(step.result), prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0), duration_ms=duration_ms))
        else:
            tx.event(self._job.cursor, m.ToolCompleted(
                step_key=step.step_key, name=step.name, attempt=step.attempt,
                result=_dumps(step.result), duration_ms=duration_ms))

    def _failure(self, tx: FencedTransaction, step: StepRecord, began: float, retryable: bool) -> None:
        self._write(tx, step)
        error = step.error or {}
        tx.event(self._job.cursor, m.ToolFailed(
            step_key=step.step_key, name=step.name, attempt=step.attempt,
            error_type=str(error.get("type")), error_message=str(error.get("message")),
            retryable=retryable and not error.get("final"),
            duration_ms=int((time.monotonic() - began) * 1000)))

    def _in_doubt(self, tx: FencedTransaction, step: StepRecord, reason: str) -> None:
        tx.update_step(self.job_id, step)
        tx.event(self._job.cursor, m.ToolInDoubt(
            step_key=step.step_key, name=step.name, attempt=step.attempt,
            idempotency_key=step.idempotency_key, reason=reason))
        self._park(tx, "IN_DOUBT")

    def _park(self, tx: FencedTransaction, reason: str, wake_at: datetime | None = None) -> None:
        self._job.status, self._job.waiting_reason = "WAITING", reason
        tx.update_job(self._job.cursor, status="WAITING", waiting_reason=reason, wake_at=wake_at)

    # -- waiting: confirmations, signals, timers -----------------------------------------------

    async def confirm(self, prompt: str, data: Any = None) -> Decision:
        details = to_json_value(data, "confirm data")
        position, key, step = self._next("confirm", "confirm", {"prompt": prompt, "data": details})
        if step is None:
            step = StepRecord(key, position, "confirm", "confirm", STARTED,
                              args={"prompt": prompt, "data": details}, started_at=_now())

            def request(tx: FencedTransaction) -> None:
                tx.insert_step(self._job.cursor, step)
                self._job.add_step(step)
                tx.event(self._job.cursor, m.ConfirmationRequested(
                    step_key=key, prompt=prompt, details=_dumps(details)))
                self._park(tx, "CONFIRMATION")

            await self._commit(request)
        if step.status != COMPLETED:
            raise JobParked("confirmation")
        self._advance_clock(step)
        return Decision.model_validate(step.result)

    async def wait_for_signal(self, name: str, timeout_s: float | None = None) -> Signal | None:
        position, key, step = self._next("signal", name, {"name": name, "timeout_s": timeout_s})
        if step is None:
            wake_at = _now() + timedelta(seconds=timeout_s) if timeout_s is not None else None
            step = StepRecord(key, position, "signal", name, STARTED,
                              args={"name": name, "timeout_s": timeout_s}, wake_at=wake_at,
                              started_at=_now())
            arrived = self._unconsumed_signal(name)

            def wait(tx: FencedTransaction) -> None:
                tx.insert_step(self._job.cursor, step)
                self._job.add_step(step)
                if arrived is None:
                    if wake_at is not None:
                        tx.event(self._job.cursor, m.TimerSet(step_key=key, fire_at=wake_at))
                    self._park(tx, "SIGNAL", wake_at)

            await self._commit(wait)
        if step.status == STARTED:
            await self._try_finish_wait(step)
        if step.status != COMPLETED:
            raise JobParked("signal")
        self._advance_clock(step)
        return None if step.result is None else Signal.model_validate(step.result)

    def _unconsumed_signal(self, name: str) -> StepRecord | None:
        for row in sorted(self._job.inbox.values(), key=lambda r: r.started_at or _now()):
            if row.kind == "signal" and row.name == name and row.consumed_by is None:
                return row
        return None

    async def _try_finish_wait(self, step: StepRecord) -> None:
        """Complete a signal wait from the inbox, or with None once its timeout has passed."""
        arrived = self._unconsumed_signal(step.name)
        timed_out = step.wake_at is not None and step.wake_at <= _now()
        if arrived is None and not timed_out:
            return
        step.status, step.finished_at = COMPLETED, _now()
        step.result = arrived.result if arrived is not None else None

        def finish(tx: FencedTransaction) -> None:
            tx.update_step(self.job_id, step)
            if arrived is not None:
                arrived.consumed_by = step.step_key
                tx.update_step(self.job_id, arrived)
            elif step.wake_at is not None:
                tx.event(self._job.cursor, m.TimerFired(
                    step_key=step.step_key, fire_at=step.wake_at, fired_at=_now()))
            self._resume(tx)

        await self._commit(finish)

    def _resume(self, tx: FencedTransaction) -> None:
        self._job.status, self._job.waiting_reason = "RUNNING", None
        tx.update_job(self._job.cursor, status="RUNNING", waiting_reason=None, wake_at=None)

    async def sleep(self, seconds: float) -> None:
        position, key, step = self._next("timer", "sleep", {"seconds": seconds})
        if step is None:
            wake_at = _now() + timedelta(seconds=seconds)
            step = StepRecord(key, position, "timer", "sleep", STARTED, args={"seconds": seconds},
                              wake_at=wake_at, started_at=_now())

            def set_timer(tx: FencedTransaction) -> None:
                tx.insert_step(self._job.cursor, step)
                self._job.add_step(step)
                tx.event(self._job.cursor, m.TimerSet(step_key=key, fire_at=wake_at))
                self._park(tx, "TIMER", wake_at)

            await self._commit(set_timer)
        if step.status == STARTED and step.wake_at is not None and step.wake_at <= _now():
            step.status, step.finished_at = COMPLETED, _now()
            wake_at = step.wake_at

            def fire(tx: FencedTransaction) -> None:
                tx.update_step(self.job_id, step)
                tx.event(self._job.cursor, m.TimerFired(step_key=key, fire_at=wake_at, fired_at=_now()))
                self._resume(tx)

            await self._commit(fire)
        if step.status != COMPLETED:
            raise JobParked("timer")
        self._advance_clock(step)

    async def reason(self, text: str, **data: Any) -> None:
        details = to_json_value(data, "reason data")
        position, key, step = self._next("state", "reason", {"text": text, "data": details})
        if step is not None:
            self._advance_clock(step)
            return
        now = _now()
        step = StepRecord(key, position, "state", "reason", COMPLETED,
                          args={"text": text, "data": details}, started_at=now, finished_at=now)

        def record(tx: FencedTransaction) -> None:
            tx.insert_step(self._job.cursor, step)
            self._job.add_step(step)
            tx.event(self._job.cursor, m.ReasoningRecorded(step_key=key, text=text))

        await self._commit(record)
        self._advance_clock(step)


async def _invoke(
    definition: ToolDefinition, kwargs: dict[str, Any], key: str, executor: Executor | None
) -> Any:
    if definition.takes_idempotency_key:
        kwargs = {**kwargs, "idempotency_key": key}
    token = _idempotency_key.set(key)
    try:
        if definition.is_async:
            return await definition.fn(**kwargs)
        # Sync tools get threads of their own, so a slow tool never starves the worker's Kafka
        # and database I/O; the copied context carries the idempotency key into the thread.
        call = functools.partial(contextvars.copy_context().run, definition.fn, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(executor, call)
    finally:
        _idempotency_key.reset(token)


async def _with_timeout(call: Awaitable[Any], timeout_s: float | None, name: str) -> Any:
    if timeout_s is None:
        return await call
    try:
        return await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        raise StepTimeoutError(f"{name} timed out after {timeout_s}s") from None


def _describe(kind: str, name: str, args: Any) -> str:
    return f"{kind} {name}({_dumps(args)[:200]})"


def _dumps(value: Any) -> str:
    from aetheris.ledger import canonical_json

    return canonical_json(value)
