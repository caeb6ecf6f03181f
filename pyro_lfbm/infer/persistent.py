"""Persistent Langevin chains for training, indexed by dataset position.

Alternating back-propagation (Han, Lu, Zhu & Wu, "Alternating Back-Propagation for Generator
Network", AAAI 2017) starts the inferential Langevin chain of each training example from the
latents it reached the last time that example was seen, instead of from noise. This store keeps
those latents: one (unconstrained) value per example and site, written after each chain, read
at the start of the next one, and saved with the guide's state so that a resumed run continues
exactly.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

Latents = Dict[str, torch.Tensor]


class PersistentChains:
    """The last latents of every training example: ``{site: (N, ...)}`` plus which examples were seen.

    Values are stored as the chain holds them (unconstrained, one row per example), in the dtype
    and on the device of the first chain that writes them.

    :param int num_examples: N, the size of the training set; positions index it.
    """

    def __init__(self, num_examples: int):
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
        self.num_examples = num_examples
        self.values: Latents = {}
        self.visited: Optional[torch.Tensor] = None

    def initial(self, positions: torch.Tensor, fresh: Latents) -> Latents:
        """Starting values for the examples at ``positions`` (B,): their stored latents where
        they were seen before, ``fresh`` ({site: (B, ...)}) elsewhere."""
        if self.visited is None:
            return fresh
        index = positions.to(self.visited.device)
        seen = self.visited[index]
        out = {}
        for name, u in fresh.items():
            stored = self.values.get(name)
            if stored is None or stored.shape[1:] != u.shape[1:]:
                raise ValueError(
                    f"persistent chains hold site '{name}' with shape {None if stored is None else tuple(stored.shape[1:])} "
                    f"per example, the model now has {tuple(u.shape[1:])}"
                )
            mask = seen.to(u.device).reshape((-1,) + (1,) * (u.dim() - 1))
            out[name] = torch.where(mask, stored[index].to(device=u.device, dtype=u.dtype), u)
        return out

    def store(self, positions: torch.Tensor, position: Latents) -> None:
        """Record the chains' final latents ({site: (B, ...)}) for the examples at ``positions``."""
        for name, u in position.items():
            if name not in self.values:
                self.values[name] = torch.zeros((self.num_examples,) + u.shape[1:], dtype=u.dtype, device=u.device)
            store = self.values[name]
            store[positions.to(store.device)] = u.detach().to(device=store.device, dtype=store.dtype)
        if self.visited is None:
            device = next(iter(self.values.values())).device
            self.visited = torch.zeros(self.num_examples, dtype=torch.bool, device=device)
        self.visited[positions.to(self.visited.device)] = True

    @property
    def num_visited(self) -> int:
        """How many examples have a stored chain."""
        return 0 if self.visited is None else int(self.visited.sum())

    def state(self) -> dict:
        """A plain dict of tensors (for checkpoints)."""
        return {
            "num_examples": self.num_examples,
            "visited": None if self.visited is None else self.visited.clone(),
            "values": {name: value.clone() for name, value in self.values.items()},
        }

    def load(self, state: dict) -> None:
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(
                f"the saved persistent chains cover {state['num_examples']} examples, this guide {self.num_examples}"
            )
        self.visited = None if state["visited"] is None else state["visited"].clone()
        self.values = {name: value.clone() for name, value in state["values"].items()}
