"""deploy/kubernetes: rendered by kubectl's kustomize, validated against the Kubernetes schemas
(kubernetes-validate, strict) and the Prometheus Operator fields it uses, linted by yamllint,
and kept in step with the alert rules and dashboards it is generated from."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from conftest import REPO, run_tool

if TYPE_CHECKING:
    from pathlib import Path

DEPLOY = REPO / "deploy" / "kubernetes"
KUBERNETES = "1.32.0"
CORE_KINDS = {"ServiceAccount", "ConfigMap", "Secret", "Service", "PersistentVolumeClaim",
              "Deployment", "StatefulSet"}  # fmt: skip

# The fields of the Prometheus Operator's monitoring.coreos.com/v1 API that the manifests use,
# with the types the operator's CRDs give them; anything else is refused.
_STRING = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STRING}
_METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": _STRING, "namespace": _STRING, "labels": _LABELS}, "additionalProperties": False}  # fmt: skip
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"}


def _operator_kind(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A monitoring.coreos.com/v1 object of `kind` whose spec is `spec`."""
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"},
                       "kind": {"const": kind}, "metadata": _METADATA, "spec": spec},
    }  # fmt: skip


OPERATOR_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _operator_kind("ServiceMonitor", {
        "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
        "properties": {
            "jobLabel": _STRING,
            "selector": {"type": "object", "additionalProperties": False,
                         "properties": {"matchLabels": _LABELS}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": _STRING, "path": _STRING, "scheme": {"enum": ["http", "https"]},
                    "interval": _DURATION, "scrapeTimeout": _DURATION,
                    "relabelings": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "action": {"enum": ["replace", "keep", "drop", "labelmap"]},
                            "sourceLabels": {"type": "array", "items": _STRING},
                            "targetLabel": _STRING, "replacement": _STRING, "regex": _STRING,
                        }}}}}},
        },
    }),
    "PrometheusRule": _operator_kind("PrometheusRule", {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": {"type": "array", "items": {
            "type": "object", "required": ["name", "rules"], "additionalProperties": False,
            "properties": {"name": _STRING, "interval": _DURATION, "rules": {
                "type": "array", "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {"alert": _STRING, "record": _STRING, "expr": _STRING,
                                   "for": _DURATION, "labels": _LABELS,
                                   "annotations": _LABELS}}}}}}},
    }),
}  # fmt: skip


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate", DEPLOY / "generate_monitoring.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # installed on the CI machines, where this must not skip
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def with_monitoring(tmp_path: Path, variant: str) -> Path:
    """A copy of deploy/kubernetes with an overlay: `variant` plus the monitoring component, as
    the README says to enable it."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy)
    overlay = copy / "monitored"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"../{variant}"], "components": ["../components/monitoring"]}))  # fmt: skip
    return overlay


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def test_the_generated_manifests_match_their_sources() -> None:
    """prometheusrule.yaml is alerting/rules, dashboards.yaml is grafana/dashboards,
    servicemonitor.yaml follows monitoring.yaml: run `make monitoring` after changing any."""
    generate = generator()
    for name, render in generate.GENERATED.items():
        committed = (DEPLOY / "components" / "monitoring" / name).read_text()
        assert committed == render(), f"{name} is stale: run make monitoring"
    rule = yaml.safe_load(
        (DEPLOY / "components" / "monitoring" / "prometheusrule.yaml").read_text()
    )
    groups = [group for path in sorted((REPO / "alerting" / "rules").glob("*.yaml"))
              for group in yaml.safe_load(path.read_text())["groups"]]  # fmt: skip
    assert groups[-1]["name"] == "asyncjob-recording"  # the Overview's, after the alerts
    assert rule["spec"]["groups"] == groups
    maps = list(
        yaml.safe_load_all((DEPLOY / "components" / "monitoring" / "dashboards.yaml").read_text())
    )
    for path in sorted((REPO / "grafana" / "dashboards").glob("*.json")):
        (found,) = [m for m in maps if path.name in m["data"]]
        assert found["metadata"]["labels"] == {"grafana_dashboard": "1"}
        assert json.loads(found["data"][path.name]) == json.loads(path.read_text())


def test_yamllint_passes() -> None:
    result = run_tool("yamllint", "--strict", "-c", ".yamllint.yaml", "deploy/kubernetes")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", ["default", "sharded"])
def test_each_variant_renders_and_validates_with_the_monitoring_component(
    variant: str, tmp_path: Path
) -> None:
    plain = kustomize(DEPLOY / variant)
    assert not {"ServiceMonitor", "PrometheusRule"} & {doc["kind"] for doc in plain}
    docs = kustomize(with_monitoring(tmp_path, variant))
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        elif doc["kind"] in OPERATOR_SCHEMAS:
            jsonschema.validate(doc, OPERATOR_SCHEMAS[doc["kind"]])
        else:
            pytest.fail(f"unexpected kind {doc['kind']}")
    kinds = by_kind(docs)
    assert len(kinds["ServiceMonitor"]) == len(kinds["PrometheusRule"]) == 1
    assert len([m for m in kinds["ConfigMap"] if m["metadata"].get("labels", {}).get(
        "grafana_dashboard") == "1"]) == 2  # fmt: skip
    # The ServiceMonitor scrapes each pod once, through the one Service it selects, and gives
    # the targets the job label of monitoring.yaml's selector, which the rules select on.
    monitor = kinds["ServiceMonitor"][0]["spec"]
    chosen = [s for s in kinds["Service"]
              if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]  # fmt: skip
    assert len(chosen) == 1
    (endpoint,) = monitor["endpoints"]
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": "asyncjob"}
    ]
    assert 'job="asyncjob"' in (REPO / "monitoring.yaml").read_text()


def pod_of(docs: list[dict[str, Any]], kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    (workload,) = by_kind(docs)[kind]
    return workload["spec"], workload["spec"]["template"]["spec"]


def test_the_default_variant_is_one_hardened_replica_with_probes_and_a_store() -> None:
    docs = kustomize(DEPLOY / "default")
    spec, pod = pod_of(docs, "Deployment")
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert {"requests", "limits"} <= container["resources"].keys()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "--storage.path=/var/lib/asyncjob-exporter" in container["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/var/lib/asyncjob-exporter"]]
    assert "secret" in volumes[mounts["/etc/asyncjob-exporter/keys"]]
    # The config it mounts passes the exporter's own check, its keys read from the Secret's files.
    (config_map,) = [m for m in by_kind(docs)["ConfigMap"] if "config.yaml" in m["data"]]
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    keys = {k for s in config["sources"] for k in s["auth"]}
    assert keys <= {"subscription_key_file", "api_key_file", "region", "azure_ad"}
    (secret,) = by_kind(docs)["Secret"]
    files = {s["auth"]["subscription_key_file"].rsplit("/", 1)[1] for s in config["sources"]}
    assert files <= set(secret["stringData"])


def test_the_sharded_variant_names_each_shard_by_its_ordinal() -> None:
    docs = kustomize(DEPLOY / "sharded")
    assert "Deployment" not in by_kind(docs)
    assert "PersistentVolumeClaim" not in by_kind(docs)  # each shard has its own, from the template
    spec, pod = pod_of(docs, "StatefulSet")
    (container,) = pod["containers"]
    args = dict(arg.split("=", 1) for arg in container["args"])
    assert args["--shard"] == "auto"
    assert int(args["--total-shards"]) == spec["replicas"]
    headless = [s for s in by_kind(docs)["Service"] if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [spec["serviceName"]]
    (statefulset,) = by_kind(docs)["StatefulSet"]
    name = statefulset["metadata"]["name"]  # pods are NAME-0, NAME-1, ...: --shard auto
    assert args["--shard.peer-url"] == f"http://{name}-{{shard}}.{spec['serviceName']}:9879"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
