"""lb/control/assets.py: the master's asset index on disk (save, load, the sweep), retention
and the departure records, with `now` passed in."""

import asyncio
import os

from lb.control.assets import INDEX_FILE, Assets
from lb.core.config import parse_config
from lb.core.skew import Asset
from lb.files import store_dir, write_copy


def keeper(tmp_path, extra: str = "") -> Assets:
    return Assets(parse_config("backends: [{name: w, address: 127.0.0.1:9001, version: v1}]\n"
                               f"state_file: {tmp_path}/lb.state\n{extra}"))


def test_the_index_survives_a_restart_and_the_folder_is_swept_of_what_it_does_not_name(tmp_path):
    first = keeper(tmp_path)
    digest = write_copy(first.dir, b"console")
    first.learned([Asset(b"/a.js", "v1", digest, 7, ((b"Content-Type", b"text/javascript"),)),
                   Asset(b"/b.js", "v1")], None)
    first.view({}, ["v1"], 1000.0)                      # v1 left service at 1000
    first.save(in_thread=False)
    stray = write_copy(first.dir, b"nobody names me")
    old_tmp = os.path.join(first.dir, "x.123.tmp")
    open(old_tmp, "w").close()
    os.utime(old_tmp, (0, 0))
    young_tmp = os.path.join(first.dir, "y.456.tmp")
    open(young_tmp, "w").close()
    second = keeper(tmp_path)
    second.load()
    assert list(second.index.entries.values()) == list(first.index.entries.values())
    assert second.left == {"v1": 1000.0} and second.snapshot().full
    assert sorted(os.listdir(second.dir)) == sorted([digest, INDEX_FILE, "y.456.tmp"])
    assert not os.path.exists(os.path.join(second.dir, stray))


def test_an_unreadable_index_is_set_aside_and_lb_starts_without_it(tmp_path, caplog):
    assets = keeper(tmp_path)
    os.makedirs(assets.dir)
    with open(os.path.join(assets.dir, INDEX_FILE), "w") as file:
        file.write('{"assets": [{"path": 3}]')
    assets.load()
    assert not assets.index.entries and os.path.exists(os.path.join(assets.dir, INDEX_FILE + ".bad"))
    assert "could not be read" in caplog.text


def test_retention_drops_a_version_s_entries_and_copies_then_its_record(tmp_path):
    assets = keeper(tmp_path, "skew: {retention: 1h}\n")
    digest = write_copy(store_dir(assets_config(tmp_path)), b"x")
    assets.learned([Asset(b"/a.js", "v1", digest, 1)], None)
    assets.view({"v2": 1.0}, ["v1", "v2"], 0.0)
    update = assets.tick(10.0)
    assert update.add and update.retired == {"v1": 0.0}
    assert assets.tick(3599.0) is None                   # within retention: kept
    update = assets.tick(3600.0)
    assert update.drop == ((b"/a.js", "v1"),) and not os.path.exists(os.path.join(assets.dir, digest))
    assert assets.left == {"v1": 0.0}                    # v1's nodes are still in the pool
    assets.view({"v2": 1.0}, ["v2"], 3700.0)              # relabelled: v1 is gone from the pool
    update = assets.tick(3700.0)
    assert assets.left == {} and update.retired == {}


def test_a_save_while_lb_runs_happens_in_a_thread(tmp_path):
    async def run():
        assets = keeper(tmp_path)
        assets.learned([Asset(b"/a.js", "v1")], None)
        assets.tick(100.0)
        assert assets._saving                            # handed to the thread
        for _ in range(200):
            if os.path.exists(os.path.join(assets.dir, INDEX_FILE)):
                break
            await asyncio.sleep(0.01)
        assert os.path.exists(os.path.join(assets.dir, INDEX_FILE))
    asyncio.run(run())


def assets_config(tmp_path):
    return parse_config(f"backends: [{{name: w, address: 127.0.0.1:9001}}]\nstate_file: {tmp_path}/lb.state\n")
