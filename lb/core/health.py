"""Health: active checks, passive ejection, slow start.

Theory of operation
-------------------
Pure functions over a `Node` with `now` passed in; the control plane's
`lb.control.checker.Checker` runs the checks and calls them.

- Active checks (`record_check`): `health.rise` passes in a row make a node
  `up`, `health.fall` failures in a row make it `down`. A check passes on a
  2xx/3xx.
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
  client of that version instead of sparing them one bad node.
- Returning nodes (`start_checking`): a node put back with `ready` is `down`
  until it passes `rise` checks, then its effective weight ramps linearly from
  `SLOW_START_FLOOR` to 100 % over `slow_start` (`ramp`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .nodes import DOWN, DRAINING, EJECTED, READY, UP, VERSION_MISMATCH

MAX_EJECT_DOUBLINGS = 4          # at most 16 x passive.eject
SLOW_START_FLOOR = 0.1


def record_check(backend, ok: bool, reported_version: str | None, now: float, rise: int,
                 fall: int) -> bool:
    """Apply one active check result. Returns True when the node's health changed."""
    state = backend.hstate
    before = backend.health
    if backend.health == EJECTED:
        return False                      # ejection runs its course first
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
        if backend.health == VERSION_MISMATCH or (backend.health == UP and state.fails >= fall):
            backend.health = DOWN
    return backend.health != before


def record_response(backend, failed: bool, now: float, failures: int, eject_s: float,
                    backends) -> bool:
    """Apply one proxied outcome (connect error or 5xx = failed). True when ejected."""
    state = backend.hstate
    if not failed:
        state.passive_fails = 0
        return False
    state.passive_fails += 1
    if failures == 0 or state.passive_fails < failures or backend.health != UP:
        return False
    if not any(peer is not backend and peer.version == backend.version and peer.takes_traffic
               for peer in backends):
        return False                      # the last node of its version stays
    recent = now - state.last_ejection_end < 10 * eject_s
    state.ejections = min(state.ejections + 1, MAX_EJECT_DOUBLINGS + 1) if recent else 1
    state.ejected_until = now + eject_s * 2 ** (state.ejections - 1)
    state.passive_fails = 0
    backend.health = EJECTED
    return True


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


def apply_check(pool, backend, ok: bool, reported_version: str | None, now: float, rise: int,
                fall: int) -> CheckOutcome:
    """One active check with the version rule (see the header) over the whole pool."""
    move = pool.move_in_progress()
    adopted = []
    if ok and reported_version is not None and reported_version != backend.version and move is None:
        adopted.append(Adoption(backend.name, backend.version, reported_version, NO_MOVE))
        pool.relabel(backend, reported_version, pending=False)
    changed = record_check(backend, ok, reported_version, now, rise, fall)
    adopted += unstrand(pool, now)
    return CheckOutcome(changed, tuple(adopted), move)


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
