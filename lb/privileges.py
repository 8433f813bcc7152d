"""The user database and the drop itself, for the decisions of lb/core/privileges.py."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

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


def hand_over(path: str, to: Identity) -> None:
    """Create the file at `path` if it is missing and make it `to`'s, so that a worker that
    dropped to `to` can open it by name (a log file logrotate moved away; nginx does the
    same). Only a regular file with one link, never through a symlink: the folder may be
    writable by `to`, who must not get root to chown another file. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
            raise OSError(errno.EPERM, "not a regular file with a single link", path)
        os.fchown(fd, to.uid, -1)
        os.fchmod(fd, stat.S_IMODE(found.st_mode) | stat.S_IRUSR | stat.S_IWUSR)
    finally:
        os.close(fd)


def hand_over_dir(path: str, to: Identity) -> None:
    """Create the folder at `path` if it is missing (0750) and make it `to`'s, for workers that
    write in it after dropping to `to` (the asset store's copies). Never through a symlink.
    Raises OSError."""
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, to.uid, to.gid)
    finally:
        os.close(fd)
