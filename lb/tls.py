"""TLS: the server side of a listener (certificates chosen by SNI), the client side towards a
backend, and what `show certs` and /metrics say of a certificate.

Python's `ssl` (OpenSSL) does the cryptography. A listener's server gets one context for its
whole life, the *dispatcher* (the first certificate's own context, as loaded at start): its
SNI callback, called at every ClientHello (with or without a server name), hands the
handshake to the context of the certificate whose names match (exact, then one-label
wildcard, else the first certificate), and leaves it where it is when that is the
dispatcher itself (one certificate: no context switch per handshake). A reload builds new
per-certificate contexts and swaps the list the callback reads: a context in use is never
changed, established connections keep theirs, and session tickets (keyed by the dispatcher)
stay valid. The settings that belong to the dispatcher itself (min_version, alpn) change only
with the listener, at an upgrade or restart, and so do `ciphers`: every context gets them,
since OpenSSL picks the cipher from the context the callback chose (checked: a list set on
the dispatcher alone is ignored), and a reload keeps the running listener's settings.

`cryptography` reads the certificates (names, expiry, fingerprint): `ssl` loads a
certificate to serve it but cannot show it.

The master reads every PEM file the config names (`read_pem_files`, into
`Config.pem_files`) and the workers load those bytes, never the files: a worker that
dropped to `user:` may not read a key only root may, at start or at a reload. `ssl` loads
certificates, keys and CAs only from a path, so the bytes go through an anonymous
in-memory file (memfd), never to disk.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import ssl
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable


from .core.config import BackendTlsConfig, Config, ListenerTlsConfig
from .core.memo import Memo
from .core.values import format_hostport
from .core.errors import ConfigError

log = logging.getLogger("lb")
EXPIRY_WARNING_DAYS = 14
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class CertInfo:
    """One served certificate, as `show certs` reports it."""
    path: str
    names: tuple[str, ...]          # its DNS names and IPs (subjectAltName; the CN when it has none)
    not_after: float                # Unix time
    sha256: str                     # fingerprint of the leaf, hex pairs

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400

    def to_dict(self, now: float) -> dict:
        return {"cert": self.path, "names": list(self.names),
                "not_after": datetime.datetime.fromtimestamp(self.not_after, datetime.timezone.utc)
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                "days_left": round(self.days_left(now), 1), "sha256": self.sha256}


Reader = Callable[[str], bytes]       # a PEM file's bytes by its path; raises OSError


def read_file(path: str) -> bytes:
    """A PEM file from disk. Raises OSError."""
    with open(path, "rb") as f:
        return f.read()


def pem_reader(config: Config) -> Reader:
    """The PEM files of `config` as the master read them (`read_pem_files`), or from disk for
    a config that came without them (`lb check`)."""
    def read(path: str) -> bytes:
        pem = config.pem_files.get(path)
        return read_file(path) if pem is None else pem
    return read


def read_pem_files(config: Config) -> dict[str, bytes]:
    """Every PEM file the TLS settings of `config` name (by resolved path), as this process
    may read them; one it cannot read is left out, for the load that follows to refuse."""
    paths = [config.resolve(name) for listener in config.listen if listener.tls is not None
             for cert in listener.tls.certs for name in (cert.cert, cert.key)]
    paths += [config.resolve(b.tls.ca) for b in config.backends if b.tls is not None and b.tls.ca is not None]
    files = {}
    for path in paths:
        try:
            files[path] = read_file(path)
        except OSError:
            pass
    return files


@contextmanager
def _as_path(pem: bytes):
    """A path `ssl` can load `pem` from: an anonymous in-memory file, gone once closed."""
    fd = os.memfd_create("lb-pem", os.MFD_CLOEXEC)
    try:
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view):]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def read_cert(path: str, where: str, read: Reader = read_file) -> CertInfo:
    """The leaf certificate of a PEM file. Raises ConfigError naming `where` and the file."""
    return _cert_info(_read(read, path, where), path, where)


def prepare(config: Config) -> None:
    """Import what reading a certificate takes (cryptography) when `config` serves TLS: a
    worker does it before it drops to `user:`, after which the package's files may not be
    readable (it imports nothing of its own once it serves)."""
    if any(listener.tls is not None for listener in config.listen):
        from cryptography import x509  # noqa: F401


def _cert_info(pem: bytes, path: str, where: str) -> CertInfo:
    # Imported here: cryptography costs a process 9.8 MB of RSS, and only one that reads a
    # certificate (the master, a worker serving TLS) needs it (issue 29's memory target).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    try:
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        raise ConfigError(f"{where}: {path} holds no PEM certificate") from None
    try:
        alt = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = (*alt.get_values_for_type(x509.DNSName), *map(str, alt.get_values_for_type(x509.IPAddress)))
    except x509.ExtensionNotFound:
        names = ()
    if not names:
        names = tuple(str(a.value) for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
    digest = leaf.fingerprint(hashes.SHA256()).hex().upper()
    return CertInfo(path, tuple(n.lower() for n in names), leaf.not_valid_after_utc.timestamp(),
                    ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)))


def _server_context(tls: ListenerTlsConfig, where: str) -> ssl.SSLContext:
    """OpenSSL's secure defaults (no compression, no renegotiation by clients, tickets on;
    0-RTT is never offered: Python's ssl does not enable early data), TLS 1.2 at least, with
    `tls.ciphers` for TLS 1.2. Raises ConfigError when OpenSSL can choose none of them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(tls.alpn))
    try:
        context.set_ciphers(tls.ciphers)
    except ssl.SSLError:
        raise ConfigError(f"{where}.tls.ciphers: OpenSSL can choose no cipher from {tls.ciphers!r}") from None
    return context


