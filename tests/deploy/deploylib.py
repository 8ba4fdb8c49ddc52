"""Helpers for the deployment tests: paths, a small Dockerfile parser, YAML
manifests, ferry.json from ConfigMaps, and the offline Kubernetes validator.

Nothing here uses the network: the Kubernetes schemas come from npm packages
that install-schemas.sh put in k8s-schema/node_modules beforehand.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
K8S = DOCKER / "k8s"
EXAMPLES = K8S / "examples"
IAM_POLICY = DOCKER / "iam-policy.json"
SCHEMA_DIR = Path(__file__).resolve().parent / "k8s-schema"
VALIDATOR = SCHEMA_DIR / "validate.mjs"


def ferry_bin():
    """$FERRY_BIN, else <repo>/build/ferry (as tests/integration/harness/ferry.py)."""
    return os.environ.get("FERRY_BIN") or str(REPO / "build" / "ferry")


# --------------------------------------------------------------------------
# Dockerfile

@dataclass
class Instruction:
    keyword: str          # upper case: FROM, RUN, ...
    args: str             # the rest, continuation lines joined with spaces
    line: int             # 1-based line of the keyword

    def exec_form(self):
        """The JSON array of an exec-form argument, or None for shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        return json.loads(text)


@dataclass
class Stage:
    image: str
    name: str | None
    line: int
    instructions: list = field(default_factory=list)

    def all(self, keyword):
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword):
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text):
    """Returns (global instructions before the first FROM, [Stage, ...]).

    Handles comments, parser directives, blank lines and backslash
    continuations (comment lines inside a continuation are dropped, as Docker
    does). Heredocs are not supported (and not used)."""
    instructions, current, start = [], None, 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if current is None and (not stripped or stripped.startswith("#")):
            continue
        if current is not None and stripped.startswith("#"):
            continue
        continued = stripped.endswith("\\")
        piece = stripped[:-1].rstrip() if continued else stripped
        if current is None:
            current, start = [piece], number
        else:
            current.append(piece)
        if not continued:
            joined = " ".join(p for p in current if p)
            keyword, _, rest = joined.partition(" ")
            instructions.append(Instruction(keyword.upper(), rest.strip(), start))
            current = None
    if current is not None:
        raise ValueError(f"Dockerfile ends inside a continuation (line {start})")

    prelude, stages = [], []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, ins.line))
        elif stages:
            stages[-1].instructions.append(ins)
        else:
            prelude.append(ins)
    return prelude, stages


def load_dockerfile():
    return parse_dockerfile(DOCKERFILE.read_text())


def apt_installs(run_args):
    """Packages named by each `apt-get install` in one RUN's shell command."""
    packages = []
    for command in re.split(r"&&|;|\|\|", run_args):
        words = shlex.split(command)
        if len(words) >= 2 and words[0] in ("apt-get", "apt") and "install" in words[1:]:
            after = words[words.index("install") + 1:]
            packages += [w for w in after if not w.startswith("-")]
    return packages


# --------------------------------------------------------------------------
# Debian packages and shared libraries

_OWNERS = None


def _file_owners():
    """{path: package} from dpkg's file lists (one read instead of many
    `dpkg -S` calls, each of which reads them all)."""
    global _OWNERS
    if _OWNERS is None:
        _OWNERS = {}
        info = Path("/var/lib/dpkg/info")
        for lst in info.glob("*.list"):
            package = lst.name[:-len(".list")].split(":")[0]
            for line in lst.read_text(errors="replace").splitlines():
                _OWNERS.setdefault(line, package)
    return _OWNERS


def dpkg_owner(path):
    """The Debian package that owns a file (as `dpkg -S`), trying the
    /usr-merged spellings of the path and of its real path."""
    real = os.path.realpath(path)
    owners = _file_owners()
    for p in (path, real):
        for candidate in (p, "/usr" + p if p.startswith("/lib") else p,
                          p[4:] if p.startswith("/usr/lib") else p):
            if candidate in owners:
                return owners[candidate]
    raise AssertionError(f"no Debian package owns {path} (realpath {real})")


def needed_libraries(binary):
    """DT_NEEDED sonames of a binary (its direct shared-library dependencies)."""
    out = subprocess.run(["objdump", "-p", binary], capture_output=True, text=True, check=True)
    return [line.split()[1] for line in out.stdout.splitlines() if line.strip().startswith("NEEDED")]


def ldd(binary):
    """{soname: resolved path} of every library the loader maps (transitively)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    libs = {}
    for line in out.stdout.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (not found|\S+)", line)
        if m:
            libs[m.group(1)] = None if m.group(2) == "not found" else m.group(2)
        elif line.startswith("/"):
            path = line.split()[0]
            libs[os.path.basename(path)] = path
    return libs


_DPKG = None


def _dpkg_database():
    """{package: (essential, {dependencies})} of every installed package, read
    with one dpkg-query call (alternatives and versions dropped)."""
    global _DPKG
    if _DPKG is None:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f",
             "${Package}\t${db:Status-Status}\t${Essential}\t${Depends}, ${Pre-Depends}\n"],
            capture_output=True, text=True, check=True)
        _DPKG = {}
        for line in out.stdout.splitlines():
            name, status, essential, depends = line.split("\t")
            if status != "installed":
                continue
            deps = set()
            for clause in depends.split(","):
                for alternative in clause.split("|"):
                    dep = alternative.strip().split(" ")[0].split(":")[0]
                    if dep:
                        deps.add(dep)
            _DPKG[name] = (essential == "yes", deps)
    return _DPKG


def dependency_closure(packages):
    """The packages plus everything they depend on, per this machine's dpkg
    (all of them are installed here: ferry was built and linked here)."""
    db = _dpkg_database()
    seen, todo = set(), list(packages)
    while todo:
        p = todo.pop()
        if p in seen or p not in db:
            continue
        seen.add(p)
        todo += db[p][1] - seen
    return seen


def essential_closure():
    """What every Debian image holds: the Essential packages and their
    dependencies (libc6 among them)."""
    return dependency_closure([p for p, (essential, _) in _dpkg_database().items() if essential])


# --------------------------------------------------------------------------
# Kubernetes manifests

def manifest_files():
    """Every YAML manifest: docker/k8s/*.yaml (but the kustomization) and examples/."""
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return files + sorted(EXAMPLES.glob("*.yaml"))


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def find(docs, kind, name=None):
    hits = [d for d in docs if d.get("kind") == kind
            and (name is None or d.get("metadata", {}).get("name") == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def base_docs():
    docs = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name != "kustomization.yaml":
            docs += load_docs(p)
    return docs


def ferry_json(configmap):
    return json.loads(configmap["data"]["ferry.json"])


def hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def validator_missing():
    """Why the validator cannot run, or None."""
    if shutil.which("node") is None:
        return "node not found (Node.js >= 20 is needed for the Kubernetes schema check)"
    for pkg in ("kubernetes-models", "@kubernetes/client-node"):
        if not (SCHEMA_DIR / "node_modules" / pkg / "package.json").is_file():
            return (f"{pkg} is not installed in {SCHEMA_DIR}/node_modules: "
                    f"run tests/deploy/install-schemas.sh (needs the npm registry once)")
    return None


def validate_objects(items):
    """items: [(source, object)]. Returns {source: [error, ...]}."""
    payload = json.dumps([{"source": s, "object": o} for s, o in items])
    out = subprocess.run(["node", str(VALIDATOR)], input=payload, capture_output=True,
                         text=True, cwd=SCHEMA_DIR, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"validator failed ({out.returncode}): {out.stderr}")
    return {r["source"]: r["errors"] for r in json.loads(out.stdout)}
