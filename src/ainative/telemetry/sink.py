"""Where the daemon's own telemetry events go: one small interface, any number of sinks.

The daemon emits an event (telemetry/events.py) each time it classifies a process
(AiTaskRegistered), sets a knob (PolicyApplied), puts one back or lets go of it
(PolicyRestored) and samples the GPUs (GpuUtilization). The engine, in core/, emits
through the EventSink it is given, so core/ needs nothing from daemon/ and its tests pass
a list; without one it emits into NULL_SINK. The daemon gives it a Fanout of its sinks:
the Prometheus metrics (daemon/metrics.py), the event store.

Emission is synchronous, in the thread that acted (the daemon's loop): a sink must be
cheap and never block (one that writes to disk buffers). A sink that raises is logged
once and counted, and dropped events are all it costs: a policy action never fails
because of telemetry.

A PolicyRestored's ``why`` begins with what happened to the knob, so a reader can count
actions without parsing prose: ``restored`` (undone: restore, stop, crash recovery, a
class change), ``lifted`` (undone because the class's condition ended: a serving process
went idle), ``inherited`` (put back on a thread or child that inherited ainative's value),
``override`` (a person changed the value after ainative: ainative lets go and the value
carried is the person's, not one ainative wrote).
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args

from ainative import log
from ainative.telemetry.events import MAX_TEXT, Event

RestoreAction = Literal["restored", "lifted", "inherited", "override"]
PolicyAction = Literal["applied", "restored", "lifted", "inherited", "override"]
RESTORE_ACTIONS: tuple[RestoreAction, ...] = get_args(RestoreAction)


class EventSink(Protocol):
    def emit(self, ev: Event, /) -> None: ...


class NullSink:
    """Drops everything: the engine's default, and what an offline restore uses."""

    def emit(self, ev: Event, /) -> None:
        return None


NULL_SINK = NullSink()


class Fanout:
    """Every event to every sink, in order; a failing sink never stops the others."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks: list[EventSink] = list(sinks)
        self.failures: dict[str, int] = {}  # sink's class name -> events it failed on

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def emit(self, ev: Event, /) -> None:
        for sink in self.sinks:
            try:
                sink.emit(ev)
            except Exception as e:
                name = type(sink).__name__
                n = self.failures.get(name, 0)
                self.failures[name] = n + 1
                if n == 0:
                    log.error("event_sink_failed", sink=name, event=ev.TYPE,
                              error=f"{type(e).__name__}: {e}",
                              action="events this sink fails on are dropped; the daemon "
                                     "goes on (count in status)")


def restore_why(action: RestoreAction, detail: str) -> str:
    """A PolicyRestored's ``why``: the action, then the detail, within the schema's limit."""
    return f"{action}: {detail}"[:MAX_TEXT]


def restore_action(why: str) -> RestoreAction:
    """The action a PolicyRestored's ``why`` names (``restored`` when it names none)."""
    head = why.split(":", 1)[0]
    for a in RESTORE_ACTIONS:
        if head == a:
            return a
    return "restored"
