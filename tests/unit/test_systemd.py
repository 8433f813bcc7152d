"""systemd.py: socket activation's variables and the sd_notify datagram."""

import os
import socket
import tempfile

import pytest

from lb.process import systemd


@pytest.mark.parametrize("env, expected", [
    ({}, []),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:metrics"}, [(3, "http"), (4, "metrics")]),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2"}, [(3, "unknown"), (4, "unknown")]),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, [(3, "a")]),
    ({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, []),            # meant for another process
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "x"}, []),
    ({"LISTEN_FDS": "2"}, []),
])
def test_listen_fds(env, expected):
    environ = {key: value.format(pid=os.getpid()) for key, value in env.items()} | {"OTHER": "kept"}
    assert systemd.listen_fds(environ) == expected
    assert environ == {"OTHER": "kept"}                      # read once, never passed on


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        if abstract:
            name = f"lb-test-{os.getpid()}"
            listener.bind("\0" + name)
            address = "@" + name
        else:
            address = os.path.join(tempfile.mkdtemp(dir="/tmp"), "notify")
            listener.bind(address)
        assert systemd.notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": address})
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_without_systemd_does_nothing_and_a_dead_socket_is_not_an_error(tmp_path):
    assert not systemd.notify("READY=1", environ={})
    assert not systemd.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")})
