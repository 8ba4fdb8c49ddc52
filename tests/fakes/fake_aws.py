#!/usr/bin/python3
"""A fake AWS endpoint for ferry's tests, on 127.0.0.1 only.

Serves, in the real wire formats (reference/aws.md): RDS DescribeGlobalClusters
and DescribeDBClusters, CloudWatch GetMetricData (query protocol), STS
AssumeRoleWithWebIdentity, container credentials (ECS / EKS Pod Identity) and
EC2 IMDSv2. Every signed request has its SigV4 signature checked with
botocore's own signer (an implementation independent of ferry's); a wrong one
gets 403 SignatureDoesNotMatch, as AWS answers.

From pytest:
    fake = FakeAWS().start()          # or the `fake_aws` fixture in fakes_fixture.py
    fake.set_writer("ferry-secondary")
    fake.set_lag("ferry-secondary", 142.0)
    fake.set_lag_dimensions("DBClusterIdentifier")   # published under another set
    fake.fail_next("DescribeGlobalClusters", "throttle", times=2)
    ... run the client against fake.url ...
    fake.requests                     # every request, in order (dicts)
    fake.stop()

Standalone: `python3 tests/fakes/fake_aws.py --port 8999` and script it over
HTTP: GET /_fake/requests, POST /_fake/control {"op": "set_writer", "args": [...]}.

Driven by a topology instead: FakeAWS(source=obj) serves whatever
obj.aws_view() returns at each request (the Aurora stand-in,
tests/integration/harness/aurora.py, is such a source); see FakeAWS.view()
for the shape. set_writer / set_failover then refuse (the topology is the
source's); set_lag still overrides a cluster's lag series.
"""

import argparse
import collections
import datetime
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCOUNT = "123456789012"
STATIC_AKID = "AKIDFERRYTEST"
STATIC_SECRET = "ferry-test-secret/K7MDENG+bPxRfiCYEXAMPLEKEY"
WEB_IDENTITY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.ferry-test-service-account.sig"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/ferry-discovery"
CONTAINER_AUTH_TOKEN = "ferry-pod-identity-token"
CONTAINER_PATH = "/v1/credentials"
IMDS_ROLE = "ferry-node-role"

# Which service signs each action, and its XML namespace.
ACTIONS = {
    "DescribeGlobalClusters": ("rds", "http://rds.amazonaws.com/doc/2014-10-31/"),
    "DescribeDBClusters": ("rds", "http://rds.amazonaws.com/doc/2014-10-31/"),
    "GetMetricData": ("monitoring", "http://monitoring.amazonaws.com/doc/2010-08-01/"),
    "AssumeRoleWithWebIdentity": ("sts", "https://sts.amazonaws.com/doc/2011-06-15/"),
}

# Injectable faults: name -> (HTTP status, error Code, Message) for error documents.
FAULT_ERRORS = {
    "throttle": (400, "Throttling", "Rate exceeded"),
    "500": (500, "InternalFailure", "An internal error has occurred"),
    "503": (503, "ServiceUnavailable", "Service is unavailable"),
    "access_denied": (403, "AccessDenied", None),  # message names the action
    "expired_token": (400, "ExpiredToken", "The security token included in the request is expired"),
    "not_found": (404, "GlobalClusterNotFoundFault", "Global cluster not found"),
}
FAULT_KINDS = set(FAULT_ERRORS) | {"garbage", "truncated", "slow"}

_SEARCH = re.compile(r"""^SEARCH\(\s*'(?P<query>(?:[^'\\]|\\.)*)'\s*,\s*'(?P<stat>\w+)'\s*"""
                     r"""(?:,\s*(?P<period>\d+)\s*)?\)$""")
_TERM = re.compile(r"""\s*(?:(?P<key>[A-Za-z][\w/:.-]*)=)?"(?P<value>(?:[^"\\]|\\.)*)"\s*""")


