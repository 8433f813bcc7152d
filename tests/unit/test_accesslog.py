"""The access log's writes: whole lines only, and at most PIPE_BUF bytes to a pipe, so lines
from several workers sharing one stdout or one file are never cut by each other."""

import os

from lb.proxy import accesslog
from lb.proxy.accesslog import AccessLog


def flushed_writes(log, lines, monkeypatch) -> list[bytes]:
    """The os.write calls one flush of `lines` makes (the log is closed after)."""
    writes = []

    def write(fd, data):
        writes.append(bytes(data))
        return len(data)
    log._lines = list(lines)
    monkeypatch.setattr(accesslog.os, "write", write)
    log.flush()
    monkeypatch.undo()
    log.close()
    return writes


def test_writes_to_a_pipe_are_whole_lines_of_at_most_pipe_buf(tmp_path, monkeypatch):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)       # so the writer's open returns
    try:
        lines = [f'{{"n": {i}, "pad": "{"x" * (i % 300)}"}}' for i in range(200)]
        writes = flushed_writes(AccessLog(str(fifo), worker=1), lines, monkeypatch)
    finally:
        os.close(reader)
    assert len(writes) > 1 and all(len(w) <= accesslog.PIPE_BUF and w.endswith(b"\n") for w in writes)
    assert b"".join(writes).decode().splitlines() == lines


def test_a_file_gets_whole_lines_in_one_append(tmp_path, monkeypatch):
    lines = [f'{{"n": {i}}}' for i in range(500)]
    writes = flushed_writes(AccessLog(str(tmp_path / "access.log"), worker=0), lines, monkeypatch)
    assert len(writes) == 1 and writes[0].decode().splitlines() == lines


def test_reopen_after_a_rename_puts_held_lines_in_the_old_file_and_new_ones_in_the_new(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log._lines = ['{"n": 1}', '{"n": 2}']                  # written by the sweeper, not yet flushed
    path.rename(tmp_path / "access.log.1")                 # logrotate
    log.reopen()                                           # SIGUSR1
    log._lines = ['{"n": 3}']
    log.close()
    assert (tmp_path / "access.log.1").read_text().splitlines() == ['{"n": 1}', '{"n": 2}']
    assert path.read_text().splitlines() == ['{"n": 3}']


def test_reopen_that_cannot_open_keeps_writing_to_the_old_file(tmp_path, capsys):
    folder = tmp_path / "logs"
    folder.mkdir()
    log = AccessLog(str(folder / "access.log"))
    (folder / "access.log").rename(tmp_path / "moved.log")
    folder.rmdir()                                         # the name cannot be made again
    log.reopen()
    log._lines = ['{"n": 1}']
    log.close()
    assert (tmp_path / "moved.log").read_text() == '{"n": 1}\n'
    assert "cannot reopen" in capsys.readouterr().err


def test_a_request_line_is_byte_for_byte_what_json_dumps_makes_of_its_fields():
    import json
    import time

    from lb.core import http1

    class Client:
        ip, trusted, tls, tls_text = b"10.0.0.9", False, None, ""

    class TlsClient(Client):
        tls = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "sni": "a.example"}
        tls_text = ', "tls": ' + json.dumps(tls)        # as ClientConnection makes it

    class Exchange:
        started = time.monotonic()

    class Route:
        name, version = "web1", "v2"

    cases = []
    for target in (b"/", b"/a/b?q=1", b'/we"ird\\path\x01\x7f', "/caf\u00e9".encode("latin-1")):
        for pin_how, error, route in ((None, None, Route()), ("assigned", None, Route()),
                                      ("forward", "backend did not answer in time", None)):
            for client in (Client(), TlsClient()):
                cases.append((target, pin_how, error, route, client))
    for worker in (None, 3):
        log = AccessLog(os.devnull, worker=worker)
        for target, pin_how, error, route, client in cases:
            exchange = Exchange()
            exchange.client = client
            exchange.head = http1.analyze_request(b"GET", target, b"1.1", [(b"Host", b"h")])
            exchange.status, exchange.bytes_out, exchange.tried = 504 if error else 200, 34, [1, 2]
            exchange.version, exchange.pin_how, exchange.error = "v2", pin_how, error
            log.write(exchange, route)
            line = log._lines[-1]
            said = json.loads(line)
            assert line == json.dumps(log.line_fields(exchange, route, said["duration_ms"], said["time"]))
            assert said.get("tls") == client.tls
        log._lines = []
        log.close()
