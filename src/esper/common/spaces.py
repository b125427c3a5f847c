"""The factored-action declaration: what an environment tells the algorithm about its heads.

An action is one value per head. `FactoredActions` declares the heads (names in display
order, sizes) and, optionally, one *selector* head whose value decides two things for the
rest of the step:

- which heads are causally relevant (`relevance[s, h]`: with selector value `s`, head `h`
  changes what the environment does), so the per-head statistics count a head only where
  its value mattered;
- which values of the other heads are legal (a mask row per selector value), so a head
  whose legal values depend on an earlier head's choice in the same step is sampled under
  the mask of the choice actually made.

Per step an environment hands the algorithm one boolean array `legal[s, h, v]` of shape
`[cases, heads, width]` (`cases` = the selector's size, or 1 with no selector; `width` =
the largest head). Row `s` says which values of every head are legal once the selector
took value `s`; the selector's own legal values are read from row 0 (they cannot depend on
themselves). Values beyond a head's size are never legal. The policy, the rollout buffer and
the relevance of the telemetry read nothing else, so any MultiDiscrete environment, with or
without masks, trains through the same code as the morphogenetic one.

A flat SB3-style mask (every head's mask concatenated, as sb3-contrib's `action_masks()`
returns) converts with `legal_from_flat`. No torch here: environments, wrappers and the
command line use it without loading the training stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class FactoredActions:
    """Heads, their sizes, and the optional selector head with its relevance table.

    `relevance` is `[selector size, heads]` (every head relevant when there is no selector);
    the selector itself must be relevant in every case, since it is always chosen.
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    selector: str | None = None
    relevance: BoolArray = field(default_factory=lambda: np.ones((1, 0), dtype=np.bool_))

    def __post_init__(self) -> None:
        names, sizes = tuple(str(n) for n in self.names), tuple(int(s) for s in self.sizes)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "sizes", sizes)
        if not names or len(names) != len(sizes):
            raise ValueError(f"need one size per head, got heads {names} and sizes {sizes}")
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be distinct, got {names}")
        if min(sizes) < 1:
            raise ValueError(f"every head needs at least one value, got sizes {sizes}")
        relevance = np.asarray(self.relevance, dtype=np.bool_)
        if self.selector is None:
            if relevance.size and not relevance.all():
                raise ValueError("with no selector head every head is always relevant")
            relevance = np.ones((1, len(names)), dtype=np.bool_)
        else:
            if self.selector not in names:
                raise ValueError(f"selector {self.selector!r} is not one of the heads {names}")
            expected = (sizes[names.index(self.selector)], len(names))
            if relevance.shape != expected:
                raise ValueError(
                    f"relevance must be [selector values, heads] = {list(expected)}, "
                    f"got {list(relevance.shape)}"
                )
            if not relevance[:, names.index(self.selector)].all():
                raise ValueError(f"the selector {self.selector!r} is relevant in every case")
        relevance.setflags(write=False)
        object.__setattr__(self, "relevance", relevance)

    # ------------------------------------------------------------------ shape

    @property
    def n_heads(self) -> int:
        return len(self.names)

    @property
    def width(self) -> int:
        """The largest head's size: the last axis of every legal-values array."""
        return max(self.sizes)

    @property
    def cases(self) -> int:
        """Rows of a legal-values array: the selector's size, or 1 with no selector."""
        return int(self.relevance.shape[0])

    @property
    def selector_index(self) -> int | None:
        return None if self.selector is None else self.names.index(self.selector)

    @property
    def head_sizes(self) -> dict[str, int]:
        """Head name -> number of values, in head order (what a run's header records)."""
        return dict(zip(self.names, self.sizes, strict=True))

    @property
    def legal_shape(self) -> tuple[int, int, int]:
        return (self.cases, self.n_heads, self.width)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FactoredActions):
            return NotImplemented
        return (
            self.names == other.names
            and self.sizes == other.sizes
            and self.selector == other.selector
            and np.array_equal(self.relevance, other.relevance)
        )

    def __hash__(self) -> int:
        return hash((self.names, self.sizes, self.selector, self.relevance.tobytes()))

    # ------------------------------------------------------------------ masks

    def exists(self) -> BoolArray:
        """`[heads, width]`: which value positions exist (padding beyond a head's size not)."""
        return np.arange(self.width) < np.array(self.sizes)[:, None]

    def all_legal(self) -> BoolArray:
        """The legal-values array of a state where every existing value is legal."""
        return np.broadcast_to(self.exists(), self.legal_shape).copy()

    def legal(self, masks: Mapping[str, npt.ArrayLike]) -> BoolArray:
        """The legal-values array from per-head masks; heads not named are unrestricted.

        A mask of shape `[size]` holds in every case; one of shape `[selector size, size]`
        is conditioned on the selector's value (row `s`: the legal values once the selector
        chose `s`). A head whose mask would leave no legal value in some case keeps every
        value there, so a distribution over it is always defined; the selector's own mask
        must leave at least one value.
        """
        out = self.all_legal()
        for name, mask in masks.items():
            if name not in self.names:
                raise ValueError(f"mask for unknown head {name!r}; heads: {self.names}")
            h = self.names.index(name)
            size = self.sizes[h]
            m = np.asarray(mask, dtype=np.bool_)
            if m.shape == (size,):
                m = np.broadcast_to(m, (self.cases, size))
            elif m.shape != (self.cases, size) or name == self.selector:
                raise ValueError(
                    f"mask of head {name!r} must be [{size}]"
                    + ("" if name == self.selector else f" or [{self.cases}, {size}]")
                    + f", got {list(m.shape)}"
                )
            empty = np.logical_not(m.any(axis=1))
            if name == self.selector and empty.any():
                raise ValueError(f"the selector {name!r} has no legal value")
            out[:, h, :size] = np.where(empty[:, None], True, m)
        return out

    def legal_from_flat(self, flat: npt.ArrayLike) -> BoolArray:
        """The legal-values array of an SB3-style flat mask (heads' masks concatenated)."""
        mask = np.asarray(flat, dtype=np.bool_).reshape(-1)
        if mask.shape[0] != sum(self.sizes):
            raise ValueError(
                f"a flat action mask has {sum(self.sizes)} entries (the head sizes summed), "
                f"got {mask.shape[0]}"
            )
        parts = np.split(mask, np.cumsum(self.sizes)[:-1])
        return self.legal(dict(zip(self.names, parts, strict=True)))

    # ------------------------------------------------------------------ actions

    def relevant(self, actions: npt.ArrayLike) -> BoolArray:
        """Per-sample relevance `[N, heads]` of actions `[N, heads]`."""
        acts = np.asarray(actions, dtype=np.int64).reshape(-1, self.n_heads)
        sel = self.selector_index
        case = np.zeros(acts.shape[0], dtype=np.int64) if sel is None else acts[:, sel]
        return self.relevance[case]

    def is_legal(self, action: npt.ArrayLike, legal: npt.ArrayLike) -> bool:
        """Whether one action is legal in a state, on the heads relevant to it.

        An irrelevant head's value changes nothing, so it never makes an action illegal.
        """
        act = np.asarray(action, dtype=np.int64).reshape(-1)
        grid = np.asarray(legal, dtype=np.bool_)
        if act.shape[0] != self.n_heads or grid.shape != self.legal_shape:
            return False
        if ((act < 0) | (act >= np.array(self.sizes))).any():
            return False
        sel = self.selector_index
        case = 0 if sel is None else int(act[sel])
        if sel is not None and not grid[0, sel, case]:
            return False
        relevant = self.relevance[case]
        return bool(all(grid[case, h, act[h]] for h in range(self.n_heads) if relevant[h]))

    # ------------------------------------------------------------------ plain data

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, str), for checkpoints loaded with weights_only and run.json."""
        return {
            "names": list(self.names),
            "sizes": list(self.sizes),
            "selector": self.selector,
            "relevance": self.relevance.astype(int).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FactoredActions:
        return cls(
            names=tuple(data["names"]),
            sizes=tuple(data["sizes"]),
            selector=data.get("selector"),
            relevance=np.asarray(data.get("relevance", []), dtype=np.bool_).reshape(
                (-1, len(data["names"])) if data.get("selector") is not None else (1, -1)
            ),
        )

    @classmethod
    def independent(
        cls, sizes: Sequence[int], names: Sequence[str] | None = None
    ) -> FactoredActions:
        """Heads that are all always relevant, with no selector (a plain MultiDiscrete)."""
        labels = tuple(names) if names is not None else tuple(f"a{i}" for i in range(len(sizes)))
        return cls(names=labels, sizes=tuple(sizes))