def search_matches(expression, metric):
    """Whether CloudWatch's SEARCH() expression would return `metric`
    ({"namespace", "metric", "dimensions": {name: value}}). The subset of the
    search syntax this fake understands: an optional metric schema
    {Namespace,Dim,...} (the metric must have exactly those dimension names)
    and exact terms, `"value"` or `Name="value"` with Name one of Namespace,
    MetricName or a dimension name. Anything else (partial matches, Boolean
    operators) matches nothing, so a test fails rather than passing by luck."""
    m = _SEARCH.match(expression.strip())
    if not m or (m["period"] and int(m["period"]) % 60):
        return False
    query = m["query"].strip()
    if query.startswith("{"):
        close = query.find("}")
        if close < 0:
            return False
        schema = [x.strip().strip('"') for x in query[1:close].split(",")]
        if schema[0] != metric["namespace"] or set(schema[1:]) != set(metric["dimensions"]):
            return False
        query = query[close + 1:].lstrip(" ,")
    props = dict(metric["dimensions"], Namespace=metric["namespace"], MetricName=metric["metric"])
    pos = 0
    while pos < len(query):
        t = _TERM.match(query, pos)
        if not t or t.end() == pos:
            return False
        value = re.sub(r"\\(.)", r"\1", t["value"])
        if t["key"] is None:
            if value not in props.values() and value not in props:
                return False
        elif props.get(t["key"]) != value:
            return False
        pos = t.end()
    return True


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cluster_arn(region, cluster_id):
    return f"arn:aws:rds:{region}:{ACCOUNT}:cluster:{cluster_id}"


class Member:
    def __init__(self, cluster_id, region, writer=False, engine="aurora-postgresql"):
        self.cluster_id, self.region, self.writer, self.engine = cluster_id, region, writer, engine
        self.sync_status = "connected"
        self.status = "available"

    @property
    def arn(self):
        return cluster_arn(self.region, self.cluster_id)


