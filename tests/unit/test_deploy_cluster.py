"""lb deploy --cluster: the URL, the members read from etcd, where each command goes (no I/O)."""

import json

import pytest

from lb.core import commands
from lb.core.errors import DeployError
from lb.core.etcdwire import KeyValue
from lb.deploy.cluster import ClusterUrl, behind, changes_desired_state, member_target, membership_diff, \
    parse_cluster_url, read_members
from lb.deploy.fleet import Target

PREFIX = "/lb/prod/members/"


@pytest.mark.parametrize("text, endpoints, name", [
    ("etcd://127.0.0.1:2379/prod", ("127.0.0.1:2379",), "prod"),
    ("etcd://e1:2379,e2:2379,e3:2379/prod", ("e1:2379", "e2:2379", "e3:2379"), "prod"),
    ("etcd://[::1]:2379/web-lb_1.eu", ("[::1]:2379",), "web-lb_1.eu"),
])
def test_a_cluster_url_names_the_endpoints_and_the_cluster(text, endpoints, name):
    url = parse_cluster_url(text)
    assert url == ClusterUrl(text, endpoints, name)
    assert url.prefix == f"/lb/{name}/members/"


@pytest.mark.parametrize("text, said", [
    ("127.0.0.1:2379/prod", "expected etcd://HOST:PORT[,HOST:PORT...]/NAME"),
    ("http://127.0.0.1:2379/prod", "expected etcd://"),
    ("etcd://127.0.0.1:2379", "expected etcd://"),                 # no name
    ("etcd://127.0.0.1:2379/", "cluster.name"),
    ("etcd://127.0.0.1:2379/a/b", "expected etcd://"),
    ("etcd://127.0.0.1:2379/a b", "cluster.name"),
    ("etcd:///prod", "expected etcd://"),
    ("etcd://127.0.0.1/prod", "cluster.endpoints"),                # no port
    ("etcd://127.0.0.1:0/prod", "cluster.endpoints"),
    ("etcd://e1:2379,,e2:2379/prod", "cluster.endpoints"),
    ("etcd://-oProxy:2379/prod", "cluster.endpoints"),
])
def test_a_bad_cluster_url_is_refused_naming_it_and_what_is_wrong(text, said):
    with pytest.raises(DeployError) as error:
        parse_cluster_url(text)
    assert error.value.message.startswith(f"--cluster {text}: ") and said in error.value.message


def record(host="lb1", admin_socket="/run/lb/lb.sock", **more) -> dict:
    return {"id": f"{host}:{admin_socket}", "host": host, "admin_socket": admin_socket, "pid": 7,
            "version": "1.0", "applied_revision": 0, "nodes": [], **more}


@pytest.mark.parametrize("member, target", [
    (record("here"), Target("/run/lb/lb.sock", "/run/lb/lb.sock")),          # this machine: the socket
    (record("lb2.example"), Target("ssh://lb2.example/run/lb/lb.sock", "/run/lb/lb.sock", "lb2.example")),
    (record("10.0.0.5", "/srv/lb.sock"), Target("ssh://10.0.0.5/srv/lb.sock", "/srv/lb.sock", "10.0.0.5")),
])
def test_a_member_is_reached_on_its_socket_here_and_over_ssh_elsewhere(member, target):
    assert member_target(member, "here") == target


@pytest.mark.parametrize("member, said", [
    ({"admin_socket": "/run/lb.sock"}, "no host"),
    (record(host=""), "no host"),
    (record(host=7), "no host"),
    (record(admin_socket="run/lb.sock"), "not an absolute path"),
    (record(admin_socket=None), "not an absolute path"),
    (record(host="-oProxyCommand=x"), "expected ssh://"),       # a host ssh would read as an option
    (record(host="lb 2"), "expected ssh://"),
])
def test_a_member_record_that_cannot_be_reached_says_why(member, said):
    with pytest.raises(DeployError, match=said):
        member_target(member, "here")


def kv(member_id: str, value) -> KeyValue:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return KeyValue(PREFIX + member_id, raw, mod_revision=5)


