"""Third-party receivers that ride in the plugin's own receiver of their signal.

blinker's ``send`` pays for every receiver it calls (the generator step, an
``iscoroutinefunction`` check, a result tuple): about 11,000 instructions each on
CPython 3.11, a third of a send. A collector's receiver connected on its own would pay
that, and the plugin's guard frame on top (a receiver must never raise into the host).
On a signal the plugin listens to itself (every signal of the contract), the registry
(:mod:`.collectors`) puts the collector's receiver among the *riders* of the plugin's
receiver instead: that receiver does its own work, then calls each rider with exactly
what blinker passed it (``sender`` and the same keyword arguments), each in its own
``try``. So a rider costs about one Python call a send, and a raising rider costs its
own collector (it is marked broken) and nothing else: not the other riders, not the
plugin's counting, not the host.

The riders of one receiver are one tuple, replaced whole by :data:`Board` (one
assignment, under the registry's lock for the writers): a send reads it once and sees
the old set or the new one, never half of one, and the path with no rider costs one
truth test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

Receiver = Callable[..., None]
Failed = Callable[[Exception], None]
"""Told what a rider raised; marks its collector broken (never raises)."""
Rider = tuple[Receiver, Failed]
Riders = tuple[Rider, ...]
Board = Callable[[Riders], None]
"""Replaces the riders of one of the plugin's receivers."""


class Builtin(NamedTuple):
    """One of the plugin's own receivers: its signal, the receiver, and its board."""

    signal: Any
    receiver: Receiver
    board: Board


def ride(riders: Riders, sender: Any, kwargs: dict[str, Any]) -> None:
    """Call each rider as blinker would (``rider(sender, **kwargs)``); never raises."""
    for receiver, failed in riders:
        try:
            receiver(sender, **kwargs)
        except Exception as error:  # on the host's thread: it costs its collector only
            failed(error)


def rideable(own: Receiver) -> tuple[Receiver, Board]:
    """``own`` with riders: a receiver that calls ``own``, then the riders; and its board.

    For the signals sent at the rate people change things (saves, deletes, syncs), where
    the frame this adds is nothing beside what the host did; the hottest signal's
    receiver calls :func:`ride` itself (:mod:`.tally`).
    """
    riders: Riders = ()

    def receiver(sender: Any, **kwargs: Any) -> None:
        own(sender, **kwargs)
        if riders:
            ride(riders, sender, kwargs)

    def board(new: Riders) -> None:
        nonlocal riders
        riders = new

    return receiver, board
