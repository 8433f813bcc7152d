"""core/privileges.py and the `user:`/`group:` keys: whom a worker drops to, resolved against a
user database given as tables, and whether the lb process may become it."""

import pytest

from lb.core.config import parse_config
from lb.core.errors import ConfigError
from lb.core.privileges import Account, Identity, identity, must_drop

MINIMAL = "backends:\n  - {name: web1, address: '127.0.0.1:9001'}\n"

WWW = Account("www", 33, 33)
USERS = {"www": WWW, 33: WWW, "root": Account("root", 0, 0), 0: Account("root", 0, 0)}
GROUPS = {"web": 50, 50: 50, "www": 33, 33: 33}
GROUPS_OF = {"www": [33, 50, 60], "root": [0]}


def config(text: str):
    return parse_config(MINIMAL + text, "lb.yaml")


def resolve(text: str) -> Identity | None:
    return identity(config(text), USERS.get, GROUPS.get, lambda name, gid: GROUPS_OF[name])


@pytest.mark.parametrize("text, user, group", [
    ("", None, None),
    ("user: null\ngroup: null\n", None, None),
    ("user: nobody\n", "nobody", None),
    ("user: www-data\ngroup: _web.1\n", "www-data", "_web.1"),
    ("user: 65534\ngroup: 0\n", 65534, 0),
    ("user: '1000'\n", 1000, None),              # a quoted id is an id, as chown takes it
])
def test_user_and_group_take_a_name_or_an_id(text, user, group):
    got = config(text)
    assert (got.user, got.group) == (user, group)


@pytest.mark.parametrize("text, error", [
    ("user: true\n", "lb.yaml: user: expected a user or group name, or a numeric id, got True"),
    ("user: -1\n", "lb.yaml: user: expected a user or group name, or a numeric id, got -1"),
    ("user: 'no body'\n", "lb.yaml: user: expected a user or group name, or a numeric id, got 'no body'"),
    ("group: [web]\n", "lb.yaml: group: expected a user or group name, or a numeric id, got ['web']"),
    ("user: ''\n", "lb.yaml: user: expected a user or group name, or a numeric id, got ''"),
])
def test_a_bad_user_or_group_names_the_key(text, error):
    with pytest.raises(ConfigError) as refused:
        config(text)
    assert refused.value.message == error


@pytest.mark.parametrize("text, expected", [
    ("", None),
    ("user: www\n", Identity("www", 33, 33, (33, 50, 60))),         # the user's own groups
    ("user: 33\n", Identity("www", 33, 33, (33, 50, 60))),
    ("user: www\ngroup: web\n", Identity("www", 33, 50, (50,))),    # only the group named
    ("user: www\ngroup: 50\n", Identity("www", 33, 50, (50,))),
])
def test_user_and_group_resolve_to_the_ids_a_worker_takes(text, expected):
    assert resolve(text) == expected


@pytest.mark.parametrize("text, error", [
    ("user: bob\n", "lb.yaml: user: no such user in the user database, got 'bob'"),
    ("user: 4242\n", "lb.yaml: user: no such user in the user database, got 4242"),
    ("user: www\ngroup: wheel\n", "lb.yaml: group: no such group in the group database, got 'wheel'"),
    ("group: web\n", "lb.yaml: group: a group without a user drops nothing; set user too, got 'web'"),
])
def test_an_unknown_user_or_group_is_a_config_error_naming_the_key(text, error):
    with pytest.raises(ConfigError) as refused:
        resolve(text)
    assert refused.value.message == error


WWW_ID = Identity("www", 33, 33, (33,))


@pytest.mark.parametrize("wanted, uid, gid, drops", [
    (None, 0, 0, False),                     # no user: set: the workers stay root
    (None, 1000, 1000, False),
    (WWW_ID, 0, 0, True),                    # root drops
    (WWW_ID, 33, 33, False),                 # started as that user already: nothing to do
])
def test_root_drops_and_the_user_itself_has_nothing_to_do(wanted, uid, gid, drops):
    assert must_drop(config(""), wanted, uid, gid) is drops


@pytest.mark.parametrize("wanted, uid, gid, error", [
    (WWW_ID, 1000, 1000, "lb.yaml: user: lb runs as uid 1000 gid 1000, not as root, and cannot become "
                         "user 'www' (uid 33): start it as root, or as that user without user/group"),
    (Identity("www", 33, 50, (50,)), 33, 33, "lb.yaml: group: lb runs as uid 33 gid 33, not as root, and "
                                             "cannot become gid 50: start it as root, or as that user "
                                             "without user/group"),
])
def test_another_user_without_root_is_refused(wanted, uid, gid, error):
    with pytest.raises(ConfigError) as refused:
        must_drop(config(""), wanted, uid, gid)
    assert refused.value.message == error
