"""Splitting a backbone's hidden units into K gradient-isolated modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from locbench.errors import UserError


@dataclass(frozen=True)
class Split:
    """``starts[k]`` is the index of the first hidden unit of module ``k`` (``starts[0] == 0``).

    Module ``k`` holds hidden units ``starts[k] .. starts[k+1]-1``; the last module also holds
    the output head. ``n_hidden`` is the backbone's number of hidden units.
    """

    n_hidden: int
    starts: tuple[int, ...]

    def __post_init__(self) -> None:
        s = self.starts
        if not s or s[0] != 0 or any(b <= a for a, b in zip(s, s[1:])) or s[-1] >= self.n_hidden:
            raise UserError(
                f"invalid split {list(s)} of {self.n_hidden} hidden units: module starts must "
                f"begin at 0, increase strictly and stay below {self.n_hidden}"
            )

    @property
    def K(self) -> int:
        return len(self.starts)

    def unit_range(self, k: int) -> range:
        """Hidden units of module ``k`` (the head is not included)."""
        end = self.starts[k + 1] if k + 1 < self.K else self.n_hidden
        return range(self.starts[k], end)

    def last_unit(self, k: int) -> int:
        """Index of the hidden unit whose output is module ``k``'s output (the cut)."""
        return self.unit_range(k)[-1]

    @classmethod
    def every_unit(cls, n_hidden: int) -> Split:
        return cls(n_hidden, tuple(range(n_hidden)))

    @classmethod
    def uniform(cls, n_hidden: int, K: int) -> Split:
        """K modules of (nearly) equal unit count; earlier modules get the smaller share."""
        check_K(K, n_hidden)
        return cls(n_hidden, tuple((k * n_hidden) // K for k in range(K)))

    @classmethod
    def from_cuts(cls, n_hidden: int, cuts: Sequence[int]) -> Split:
        """``cuts``: hidden-unit indices after which the network is cut (0-based, increasing)."""
        cuts = list(cuts)
        if any(not 0 <= c < n_hidden - 1 for c in cuts) or cuts != sorted(set(cuts)):
            raise UserError(
                f"invalid cut points {cuts}: give increasing hidden-unit indices in "
                f"0..{n_hidden - 2}, each the last unit of a module"
            )
        return cls(n_hidden, (0, *(c + 1 for c in cuts)))


def check_K(K: int, n_hidden: int) -> None:
    if not 1 <= K <= n_hidden:
        raise UserError(
            f"K={K} is out of range for this backbone: it has {n_hidden} hidden units, "
            f"so K must be between 1 and {n_hidden}"
        )
