"""ferry's AWS client (discovery/aws) against the fake AWS endpoint, through
the aws_probe driver: SigV4 accepted by botocore's verifier (and a wrong
secret refused), writer detection, replication lag, every credential source,
retries on throttling / 500 / timeouts, AccessDenied naming the IAM action,
garbage replies, and credential refresh on ExpiredToken."""

import botocore.session
import pytest
from botocore.exceptions import ClientError

from fakes_fixture import aws_probe, fake_aws  # noqa: F401
from fakes_fixture import fake_aws_module as fa


def api_requests(fake, action):
    return fake.requests_for(action=action, kind="api")


# ---- signing and results --------------------------------------------------

def test_signed_request_accepted_and_writer_detected(aws_probe, fake_aws):
    call = aws_probe("global", "ferry-global").call
    assert call["ok"], call
    assert call["attempts"] == 1 and call["credentials"] == "env"
    (g,) = call["result"]
    assert g["writer"] == "ferry-primary"
    assert {m["region"]: m["is_writer"] for m in g["members"]} == {"us-east-1": True,
                                                                  "eu-west-1": False}
    (req,) = api_requests(fake_aws, "DescribeGlobalClusters")
    assert req["signature_ok"] and req["akid"] == fa.STATIC_AKID
    assert (req["region"], req["signing_service"]) == ("us-east-1", "rds")
    assert req["form"] == {"Action": "DescribeGlobalClusters", "Version": "2014-10-31",
                           "GlobalClusterIdentifier": "ferry-global"}


def test_wrong_secret_is_rejected_by_the_fake(aws_probe, fake_aws):
    res = aws_probe("global", "ferry-global", env=aws_probe.static_env(secret="not-the-secret"))
    call = res.call
    assert not call["ok"] and res.returncode == 1
    assert call["error"]["class"] == "auth"
    assert call["error"]["code"] == "SignatureDoesNotMatch"
    assert call["attempts"] == 1                       # a bad key is never retried
    assert not api_requests(fake_aws, "DescribeGlobalClusters")[0]["signature_ok"]
    assert "not-the-secret" not in res.stderr


def test_writer_moves_and_failover_state(aws_probe, fake_aws):
    fake_aws.set_failover("failing-over", "ferry-primary", "ferry-secondary", data_loss=True)
    fake_aws.set_writer("ferry-secondary")
    (g,) = aws_probe("global", "ferry-global").call["result"]
    assert g["writer"] == "ferry-secondary" and g["status"] == "failing-over"
    assert g["failover"]["data_loss_allowed"] is True
    assert g["failover"]["to"].endswith(":cluster:ferry-secondary")


def test_unknown_global_cluster_is_a_caller_error(aws_probe):
    call = aws_probe("global", "nope").call
    assert call["error"]["class"] == "caller" and call["error"]["http_status"] == 404
    assert call["attempts"] == 1


def test_db_clusters(aws_probe, fake_aws):
    (c,) = aws_probe("clusters", "ferry-secondary").call["result"]
    assert c["id"] == "ferry-secondary" and c["status"] == "available" and c["port"] == 5432
    assert c["endpoint"].endswith(".eu-west-1.rds.amazonaws.com")
    assert [m["is_writer"] for m in c["members"]] == [True, False]


def test_replication_lag_present_for_secondary_absent_for_primary(aws_probe, fake_aws):
    fake_aws.set_lag("ferry-secondary", 250.0, 180.0)
    call = aws_probe("lag", "ferry-secondary", "ferry-primary", region="eu-west-1").call
    assert call["ok"], call
    sec, prim = call["result"]
    assert sec["cluster_id"] == "ferry-secondary" and sec["present"] and sec["lag_ms"] == 250.0
    assert sec["points"] == 2 and sec["at"] % 60 == 0
    assert prim == {"cluster_id": "ferry-primary", "present": False, "status": "Complete",
                    "points": 0}
    (req,) = api_requests(fake_aws, "GetMetricData")
    assert (req["region"], req["signing_service"]) == ("eu-west-1", "monitoring")
    assert req["form"]["MetricDataQueries.member.1.Expression"] == LAG_SEARCH % "ferry-secondary"
    assert req["form"]["StartTime"].endswith(":00Z") and req["form"]["EndTime"].endswith(":00Z")


