"""config.py: the schema, defaults, and errors that name file, key path and value."""

import subprocess
import sys
from pathlib import Path

import pytest

from lb.core.config import parse_config
from lb.core.values import parse_duration
from lb.core.errors import ConfigError, InvalidValue
from lb.files import load_config

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = "backends:\n  - {name: web1, address: '127.0.0.1:9001'}\n"


def test_minimal_file_gets_every_default():
    config = parse_config(MINIMAL, "lb.yaml")
    assert [listener.address for listener in config.listen] == [("127.0.0.1", 8080)]
    assert config.http == "auto" and config.balance == "least_conn"
    assert config.backends[0].version == "v1" and config.backends[0].weight == 100
    assert config.health.interval == 1.0 and config.health.rise == 2
    assert config.health.drain_on == (404,) and config.health.panic is True
    assert config.passive.max_ejected == 0.5
    assert config.timeouts.connect == 2.0 and config.pinning.max_age == 86400.0
    assert config.admin.mode == 0o600 and config.retries == 2


def test_embedded_default_config_loads():
    config = load_config(str(ROOT / "config" / "lb.yaml"))
    assert [b.name for b in config.backends] == [f"web{i}" for i in range(1, 11)]
    assert [b.port for b in config.backends] == list(range(9001, 9011))
    assert [listener.address for listener in config.listen] == [("127.0.0.1", 8080)]


@pytest.mark.parametrize("value, expected", [("off", "off"), ("'off'", "off"), ("stdout", "stdout"),
                                             ("/var/log/lb.log", "/var/log/lb.log")])
def test_access_log_off_unquoted_is_off_not_a_boolean(value, expected):
    assert parse_config(MINIMAL + f"access_log: {value}\n").access_log == expected


