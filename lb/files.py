"""The file operations several parts of lb share: reading a config, writing a file atomically,
the asset store's copies (skew protection: data planes write and read them, the control
plane deletes them).

The embedded default config ships inside the package (`lb/data/lb.yaml`, read
with importlib.resources, so it works from a wheel). Its relative runtime paths
(admin socket, state file) resolve against the current directory, never inside
the installed package: `lb serve` with no `-c` keeps them in `./run/`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib import resources

from .core.config import Config, parse_config
from .core.errors import ConfigError

EMBEDDED = "<embedded lb.yaml>"


def embedded_config_text() -> str:
    return resources.files("lb").joinpath("data", "lb.yaml").read_text(encoding="utf-8")


def load_config(path: str | None, runtime_dir: str | None = None) -> Config:
    """The config file at `path`, or the embedded default when None (its relative paths
    resolve against `runtime_dir`, the current directory when None).

    Raises ConfigError naming file, key path and value (also for an unreadable file).
    """
    if path is None:
        return parse_config(embedded_config_text(), EMBEDDED, runtime_dir=runtime_dir or os.getcwd())
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    return parse_config(text, os.path.abspath(path))


def atomic_write(path: str, text: str | bytes, mode: int = 0o600) -> None:
    """Replace `path` with `text` so that a reader sees the old file or the new, never
    half of one (temp file, fsync, rename). The temp file is made by mkstemp (a new
    name, O_EXCL: never a symlink someone left there), mode 0600 unless `mode` says
    otherwise (a config file keeps its own). Raises OSError."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# -- the asset store: content-addressed copies beside the state file -----------------------------
def store_dir(config: Config) -> str:
    """Where the stored copies of assets live: beside the state file (`lb.state.assets/`)."""
    return config.resolve(config.state_file) + ".assets"


def write_copy(directory: str, body: bytes) -> str:
    """Store `body` under its sha256 (atomic_write); returns the digest. Run in a thread."""
    digest = hashlib.sha256(body).hexdigest()
    final = os.path.join(directory, digest)
    if not os.path.exists(final):
        atomic_write(final, body, 0o640)
    return digest


def read_copy(directory: str, digest: str) -> bytes | None:
    """A stored copy, or None when it is missing or does not match its digest (then it is
    deleted: a later response writes it again). Run in a thread."""
    path = os.path.join(directory, digest)
    try:
        with open(path, "rb") as file:
            body = file.read()
    except OSError:
        return None
    if hashlib.sha256(body).hexdigest() != digest:
        delete_copies(directory, (digest,))
        return None
    return body


def delete_copies(directory: str, digests) -> None:
    for digest in digests:
        try:
            os.unlink(os.path.join(directory, digest))
        except FileNotFoundError:
            pass
