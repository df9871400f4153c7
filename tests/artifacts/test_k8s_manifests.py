"""deploy/k8s/, checked offline: every document against the Kubernetes JSON schemas that
kubernetes-validate bundles (strict: an unknown field is an error), at 1.29 (the first release with
native sidecars on by default) and at the newest bundled release; then what a schema cannot see:
references between the documents, ports, settings, the image, and the GPU variant's differences.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from faceanonymixer.service.settings import ENV_PREFIX, ServiceSettings, split_address

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SIDECAR = "faceanonymixer"
#: FACEANONYMIXER_* variables that are not settings: the key-encryption key, the CLI's token and
#: the health probe's TLS options (for an exec probe)
NOT_SETTINGS = {"FACEANONYMIXER_KEK_FILE", "FACEANONYMIXER_KEK", "FACEANONYMIXER_TOKEN"} | {
    f"FACEANONYMIXER_HEALTH_TLS_{name}" for name in ("CA", "CERT", "KEY", "SERVER_NAME")
}
SETTINGS = {ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields}

Document = dict[str, Any]


@cache
def documents() -> tuple[tuple[str, Document], ...]:
    """(file relative to deploy/k8s, document) for every YAML document under deploy/k8s."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append((path.relative_to(K8S).as_posix(), document))
    return tuple(found)


def of_kind(kind: str) -> list[Document]:
    return [document for _, document in documents() if document["kind"] == kind]


