"""Health: active checks, passive ejection, slow start.

Theory of operation
-------------------
Pure functions over a `Node` with `now` passed in; the control plane's
`lb.control.checker.Checker` runs the checks and calls them.

- Active checks (`record_check`): `health.rise` passes in a row make a node
  `up`, `health.fall` failures in a row make it `down`. A check passes on a
  2xx/3xx (`verdict`).
- A node may ask to be drained (HAProxy's `disable-on-404`): an answer whose
  status is in `health.drain_on`, or that carries `X-Lb-Drain: 1`, makes it
  `drain_requested` at once: no new requests, those in flight finish, its admin
  state untouched. The node answered, so this is no failure (never toward
  `fall` or ejection); `rise` passing checks in a row bring it back `up` through
  slow start (a node flapping between the two answers does not flap in and
  out). A node that stops answering while it drains goes `down` after `fall`
  failures, as an `up` one does. As with ejection, the last node of a version
  taking traffic is not drained at its own request (`apply_check`): its
  version's users would be sent back to the old one, or, every node asking at
  once (a wrong `health.path` answering 404), everyone would get a 503; it is
  kept, and the caller says so (`CheckOutcome.kept`).
- The version check (`apply_check`): a passing check whose X-Backend-Version is
  not the node's label means one of two things. During a version move
  (`Pool.move_in_progress`: a label set at run time not yet confirmed, or a
  declared target not yet reached) the node is the wrong one: it is
  `version_mismatch` at once and gets no traffic, so a deploy that forgot to
  update a node can never pass as updated. With no move in progress the label
  is the wrong one (a config file that a deploy left behind): the node is
  adopted, relabelled with what it reports, and keeps serving; the caller says
  so loudly. Either way a version check never takes the whole pool out: when
  no node would take traffic, the nodes kept out only for their version are
  adopted (`unstrand`), as the last node of a version is never ejected.
- Passive ejection (`record_response`): `passive.failures` consecutive connect
  errors or 5xx eject the node for `passive.eject`, doubled each time it is
  ejected again soon after (capped at `MAX_EJECT_DOUBLINGS`). When that time is
  over the node is `down` and must pass `rise` checks. The last node of a
  version that takes traffic is never ejected: ejecting it would strand every
  client of that version instead of sparing them one bad node. Nor is more than
  `passive.max_ejected` of a version's capacity (the summed weights of its
  nodes in service) ejected at once, except that, as in Envoy, one node may
  always be ejected when none of its version is: a cap below one node's share
  would otherwise turn ejection off for small versions.
- Failure rate (`record_window`, Envoy's failure-percentage ejection): a node
  that fails every other request never fails `passive.failures` in a row, so
  each node's requests and failures are also counted over tumbling windows of
  `passive.window`; one that served `passive.min_requests` or more in a window,
  `passive.failure_rate` or more of them failed, is ejected under the same rules
  (the last node, the cap, the doubling).
- Panic (`panic`, Envoy's panic threshold): when no node at all takes traffic
  and some `ready` node fails its checks, the pool is in panic and those nodes
  are routed to (`Node.panic_candidate`): a failing check may be wrong, a 503
  to everyone is certain. An operator's drain or maint, and a node's own drain
  request, are still honoured. `health.panic: off` answers 503 instead.
- Returning nodes (`start_checking`): a node put back with `ready` is `down`
  until it passes `rise` checks, then its effective weight ramps linearly from
  `SLOW_START_FLOOR` to 100 % over `slow_start` (`ramp`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .nodes import DOWN, DRAIN_REQUESTED, DRAINING, EJECTED, READY, UP, VERSION_MISMATCH

MAX_EJECT_DOUBLINGS = 4          # at most 16 x passive.eject
SLOW_START_FLOOR = 0.1

PASS, FAIL, DRAIN = "pass", "fail", "drain"     # what a check's answer says


def verdict(status: int, drain_header: bool, drain_on: tuple[int, ...]) -> str:
    """What one check answer says: DRAIN (a `drain_on` status, or `X-Lb-Drain: 1`), PASS
    (2xx or 3xx) or FAIL."""
    if drain_header or status in drain_on:
        return DRAIN
    return PASS if 200 <= status < 400 else FAIL


def record_check(backend, ok: bool, reported_version: str | None, now: float, rise: int,
                 fall: int, drain: bool = False) -> bool:
    """Apply one active check result (`drain`: the node asked to be drained, see the
    header). Returns True when the node's health changed."""
    state = backend.hstate
    before = backend.health
    if backend.health == EJECTED:
        return False                      # ejection runs its course first
    if drain:
        state.fails = 0
        state.passes = 0                  # back only after `rise` passing checks in a row
        backend.health = DRAIN_REQUESTED
        return backend.health != before
    if ok and reported_version is not None:
        state.reported_version = reported_version
    if ok and reported_version is not None and reported_version != backend.version:
        backend.health = VERSION_MISMATCH
        state.passes = 0
        return backend.health != before
    if ok:
        backend.version_pending = False   # confirmed (or nothing to compare: taken as said)
        state.fails = 0
        state.passes += 1
        if backend.health != UP and state.passes >= rise:
            backend.health = UP
            state.passive_fails = 0
            state.ramp_start = now
    else:
        state.passes = 0
        state.fails += 1
        if backend.health == VERSION_MISMATCH or \
                (backend.health in (UP, DRAIN_REQUESTED) and state.fails >= fall):
            backend.health = DOWN
    return backend.health != before


