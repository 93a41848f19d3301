"""The Kubernetes manifests under deploy/kubernetes: valid against the Kubernetes schemas (offline), wired
to each other, and naming only settings the service has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.routes.health import router as health
from app.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.30"  # the oldest release still supported upstream; the manifests use nothing newer


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, document)
        for path in sorted(DEPLOY.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for document in yaml.safe_load_all(path.read_text())
    ]


def base() -> dict[str, dict[str, Any]]:
    """The base's resources by kind and name."""
    found = {}
    for path, document in manifests():
        if path.parent.name == "base":
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


@pytest.mark.parametrize(("path", "document"), manifests(), ids=lambda value: getattr(value, "name", ""))
def test_every_manifest_is_valid_against_the_kubernetes_schema(path: Path, document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_every_file_a_kustomization_names_is_there() -> None:
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        named = spec.get("resources", []) + [patch["path"] for patch in spec.get("patches", [])]
        for entry in named:
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry} is missing"
        for generator in spec.get("secretGenerator", []):
            for file in generator["files"]:
                # The real keys stay out of version control; an example shows their form.
                assert (kustomization.parent / f"{file}.example").exists(), file
                assert (
                    f"/{kustomization.parent.relative_to(ROOT)}/{file}" in (ROOT / ".gitignore").read_text()
                )


def settings_named(document: dict[str, Any]) -> set[str]:
    if document["kind"] == "ConfigMap":
        return set(document["data"])
    containers = document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    return {env["name"] for container in containers for env in container.get("env", [])}


def test_every_setting_the_manifests_name_is_one_the_service_reads() -> None:
    named = set().union(*(settings_named(document) for _, document in manifests()))
    assert named, "the manifests name no setting"
    unknown = {name for name in named if name.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields}
    assert not unknown and all(name.startswith(ENV_PREFIX) for name in named), unknown


def test_replicas_are_probed_on_the_health_routes_and_keep_their_keys_in_a_secret() -> None:
    api = base()["Deployment/retentive-api"]["spec"]["template"]["spec"]
    [container] = api["containers"]
    routes = {route.path for route in health.routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    env = {item["name"]: item.get("value") for item in container["env"]}
    [keys] = [mount for mount in container["volumeMounts"] if mount["name"] == "api-keys"]
    assert env["RETENTIVE_API_KEYS_FILE"].startswith(keys["mountPath"] + "/")
    [volume] = [volume for volume in api["volumes"] if volume["name"] == "api-keys"]
    assert "secret" in volume
    assert env["RETENTIVE_HOST"] == "0.0.0.0"


def test_the_autoscaler_and_disruption_budget_govern_the_api_replicas() -> None:
    resources = base()
    pods = resources["Deployment/retentive-api"]["spec"]["template"]["metadata"]["labels"]
    target = resources["HorizontalPodAutoscaler/retentive-api"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "retentive-api")
    selector = resources["PodDisruptionBudget/retentive-api"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pods.items()
    assert resources["Service/retentive-api"]["spec"]["selector"].items() <= pods.items()


def test_a_standby_learner_waits_and_a_stopping_one_has_time_for_its_last_snapshot() -> None:
    learner = base()["Deployment/retentive-learner"]["spec"]
    assert learner["replicas"] == 2  # one holds the lease, one waits for it
    assert learner["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    [container] = learner["template"]["spec"]["containers"]
    assert container["command"] == ["retentive", "learn"]
