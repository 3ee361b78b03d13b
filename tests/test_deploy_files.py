"""The deploy files pass their tools (promtool, hadolint, Kubernetes and CRD schemas) and agree
with each other and with the server (ports, paths, probes, labels, the settings the image sets)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
GATEWAY = K8S / "inference-gateway"
CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.schema.json", "PrometheusRule": "prometheusrule.schema.json",
               "InferencePool": "inferencepool.schema.json", "HTTPRoute": "httproute.schema.json"}


def tool(name: str) -> str:
    """A binary from the venv (pip wheels) or the system (Debian's prometheus package)."""
    venv = Path(sys.executable).parent / name
    found = str(venv) if venv.exists() else shutil.which(name)
    assert found, f"{name} is not installed: run `make setup`"
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


def manifests(folder: Path = K8S) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(folder.glob("*.yaml")):
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def manifest(kind: str, folder: Path = K8S) -> dict:
    (doc,) = [d for _, d in manifests(folder) if d["kind"] == kind]
    return doc


def validate(path: Path, doc: dict) -> None:
    """A CRD kind against its schema in tests/schemas, anything else against Kubernetes' own (strict)."""
    try:
        if doc["kind"] in CRD_SCHEMAS:
            crd_validator(doc["kind"]).validate(doc)
        else:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
        raise AssertionError(f"{path.name}: {exc}") from exc


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ---- Prometheus ------------------------------------------------------------------------------

def test_prometheus_config_passes_promtool():
    result = run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus/prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alert_rules_pass_promtool(tmp_path):
    result = run(tool("promtool"), "check", "rules", str(DEPLOY / "prometheus/rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # the PrometheusRule's groups, as the operator will hand them to Prometheus
    (tmp_path / "operator.yml").write_text(yaml.safe_dump({"groups": manifest("PrometheusRule")["spec"]["groups"]}))
    result = run(tool("promtool"), "check", "rules", str(tmp_path / "operator.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheusrule_carries_exactly_the_compose_alerts():
    rules = yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())["groups"]
    assert manifest("PrometheusRule")["spec"]["groups"] == rules
    alerts = {rule["alert"] for group in rules for rule in group["rules"]}
    assert {"ModelyardHighErrorRate", "ModelyardQueueSaturated", "ModelyardEvictionStorm",
            "ModelyardMemoryNearBudget"} <= alerts


# ---- Docker ----------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    result = run(tool("hadolint"), "--no-color", str(ROOT / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV settings (multi-line ENV instructions joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r'(\w+)=("[^"]*"|\S+)', line[4:]))
    return {k: v.strip('"') for k, v in env.items()}


def test_image_is_cuda_runtime_non_root_with_a_readiness_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert re.fullmatch(r"nvidia/cuda:[\w.-]+-runtime-ubuntu[\d.]+", froms[-1]), froms
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert user.split(":")[0] not in ("root", "0")
    healthcheck = re.search(r"^HEALTHCHECK (.*?)CMD (.*)$", text.replace("\\\n", " "), re.M)
    assert "/health/ready" in healthcheck.group(2)
    start = re.search(r"--start-period=(\d+)m", healthcheck.group(1))
    assert start and int(start.group(1)) >= 2
    assert re.search(r'^VOLUME \["/cache"\]', text, re.M)
    env = dockerfile_env()
    assert env["MODELYARD_HOST"] == "0.0.0.0"
    assert env["HF_HOME"].startswith("/cache/") and env["MODELYARD_CACHE_DIR"].startswith("/cache/")


def image_settings(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment `modelyard serve` sees in the image, pointed at this machine's files."""
    env = dockerfile_env()
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [{"id": "m", "backend": "fake", "options": {}}]}))
    env.update(MODELYARD_MODELS=str(registry), MODELYARD_MODEL_DIRS=str(tmp_path),
               MODELYARD_CACHE_DIR=str(tmp_path / "cache"), MODELYARD_PORT=str(free_port()),
               PATH="/usr/bin:/bin", HF_HUB_OFFLINE="1", **extra)
    return env


def test_image_settings_refuse_to_start_without_an_api_key(tmp_path):
    result = subprocess.run([sys.executable, "-m", "server", "serve"], env=image_settings(tmp_path), cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in result.stderr


def test_image_settings_with_a_key_serve_readiness_on_all_interfaces(tmp_path):
    env = image_settings(tmp_path, MODELYARD_API_KEYS="k-123")
    server = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{env['MODELYARD_PORT']}"
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                ready = httpx.get(url + "/health/ready", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not answer"
                time.sleep(0.2)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"  # probes need no key
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k-123"}).status_code == 200
    finally:
        server.terminate()
        server.wait(30)


# ---- compose and Grafana ---------------------------------------------------------------------

def test_compose_reserves_a_gpu_mounts_cache_and_registry_and_checks_readiness():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    app = compose["services"]["modelyard"]
    (device,) = app["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    mounts = {v["target"]: v for v in app["volumes"]}
    assert mounts["/cache"]["type"] == "volume" and mounts["/cache"]["source"] in compose["volumes"]
    registry = mounts["/etc/modelyard/models.yaml"]
    assert registry["type"] == "bind" and registry["read_only"]
    assert (DEPLOY / "../models.yaml").exists() and registry["source"].endswith(":-../models.yaml}")
    assert app["environment"]["HF_HOME"].startswith("/cache/")
    assert app["environment"]["MODELYARD_API_KEYS"].startswith("${MODELYARD_API_KEYS:?")  # no default key
    assert "/health/ready" in " ".join(app["healthcheck"]["test"])
    assert set(compose["services"]) == {"modelyard", "prometheus", "grafana"}


def test_compose_mounts_files_that_exist():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("prometheus", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["modelyard:8000"]


def test_grafana_provisions_the_datasource_and_dashboard_it_uses():
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/modelyard.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounted = dict(v.split(":")[1::-1] for v in compose["services"]["grafana"]["volumes"])
    assert mounted[provider["providers"][0]["options"]["path"]] == "./grafana/dashboards"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/modelyard.json").read_text())
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    assert targets and all(t["datasource"]["uid"] == "${datasource}" for t in targets)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for shown in ("request rate", "errors", "latency", "first token", "tokens/s", "running and waiting",
                  "resident models", "memory against the budget", "loads", "evictions", "image", "transcription",
                  "swap-in time by source", "wait for a model by reason", "warm tier", "estimate error",
                  "fit rung", "swaps"):
        assert shown in titles, shown


# ---- Kubernetes ------------------------------------------------------------------------------

def test_kubernetes_manifests_validate_against_their_schemas():
    kinds = []
    for path, doc in manifests():
        validate(path, doc)
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(["ConfigMap", "Deployment", "PersistentVolumeClaim", "PrometheusRule", "Secret",
                                    "Service", "ServiceMonitor"])


def test_kubernetes_schema_check_rejects_a_misspelt_field():
    deployment = copy.deepcopy(manifest("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_crd_schemas_reject_misspelt_and_missing_fields():
    monitor = copy.deepcopy(manifest("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert list(crd_validator("ServiceMonitor").iter_errors(monitor))
    monitor = copy.deepcopy(manifest("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert list(crd_validator("ServiceMonitor").iter_errors(monitor))
    rule = copy.deepcopy(manifest("PrometheusRule"))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert list(crd_validator("PrometheusRule").iter_errors(rule))
    rule = copy.deepcopy(manifest("PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["record"] = "x"
    assert list(crd_validator("PrometheusRule").iter_errors(rule))


def test_deployment_requests_a_gpu_probes_health_and_mounts_cache_registry_and_keys():
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    env = {e["name"]: e for e in container["env"]}
    key_ref = env["MODELYARD_API_KEYS"]["valueFrom"]["secretKeyRef"]
    secret = manifest("Secret")
    assert key_ref["name"] == secret["metadata"]["name"] and key_ref["key"] in secret["stringData"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/cache"]["persistentVolumeClaim"]["claimName"] == manifest("PersistentVolumeClaim")["metadata"]["name"]
    assert mounts["/etc/modelyard"]["configMap"]["name"] == manifest("ConfigMap")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0


def test_service_and_servicemonitor_reach_the_pods_metrics_port():
    deployment, service, monitor = manifest("Deployment"), manifest("Service"), manifest("ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert service_ports[endpoint["port"]]["targetPort"] in container_ports
        assert endpoint["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    registry = yaml.safe_load(manifest("ConfigMap")["data"]["models.yaml"])
    assert registry["models"], "the ConfigMap's registry declares no model"


def test_image_allows_the_shipped_registrys_demo_paths(monkeypatch):
    """The image's MODELYARD_MODEL_DIRS must admit every path the shipped models.yaml names."""
    from server.registry import load_registry

    text = (ROOT / "Dockerfile").read_text()
    dirs = re.search(r"MODELYARD_MODEL_DIRS=(\S+)", text).group(1).split(",")
    monkeypatch.setenv("HOME", "/home/modelyard")  # the image's user
    registry = load_registry(ROOT / "models.yaml", [Path(d) for d in dirs])
    assert "python3 -m tinymodels" in text and len(registry) >= 1


# ---- the inference gateway (Gateway API Inference Extension) ---------------------------------

def test_inference_gateway_manifests_validate_against_their_schemas():
    kinds = []
    for path, doc in manifests(GATEWAY):
        validate(path, doc)
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(["InferencePool", "HTTPRoute", "ServiceAccount", "Role", "RoleBinding",
                                    "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"])


def test_gateway_crd_schemas_reject_misspelt_missing_and_out_of_range_fields():
    pool = manifest("InferencePool", GATEWAY)
    for change in (lambda p: p["spec"].update(targetPort=8000),  # misspelt
                   lambda p: p["spec"].pop("endpointPickerRef"),  # required
                   lambda p: p["spec"]["targetPorts"][0].update(number=70000),
                   lambda p: p["spec"]["endpointPickerRef"].pop("port"),  # a Service referent needs its port
                   lambda p: p["spec"]["endpointPickerRef"].update(failureMode="FailSoft"),
                   lambda p: p["spec"]["selector"]["matchLabels"].update(bad="not a label value!")):
        broken = copy.deepcopy(pool)
        change(broken)
        assert list(crd_validator("InferencePool").iter_errors(broken)), change
    route = manifest("HTTPRoute", GATEWAY)
    for change in (lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(kind="Service"),  # no port
                   lambda r: r["spec"]["rules"][0]["matches"][0]["path"].update(type="Prefix"),
                   lambda r: r["spec"]["rules"][0]["matches"][0]["path"].update(value="v1"),
                   lambda r: r["spec"]["rules"][0]["timeouts"].update(request="ten minutes"),
                   lambda r: r["spec"]["rules"][0].update(backendRef=[])):
        broken = copy.deepcopy(route)
        change(broken)
        assert list(crd_validator("HTTPRoute").iter_errors(broken)), change


def test_pool_selects_the_modelyard_pods_and_route_and_picker_point_at_each_other():
    pool, route = manifest("InferencePool", GATEWAY), manifest("HTTPRoute", GATEWAY)
    pod = manifest("Deployment")["spec"]["template"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [8000] and 8000 in ports
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == ("inference.networking.k8s.io", "InferencePool",
                                                                    pool["metadata"]["name"])
    picker, service = manifest("Deployment", GATEWAY), manifest("Service", GATEWAY)
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == service["metadata"]["name"]
    assert ref["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"].items() <= picker["spec"]["template"]["metadata"]["labels"].items()
    args = dict(a.removeprefix("--").split("=", 1) for a in picker["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args["pool-name"] == pool["metadata"]["name"]
    mount = picker["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    config = manifest("ConfigMap", GATEWAY)
    assert args["config-file"] == f"{mount['mountPath']}/plugins.yaml"
    plugins = yaml.safe_load(config["data"]["plugins.yaml"])
    declared = {p["type"] for p in plugins["plugins"]}
    used = {p["pluginRef"] for profile in plugins["schedulingProfiles"] for p in profile["plugins"]}
    assert used <= declared and "lora-affinity-scorer" in used and "queue-scorer" in used
    binding = manifest("RoleBinding", GATEWAY)
    assert binding["subjects"][0]["name"] == picker["spec"]["template"]["spec"]["serviceAccountName"]


def test_endpoint_picker_reads_metrics_a_running_server_exports(tmp_path):
    """Every metric the picker's flags name is in a live /metrics, in the form the picker parses."""
    from conftest import fake, serve
    from exposition import scrape

    picker = manifest("Deployment", GATEWAY)["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in picker["args"])
    named = {flag: args[flag] for flag in ("total-queued-requests-metric", "kv-cache-usage-percentage-metric",
                                           "lora-info-metric")}
    with serve(tmp_path, [fake("m")]) as served:
        served.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=1)
        exposition = scrape(served)
    for flag, name in named.items():
        assert name in exposition.names, f"--{flag}={name} is not exported"
    (labels,) = [dict(k[1]) for k in exposition.samples if k[0] == named["lora-info-metric"]]
    assert set(labels) == {"running_lora_adapters", "waiting_lora_adapters", "max_lora"}
    assert labels["running_lora_adapters"] == "m"
    assert 0.0 <= exposition.value(named["kv-cache-usage-percentage-metric"]) <= 1.0