def record_response(backend, failed: bool, now: float, failures: int, eject_s: float,
                    backends, max_ejected: float = 1.0) -> bool:
    """Apply one proxied outcome (connect error or 5xx = failed). True when ejected."""
    state = backend.hstate
    if not failed:
        state.passive_fails = 0
        return False
    state.passive_fails += 1
    if failures == 0 or state.passive_fails < failures or backend.health != UP:
        return False
    if not may_eject(backend, backends, max_ejected):
        return False
    _eject(backend, now, eject_s)
    return True


def record_window(backend, requests: int, failures: int, now: float, passive, backends) -> bool:
    """Count one report's requests and failures (connect errors, 5xx) into the node's
    current `passive.window`; when the window is over, eject the node if it served
    `min_requests` and `failure_rate` of them failed (see the header). True when ejected."""
    state = backend.hstate
    if state.window_start is None:
        state.window_start = now
    state.window_requests += requests
    state.window_failures += failures
    if now - state.window_start < passive.window:
        return False
    served, failed = state.window_requests, state.window_failures
    state.window_start, state.window_requests, state.window_failures = now, 0, 0
    if passive.failure_rate <= 0 or served < passive.min_requests or failed < passive.failure_rate * served \
            or backend.health != UP or not may_eject(backend, backends, passive.max_ejected):
        return False
    _eject(backend, now, passive.eject)
    return True


def _eject(backend, now: float, eject_s: float) -> None:
    """Out for eject_s, doubled each time it comes back and is ejected again soon."""
    state = backend.hstate
    recent = now - state.last_ejection_end < 10 * eject_s
    state.ejections = min(state.ejections + 1, MAX_EJECT_DOUBLINGS + 1) if recent else 1
    state.ejected_until = now + eject_s * 2 ** (state.ejections - 1)
    state.passive_fails = 0
    backend.health = EJECTED


def may_eject(backend, backends, max_ejected: float) -> bool:
    """Whether ejecting `backend` keeps its version within the rules of the header: never its
    last node taking traffic; at most `max_ejected` of its capacity, or one node when none of
    its version is ejected."""
    peers = [peer for peer in backends if peer.version == backend.version and peer is not backend]
    if not any(peer.takes_traffic for peer in peers):
        return False
    if max_ejected <= 0:
        return False                      # 0%: passive ejection off
    in_service = [peer for peer in peers if peer.admin_state == READY and peer.weight > 0]
    ejected = sum(peer.weight for peer in in_service if peer.health == EJECTED)
    if ejected == 0:
        return True
    capacity = sum(peer.weight for peer in in_service) + backend.weight
    return ejected + backend.weight <= max_ejected * capacity + 1e-9