@pytest.mark.parametrize("text, port", [("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0),
                                        ("1d", 86400.0), (3, 3.0), ("1.5s", 1.5)])
def test_durations(text, port):
    assert parse_duration(text) == port


@pytest.mark.parametrize("text", ["2", "fast", "-1s", "1w", True, ""])
def test_bad_durations(text):
    with pytest.raises(InvalidValue):
        parse_duration(text)


BAD = [
    ("backends:\n  - {name: a, address: '127.0.0.1:1'}\n  - {name: b, address: '127.0.0.1:2'}\n"
     "  - {name: c, address: '9001'}\n",
     "lb.yaml: backends[2].address: expected HOST:PORT, got '9001'"),
    (MINIMAL + "balanse: round_robin\n", "lb.yaml: balanse: unknown key"),
    (MINIMAL + "balance: fastest\n", "lb.yaml: balance: expected one of least_conn, round_robin, random_two, got 'fastest'"),
    (MINIMAL + "health: {interval: soon}\n", "lb.yaml: health.interval: expected a duration"),
    (MINIMAL + "health: {rise: 0}\n", "lb.yaml: health.rise: expected an integer from 1 to 100, got 0"),
    (MINIMAL + "health: {drain_on: [200]}\n",
     "lb.yaml: health.drain_on: expected a list of HTTP statuses from 300 to 599, like [404], got [200]"),
    (MINIMAL + "health: {drain_on: 404}\n", "lb.yaml: health.drain_on: expected a list of HTTP statuses"),
    (MINIMAL + "health: {drain_on: [404, '503']}\n", "lb.yaml: health.drain_on: expected a list of HTTP statuses"),
    (MINIMAL + "health: {drain_on: [600]}\n", "lb.yaml: health.drain_on: expected a list of HTTP statuses"),
    (MINIMAL + "health: {panic: sometimes}\n", "lb.yaml: health.panic: expected true or false, got 'sometimes'"),
    (MINIMAL + "passive: {max_ejected: 0.5}\n",
     "lb.yaml: passive.max_ejected: expected a percentage from 0% to 100%, like 50%, got 0.5"),
    (MINIMAL + "passive: {max_ejected: 150%}\n", "lb.yaml: passive.max_ejected: expected a percentage"),
    (MINIMAL + "passive: {max_ejected: half%}\n", "lb.yaml: passive.max_ejected: expected a percentage"),
    (MINIMAL + "timeouts: {conect: 1s}\n", "lb.yaml: timeouts.conect: unknown key"),
    (MINIMAL + "http: nghttp2\n", "lb.yaml: http: expected one of auto, httptools, h11"),
    (MINIMAL + "listen: [127.0.0.1:80, nope]\n", "lb.yaml: listen[1]: expected HOST:PORT, got 'nope'"),
    (MINIMAL + "listen: [127.0.0.1:80, 127.0.0.1:80]\n", "lb.yaml: listen[1].address: listed twice, got '127.0.0.1:80'"),
    (MINIMAL + "listen: [{adress: 127.0.0.1:443}]\n", "lb.yaml: listen[0].adress: unknown key (known keys: address, tls, "
     "redirect_https, http2)"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, http2: true, tls: {certs: [{cert: a, key: b}]}}]\n",
     "lb.yaml: listen[0].http2: a TLS listener offers HTTP/2 by tls.alpn, got true"),
    (MINIMAL + "listen: [{tls: {certs: [{cert: a, key: b}]}}]\n", "lb.yaml: listen[0].address: required key is missing"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {}}]\n", "lb.yaml: listen[0].tls.certs: required key is missing"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: []}}]\n",
     "lb.yaml: listen[0].tls.certs: expected a list of {cert: FILE, key: FILE}, got []"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: [{cert: a.pem}]}}]\n",
     "lb.yaml: listen[0].tls.certs[0].key: required key is missing"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: [{cert: a, key: b}], min_version: TLSv1.1}}]\n",
     "lb.yaml: listen[0].tls.min_version: expected one of TLSv1.2, TLSv1.3, got 'TLSv1.1'"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: [{cert: a, key: b}], alpn: [spdy/3]}}]\n",
     "lb.yaml: listen[0].tls.alpn: expected a list of protocols from h2, http/1.1, got ['spdy/3']"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, redirect_https: true, tls: {certs: [{cert: a, key: b}]}}]\n",
     "lb.yaml: listen[0].redirect_https: a TLS listener serves HTTPS itself, got true"),
    (MINIMAL + "pinning: {secure: sometimes}\n", "lb.yaml: pinning.secure: expected auto, true or false, got 'sometimes'"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: [{cert: a, key: b}], ciphers: ''}}]\n",
     "lb.yaml: listen[0].tls.ciphers: expected a non-empty string, got ''"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: [{cert: a, key: b}], hsts: {max_age: forever}}}]\n",
     "lb.yaml: listen[0].tls.hsts.max_age: expected a duration like 1y, 180d or 1h, got 'forever'"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: [{cert: a, key: b}], hsts: {maxage: 1y}}}]\n",
     "lb.yaml: listen[0].tls.hsts.maxage: unknown key (known keys: max_age, include_subdomains, preload)"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: [{cert: a, key: b}], hsts: {preload: true}}}]\n",
     "lb.yaml: listen[0].tls.hsts.preload: hstspreload.org requires include_subdomains: true and max_age of at "
     "least 1y, got include_subdomains: false, max_age: 31536000s"),
    (MINIMAL + "listen: [{address: 127.0.0.1:443, tls: {certs: [{cert: a, key: b}],"
     " hsts: {preload: true, include_subdomains: true, max_age: 180d}}}]\n",
     "lb.yaml: listen[0].tls.hsts.preload: hstspreload.org requires include_subdomains: true and max_age of at "
     "least 1y, got include_subdomains: true, max_age: 15552000s"),
    (MINIMAL + "listen: [{address: 127.0.0.1:80, redirect_https: maybe}]\n",
     "lb.yaml: listen[0].redirect_https: expected true or false, got 'maybe'"),
    (MINIMAL + "listen: [127.0.0.1:8080, {address: 127.0.0.1:80, redirect_https: true, http2: true}]\n",
     "lb.yaml: listen[1].http2: a redirect_https listener answers only 308; h2c on it would bypass the "
     "redirect, got true"),
    ("backends:\n  - {name: a, address: '127.0.0.1:1', tls: {verify: sometimes}}\n",
     "lb.yaml: backends[0].tls.verify: expected true or false, got 'sometimes'"),
    ("backends:\n  - {name: a, address: '127.0.0.1:1', tls: {sni: 'a b'}}\n",
     "lb.yaml: backends[0].tls.sni: expected a host name, got 'a b'"),
    ("backends:\n  - {name: web1, address: '$(touch x):80'}\n",
     "lb.yaml: backends[0].address: expected HOST:PORT with HOST a host name or IP address, got '$(touch x):80'"),
    ("backends:\n  - {name: web1, address: '-oProxyCommand=x:22'}\n",
     "lb.yaml: backends[0].address: expected HOST:PORT with HOST a host name or IP address"),
    (MINIMAL + "admin: {mode: 777777}\n", "lb.yaml: admin.mode: expected an octal file mode"),
    ("backends:\n  - {name: a, address: '127.0.0.1:1', weight: -1}\n",
     "lb.yaml: backends[0].weight: expected an integer from 0 to 1000, got -1"),
    ("backends:\n  - {name: a, address: '127.0.0.1:1', colour: red}\n", "lb.yaml: backends[0].colour: unknown key"),
    ("backends:\n  - {address: '127.0.0.1:1'}\n", "lb.yaml: backends[0].name: required key is missing"),
    ("backends:\n  - {name: a, address: '127.0.0.1:1'}\n  - {name: a, address: '127.0.0.1:2'}\n",
     "lb.yaml: backends[1].name: duplicate of backends[0], got 'a'"),
    ("backends:\n  - {name: a, address: '127.0.0.1:1', version: 'v 2'}\n",
     "lb.yaml: backends[0].version: expected a version label"),
    ("backends: []\n", "lb.yaml: backends: expected at least one backend"),
    ("backends: {web1: x}\n", "lb.yaml: backends: expected a list of backends"),
    ("- just\n- a list\n", "lb.yaml: <top>: expected a mapping"),
    ("backends: [\n", "lb.yaml: line"),
    (MINIMAL + "limits: {min_body_rate: fast}\n",
     "lb.yaml: limits.min_body_rate: expected a rate like 1KiB/s, 500B/s or 0 (off), got 'fast'"),
    (MINIMAL + "timeouts: {tunnel: forever}\n", "lb.yaml: timeouts.tunnel: expected a duration"),
]


