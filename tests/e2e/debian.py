"""Real components the tests need, from Debian's packages (tests/e2e/prometheus.py, etcd.py):
installed by the test set-up itself when missing, so a fresh machine needs nothing by hand."""

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
    found = shutil.which(binary)
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    install = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, capture_output=True,
                       timeout=INSTALL_TIMEOUT_S, check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S, check=True)
    for stop in (["systemctl", "stop", service], [f"/etc/init.d/{service}", "stop"]):
        if shutil.which(stop[0]) or Path(stop[0]).exists():
            subprocess.run([*sudo, *stop], capture_output=True, timeout=60)
    found = shutil.which(binary)
    assert found, f"apt-get installed {package}, but no {binary} binary is on PATH"
    return found
