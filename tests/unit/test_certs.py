"""lb/tls.py: certificates read and checked, SNI choice, reload messages, backend contexts.
Certificates are made here by trustme; `now` is passed in."""

import dataclasses
import datetime
import hashlib
import ssl
import time

import pytest
import trustme

from lb import tls
from lb.core.config import INTERMEDIATE_CIPHERS, BackendTlsConfig, CertConfig, ListenerTlsConfig, parse_config
from lb.core.errors import ConfigError


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write(ca, folder, stem, *names, **kwargs) -> CertConfig:
    issued = ca.issue_cert(*names, **kwargs)
    (folder / f"{stem}.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(folder / f"{stem}.key"))
    return CertConfig(cert=str(folder / f"{stem}.pem"), key=str(folder / f"{stem}.key"))


def same(path):
    return path


def test_a_certificate_is_read_for_its_names_expiry_and_fingerprint(ca, tmp_path):
    made = write(ca, tmp_path, "a", "A.example", "*.b.example",
                 not_after=datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc))
    info = tls.read_cert(made.cert, "where")
    assert info.names == ("a.example", "*.b.example")
    assert info.not_after == datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc).timestamp()
    der = ssl.PEM_cert_to_DER_cert(open(made.cert).read().split("-----END CERTIFICATE-----")[0]
                                   + "-----END CERTIFICATE-----\n")
    assert info.sha256.replace(":", "").lower() == hashlib.sha256(der).hexdigest()
    now = info.not_after - 10 * 86400
    assert info.days_left(now) == 10.0
    said = info.to_dict(now)
    assert said["not_after"] == "2031-05-06T07:08:09Z" and said["days_left"] == 10.0 and said["cert"] == made.cert


@pytest.mark.parametrize("server_name, chosen", [
    ("a.example", "a"), ("A.EXAMPLE", "a"), ("a.example.", "a"),
    ("b.example", "b"), ("x.b.example", "wild"), ("X.B.Example", "wild"),
    ("y.x.b.example", "a"),          # a wildcard covers one label
    ("b.example.org", "a"), ("nobody", "a"), ("", "a"), (None, "a"),
    ("shared.example", "a"),         # named by two certificates: the first listed wins
])
def test_sni_picks_exact_then_wildcard_then_the_first(ca, tmp_path, server_name, chosen):
    certs = (write(ca, tmp_path, "a", "a.example", "shared.example"), write(ca, tmp_path, "b", "b.example", "shared.example"),
             write(ca, tmp_path, "wild", "*.b.example"))
    server = tls.ServerTls(ListenerTlsConfig(certs=certs), same, "lb.yaml: listen[0]", time.time())
    contexts = {name: cert.context for name, cert in zip(("a", "b", "wild"), server._certs)}
    assert server.pick(server_name) is contexts[chosen]


def test_replaced_certificates_serve_new_handshakes_and_the_dispatcher_stays(ca, tmp_path):
    config = ListenerTlsConfig(certs=(write(ca, tmp_path, "a", "a.example"),))
    server = tls.ServerTls(config, same, "lb.yaml: listen[0]", time.time())
    dispatcher, before = server.dispatcher, server.pick("a.example")
    renewed = ListenerTlsConfig(certs=(write(ca, tmp_path, "a", "a.example"),))
    server.replace(tls.load_certificates(renewed, same, "lb.yaml: listen[0]", time.time()))
    assert server.dispatcher is dispatcher and server.pick("a.example") is not before


@pytest.mark.parametrize("version, expected", [("TLSv1.2", ssl.TLSVersion.TLSv1_2), ("TLSv1.3", ssl.TLSVersion.TLSv1_3)])
def test_every_context_of_a_listener_has_its_minimum_version(ca, tmp_path, version, expected):
    config = ListenerTlsConfig(certs=(write(ca, tmp_path, "a", "a.example"),), min_version=version)
    server = tls.ServerTls(config, same, "w", time.time())
    assert server.dispatcher.minimum_version == expected and server.pick(None).minimum_version == expected
    assert server.dispatcher.options & ssl.OP_NO_RENEGOTIATION


