"""Discovery with the AWS signals, against the fake AWS endpoint (which
checks every SigV4 signature with botocore): RDS settles a split brain the
probes cannot, CloudWatch lag is reported, and AWS failures never stop
discovery from working on the probes."""

import json
import time

import pytest

import harness
from fakes_fixture import fake_aws  # noqa: F401 - fixture
from fake_aws import STATIC_AKID, STATIC_SECRET
from fronts import pg_dsn
from harness import cluster, listener, make_config
from harness.proc import wait_for
from test_discovery import FAST, discovery_of, pg_port_via, writer_of
from test_ops import metric, parse_metrics


def aws_listener(pair):
    return listener("pg", "postgresql", [
        dict(cluster("region-a", pair.primary), region="us-east-1",
             db_cluster_identifier="ferry-primary"),
        dict(cluster("region-b", pair.replica), region="eu-west-1",
             db_cluster_identifier="ferry-secondary"),
    ], probe={"user": "ferry_test", "password": "ferry_pw"}, aws_global_cluster="ferry-global")


def aws_config(pair, fake, **aws):
    return make_config(aws_listener(pair), workers=1, discovery=FAST,
                       aws=dict({"region": "us-east-1", "poll_interval": 1, "lag_poll_interval": 1,
                                 "credentials": "env",
                                 "endpoints": {"rds": fake.url, "monitoring": fake.url}}, **aws))


@pytest.fixture
def aws_env(monkeypatch):
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", STATIC_AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STATIC_SECRET)


def test_aws_settles_split_brain(ferry_factory, own_pg, fake_aws, aws_env):
    # Both clusters writable: the replica was promoted, the old primary never demoted.
    own_pg.replica.promote()
    fake_aws.set_writer("ferry-secondary")
    ferry = ferry_factory(aws_config(own_pg, fake_aws))
    wait_for(lambda: writer_of(ferry, "pg") == "region-b", timeout=15,
             what="AWS to settle the split brain on region-b")
    wait_for(lambda: discovery_of(ferry, "pg")["clusters"][1]["aws"]["role"] == "writer",
             timeout=15, what="AWS's roles (the first poll comes within a heartbeat)")
    entry = discovery_of(ferry, "pg")
    change = ferry.status()["discovery"]["history"][-1]
    assert change["to"] == "region-b"
    # whichever comes first: the promoted replica's newer timeline (the first
    # probe round) or AWS (the first DescribeGlobalClusters); they agree
    assert ("AWS names region-b writer and a probe confirms it" in change["reason"] or
            "region-b is on the newest timeline (2)" in change["reason"]), change["reason"]
    roles = {c["name"]: c["aws"]["role"] for c in entry["clusters"]}
    assert roles == {"region-a": "reader", "region-b": "writer"}
    assert entry["split_brain"] is True
    assert pg_port_via(ferry) == own_pg.replica.port
    signed = fake_aws.requests_for(action="DescribeGlobalClusters")
    assert signed and all(r.get("signature_ok", True) for r in signed)


def test_lag_and_aws_counters(ferry_factory, pg_pair, fake_aws, aws_env):
    fake_aws.set_lag("ferry-secondary", 250.0)
    fake_aws.set_lag("ferry-primary")          # absent, as for a primary
    ferry = ferry_factory(aws_config(pg_pair, fake_aws))
    wait_for(lambda: discovery_of(ferry, "pg")["clusters"][1]["aws"]["replication_lag_ms"] == 250.0,
             timeout=15, what="the secondary's lag")
    wait_for(lambda: discovery_of(ferry, "pg")["aws"]["describe_global_clusters_ok_total"] >= 1,
             timeout=15, what="a DescribeGlobalClusters answer")
    entry = discovery_of(ferry, "pg")
    prim, sec = (c["aws"] for c in entry["clusters"])
    assert prim["replication_lag_ms"] is None and prim["lag_measured_at"] is None
    assert prim["lag_stale"] is None and prim["lag_age_seconds"] is None
    assert entry["writer"] == "region-a"
    # the datapoint's own time (the last complete minute), not when ferry read it
    assert sec["lag_measured_at"].endswith(":00.000Z") and sec["lag_stale"] is False
    assert sec["lag_measured_at"] < sec["lag_observed_at"]
    assert 60 <= sec["lag_age_seconds"] < 200
    m = parse_metrics(ferry.http_get("/metrics")[1])
    assert metric(m, "ferry_replication_lag_seconds", listener="pg", cluster="region-b") == 0.25
    assert 60 <= metric(m, "ferry_replication_lag_age_seconds", listener="pg",
                        cluster="region-b") < 200
    assert metric(m, "ferry_aws_calls_total", listener="pg", api="GetMetricData", outcome="ok") >= 1
    assert metric(m, "ferry_aws_calls_total", listener="pg", api="DescribeGlobalClusters",
                  outcome="ok") >= 1
    assert STATIC_SECRET not in ferry.log_text() + json.dumps(ferry.status())