def _read(read: Reader, path: str, where: str) -> bytes:
    try:
        return read(path)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None


class Certificate:
    """A certificate and its key, loaded: its context and what it says of itself."""

    def __init__(self, tls: ListenerTlsConfig, cert_path: str, key_path: str, listener: str, index: int,
                 now: float, read: Reader = read_file):
        where = f"{listener}.tls.certs[{index}]"
        cert = _read(read, cert_path, f"{where}.cert")
        self.info = _cert_info(cert, cert_path, f"{where}.cert")
        if self.info.not_after < now:
            raise ConfigError(f"{where}.cert: {cert_path} expired on {self.info.to_dict(now)['not_after']}")
        self.context = _server_context(tls, listener)
        key = _read(read, key_path, f"{where}.key")
        try:
            with _as_path(cert) as cert_file, _as_path(key) as key_file:
                self.context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
                raise ConfigError(f"{where}.key: {key_path} is not the key of {cert_path}") from None
            raise ConfigError(f"{where}.key: {key_path} holds no usable PEM private key ({exc.reason or exc})") from None


class ServerTls:
    """A TLS listener's certificates and the dispatcher context its server keeps."""

    def __init__(self, tls: ListenerTlsConfig, resolve: Callable[[str], str], where: str, now: float,
                 read: Reader = read_file):
        certs = load_certificates(tls, resolve, where, now, read)
        # The first certificate's own context is the dispatcher: a handshake it serves (one
        # certificate, or the default name) keeps its context, with no SSL_set_SSL_CTX (which
        # copies the certificate's settings into the connection: bench/throughput.py --tls).
        self.dispatcher = certs[0].context
        self.dispatcher.sni_callback = self._choose
        self._install(certs)

    def _install(self, certs: list[Certificate]) -> None:
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for cert in certs:
            for name in cert.info.names:
                table, key = (wildcard, name[2:]) if name.startswith("*.") else (exact, name)
                table.setdefault(key, cert.context)
        # One assignment: a handshake in progress sees the old tables or the new ones.
        self._tables = (exact, wildcard, certs[0].context)
        self._certs = certs

    def replace(self, certs: list[Certificate]) -> None:
        """New certificates (a reload): new handshakes use them; nothing in use changes."""
        self._install(certs)

    @property
    def certs(self) -> list[CertInfo]:
        return [cert.info for cert in self._certs]

    def pick(self, server_name: str | None) -> ssl.SSLContext:
        exact, wildcard, default = self._tables
        if server_name:
            name = server_name.lower().rstrip(".")
            context = exact.get(name)
            if context is not None:
                return context
            _, dot, parent = name.partition(".")
            if dot:
                context = wildcard.get(parent)
                if context is not None:
                    return context
        return default

    def _choose(self, ssl_object, server_name, dispatcher) -> None:
        context = self.pick(server_name)
        if context is not dispatcher:
            ssl_object.context = context
        ssl_object.lb_sni = server_name          # for the access log
        return None


def load_certificates(tls: ListenerTlsConfig, resolve: Callable[[str], str], where: str,
                      now: float, read: Reader = read_file) -> list[Certificate]:
    """Every certificate of a listener, loaded. Raises ConfigError (key path, file, reason)."""
    return [Certificate(tls, resolve(c.cert), resolve(c.key), where, i, now, read)
            for i, c in enumerate(tls.certs)]


def listener_where(config: Config, index: int) -> str:
    return f"{config.source}: listen[{index}]"


def server_tls(config: Config, now: float) -> dict[int, ServerTls]:
    """The TLS side of each TLS listener of `config`, by its index. Raises ConfigError."""
    return {i: ServerTls(listener.tls, config.resolve, listener_where(config, i), now, pem_reader(config))
            for i, listener in enumerate(config.listen) if listener.tls is not None}


def expiring_soon(tls_by_listener: dict[int, ServerTls], config: Config, now: float) -> list[str]:
    """Warnings for certificates that expire within EXPIRY_WARNING_DAYS."""
    warnings = []
    for i, tls in tls_by_listener.items():
        for info in tls.certs:
            if info.days_left(now) < EXPIRY_WARNING_DAYS:
                warnings.append(f"listen[{i}] ({format_hostport(*config.listen[i].address)}): {info.path} "
                                f"expires in {info.days_left(now):.1f} days ({', '.join(info.names)})")
    return warnings


