"""Configs the proxy tests share: ferry in front of the session's servers."""

import harness
from harness import cluster, listener, make_config


def pg_listener(pg_pair, name="pg", **options):
    """A postgresql listener routing to the primary (writer) with the replica
    as the second region."""
    return listener(name, "postgresql", [cluster("region-a", pg_pair.primary, writer=True),
                                         cluster("region-b", pg_pair.replica)], **options)


def my_listener(mariadb_pair, name="my", **options):
    return listener(name, "mysql", [cluster("region-a", mariadb_pair.primary, writer=True),
                                    cluster("region-b", mariadb_pair.replica)], **options)


def pg_dsn(ferry, name="pg", **kw):
    host, port = ferry.listener_addr(name)
    return harness.pg.dsn(host, port, **kw)


def my_connect(ferry, name="my", **kw):
    host, port = ferry.listener_addr(name)
    return harness.mariadb.connect(host, port, **kw)


def both(pg_pair, mariadb_pair, **top):
    return make_config(pg_listener(pg_pair), my_listener(mariadb_pair), workers=2, **top)


def listener_status(ferry, name):
    for entry in ferry.status()["listeners"]:
        if entry["name"] == name:
            return entry
    raise KeyError(name)
