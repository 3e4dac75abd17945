"""Which process of the run this is, read from the variables torchrun sets (a world of one without them).

Apart from `carvana.core.distributed` because it needs no torch: the console asks it who speaks,
and `validate`, `score` and `submit` run without importing torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    """Which process of the run this is: `rank` of `world_size`, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _environment_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def current() -> Ranks:
    """This process's place in the run, from the variables torchrun sets (a world of one without them)."""
    world = max(1, _environment_int("WORLD_SIZE", 1))
    if world == 1:
        return Ranks()
    return Ranks(_environment_int("RANK", 0), world, _environment_int("LOCAL_RANK", 0))


def is_main() -> bool:
    """True in the process that writes the run's files and speaks (the only one outside torchrun)."""
    return current().is_main