@pytest.mark.parametrize("text, rate", [("1KiB/s", 1024.0), ("500B/s", 500.0), ("2MB/s", 2e6), (0, 0.0)])
def test_body_rates(text, rate):
    config = parse_config(MINIMAL + f"limits: {{min_body_rate: {text}}}\n")
    assert config.limits.min_body_rate == rate


@pytest.mark.parametrize("address, host", [
    ("127.0.0.1:9001", "127.0.0.1"), ("web-1.internal:80", "web-1.internal"), ("[::1]:80", "::1"),
    ("app_server:8000", "app_server"),
])
def test_addresses_that_pass(address, host):
    config = parse_config(f"backends:\n  - {{name: web1, address: '{address}'}}\n")
    assert config.backends[0].host == host


def test_listeners_plain_tls_and_redirecting():
    config = parse_config(MINIMAL + "listen:\n  - 127.0.0.1:80\n"
                          "  - {address: 0.0.0.0:443, tls: {certs: [{cert: a.pem, key: a.key}, {cert: b.pem, key: b.key}],"
                          " min_version: TLSv1.3}}\n  - {address: 0.0.0.0:8081, redirect_https: true}\n", "lb.yaml")
    plain, secure, redirect = config.listen
    assert (plain.address, plain.tls, plain.redirect_https, plain.scheme) == (("127.0.0.1", 80), None, False, "http")
    assert secure.scheme == "https" and [c.cert for c in secure.tls.certs] == ["a.pem", "b.pem"]
    assert (secure.tls.min_version, secure.tls.alpn) == ("TLSv1.3", ("h2", "http/1.1"))
    assert redirect.redirect_https and redirect.tls is None


