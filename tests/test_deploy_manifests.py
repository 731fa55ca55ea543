"""deploy/ validated offline (no Docker daemon, no cluster): the real files pass, and each
check fires on a file broken the way a hand edit breaks it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deploy import checks
from dm_resources.dagster_client import LOCATION


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return checks.load_yaml_documents(checks.COMPOSE_FILE)[0]


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict[str, Any]]:
    return [doc for _, doc in checks.manifests()]


@pytest.fixture(scope="module")
def helm_values() -> dict[str, Any]:
    return checks.load_yaml_documents(checks.HELM_VALUES)[0]


@pytest.fixture(scope="module")
def roles() -> set[str]:
    return checks.entrypoint_roles()


def _doc(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return copy.deepcopy(doc)


def _replace(docs: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    key = (new["kind"], new["metadata"]["name"])
    return [new if (d["kind"], d["metadata"]["name"]) == key else d for d in docs]


# -- the real files -------------------------------------------------------------------------


def test_everything_under_deploy_passes() -> None:
    assert checks.all_problems() == []


def test_entrypoint_roles_cover_every_component(roles: set[str]) -> None:
    assert {"ingest", "api", "code-server", "webserver", "daemon", "migrate"} <= roles


def test_compose_is_the_production_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mongodb", "mariadb", "postgres", "nats", "code-server", "dagster-webserver", "dagster-daemon"} <= set(
        services
    )
    assert services["ingest"]["deploy"]["replicas"] == 2
    assert "--jetstream" in services["nats"]["command"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    ingest_check = " ".join(services["ingest"]["healthcheck"]["test"])
    assert "/health/readiness" in api_check
    assert "/health/liveness" in ingest_check


def test_compose_health_paths_are_api_routes(compose: dict[str, Any]) -> None:
    from api.app import app

    paths = set(app.openapi()["paths"])
    assert {"/health/liveness", "/health/readiness"} <= paths
    assert any(p in " ".join(compose["services"]["api"]["healthcheck"]["test"]) for p in paths)


def test_every_manifest_kind_is_validated(k8s_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in k8s_docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ConfigMap",
        "Secret",
        "ScaledObject",
    } <= kinds
    for doc in k8s_docs:
        assert checks.k8s_errors(doc) == [], doc["metadata"]["name"]


def test_api_service_and_network_policy(k8s_docs: list[dict[str, Any]]) -> None:
    svc = _doc(k8s_docs, "Service", "dm-api")
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 80
    dep = _doc(k8s_docs, "Deployment", "dm-api")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]] == 8000
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    policy = _doc(k8s_docs, "NetworkPolicy", "dm-api-ingress")
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"kubernetes.io/metadata.name": "platform"} in [
        s.get("namespaceSelector", {}).get("matchLabels") for s in sources
    ]


def test_helm_values_choose_k8s_run_launcher_and_our_location(helm_values: dict[str, Any]) -> None:
    assert helm_values["runLauncher"]["type"] == "K8sRunLauncher"
    assert helm_values["postgresql"]["enabled"] is False
    assert LOCATION in {s["name"] for s in helm_values["dagsterWebserver"]["workspace"]["servers"]}


# -- each check fires -------------------------------------------------------------------------


def test_compose_schema_rejects_bad_types_and_unknown_keys(compose: dict[str, Any]) -> None:
    bad = copy.deepcopy(compose)
    bad["services"]["api"]["healthcheck"]["interval"] = 30  # a duration string such as "30s"
    assert any("interval" in e for e in checks.compose_errors(bad))
    bad = copy.deepcopy(compose)
    bad["services"]["ingest"]["replicaz"] = 2
    assert any("replicaz" in e for e in checks.compose_errors(bad))


def test_compose_consistency_catches_unknown_role_and_missing_healthcheck(
    compose: dict[str, Any], roles: set[str]
) -> None:
    bad = copy.deepcopy(compose)
    bad["services"]["api"]["command"] = ["serve"]
    del bad["services"]["nats"]["healthcheck"]
    bad["services"]["postgres"]["env_file"] = "nowhere.env"
    problems = checks.compose_consistency_errors(bad, roles)
    assert any("services/api" in p and "serve" in p for p in problems)
    assert "services/nats: no healthcheck" in problems
    assert any("nowhere.env" in p for p in problems)


def test_dockerfile_check_rejects_root_and_build_tools() -> None:
    text = checks.DOCKERFILE.read_text()
    assert checks.dockerfile_errors(text) == []
    assert checks.dockerfile_errors(text.replace("USER 10001:10001", "USER root")) == [
        "Dockerfile: final stage runs as root"
    ]
    with_gcc = text + "RUN apt-get update && apt-get install -y --no-install-recommends gcc\n"
    assert any("gcc" in p for p in checks.dockerfile_errors(with_gcc))
    single_stage = 'FROM python:3.11-slim\nUSER 1000\nENTRYPOINT ["x"]\n'
    assert any("multi-stage" in p for p in checks.dockerfile_errors(single_stage))


def test_kubernetes_schema_rejects_wrong_types_and_unknown_fields(k8s_docs: list[dict[str, Any]]) -> None:
    dep = _doc(k8s_docs, "Deployment", "dm-api")
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    assert checks.k8s_errors(dep)
    dep = _doc(k8s_docs, "Deployment", "dm-api")
    dep["spec"]["replica"] = 3  # typo of replicas: strict validation must refuse it
    assert checks.k8s_errors(dep)
    hpa = _doc(k8s_docs, "HorizontalPodAutoscaler", "dm-api")
    del hpa["spec"]["maxReplicas"]
    assert checks.k8s_errors(hpa)


def test_unknown_kind_is_an_error_not_a_pass() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any("no schema" in e for e in checks.k8s_errors(doc))


def test_keda_schema_rejects_incomplete_trigger(k8s_docs: list[dict[str, Any]]) -> None:
    scaled = _doc(k8s_docs, "ScaledObject", "dm-ingest")
    assert checks.k8s_errors(scaled) == []
    del scaled["spec"]["triggers"][0]["metadata"]["consumer"]
    assert any("consumer" in e for e in checks.k8s_errors(scaled))
    scaled = _doc(k8s_docs, "ScaledObject", "dm-ingest")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 20000  # KEDA metadata values are strings
    assert checks.k8s_errors(scaled)
    scaled = _doc(k8s_docs, "ScaledObject", "dm-ingest")
    scaled["spec"]["minReplicas"] = 2  # HPA spelling, not KEDA's
    assert checks.k8s_errors(scaled)


def test_env_coverage_names_the_missing_variable(k8s_docs: list[dict[str, Any]]) -> None:
    names = checks.env_names(checks.ROOT / ".env.example")
    assert {"DM_MONGO_URL", "DM_METADATA_URL", "DM_API_TOKEN", "DAGSTER_PG_URL"} <= names
    secret = _doc(k8s_docs, "Secret", "dm-secrets")
    del secret["stringData"]["DM_MONGO_URL"]
    assert checks.env_coverage_errors(_replace(k8s_docs, secret), names) == [
        "DM_MONGO_URL: in .env.example but in no ConfigMap/Secret"
    ]


def test_wiring_catches_unreachable_service_and_dangling_refs(k8s_docs: list[dict[str, Any]], roles: set[str]) -> None:
    svc = _doc(k8s_docs, "Service", "dm-api")
    svc["spec"]["ports"][0]["targetPort"] = 8080
    assert any("targetPort 8080" in p for p in checks.wiring_errors(_replace(k8s_docs, svc), roles))
    hpa = _doc(k8s_docs, "HorizontalPodAutoscaler", "dm-api")
    hpa["spec"]["scaleTargetRef"]["name"] = "dm-apii"
    assert any("HorizontalPodAutoscaler dm-api" in p for p in checks.wiring_errors(_replace(k8s_docs, hpa), roles))
    dep = _doc(k8s_docs, "Deployment", "dm-ingest")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["args"] = ["serve"]
    container["envFrom"][1]["secretRef"]["name"] = "dm-secret"
    problems = checks.wiring_errors(_replace(k8s_docs, dep), roles)
    assert any("args ['serve']" in p for p in problems)
    assert any("dm-secret is not defined" in p for p in problems)


def test_helm_values_check_fires(helm_values: dict[str, Any], k8s_docs: list[dict[str, Any]]) -> None:
    assert checks.helm_values_errors(helm_values, k8s_docs, LOCATION) == []
    bad = copy.deepcopy(helm_values)
    bad["runLauncher"]["type"] = "CeleryK8sRunLauncher"
    bad["postgresql"]["enabled"] = True
    bad["dagster-user-deployments"]["deployments"][0]["envSecrets"] = [{"name": "dm-secret"}]
    bad["dagsterWebserver"]["workspace"]["servers"][0]["name"] = "market-data"
    problems = checks.helm_values_errors(bad, k8s_docs, LOCATION)
    assert len(problems) == 4, problems