def client_context(tls: BackendTlsConfig, resolve: Callable[[str], str], where: str,
                   read: Reader = read_file) -> ssl.SSLContext:
    """The context lb connects to a TLS backend with: verification on unless `verify: false`,
    against `ca` (the system's CAs when it is left out). Raises ConfigError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # check_hostname and CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.ca is None:
        context.load_default_certs()
    else:
        path = resolve(tls.ca)
        try:
            with _as_path(_read(read, path, f"{where}.ca")) as ca_file:
                context.load_verify_locations(cafile=ca_file)
        except ssl.SSLError as exc:
            raise ConfigError(f"{where}.ca: {path} holds no PEM certificate ({exc.reason or exc})") from None
    return context


def backend_contexts(config: Config) -> dict[str, tuple[ssl.SSLContext, str]]:
    """For each TLS backend: its context and the server name to send and verify. Raises ConfigError."""
    made = {}
    for i, backend in enumerate(config.backends):
        if backend.tls is not None:
            where = f"{config.source}: backends[{i}].tls"
            made[backend.name] = (client_context(backend.tls, config.resolve, where, pem_reader(config)),
                                  backend.tls.sni or backend.host)
    return made


def etcd_context(config: Config) -> ssl.SSLContext | None:
    """The context lb reaches etcd with (cluster.tls), None without it. Raises ConfigError."""
    tls = config.cluster.tls if config.cluster is not None else None
    if tls is None:
        return None
    resolve = config.resolve
    return etcd_client_context(*(None if path is None else resolve(path) for path in (tls.ca, tls.cert, tls.key)),
                               f"{config.source}: cluster.tls", "{where}.{name}")


def etcd_client_context(ca: str | None, cert: str | None, key: str | None, where: str,
                        naming: str = "{where}.{name}") -> ssl.SSLContext:
    """A client context for etcd (lb's cluster.tls, lb deploy's --etcd-*): etcd's certificate
    always verified, against `ca` (the system's CAs when None); `cert` and `key`: a client
    certificate. The caller reads the files itself (the master, the deploy). `naming` says
    how a file's option is written in an error. Raises ConfigError."""
    def named(name: str) -> str:
        return naming.format(where=where, name=name)
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: cert and key go together (a client certificate and its key), got "
                          f"{'cert' if key is None else 'key'} alone")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # check_hostname and CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if ca is None:
        context.load_default_certs()
    else:
        _read(read_file, ca, named("ca"))
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"{named('ca')}: {ca} holds no PEM certificate ({exc.reason or exc})") from None
    if cert is not None:
        for name, path in (("cert", cert), ("key", key)):
            _read(read_file, path, named(name))
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ConfigError(f"{named('cert')}: {cert} and {key} are not a certificate and its key "
                              f"({exc.reason or exc})") from None
    return context


def check(config: Config, now: float) -> tuple[dict[int, list[CertInfo]], list[str]]:
    """Load every certificate, key and CA file `config` names, as a start, a reload and
    `lb check` do: the certificates of each TLS listener (by index) and warnings for those
    expiring soon. Raises ConfigError naming the key path, the file and the reason."""
    made = server_tls(config, now)
    backend_contexts(config)
    etcd_context(config)
    return {i: t.certs for i, t in made.items()}, expiring_soon(made, config, now)


def changes(before: dict[int, list[CertInfo]], after: dict[int, list[CertInfo]]) -> list[str]:
    """What a reload's reply says of the certificates it re-read."""
    said = []
    for i, infos in sorted(after.items()):
        old = {info.sha256 for info in before.get(i, [])}
        new = [info for info in infos if info.sha256 not in old]
        if new:
            said.append(f"listen[{i}]: new certificates for new handshakes: " +
                        ", ".join(f"{info.path} ({info.sha256[:11]})" for info in new))
    return said


# (version, cipher, SNI name, resumed) -> tls_fields' answer: connections share a few (the
# JSON text cost 4 µs a handshake); the SNI name is the client's, so bounded in bytes too.
_FIELDS_SEEN = Memo(256, 64 * 1024, 512)


def tls_fields(ssl_object) -> tuple[dict, str]:
    """The access log's tls member of a connection, and its JSON text (both shared by the
    connections alike: never change them)."""
    cipher = ssl_object.cipher()
    key = (ssl_object.version(), cipher[0] if cipher else None, getattr(ssl_object, "lb_sni", None),
           ssl_object.session_reused)
    fields = _FIELDS_SEEN.get(key)
    if fields is None:
        tls = dict(zip(("version", "cipher", "sni", "resumed"), key))
        fields = tls, ', "tls": ' + json.dumps(tls)
        _FIELDS_SEEN.put(key, fields, 2 * len(fields[1]))
    return fields
