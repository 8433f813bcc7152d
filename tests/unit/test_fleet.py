"""lb deploy over a fleet: targets, the ssh command line, and the merging of what the lbs
answer (no I/O)."""

import pytest

from lb.core.errors import DeployError
from lb.core.stats import bucket_quantiles, fine_bucket, ms
from lb.deploy.fleet import Fleet, Target, differences, merge_latency, merge_servers, merge_stats, parse_target, \
    ssh_argv


def row(name, version="v1", state="ready", health="up", weight=1, address=None):
    return {"name": name, "version": version, "state": state, "health": health, "weight": weight,
            "address": address or f"10.0.0.{name[-1]}:80"}


@pytest.mark.parametrize("text, target", [
    ("run/lb.sock", Target("run/lb.sock", "run/lb.sock")),
    ("/var/run/lb.sock", Target("/var/run/lb.sock", "/var/run/lb.sock")),
    ("ssh://lb1/run/lb.sock", Target("ssh://lb1/run/lb.sock", "/run/lb.sock", "lb1")),
    ("ssh://ops@lb1.example:2222/var/run/lb.sock",
     Target("ssh://ops@lb1.example:2222/var/run/lb.sock", "/var/run/lb.sock", "lb1.example", "ops", 2222)),
    ("ssh://10.0.0.5/s", Target("ssh://10.0.0.5/s", "/s", "10.0.0.5")),
    ("ssh://[::1]:22/s", Target("ssh://[::1]:22/s", "/s", "::1", None, 22)),
])
def test_a_target_is_a_socket_path_or_an_ssh_url(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize("text", [
    "ssh://lb1",                      # no socket path
    "ssh://-oProxyCommand=x/s",       # a host that ssh would read as an option
    "ssh://ops@/s",
    "ssh://lb1:0/s", "ssh://lb1:70000/s", "ssh://lb1:x/s",
    "ssh://lb 1/s",
    "http://lb1/s",
])
def test_a_bad_target_is_refused_naming_it(text):
    with pytest.raises(DeployError) as error:
        parse_target(text)
    assert text in error.value.message


@pytest.mark.parametrize("text, ssh_command, argv", [
    ("ssh://lb1/run/lb.sock", "ssh", ["ssh", "-T", "-o", "BatchMode=yes", "lb1", "lb ctl --stdio -s /run/lb.sock"]),
    ("ssh://ops@lb1:2222/srv/lb.sock", "ssh",
     ["ssh", "-T", "-o", "BatchMode=yes", "-p", "2222", "ops@lb1", "lb ctl --stdio -s /srv/lb.sock"]),
    ("ssh://lb1/a;b", "ssh -F ./ssh_config -i key",       # the path is quoted for the remote shell
     ["ssh", "-F", "./ssh_config", "-i", "key", "-T", "-o", "BatchMode=yes", "lb1", "lb ctl --stdio -s '/a;b'"]),
])
def test_the_ssh_command_line(text, ssh_command, argv):
    assert ssh_argv(parse_target(text), ssh_command) == argv


def test_the_same_lb_twice_is_refused():
    with pytest.raises(DeployError, match="twice"):
        Fleet(["a.sock", "b.sock", "a.sock"])


def test_a_node_is_in_service_only_where_it_is_on_every_lb():
    per_lb = {"A": [row("web1"), row("web2"), row("web3")],
              "B": [row("web1"), row("web2", state="draining"), row("web3", health="down")]}
    merged = {s["name"]: s for s in merge_servers(per_lb)}
    assert [merged[n]["state"] + "/" + merged[n]["health"] for n in ("web1", "web2", "web3")] == \
        ["ready/up", "draining/up", "ready/down"]
    assert merged["web2"]["on"] == {"A": {"version": "v1", "state": "ready", "health": "up"},
                                    "B": {"version": "v1", "state": "draining", "health": "up"}}
    assert [s["name"] for s in merge_servers(per_lb)] == ["web1", "web2", "web3"]
    assert merge_servers({"A": per_lb["A"]}) == [{**s, "on": {"A": {k: s[k] for k in ("version", "state", "health")}}}
                                                 for s in per_lb["A"]]


@pytest.mark.parametrize("b, said", [
    ([row("web1"), row("web2")], []),
    ([row("web1")], ["B: no node web2 (A has it)"]),
    ([row("web1"), row("web2"), row("web9")], ["B: node web9 that A does not have"]),
    ([row("web1", version="v2"), row("web2")], ["B: web1 version v2 (A: v1)"]),
    ([row("web1"), row("web2", address="10.9.9.9:80")], ["B: web2 address 10.9.9.9:80 (A: 10.0.0.2:80)"]),
    ([row("web1", state="drained", weight=5), row("web2")], []),      # state and weight may differ
])
def test_the_differences_between_lbs_are_listed_per_lb(b, said):
    assert differences({"A": [row("web1"), row("web2")], "B": b}) == said


def test_a_fleet_of_one_has_no_differences_and_three_are_each_compared_with_the_first():
    assert differences({"A": [row("web1")]}) == []
    assert differences({"A": [row("web1")], "B": [row("web1")], "C": []}) == ["C: no node web1 (A has it)"]


def stats(since, failed, **servers):
    return {"totals": {"since": since, "failed": failed},
            "servers": [{"name": name, "requests": r, "5xx": e} for name, (r, e) in servers.items()]}


def test_stats_are_summed_over_the_fleet_and_since_changes_with_any_lb():
    merged = merge_stats({"A": stats("t0", {"502": 1}, web1=(10, 1), web2=(5, 0)),
                          "B": stats("t1", {"502": 2, "504": 1}, web1=(20, 0), web2=(1, 1))})
    assert merged["servers"] == {"web1": {"requests": 30, "5xx": 1}, "web2": {"requests": 6, "5xx": 1}}
    assert merged["failed"] == {"502": 3, "504": 1}
    restarted = merge_stats({"A": stats("t0", {}, web1=(0, 0)), "B": stats("t2", {}, web1=(0, 0))})
    assert restarted["since"] != merged["since"]


def test_latency_is_merged_from_the_buckets_not_averaged():
    def buckets(*durations_s):
        counts = {}
        for duration in durations_s:
            counts[str(fine_bucket(duration))] = counts.get(str(fine_bucket(duration)), 0) + 1
        return {"buckets": counts}
    fast, slow = [0.002] * 990, [0.5] * 20
    requests, p99 = merge_latency({"A": buckets(*fast), "B": buckets(*slow)})
    assert requests == 1010
    expected = ms(bucket_quantiles({fine_bucket(0.5): 20, fine_bucket(0.002): 990}, (0.99,))[0])
    assert p99 == expected and p99 > 400          # the slow lb's tail shows; a mean of p99s would not
    assert merge_latency({"A": {"buckets": {}}}) == (0, None)
