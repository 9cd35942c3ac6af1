"""Fusion positions: where between the layers of a staged backbone a fusion block sits.

``"stage3"`` is the output of stage3 of both towers; ``"stage3.1"`` the output of the second child
(e.g. residual block) of stage3, as Chi et al. place CMA blocks "to every other residual block"
(§4.2). :class:`Position` is the one place that parses, formats, checks and orders them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence, Union


@dataclass(frozen=True)
class Position:
    stage: str
    child: int | None = None  # None: after the whole stage

    @classmethod
    def parse(cls, position: "PositionLike") -> "Position":
        if isinstance(position, Position):
            return position
        stage, dot, child = str(position).partition(".")
        if not stage or (dot and not child.isdigit()):
            raise ValueError(f"fusion position {position!r}: expected 'STAGE' or 'STAGE.CHILD' "
                             f"(e.g. 'stage3' or 'stage3.1')")
        return cls(stage, int(child) if dot else None)

    def __str__(self) -> str:
        return self.stage if self.child is None else f"{self.stage}.{self.child}"

    @property
    def key(self) -> str:
        """The name in a module dict, whose keys may not contain '.': ``stage3:1``."""
        return str(self).replace(".", ":")

    @classmethod
    def from_key(cls, key: str) -> "Position":
        return cls.parse(key.replace(":", "."))

    def sort_key(self, stage_names: Sequence[str]) -> tuple[int, float]:
        """Order along the network: by stage, a stage's children before the stage's end."""
        return stage_names.index(self.stage), self.child if self.child is not None else float("inf")

    def check(self, stage_names: Sequence[str], children: dict[str, int]) -> None:
        """Raise ValueError if a tower with these stages (and children per stage) has no such point."""
        if self.stage not in stage_names:
            raise ValueError(f"fusion position {str(self)!r}: no stage {self.stage!r}; stages are {list(stage_names)}")
        if self.child is not None and not 0 <= self.child < children[self.stage]:
            raise ValueError(f"fusion position {str(self)!r}: stage {self.stage!r} has children "
                             f"0..{children[self.stage] - 1}")


PositionLike = Union[str, Position]


def order_positions(positions: Iterable[PositionLike], stage_names: Sequence[str]) -> list[Position]:
    """``positions`` parsed and sorted from the input to the output of the network."""
    return sorted((Position.parse(p) for p in positions), key=lambda p: p.sort_key(stage_names))
