"""YAML config -> frozen dataclasses, one per section.

Every section is a dataclass whose fields carry a parser in their metadata
(`_field(default, parse)`); `_build` walks a mapping against a dataclass, so the
schema lives in the dataclass definitions alone. Every error names the file,
the key path and the value: `lb.yaml: backends[2].address: expected HOST:PORT, got '9001'`.
Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError, InvalidValue
from .values import (check_host_name, check_name, check_version_label, format_hostport, parse_cidr_list,
                     parse_duration, parse_hostport, parse_rate, parse_size)

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")       # an HTTP field name (RFC 9110)


WEIGHT_MAX = 1000
MAX_CONNS_MAX = 100000


def parse_weight_value(value: Any) -> int:
    """A backend weight, 0..WEIGHT_MAX. Raises InvalidValue."""
    return _int_range(0, WEIGHT_MAX)(value)


def parse_max_conns_value(value: Any) -> int:
    """A backend's max_conns, 0..MAX_CONNS_MAX (0: no cap). Raises InvalidValue."""
    return _int_range(0, MAX_CONNS_MAX)(value)


def _bool(value: Any) -> bool:
    # YAML 1.1 reads on/off/yes/no as booleans already.
    if not isinstance(value, bool):
        raise InvalidValue(f"expected true or false, got {value!r}")
    return value


TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
ALPN_PROTOCOLS = ("h2", "http/1.1")


def _alpn_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(item not in ALPN_PROTOCOLS for item in value) \
            or len(set(value)) != len(value):
        raise InvalidValue(f"expected a list of protocols from {', '.join(ALPN_PROTOCOLS)}, got {value!r}")
    return tuple(value)


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidValue(f"expected an integer from {low} to {high}, got {value!r}")
        return value
    return parse