def test_tls_listener_defaults_mozilla_intermediate_ciphers_and_no_hsts():
    config = parse_config(MINIMAL + "listen: [{address: 0.0.0.0:443, tls: {certs: [{cert: a.pem, key: a.key}]}}]\n")
    tls = config.listen[0].tls
    assert tls.hsts is None and config.pinning.secure == "auto"
    assert tls.ciphers.split(":") == [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"]


@pytest.mark.parametrize("hsts, value", [
    ("{}", b"max-age=31536000"),
    ("{max_age: 180d, include_subdomains: true}", b"max-age=15552000; includeSubDomains"),
    ("{max_age: 2y, include_subdomains: true, preload: true}", b"max-age=63072000; includeSubDomains; preload"),
    ("{max_age: 0}", b"max-age=0"),
])
def test_hsts_header_values(hsts, value):
    config = parse_config(MINIMAL + "listen: [{address: 0.0.0.0:443, tls: {certs: [{cert: a.pem, key: a.key}],"
                          f" hsts: {hsts}, ciphers: 'ECDHE+AESGCM'}}}}]\n")
    assert config.listen[0].tls.hsts.header_value == value
    assert config.listen[0].tls.ciphers == "ECDHE+AESGCM"


@pytest.mark.parametrize("text, secure", [("auto", "auto"), ("true", True), ("false", False), ("on", True)])
def test_pinning_secure_auto_true_or_false(text, secure):
    assert parse_config(MINIMAL + f"pinning: {{secure: {text}}}\n").pinning.secure == secure


def test_a_backend_tls_section_defaults_to_verifying():
    config = parse_config("backends:\n  - {name: a, address: '10.0.0.5:443', tls: {}}\n"
                          "  - {name: b, address: '10.0.0.6:443', tls: {verify: false, sni: b.internal, ca: ca.pem}}\n"
                          "  - {name: c, address: '10.0.0.7:80'}\n", "lb.yaml")
    a, b, c = config.backends
    assert (a.tls.verify, a.tls.ca, a.tls.sni) == (True, None, None)
    assert (b.tls.verify, b.tls.ca, b.tls.sni) == (False, "ca.pem", "b.internal")
    assert c.tls is None


@pytest.mark.parametrize("text, message", BAD)
def test_bad_config_names_file_key_path_and_value(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "lb.yaml")
    assert info.value.message.startswith(message), info.value.message


def test_lb_serve_with_a_typo_exits_2_with_one_line(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text(MINIMAL + "timeouts: {client_idel: 5s}\n")
    result = subprocess.run([sys.executable, "-m", "lb.cli", "serve", "-c", str(path)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lb: {path}: timeouts.client_idel: unknown key (known keys: connect, client_header, "
        "client_idle, upstream_first_byte, upstream_idle, tunnel, queue)"]


@pytest.mark.parametrize("extra, code, output", [
    ("", 0, "ok, 1 backends"),
    ("retries: many\n", 2, "retries: expected an integer from 0 to 10, got 'many'"),
    ("listen: [{address: 127.0.0.1:80, redirect_https: true, http2: true}]\n", 2,
     "listen[0].http2: a redirect_https listener answers only 308"),
])
def test_lb_check(tmp_path, extra, code, output):
    path = tmp_path / "lb.yaml"
    path.write_text(MINIMAL + extra)
    result = subprocess.run([sys.executable, "-m", "lb.cli", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == code and output in result.stdout + result.stderr


def test_the_embedded_config_is_the_shipped_file_and_resolves_under_the_cwd(tmp_path, monkeypatch):
    assert (ROOT / "config" / "lb.yaml").read_text() == (ROOT / "lb" / "data" / "lb.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert len(config.backends) == 10
    assert config.resolve(config.admin.socket) == str(tmp_path / "run" / "lb.sock")
    # a file of yours: relative to the folder it was named in (config/run/ for -c config/lb.yaml)
    assert load_config(str(ROOT / "config" / "lb.yaml")).resolve("run/x") == str(ROOT / "config" / "run" / "x")


def test_unreadable_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("text, workers", [("", 0), ("workers: auto\n", 0), ("workers: 1\n", 1), ("workers: 64\n", 64)])
def test_workers_auto_or_a_count(text, workers):
    assert parse_config(MINIMAL + text).workers == workers


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "true", "1.5", "[2]"])
def test_bad_workers_name_the_key_and_value(value):
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + f"workers: {value}\n", "lb.yaml")
    assert info.value.message.startswith("lb.yaml: workers: expected auto or a whole number from 1 to 64")


# -- cluster: (issue 31): off unless given; endpoints and name required; tls off unless given --

CLUSTER = "cluster: {endpoints: ['127.0.0.1:2379', 'etcd2:2379'], name: prod}\n"


@pytest.mark.parametrize("text, cluster", [
    ("", None),
    ("cluster: null\n", None),
    ("cluster:\n", None),
    (CLUSTER, (("127.0.0.1:2379", "etcd2:2379"), "prod", 10.0)),
    ("cluster: {store: etcd, endpoints: ['[::1]:2379'], name: a.b_c-1, lease_ttl: 3s, tls: null}\n",
     (("[::1]:2379",), "a.b_c-1", 3.0)),
])
def test_cluster_is_off_unless_given(text, cluster):
    got = parse_config(MINIMAL + text, "lb.yaml").cluster
    assert (got if got is None else (got.endpoints, got.name, got.lease_ttl)) == cluster
    assert got is None or (got.store == "etcd" and got.tls is None)


CLUSTER_BAD = [
    ("cluster: {}\n", "lb.yaml: cluster.endpoints: required key is missing"),
    ("cluster: {endpoints: ['127.0.0.1:2379']}\n", "lb.yaml: cluster.name: required key is missing"),
    ("cluster: [127.0.0.1:2379]\n", "lb.yaml: cluster: expected a mapping, got ['127.0.0.1:2379']"),
    ("cluster: {store: consul, endpoints: ['a:1'], name: p}\n",
     "lb.yaml: cluster.store: expected one of etcd, got 'consul'"),
    ("cluster: {endpoints: [], name: p}\n", "lb.yaml: cluster.endpoints: expected a non-empty list of HOST:PORT, got []"),
    ("cluster: {endpoints: '127.0.0.1:2379', name: p}\n",
     "lb.yaml: cluster.endpoints: expected a non-empty list of HOST:PORT, got '127.0.0.1:2379'"),
    ("cluster: {endpoints: ['127.0.0.1:2379', 'http://e:2379'], name: p}\n",
     "lb.yaml: cluster.endpoints: expected a list of HOST:PORT, got 'http://e:2379'"),
    ("cluster: {endpoints: ['a:1'], name: 'p/q'}\n",
     "lb.yaml: cluster.name: expected a name of 1 to 64 letters, digits, '_', '.' or '-', got 'p/q'"),
    ("cluster: {endpoints: ['a:1'], name: ''}\n", "lb.yaml: cluster.name: expected a name of 1 to 64"),
    ("cluster: {endpoints: ['a:1'], name: " + "x" * 65 + "}\n", "lb.yaml: cluster.name: expected a name of 1 to 64"),
    ("cluster: {endpoints: ['a:1'], name: p, tls: {ca: ca.pem, verify: false}}\n",
     "lb.yaml: cluster.tls.verify: unknown key"),
    ("cluster: {endpoints: ['a:1'], name: p, tls: {sni: 'a b'}}\n", "lb.yaml: cluster.tls.sni: "),
    ("cluster: {endpoints: ['a:1'], name: p, lease_ttl: 1.5s}\n",
     "lb.yaml: cluster.lease_ttl: expected a whole number of seconds from 1s to 1h, got '1.5s'"),
    ("cluster: {endpoints: ['a:1'], name: p, lease_ttl: 2h}\n", "lb.yaml: cluster.lease_ttl: expected a whole number"),
    ("cluster: {endpoints: ['a:1'], name: p, prefix: /x}\n", "lb.yaml: cluster.prefix: unknown key"),
]


@pytest.mark.parametrize("text, message", CLUSTER_BAD)
def test_a_bad_cluster_section_names_the_key_path_and_value(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + text, "lb.yaml")
    assert info.value.message.startswith(message), info.value.message


def test_cluster_tls_is_parsed_and_its_files_are_checked(tmp_path):
    tls = parse_config(MINIMAL + "cluster: {endpoints: ['a:1'], name: p, tls: {ca: ca.pem, cert: c.pem, key: k.pem, "
                       "sni: etcd.internal}}\n").cluster.tls
    assert (tls.ca, tls.cert, tls.key, tls.sni) == ("ca.pem", "c.pem", "k.pem", "etcd.internal")


@pytest.mark.parametrize("section, said", [
    ("{ca: missing.pem}", "cluster.tls.ca: cannot read {dir}/missing.pem"),
    ("{ca: ca.pem, cert: cert.pem}", "cluster.tls: cert and key go together (a client certificate and its key), "
                                     "got cert alone"),
    ("{cert: cert.pem, key: missing.pem}", "cluster.tls.key: cannot read {dir}/missing.pem"),
    ("{cert: cert.pem, key: ca.pem}", "cluster.tls.cert: {dir}/cert.pem and {dir}/ca.pem are not a certificate"),
])
def test_lb_check_refuses_bad_cluster_tls_files_with_exit_2(tmp_path, section, said):
    import trustme
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("lb.internal").cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    path = tmp_path / "lb.yaml"
    path.write_text(MINIMAL + f"cluster: {{endpoints: ['127.0.0.1:2379'], name: p, tls: {section}}}\n")
    result = subprocess.run([sys.executable, "-m", "lb.cli", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert f"{path}: " + said.format(dir=tmp_path) in result.stderr, result.stderr