@pytest.mark.parametrize("dimensions", [("DBClusterIdentifier", "SourceRegion"),
                                        ("DBClusterIdentifier",)])
def test_lag_read_whatever_dimension_set_aws_publishes(ferry_factory, pg_pair, fake_aws, aws_env,
                                                       dimensions):
    """The fake answers a query on another dimension set than the published
    one with an empty series, as CloudWatch does; ferry's SEARCH finds the
    lag under either set the documentation suggests."""
    fake_aws.set_lag_dimensions(*dimensions)
    fake_aws.set_lag("ferry-secondary", 180.0)
    ferry = ferry_factory(aws_config(pg_pair, fake_aws))
    wait_for(lambda: discovery_of(ferry, "pg")["clusters"][1]["aws"]["replication_lag_ms"] == 180.0,
             timeout=15, what="the secondary's lag")
    assert {"id": "m0", "matched": 1} in fake_aws.metric_queries


def test_stale_lag_datapoint_is_shown_stale(ferry_factory, pg_pair, fake_aws, aws_env):
    """Publication stopped 12 minutes ago: the last datapoint is still shown,
    with the time AWS measured it, and flagged stale."""
    fake_aws.set_lag("ferry-secondary", 420.0, age=12 * 60)
    ferry = ferry_factory(aws_config(pg_pair, fake_aws))
    wait_for(lambda: discovery_of(ferry, "pg")["clusters"][1]["aws"]["replication_lag_ms"] == 420.0,
             timeout=15, what="the secondary's lag")
    sec = discovery_of(ferry, "pg")["clusters"][1]["aws"]
    assert sec["lag_stale"] is True and 13 * 60 <= sec["lag_age_seconds"] < 15 * 60
    m = parse_metrics(ferry.http_get("/metrics")[1])
    assert metric(m, "ferry_replication_lag_age_seconds", listener="pg", cluster="region-b") >= 720


def test_least_lagged_secondary_is_the_candidate(ferry_factory, own_pg, fake_aws, aws_env):
    """Two healthy secondaries once the writer is gone: AWS's lag names the
    candidate (held clients log in there ahead of the promotion); lag that
    is stale names none."""
    import fake_aws as fa
    fake_aws.members.append(fa.Member("ferry-tertiary", "ap-southeast-2"))
    third = dict(cluster("region-c", f"localhost:{own_pg.replica.port}"), region="ap-southeast-2",
                 db_cluster_identifier="ferry-tertiary")
    config = aws_config(own_pg, fake_aws)
    config["listeners"][0]["clusters"].append(third)
    fake_aws.set_lag("ferry-secondary", 900.0)
    fake_aws.set_lag("ferry-tertiary", 120.0)
    ferry = ferry_factory(config)
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a")
    wait_for(lambda: [c["aws"]["replication_lag_ms"] for c in discovery_of(ferry, "pg")["clusters"]]
             == [None, 900.0, 120.0], timeout=15, what="both secondaries' lag")
    assert discovery_of(ferry, "pg")["candidate"] is None       # a healthy writer: nobody waits
    own_pg.primary.stop(mode="immediate")
    wait_for(lambda: discovery_of(ferry, "pg")["candidate"] == "region-c", timeout=15,
             what="the least lagged secondary as candidate")
    fake_aws.set_lag("ferry-tertiary", 2500.0)
    wait_for(lambda: discovery_of(ferry, "pg")["candidate"] == "region-b", timeout=15,
             what="the candidate to follow the lag")
    fake_aws.set_lag("ferry-secondary", 10.0, age=12 * 60)      # stale: lag no longer settles it
    wait_for(lambda: discovery_of(ferry, "pg")["candidate"] is None, timeout=15,
             what="no candidate on stale lag")
    assert writer_of(ferry, "pg") is None


@pytest.mark.parametrize("fault", ["access_denied", "garbage", "throttle", "500"])
def test_aws_failures_leave_probes_in_charge(ferry_factory, pg_pair, fake_aws, aws_env, fault):
    fake_aws.fail_next("DescribeGlobalClusters", fault, times=1000)
    ferry = ferry_factory(aws_config(pg_pair, fake_aws))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="probes alone to decide")
    wait_for(lambda: (discovery_of(ferry, "pg").get("aws") or {}).get("last_error"), timeout=20,
             what="the AWS failure to be recorded")
    aws = discovery_of(ferry, "pg")["aws"]
    assert aws["describe_global_clusters_errors_total"] >= 1
    assert aws["describe_global_clusters_ok_total"] == 0
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 1") == [(1,)]
    if fault == "access_denied":
        wait_for(lambda: "missing_iam_action=rds:DescribeGlobalClusters" in ferry.log_text(),
                 timeout=10, what="the IAM action in the log")


