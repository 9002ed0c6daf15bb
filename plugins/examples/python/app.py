"""Canary routing: requests with `X-Canary: 1` go to the backends named
`canary-*`, all others round-robin over the rest."""
from typing import List, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

# Per instance; rebuilt by `configure` in every new instance.
_canary: List[bool] = []
# Shared by every instance: round-robin positions for each side.
_turn = {}


class Selector(exports.Selector):
    def configure(self, config: List[Tuple[str, str]], backends: List[types.Backend]) -> None:
        global _canary
        for key, _ in config:
            raise Err(f"policy-config.{key}: this policy takes no keys")
        _canary = [b.name.startswith("canary-") for b in backends]
        if not any(_canary):
            raise Err("no backend is named canary-*")
        _turn[True] = host.Counter("canary")
        _turn[False] = host.Counter("stable")

    def select(self, req: types.Request, backends: List[types.BackendState]) -> types.Decision:
        want = req.header("x-canary") == "1"
        eligible = [i for i, b in enumerate(backends) if b.healthy and _canary[i] == want]
        if not eligible:
            raise Err("no healthy backend in this group")
        n = _turn[want].fetch_add(1)
        return types.Decision(backend=eligible[n % len(eligible)], set_cookie=None)
