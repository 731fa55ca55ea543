"""Offline validation of everything under ``deploy/``: no Docker daemon, no cluster.

Why offline: CI has neither, and a typo in a manifest should fail the build, not the
rollout. The compose file is checked against the Compose Specification's JSON schema (the
copy vendored by check-jsonschema), Kubernetes manifests against the schemas shipped by
kubernetes-validate (strict: unknown fields are errors), the KEDA ScaledObject against
``deploy/k8s/schemas/keda-scaledobject.schema.json``. The cross-reference checks catch what
schemas cannot: a role the image's entry point does not know, a variable of
``.env.example`` that no ConfigMap or Secret carries, a Service port that does not reach
the container.

    python -m deploy.checks        # prints every problem, exit 1 if any
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S_DIR = DEPLOY / "k8s"
HELM_VALUES = DEPLOY / "helm" / "dagster-values.yaml"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "cargo", "rustc", "libpq-dev")
KEDA_SCHEMA = K8S_DIR / "schemas" / "keda-scaledobject.schema.json"
# The oldest Kubernetes minor the manifests must run on (autoscaling/v2, policy/v1 PDBs).
K8S_VERSION = "1.30.0"

_ENV_LINE = re.compile(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=")
_ROLE_LINE = re.compile(r"^\s*([a-z][a-z-]*)\)\s*$")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _schema_errors(schema: Mapping[str, Any], doc: Any) -> list[str]:
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema as vendored (and kept current) by check-jsonschema."""
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def compose_errors(doc: Mapping[str, Any]) -> list[str]:
    return _schema_errors(compose_schema(), doc)


def entrypoint_roles(path: Path = ENTRYPOINT) -> set[str]:
    """Component names the image's entry point dispatches on (``case`` labels)."""
    return {m.group(1) for line in path.read_text().splitlines() if (m := _ROLE_LINE.match(line))}


