"""Words for messages: a count with its noun in the right number ("1 car", "5 cars")."""
from __future__ import annotations


def count(number: int, noun: str, plural: str | None = None) -> str:
    """`number` and `noun`, the noun's plural (`plural`, else noun + "s") unless the number is exactly 1."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def finished_epochs(epochs: int) -> str:
    """Why a run that trained every epoch it planned ended: `finished all 38 epochs`."""
    return f"finished all {epochs} epochs" if epochs != 1 else "finished its 1 epoch"