def test_aws_config_errors(tmp_path, pg_pair):
    bad = make_config(dict(aws_listener(pg_pair), probe=None))
    del bad["listeners"][0]["probe"]
    code, out, err = harness.check(bad)
    assert code == 2
    assert "listeners[0].aws_global_cluster: needs \"probe\"" in err
    code, out, err = harness.check(dict(make_config(aws_listener(pg_pair)),
                                        aws={"credentials": "static"}))
    assert code == 2 and "aws.credentials: \"static\" is not one of" in err


def test_one_describe_global_clusters_per_poll_for_several_listeners(ferry_factory, pg_pair,
                                                                      fake_aws, aws_env):
    """The RDS budget is the fleet's: two listeners of one global cluster
    share one schedule and one call per poll."""
    second = aws_listener(pg_pair)
    second["name"] = "pg2"
    second["bind"] = f"127.0.0.1:{harness.free_port()}"
    config = aws_config(pg_pair, fake_aws, poll_interval=1)
    config["listeners"].append(second)
    ferry = ferry_factory(config)
    for name in ("pg", "pg2"):
        wait_for(lambda: discovery_of(ferry, name)["clusters"][0]["aws"]["role"] == "writer",
                 timeout=15, what=f"AWS roles on listener {name}")
    fake_aws.clear_requests()
    time.sleep(4)
    calls = len(fake_aws.requests_for(action="DescribeGlobalClusters"))
    assert 2 <= calls <= 6, calls      # a heartbeat of 1 s ± 20 %, not one call per listener
    assert discovery_of(ferry, "pg")["aws"]["describe_global_clusters_throttled_total"] == 0


def test_aws_switchover_in_progress_holds_then_follows_the_target(ferry_factory, own_pg, fake_aws,
                                                                  aws_env):
    """FailoverState (a switchover): the From cluster takes no new work at
    once, even while it still accepts writes; the To cluster is the
    candidate, and the writer as soon as a probe finds it writable."""
    ferry = ferry_factory(aws_config(own_pg, fake_aws))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a")
    fake_aws.set_failover("switching-over", "ferry-primary", "ferry-secondary", data_loss=False)
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=15, what="region-a fenced for new work")
    d = discovery_of(ferry, "pg")
    assert d["candidate"] == "region-b"
    assert "AWS reports a switchover from region-a to region-b in progress" in d["reason"]
    assert [c["fenced"] for c in d["clusters"]] == [True, False]
    own_pg.replica.promote()
    wait_for(lambda: writer_of(ferry, "pg") == "region-b", timeout=15, what="the target taken")
    assert "switchover to region-b in progress and a probe finds it writable" in \
        ferry.status()["discovery"]["history"][-1]["reason"]
    assert pg_port_via(ferry) == own_pg.replica.port
    fake_aws.set_failover(None, None, None)
    fake_aws.set_writer("ferry-secondary")
    time.sleep(2)
    assert writer_of(ferry, "pg") == "region-b"


def test_aws_failover_with_data_loss_waits_for_aws_to_name_the_writer(ferry_factory, own_pg,
                                                                      fake_aws, aws_env):
    ferry = ferry_factory(aws_config(own_pg, fake_aws))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a")
    fake_aws.set_failover("failing-over", "ferry-primary", "ferry-secondary", data_loss=True)
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=15, what="writes held")
    own_pg.replica.promote()
    wait_for(lambda: [c["state"] for c in discovery_of(ferry, "pg")["clusters"]] ==
             ["writable", "writable"], timeout=10, what="the promotion seen")
    time.sleep(1)       # promoted and writable, but AWS has not confirmed it yet
    d = discovery_of(ferry, "pg")
    assert d["writer"] is None and d["candidate"] == "region-b"
    assert "holding writes until AWS names the new writer" in d["reason"]
    fake_aws.set_failover(None, None, None)
    fake_aws.set_writer("ferry-secondary")
    wait_for(lambda: writer_of(ferry, "pg") == "region-b", timeout=15, what="AWS's confirmation")
    assert "AWS names region-b writer and a probe confirms it" in \
        ferry.status()["discovery"]["history"][-1]["reason"]