def panic(backends, enabled: bool) -> bool:
    """Whether the pool is in panic: enabled, no node takes traffic, and some node would be
    routed to in panic (see the header)."""
    if not enabled:
        return False
    nodes = list(backends)
    return not any(node.takes_traffic for node in nodes) and any(node.panic_candidate for node in nodes)


def end_ejections(backends, now: float) -> list:
    """Ejected nodes whose time is over become `down` (to be checked again)."""
    ended = []
    for backend in backends:
        if backend.health == EJECTED and now >= backend.hstate.ejected_until:
            backend.health = DOWN
            backend.hstate.passes = 0
            backend.hstate.last_ejection_end = now
            ended.append(backend)
    return ended


def start_checking(backend) -> None:
    """A node put back into service is not used until it passes `rise` checks."""
    backend.health = DOWN
    backend.hstate.passes = 0
    backend.hstate.fails = 0


def ramp(backend, now: float, slow_start_s: float) -> bool:
    """Set the node's slow-start factor for `now`. True while it is still ramping."""
    start = backend.hstate.ramp_start
    if start is None or slow_start_s <= 0:
        backend.set_ramp(1.0)
        return False
    progress = (now - start) / slow_start_s
    if progress >= 1.0:
        backend.hstate.ramp_start = None
        backend.set_ramp(1.0)
        return False
    backend.set_ramp(SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * max(progress, 0.0))
    return True


def should_check(backend) -> bool:
    """Checks run for ready and draining nodes, not for drained or maint ones."""
    return backend.admin_state in (READY, DRAINING)


NO_MOVE = "no version move is in progress"
NOTHING_ELSE = "no node would take traffic otherwise"


@dataclass(frozen=True)
class Adoption:
    """A node relabelled with the version its check reported, and why."""
    name: str
    labelled: str
    reported: str
    why: str


@dataclass(frozen=True)
class CheckOutcome:
    changed: bool                     # the checked node's health changed (adoptions change labels)
    adopted: tuple[Adoption, ...]     # nodes relabelled (the checked one, or every stranded one)
    move: str | None                  # the version move in progress, as it was before the check
    kept: bool = False                # it asked to be drained, but is its version's last node in service


def apply_check(pool, backend, ok: bool, reported_version: str | None, now: float, rise: int,
                fall: int, drain: bool = False) -> CheckOutcome:
    """One active check with the version rule (see the header) over the whole pool. A drain
    request (`drain`) is no passing check: it confirms and adopts no version."""
    kept = drain and last_of_its_version(pool, backend)
    if kept:
        drain = False                     # it answered: a pass, and it keeps serving (see the header)
        ok = True
    ok = ok and not drain
    move = pool.move_in_progress()
    adopted = []
    if ok and reported_version is not None and reported_version != backend.version and move is None:
        adopted.append(Adoption(backend.name, backend.version, reported_version, NO_MOVE))
        pool.relabel(backend, reported_version, pending=False)
    changed = record_check(backend, ok, reported_version, now, rise, fall, drain)
    adopted += unstrand(pool, now)
    return CheckOutcome(changed, tuple(adopted), move, kept)


def last_of_its_version(pool, backend) -> bool:
    """Whether `backend` takes traffic and no other node of its version does."""
    return backend.takes_traffic and not any(peer.takes_traffic for peer in pool.backends.values()
                                             if peer is not backend and peer.version == backend.version)


def unstrand(pool, now: float) -> list[Adoption]:
    """When no node takes traffic, adopt every ready node kept out only by its version: a
    check meant to catch one wrong node must not take the whole pool out."""
    nodes = pool.backends.values()
    if any(node.takes_traffic for node in nodes):
        return []
    adopted = []
    for node in nodes:
        reported = node.hstate.reported_version
        if node.admin_state == READY and node.health == VERSION_MISMATCH and reported is not None:
            adopted.append(Adoption(node.name, node.version, reported, NOTHING_ELSE))
            pool.relabel(node, reported, pending=False)
            node.health = UP
            node.hstate.passes = 0
            node.hstate.ramp_start = now
    return adopted
