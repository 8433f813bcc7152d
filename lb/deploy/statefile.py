"""`lb deploy`'s state file (`--state`): the deploy's progress, read at the start and written
atomically after every step, so `--resume` continues from the last one."""

from __future__ import annotations

import json

from ..core.errors import DeployError
from ..files import atomic_write
from .plan import DeployState


def load_deploy_state(path: str) -> DeployState | None:
    """The deploy's progress saved in `path` (`--state`), None when there is none. Raises
    DeployError when the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return DeployState.from_dict(json.load(handle))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read the deploy state {path}: {exc}") from None


def save_deploy_state(path: str, state: DeployState) -> None:
    """Written atomically after every step, so `--resume` continues from the last one."""
    atomic_write(path, json.dumps(state.to_dict(), indent=1))