def test_every_context_of_a_listener_offers_tls_1_2_only_its_ciphers(ca, tmp_path):
    certs = (write(ca, tmp_path, "a", "a.example"), write(ca, tmp_path, "b", "b.example"))
    default = tls.ServerTls(ListenerTlsConfig(certs=certs), same, "w", time.time())
    chosen = tls.ServerTls(ListenerTlsConfig(certs=certs, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"), same, "w",
                           time.time())
    for server, expected in ((default, set(INTERMEDIATE_CIPHERS.split(":"))), (chosen, {"ECDHE-ECDSA-AES256-GCM-SHA384"})):
        for context in (server.dispatcher, server.pick("a.example"), server.pick("b.example")):
            assert {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"} == expected


def test_a_cipher_string_openssl_cannot_use_names_the_key_path(ca, tmp_path):
    config = ListenerTlsConfig(certs=(write(ca, tmp_path, "a", "a.example"),), ciphers="NO-SUCH-CIPHER")
    with pytest.raises(ConfigError) as error:
        tls.ServerTls(config, same, "lb.yaml: listen[1]", time.time())
    assert error.value.message == "lb.yaml: listen[1].tls.ciphers: OpenSSL can choose no cipher from 'NO-SUCH-CIPHER'"


def test_bad_files_name_the_key_path_the_file_and_the_reason(ca, tmp_path):
    good, other = write(ca, tmp_path, "good", "a.example"), write(ca, tmp_path, "other", "b.example")
    expired = write(ca, tmp_path, "old", "old.example", not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    (tmp_path / "junk").write_text("junk\n")
    cases = [
        (CertConfig(str(tmp_path / "nope.pem"), good.key), "w.tls.certs[0].cert: cannot read " + str(tmp_path / "nope.pem")),
        (CertConfig(good.cert, str(tmp_path / "nope.key")), "w.tls.certs[0].key: cannot read " + str(tmp_path / "nope.key")),
        (CertConfig(good.cert, other.key), f"w.tls.certs[0].key: {other.key} is not the key of {good.cert}"),
        (CertConfig(str(tmp_path / "junk"), good.key), f"w.tls.certs[0].cert: {tmp_path / 'junk'} holds no PEM certificate"),
        (CertConfig(good.cert, str(tmp_path / "junk")), f"w.tls.certs[0].key: {tmp_path / 'junk'} holds no usable PEM private key"),
        (expired, f"w.tls.certs[0].cert: {expired.cert} expired on 2020-01-01T00:00:00Z"),
    ]
    for cert, message in cases:
        with pytest.raises(ConfigError) as error:
            tls.ServerTls(ListenerTlsConfig(certs=(cert,)), same, "w", time.time())
        assert error.value.message.startswith(message), error.value.message


def test_what_a_reload_says_of_new_certificates():
    a = tls.CertInfo("a.pem", ("a.example",), 0.0, "AA:" * 31 + "AA")
    b = tls.CertInfo("b.pem", ("b.example",), 0.0, "BB:" * 31 + "BB")
    assert tls.changes({1: [a]}, {1: [a]}) == []
    assert tls.changes({1: [a]}, {1: [a, b]}) == ["listen[1]: new certificates for new handshakes: b.pem (BB:BB:BB:BB)"]


def test_backend_contexts_verify_unless_told_not_to(ca, tmp_path):
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    checked = tls.client_context(BackendTlsConfig(ca=str(tmp_path / "ca.pem")), same, "w")
    assert checked.verify_mode == ssl.CERT_REQUIRED and checked.check_hostname
    assert len(checked.get_ca_certs()) == 1
    unchecked = tls.client_context(BackendTlsConfig(verify=False), same, "w")
    assert unchecked.verify_mode == ssl.CERT_NONE and not unchecked.check_hostname
    with pytest.raises(ConfigError) as error:
        tls.client_context(BackendTlsConfig(ca=str(tmp_path / "missing.pem")), same, "lb.yaml: backends[0].tls")
    assert error.value.message.startswith(f"lb.yaml: backends[0].tls.ca: cannot read {tmp_path / 'missing.pem'}")
    (tmp_path / "junk.pem").write_text("junk\n")
    with pytest.raises(ConfigError) as error:
        tls.client_context(BackendTlsConfig(ca=str(tmp_path / "junk.pem")), same, "w")
    assert "holds no PEM certificate" in error.value.message


def test_certificates_keys_and_cas_load_from_the_bytes_the_master_read(ca, tmp_path):
    """A worker that dropped to `user:` may read none of the files: it loads what the master read."""
    write(ca, tmp_path, "a", "a.example")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = parse_config("""
listen: [{address: '127.0.0.1:8443', tls: {certs: [{cert: a.pem, key: a.key}]}}]
backends: [{name: web1, address: '127.0.0.1:9001', tls: {ca: ca.pem}}]
""", str(tmp_path / "lb.yaml"))
    config = dataclasses.replace(config, pem_files=tls.read_pem_files(config))
    assert sorted(config.pem_files) == sorted(str(tmp_path / name) for name in ("a.pem", "a.key", "ca.pem"))
    for path in tmp_path.iterdir():
        path.unlink()
    certs, _ = tls.check(config, time.time())
    assert certs[0][0].names == ("a.example",)
    assert tls.backend_contexts(config)["web1"][0].get_ca_certs()
