"""Real components the tests need, from Debian's packages (tests/e2e/prometheus.py, etcd.py,
browser.py): installed by the test set-up itself when missing, so a fresh machine needs
nothing by hand."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

INSTALL_TIMEOUT_S = 600.0


def ensure_installed(binary: str, package: str, service: str) -> str:
    """`binary`'s path; installs `package` first when it is missing (as root, or `sudo -n`:
    never a password prompt in a test run), and stops the system `service` the package may
    start: the tests run instances of their own."""
    return ensure_binaries({binary: package}, services=(service,))[binary]


def ensure_binaries(packages: dict[str, str], services: tuple[str, ...] = ()) -> dict[str, str]:
    """Each binary's path (`packages`: {binary: the package that brings it}); the packages of
    the missing binaries are installed first in one apt-get, and then the system `services`
    they may start are stopped. Nothing happens when every binary is there."""
    missing = [package for binary, package in packages.items() if not shutil.which(binary)]
    if missing:
        _apt_install(missing)
        for service in services:
            _stop(service)
    found = {binary: shutil.which(binary) for binary in packages}
    absent = [f"{binary} ({packages[binary]})" for binary, path in found.items() if not path]
    assert not absent, f"apt-get installed {', '.join(missing)}, but these binaries are not on PATH: {', '.join(absent)}"
    return found


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def _apt_install(packages: list[str]) -> None:
    """apt-get install, once more after an apt-get update if the package lists are stale."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*_sudo(), "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S).returncode != 0:
        subprocess.run([*_sudo(), "apt-get", "update", "-qq"], env=env, capture_output=True,
                       timeout=INSTALL_TIMEOUT_S, check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S, check=True)


def _stop(service: str) -> None:
    for stop in (["systemctl", "stop", service], [f"/etc/init.d/{service}", "stop"]):
        if shutil.which(stop[0]) or Path(stop[0]).exists():
            subprocess.run([*_sudo(), *stop], capture_output=True, timeout=60)
