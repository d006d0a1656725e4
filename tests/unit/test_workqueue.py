"""The keyed work queue: coalescing per key, one worker per key at a time, bounded workers."""

from __future__ import annotations

import asyncio

import pytest

from stagewright.handlers.registration import Trigger, merge
from stagewright.handlers.workqueue import WorkQueue


class Recorder:
    """Processes keys by recording them, holding each until released when ``gate`` is set."""

    def __init__(self, gate: bool = False) -> None:
        self.seen: list[tuple[str, object]] = []
        self.running: set[str] = set()
        self.most_at_once = 0
        self.overlap = False
        self.release = asyncio.Event()
        if not gate:
            self.release.set()

    async def __call__(self, key: str, item: object) -> None:
        if key in self.running:
            self.overlap = True
        self.running.add(key)
        self.most_at_once = max(self.most_at_once, len(self.running))
        self.seen.append((key, item))
        await self.release.wait()
        self.running.discard(key)


async def test_events_for_a_waiting_key_coalesce_into_one_run_latest_wins() -> None:
    recorder = Recorder()
    work: WorkQueue[str, int] = WorkQueue(recorder, workers=4)
    for version in range(5):
        work.add("web", version)
    work.add("api", 1)
    assert len(work) == 2
    work.start()
    await asyncio.wait_for(work.join(), 5)
    assert recorder.seen == [("web", 4), ("api", 1)]
    assert len(work) == 0
    await work.stop()


async def test_a_key_is_never_processed_twice_at_once_and_runs_again_after() -> None:
    recorder = Recorder(gate=True)
    work: WorkQueue[str, int] = WorkQueue(recorder, workers=4)
    work.start()
    work.add("web", 1)
    await asyncio.sleep(0.01)
    assert work.active("web")
    work.add("web", 2)  # arrives while "web" is processed: kept, not run alongside
    work.add("web", 3)
    await asyncio.sleep(0.01)
    assert recorder.seen == [("web", 1)]
    recorder.release.set()
    await asyncio.wait_for(work.join(), 5)
    assert recorder.seen == [("web", 1), ("web", 3)]
    assert not recorder.overlap
    await work.stop()


async def test_an_event_that_came_during_processing_is_handled_next_by_the_same_worker() -> None:
    recorder = Recorder(gate=True)
    work: WorkQueue[str, int] = WorkQueue(recorder, workers=1)
    work.start()
    work.add("web", 1)
    await asyncio.sleep(0.01)
    work.add("api", 1)  # in line behind "web"
    work.add("web", 2)  # the answer to web's step, while web is processed
    recorder.release.set()
    await asyncio.wait_for(work.join(), 5)
    assert recorder.seen == [("web", 1), ("web", 2), ("api", 1)]
    await work.stop()


async def test_a_key_with_endless_events_goes_to_the_back_after_its_follow_ups() -> None:
    seen: list[str] = []
    work: WorkQueue[str, int] = WorkQueue(lambda key, _: _record(seen, work, key),
                                          workers=1, follow_ups=2)
    work.add("chatty", 0)
    work.add("quiet", 0)
    work.start()
    await asyncio.sleep(0.05)
    await work.stop()
    # Three turns in a row (one plus two follow-ups), then the key that waited gets its turn.
    assert seen[:5] == ["chatty", "chatty", "chatty", "quiet", "chatty"]


async def _record(seen: list[str], work: WorkQueue[str, int], key: str) -> None:
    seen.append(key)
    if key == "chatty":
        work.add("chatty", len(seen))  # every run brings another event
    await asyncio.sleep(0)


async def test_workers_bound_the_keys_processed_at_once_first_come_first_served() -> None:
    recorder = Recorder(gate=True)
    work: WorkQueue[str, int] = WorkQueue(recorder, workers=3)
    work.start()
    for number in range(10):
        work.add(f"build-{number}", number)
    await asyncio.sleep(0.05)
    assert recorder.most_at_once == 3
    recorder.release.set()
    await asyncio.wait_for(work.join(), 5)
    assert [key for key, _ in recorder.seen] == [f"build-{n}" for n in range(10)]
    await work.stop()


async def test_a_failing_key_does_not_stop_its_worker() -> None:
    done: list[str] = []

    async def process(key: str, _: None) -> None:
        if key == "broken":
            raise RuntimeError("boom")
        done.append(key)

    work: WorkQueue[str, None] = WorkQueue(process, workers=1)
    work.start()
    work.add("broken", None)
    work.add("fine", None)
    await asyncio.wait_for(work.join(), 5)
    assert done == ["fine"]
    await work.stop()


def test_a_work_queue_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        WorkQueue(Recorder(), workers=0)
    with pytest.raises(ValueError, match="follow_ups"):
        WorkQueue(Recorder(), workers=1, follow_ups=-1)


def test_triggers_merge_to_the_latest_body_and_the_latest_pod() -> None:
    old_body, new_body = {"metadata": {"resourceVersion": "1"}}, {"metadata": {
        "resourceVersion": "2"}}
    pod = {"metadata": {"name": "web-1-1"}}
    assert merge(Trigger(body=old_body), Trigger(body=new_body)) == Trigger(body=new_body)
    assert merge(Trigger(body=new_body), Trigger(pod=pod)) == Trigger(body=new_body, pod=pod)
    assert merge(Trigger(body=new_body, pod=pod), Trigger()) == Trigger(body=new_body, pod=pod)


async def test_listed_keys_wait_behind_watch_events_and_an_event_promotes_one() -> None:
    """A backlog listed at start-up (low) does not hold back the end of a build (a pod
    event) or a new ImageBuild; a listed key that gets an event of its own moves up."""
    recorder = Recorder()
    work: WorkQueue[str, int] = WorkQueue(recorder, workers=1)
    for index in range(4):
        work.add(f"listed-{index}", 0, low=True)
    work.add("pod-done", 1)
    work.add("listed-2", 2)  # its own watch event: promoted, with the newer payload
    work.add("listed-3", 3, low=True)  # listed again (a relist): still low, payload merged
    work.add("new", 4)
    assert len(work) == 6
    work.start()
    await asyncio.wait_for(work.join(), 5)
    assert recorder.seen == [("pod-done", 1), ("listed-2", 2), ("new", 4), ("listed-0", 0),
                             ("listed-1", 0), ("listed-3", 3)]
    work.add("listed-1", 5, low=True)  # a key served before may come again, low or not
    await asyncio.wait_for(work.join(), 5)
    assert recorder.seen[-1] == ("listed-1", 5)
    await work.stop()