def named(kind: str, name: str) -> Document:
    matches = [document for document in of_kind(kind) if document["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} in deploy/k8s"
    return matches[0]


def deployments() -> Iterator[tuple[str, Document]]:
    return ((file, document) for file, document in documents() if document["kind"] == "Deployment")


def pod_spec(deployment: Document) -> Document:
    spec: Document = deployment["spec"]["template"]["spec"]
    return spec


def all_containers(deployment: Document) -> list[Document]:
    spec = pod_spec(deployment)
    return [*spec.get("initContainers", []), *spec["containers"]]


def sidecar(deployment: Document) -> Document:
    return next(item for item in pod_spec(deployment)["initContainers"] if item["name"] == SIDECAR)


def environment(container: Document) -> dict[str, str | None]:
    """What the container's environment holds: ConfigMap values; None for a secret's."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        env.update(named("ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value")
    return env


def deployment_ids() -> list[str]:
    return [file for file, _ in deployments()]


# ---- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_is_valid_for_kubernetes(version: str) -> None:
    assert len(documents()) >= 6
    for file, document in documents():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{file}: {document['kind']} {document['metadata']['name']}: {error.message}")


def test_the_applied_folder_holds_no_secret() -> None:
    """`kubectl apply -f deploy/k8s/` must never overwrite the real key-encryption key."""
    top_level = [(file, doc["kind"]) for file, doc in documents() if "/" not in file]
    assert top_level
    assert all(kind != "Secret" for _, kind in top_level), top_level


# ---- the pod ------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", deployment_ids())
def test_the_sidecar_is_native_and_probed_over_grpc_health_on_its_port(file: str) -> None:
    deployment = dict(deployments())[file]
    container = sidecar(deployment)
    assert container["restartPolicy"] == "Always"  # a native sidecar, not a one-shot init container
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = environment(container)
    listen = env["FACEANONYMIXER_LISTEN"]
    assert listen is not None
    host, grpc_port = split_address(listen)
    assert host == "0.0.0.0"  # the kubelet probes the pod's address, not loopback
    assert ports["grpc"] == grpc_port
    metrics = env["FACEANONYMIXER_METRICS_LISTEN"]
    assert metrics is not None and ports["metrics"] == split_address(metrics)[1]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "room to load the models"
    # the application starts after the sidecar and reaches it over the pod's loopback
    application = pod_spec(deployment)["containers"][0]
    assert environment(application)["FACE_PROTECTION_ADDRESS"] == f"127.0.0.1:{grpc_port}"


@pytest.mark.parametrize("file", deployment_ids())
def test_environment_names_are_real_settings(file: str) -> None:
    for container in all_containers(dict(deployments())[file]):
        names = {name for name in environment(container) if name.startswith(ENV_PREFIX)}
        unknown = names - SETTINGS - NOT_SETTINGS
        assert not unknown, f"{container['name']}: not settings: {sorted(unknown)}"
    sidecar_env = environment(sidecar(dict(deployments())[file]))
    # without tokens the server refuses a non-loopback address
    assert {"FACEANONYMIXER_TOKENS", "FACEANONYMIXER_KEK_FILE", "FACEANONYMIXER_KEYSTORE"} <= set(sidecar_env)


@pytest.mark.parametrize("file", deployment_ids())
def test_referenced_secrets_and_config_maps_exist_with_their_keys(file: str) -> None:
    deployment = dict(deployments())[file]
    for container in all_containers(deployment):
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference is not None:
                secret = named("Secret", reference["name"])
                assert reference["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}
        for source in container.get("envFrom", []):
            assert named("ConfigMap", source["configMapRef"]["name"])["data"]
    secret_volumes = {
        volume["name"]: volume["secret"]["secretName"]
        for volume in pod_spec(deployment)["volumes"]
        if "secret" in volume
    }
    for secret_name in secret_volumes.values():
        named("Secret", secret_name)
    # FACEANONYMIXER_KEK_FILE is a key of the secret mounted where it points
    container = sidecar(deployment)
    kek_file = Path(str(environment(container)["FACEANONYMIXER_KEK_FILE"]))
    mount = next(item for item in container["volumeMounts"] if kek_file.parent == Path(item["mountPath"]))
    secret = named("Secret", secret_volumes[mount["name"]])
    assert kek_file.name in {**secret.get("data", {}), **secret.get("stringData", {})}
    assert mount["readOnly"] is True


def test_the_headless_service_selects_the_pods_and_their_named_ports() -> None:
    (service,) = of_kind("Service")
    assert service["spec"]["clusterIP"] == "None"  # DNS gives every pod: client-side round-robin
    selector = service["spec"]["selector"]
    for file, deployment in deployments():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), file
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), file
        sidecar_ports = {port["name"]: port["containerPort"] for port in sidecar(deployment)["ports"]}
        for port in service["spec"]["ports"]:
            assert sidecar_ports[port["targetPort"]] == port["port"], (file, port)


@pytest.mark.parametrize("file", deployment_ids())
def test_the_pod_runs_non_root_on_a_read_only_root_filesystem(file: str) -> None:
    deployment = dict(deployments())[file]
    pod = pod_spec(deployment)["securityContext"]
    assert pod["runAsNonRoot"] is True
    # the image's own user, so that files it owns (its volume folder) stay its own
    image_user = re.search(r"^USER\s+(\d+)", (REPO_ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert image_user and pod["runAsUser"] == int(image_user.group(1))
    for container in all_containers(deployment):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
    # where the image writes (its VOLUME, TMPDIR) is a mounted volume
    mounts = {item["mountPath"] for item in sidecar(deployment)["volumeMounts"]}
    assert {"/var/lib/faceanonymixer", "/tmp"} <= mounts
    # SIGTERM -> NOT_SERVING -> in-flight calls get the shutdown grace, within the pod's own grace
    grace = environment(sidecar(deployment))["FACEANONYMIXER_SHUTDOWN_GRACE_SECONDS"]
    assert grace is not None
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > float(grace)


@pytest.mark.parametrize("file", deployment_ids())
def test_the_sidecar_image_is_a_dockerfile_target(file: str) -> None:
    image = sidecar(dict(deployments())[file])["image"]
    name, _, tag = image.rpartition(":")
    assert name.endswith("faceanonymixer")
    assert re.search(
        rf"^FROM\s+\S+\s+AS\s+{re.escape(tag)}\s*$", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE
    )


# ---- the GPU variant ---------------------------------------------------------------------------


def without_gpu(deployment: Document) -> Document:
    """The GPU Deployment less what makes it one: what remains must be the CPU Deployment."""
    plain = copy.deepcopy(deployment)
    spec = pod_spec(plain)
    tolerations = spec.pop("tolerations")
    assert [item["key"] for item in tolerations] == ["nvidia.com/gpu"]
    container = sidecar(plain)
    assert container["resources"]["limits"].pop("nvidia.com/gpu") == 1
    assert container["image"].endswith(":cuda")
    container["image"] = container["image"].removesuffix(":cuda") + ":cpu"
    device = [item for item in container["env"] if item["name"] == "FACEANONYMIXER_DEVICE"]
    assert device == [{"name": "FACEANONYMIXER_DEVICE", "value": "cuda"}]
    container["env"].remove(device[0])
    return plain


def test_the_gpu_deployment_is_the_cpu_one_on_a_gpu() -> None:
    variants = dict(deployments())
    assert set(variants) == {"deployment.yaml", "gpu/deployment.yaml"}
    assert without_gpu(variants["gpu/deployment.yaml"]) == variants["deployment.yaml"]
