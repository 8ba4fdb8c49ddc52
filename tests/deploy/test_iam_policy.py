"""docker/iam-policy.json: valid JSON IAM policy with exactly the actions ferry
needs, optional ones in their own statements, resources scoped where AWS can."""

import json
import re

import deploylib as d

REQUIRED = {"rds:DescribeGlobalClusters", "rds:DescribeDBClusters", "cloudwatch:GetMetricData"}
OPTIONAL = {"secretsmanager:GetSecretValue", "rds-db:connect"}
ARN = {
    "rds:DescribeGlobalClusters": r"arn:aws:rds::\d{12}:global-cluster:[\w-]+",
    "rds:DescribeDBClusters": r"arn:aws:rds:[a-z]{2}-[a-z]+-\d:\d{12}:cluster:[\w-]+",
    "secretsmanager:GetSecretValue": r"arn:aws:secretsmanager:[a-z]{2}-[a-z]+-\d:\d{12}:secret:[\w/+=.@-]+\*?",
    "rds-db:connect": r"arn:aws:rds-db:[a-z]{2}-[a-z]+-\d:\d{12}:dbuser:cluster-[A-Z0-9]+/[\w-]+",
}


def _policy():
    return json.loads(d.IAM_POLICY.read_text())


def _actions(statement):
    a = statement["Action"]
    return [a] if isinstance(a, str) else a


def test_policy_has_exactly_the_documented_actions():
    policy = _policy()
    assert policy["Version"] == "2012-10-17"
    actions = [a for s in policy["Statement"] for a in _actions(s)]
    assert len(actions) == len(set(actions)), "an action appears twice"
    assert set(actions) == REQUIRED | OPTIONAL
    assert not any("*" in a for a in actions), "no wildcard actions"


def test_statements_have_unique_sids_and_optional_ones_say_so():
    statements = _policy()["Statement"]
    sids = [s["Sid"] for s in statements]
    assert len(sids) == len(set(sids)) and all(re.fullmatch(r"[A-Za-z0-9]+", s) for s in sids)
    for s in statements:
        assert s["Effect"] == "Allow" and "NotAction" not in s and "NotResource" not in s
        assert len(_actions(s)) == 1, "one action per statement, so each can be dropped alone"
        optional = _actions(s)[0] in OPTIONAL
        assert s["Sid"].startswith("Optional") == optional, s["Sid"]


def test_resources_are_scoped_where_aws_allows():
    for s in _policy()["Statement"]:
        action = _actions(s)[0]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        if action == "cloudwatch:GetMetricData":
            assert resources == ["*"], "GetMetricData has no resource-level permissions"
            continue
        for r in resources:
            assert re.fullmatch(ARN[action], r), f"{action}: {r}"
