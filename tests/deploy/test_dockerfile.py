"""docker/Dockerfile: structure, and that the runtime stage installs exactly
the Debian packages that provide the shared libraries ferry links."""

import json
import os
import re
import socket
import subprocess
import time
import urllib.request

import pytest

import deploylib as d


def test_parser_handles_continuations_and_comments():
    prelude, stages = d.parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG X=1\n\nFROM a:1 AS one\n"
        "RUN apt-get update \\\n  # inner comment\n && apt-get install -y --no-install-recommends p q \\\n"
        " && rm -rf /var/lib/apt/lists/*\nFROM b:2\nCMD [\"x\"]\n")
    assert [i.keyword for i in prelude] == ["ARG"]
    assert [(s.image, s.name) for s in stages] == [("a:1", "one"), ("b:2", None)]
    run = stages[0].instructions[0]
    assert run.keyword == "RUN" and run.line == 5
    assert d.apt_installs(run.args) == ["p", "q"]
    assert stages[1].last("CMD").exec_form() == ["x"]


def test_multi_stage_build_then_runtime(dockerfile):
    _, stages = dockerfile
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    build, final = stages[0], stages[-1]
    assert build.name, "the build stage is named so the runtime stage can COPY --from it"
    copies = [c.args for c in final.all("COPY") if f"--from={build.name}" in c.args]
    assert any("/usr/local/bin/ferry" in c for c in copies), "runtime stage copies the binary from the build stage"
    build_pkgs = {p for r in build.all("RUN") for p in d.apt_installs(r.args)}
    assert {"cmake", "pkg-config", "gcc"} <= build_pkgs
    final_pkgs = {p for r in final.all("RUN") for p in d.apt_installs(r.args)}
    assert not {p for p in final_pkgs if p.endswith("-dev")}, "no -dev package in the runtime stage"
    assert not final_pkgs & {"cmake", "gcc", "make", "build-essential", "curl", "wget"}


def test_base_images_are_pinned_debian_12(dockerfile):
    _, stages = dockerfile
    for stage in stages:
        image = stage.image
        assert "$" not in image, f"line {stage.line}: base image from a build arg is not pinned"
        name, _, tag = image.partition("@")[0].partition(":")
        assert name in ("debian", "docker.io/library/debian"), f"line {stage.line}: {image} is not Debian"
        assert tag and tag != "latest", f"line {stage.line}: {image} has no pinned tag"
        assert re.fullmatch(r"12\.\d+(-slim)?|bookworm-\d{8}(-slim)?", tag), \
            f"line {stage.line}: {image}: pin a Debian 12 point release (12.N[-slim]) or a dated bookworm tag"
        if "@" in image:
            assert re.search(r"@sha256:[0-9a-f]{64}$", image)


def test_every_build_stage_module_has_its_dev_package(dockerfile):
    """Each pkg-config module a CMakeLists.txt requires is provided by a package
    the build stage installs (else cmake fails inside docker build)."""
    _, stages = dockerfile
    build_pkgs = {p for r in stages[0].all("RUN") for p in d.apt_installs(r.args)}
    modules = set()
    for cm in d.REPO.rglob("CMakeLists.txt"):
        if any(part.startswith("build") or part.startswith(".") for part in cm.relative_to(d.REPO).parts[:-1]):
            continue
        for m in re.finditer(r"pkg_check_modules\(\s*\w+\s+(?:REQUIRED\s+)?(?:IMPORTED_TARGET\s+)?([^\s)]+)",
                             cm.read_text()):
            modules.add(re.split(r"[<>=]", m.group(1))[0])
    assert modules, "no pkg_check_modules found: did CMakeLists.txt change?"
    for module in sorted(modules):
        pcdir = subprocess.run(["pkg-config", "--variable=pcfiledir", module],
                               capture_output=True, text=True)
        assert pcdir.returncode == 0, f"pkg-config does not know {module} on this machine"
        pkg = d.dpkg_owner(os.path.join(pcdir.stdout.strip(), module + ".pc"))
        assert pkg in build_pkgs, f"build stage lacks {pkg} (provides {module}.pc)"


def test_no_add_of_urls_and_apt_hygiene(dockerfile):
    _, stages = dockerfile
    for stage in stages:
        for ins in stage.all("ADD"):
            assert not re.search(r"(https?|ftp|git)://|git@", ins.args), f"line {ins.line}: ADD of a URL"
        for ins in stage.all("RUN"):
            if not d.apt_installs(ins.args):
                continue
            assert "apt-get update" in ins.args, f"line {ins.line}: update and install in one RUN"
            assert "--no-install-recommends" in ins.args, f"line {ins.line}: use --no-install-recommends"
            assert re.search(r"rm -rf /var/lib/apt/lists/\*", ins.args), \
                f"line {ins.line}: remove /var/lib/apt/lists/* in the same RUN"


def test_runtime_runs_as_non_root(dockerfile):
    _, stages = dockerfile
    user = stages[-1].last("USER")
    assert user, "final stage sets no USER"
    uid = user.args.split(":")[0]
    assert uid.isdigit(), "numeric USER, so Kubernetes runAsNonRoot can verify it"
    assert int(uid) >= 1000


