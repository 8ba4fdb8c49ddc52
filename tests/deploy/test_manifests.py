"""docker/k8s: every manifest against the Kubernetes API schema (offline),
kustomization completeness, ferry.json validity (`ferry check`), and that the
DaemonSet, Service and sidecar agree with ferry.json and the Dockerfile."""

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import deploylib as d

FIXTURES = Path(__file__).resolve().parent / "fixtures"


# --------------------------------------------------------------------------
# schema validation

BROKEN = FIXTURES / "invalid" / "daemonset-typo-and-types.yaml"


def _items(path, prefix=""):
    return [(f"{prefix}{path.name}#{i}", doc) for i, doc in enumerate(d.load_docs(path))]


def _mutations():
    """Copies of the real DaemonSet, each broken in one way."""
    ds = d.find(d.base_docs(), "DaemonSet", "ferry")
    ok = copy.deepcopy(ds)
    bad_probe = copy.deepcopy(ds)
    bad_probe["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = 503
    bad_strategy = copy.deepcopy(ds)
    bad_strategy["spec"]["updateStrategy"]["type"] = "Recreate"
    no_selector = copy.deepcopy(ds)
    del no_selector["spec"]["selector"]
    misplaced = copy.deepcopy(ds)
    misplaced["spec"]["template"]["spec"]["containers"][0]["terminationGracePeriodSeconds"] = 45
    return [("mutated:ok", ok), ("mutated:probe", bad_probe), ("mutated:strategy", bad_strategy),
            ("mutated:selector", no_selector), ("mutated:misplaced", misplaced)]


@pytest.fixture(scope="module")
def schema_results():
    """One run of the offline validator over every manifest, the broken
    fixture and the mutated DaemonSets (node starts once)."""
    why = d.validator_missing()
    if why:
        pytest.fail(why)
    items = [item for p in d.manifest_files() for item in _items(p)]
    items += _items(BROKEN, prefix="broken:") + _mutations()
    return d.validate_objects(items)


@pytest.mark.parametrize("path", d.manifest_files(), ids=lambda p: str(p.relative_to(d.K8S)))
def test_manifest_matches_kubernetes_schema(path, schema_results):
    docs = d.load_docs(path)
    assert docs, f"{path} holds no document"
    for i, _ in enumerate(docs):
        errors = schema_results[f"{path.name}#{i}"]
        assert errors == [], f"{path.name} document {i}: " + "; ".join(errors)


def test_broken_manifests_are_rejected(schema_results):
    results = {k: v for k, v in schema_results.items() if k.startswith("broken:")}
    assert len(results) == 4
    for source, errors in results.items():
        assert errors, f"{source} should have been rejected"
    joined = " ".join(e for errs in results.values() for e in errs)
    for expected in ("tempalte: unknown field", "contianerPort: unknown field",
                     "must be integer", "required property name",
                     "internalTrafficPolicy must be equal to one of the allowed values",
                     "hostPort: unknown field", "no schema for apps/v1 DaemonSett"):
        assert expected in joined, f"missing error {expected!r} in {joined}"


def test_mutated_daemonset_is_rejected(schema_results):
    assert schema_results["mutated:ok"] == []
    assert any("path must be string" in e for e in schema_results["mutated:probe"])
    assert any("type must be equal to one of the allowed values" in e
               for e in schema_results["mutated:strategy"])
    assert any("required property selector" in e for e in schema_results["mutated:selector"])
    assert any("terminationGracePeriodSeconds: unknown field" in e
               for e in schema_results["mutated:misplaced"])


# --------------------------------------------------------------------------
# kustomization

def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((d.K8S / "kustomization.yaml").read_text())
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    listed = k["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    on_disk = {p.name for p in d.K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, f"not listed: {on_disk - set(listed)}; missing files: {set(listed) - on_disk}"
    ns = d.find(d.base_docs(), "Namespace")["metadata"]["name"]
    assert k["namespace"] == ns
    for doc in d.base_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == ns, f"{doc['kind']} is not in namespace {ns}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (optional check)")
def test_kubectl_kustomize_renders_offline():
    out = subprocess.run(["kubectl", "kustomize", str(d.K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(out.stdout) if doc)
    assert kinds == sorted(doc["kind"] for doc in d.base_docs())


# --------------------------------------------------------------------------
# ferry.json in the ConfigMaps

def _deployments():
    """(source, ferry.json ConfigMap, the ferry container, the Secrets beside
    them) for the DaemonSet in docker/k8s and for each example."""
    base = d.base_docs()
    ds = d.find(base, "DaemonSet", "ferry")
    out = [("k8s", d.find(base, "ConfigMap", "ferry-config"),
            next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "ferry"),
            [x for x in base if x["kind"] == "Secret"])]
    for p in sorted(d.EXAMPLES.glob("*.yaml")):
        docs = d.load_docs(p)
        cm = next(x for x in docs if x["kind"] == "ConfigMap" and "ferry.json" in x.get("data", {}))
        pod = d.find(docs, "Deployment")["spec"]["template"]["spec"]
        ferry = next(c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == "ferry")
        out.append((p.name, cm, ferry, [x for x in docs if x["kind"] == "Secret"]))
    return out


def _container_env(container, secrets):
    """The ferry container's environment; a secretKeyRef must name a key of a
    Secret beside it and gets a dummy value."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        ref = e["valueFrom"]["secretKeyRef"]
        secret = next((x for x in secrets if x["metadata"]["name"] == ref["name"]), None)
        assert secret, f"env {e['name']}: no Secret {ref['name']}"
        keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
        assert ref["key"] in keys, f"env {e['name']}: Secret {ref['name']} has no key {ref['key']}"
        env[e["name"]] = "placeholder-for-ferry-check"
    return env


@pytest.mark.parametrize("source,cm,container,secrets", _deployments(),
                         ids=[x[0] for x in _deployments()])
def test_configmap_ferry_json_passes_ferry_check(source, cm, container, secrets, ferry_binary, tmp_path):
    """`ferry check` with the environment the container gets (probe passwords
    from the Secret), so every password_env must be provided."""
    config = d.ferry_json(cm)
    env = _container_env(container, secrets)
    for listener in config["listeners"]:
        var = listener.get("probe", {}).get("password_env")
        if var:
            assert var in env, f"{source}: {listener['name']}: {var} is not in the ferry container's env"
    # A CA bundle the config names must come from a volume of the container;
    # here the system's bundle stands in for AWS's (ferry check loads it).
    text = cm["data"]["ferry.json"]
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    for listener in config["listeners"]:
        ca = listener.get("backend_tls", {}).get("ca_file")
        if ca:
            assert any(ca.startswith(m.rstrip("/") + "/") for m in mounts), \
                f"{source}: {listener['name']}: ca_file {ca} is on no volume of the container"
            text = text.replace(f'"{ca}"', '"/etc/ssl/certs/ca-certificates.crt"')
    path = tmp_path / "ferry.json"
    path.write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    out = subprocess.run([ferry_binary, "check", "-c", str(path)], capture_output=True, text=True,
                         timeout=30, env={**clean, **env})
    assert out.returncode == 0, f"{source}: ferry check: {out.stderr}{out.stdout}"


def test_ferry_check_rejects_an_unknown_key(ferry_binary, tmp_path):
    """The check above is meaningful: ferry rejects keys it does not know."""
    config = d.ferry_json(d.find(d.base_docs(), "ConfigMap", "ferry-config"))
    config["listeners"][0]["bogus_key"] = 1
    path = tmp_path / "ferry.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, config["admin"]["token_env"]: "placeholder-for-ferry-check"}
    out = subprocess.run([ferry_binary, "check", "-c", str(path)], capture_output=True, text=True,
                         timeout=30, env=env)
    assert out.returncode == 2 and "bogus_key" in out.stderr, out.stderr


def test_ferry_check_refuses_an_open_admin_endpoint(ferry_binary, tmp_path):
    """The check above is meaningful for the admin token too: without one,
    ferry refuses the manifests' non-loopback admin.bind."""
    config = d.ferry_json(d.find(d.base_docs(), "ConfigMap", "ferry-config"))
    del config["admin"]["token_env"]
    path = tmp_path / "ferry.json"
    path.write_text(json.dumps(config))
    out = subprocess.run([ferry_binary, "check", "-c", str(path)], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "FERRY_PG_PROBE_PASSWORD": "x",
                                          "FERRY_MYSQL_PROBE_PASSWORD": "x"})
    assert out.returncode == 2
    assert "admin.bind: 0.0.0.0:9187 is not a loopback address and no admin token is set" in out.stderr


@pytest.mark.parametrize("source,cm,container,secrets", _deployments(),
                         ids=[x[0] for x in _deployments()])
def test_admin_token_comes_from_a_secret(source, cm, container, secrets):
    """Every shipped deployment binds the admin endpoint beyond loopback (the
    kubelet probes the pod IP), so its POST endpoints need a token: named by
    admin.token_env and set from a Secret, never inline."""
    admin = d.ferry_json(cm)["admin"]
    assert "token_file" not in admin and not admin.get("allow_unauthenticated_writes")
    var = admin["token_env"]
    entry = next((e for e in container.get("env", []) if e["name"] == var), None)
    assert entry, f"{source}: the ferry container does not set {var}"
    ref = entry["valueFrom"]["secretKeyRef"]
    secret = next(x for x in secrets if x["metadata"]["name"] == ref["name"])
    assert secret["stringData"][ref["key"]].startswith("REPLACE_ME")


def test_network_policy_admits_only_prometheus_to_the_admin_port(ds, ferry_config):
    policy = d.find(d.base_docs(), "NetworkPolicy", "ferry")
    spec = policy["spec"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items(), "selects the ferry pods"
    assert spec["policyTypes"] == ["Ingress"]
    c = _container(ds)
    admin_port = d.hostport(ferry_config["admin"]["bind"])[1]
    listener_ports = {d.hostport(l["bind"])[1] for l in ferry_config["listeners"]}
    open_ports, admin_rules = set(), []
    for rule in spec["ingress"]:
        ports = {_port_number(c, p["port"]) for p in rule["ports"]}
        if "from" not in rule:
            open_ports |= ports
        if admin_port in ports:
            admin_rules.append(rule)
    assert open_ports == listener_ports, "only the listeners are open to every peer"
    assert len(admin_rules) == 1 and admin_rules[0].get("from"), "the admin port needs a source"
    for peer in admin_rules[0]["from"]:
        assert "ipBlock" not in peer, "an address range would admit every pod in it (VPC CNI)"
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
        assert peer["namespaceSelector"]["matchLabels"]


def test_configmap_describes_a_two_region_global_database():
    config = d.ferry_json(d.find(d.base_docs(), "ConfigMap", "ferry-config"))
    assert {l["protocol"] for l in config["listeners"]} == {"postgresql", "mysql"}
    for listener in config["listeners"]:
        regions = {c["name"] for c in listener["clusters"]}
        assert regions == {"us-east-1", "eu-west-1"}
        for c in listener["clusters"]:
            host, port = d.hostport(c["endpoint"])
            assert host.endswith(f".{c['name']}.rds.amazonaws.com") and ".cluster-" in host
            assert c.get("region", c["name"]) == c["name"]
            assert port == (5432 if listener["protocol"] == "postgresql" else 3306)
        if "probe" in listener:      # discovery finds the writer; "writer" would be ignored
            assert not any("writer" in c for c in listener["clusters"])
        else:
            assert sum(bool(c.get("writer")) for c in listener["clusters"]) == 1


# --------------------------------------------------------------------------
# DaemonSet, Service and ferry.json agree

@pytest.fixture(scope="module")
def ds():
    return d.find(d.base_docs(), "DaemonSet", "ferry")


@pytest.fixture(scope="module")
def ferry_config():
    return d.ferry_json(d.find(d.base_docs(), "ConfigMap", "ferry-config"))


def _container(ds):
    containers = ds["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "ferry")


def _port_number(container, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def test_probes_hit_ferry_admin_endpoint(ds, ferry_config):
    c = _container(ds)
    admin_host, admin_port = d.hostport(ferry_config["admin"]["bind"])
    assert admin_host in ("0.0.0.0", "::"), "the kubelet probes the pod IP: admin.bind must not be loopback"
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and live["path"] == "/healthz"
    assert _port_number(c, ready["port"]) == admin_port
    assert _port_number(c, live["port"]) == admin_port
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin_port


def test_ports_match_listener_binds(ds, ferry_config):
    c = _container(ds)
    listener_ports = set()
    for listener in ferry_config["listeners"]:
        host, port = d.hostport(listener["bind"])
        assert host in ("0.0.0.0", "::"), f"{listener['name']}: hostPort traffic arrives on the pod IP, bind 0.0.0.0"
        listener_ports.add(port)
    admin_port = d.hostport(ferry_config["admin"]["bind"])[1]
    assert {p["containerPort"] for p in c["ports"]} == listener_ports | {admin_port}
    host_ports = {p["hostPort"] for p in c["ports"] if "hostPort" in p}
    assert host_ports == listener_ports, "publish every listener (and not the admin endpoint) as a hostPort"
    for p in c["ports"]:
        if "hostPort" in p:
            assert p["hostPort"] == p["containerPort"]
    assert not ds["spec"]["template"]["spec"].get("hostNetwork"), "hostPort is the documented choice"


def test_grace_period_covers_drain(ds, ferry_config):
    spec = ds["spec"]["template"]["spec"]
    shutdown = ferry_config.get("shutdown_timeout", 30)      # README default
    pre_stop = _container(ds).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert spec["terminationGracePeriodSeconds"] >= shutdown + pre_stop + 5, \
        "terminationGracePeriodSeconds >= preStop sleep + shutdown_timeout + 5 s margin"


def test_rollout_and_resources(ds):
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"]
    assert strategy["rollingUpdate"].get("maxSurge", 0) == 0, "hostPorts cannot surge on one node"
    resources = _container(ds)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_security_context_and_config_mount(ds, dockerfile):
    spec = ds["spec"]["template"]["spec"]
    c = _container(ds)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert spec["securityContext"]["runAsNonRoot"] is True
    _, stages = dockerfile
    image_uid = int(stages[-1].last("USER").args.split(":")[0])
    assert spec["securityContext"]["runAsUser"] == image_uid
    assert stages[-1].last("CMD").exec_form()[:2] == c["args"][:2] == ["run", "-c"]
    _assert_config_mount(spec, c, "ferry-config")


def _assert_config_mount(spec, container, configmap):
    """args name ferry.json inside a directory mount of the ConfigMap (no
    subPath: edits reach the file, so SIGHUP can reload it)."""
    config_path = container["args"][-1]
    directory, _, filename = config_path.rpartition("/")
    assert filename == "ferry.json"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    assert "subPath" not in mount and mount.get("readOnly") is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap


def test_no_kubernetes_api_token_is_mounted(ds):
    """ferry never calls the Kubernetes API; IRSA brings its own projected token."""
    assert ds["spec"]["template"]["spec"].get("automountServiceAccountToken") is False
    dep = d.find(d.load_docs(d.EXAMPLES / "sidecar-deployment.yaml"), "Deployment")
    assert dep["spec"]["template"]["spec"].get("automountServiceAccountToken") is False


def test_service_account_is_annotated_for_irsa(ds):
    sa = d.find(d.base_docs(), "ServiceAccount", ds["spec"]["template"]["spec"]["serviceAccountName"])
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert arn.startswith("arn:aws:iam::") and ":role/" in arn


def test_service_is_node_local_and_targets_listeners(ds, ferry_config):
    svc = d.find(d.base_docs(), "Service", "ferry")
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    c = _container(ds)
    listener_ports = {d.hostport(l["bind"])[1] for l in ferry_config["listeners"]}
    assert {_port_number(c, p["targetPort"]) for p in svc["spec"]["ports"]} == listener_ports


def test_secret_holds_only_placeholders():
    secret = d.find(d.base_docs(), "Secret")
    values = secret.get("stringData", {})
    assert values and all(v.startswith("REPLACE_ME") for v in values.values())
    assert "data" not in secret


# --------------------------------------------------------------------------
# sidecar example

def test_sidecar_example_matches_its_ferry_json():
    docs = d.load_docs(d.EXAMPLES / "sidecar-deployment.yaml")
    dep = d.find(docs, "Deployment")
    cm = next(doc for doc in docs if doc["kind"] == "ConfigMap")
    config = d.ferry_json(cm)
    spec = dep["spec"]["template"]["spec"]
    ferry = next(c for c in spec["initContainers"] if c["name"] == "ferry")
    assert ferry["restartPolicy"] == "Always", "native sidecar"
    admin_port = d.hostport(config["admin"]["bind"])[1]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert ferry[probe]["httpGet"]["path"] == path
        assert _port_number(ferry, ferry[probe]["httpGet"]["port"]) == admin_port
    ports = {}
    for listener in config["listeners"]:
        host, port = d.hostport(listener["bind"])
        assert host == "127.0.0.1", "a sidecar's listeners are for its own pod only"
        ports[listener["protocol"]] = port
    app = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in app.get("env", [])}
    assert int(env["PGPORT"]) == ports["postgresql"] and int(env["MYSQL_PORT"]) == ports["mysql"]
    assert env["PGHOST"] == env["MYSQL_HOST"] == "127.0.0.1"
    assert spec["terminationGracePeriodSeconds"] >= config.get("shutdown_timeout", 30) + 5
    sc = ferry["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    _assert_config_mount(spec, ferry, cm["metadata"]["name"])
