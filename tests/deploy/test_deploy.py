"""Build-free checks of deploy/: Dockerfiles, the compose file (Compose spec JSON schema), the
Kubernetes manifests (Kubernetes schemas, strict) and the systemd units (systemd-analyze verify).
No Docker engine or cluster is needed; checks whose tool is missing skip and say why."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|APIKEY|CREDENTIAL)", re.IGNORECASE)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile(name):
    ins = dockerfile_instructions(DEPLOY / "docker" / name)
    args = {m.group(1): m.group(2) for k, v in ins if k == "ARG" for m in [re.match(r"(\w+)=(\S+)", v)] if m}
    bases = [v.split()[0] for k, v in ins if k == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage and a slim runtime stage"
    for base in bases:
        image = args.get(base.strip("${}"), base) if base.startswith("$") else base
        assert ":" in image and not image.endswith(":latest"), f"base image {image} is not pinned to a version"
        assert re.search(r":\d", image) or "@sha256:" in image, image
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    assert any(k == "USER" for k, _ in ins[last_from:]), "USER set in the final stage"
    for k, v in ins:
        if k == "ENV":
            for key in re.findall(r"(\w+)=", v):
                assert not SECRETISH.search(key), f"secret-looking ENV {key} baked into the image"
        if k == "ARG":
            assert not SECRETISH.search(v), f"secret-looking build ARG {v}"
    entry = [v for k, v in ins if k == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1])[0] == "rgpl-adapt"
    assert any(k == "HEALTHCHECK" for k, _ in ins)
    for k, v in ins:  # every COPY source exists in the build context (the repo root)
        if k == "COPY" and "--from=" not in v:
            for src in v.split()[:-1]:
                assert (REPO / src).exists(), f"COPY source {src} missing from the build context"
    if name.endswith("cpu"):
        assert any("download.pytorch.org/whl/cpu" in v for k, v in ins if k == "RUN"), "CPU torch wheel"


def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())


def test_compose_matches_the_compose_spec_schema():
    jsonschema = pytest.importorskip("jsonschema")
    try:
        import check_jsonschema
    except ImportError:
        pytest.skip("the Compose spec schema comes vendored with check-jsonschema: pip install check-jsonschema")
    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_path.read_text())
    compose = load_compose()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    bad = {**compose, "services": {**compose["services"], "adapter": {**compose["services"]["adapter"], "restart": 3}}}
    assert list(validator.iter_errors(bad)), "the schema check must catch a wrong type"


def test_compose_structure():
    compose = load_compose()
    services = compose["services"]
    assert {"opensearch", "dashboards", "adapter"} <= set(services)
    os_ = services["opensearch"]
    assert re.match(r"opensearchproject/opensearch:3\.\d+\.\d+$", os_["image"])
    assert re.match(r"opensearchproject/opensearch-dashboards:3\.\d+\.\d+$", services["dashboards"]["image"])
    assert os_["environment"]["discovery.type"] == "single-node"
    assert "OPENSEARCH_INITIAL_ADMIN_PASSWORD" not in json.dumps(os_["environment"]), "password from the env file only"
    assert os_["env_file"][0]["path"] == "rgpl.env" and "healthcheck" in os_
    example = (DEPLOY / "compose" / "rgpl.env.example").read_text()
    assert "OPENSEARCH_INITIAL_ADMIN_PASSWORD=" in example and "OPENSEARCH_PASSWORD=" in example
    adapter = services["adapter"]
    assert adapter["command"][0] == "schedule" and "--every" in adapter["command"]
    assert adapter["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
    assert (DEPLOY / "compose" / adapter["build"]["context"] / adapter["build"]["dockerfile"]).exists()
    assert any(v.startswith("runs:/data/runs") for v in adapter["volumes"]) and "runs" in compose["volumes"]
    assert adapter["depends_on"]["opensearch"]["condition"] == "service_healthy"
    for service in services.values():
        for key in service.get("environment") or {}:
            if SECRETISH.search(key) and key != "OPENSEARCH_PASSWORD":
                pytest.fail(f"secret {key} inline in the compose file")
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"port {port} exposed beyond localhost"
    # the adapter's flags exist on the real command
    import click
    from click.testing import CliRunner
    from rgpl_adapt.cli_schedule import register

    group = click.Group()
    register(group)
    helptext = CliRunner().invoke(group, ["schedule", "--help"]).output
    for flag in (a for a in adapter["command"] if a.startswith("--")):
        assert flag in helptext, flag


def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def test_kubernetes_manifests_required_fields_and_policy():
    docs = k8s_documents()
    kinds = {d["kind"] for _, d in docs}
    assert {"CronJob", "Secret", "PersistentVolumeClaim", "Kustomization"} <= kinds
    for name, d in docs:
        assert d.get("apiVersion") and d.get("kind"), name
        if d["kind"] != "Kustomization":
            assert d["metadata"]["name"], name
    kustom = next(d for _, d in docs if d["kind"] == "Kustomization")
    for res in kustom["resources"]:
        assert (DEPLOY / "kubernetes" / res).exists(), res
    secrets = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Secret"}
    claims = {d["metadata"]["name"] for _, d in docs if d["kind"] == "PersistentVolumeClaim"}
    for name, job in ((n, d) for n, d in docs if d["kind"] == "CronJob"):
        spec = job["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", name
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["args"][0] == "readapt" and container["resources"]["requests"]
        env = {e["name"]: e for e in container["env"]}
        password = env["OPENSEARCH_PASSWORD"]
        assert "value" not in password and password["valueFrom"]["secretKeyRef"]["name"] in secrets
        assert password["valueFrom"]["secretKeyRef"]["key"] in secrets[password["valueFrom"]["secretKeyRef"]["name"]]["stringData"]
        runs = next(v for v in pod["volumes"] if v["name"] == "runs")
        assert runs["persistentVolumeClaim"]["claimName"] in claims
        if "gpu" in name:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kubernetes_manifests_validate_against_the_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (offline k8s schemas)")
    checked = 0
    for name, doc in k8s_documents():
        if doc["kind"] == "Kustomization":
            continue  # not a cluster resource
        kv.validate(doc, kv.latest_version(), strict=True)
        checked += 1
    assert checked >= 4
    bad = next(d for _, d in k8s_documents() if d["kind"] == "CronJob")
    bad = json.loads(json.dumps(bad))
    bad["spec"]["concurrencyPolicy"] = 3
    with pytest.raises(Exception, match="is not of type"):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_systemd_units_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    for name in ("rgpl-adapt.service", "rgpl-adapt.timer"):
        text = (DEPLOY / "systemd" / name).read_text()
        # the unit's venv does not exist here; verify refuses a missing ExecStart binary
        (tmp_path / name).write_text(text.replace("/opt/rgpl-adapt/venv/bin/rgpl-adapt", shutil.which("true")))
    proc = subprocess.run([tool, "verify", str(tmp_path / "rgpl-adapt.service"), str(tmp_path / "rgpl-adapt.timer")],
                          check=False, capture_output=True, text=True, timeout=60)
    if "Failed to" in proc.stderr and "bus" in proc.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    service = (DEPLOY / "systemd" / "rgpl-adapt.service").read_text()
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "EnvironmentFile=", "User=rgpl", "Type=oneshot"):
        assert option in service
    assert "PASSWORD" not in service
    assert "OnCalendar=" in (DEPLOY / "systemd" / "rgpl-adapt.timer").read_text()
    assert "OPENSEARCH_PASSWORD=" in (DEPLOY / "systemd" / "rgpl-adapt.env.example").read_text()


def test_each_deploy_folder_has_a_readme():
    for sub in ("docker", "compose", "kubernetes", "systemd"):
        assert (DEPLOY / sub / "README.md").read_text().strip().startswith("#"), sub