class FakeAWS:
    """The fake's state and its HTTP server. All mutators are thread-safe."""

    def __init__(self, host="127.0.0.1", port=0, source=None):
        """source: an object whose aws_view() gives the topology to serve
        (see view()); None: the scripted state below."""
        self.host, self.port = host, port
        self.source = source
        self._lag_set = set()                 # clusters whose lag set_lag() overrode
        self.lock = threading.RLock()
        self.global_id = "ferry-global"
        self.members = [Member("ferry-primary", "us-east-1", writer=True),
                        Member("ferry-secondary", "eu-west-1")]
        self.failover = None                  # dict(status, from_id, to_id, data_loss) or None
        self.lag = {"ferry-secondary": [142.0, 97.5]}   # cluster id -> newest-first values (ms)
        self.lag_age = {}                     # cluster id -> seconds its newest point is held back
        # The dimension set AuroraGlobalDBReplicationLag is published under
        # (the console group the Aurora labs show); set_lag_dimensions()
        # changes it. SourceRegion's value is the primary's region.
        self.lag_dimensions = ("DBClusterIdentifier", "SourceRegion")
        self.metric_queries = []              # per GetMetricData query: {"id", "matched"}
        self.faults = collections.defaultdict(collections.deque)  # action/source -> kinds
        self.slow_seconds = 3.0
        self.expire_next_temporary = False    # next request signed with temporary creds: ExpiredToken
        self.credential_lifetime = 3600
        # akid -> {"secret", "token", "expires", "revoked", "source"}
        self.creds = {STATIC_AKID: {"secret": STATIC_SECRET, "token": None, "expires": None,
                                    "revoked": False, "source": "static"}}
        self.imds_tokens = set()
        self.requests = []
        self._server = None
        self._thread = None

    # ---- lifecycle -------------------------------------------------------

    def start(self):
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="fake-aws", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    # ---- scripting -------------------------------------------------------

    def _scripted(self, what):
        if self.source is not None:
            raise ValueError(f"{what}: the topology comes from {self.source!r}")

    def set_writer(self, cluster_id):
        self._scripted("set_writer")
        with self.lock:
            for m in self.members:
                m.writer = m.cluster_id == cluster_id

    def set_lag(self, cluster_id, *values, age=0):
        """Newest first, one a minute; no values = the series is absent (as
        for a primary). age: how many seconds before the last complete
        minute the newest datapoint was measured (publication stopped)."""
        with self.lock:
            self.lag[cluster_id] = list(values)
            self.lag_age[cluster_id] = age
            self._lag_set.add(cluster_id)

    def set_lag_dimensions(self, *names):
        """The dimension set the lag metric is published under, e.g.
        ("DBClusterIdentifier",) or ("DBClusterIdentifier", "SourceRegion")."""
        if not set(names) <= {"DBClusterIdentifier", "SourceRegion"} or not names:
            raise ValueError(f"unsupported dimension set {names!r}")
        with self.lock:
            self.lag_dimensions = tuple(names)

    def published_lag_metrics(self, now):
        """The AuroraGlobalDBReplicationLag metrics CloudWatch holds now:
        [{"namespace", "metric", "dimensions": {name: value}, "points":
        [(epoch, ms), newest first]}], one per secondary with a series (a
        primary publishes nothing)."""
        view = self.view()
        primary = next((m["region"] for m in view["members"] if m["writer"]), "")
        newest = (int(now) // 60 - 1) * 60                     # last complete minute
        with self.lock:
            names, ages = self.lag_dimensions, dict(self.lag_age)
        out = []
        for m in view["members"]:
            values = view["lag"].get(m["cluster_id"], [])
            if m["writer"] or not values:
                continue
            values_of = {"DBClusterIdentifier": m["cluster_id"], "SourceRegion": primary}
            t0 = newest - ages.get(m["cluster_id"], 0) // 60 * 60
            out.append({"namespace": "AWS/RDS", "metric": "AuroraGlobalDBReplicationLag",
                        "dimensions": {n: values_of[n] for n in names},
                        "points": [(t0 - 60 * i, v) for i, v in enumerate(values)]})
        return out

    def set_failover(self, status, from_id, to_id, data_loss=False):
        self._scripted("set_failover")
        with self.lock:
            self.failover = None if status is None else {
                "status": status, "from": from_id, "to": to_id, "data_loss": data_loss}

    def fail_next(self, target, kind, times=1):
        """The next `times` requests for target (an Action, or "container",
        "imds", "sts") get fault `kind` (see FAULT_KINDS)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        with self.lock:
            self.faults[target].extend([kind] * times)

    def expire_next_token(self):
        with self.lock:
            self.expire_next_temporary = True

    def issue_credentials(self, source):
        with self.lock:
            akid = "ASIA" + secrets.token_hex(8).upper()
            entry = {"secret": secrets.token_urlsafe(30), "token": secrets.token_urlsafe(120),
                     "expires": time.time() + self.credential_lifetime, "revoked": False,
                     "source": source}
            self.creds[akid] = entry
            return akid, entry

    def requests_for(self, action=None, kind=None):
        with self.lock:
            return [r for r in self.requests
                    if (action is None or r.get("action") == action)
                    and (kind is None or r.get("kind") == kind)]

    def clear_requests(self):
        with self.lock:
            self.requests.clear()

    def control(self, op, args):
        """The standalone control API: calls one of the scripting methods."""
        allowed = {"set_writer", "set_lag", "set_lag_dimensions", "set_failover", "fail_next",
                   "expire_next_token", "clear_requests"}
        if op not in allowed:
            raise ValueError(f"unknown op {op!r}")
        return getattr(self, op)(*args)

    def view(self):
        """The topology every RDS and CloudWatch answer is built from:

            {"global_id", "status", "engine", "engine_version",
             "endpoint": global writer endpoint,
             "members": [{"cluster_id", "region", "writer": IsWriter,
                          "sync_status", "status", "endpoint": None to omit it,
                          "reader_endpoint", "port",
                          "instances": [(DBInstanceIdentifier, IsClusterWriter)]}],
             "failover": None or {"status", "from", "to", "data_loss"},
             "lag": {cluster_id: [ms, newest first]}}

        From the source when there is one, else from the scripted state."""
        if self.source is not None:
            view = self.source.aws_view()
            with self.lock:
                view["lag"] = dict(view.get("lag", {}),
                                   **{k: list(self.lag[k]) for k in self._lag_set})
            return view
        with self.lock:
            members = []
            for m in self.members:
                h = hashlib.sha1(m.cluster_id.encode()).hexdigest()[:12]
                members.append({
                    "cluster_id": m.cluster_id, "region": m.region, "writer": m.writer,
                    "sync_status": m.sync_status, "status": m.status,
                    "endpoint": f"{m.cluster_id}.cluster-{h}.{m.region}.rds.amazonaws.com",
                    "reader_endpoint": f"{m.cluster_id}.cluster-ro-{h}.{m.region}.rds.amazonaws.com",
                    "port": 5432,
                    "instances": [(f"{m.cluster_id}-{i}", i == 1) for i in (1, 2)]})
            return {"global_id": self.global_id,
                    "status": "failing-over" if self.failover else "available",
                    "engine": self.members[0].engine, "engine_version": "15.4",
                    "endpoint": f"{self.global_id}.global-abc123.global.rds.amazonaws.com",
                    "members": members,
                    "failover": dict(self.failover) if self.failover else None,
                    "lag": {k: list(v) for k, v in self.lag.items()}}

    def _take_fault(self, target):
        with self.lock:
            q = self.faults.get(target)
            return q.popleft() if q else None

    # ---- signature verification -----------------------------------------

    def verify_signature(self, method, path, headers, body):
        """(ok, akid, region, service, error_code, message) using botocore."""
        headers = {k.lower(): v for k, v in headers.items()}
        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return False, None, None, None, "MissingAuthenticationToken", \
                "Request is missing Authentication Token"
        try:
            fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
            akid, date, region, service, term = fields["Credential"].split("/")
            signed = fields["SignedHeaders"].split(";")
            signature = fields["Signature"]
        except (KeyError, ValueError):
            return False, None, None, None, "IncompleteSignature", "Authorization header malformed"
        amz_date = headers.get("x-amz-date", "")
        if term != "aws4_request" or not amz_date.startswith(date) or \
                "host" not in signed or "x-amz-date" not in signed:
            return False, akid, region, service, "IncompleteSignature", \
                "Credential scope or signed headers invalid"
        if "x-amz-security-token" in headers and "x-amz-security-token" not in signed:
            return False, akid, region, service, "IncompleteSignature", \
                "X-Amz-Security-Token must be signed"
        with self.lock:
            entry = self.creds.get(akid)
        if entry is None:
            return False, akid, region, service, "InvalidClientTokenId", \
                "The security token included in the request is invalid."
        try:
            when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            return False, akid, region, service, "IncompleteSignature", "X-Amz-Date malformed"
        if abs(time.time() - when) > 300:
            return False, akid, region, service, "SignatureDoesNotMatch", \
                f"Signature expired: {amz_date} is now earlier than the allowed window"
        req = AWSRequest(method=method, url=f"http://{headers.get('host', '')}{path}", data=body,
                         headers={h: headers.get(h, "") for h in signed})
        req.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(akid, entry["secret"], entry["token"]), service, region)
        canonical = signer.canonical_request(req)
        expected = signer.signature(signer.string_to_sign(req, canonical), req)
        if expected != signature:
            return False, akid, region, service, "SignatureDoesNotMatch", (
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method.")
        if entry["token"] is not None and headers.get("x-amz-security-token") != entry["token"]:
            return False, akid, region, service, "InvalidClientTokenId", \
                "The security token included in the request is invalid."
        return True, akid, region, service, None, None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAWS = None
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: tests read fake.requests instead
        pass

    # ---- plumbing -------------------------------------------------------

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body, ctype="text/xml", extra=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", self._request_id)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _record(self, **kw):
        entry = {"method": self.command, "path": self.path, "time": time.time(), **kw}
        with self.fake.lock:
            self.fake.requests.append(entry)
        return entry

    def _error(self, status, code, message, ns="http://rds.amazonaws.com/doc/2014-10-31/"):
        typ = "Receiver" if status >= 500 else "Sender"
        self._send(status, f'<ErrorResponse xmlns="{ns}"><Error><Type>{typ}</Type>'
                           f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
                           f"<RequestId>{self._request_id}</RequestId></ErrorResponse>")

    def _apply_fault(self, kind, action, ns, entry):
        """Answers with fault kind; returns True when the request is done."""
        entry["fault"] = kind
        if kind == "slow":
            time.sleep(self.fake.slow_seconds)
            return False
        if kind == "garbage":
            self._send(200, "<html><body>Oops \x00 not XML", ctype="text/html")
        elif kind == "truncated":
            self._send(200, f'<{action}Response xmlns="{ns}"><{action}Result><GlobalClusters>'
                            f"<GlobalClusterMember><GlobalClusterIdentifier>ferry-glo")
        else:
            status, code, message = FAULT_ERRORS[kind]
            if kind == "access_denied":
                service = ACTIONS.get(action, ("rds",))[0]
                iam = "cloudwatch" if service == "monitoring" else service
                message = (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/ferry-discovery/ferry is not "
                           f"authorized to perform: {iam}:{action} on resource: "
                           f"arn:aws:rds:us-east-1:{ACCOUNT}:global-cluster:*")
            self._error(status, code, message, ns)
        entry["status"] = 200 if kind in ("garbage", "truncated") else FAULT_ERRORS[kind][0]
        return True

    # ---- dispatch -------------------------------------------------------

    def do_GET(self):
        self._request_id = secrets.token_hex(16)
        if self.path.startswith("/_fake/"):
            return self._control()
        if self.path.startswith("/latest/"):
            return self._imds()
        if self.path == CONTAINER_PATH:
            return self._container()
        self._record(kind="unknown", status=404)
        self._send(404, "not found", ctype="text/plain")

    def do_PUT(self):
        self._request_id = secrets.token_hex(16)
        self._body()
        if self.path == "/latest/api/token":
            return self._imds_token()
        self._record(kind="unknown", status=404)
        self._send(404, "not found", ctype="text/plain")

    def do_POST(self):
        self._request_id = secrets.token_hex(16)
        body = self._body()
        if self.path.startswith("/_fake/"):
            return self._control(body)
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = form.get("Action", "")
        service, ns = ACTIONS.get(action, (None, None))
        entry = self._record(kind="api", action=action, form=form, signed=False)
        if action == "AssumeRoleWithWebIdentity":
            return self._sts(form, entry)
        if service is None:
            entry["status"] = 400
            return self._error(400, "InvalidAction", f"Could not find operation {action}")
        headers = {k: v for k, v in self.headers.items()}
        ok, akid, region, signed_service, code, message = self.fake.verify_signature(
            "POST", self.path, headers, body)
        entry.update(signed=True, signature_ok=ok, akid=akid, region=region,
                     signing_service=signed_service, security_token="X-Amz-Security-Token" in headers)
        if not ok:
            entry["status"] = 403
            return self._error(403, code, message, ns)
        if signed_service != service:
            entry["status"] = 403
            return self._error(403, "SignatureDoesNotMatch",
                               f"Credential should be scoped to correct service: '{service}'.", ns)
        with self.fake.lock:
            cred = self.fake.creds[akid]
            expire = cred["token"] is not None and (
                cred["revoked"] or self.fake.expire_next_temporary or time.time() > cred["expires"])
            if expire:
                self.fake.expire_next_temporary = False
                cred["revoked"] = True
        if expire:
            entry["status"] = 400
            return self._error(400, *FAULT_ERRORS["expired_token"][1:], ns)
        kind = self.fake._take_fault(action)
        if kind and self._apply_fault(kind, action, ns, entry):
            return
        reply = getattr(self, "_" + action)(form, ns)
        if reply is None:
            entry["status"] = 404
            return self._error(404, "GlobalClusterNotFoundFault",
                               f"Global cluster {form.get('GlobalClusterIdentifier')} not found", ns)
        entry["status"] = 200
        self._send(200, reply)

    # ---- RDS ------------------------------------------------------------

    def _member_xml(self, m, view):
        arn = cluster_arn(m["region"], m["cluster_id"])
        readers = "".join(f"<member>{cluster_arn(o['region'], o['cluster_id'])}</member>"
                          for o in view["members"] if o is not m) if m["writer"] else ""
        wf = "" if m["writer"] else "<GlobalWriteForwardingStatus>disabled</GlobalWriteForwardingStatus>"
        return (f"<GlobalClusterMember><DBClusterArn>{arn}</DBClusterArn>"
                f"<Readers>{readers}</Readers><IsWriter>{'true' if m['writer'] else 'false'}</IsWriter>"
                f"{wf}<SynchronizationStatus>{m['sync_status']}</SynchronizationStatus>"
                f"</GlobalClusterMember>")

    def _DescribeGlobalClusters(self, form, ns):
        v = self.fake.view()
        wanted = form.get("GlobalClusterIdentifier")
        if wanted and wanted != v["global_id"]:
            return None
        gid = v["global_id"]
        members = "".join(self._member_xml(m, v) for m in v["members"])
        failover = ""
        fs = v["failover"]
        if fs:
            byid = {m["cluster_id"]: m for m in v["members"]}
            arn = lambda cid: cluster_arn(byid[cid]["region"], cid)  # noqa: E731
            failover = (f"<FailoverState><Status>{fs['status']}</Status>"
                        f"<FromDbClusterArn>{arn(fs['from'])}</FromDbClusterArn>"
                        f"<ToDbClusterArn>{arn(fs['to'])}</ToDbClusterArn>"
                        f"<IsDataLossAllowed>{'true' if fs['data_loss'] else 'false'}"
                        f"</IsDataLossAllowed></FailoverState>")
        return (f'<DescribeGlobalClustersResponse xmlns="{ns}"><DescribeGlobalClustersResult>'
                f"<GlobalClusters><GlobalClusterMember>"
                f"<GlobalClusterIdentifier>{gid}</GlobalClusterIdentifier>"
                f"<GlobalClusterResourceId>cluster-0a1b2c3d4e5f6a7b</GlobalClusterResourceId>"
                f"<GlobalClusterArn>arn:aws:rds::{ACCOUNT}:global-cluster:{gid}"
                f"</GlobalClusterArn><Status>{v['status']}</Status>"
                f"<Engine>{v['engine']}</Engine><EngineVersion>{v['engine_version']}</EngineVersion>"
                f"<StorageEncrypted>true</StorageEncrypted><DeletionProtection>false"
                f"</DeletionProtection><GlobalClusterMembers>{members}</GlobalClusterMembers>"
                f"{failover}<Endpoint>{v['endpoint']}"
                f"</Endpoint></GlobalClusterMember></GlobalClusters>"
                f"</DescribeGlobalClustersResult><ResponseMetadata><RequestId>"
                f"{self._request_id}</RequestId></ResponseMetadata>"
                f"</DescribeGlobalClustersResponse>")

    def _DescribeDBClusters(self, form, ns):
        v = self.fake.view()
        wanted = form.get("DBClusterIdentifier")
        out = []
        for m in v["members"]:
            cid = m["cluster_id"]
            arn = cluster_arn(m["region"], cid)
            if wanted and wanted not in (cid, arn):
                continue
            inst = "".join(
                f"<DBClusterMember><DBInstanceIdentifier>{iid}</DBInstanceIdentifier>"
                f"<IsClusterWriter>{'true' if is_writer else 'false'}</IsClusterWriter>"
                f"<DBClusterParameterGroupStatus>in-sync</DBClusterParameterGroupStatus>"
                f"<PromotionTier>{n}</PromotionTier></DBClusterMember>"
                for n, (iid, is_writer) in enumerate(m["instances"], 1))
            endpoint = f"<Endpoint>{m['endpoint']}</Endpoint>" if m["endpoint"] else ""
            out.append(
                f"<DBCluster><DBClusterIdentifier>{cid}</DBClusterIdentifier>"
                f"<DBClusterArn>{arn}</DBClusterArn><Status>{m['status']}</Status>"
                f"{endpoint}"
                f"<ReaderEndpoint>{m['reader_endpoint']}"
                f"</ReaderEndpoint><MultiAZ>true</MultiAZ><Engine>{v['engine']}</Engine>"
                f"<EngineVersion>{v['engine_version']}</EngineVersion><Port>{m['port']}</Port>"
                f"<GlobalClusterIdentifier>{v['global_id']}</GlobalClusterIdentifier>"
                f"<IAMDatabaseAuthenticationEnabled>false</IAMDatabaseAuthenticationEnabled>"
                f"<DBClusterMembers>{inst}</DBClusterMembers></DBCluster>")
        return (f'<DescribeDBClustersResponse xmlns="{ns}"><DescribeDBClustersResult>'
                f"<DBClusters>{''.join(out)}</DBClusters></DescribeDBClustersResult>"
                f"<ResponseMetadata><RequestId>{self._request_id}</RequestId></ResponseMetadata>"
                f"</DescribeDBClustersResponse>")

    # ---- CloudWatch -----------------------------------------------------

    def _GetMetricData(self, form, ns):
        """As CloudWatch answers: a MetricStat query gets data only when its
        namespace, metric name and dimension set (names and values) equal
        a published metric's exactly; a SEARCH() expression gets one series
        per published metric it matches (all under the query's Id). Anything
        else gets an empty series, StatusCode Complete: no error, no data."""
        f = self.fake
        end = datetime.datetime.strptime(form["EndTime"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        start = datetime.datetime.strptime(form["StartTime"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        published = f.published_lag_metrics(min(end, time.time()))
        results = []
        n = 1
        while f"MetricDataQueries.member.{n}.Id" in form:
            p = f"MetricDataQueries.member.{n}."
            qid = form[p + "Id"]
            if p + "Expression" in form:
                matched = [m for m in published if search_matches(form[p + "Expression"], m)]
            else:
                dims = {}
                k = 1
                while f"{p}MetricStat.Metric.Dimensions.member.{k}.Name" in form:
                    d = f"{p}MetricStat.Metric.Dimensions.member.{k}."
                    dims[form[d + "Name"]] = form.get(d + "Value", "")
                    k += 1
                matched = [m for m in published
                           if m["namespace"] == form.get(p + "MetricStat.Metric.Namespace")
                           and m["metric"] == form.get(p + "MetricStat.Metric.MetricName")
                           and m["dimensions"] == dims]
            with f.lock:
                f.metric_queries.append({"id": qid, "matched": len(matched)})
            for m in matched or [None]:
                points = [] if m is None else [(t, v) for t, v in m["points"] if start <= t < end]
                ts = "".join(f"<member>{iso(t)}</member>" for t, _ in points)
                vs = "".join(f"<member>{v}</member>" for _, v in points)
                label = form.get(p + "Label") or (m and " ".join(m["dimensions"].values())) or qid
                results.append(f"<member><Id>{escape(qid)}</Id><Label>{escape(label)}</Label>"
                               f"<Timestamps>{ts}</Timestamps><Values>{vs}</Values>"
                               f"<StatusCode>Complete</StatusCode></member>")
            n += 1
        return (f'<GetMetricDataResponse xmlns="{ns}"><GetMetricDataResult>'
                f"<MetricDataResults>{''.join(results)}</MetricDataResults><Messages/>"
                f"</GetMetricDataResult><ResponseMetadata><RequestId>{self._request_id}"
                f"</RequestId></ResponseMetadata></GetMetricDataResponse>")

    # ---- credentials sources --------------------------------------------

    def _sts(self, form, entry):
        ns = ACTIONS["AssumeRoleWithWebIdentity"][1]
        entry["kind"] = "sts"
        entry["signed"] = "Authorization" in self.headers
        kind = self.fake._take_fault("sts")
        if kind and self._apply_fault(kind, "AssumeRoleWithWebIdentity", ns, entry):
            return
        if form.get("WebIdentityToken") != WEB_IDENTITY_TOKEN or form.get("RoleArn") != ROLE_ARN:
            entry["status"] = 400
            return self._error(400, "InvalidIdentityToken", "Incorrect token audience", ns)
        akid, c = self.fake.issue_credentials("web_identity")
        entry.update(status=200, issued=akid)
        session = form.get("RoleSessionName", "")
        self._send(200,
                   f'<AssumeRoleWithWebIdentityResponse xmlns="{ns}"><AssumeRoleWithWebIdentityResult>'
                   f"<SubjectFromWebIdentityToken>system:serviceaccount:ferry:ferry"
                   f"</SubjectFromWebIdentityToken><Audience>sts.amazonaws.com</Audience>"
                   f"<AssumedRoleUser><Arn>arn:aws:sts::{ACCOUNT}:assumed-role/ferry-discovery/"
                   f"{escape(session)}</Arn><AssumedRoleId>AROAFERRY:{escape(session)}</AssumedRoleId>"
                   f"</AssumedRoleUser><Credentials><SessionToken>{c['token']}</SessionToken>"
                   f"<SecretAccessKey>{c['secret']}</SecretAccessKey>"
                   f"<Expiration>{iso(c['expires'])}</Expiration><AccessKeyId>{akid}</AccessKeyId>"
                   f"</Credentials><Provider>arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks."
                   f"us-east-1.amazonaws.com/id/FERRY</Provider></AssumeRoleWithWebIdentityResult>"
                   f"<ResponseMetadata><RequestId>{self._request_id}</RequestId></ResponseMetadata>"
                   f"</AssumeRoleWithWebIdentityResponse>")

    def _json_creds(self, akid, c, imds):
        doc = {"AccessKeyId": akid, "SecretAccessKey": c["secret"], "Token": c["token"],
               "Expiration": iso(c["expires"])}
        if imds:
            doc = {"Code": "Success", "LastUpdated": iso(time.time()), "Type": "AWS-HMAC", **doc}
        else:
            doc["RoleArn"] = ROLE_ARN
        return json.dumps(doc, indent=2)

    def _creds_fault(self, target, entry):
        kind = self.fake._take_fault(target)
        if not kind:
            return False
        entry["fault"] = kind
        if kind == "slow":
            time.sleep(self.fake.slow_seconds)
            return False
        if kind == "garbage":
            entry["status"] = 200
            self._send(200, '{"AccessKeyId": "ASIA', ctype="application/json")
        else:
            entry["status"] = 500
            self._send(500, "internal error", ctype="text/plain")
        return True

    def _container(self):
        entry = self._record(kind="container", authorization=self.headers.get("Authorization"))
        if self._creds_fault("container", entry):
            return
        if self.headers.get("Authorization") != CONTAINER_AUTH_TOKEN:
            entry["status"] = 401
            return self._send(401, '{"message":"unauthorized"}', ctype="application/json")
        akid, c = self.fake.issue_credentials("container")
        entry.update(status=200, issued=akid)
        self._send(200, self._json_creds(akid, c, imds=False), ctype="application/json")

    def _imds_token(self):
        entry = self._record(kind="imds", step="token",
                             ttl=self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"))
        if "X-Forwarded-For" in self.headers or not entry["ttl"]:
            entry["status"] = 400 if not entry["ttl"] else 403
            return self._send(entry["status"], "", ctype="text/plain")
        token = secrets.token_urlsafe(40)
        with self.fake.lock:
            self.fake.imds_tokens.add(token)
        entry["status"] = 200
        self._send(200, token, ctype="text/plain",
                   extra={"X-aws-ec2-metadata-token-ttl-seconds": entry["ttl"]})

    def _imds(self):
        prefix = "/latest/meta-data/iam/security-credentials/"
        step = "role" if self.path == prefix else "credentials"
        entry = self._record(kind="imds", step=step)
        with self.fake.lock:
            valid = self.headers.get("X-aws-ec2-metadata-token") in self.fake.imds_tokens
        if not valid:   # IMDSv1-style request, or a stale token
            entry["status"] = 401
            return self._send(401, "", ctype="text/plain")
        if step == "role":
            entry["status"] = 200
            return self._send(200, IMDS_ROLE, ctype="text/plain")
        if self.path != prefix + IMDS_ROLE:
            entry["status"] = 404
            return self._send(404, "", ctype="text/plain")
        if self._creds_fault("imds", entry):
            return
        akid, c = self.fake.issue_credentials("imds")
        entry.update(status=200, issued=akid)
        self._send(200, self._json_creds(akid, c, imds=True), ctype="text/plain")

    # ---- control API (standalone use) -----------------------------------

    def _control(self, body=b""):
        try:
            if self.path == "/_fake/requests":
                with self.fake.lock:
                    out = json.dumps(self.fake.requests)
            elif self.path == "/_fake/control":
                req = json.loads(body or b"{}")
                out = json.dumps({"result": self.fake.control(req["op"], req.get("args", []))})
            else:
                return self._send(404, "unknown control path", ctype="text/plain")
        except (ValueError, KeyError, TypeError) as e:
            return self._send(400, json.dumps({"error": str(e)}), ctype="application/json")
        self._send(200, out, ctype="application/json")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    fake = FakeAWS(port=args.port).start()
    print(json.dumps({"url": fake.url, "access_key_id": STATIC_AKID,
                      "secret_access_key": STATIC_SECRET, "web_identity_token": WEB_IDENTITY_TOKEN,
                      "role_arn": ROLE_ARN, "container_path": CONTAINER_PATH,
                      "container_authorization": CONTAINER_AUTH_TOKEN}), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
