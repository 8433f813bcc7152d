"""Who a worker runs as: `user:` and `group:` resolved to ids, and whether lb can drop to them. No I/O.

Theory of operation
-------------------
nginx's model. The master keeps its rights: it binds the listeners, runs the new master
of an upgrade, and reads key files only root may read. Each worker drops to
`user`/`group` once it holds what it needs root for (its inherited sockets, its access
log file; the certificates come as bytes from the master) and before it accepts a
connection: the process that parses untrusted bytes holds no more rights than it needs.

The caller reads the user database (lb/privileges.py: pwd, grp) and hands the answers
in as functions; here are the decisions: the uid, the gid and the supplementary groups
(the user's own groups, or only `group` when it is set), and whether the process lb
runs as may take them (only root may become another user).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import ConfigError


@dataclass(frozen=True)
class Account:
    """A user as the user database has it."""
    name: str
    uid: int
    gid: int                       # the primary group


@dataclass(frozen=True)
class Identity:
    """What a worker becomes: setgroups(groups), setgid(gid), setuid(uid), in that order."""
    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def identity(config, find_user: Callable[[str | int], Account | None],
             find_group: Callable[[str | int], int | None],
             groups_of: Callable[[str, int], list[int]]) -> Identity | None:
    """The identity `config.user` and `config.group` name (None when `user` is not set):
    `find_user` and `find_group` look a name or an id up (None: unknown), `groups_of(name,
    gid)` lists a user's groups. Raises ConfigError naming the key path."""
    if config.user is None:
        if config.group is not None:
            raise ConfigError(f"{config.source}: group: a group without a user drops nothing; set user too, "
                              f"got {config.group!r}")
        return None
    account = find_user(config.user)
    if account is None:
        raise ConfigError(f"{config.source}: user: no such user in the user database, got {config.user!r}")
    if config.group is None:
        return Identity(account.name, account.uid, account.gid, tuple(groups_of(account.name, account.gid)))
    gid = find_group(config.group)
    if gid is None:
        raise ConfigError(f"{config.source}: group: no such group in the group database, got {config.group!r}")
    return Identity(account.name, account.uid, gid, (gid,))


def must_drop(config, wanted: Identity | None, uid: int, gid: int) -> bool:
    """Whether a worker of an lb running as uid/gid drops to `wanted`: root does; a user
    that is `wanted` already has nothing to do. Raises ConfigError when lb cannot become it."""
    if wanted is None or uid == 0:
        return wanted is not None
    if (wanted.uid, wanted.gid) == (uid, gid):
        return False
    what = f"user {wanted.user!r} (uid {wanted.uid})" if wanted.uid != uid else f"gid {wanted.gid}"
    raise ConfigError(f"{config.source}: {'user' if wanted.uid != uid else 'group'}: lb runs as uid {uid} "
                      f"gid {gid}, not as root, and cannot become {what}: start it as root, or as that "
                      f"user without user/group")
