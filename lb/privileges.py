"""The user database and the drop itself, for the decisions of lb/core/privileges.py."""

from __future__ import annotations

import grp
import os
import pwd

from .core.privileges import Account, Identity, identity, must_drop


def _find_user(name_or_uid: str | int) -> Account | None:
    try:
        entry = pwd.getpwuid(name_or_uid) if isinstance(name_or_uid, int) else pwd.getpwnam(name_or_uid)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _find_group(name_or_gid: str | int) -> int | None:
    try:
        return (grp.getgrgid(name_or_gid) if isinstance(name_or_gid, int) else grp.getgrnam(name_or_gid)).gr_gid
    except KeyError:
        return None


def lookup(config) -> Identity | None:
    """Whom `user:` and `group:` name (`lb check`). Raises ConfigError for an unknown one."""
    return identity(config, _find_user, _find_group, os.getgrouplist)


def workers_identity(config) -> Identity | None:
    """Whom the workers of this lb drop to; None: they stay as lb is. Raises ConfigError for
    an unknown user or group, or one this process cannot become."""
    wanted = lookup(config)
    return wanted if must_drop(config, wanted, os.geteuid(), os.getegid()) else None


def drop(to: Identity) -> None:
    """Become `to` for good (real, effective and saved ids): groups first, the uid last, as
    only root may set the others. Raises OSError."""
    os.setgroups(list(to.groups))
    os.setgid(to.gid)
    os.setuid(to.uid)

