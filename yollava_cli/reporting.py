"""One reporter for long work: deep code says what is happening with `report(SomeEvent(...))`,
and whoever runs it decides what that looks like, by installing a reporter for the duration
(`with reporting(reporter):`): the CLI renders bars and lines on stderr, `serve` logs, a Ray worker
collects them for the driver. Nothing threads a callback through the layers between.

The reporter lives in a ContextVar, so each thread (serve's worker) and each test has its own; the
default drops every event. Events are small frozen dataclasses (learning/events.py holds training's
and eval's), matched by type, never by a kind string."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

Reporter = Callable[[object], None]  # takes one event; what it does with it is its own business

CURRENT: ContextVar[Reporter] = ContextVar("reporter", default=lambda event: None)


@dataclass(frozen=True)
class Status:
    """A line for the person waiting: what starts now, or what was left out and why."""

    text: str


@dataclass(frozen=True)
class Counted:
    """A step that counts what it has done of how many; each subclass names the step."""

    done: int
    total: int | None  # None while the total is not known yet (a folder still being walked)


def report(event: object) -> None:
    """Hand the event to the current reporter."""
    CURRENT.get()(event)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """`reporter` hears every event reported inside the block (in this thread or task)."""
    token = CURRENT.set(reporter)
    try:
        yield reporter
    finally:
        CURRENT.reset(token)


@contextmanager
def collecting() -> Iterator[list]:
    """Every event reported inside the block, in order, in the list it yields (what a Ray worker
    sends back for the driver to report, and what a test reads)."""
    events: list = []
    with reporting(events.append):
        yield events
