"""Values that every layer reads and writes: addresses, durations, names, version labels.

The config (config.py) checks its fields with these, and so do the admin commands, the
state file, the deploy's arguments and the pinning cookie: one rule for each kind of
value, wherever it comes from. Each parser raises InvalidValue, whose message says what
was expected; the caller adds where the value was (a key path, a command).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .errors import InvalidValue

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_DURATION_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Host names (and so IPv4 literals): dot-separated labels of letters, digits and inner
# hyphens (RFC 1123), and underscores, which container service names use.
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*$")
# Versions travel in a cookie value: keep them to a short token.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


def format_hostport(host: str, port: int) -> str:
    """The inverse of parse_hostport: an IPv6 literal goes in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_name(value: Any) -> str:
    """A backend name. Raises InvalidValue."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidValue(f"expected a name of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def check_version_label(value: Any) -> str:
    """A version label (it travels in a cookie). Raises InvalidValue."""
    if not isinstance(value, str) or not VERSION_RE.match(value):
        raise InvalidValue(f"expected a version label of letters, digits, '.', '_' or '-' (max 32), "
                           f"got {value!r}")
    return value


def check_host_name(value: Any) -> str:
    """A DNS host name (a TLS server name, say). Raises InvalidValue."""
    if not isinstance(value, str) or not _HOST_RE.match(value):
        raise InvalidValue(f"expected a host name, got {value!r}")
    return value


def parse_duration(value: Any) -> float:
    """'500ms', '2s', '1m', '1h', '1d' or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise InvalidValue(f"expected a duration like 500ms, 2s or 1m, got {value!r}")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    match = _DURATION_RE.match(str(value).strip())
    if not match:
        raise InvalidValue(f"expected a duration like 500ms, 2s or 1m, got {value!r}")
    return float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]


_SIZE_RE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|kB|MB|GB)?$")
_SIZE_UNIT = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 1000, "MB": 10 ** 6,
              "GB": 10 ** 9}


def parse_size(value: Any) -> int:
    """'256MiB', '8MiB', '4KiB', '1GB' or a plain number of bytes -> bytes."""
    if isinstance(value, bool):
        raise InvalidValue(f"expected a size like 256MiB, 8KiB or 0, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE_RE.match(str(value).strip())
    if not match:
        raise InvalidValue(f"expected a size like 256MiB, 8KiB or 0, got {value!r}")
    return int(match.group(1)) * _SIZE_UNIT[match.group(2)]


def parse_hostport(value: Any) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') -> (host, port). HOST is a DNS name or an IP literal:
    an address reaches shell commands (`lb deploy --update 'ssh {host} ...'`), so nothing
    else, and no leading '-' (an ssh option), ever passes."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidValue(f"expected HOST:PORT, got {value!r}")
    if not _valid_host(host, bracketed):
        raise InvalidValue(f"expected HOST:PORT with HOST a host name or IP address, got {value!r}")
    return host, int(port)


def _valid_host(host: str, bracketed: bool) -> bool:
    if bracketed:
        try:
            return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address) and "%" not in host
        except ValueError:
            return False
    return bool(_HOST_RE.match(host))


_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|kB|MB)/s$")
_RATE_UNIT = {"B": 1, "KiB": 1024, "MiB": 1024 * 1024, "kB": 1000, "MB": 1000 * 1000}


def parse_rate(value: Any) -> float:
    """'1KiB/s', '500B/s', '2MB/s' -> bytes per second; 0 turns the check off."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    match = _RATE_RE.match(str(value).strip())
    if not match:
        raise InvalidValue(f"expected a rate like 1KiB/s, 500B/s or 0 (off), got {value!r}")
    return float(match.group(1)) * _RATE_UNIT[match.group(2)]


def parse_cidr_list(value: Any) -> tuple[str, ...]:
    """A list of CIDRs ('10.0.0.0/8', '::1/128'); each checked, kept as text."""
    if not isinstance(value, list):
        raise InvalidValue(f"expected a list of CIDRs like 10.0.0.0/8, got {value!r}")
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise InvalidValue(f"expected a CIDR like 10.0.0.0/8, got {item!r}") from None
    return tuple(str(item) for item in value)
