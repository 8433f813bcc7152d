"""The access log's writes: whole lines only, and at most PIPE_BUF bytes to a pipe, so lines
from several workers sharing one stdout or one file are never cut by each other."""

import os

from lb.proxy import accesslog
from lb.proxy.accesslog import AccessLog


def record_writes(monkeypatch):
    writes = []

    def write(fd, data):
        writes.append(bytes(data))
        return len(data)
    monkeypatch.setattr(accesslog.os, "write", write)
    return writes


def test_writes_to_a_pipe_are_whole_lines_of_at_most_pipe_buf(tmp_path, monkeypatch):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)       # so the writer's open returns
    try:
        log = AccessLog(str(fifo), worker=1)
        lines = [f'{{"n": {i}, "pad": "{"x" * (i % 300)}"}}' for i in range(200)]
        log._lines = list(lines)
        writes = record_writes(monkeypatch)
        log.flush()
        monkeypatch.undo()
        log.close()
    finally:
        os.close(reader)
    assert len(writes) > 1 and all(len(w) <= accesslog.PIPE_BUF and w.endswith(b"\n") for w in writes)
    assert b"".join(writes).decode().splitlines() == lines


def test_a_file_gets_whole_lines_in_one_append(tmp_path, monkeypatch):
    log = AccessLog(str(tmp_path / "access.log"), worker=0)
    lines = [f'{{"n": {i}}}' for i in range(500)]
    log._lines = list(lines)
    writes = record_writes(monkeypatch)
    log.flush()
    monkeypatch.undo()
    log.close()
    assert len(writes) == 1 and writes[0].decode().splitlines() == lines
