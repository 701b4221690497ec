"""deploy/kubernetes: every rendered manifest is valid for Kubernetes 1.30 and the newest schemas bundled with
kubernetes-validate (offline), the kustomization lists every file, and each probe and port points where the
daemon really serves, as computed by the daemons' own config loader and flag parser from what the pod gets
(the mounted TOML, its environment and its arguments).

kustomize itself is not needed: ``render`` applies the few features the kustomization uses (resources,
namespace, configMapGenerator, images); where kubectl is installed its ``kubectl kustomize`` output is checked
to be the same, generated name suffixes aside.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from zcrepl.agent.api import SERVICE_NAME as AGENT_SERVICE
from zcrepl.agent.main import build_parser as agent_parser
from zcrepl.controller.main import build_parser as controller_parser
from zcrepl.controller.service import SERVICE_NAME as CONTROLLER_SERVICE
from zcrepl.core.config import AgentConfig, ControllerConfig, load_config, split_address
from zcrepl.core.trust import TlsPaths, Trust

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
# What the downward API would give the pod (fieldRef), to expand $(VAR) references the way the kubelet does.
DOWNWARD = {"spec.nodeName": "node-1", "status.hostIP": "10.0.0.11", "metadata.name": "pod-0",
            "metadata.namespace": "zcrepl", "status.podIP": "10.0.0.11"}
DAEMONS: dict[str, tuple[Any, Any, tuple[str, ...]]] = {
    "zc-controller": (ControllerConfig, controller_parser, ("", CONTROLLER_SERVICE)),
    "zc-agent": (AgentConfig, agent_parser, ("", AGENT_SERVICE)),
}


def render(root: Path) -> list[dict[str, Any]]:
    """The kustomization's output (generated ConfigMaps without kustomize's hash suffix)."""
    k = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images"}, \
        "the kustomization uses a feature render() does not apply: teach it, or keep to these"
    out: list[dict[str, Any]] = []
    for res in k["resources"]:
        out += [d for d in yaml.safe_load_all((root / res).read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        data = {Path(f).name: (root / f).read_text() for f in gen["files"]}
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for obj in out:
        if "namespace" in k and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = k["namespace"]
        for c in containers(obj):
            for img in k.get("images", []):
                name, _, _ = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img['newTag']}"
    return out


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render(K8S)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


@pytest.mark.parametrize("version", ["1.30.0", latest_version()])
def test_every_manifest_is_valid_for_kubernetes(objects: list[dict[str, Any]], version: str) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)  # raises naming the field


def test_validation_catches_a_broken_manifest(objects: list[dict[str, Any]]) -> None:
    # The check above can fail: a misspelt field in the DaemonSet is refused.
    bad = copy.deepcopy(find(objects, "DaemonSet", "zcrepl-agent"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"grpc": {"port": 7425}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30.0", strict=True)


def test_kustomization_lists_every_file_and_the_tomls_are_the_examples() -> None:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(k["resources"]) | {f for g in k["configMapGenerator"] for f in g["files"]}
    on_disk = {p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml", ".toml", ".json")}
    assert on_disk - {"kustomization.yaml"} == listed
    for name in ("controller.toml", "agent.toml"):
        assert (K8S / name).read_text() == (DEPLOY / name).read_text(), \
            f"deploy/kubernetes/{name} differs from deploy/{name}: copy it again (cp deploy/{name} deploy/kubernetes/)"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kubectl kustomize) is not installed")
def test_render_matches_kubectl_kustomize(objects: list[dict[str, Any]]) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True)
    names = "|".join(re.escape(o["metadata"]["name"]) for o in objects if o["kind"] == "ConfigMap")
    text = re.sub(rf"\b({names})-[a-z0-9]{{10}}\b", r"\1", out.stdout)
    theirs = sorted(json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(text) if d)
    assert theirs == sorted(json.dumps(o, sort_keys=True) for o in objects)


def effective_config(obj: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]],
                     tmp_path: Path) -> tuple[Any, tuple[str, ...]]:
    """The daemon's config as it would load in this container, and the health service names it registers."""
    spec = obj["spec"]["template"]["spec"]
    cls, parser, services = DAEMONS[container["args"][0]]
    args = parser().parse_args(container["args"][1:])
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "valueFrom" in e:
            env[e["name"]] = DOWNWARD[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[args.config]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    toml_text = find(objects, "ConfigMap", volume["configMap"]["name"])["data"][mount["subPath"]]
    tmp_path.mkdir(parents=True, exist_ok=True)
    toml = tmp_path / mount["subPath"]
    toml.write_text(toml_text)
    if cls is AgentConfig:
        # Every export is the node's directory at the same path; here they are stand-ins under tmp_path.
        exports = env.get("ZC_EXPORTS", "").split(":") if env.get("ZC_EXPORTS") else tomllib.loads(toml_text)["exports"]
        host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
        for e in exports:
            assert e in mounts and host_paths.get(mounts[e]["name"]) == e, f"export {e} is not the node's {e}"
        stand_ins = [tmp_path / f"export{i}" for i in range(len(exports))]
        for s in stand_ins:
            s.mkdir()
        env["ZC_EXPORTS"] = ":".join(map(str, stand_ins))
    return load_config(cls, str(toml), flags, env), services


@pytest.mark.parametrize("kind,name", [("StatefulSet", "zcrepl-controller"), ("DaemonSet", "zcrepl-agent")])
def test_probes_and_ports_are_where_the_daemon_serves(objects: list[dict[str, Any]], kind: str, name: str,
                                                      tmp_path: Path) -> None:
    obj = find(objects, kind, name)
    spec = obj["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    cfg, services = effective_config(obj, container, objects, tmp_path)
    assert not cfg.insecure and cfg.ca and cfg.cert and cfg.key, "mutual TLS on every gRPC port"
    tls_mount = next(m["mountPath"] for m in container["volumeMounts"]
                     if any(v["name"] == m["name"] and "secret" in v for v in spec["volumes"]))
    assert all(p.startswith(tls_mount + "/") for p in (cfg.ca, cfg.cert, cfg.key))
    assert cfg.state_dir in {m["mountPath"] for m in container["volumeMounts"]}, "state_dir is not on a volume"
    serves = {"grpc": cfg.listen, "metrics": cfg.metrics_listen, "health": cfg.health_listen}
    if kind == "DaemonSet":
        serves["data"] = cfg.data_listen
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {k: split_address(v)[1] for k, v in serves.items()}
    health_port = split_address(cfg.health_listen)[1]
    assert health_port != split_address(cfg.listen)[1], "the probe must not dial the mutual-TLS port"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == health_port, f"{probe} dials {grpc_probe['port']}, the daemon serves {health_port}"
        assert grpc_probe.get("service", "") in services
    for svc in (o for o in objects if o["kind"] == "Service"):
        if svc["spec"]["selector"].items() <= obj["spec"]["template"]["metadata"]["labels"].items():
            for p in svc["spec"]["ports"]:
                assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]], (svc["metadata"], p)


