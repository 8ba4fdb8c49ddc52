"""watch_config: ferry reloads when its config file changes, in place or by
the symlink swap Kubernetes does on a ConfigMap volume, with the validation
and rollback of SIGHUP; watch_config: false turns it off."""
import json
import os
import time

import harness
from fronts import pg_dsn, pg_listener
from harness import make_config
from harness.ferry import write_config
from harness.proc import wait_for

# generous: the watcher reloads ~200 ms after the last event
RELOAD_WAIT = 10


def generation(ferry):
    return ferry.status()["config_generation"]


def edit_in_place(path, config):
    """Rewrites the file itself (same inode), as an editor or `cat >` does."""
    with open(path, "r+") as f:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(config, indent=2) + "\n")


def test_in_place_edit_reloads(ferry_factory, pg_pair):
    cfg = make_config(pg_listener(pg_pair), workers=1)
    ferry = ferry_factory(cfg)
    inode = os.stat(ferry.config_path).st_ino
    assert generation(ferry) == 1
    start = time.monotonic()
    edit_in_place(ferry.config_path, dict(cfg, shutdown_timeout=7))
    assert os.stat(ferry.config_path).st_ino == inode
    wait_for(lambda: generation(ferry) == 2, timeout=RELOAD_WAIT, what="config generation 2")
    took = time.monotonic() - start
    log = ferry.log_text()
    assert "event=config.changed" in log and ferry.config_path in log
    assert "event=config.reloaded generation=2" in log
    assert ferry.status()["config_generation"] == 2, "one edit, one reload"
    print(f"in-place edit reloaded after {took:.2f}s")
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 1") == [(1,)]


def configmap_dir(root, config, stamp):
    """A Kubernetes ConfigMap volume: ..STAMP/ferry.json, ..data -> ..STAMP,
    ferry.json -> ..data/ferry.json. Returns the path of ferry.json."""
    os.makedirs(root, exist_ok=True)
    data = os.path.join(root, f"..{stamp}")
    os.mkdir(data)
    write_config(config, os.path.join(data, "ferry.json"))
    os.symlink(f"..{stamp}", os.path.join(root, "..data"))
    os.symlink("..data/ferry.json", os.path.join(root, "ferry.json"))
    return os.path.join(root, "ferry.json")


def configmap_update(root, config, stamp):
    """What the kubelet's atomic writer does: a new timestamped directory, a
    new ..data symlink renamed over the old one, the old directory removed."""
    old = os.readlink(os.path.join(root, "..data"))
    data = os.path.join(root, f"..{stamp}")
    os.mkdir(data)
    write_config(config, os.path.join(data, "ferry.json"))
    os.symlink(f"..{stamp}", os.path.join(root, "..data_tmp"))
    os.replace(os.path.join(root, "..data_tmp"), os.path.join(root, "..data"))
    os.remove(os.path.join(root, old, "ferry.json"))
    os.rmdir(os.path.join(root, old))


def test_configmap_symlink_swap_reloads(ferry_factory, pg_pair, tmp_path):
    cfg = make_config(pg_listener(pg_pair), workers=1)
    ferry = ferry_factory(cfg, start=False)
    root = str(tmp_path / "configmap")
    ferry.config_path = configmap_dir(root, cfg, "2026_01_01_00_00_00.000000001")
    ferry.start()
    assert generation(ferry) == 1
    # the resolved file's inode changes: a watch on the file would miss it
    configmap_update(root, dict(cfg, shutdown_timeout=7), "2026_01_01_00_01_00.000000002")
    wait_for(lambda: generation(ferry) == 2, timeout=RELOAD_WAIT, what="config generation 2")
    assert "event=config.changed" in ferry.log_text()
    # and again: the watch survives the swap
    configmap_update(root, dict(cfg, shutdown_timeout=8), "2026_01_01_00_02_00.000000003")
    wait_for(lambda: generation(ferry) == 3, timeout=RELOAD_WAIT, what="config generation 3")
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 2") == [(2,)]


def test_unrelated_file_in_directory_does_not_reload(ferry_factory, pg_pair):
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=1))
    other = os.path.join(os.path.dirname(ferry.config_path), "unrelated.txt")
    with open(other, "w") as f:
        f.write("x")
    time.sleep(1.5)
    assert generation(ferry) == 1
    assert "event=config.changed" not in ferry.log_text()


def test_invalid_edit_keeps_running_config(ferry_factory, pg_pair):
    cfg = make_config(pg_listener(pg_pair), workers=1)
    ferry = ferry_factory(cfg)
    with open(ferry.config_path, "w") as f:
        f.write('{"listeners": [], "extra": 1}')
    wait_for(lambda: "event=config.reload_failed" in ferry.log_text(), timeout=RELOAD_WAIT,
             what="config.reload_failed in the log")
    line = [x for x in ferry.log_text().splitlines() if "config.reload_failed" in x][0]
    assert "extra: unknown key" in line and "keeping the running config" in line
    assert generation(ferry) == 1
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 4") == [(4,)]
    assert ferry.is_running()
    # the fixed file is taken at the next change
    write_config(dict(cfg, shutdown_timeout=6), ferry.config_path)
    wait_for(lambda: generation(ferry) == 2, timeout=RELOAD_WAIT, what="config generation 2")


def test_watch_config_false_does_not_reload(ferry_factory, pg_pair):
    cfg = make_config(pg_listener(pg_pair), workers=1, watch_config=False)
    ferry = ferry_factory(cfg)
    edit_in_place(ferry.config_path, dict(cfg, shutdown_timeout=7))
    write_config(dict(cfg, shutdown_timeout=8), ferry.config_path)
    time.sleep(2)
    assert generation(ferry) == 1
    assert "event=config.changed" not in ferry.log_text()
    # SIGHUP still reloads, and exactly once
    ferry.reload(dict(cfg, shutdown_timeout=9))
    wait_for(lambda: generation(ferry) == 2, timeout=RELOAD_WAIT, what="config generation 2")


def test_sighup_reload_is_not_repeated_by_the_watch(ferry_factory, pg_pair):
    cfg = make_config(pg_listener(pg_pair), workers=1)
    ferry = ferry_factory(cfg)
    ferry.reload(dict(cfg, shutdown_timeout=7))
    wait_for(lambda: generation(ferry) == 2, timeout=RELOAD_WAIT, what="config generation 2")
    time.sleep(1.5)
    assert generation(ferry) == 2


def test_watch_config_must_be_boolean():
    code, _, err = harness.check(make_config(watch_config="yes"))
    assert code == 2
    assert "watch_config" in err and "expected a boolean" in err