def test_the_members_read_from_etcd_by_id_and_bad_records_ignored_with_a_reason():
    good, remote = record("here"), record("lb2", "/srv/lb.sock")
    members, ignored = read_members((kv("here:/run/lb/lb.sock", good), kv("lb2:/srv/lb.sock", remote),
                                     kv("junk", b"{not json"), kv("list", [1, 2]),
                                     kv("nohost", {"admin_socket": "/x.sock"})), PREFIX, "here")
    assert members == {"here:/run/lb/lb.sock": (Target("/run/lb/lb.sock", "/run/lb/lb.sock"), good),
                       "lb2:/srv/lb.sock": (Target("ssh://lb2/srv/lb.sock", "/srv/lb.sock", "lb2"), remote)}
    assert set(ignored) == {PREFIX + "junk", PREFIX + "list", PREFIX + "nohost"}
    assert ignored[PREFIX + "junk"].startswith("not JSON")
    assert ignored[PREFIX + "list"].startswith("not a member record")
    assert "no host" in ignored[PREFIX + "nohost"]


@pytest.mark.parametrize("known, listed, left, joined", [
    (["a", "b", "c"], ["a", "b", "c"], [], []),
    (["a", "b", "c"], ["a", "c"], ["b"], []),
    (["a", "b"], ["a", "b", "d"], [], ["d"]),
    (["a", "b"], ["b", "c"], ["a"], ["c"]),          # one left, another came, in one read
    (["a"], [], ["a"], []),
    ([], ["a", "b"], [], ["a", "b"]),
])
def test_membership_diff_says_who_left_and_who_joined(known, listed, left, joined):
    assert membership_diff(known, listed) == (left, joined)


def test_the_members_behind_a_revision_are_those_still_listed_that_have_not_applied_it():
    records = {"a": record(applied_revision=12), "b": record(applied_revision=11), "c": record(),
               "d": {**record(), "applied_revision": "12"}}
    assert behind(records, ["a", "b", "c", "d", "gone"], 12) == ["b", "c", "d"]
    assert behind(records, ["a"], 12) == [] and behind(records, [], 99) == []


# What goes to one member (it writes the desired state to etcd; every lb applies it) and what to
# every member (reads and waits, merged; reload and upgrade act on each lb's own files).
TO_ONE = {("drain",), ("ready",), ("maint",), ("set", "version"), ("set", "weight"), ("set", "target"),
          ("set", "maxconn"), ("add", "server"), ("del", "server")}


def example(command: commands.Command) -> str:
    return " ".join([*command.words, *(["1"] * len(command.args))])


@pytest.mark.parametrize("command", commands.COMMANDS, ids=lambda c: " ".join(c.words))
def test_every_command_of_the_table_goes_to_one_member_or_to_every_member(command):
    assert changes_desired_state(example(command)) == (command.words in TO_ONE)


def test_the_deploys_own_lines_are_routed_by_their_row():
    assert changes_desired_state("set weight web1 0") and changes_desired_state("set target v2")
    assert not changes_desired_state("wait web1 up 60") and not changes_desired_state("show latency web1,web2 5 raw")
    assert not changes_desired_state("frobnicate") and not changes_desired_state("")   # every lb refuses it alike


def test_members_leaving_and_joining_are_lines_on_a_terminal_and_the_summary_names_who_left():
    import io

    from lb.deploy.view import TtyView, format_report

    out = io.StringIO()
    view = TtyView(out)
    view.event("member_left", {"member": "lb3:/run/lb.sock", "reason": "its key left etcd"})
    view.event("member_joined", {"member": "lb4:/run/lb.sock"})
    view.event("etcd_unreachable", {"message": "etcd does not answer; going on", "error": "refused", "members": []})
    said = out.getvalue()
    assert "! lb lb3:/run/lb.sock left the cluster: its key left etcd" in said
    assert "! lb lb4:/run/lb.sock joined the cluster" in said and "! etcd does not answer; going on (refused)" in said
    report = {"to": "v2", "result": "done", "exit": 0, "seconds": 9.0, "failure": None, "nodes": [], "log": "x.log",
              "lbs": ["lb1:/run/lb.sock", "lb2:/run/lb.sock"], "lost": {},
              "left": {"lb3:/run/lb.sock": "its key left etcd"}}
    assert "  lb lb3:/run/lb.sock left the cluster during the deploy (its key left etcd)" in \
        format_report(report).splitlines()