def test_entrypoint_cmd_stopsignal_expose(dockerfile):
    _, stages = dockerfile
    final = stages[-1]
    assert final.last("ENTRYPOINT").exec_form() == ["ferry"]
    assert final.last("CMD").exec_form() == ["run", "-c", "/etc/ferry/ferry.json"]
    assert final.last("STOPSIGNAL").args == "SIGTERM"
    cm = d.find(d.base_docs(), "ConfigMap", "ferry-config")
    config = d.ferry_json(cm)
    ports = {d.hostport(l["bind"])[1] for l in config["listeners"]} | {d.hostport(config["admin"]["bind"])[1]}
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.args.split()}
    assert exposed == ports, "EXPOSE the listener and admin ports of docker/k8s/configmap.yaml"


def _healthcheck(final):
    hc = final.last("HEALTHCHECK")
    assert hc, "final stage has no HEALTHCHECK"
    cmd_index = hc.args.index("CMD ")
    argv = json.loads(hc.args[cmd_index + 4:])
    return hc, argv


def test_healthcheck_targets_healthz_on_admin_port(dockerfile):
    _, stages = dockerfile
    final = stages[-1]
    hc, argv = _healthcheck(final)
    assert "--timeout=" in hc.args and "--interval=" in hc.args
    assert "/healthz" in argv[-1]
    assert argv[0] in ("bash", "/bin/bash"), "the check needs no package beyond the base image's bash"
    env = {k: v for e in final.all("ENV") for k, _, v in [e.args.partition("=")]}
    cm = d.find(d.base_docs(), "ConfigMap", "ferry-config")
    admin_port = d.hostport(d.ferry_json(cm)["admin"]["bind"])[1]
    assert env.get("FERRY_ADMIN_PORT") == str(admin_port)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_passes_on_live_ferry_and_fails_without(dockerfile, ferry_binary, tmp_path):
    """Runs the HEALTHCHECK's own command against a real ferry."""
    _, stages = dockerfile
    _, argv = _healthcheck(stages[-1])
    admin, listen = _free_port(), _free_port()
    cfg = tmp_path / "ferry.json"
    cfg.write_text(json.dumps({
        "admin": {"bind": f"127.0.0.1:{admin}"}, "shutdown_timeout": 1,
        "listeners": [{"name": "pg", "protocol": "postgresql", "bind": f"127.0.0.1:{listen}",
                       "clusters": [{"name": "a", "endpoint": "127.0.0.1:1"}]}]}))
    proc = subprocess.Popen([ferry_binary, "run", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "ferry's admin endpoint did not come up"
                time.sleep(0.05)
        ok = subprocess.run(argv, env={**os.environ, "FERRY_ADMIN_PORT": str(admin)},
                            capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        down = subprocess.run(argv, env={**os.environ, "FERRY_ADMIN_PORT": str(_free_port())},
                              capture_output=True, timeout=10)
        assert down.returncode != 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dockerignore_copies_are_identical():
    a = (d.DOCKER / ".dockerignore").read_text()
    b = (d.DOCKER / "Dockerfile.dockerignore").read_text()
    assert a == b, "docker/.dockerignore and docker/Dockerfile.dockerignore must stay identical"
    rules = {l.strip() for l in a.splitlines() if l.strip() and not l.startswith("#")}
    assert {".git", "build", "build-*"} <= rules


def test_runtime_packages_are_exactly_the_linked_libraries(dockerfile, ferry_binary):
    """ldd/objdump on the built ferry -> dpkg -S -> Debian packages; the runtime
    stage must install exactly those (minus what every Debian image has), and
    they must pull in every library ldd resolves."""
    if os.environ.get("FERRY_SANITIZED"):
        pytest.skip("a sanitizer build links its runtime; check the release build")
    _, stages = dockerfile
    declared = {p for r in stages[-1].all("RUN") for p in d.apt_installs(r.args)}
    declared_libs = declared - {"ca-certificates"}
    assert "ca-certificates" in declared

    resolved = d.ldd(ferry_binary)
    missing = [lib for lib, path in resolved.items() if path is None]
    assert not missing, f"{ferry_binary}: libraries not found: {missing}"
    base = d.essential_closure()
    needed = {}
    for soname in d.needed_libraries(ferry_binary):
        needed.setdefault(d.dpkg_owner(resolved[soname]), []).append(soname)
    expected = {pkg for pkg in needed if pkg not in base}
    lack = {p: needed[p] for p in expected - declared_libs}
    extra = declared_libs - expected
    assert not lack and not extra, (
        f"docker/Dockerfile runtime stage: add {lack or 'nothing'}; remove {sorted(extra) or 'nothing'} "
        f"(ferry's DT_NEEDED packages: {needed})")

    closure = d.dependency_closure(declared_libs | base)
    for soname, path in resolved.items():
        if soname.startswith("linux-vdso"):
            continue
        pkg = d.dpkg_owner(path)
        assert pkg in closure, f"{soname} ({pkg}) is not pulled in by the runtime packages"