def dockerfile_errors(text: str) -> list[str]:
    """The final stage runs as a non-root user, has an entry point, and installs no build tools."""
    stages = re.split(r"(?im)^FROM\s", text)
    if len(stages) < 3:
        return ["Dockerfile: not multi-stage (build tools would stay in the image)"]
    final = stages[-1]
    problems: list[str] = []
    users = re.findall(r"(?im)^USER\s+(\S+)", final)
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append(f"Dockerfile: final stage runs as {users[-1] if users else 'root (no USER)'}")
    if not re.search(r"(?im)^ENTRYPOINT\s", final):
        problems.append("Dockerfile: final stage has no ENTRYPOINT")
    for line in re.findall(r"(?im)^RUN\s.*$", final):
        tools = [t for t in BUILD_TOOLS if re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", line)]
        if tools and "install" in line:
            problems.append(f"Dockerfile: final stage installs build tools {tools}")
    return problems


def env_names(path: Path) -> set[str]:
    """Variable names in an env file, commented-out ones included (they are documented names)."""
    return {m.group(1) for line in path.read_text().splitlines() if (m := _ENV_LINE.match(line))}


def compose_consistency_errors(doc: Mapping[str, Any], roles: set[str], compose_dir: Path = DEPLOY) -> list[str]:
    """What the schema cannot see: roles, health checks, env files."""
    problems: list[str] = []
    for name, svc in doc.get("services", {}).items():
        if "healthcheck" not in svc and svc.get("restart") != "no":
            problems.append(f"services/{name}: no healthcheck")
        if str(svc.get("image", "")).startswith("${DM_IMAGE"):
            command = svc.get("command") or []
            if not command or command[0] not in roles:
                problems.append(f"services/{name}: command {command!r} is not an entry-point role {sorted(roles)}")
        env_files = svc.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            if not (compose_dir / path).exists() and not (compose_dir / f"{path}.example").exists():
                problems.append(f"services/{name}: env_file {path} has no {path}.example beside it")
    return problems


def k8s_errors(doc: Mapping[str, Any], version: str = K8S_VERSION) -> list[str]:
    """Schema errors of one manifest; an unknown kind is an error, not a silent pass."""
    kind = f"{doc.get('apiVersion')}/{doc.get('kind')}"
    if kind == "keda.sh/v1alpha1/ScaledObject":
        return [f"{kind}: {e}" for e in _schema_errors(json.loads(KEDA_SCHEMA.read_text()), doc)]
    try:
        kubernetes_validate.validate(dict(doc), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        return [f"{kind} {doc.get('metadata', {}).get('name')}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{kind}: no schema for this kind in Kubernetes {version} (and none vendored)"]
    return []


def manifests(directory: Path = K8S_DIR) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(directory.glob("*.yaml")) for doc in load_yaml_documents(path)]


def _by_kind(docs: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Mapping[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def env_coverage_errors(docs: Iterable[Mapping[str, Any]], names: set[str]) -> list[str]:
    """Every documented variable must be set by some ConfigMap or Secret."""
    docs = list(docs)
    keys: set[str] = set()
    for cm in _by_kind(docs, "ConfigMap").values():
        keys |= set(cm.get("data", {}))
    for secret in _by_kind(docs, "Secret").values():
        keys |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    return [f"{name}: in .env.example but in no ConfigMap/Secret" for name in sorted(names - keys)]


def _container_ports(deployment: Mapping[str, Any]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            ports[port.get("name", str(port["containerPort"]))] = port["containerPort"]
    return ports


def wiring_errors(docs: Iterable[Mapping[str, Any]], roles: set[str]) -> list[str]:
    """Services reach their pods, scalers target real Deployments, references resolve."""
    docs = list(docs)
    problems: list[str] = []
    deployments = _by_kind(docs, "Deployment")
    config_names = set(_by_kind(docs, "ConfigMap")) | set(_by_kind(docs, "Secret"))
    for name, dep in deployments.items():
        selector = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"Deployment {name}: selector {selector} does not match its pod labels")
        for container in dep["spec"]["template"]["spec"]["containers"]:
            args = container.get("args") or []
            if not args or args[0] not in roles:
                problems.append(f"Deployment {name}: args {args!r} is not an entry-point role")
            for src in container.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef") or {}
                if ref.get("name") not in config_names:
                    problems.append(f"Deployment {name}: envFrom {ref.get('name')} is not defined")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"Deployment {name}: no {probe}")
    for name, svc in _by_kind(docs, "Service").items():
        targets = [d for d in deployments.values() if _selects(svc["spec"]["selector"], d)]
        if not targets:
            problems.append(f"Service {name}: selects no Deployment")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for dep in targets:
                known = _container_ports(dep)
                if target not in known and target not in known.values():
                    problems.append(f"Service {name}: targetPort {target!r} is no container port of its pods")
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, scaler in _by_kind(docs, kind).items():
            ref = scaler["spec"]["scaleTargetRef"]
            if ref.get("kind", "Deployment") != "Deployment" or ref["name"] not in deployments:
                problems.append(f"{kind} {name}: target {ref} is not a Deployment here")
    return problems


def _selects(selector: Mapping[str, str], deployment: Mapping[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def helm_values_errors(values: Mapping[str, Any], docs: Iterable[Mapping[str, Any]], location: str) -> list[str]:
    """The Dagster chart values: our image, our env, K8sRunLauncher, external PostgreSQL, the location name."""
    docs = list(docs)
    problems: list[str] = []
    config_names = set(_by_kind(docs, "ConfigMap")) | set(_by_kind(docs, "Secret"))
    images = {
        c["image"].rsplit(":", 1)[0]
        for d in _by_kind(docs, "Deployment").values()
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    user = values.get("dagster-user-deployments", {})
    deployments = user.get("deployments", []) if user.get("enabled") else []
    if not deployments:
        problems.append("dagster-user-deployments: no enabled user deployment")
    for dep in deployments:
        if dep["image"]["repository"] not in images:
            problems.append(f"user deployment {dep['name']}: image {dep['image']['repository']} is not ours {images}")
        refs = [r["name"] for r in dep.get("envConfigMaps", []) + dep.get("envSecrets", [])]
        problems += [
            f"user deployment {dep['name']}: env source {r} is not defined" for r in refs if r not in config_names
        ]
    launcher = values.get("runLauncher", {})
    if launcher.get("type") != "K8sRunLauncher":
        problems.append(f"runLauncher.type is {launcher.get('type')!r}, the documented choice is K8sRunLauncher")
    k8s = launcher.get("config", {}).get("k8sRunLauncher", {})
    refs = [r["name"] for r in k8s.get("envConfigMaps", []) + k8s.get("envSecrets", [])]
    problems += [f"runLauncher: env source {r} is not defined" for r in refs if r not in config_names]
    if values.get("postgresql", {}).get("enabled", True):
        problems.append("postgresql.enabled: the instance must use the external PostgreSQL")
    if not values.get("dagsterDaemon", {}).get("enabled", False):
        problems.append("dagsterDaemon.enabled: schedules and sensors need the daemon")
    servers = values.get("dagsterWebserver", {}).get("workspace", {}).get("servers", [])
    if location not in {s.get("name") for s in servers}:
        problems.append(f"dagsterWebserver.workspace: no server named {location!r} (the API launches runs there)")
    return problems


def all_problems() -> list[str]:
    """Everything ``python -m deploy.checks`` and CI check, as one list."""
    from dm_resources.dagster_client import LOCATION

    roles = entrypoint_roles()
    compose = load_yaml_documents(COMPOSE_FILE)[0]
    problems = dockerfile_errors(DOCKERFILE.read_text())
    problems += [f"compose: {e}" for e in compose_errors(compose)]
    problems += [f"compose: {e}" for e in compose_consistency_errors(compose, roles)]
    compose_env = env_names(DEPLOY / "compose.env.example")
    documented = env_names(ROOT / ".env.example")
    problems += [f"compose.env.example: {n} from .env.example missing" for n in sorted(documented - compose_env)]
    docs = [doc for _, doc in manifests()]
    for path, doc in manifests():
        problems += [f"{path.name}: {e}" for e in k8s_errors(doc)]
    problems += [f"k8s: {e}" for e in env_coverage_errors(docs, documented)]
    problems += [f"k8s: {e}" for e in wiring_errors(docs, roles)]
    values = load_yaml_documents(HELM_VALUES)[0]
    problems += [f"helm: {e}" for e in helm_values_errors(values, docs, LOCATION)]
    return problems


def main() -> int:
    problems = all_problems()
    for problem in problems:
        print(problem)
    print(f"deploy/: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
