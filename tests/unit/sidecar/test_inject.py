"""`meshpy inject`: the sidecar in every Pod template, checked against Kubernetes' schemas, and the rest of
the manifest left as it was written."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_schema import validate

from meshpy.cli import _parser
from meshpy.sidecar.inject import InjectError, InjectOptions, inject_text, split_documents

ROOT = Path(__file__).resolve().parents[3]
SHOP = Path(__file__).parent / "manifests" / "shop.yaml"
NATIVE = InjectOptions(image="meshpy:9.9.9")
CLASSIC = InjectOptions(image="meshpy:9.9.9", native=False)

APP = {"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}
POD_SPEC: dict[str, Any] = {"containers": [APP]}
TEMPLATE: dict[str, Any] = {"metadata": {"labels": {"app": "shop"}}, "spec": POD_SPEC}
SELECTOR = {"matchLabels": {"app": "shop"}}
WORKLOADS: dict[str, dict[str, Any]] = {
    "Pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "one", "labels": {"app": "shop"}},
            "spec": POD_SPEC},
    "Deployment": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"},
                   "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "StatefulSet": {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "shop"},
                    "spec": {"serviceName": "shop", "selector": SELECTOR, "template": TEMPLATE}},
    "DaemonSet": {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "shop"},
                  "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "ReplicaSet": {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "shop"},
                   "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "Job": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "shop"},
            "spec": {"template": {**TEMPLATE, "spec": {**POD_SPEC, "restartPolicy": "Never"}}}},
    "CronJob": {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "shop"},
                "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {
                    **TEMPLATE, "spec": {**POD_SPEC, "restartPolicy": "OnFailure"}}}}}},
}  # fmt: skip


def template_of(doc: dict[str, Any]) -> dict[str, Any]:
    kind = doc["kind"]
    if kind == "Pod":
        return doc
    if kind == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"])
    return dict(doc["spec"]["template"])


def names(containers: list[dict[str, Any]] | None) -> list[str]:
    return [c["name"] for c in containers or []]


def by_name(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in containers if c["name"] == name)


def inject_one(doc: dict[str, Any], options: InjectOptions = NATIVE) -> dict[str, Any]:
    out = yaml.safe_load(inject_text(yaml.safe_dump(doc, sort_keys=False), options).text)
    assert isinstance(out, dict)
    validate(out)
    return out


def annotated(annotations: dict[str, str]) -> dict[str, Any]:
    doc = copy.deepcopy(WORKLOADS["Deployment"])
    doc["spec"]["template"]["metadata"]["annotations"] = annotations
    return doc


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_every_workload_kind_gets_a_native_sidecar(kind: str) -> None:
    pod = template_of(inject_one(WORKLOADS[kind]))
    spec = pod["spec"]
    assert names(spec["initContainers"]) == ["meshpy-init", "meshpy-proxy"]
    assert names(spec["containers"]) == ["app"]
    proxy = by_name(spec["initContainers"], "meshpy-proxy")
    assert proxy["restartPolicy"] == "Always"
    assert proxy["image"] == "meshpy:9.9.9"
    assert proxy["args"] == [
        "run", "--xds", "meshpy-control.meshpy-system.svc:18000", "--node-id", "$(POD_NAME).$(POD_NAMESPACE)",
        "--node-cluster", "shop", "--admin", "127.0.0.1:15000",
    ]  # fmt: skip
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in proxy["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert pod["metadata"]["annotations"]["sidecar.meshpy.io/status"] == "injected"


def test_the_proxy_is_unprivileged_probed_and_hooked() -> None:
    spec = template_of(inject_one(WORKLOADS["Deployment"]))["spec"]
    proxy = by_name(spec["initContainers"], "meshpy-proxy")
    assert proxy["securityContext"] == {
        "runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert proxy["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"},
    }  # fmt: skip
    assert "ports" not in proxy  # the admin listener is on 127.0.0.1 only
    assert proxy["readinessProbe"] == {
        "exec": {"command": ["meshpy", "wait", "--timeout", "2"]}, "periodSeconds": 5, "timeoutSeconds": 3,
    }  # fmt: skip
    assert proxy["lifecycle"]["postStart"]["exec"]["command"] == ["meshpy", "wait", "--timeout", "120"]
    assert proxy["lifecycle"]["preStop"]["exec"]["command"] == ["meshpy", "drain", "--inbound-only"]
    init = by_name(spec["initContainers"], "meshpy-init")
    assert init["args"] == [
        "iptables", "--proxy-uid", "10001", "--inbound-port", "15006", "--outbound-port", "15001",
        "--exclude-inbound-ports", "15000",
    ]  # fmt: skip
    assert init["securityContext"]["runAsUser"] == 0
    assert init["securityContext"]["runAsNonRoot"] is False
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert init["resources"]["requests"]


def test_the_init_flags_are_real_options_of_meshpy_iptables() -> None:
    spec = template_of(inject_one(annotated({
        "traffic.meshpy.io/excludeInboundPorts": "9090",
        "traffic.meshpy.io/includeInboundPorts": "8080",
        "traffic.meshpy.io/excludeOutboundPorts": "5432",
        "traffic.meshpy.io/excludeOutboundIPRanges": "10.0.0.0/8",
    })))["spec"]  # fmt: skip
    args = by_name(spec["initContainers"], "meshpy-init")["args"]
    proc = subprocess.run(
        [sys.executable, "-m", "meshpy", *args, "--dry-run"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "9090" in proc.stdout and "5432" in proc.stdout and "10.0.0.0/8" in proc.stdout


def test_native_puts_the_proxy_before_the_workloads_own_init_containers() -> None:
    doc = copy.deepcopy(WORKLOADS["Deployment"])
    doc["spec"]["template"]["spec"]["initContainers"] = [{"name": "migrate", "image": "app:1"}]
    spec = template_of(inject_one(doc))["spec"]
    assert names(spec["initContainers"]) == ["meshpy-init", "meshpy-proxy", "migrate"]
    assert list(spec) == ["containers", "initContainers"]  # an existing key keeps its place


def test_a_new_init_containers_key_goes_before_containers() -> None:
    spec = template_of(inject_one(WORKLOADS["Deployment"]))["spec"]
    assert list(spec) == ["initContainers", "containers"]


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_classic_puts_the_proxy_first_among_containers(kind: str) -> None:
    doc = copy.deepcopy(WORKLOADS[kind])
    template_of(doc)["spec"]["initContainers"] = [{"name": "migrate", "image": "app:1"}]
    spec = template_of(inject_one(doc, CLASSIC))["spec"]
    assert names(spec["containers"]) == ["meshpy-proxy", "app"]
    # The workload's init containers run before the rules are installed: with no proxy yet, capturing
    # their traffic would cut them off.
    assert names(spec["initContainers"]) == ["migrate", "meshpy-init"]
    assert "restartPolicy" not in spec["containers"][0]


def test_the_annotation_overrides_the_mode_both_ways() -> None:
    to_classic = annotated({"sidecar.meshpy.io/nativeSidecar": "false"})
    spec = template_of(inject_one(to_classic, NATIVE))["spec"]
    assert names(spec["containers"]) == ["meshpy-proxy", "app"]
    to_native = annotated({"sidecar.meshpy.io/nativeSidecar": "true"})
    spec = template_of(inject_one(to_native, CLASSIC))["spec"]
    assert names(spec["initContainers"]) == ["meshpy-init", "meshpy-proxy"]


def test_annotations_become_iptables_flags_and_resources() -> None:
    spec = template_of(inject_one(annotated({
        "traffic.meshpy.io/excludeInboundPorts": "8081, 8082,15000",
        "traffic.meshpy.io/includeInboundPorts": "*",
        "traffic.meshpy.io/excludeOutboundPorts": "5432,6379",
        "traffic.meshpy.io/excludeOutboundIPRanges": "10.0.0.0/8, 169.254.169.254/32",
        "sidecar.meshpy.io/proxyCPU": "250m",
        "sidecar.meshpy.io/proxyMemory": "64Mi",
        "sidecar.meshpy.io/proxyMemoryLimit": "1Gi",
        "sidecar.meshpy.io/proxyCPULimit": "1",
    })))["spec"]  # fmt: skip
    args = by_name(spec["initContainers"], "meshpy-init")["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--exclude-inbound-ports"] == "15000,8081,8082"
    assert flags["--inbound-ports"] == "*"
    assert flags["--exclude-outbound-ports"] == "5432,6379"
    assert flags["--exclude-cidrs"] == "10.0.0.0/8,169.254.169.254/32"
    proxy = by_name(spec["initContainers"], "meshpy-proxy")
    assert proxy["resources"] == {"requests": {"cpu": "250m", "memory": "64Mi"},
                                  "limits": {"cpu": "1", "memory": "1Gi"}}


@pytest.mark.parametrize(("annotation", "value"), [
    ("traffic.meshpy.io/excludeOutboundPorts", "5432,http"),
    ("traffic.meshpy.io/excludeInboundPorts", "70000"),
    ("traffic.meshpy.io/includeInboundPorts", "**"),
    ("traffic.meshpy.io/excludeOutboundIPRanges", "10.0.0.0/33"),
    ("sidecar.meshpy.io/proxyMemory", "lots"),
    ("sidecar.meshpy.io/nativeSidecar", "sometimes"),
])  # fmt: skip
def test_a_bad_annotation_names_the_document_and_the_annotation(annotation: str, value: str) -> None:
    text = "kind: ConfigMap\napiVersion: v1\n---\n" + yaml.safe_dump(annotated({annotation: value}))
    with pytest.raises(InjectError) as err:
        inject_text(text, NATIVE)
    assert "document 2 (Deployment shop)" in str(err.value)
    assert annotation in str(err.value)


def test_the_service_name_comes_from_the_usual_labels_else_the_name() -> None:
    def cluster(labels: dict[str, str]) -> str:
        doc = copy.deepcopy(WORKLOADS["Deployment"])
        doc["spec"]["template"]["metadata"]["labels"] = labels
        doc["spec"]["selector"] = {"matchLabels": labels} if labels else {}
        args = by_name(template_of(inject_one(doc))["spec"]["initContainers"], "meshpy-proxy")["args"]
        return str(args[args.index("--node-cluster") + 1])

    assert cluster({"app.kubernetes.io/name": "cart", "app": "old"}) == "cart"
    assert cluster({"app": "basket"}) == "basket"
    assert cluster({"tier": "x"}) == "shop"


def test_injection_is_idempotent() -> None:
    text = SHOP.read_text()
    for options in (NATIVE, CLASSIC):
        once = inject_text(text, options)
        twice = inject_text(once.text, options)
        assert once.injected == 2  # the Deployment and the CronJob
        assert twice.injected == 0
        assert twice.text == once.text


def test_documents_left_alone_come_back_byte_for_byte() -> None:
    text = SHOP.read_text()
    before = split_documents(text)
    after = split_documents(inject_text(text, NATIVE).text)
    assert len(after) == len(before) == 6
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed == [1, 2]  # the Deployment and the CronJob; not the hostNetwork, opted-out or other kinds
    # Around a changed document, its comment lines are kept.
    assert after[1].startswith("---\n# The front end: labels in flow style, an init container of its own.\n")
    assert after[1].endswith("# after the Deployment\n")
    for doc in yaml.safe_load_all(inject_text(text, NATIVE).text):
        validate(doc)


def test_an_opted_out_workload_is_untouched() -> None:
    text = "# keep\napiVersion: v1\nkind: Pod\nmetadata:\n  name: x   # odd spacing\n  annotations: " \
           "{sidecar.meshpy.io/inject: 'false'}\nspec: {containers: [{name: a, image: 'a:1'}]}\n"
    result = inject_text(text, NATIVE)
    assert result.text == text
    assert result.injected == 0


def test_host_network_pods_are_skipped_with_a_note() -> None:
    doc = copy.deepcopy(WORKLOADS["DaemonSet"])
    doc["spec"]["template"]["spec"]["hostNetwork"] = True
    text = yaml.safe_dump(doc)
    result = inject_text(text, NATIVE)
    assert result.text == text
    assert any("hostNetwork" in note and "DaemonSet shop" in note for note in result.notes)


def test_a_list_has_its_items_injected() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop"},
               "spec": {"ports": [{"port": 80}]}}
    doc = {"apiVersion": "v1", "kind": "List", "items": [service, WORKLOADS["Deployment"], WORKLOADS["Pod"]]}
    out = inject_one(doc)
    assert out["items"][0] == service
    for item in out["items"][1:]:
        assert "meshpy-proxy" in names(template_of(item)["spec"]["initContainers"])


def test_an_already_injected_pod_without_its_proxy_is_an_error() -> None:
    doc = copy.deepcopy(WORKLOADS["Pod"])
    doc["spec"] = {"initContainers": [{"name": "meshpy-init", "image": "x"}], **POD_SPEC}
    with pytest.raises(InjectError, match="meshpy-init"):
        inject_text(yaml.safe_dump(doc), NATIVE)


@pytest.mark.parametrize(("text", "reason"), [
    ("kind: Service\n---\nkind: Pod\nspec: [unclosed\n", "document 2: not YAML (line 5)"),
    ("# only a comment\n---\n- a list\n", "document 1: expected a mapping"),
    ("kind: Deployment\nmetadata: {name: x}\nspec: {}\n", "spec.template is missing"),
    ("kind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n", "spec.containers: missing or empty"),
    ("kind: List\nitems: [3]\n", "items[0]: expected a mapping"),
])  # fmt: skip
def test_bad_input_is_an_error_naming_the_document(text: str, reason: str) -> None:
    with pytest.raises(InjectError) as err:
        inject_text(text, NATIVE)
    assert reason in str(err.value)


def meshpy_inject(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshpy", "inject", *args],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_cli_reads_standard_input() -> None:
    proc = meshpy_inject("--image", "meshpy:1.2.3", "--control-plane", "xds.mesh:18000", "--proxy-cpu", "50m",
                         stdin=yaml.safe_dump(WORKLOADS["Pod"]))
    assert proc.returncode == 0, proc.stderr
    pod = yaml.safe_load(proc.stdout)
    validate(pod)
    proxy = by_name(pod["spec"]["initContainers"], "meshpy-proxy")
    assert proxy["image"] == "meshpy:1.2.3"
    assert proxy["args"][proxy["args"].index("--xds") + 1] == "xds.mesh:18000"
    assert proxy["resources"]["requests"]["cpu"] == "50m"


def test_cli_token_audience() -> None:
    """--token-audience matches a control plane run with --token-audiences; '' asks for none (the API
    server's audience)."""
    for given, expected in (("istio-ca", "istio-ca"), ("", None)):
        proc = meshpy_inject("--trust-domain", "cluster.local", "--token-audience", given,
                             stdin=yaml.safe_dump(WORKLOADS["Pod"]))
        assert proc.returncode == 0, proc.stderr
        pod = yaml.safe_load(proc.stdout)
        validate(pod)
        (volume,) = pod["spec"]["volumes"]
        token = volume["projected"]["sources"][0]["serviceAccountToken"]
        assert token.get("audience") == expected and token["path"] == "token"


def test_cli_classic_jobs_are_told_how_to_finish(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(SHOP.read_text())
    proc = meshpy_inject("-f", str(path), "--mode", "classic")
    assert proc.returncode == 0, proc.stderr
    assert "CronJob report" in proc.stderr and "quitquitquit" in proc.stderr
    assert "hostNetwork" in proc.stderr
    for doc in yaml.safe_load_all(proc.stdout):
        validate(doc)


@pytest.mark.parametrize("args", [("-f", "-"), ("--proxy-memory", "a lot")])
def test_cli_bad_input_writes_nothing(args: tuple[str, ...]) -> None:
    proc = meshpy_inject(*args, stdin=yaml.safe_dump(WORKLOADS["Pod"]) + "---\n: [\n")
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert proc.stderr.startswith("meshpy inject: ")


POD_TEXT = "kind: Pod\napiVersion: v1\nmetadata: {name: p}\nspec: {containers: [{name: a, image: 'a:1'}]}\n"


@pytest.mark.parametrize(("text", "kept"), [
    ("", ""),
    ("# nothing but a comment\n", "# nothing but a comment\n"),
    ("kind: Service\n--- # the pod\n" + POD_TEXT, "kind: Service\n--- # the pod\nkind: Pod\n"),
    ("%YAML 1.1\n---\n" + POD_TEXT, "%YAML 1.1\n---\nkind: Pod\n"),
    ("kind: Service\n...\n%YAML 1.1\n---\n" + POD_TEXT, "kind: Service\n...\n%YAML 1.1\n---\nkind: Pod\n"),
    ("--- {kind: Pod, apiVersion: v1, metadata: {name: p}, spec: {containers: [{name: a, image: 'a:1'}]}}\n",
     "---\nkind: Pod\n"),
])  # fmt: skip
def test_separators_directives_and_empty_streams(text: str, kept: str) -> None:
    out = inject_text(text, NATIVE).text
    assert out.startswith(kept)
    assert len(list(yaml.safe_load_all(out))) == len(list(yaml.safe_load_all(text)))
    assert inject_text(out, NATIVE).text == out


@pytest.mark.parametrize("where", ["pod", "container"])
def test_an_app_running_as_the_proxys_uid_is_noted(where: str) -> None:
    doc = copy.deepcopy(WORKLOADS["Deployment"])
    spec = doc["spec"]["template"]["spec"]
    if where == "pod":
        spec["securityContext"] = {"runAsUser": 10001}
    else:
        spec["containers"] = [{**APP, "securityContext": {"runAsUser": 10001}}]
    result = inject_text(yaml.safe_dump(doc), NATIVE)
    assert result.injected == 1
    assert any("container app runs as UID 10001" in note for note in result.notes), result.notes
    assert not inject_text(yaml.safe_dump(WORKLOADS["Deployment"]), NATIVE).notes



def test_one_admin_address_by_default() -> None:
    """`meshpy run` without a config file opens the admin that `meshpy wait` and `meshpy drain` ask by
    default, and an injected sidecar is given that one (they once disagreed: 9901 and 15000), so its
    probes and hooks, which name no address, reach it."""
    import meshpy.runner
    from meshpy.cli import _parser
    from meshpy.model.types import DEFAULT_ADMIN

    parser = _parser()
    wait, drain = parser.parse_args(["wait"]), parser.parse_args(["drain"])
    assert wait.admin == drain.admin == str(DEFAULT_ADMIN) == "127.0.0.1:15000"
    assert meshpy.runner.DEFAULT_ADMIN is DEFAULT_ADMIN  # the short form's admin, when none is given
    spec = template_of(inject_one(WORKLOADS["Deployment"]))["spec"]
    args = by_name(spec["initContainers"], "meshpy-proxy")["args"]
    assert args[args.index("--admin") + 1] == str(DEFAULT_ADMIN)


def test_mesh_identity_from_the_pods_service_account() -> None:
    """With a trust domain, the sidecar asks the CA for its pod's identity with a projected token; the
    flags are real options of `meshpy run` (the kubelet expands $(VAR) before they reach it)."""
    options = InjectOptions(image="meshpy:9.9.9", trust_domain="cluster.local")
    spec = template_of(inject_one(WORKLOADS["Deployment"], options))["spec"]
    proxy = by_name(spec["initContainers"], "meshpy-proxy")
    args = proxy["args"]
    at = args.index("--identity")
    assert args[at + 1] == "spiffe://cluster.local/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)"
    assert args[args.index("--ca-token") + 1] == "/var/run/secrets/meshpy/token"
    assert {"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}} \
        in proxy["env"]
    assert proxy["volumeMounts"] == [{"name": "meshpy-token", "mountPath": "/var/run/secrets/meshpy",
                                      "readOnly": True}]
    (volume,) = spec["volumes"]
    token, root = volume["projected"]["sources"]
    assert token["serviceAccountToken"]["path"] == "token"
    # Made for the mesh's CA only: the API server refuses it, and the CA refuses the pod's API token
    # (meshpy control --token-audiences, whose default is the same).
    assert token["serviceAccountToken"]["audience"] == "meshpy-ca"
    assert _parser().parse_args(["control"]).token_audiences == "meshpy-ca"
    # The control plane is checked with the mesh's root, from a ConfigMap as Istio's istio-ca-root-cert.
    assert root == {"configMap": {"name": "meshpy-ca-root-cert",
                                  "items": [{"key": "root-cert.pem", "path": "root-cert.pem"}]}}
    assert args[args.index("--xds-ca") + 1] == "/var/run/secrets/meshpy/root-cert.pem"
    expanded = [a.replace("$(POD_NAMESPACE)", "shop").replace("$(SERVICE_ACCOUNT)", "orders") for a in args]
    parsed = _parser().parse_args(expanded)
    assert parsed.identity == "spiffe://cluster.local/ns/shop/sa/orders" and parsed.ca_token
    assert parsed.xds_ca == "/var/run/secrets/meshpy/root-cert.pem"
    # Without a trust domain nothing of it is there.
    plain_spec = template_of(inject_one(WORKLOADS["Deployment"]))["spec"]
    plain = by_name(plain_spec["initContainers"], "meshpy-proxy")
    assert "--identity" not in plain["args"] and "--xds-ca" not in plain["args"]
    assert "volumeMounts" not in plain
