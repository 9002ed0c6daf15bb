"""Canary routing that backs off: requests with `X-Canary: 1` go to the
backends named `canary-*`, all others round-robin over the rest. A backend
that answers 5xx or fails is skipped for `backoff` seconds
(`policy-config = { backoff = "10" }`, default 10) while its side has
another healthy backend."""
from typing import List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, request, types

# Per instance; rebuilt by `configure` in every new instance.
_canary: List[bool] = []
_avoid_until: List[int] = []
_backoff_ns = 10 * 1_000_000_000
_health: List[types.BackendHealth] = []
# Shared by every instance: round-robin positions for each side.
_turn = {}


def _is_canary(backends: List[types.Backend]) -> List[bool]:
    return [b.name.startswith("canary-") for b in backends]


class Selector(exports.Selector):
    def configure(self, config: List[Tuple[str, str]], backends: List[types.Backend]) -> None:
        global _canary, _avoid_until, _backoff_ns
        for key, value in config:
            if key != "backoff":
                raise Err(f"policy-config.{key}: this policy takes only `backoff`")
            if not value.isdigit():
                raise Err(f"policy-config.backoff: expected whole seconds, got {value!r}")
            _backoff_ns = int(value) * 1_000_000_000
        _canary = _is_canary(backends)
        if not any(_canary):
            raise Err("no backend is named canary-*")
        _avoid_until = [0] * len(backends)
        _turn[True] = host.counter("canary")
        _turn[False] = host.counter("stable")

    def select(self, health: Optional[List[types.BackendHealth]]) -> int:
        global _health
        if health is not None:  # None: the same as last time
            _health = health
        want = request.header("x-canary") == "1"
        side = [i for i, b in enumerate(_health) if b.healthy and _canary[i] == want]
        if not side:
            raise Err("no healthy backend in this group")
        now = host.now_ns()
        # Prefer the backends not backed off; when all of a side are, use them anyway.
        eligible = [i for i in side if _avoid_until[i] <= now] or side
        n = host.counter_add(_turn[want], 1)
        return eligible[n % len(eligible)]


class Observer(exports.Observer):
    def observe(self, outcomes: List[types.Outcome]) -> None:
        for o in outcomes:
            r = o.result
            bad = isinstance(r, types.AttemptResult_Failed) or r.value >= 500
            if bad and o.backend < len(_avoid_until):
                _avoid_until[o.backend] = o.ended_ns + _backoff_ns


class Membership(exports.Membership):
    def update(self, backends: List[types.Backend]) -> None:
        global _canary, _avoid_until
        _canary = _is_canary(backends)
        _avoid_until = [0] * len(backends)