LAG_SEARCH = ("SEARCH('Namespace=\"AWS/RDS\" MetricName=\"AuroraGlobalDBReplicationLag\" "
              "DBClusterIdentifier=\"%s\"', 'Maximum', 60)")


def test_lag_request_is_what_botocore_serializes(aws_probe, fake_aws):
    """The GetMetricData form ferry sends, decoded, equals botocore's query
    serialization of the same request (an independent encoder)."""
    import datetime
    from botocore import serialize
    aws_probe("lag", "ferry-secondary", "Ferry-Primary", region="eu-west-1")
    (req,) = api_requests(fake_aws, "GetMetricData")
    form = req["form"]
    when = {k: datetime.datetime.strptime(form[k], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc) for k in ("StartTime", "EndTime")}
    assert (when["EndTime"] - when["StartTime"]).total_seconds() == 900   # stale points still seen
    model = botocore.session.get_session().get_service_model("cloudwatch")
    expected = serialize.create_serializer("query").serialize_to_request(
        {"MetricDataQueries": [{"Id": "m0", "Expression": LAG_SEARCH % "ferry-secondary"},
                               {"Id": "m1", "Expression": LAG_SEARCH % "ferry-primary"}],
         "ScanBy": "TimestampDescending", **when},
        model.operation_model("GetMetricData"))["body"]
    assert form == expected


@pytest.mark.parametrize("dimensions", [("DBClusterIdentifier", "SourceRegion"),
                                        ("DBClusterIdentifier",)])
def test_lag_found_whatever_dimension_set_it_is_published_under(aws_probe, fake_aws, dimensions):
    fake_aws.set_lag_dimensions(*dimensions)
    fake_aws.set_lag("ferry-secondary", 75.0, 60.0)
    (sec,) = aws_probe("lag", "ferry-secondary", region="eu-west-1").call["result"]
    assert sec["present"] and sec["lag_ms"] == 75.0 and sec["points"] == 2
    assert fake_aws.metric_queries == [{"id": "m0", "matched": 1}]


