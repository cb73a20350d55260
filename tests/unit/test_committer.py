"""How the group committer forms groups and which statement it sends (the statements
themselves run against PostgreSQL in tests/integration/test_lazy_commit.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from aetheris.committer import MAX_GROUP, GroupCommitError, GroupCommitter, Pending, _group_document
from aetheris.ledger import FencedTransaction

pytestmark = pytest.mark.unit


class RecordingLink:
    """A link that records what it is sent and answers every member of a group as committed."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Sequence[bytes | None]]] = []

    async def execute(self, name: str, params: Sequence[bytes | None]) -> int:
        self.sent.append((name, params))
        return len(json.loads(params[0] or b"")) if "group" in name else 1

    def load(self, result: int) -> list[None]:
        return [None] * result


@pytest.mark.parametrize(("lazy", "statement", "lazy_group"), [
    ([False], "aetheris_commit", None),
    ([True], "aetheris_commit_lazy", None),
    ([True, True], "aetheris_commit_group", b"t"),
    ([True, False], "aetheris_commit_group", b"f"),  # the durable member decides
])
def test_a_commit_is_lazy_only_if_every_member_may_be(
    lazy: list[bool], statement: str, lazy_group: bytes | None,
) -> None:
    async def run() -> tuple[list[tuple[str, Sequence[bytes | None]]], list[str | None]]:
        loop = asyncio.get_running_loop()
        group: list[Pending] = [(FencedTransaction(0, 1, lazy=each), loop.create_future(), None)
                                for each in lazy]
        link = RecordingLink()
        outcomes = await GroupCommitter(None)._send(link, group)  # type: ignore[arg-type]
        return link.sent, outcomes

    [(sent, params)], outcomes = asyncio.run(run())
    assert sent == statement
    assert outcomes == [None] * len(lazy)
    if lazy_group is None:
        assert params[:2] == (b"0", b"1")  # partition and epoch in text format
    else:
        assert params[1] == lazy_group


def test_a_dependent_write_goes_behind_its_dependency_or_waits_for_it() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(None)  # type: ignore[arg-type]
        submission, first_write, other = (FencedTransaction(0, 1) for _ in range(3))
        recorded: asyncio.Future[None] = loop.create_future()
        committer._queue = [(submission, recorded, None), (first_write, loop.create_future(), recorded)]
        group = committer._take_group()
        assert [tx for tx, _, _ in group] == [submission, first_write]  # same group, in order
        assert [item.get("after") for item in _group_document(group)] == [None, 0]

        # The dependency is on its way in another group: the dependent waits, others go.
        waits: asyncio.Future[None] = loop.create_future()
        committer._queue = [(first_write, waits, recorded), (other, loop.create_future(), None)]
        assert [tx for tx, _, _ in committer._take_group()] == [other]
        assert [tx for tx, _, _ in committer._queue] == [first_write]

        recorded.set_result(None)  # committed: the dependent goes, with no "after" left
        group = committer._take_group()
        assert [tx for tx, _, _ in group] == [first_write]
        assert "after" not in _group_document(group)[0]

    asyncio.run(run())


def test_a_write_whose_dependency_failed_is_never_sent() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(None)  # type: ignore[arg-type]
        recorded: asyncio.Future[None] = loop.create_future()
        recorded.set_exception(GroupCommitError("23505:duplicate key"))
        recorded.exception()  # retrieved, as the submitter does
        dependent: asyncio.Future[None] = loop.create_future()
        committer._queue = [(FencedTransaction(0, 1), dependent, recorded)]
        assert committer._take_group() == []
        assert committer._queue == []
        with pytest.raises(GroupCommitError) as failed:
            await dependent
        assert failed.value.sqlstate == "AE002"

    asyncio.run(run())


def test_the_group_document_names_partition_epoch_and_batch() -> None:
    async def run() -> list[dict[str, Any]]:
        tx = FencedTransaction(3, 7)
        tx.notify.append("job-1")
        return _group_document([(tx, asyncio.get_running_loop().create_future(), None)])

    assert json.loads(json.dumps(asyncio.run(run()))) == [
        {"partition": 3, "epoch": 7, "batch": {"notify": ["job-1"]}}]


class HeldLink:
    """A committer task's link whose statements answer once the test lets them."""

    def __init__(self, in_flight: list[int], answer: asyncio.Event) -> None:
        self.in_flight, self.answer = in_flight, answer

    async def execute(self, name: str, params: Sequence[bytes | None]) -> int:
        self.in_flight.append(id(self))
        await self.answer.wait()
        return len(json.loads(params[0] or b"")) if "group" in name else 1

    def load(self, result: int) -> list[None]:
        return [None] * result

    async def replace(self) -> None:
        pass

    async def release(self) -> None:
        pass


def held_committer() -> tuple[GroupCommitter, list[int], asyncio.Event]:
    """A committer over :class:`HeldLink`: the list gets the link of each statement sent, and
    statements answer while the event is set."""
    in_flight: list[int] = []
    release = asyncio.Event()
    release.set()
    committer = GroupCommitter(None, link=lambda _pool: HeldLink(in_flight, release))  # type: ignore[arg-type, return-value]
    return committer, in_flight, release


def test_a_commit_wakes_one_idle_committer_and_a_second_group_another() -> None:
    async def run() -> tuple[int, int]:
        committer, in_flight, release = held_committer()
        looks = 0
        take = committer._take_group

        def counted() -> list[Pending]:
            nonlocal looks
            looks += 1
            return take()

        committer._take_group = counted  # type: ignore[method-assign]
        await committer.commit(FencedTransaction(0, 1))
        await asyncio.sleep(0.01)  # every committer task parked
        looks = 0
        await committer.commit(FencedTransaction(0, 1))
        await asyncio.sleep(0.01)
        woken_for_one = looks  # the task that took it, and its look after settling it

        # More than a group's worth at once: two groups on their way side by side.
        release.clear()
        in_flight.clear()
        commits = [committer.enqueue(FencedTransaction(0, 1)) for _ in range(MAX_GROUP + 1)]
        await asyncio.sleep(0.01)
        side_by_side = len(in_flight)
        release.set()
        await asyncio.gather(*commits)
        await committer.close()
        return woken_for_one, side_by_side

    assert asyncio.run(run()) == (2, 2)


def test_one_commit_after_another_goes_through_the_connection_used_last() -> None:
    async def run() -> int:
        committer, used, _ = held_committer()
        for commit in range(6):
            await committer.commit(FencedTransaction(0, 1))
            await asyncio.sleep(0.01)  # the task that sent it parked again
            if commit == 0:
                used.clear()  # the first one came before every task had parked
        await committer.close()
        return len(set(used))

    assert asyncio.run(run()) == 1