def test_controller_keeps_its_store_on_a_claim_and_the_agent_uses_the_node_network(
        objects: list[dict[str, Any]]) -> None:
    sts = find(objects, "StatefulSet", "zcrepl-controller")
    assert sts["spec"]["replicas"] == 1  # SQLite: one writer
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    (ctl,) = sts["spec"]["template"]["spec"]["containers"]
    assert any(m["name"] in claims and m["mountPath"] == "/var/lib/zcrepl" for m in ctl["volumeMounts"])
    find(objects, "Service", sts["spec"]["serviceName"])
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    ds = find(objects, "DaemonSet", "zcrepl-agent")["spec"]["template"]["spec"]
    assert ds["hostNetwork"] is True and ds["dnsPolicy"] == "ClusterFirstWithHostNet"
    for c in (ctl, *ds["containers"]):
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    secrets = {v["secret"]["secretName"] for o in objects for v in
               o.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []) if "secret" in v}
    assert secrets == {"zcrepl-controller-tls", "zcrepl-agent-tls"}
    assert not [o for o in objects if o["kind"] == "Secret"], "no key material in the repository"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kubectl create secret) is not installed")
def test_secrets_recipe_gives_each_daemon_the_files_it_is_configured_with(objects: list[dict[str, Any]],
                                                                          tmp_path: Path) -> None:
    zc_ctl = Path(sys.executable).parent / "zc-ctl"
    node = DOWNWARD["spec.nodeName"]
    out = subprocess.run([str(K8S / "secrets.sh"), str(tmp_path / "pki"), node, "node-2"], capture_output=True,
                         text=True, timeout=120, check=True, env={**os.environ, "ZC_CTL": str(zc_ctl)})
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out.stdout) if d}
    for s in secrets.values():
        kubernetes_validate.validate(s, "1.30.0", strict=True)
        assert s["metadata"]["namespace"] == "zcrepl"
    for kind, name, who in (("StatefulSet", "zcrepl-controller", "controller"), ("DaemonSet", "zcrepl-agent", node)):
        obj = find(objects, kind, name)
        spec = obj["spec"]["template"]["spec"]
        cfg, _ = effective_config(obj, spec["containers"][0], objects, tmp_path / name)
        secret = secrets[next(v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v)]
        files = tmp_path / f"{name}-mounted"
        files.mkdir()
        for key, value in secret["data"].items():
            (files / key).write_bytes(base64.b64decode(value))
        paths = TlsPaths(*(str(files / Path(p).name) for p in (cfg.ca, cfg.cert, cfg.key)))
        # The daemon's own check: the CA signs the certificate, the key matches, the identity is the expected one.
        Trust(paths, kind="controller" if who == "controller" else "agent", name=who)