def test_lag_datapoint_keeps_its_own_timestamp(aws_probe, fake_aws):
    """`at` is when CloudWatch measured the lag (the datapoint's timestamp),
    even when publication stopped minutes ago, not when ferry read it."""
    import time
    fake_aws.set_lag("ferry-secondary", 310.0, 200.0, age=12 * 60)
    (sec,) = aws_probe("lag", "ferry-secondary", region="eu-west-1").call["result"]
    assert sec["present"] and sec["lag_ms"] == 310.0
    newest_complete = (int(time.time()) // 60 - 1) * 60
    assert newest_complete - sec["at"] in (12 * 60, 13 * 60)   # a minute may turn meanwhile


# ---- credential sources ---------------------------------------------------

def assert_signed_with_issued(fake, source):
    issued = [r["issued"] for r in fake.requests if r.get("issued")]
    assert issued, f"no credentials were issued by {source}"
    (req,) = api_requests(fake, "DescribeGlobalClusters")
    assert req["signature_ok"] and req["akid"] == issued[-1] and req["security_token"]
    assert fake.creds[req["akid"]]["source"] == source


def test_credentials_from_web_identity(aws_probe, fake_aws, tmp_path):
    token = tmp_path / "token"
    token.write_text(fa.WEB_IDENTITY_TOKEN + "\n")
    env = aws_probe.env(AWS_WEB_IDENTITY_TOKEN_FILE=token, AWS_ROLE_ARN=fa.ROLE_ARN,
                        AWS_ROLE_SESSION_NAME="ferry-test", AWS_ENDPOINT_URL_STS=fake_aws.url + "/")
    call = aws_probe("global", "ferry-global", env=env).call
    assert call["ok"] and call["credentials"] == "web_identity", call
    (sts,) = fake_aws.requests_for(kind="sts")
    assert sts["signed"] is False                      # AssumeRoleWithWebIdentity is unsigned
    assert sts["form"]["WebIdentityToken"] == fa.WEB_IDENTITY_TOKEN
    assert sts["form"]["RoleSessionName"] == "ferry-test"
    assert_signed_with_issued(fake_aws, "web_identity")


def test_credentials_from_container_full_uri_and_token_file(aws_probe, fake_aws, tmp_path):
    tok = tmp_path / "pod-identity-token"
    tok.write_text(fa.CONTAINER_AUTH_TOKEN)
    env = aws_probe.env(AWS_CONTAINER_CREDENTIALS_FULL_URI=fake_aws.url + fa.CONTAINER_PATH,
                        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=tok,
                        AWS_CONTAINER_AUTHORIZATION_TOKEN="loses-to-the-file")
    call = aws_probe("global", "ferry-global", env=env).call
    assert call["ok"] and call["credentials"] == "container", call
    (c,) = fake_aws.requests_for(kind="container")
    assert c["authorization"] == fa.CONTAINER_AUTH_TOKEN
    assert_signed_with_issued(fake_aws, "container")


def test_credentials_from_container_relative_uri(aws_probe, fake_aws):
    env = aws_probe.env(AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=fa.CONTAINER_PATH,
                        AWS_CONTAINER_AUTHORIZATION_TOKEN=fa.CONTAINER_AUTH_TOKEN)
    call = aws_probe("--container-host", fake_aws.url, "global", "ferry-global", env=env).call
    assert call["ok"] and call["credentials"] == "container", call
    assert_signed_with_issued(fake_aws, "container")


def test_container_uri_must_be_local_over_http(aws_probe, fake_aws):
    env = aws_probe.env(AWS_CONTAINER_CREDENTIALS_FULL_URI="http://10.0.0.1/creds")
    call = aws_probe("global", "ferry-global", env=env).call
    assert call["error"]["class"] == "no_credentials"
    assert not fake_aws.requests


def test_credentials_from_imds_v2(aws_probe, fake_aws):
    res = aws_probe("--imds-endpoint", fake_aws.url, "--repeat", "2", "global", "ferry-global",
                    env=aws_probe.env())
    assert [c["ok"] for c in res.calls] == [True, True], res.calls
    assert res.calls[0]["credentials"] == "imds"
    steps = [(r["method"], r["step"]) for r in fake_aws.requests_for(kind="imds")]
    # One fetch serves both calls: the credentials are cached until near expiry.
    assert steps == [("PUT", "token"), ("GET", "role"), ("GET", "credentials")]
    assert fake_aws.requests_for(kind="imds")[0]["ttl"] == "21600"
    issued = [r["issued"] for r in fake_aws.requests if r.get("issued")]
    assert {r["akid"] for r in api_requests(fake_aws, "DescribeGlobalClusters")} == set(issued)


def test_no_credentials_anywhere(aws_probe, fake_aws):
    call = aws_probe("global", "ferry-global", env=aws_probe.env(AWS_EC2_METADATA_DISABLED="true")).call
    assert call["error"]["class"] == "no_credentials" and call["attempts"] == 0


def test_expired_token_refreshes_credentials(aws_probe, fake_aws):
    fake_aws.expire_next_token()
    env = aws_probe.env(AWS_CONTAINER_CREDENTIALS_FULL_URI=fake_aws.url + fa.CONTAINER_PATH,
                        AWS_CONTAINER_AUTHORIZATION_TOKEN=fa.CONTAINER_AUTH_TOKEN)
    res = aws_probe("global", "ferry-global", env=env)
    call = res.call
    assert call["ok"] and call["attempts"] == 2, (call, res.stderr)
    assert len(fake_aws.requests_for(kind="container")) == 2
    first, second = api_requests(fake_aws, "DescribeGlobalClusters")
    assert first["status"] == 400 and second["status"] == 200
    assert first["akid"] != second["akid"]


# ---- retries and errors ---------------------------------------------------

def test_throttling_is_retried_with_backoff(aws_probe, fake_aws):
    fake_aws.fail_next("DescribeGlobalClusters", "throttle", times=2)
    res = aws_probe("global", "ferry-global")
    assert res.call["ok"] and res.call["attempts"] == 3
    assert [r["status"] for r in api_requests(fake_aws, "DescribeGlobalClusters")] == [400, 400, 200]
    assert res.stderr.count("event=aws.retry") == 2 and "code=Throttling" in res.stderr


def test_throttling_gives_up_after_max_attempts(aws_probe, fake_aws):
    fake_aws.fail_next("GetMetricData", "throttle", times=5)
    call = aws_probe("--attempts", "3", "lag", "ferry-secondary", region="eu-west-1").call
    assert call["error"]["class"] == "throttled" and call["attempts"] == 3
    assert len(api_requests(fake_aws, "GetMetricData")) == 3


def test_server_error_is_retried(aws_probe, fake_aws):
    fake_aws.fail_next("DescribeDBClusters", "500")
    call = aws_probe("clusters", "ferry-primary").call
    assert call["ok"] and call["attempts"] == 2


def test_slow_reply_times_out_and_is_retried(aws_probe, fake_aws):
    fake_aws.slow_seconds = 1.5
    fake_aws.fail_next("DescribeGlobalClusters", "slow")
    res = aws_probe("global", "ferry-global", timeout_ms=400)
    assert res.call["ok"] and res.call["attempts"] == 2, res.stderr
    assert "class=transport" in res.stderr


@pytest.mark.parametrize("args,region,action,iam", [
    (("global", "ferry-global"), "us-east-1", "DescribeGlobalClusters", "rds:DescribeGlobalClusters"),
    (("clusters", "ferry-primary"), "us-east-1", "DescribeDBClusters", "rds:DescribeDBClusters"),
    (("lag", "ferry-secondary"), "eu-west-1", "GetMetricData", "cloudwatch:GetMetricData"),
])
def test_access_denied_names_the_iam_action(aws_probe, fake_aws, args, region, action, iam):
    fake_aws.fail_next(action, "access_denied")
    res = aws_probe(*args, region=region)
    call = res.call
    assert call["error"]["class"] == "access_denied" and call["error"]["code"] == "AccessDenied"
    assert call["iam_action"] == iam and call["attempts"] == 1
    (line,) = [ln for ln in res.stderr.splitlines() if "event=aws.access_denied" in ln]
    assert f"missing_iam_action={iam}" in line and "level=error" in line
    assert len(api_requests(fake_aws, action)) == 1


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_garbage_reply_is_a_clean_error(aws_probe, fake_aws, kind):
    fake_aws.fail_next("DescribeGlobalClusters", kind)
    res = aws_probe("global", "ferry-global")
    call = res.call
    assert call["error"]["class"] == "bad_response" and call["error"]["http_status"] == 200
    assert call["error"]["message"].startswith("malformed XML")
    assert call["attempts"] == 1


def test_secrets_never_logged(aws_probe, fake_aws):
    env = aws_probe.env(AWS_CONTAINER_CREDENTIALS_FULL_URI=fake_aws.url + fa.CONTAINER_PATH,
                        AWS_CONTAINER_AUTHORIZATION_TOKEN=fa.CONTAINER_AUTH_TOKEN)
    res = aws_probe("--log-level", "debug", "global", "ferry-global", env=env)
    assert res.call["ok"]
    (akid,) = [r["issued"] for r in fake_aws.requests if r.get("issued")]
    cred = fake_aws.creds[akid]
    for secret in (cred["secret"], cred["token"], fa.CONTAINER_AUTH_TOKEN, akid):
        assert secret not in res.stderr and secret not in str(res.calls)
    assert akid[:8] in res.stderr                     # the prefix only


@pytest.mark.parametrize("source", ["env", "imds"])
def test_client_freed_mid_call_cancels_cleanly(aws_probe, fake_aws, source):
    """Freeing the client with a request (or a credentials fetch) in flight
    reports "cancelled", closes every handle (the probe's uv_loop_close
    would fail otherwise) and leaks nothing under the sanitizer build."""
    fake_aws.slow_seconds = 2.0
    if source == "env":
        fake_aws.fail_next("DescribeGlobalClusters", "slow")
        env = aws_probe.static_env()
    else:
        fake_aws.fail_next("imds", "slow")
        env = aws_probe.env()
    res = aws_probe("--imds-endpoint", fake_aws.url, "--cancel-after-ms", "300", "global",
                    "ferry-global", env=env)
    assert res.returncode == 1
    assert res.call["error"]["class"] == "cancelled", res.call


# ---- the fake itself speaks real AWS: botocore as the client --------------

def test_fake_is_understood_by_botocore(fake_aws):
    session = botocore.session.get_session()
    kw = dict(endpoint_url=fake_aws.url, aws_access_key_id=fa.STATIC_AKID,
              aws_secret_access_key=fa.STATIC_SECRET)
    rds = session.create_client("rds", region_name="us-east-1", **kw)
    (g,) = rds.describe_global_clusters(GlobalClusterIdentifier="ferry-global")["GlobalClusters"]
    assert [m["IsWriter"] for m in g["GlobalClusterMembers"]] == [True, False]
    (c,) = rds.describe_db_clusters(DBClusterIdentifier="ferry-secondary")["DBClusters"]
    assert c["Port"] == 5432 and c["DBClusterMembers"][0]["IsClusterWriter"] is True
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    cw = session.create_client("cloudwatch", region_name="eu-west-1", **kw)

    def lag(*dims, expression=None):
        query = {"Id": "m0", "Expression": expression} if expression else \
            {"Id": "m0", "MetricStat": {"Metric": {
                "Namespace": "AWS/RDS", "MetricName": "AuroraGlobalDBReplicationLag",
                "Dimensions": [{"Name": n, "Value": v} for n, v in dims]},
                "Period": 60, "Stat": "Maximum"}}
        out = cw.get_metric_data(MetricDataQueries=[query],
                                 StartTime=now - datetime.timedelta(minutes=10),
                                 EndTime=now + datetime.timedelta(minutes=1))
        return [(r["Id"], r["Values"], r["StatusCode"]) for r in out["MetricDataResults"]]

    # Published under {DBClusterIdentifier, SourceRegion} (SourceRegion: the
    # primary's region): a MetricStat gets data for exactly that set, and an
    # empty, Complete series for any other, as CloudWatch answers.
    both = [("DBClusterIdentifier", "ferry-secondary"), ("SourceRegion", "us-east-1")]
    assert lag(*both) == [("m0", [142.0, 97.5], "Complete")]
    assert lag(*both[:1]) == [("m0", [], "Complete")]                  # the old guess
    assert lag(*both[1:]) == [("m0", [], "Complete")]
    assert lag(both[0], ("SourceRegion", "eu-west-1")) == [("m0", [], "Complete")]
    assert lag(*reversed(both)) == [("m0", [142.0, 97.5], "Complete")]  # a set: order is free
    # SEARCH: a schema must name the exact set; designators match values exactly
    assert lag(expression=LAG_SEARCH % "ferry-secondary") == [("m0", [142.0, 97.5], "Complete")]
    assert lag(expression=LAG_SEARCH % "ferry-primary") == [("m0", [], "Complete")]
    schema = ("SEARCH('{AWS/RDS,%s} MetricName=\"AuroraGlobalDBReplicationLag\" "
              "DBClusterIdentifier=\"ferry-secondary\"', 'Maximum', 60)")
    assert lag(expression=schema % "DBClusterIdentifier,SourceRegion")[0][1] == [142.0, 97.5]
    assert lag(expression=schema % "DBClusterIdentifier")[0][1] == []
    fake_aws.set_lag_dimensions("DBClusterIdentifier")
    assert lag(*both[:1])[0][1] == [142.0, 97.5] and lag(*both)[0][1] == []
    assert lag(expression=LAG_SEARCH % "ferry-secondary")[0][1] == [142.0, 97.5]
    assert all(r["signature_ok"] for r in fake_aws.requests_for(kind="api"))
    fake_aws.fail_next("DescribeGlobalClusters", "access_denied")
    with pytest.raises(ClientError) as e:
        rds.describe_global_clusters()
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    bad = session.create_client("rds", region_name="us-east-1", endpoint_url=fake_aws.url,
                                aws_access_key_id=fa.STATIC_AKID, aws_secret_access_key="wrong")
    with pytest.raises(ClientError) as e:
        bad.describe_global_clusters()
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