def _float_range(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise InvalidValue(f"expected a number from {low} to {high}, got {value!r}")
        return float(value)
    return parse


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise InvalidValue(f"expected one of {', '.join(choices)}, got {value!r}")
        return value
    return parse


def _matching(pattern: re.Pattern, what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise InvalidValue(f"expected {what}, got {value!r}")
        return value
    return parse


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"expected a non-empty string, got {value!r}")
    return value


def _auto_or_bool(value: Any) -> str | bool:
    if value != "auto" and not isinstance(value, bool):
        raise InvalidValue(f"expected auto, true or false, got {value!r}")
    return value


def _log_target(value: Any) -> str:
    # YAML 1.1 reads a bare `off` as False; DESIGN.md writes `access_log: off`.
    if value is False:
        return "off"
    return _text(value)


WORKERS_MAX = 64
LISTEN_BACKLOG = 2048      # the master's listen(); a worker serving the socket says it again


def _workers(value: Any) -> int:
    """`auto` (0: the CPUs lb may run on, counted at start) or a count of worker processes."""
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= WORKERS_MAX:
        raise InvalidValue(f"expected auto or a whole number from 1 to {WORKERS_MAX}, got {value!r}")
    return value


_ACCOUNT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")     # POSIX user and group names


def _account(value: Any) -> str | int | None:
    """`user:` or `group:`: a name or a numeric id (looked up when lb starts), or null."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32 - 1:
        return value
    if isinstance(value, str) and value.isdigit():
        return _account(int(value))
    if not isinstance(value, str) or not _ACCOUNT_RE.match(value):
        raise InvalidValue(f"expected a user or group name, or a numeric id, got {value!r}")
    return value


def _file_mode(value: Any) -> int:
    text = str(value)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise InvalidValue(f"expected an octal file mode like \"0600\", got {value!r}")
    return int(text, 8)


def _url_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " \r\n"):
        raise InvalidValue(f"expected a path starting with '/', got {value!r}")
    return value


def _percent(value: Any) -> float:
    """'50%' -> 0.5 (0% to 100%)."""
    text = str(value).strip() if isinstance(value, str) else ""
    try:
        fraction = float(text[:-1]) / 100 if text.endswith("%") else None
    except ValueError:
        fraction = None
    if fraction is None or not 0.0 <= fraction <= 1.0:
        raise InvalidValue(f"expected a percentage from 0% to 100%, like 50%, got {value!r}")
    return fraction


def _drain_statuses(value: Any) -> tuple[int, ...]:
    """health.drain_on: statuses from 300 to 599 (a 2xx is a passing check; [] turns it off)."""
    if not isinstance(value, list) or any(isinstance(item, bool) or not isinstance(item, int) or
                                          not 300 <= item <= 599 for item in value):
        raise InvalidValue(f"expected a list of HTTP statuses from 300 to 599, like [404], got {value!r}")
    return tuple(value)


def _field(default: Any, parse: Callable[[Any], Any]) -> Any:
    """A key with its default; a default of None makes the key required."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata={"parse": parse})
    return field(default=default, metadata={"parse": parse})


def _optional(parse: Callable[[Any], Any]) -> Any:
    """A key that may be left out (None)."""
    return field(default=None, metadata={"parse": parse, "optional": True})


def _list_field(default: Any, build_list: Callable[[Any, str, str], Any]) -> Any:
    """A key whose value is a list of sections: `build_list(raw, key_path, source)` builds
    each item and names the item's index in its errors."""
    return field(default=default, metadata={"parse": build_list, "list": True})


@dataclass(frozen=True)
class CertConfig:
    cert: str = _field(None, _text)          # a PEM file: the certificate, then its chain
    key: str = _field(None, _text)           # a PEM file: its private key


def _cert_list(raw: Any, path: str, source: str) -> tuple[CertConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: {path}: expected a list of {{cert: FILE, key: FILE}}, got {raw!r}")
    return tuple(build(CertConfig, item, f"{path}[{i}]", source) for i, item in enumerate(raw))


YEAR_S = 365 * 86400.0
# Mozilla's "intermediate" TLS 1.2 list: forward secrecy and AEAD only (no CBC: LUCKY13).
# Mozilla also lists DHE-RSA-AES128/256-GCM and DHE-RSA-CHACHA20; lb sets no DH parameters,
# so OpenSSL could never choose them, and they are left out. TLS 1.3 suites are not set here.
INTERMEDIATE_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


def _max_age(value: Any) -> float:
    """A duration, or whole years ('1y': 365 days, as hstspreload.org counts)."""
    match = re.fullmatch(r"(\d+)y", value.strip()) if isinstance(value, str) else None
    if match:
        return int(match.group(1)) * YEAR_S
    try:
        return parse_duration(value)
    except InvalidValue:
        raise InvalidValue(f"expected a duration like 1y, 180d or 1h, got {value!r}") from None


@dataclass(frozen=True)
class HstsConfig:
    """Strict-Transport-Security, on every response of a TLS listener."""
    max_age: float = _field(YEAR_S, _max_age)
    include_subdomains: bool = _field(False, _bool)
    preload: bool = _field(False, _bool)

    @property
    def header_value(self) -> bytes:
        return (b"max-age=%d" % self.max_age + (b"; includeSubDomains" if self.include_subdomains else b"")
                + (b"; preload" if self.preload else b""))


@dataclass(frozen=True)
class ListenerTlsConfig:
    certs: tuple[CertConfig, ...] = _list_field(None, _cert_list)   # chosen by SNI; the first is the default
    min_version: str = _field("TLSv1.2", _one_of(*TLS_VERSIONS))
    alpn: tuple[str, ...] = _field(("h2", "http/1.1"), _alpn_list)      # lb prefers the first the client offers
    ciphers: str = _field(INTERMEDIATE_CIPHERS, _text)     # OpenSSL's syntax; lb/tls.py checks it at load
    hsts: HstsConfig | None = _optional(HstsConfig)        # off unless set


@dataclass(frozen=True)
class ListenerConfig:
    address: tuple[str, int] = _field(None, parse_hostport)
    tls: ListenerTlsConfig | None = _optional(ListenerTlsConfig)
    redirect_https: bool = _field(False, _bool)              # every request: 308 to https://
    http2: bool = _field(False, _bool)       # a plain listener: HTTP/2 with prior knowledge (h2c) too

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


def _check_listener(listener: ListenerConfig, where: str) -> None:
    """The rules between a listener's keys. Raises ConfigError."""
    if listener.tls is not None and listener.redirect_https:
        raise ConfigError(f"{where}.redirect_https: a TLS listener serves HTTPS itself, got true")
    if listener.tls is not None and listener.http2:
        raise ConfigError(f"{where}.http2: a TLS listener offers HTTP/2 by tls.alpn, got true")
    if listener.redirect_https and listener.http2:
        raise ConfigError(f"{where}.http2: a redirect_https listener answers only 308; "
                          "h2c on it would bypass the redirect, got true")
    hsts = listener.tls.hsts if listener.tls is not None else None
    if hsts is not None and hsts.preload and (not hsts.include_subdomains or hsts.max_age < YEAR_S):
        raise ConfigError(f"{where}.tls.hsts.preload: hstspreload.org requires include_subdomains: true "
                          f"and max_age of at least 1y, got include_subdomains: {str(hsts.include_subdomains).lower()}, "
                          f"max_age: {hsts.max_age:.0f}s")


def _listen_list(raw: Any, path: str, source: str) -> tuple[ListenerConfig, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ConfigError(f"{source}: {path}: expected HOST:PORT or a list of listeners, got {raw!r}")
    listeners = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if isinstance(raw, list) else path
        if isinstance(item, dict):
            listener = build(ListenerConfig, item, where, source)
        else:
            try:
                listener = ListenerConfig(address=parse_hostport(item))
            except InvalidValue as exc:
                raise ConfigError(f"{source}: {where}: {exc}") from None
        _check_listener(listener, f"{source}: {where}")
        if any(other.address == listener.address for other in listeners):
            raise ConfigError(f"{source}: {where}.address: listed twice, got {format_hostport(*listener.address)!r}")
        listeners.append(listener)
    return tuple(listeners)


@dataclass(frozen=True)
class BackendTlsConfig:
    verify: bool = _field(True, _bool)        # the backend's certificate, against `ca`
    ca: str | None = _optional(_text)         # a PEM file of CAs; the system's when left out
    sni: str | None = _optional(check_host_name)   # the name sent and verified; the address's host by default


@dataclass(frozen=True)
class AdminConfig:
    socket: str = _field("run/lb.sock", _text)
    mode: int = _field(0o600, _file_mode)


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = _field(("127.0.0.1", 9900), parse_hostport)


@dataclass(frozen=True)
class BackendConfig:
    name: str = _field(None, check_name)
    address: tuple[str, int] = _field(None, parse_hostport)
    version: str = _field("v1", check_version_label)
    weight: int = _field(100, parse_weight_value)
    max_conns: int = _field(0, parse_max_conns_value)       # requests at once; 0: no cap (HAProxy maxconn)
    tls: BackendTlsConfig | None = _optional(BackendTlsConfig)

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]


def _build_backends(raw: Any, path: str, source: str) -> tuple[BackendConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: {path}: expected a list of backends, got {raw!r}")
    backends = tuple(build(BackendConfig, item, f"{path}[{i}]", source) for i, item in enumerate(raw))
    seen: dict[tuple[str, Any], int] = {}
    for i, backend in enumerate(backends):
        for key, value in (("name", backend.name), ("address", backend.address)):
            if (key, value) in seen:
                raise ConfigError(f"{source}: {path}[{i}].{key}: duplicate of "
                                  f"{path}[{seen[key, value]}], got {raw[i][key]!r}")
            seen[key, value] = i
    return backends


@dataclass(frozen=True)
class HealthConfig:
    path: str = _field("/health", _url_path)
    interval: float = _field(1.0, parse_duration)
    timeout: float = _field(1.0, parse_duration)
    rise: int = _field(2, _int_range(1, 100))
    fall: int = _field(3, _int_range(1, 100))
    drain_on: tuple[int, ...] = _field((404,), _drain_statuses)   # or X-Lb-Drain: 1: the node asks to drain
    panic: bool = _field(True, _bool)          # no node up at all: route to the failing ones, not 503


@dataclass(frozen=True)
class PassiveConfig:
    failures: int = _field(3, _int_range(0, 1000))
    eject: float = _field(10.0, parse_duration)
    max_ejected: float = _field(0.5, _percent)      # of a version's capacity (lb/core/health.py)
    # Envoy's failure-percentage rule: over each `window`, a node that served `min_requests`
    # or more, `failure_rate` of them failed, is ejected too (a node failing every other
    # request never fails `failures` in a row). 0% turns it off.
    failure_rate: float = _field(0.5, _percent)
    window: float = _field(10.0, parse_duration)
    min_requests: int = _field(20, _int_range(1, 1_000_000))


@dataclass(frozen=True)
class DrainConfig:
    timeout: float = _field(30.0, parse_duration)
    # At a stop or an upgrade: how long an idle client keep-alive connection is kept open
    # (its next request is served, with Connection: close) before it is closed.
    client_grace: float = _field(5.0, parse_duration)


@dataclass(frozen=True)
class PinningConfig:
    mode: str = _field("version", _one_of("version", "none"))
    cookie: str = _field("lb_version", _matching(re.compile(r"^[A-Za-z0-9_-]{1,64}$"), "a cookie name"))
    max_age: float = _field(86400.0, parse_duration)
    max_overload: float = _field(1.5, _float_range(1.0, 100.0))
    secure: str | bool = _field("auto", _auto_or_bool)     # the cookie's Secure; auto: on TLS listeners
    # where a request may name its own version (skew protection, lb/core/skew.py)
    header: str = _field("X-Lb-Version", _matching(_TOKEN_RE, "a header name"))
    query: str = _field("dpl", _matching(re.compile(r"^[A-Za-z0-9_.-]{1,64}$"), "a query parameter name"))


def _override_list(value: Any) -> tuple:
    """skew.override_from: CIDRs ('10.0.0.0/8'), or {header: NAME, secret: TEXT} (at least 16
    characters: it is a password) for a request that proves it knows the secret."""
    if not isinstance(value, list):
        raise InvalidValue(f"expected a list of CIDRs or {{header, secret}} mappings, got {value!r}")
    items = []
    for item in value:
        if isinstance(item, dict):
            if set(item) != {"header", "secret"} or not _TOKEN_RE.match(str(item["header"])) \
                    or not isinstance(item["secret"], str) or len(item["secret"]) < 16:
                raise InvalidValue(f"expected {{header: NAME, secret: TEXT of 16 characters or more}}, got {item!r}")
            items.append((str(item["header"]), item["secret"]))
        else:
            items.append(parse_cidr_list([item])[0])
    return tuple(items)


def _glob_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.startswith("/") for item in value):
        raise InvalidValue(f"expected a list of path globs like /assets/*, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class SkewConfig:
    assets: tuple[str, ...] = _field((), _glob_list)      # paths that are immutable assets besides
    store_bytes: int = _field(256 << 20, parse_size)      # responses saying Cache-Control: immutable
    max_asset_bytes: int = _field(8 << 20, parse_size)
    max_assets: int = _field(10000, _int_range(0, 1000000))     # entries of the index (0: learn none)
    retention: float = _field(86400.0, parse_duration)
    # nobody by default: behind a TLS terminator on the same host every client is 127.0.0.1
    override_from: tuple = _field((), _override_list)


@dataclass(frozen=True)
class TimeoutsConfig:
    connect: float = _field(2.0, parse_duration)
    client_header: float = _field(10.0, parse_duration)
    client_idle: float = _field(60.0, parse_duration)
    upstream_first_byte: float = _field(30.0, parse_duration)
    upstream_idle: float = _field(60.0, parse_duration)
    tunnel: float = _field(3600.0, parse_duration)       # an upgraded connection with no traffic
    queue: float = _field(5.0, parse_duration)           # a request waiting for a capped backend


@dataclass(frozen=True)
class LimitsConfig:
    max_header_bytes: int = _field(16384, _int_range(1024, 1 << 20))
    max_headers: int = _field(100, _int_range(1, 10000))
    max_target_bytes: int = _field(8192, _int_range(256, 1 << 20))
    max_response_header_bytes: int = _field(65536, _int_range(1024, 1 << 24))
    min_body_rate: float = _field(1024.0, parse_rate)     # bytes/s a request body must average
    max_connections: int = _field(10000, _int_range(1, 1_000_000))


_CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")     # a label in the store's keys: /lb/<name>/


def _endpoint_list(value: Any) -> tuple[str, ...]:
    """cluster.endpoints: a non-empty list of HOST:PORT (etcd's client URLs without http://)."""
    if not isinstance(value, list) or not value:
        raise InvalidValue(f"expected a non-empty list of HOST:PORT, got {value!r}")
    for item in value:
        try:
            parse_hostport(item)
        except InvalidValue:
            raise InvalidValue(f"expected a list of HOST:PORT, got {item!r} in {value!r}") from None
    return tuple(str(item) for item in value)


def _off_unless_given(cls: type) -> Any:      # a section that is None when left out or null
    return field(default=None, metadata={"parse": cls, "optional": True, "nullable": True})


@dataclass(frozen=True)
class ClusterTlsConfig:
    """TLS to etcd (lb/tls.py etcd_context): its certificate checked against `ca` (the system's
    CAs when left out) for `sni` (each endpoint's host by default); `cert` and `key` together:
    the client certificate etcd's --client-cert-auth asks for."""
    ca: str | None = _optional(_text)
    cert: str | None = _optional(_text)
    key: str | None = _optional(_text)
    sni: str | None = _optional(check_host_name)


def _lease_ttl(value: Any) -> float:      # etcd counts a lease's TTL in whole seconds
    try:
        seconds = parse_duration(value)
    except InvalidValue:
        seconds = 0.0
    if not (1.0 <= seconds <= 3600.0 and seconds.is_integer()):
        raise InvalidValue(f"expected a whole number of seconds from 1s to 1h, got {value!r}")
    return seconds


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster mode (lb/control/cluster.py): the lbs of one fleet meet in etcd under /lb/<name>/."""
    store: str = _field("etcd", _one_of("etcd"))
    endpoints: tuple[str, ...] = _field(None, _endpoint_list)
    name: str = _field(None, _matching(_CLUSTER_NAME_RE, "a name of 1 to 64 letters, digits, '_', '.' or '-'"))
    tls: ClusterTlsConfig | None = _off_unless_given(ClusterTlsConfig)
    lease_ttl: float = _field(10.0, _lease_ttl)     # how long a killed lb stays listed


@dataclass(frozen=True)
class StatusConfig:
    """GET /status and /status.json on metrics.listen (lb/control/status.py)."""
    enabled: bool = _field(True, _bool)
    token_file: str | None = _optional(_text)    # HTTP Basic auth: the password is this file's content
    actions: bool = _field(False, _bool)         # drain/ready/maint/weight from the page: needs token_file

    def check(self, path: str, source: str) -> None:
        if self.actions and self.token_file is None:
            raise ConfigError(f"{source}: {path}.actions: true needs {path}.token_file (the page's actions are "
                              f"never open to whoever reaches the listener)")


@dataclass(frozen=True)
class Config:
    listen: tuple[ListenerConfig, ...] = _list_field((ListenerConfig(("127.0.0.1", 8080)),), _listen_list)
    http: str = _field("auto", _one_of("auto", "httptools", "h11"))
    workers: int = _field(0, _workers)     # 0: auto
    admin: AdminConfig = _field(AdminConfig(), AdminConfig)
    metrics: MetricsConfig = _field(MetricsConfig(), MetricsConfig)
    balance: str = _field("least_conn", _one_of("least_conn", "round_robin", "random_two"))
    backends: tuple[BackendConfig, ...] = _list_field((), _build_backends)
    health: HealthConfig = _field(HealthConfig(), HealthConfig)
    passive: PassiveConfig = _field(PassiveConfig(), PassiveConfig)
    drain: DrainConfig = _field(DrainConfig(), DrainConfig)
    slow_start: float = _field(10.0, parse_duration)
    pinning: PinningConfig = _field(PinningConfig(), PinningConfig)
    skew: SkewConfig = _field(SkewConfig(), SkewConfig)
    timeouts: TimeoutsConfig = _field(TimeoutsConfig(), TimeoutsConfig)
    limits: LimitsConfig = _field(LimitsConfig(), LimitsConfig)
    trusted_proxies: tuple[str, ...] = _field((), parse_cidr_list)   # peers whose X-Forwarded-For is kept
    retries: int = _field(2, _int_range(0, 10))
    access_log: str = _field("stdout", _log_target)
    state_file: str = _field("run/lb.state", _text)
    # Whom a worker runs as once it serves, when lb starts as root (lb/core/privileges.py);
    # group: the user's primary group (and its other groups) when null.
    user: str | int | None = _optional(_account)
    group: str | int | None = _optional(_account)
    cluster: ClusterConfig | None = _off_unless_given(ClusterConfig)     # null: no cluster
    status: StatusConfig = _field(StatusConfig(), StatusConfig)
    # Where the file was read from (an absolute path); relative paths in it resolve
    # against its folder, or against runtime_dir when that is set (the embedded default).
    source: str = field(default="<defaults>", compare=False)
    runtime_dir: str | None = field(default=None, compare=False)
    # The PEM files the TLS settings name (resolved path -> bytes), read by the master: a
    # worker loads these, as it may no longer read a key file only root may (lb/tls.py).
    pem_files: dict = field(default_factory=dict, compare=False, repr=False)

    def backend(self, name: str) -> BackendConfig | None:
        return next((b for b in self.backends if b.name == name), None)

    def resolve(self, path: str) -> str:
        """A path from the config, relative to the config file's folder (`runtime_dir`
        for the embedded default, whose own folder is inside the installed package)."""
        if posixpath.isabs(path):
            return path
        return posixpath.join(self.runtime_dir or posixpath.dirname(self.source), path)


def build(cls: type, raw: Any, path: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {path or '<top>'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if "parse" in f.metadata}
    values = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{source}: {key_path}: unknown key (known keys: {known})")
        parse = fields[key].metadata["parse"]
        if fields[key].metadata.get("list"):
            values[key] = parse(value, key_path, source)
        elif dataclasses.is_dataclass(parse):
            off = value is None and fields[key].metadata.get("nullable")
            values[key] = None if off else build(parse, value, key_path, source)
        else:
            try:
                values[key] = parse(value)
            except InvalidValue as exc:
                raise ConfigError(f"{source}: {key_path}: {exc}") from None
    missing = [name for name, f in fields.items()
               if f.default is None and not f.metadata.get("optional") and name not in values]
    if missing:
        raise ConfigError(f"{source}: {path}.{missing[0]}: required key is missing")
    made = cls(**values)
    check = getattr(made, "check", None)            # a section's rules across its keys
    if check is not None:
        check(path, source)
    return made


def parse_config(text: str, source: str = "<string>", runtime_dir: str | None = None) -> Config:
    """Parse YAML text into a Config. Raises ConfigError naming source, key path, value.

    The file itself is read by `lb.files.load_config` (core does no I/O). yaml is imported
    here: a worker gets its config parsed, and saves the module's 1.4 MB."""
    import yaml
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{source}: {where}not valid YAML: {getattr(exc, 'problem', exc)}") from None
    config = build(Config, raw, "", source)
    if not config.backends:
        raise ConfigError(f"{source}: backends: expected at least one backend, got none")
    return dataclasses.replace(config, source=source, runtime_dir=runtime_dir)
