"""How callbacks' hooks are called, for the training loop and the prediction loop alike.

A hook is a method named after its event (`on_epoch_end`, `on_predict_batch_end`, ...) that takes
the loop's state object (`on_exception` also the exception that stopped the loop). Hooks run in the
callbacks' `order`, lowest first, whatever order the list has (ties keep the list's order): a
callback whose state the checkpoints save (TRACK: early stopping's counters) updates it first,
checkpoints (PERSIST) then save the epoch with it, before anything that observes the epoch
(OBSERVE: TensorBoard) can fail, so a logger that breaks (a full log disk) never costs that epoch's
last.pt.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

TRACK = -50  # keeps state that the checkpoints save (early stopping's counters)
PERSIST = 0  # writes what a run resumes from (checkpoints)
CONTROL = 50  # steers training; the default
OBSERVE = 100  # only looks (logging)


def in_hook_order(callbacks: Iterable[Any]) -> list[Any]:
    """`callbacks` sorted by `order` (stable); a duck-typed callback without one counts as CONTROL."""
    return sorted(callbacks, key=lambda callback: getattr(callback, "order", CONTROL))


def call_hook(callbacks: Sequence[Any], hook: str, state: Any) -> None:
    """Call `hook` of each callback in turn; the first error stops the others."""
    for callback in callbacks:
        getattr(callback, hook)(state)


def call_cleanup_hook(callbacks: Sequence[Any], hook: str, state: Any, *args: Any) -> None:
    """Call `hook(state, *args)` of every callback even when one fails (each one's clean-up must run); then
    raise the first error."""
    first: BaseException | None = None
    for callback in callbacks:
        try:
            getattr(callback, hook)(state, *args)
        except BaseException as error:  # noqa: BLE001 - re-raised below, after the others' clean-up
            first = first or error
    if first is not None:
        raise first
