"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) and every manifest checked
against the Kubernetes schemas (kubernetes-validate); the ConfigMap is loaded by the CLI's own
config loader; bad values are refused by values.schema.json."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import Chart, HelmError

from keepers.config import load_config
from keepers.config.schema import KEEPER_KINDS
from keepers.toolchain import REPO_ROOT

CHART = REPO_ROOT / "helm" / "keepers"
K8S_VERSION = "1.33.0"
CRDS = {"ServiceMonitor", "PrometheusRule"}  # not in Kubernetes' own schemas


def _values(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text())
    return loaded


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with Chart.load(CHART) as chart:
        files = chart.render(values, name="prod", namespace="keepers")
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


@pytest.fixture(scope="module", params=["default", *CI_VALUES])
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render({} if request.param == "default" else _values(request.param))


def hook_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The `helm test` pods by the keeper they check."""
    pods = [d for d in of_kind(docs, "Pod") if d["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    return {p["metadata"]["name"].removeprefix("prod-keepers-").removesuffix("-test"): p for p in pods}


def config_text(docs: list[dict[str, Any]]) -> str:
    (cm,) = [c for c in of_kind(docs, "ConfigMap") if "keepers.toml" in c["data"]]
    text: str = cm["data"]["keepers.toml"]
    return text


def test_every_manifest_validates_against_kubernetes(docs: list[dict[str, Any]]):
    for d in docs:
        if d["kind"] in CRDS:
            assert d["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_one_deployment_per_enabled_kind():
    assert {d["metadata"]["name"] for d in of_kind(render({}), "Deployment")} == {
        "prod-keepers-limit-stop",
        "prod-keepers-oracle",
    }
    everything = render(_values("all-enabled-values.yaml"))
    deployments = of_kind(everything, "Deployment")
    assert {d["metadata"]["name"].removeprefix("prod-keepers-") for d in deployments} == set(KEEPER_KINDS)
    by_kind = {d["metadata"]["name"].removeprefix("prod-keepers-"): d for d in deployments}
    assert by_kind["limit-stop"]["spec"]["replicas"] == 3
    args = by_kind["twap"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["run", "twap", "--config", "/etc/keepers/keepers.toml"]
    assert {p["metadata"]["name"] for p in of_kind(everything, "PodDisruptionBudget")} == {
        f"prod-keepers-{k}" for k in ("limit-stop", "twap", "liquidation", "oracle")
    }, "a budget where there is more than one replica"
    assert len(of_kind(everything, "ServiceMonitor")) == 1
    alerts = {r["alert"] for r in of_kind(everything, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]}
    assert {"KeeperBehindHead", "KeeperNoInclusion", "KeeperNonceGap", "KeeperSignerBalanceLow",
            "KeeperStrategyErrors", "KeeperLeaderFlapping"} <= alerts  # fmt: skip
    dashboard = of_kind(everything, "ConfigMap")
    assert any("keepers.json" in c["data"] for c in dashboard), "the Grafana dashboard ships"


def test_pods_are_locked_down_probed_and_drain_on_stop(docs: list[dict[str, Any]]):
    for d in of_kind(docs, "Deployment"):
        spec = d["spec"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] == 20 + 10, "drain_timeout plus a margin"
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["resources"]["limits"]["memory"]


def test_secrets_are_referenced_never_inlined(docs: list[dict[str, Any]]):
    assert of_kind(docs, "Secret") == [], "the chart creates no Secret: operators bring their own"
    pods = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")] + [
        p["spec"] for p in hook_pods(docs).values()
    ]
    extra = {"TZ"}  # extraEnv of ci/instances-values.yaml: passed as the operator gave it
    for pod in pods:
        c = pod["containers"][0]
        for env in c["env"]:
            if env["name"] in extra:
                continue
            assert "value" not in env, f"{env['name']} must come from a Secret"
            assert env["valueFrom"]["secretKeyRef"]["name"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["signer"]["secret"]["secretName"].startswith("keepers-signer")


def test_the_configmap_is_a_config_the_cli_accepts(tmp_path: Path):
    (cm,) = [
        c
        for c in of_kind(render(_values("all-enabled-values.yaml")), "ConfigMap")
        if "keepers.toml" in c["data"]
    ]
    path = tmp_path / "keepers.toml"
    path.write_text(cm["data"]["keepers.toml"])
    env = {"KEEPERS__DATABASE_URL": "postgresql://keepers@db/keepers",
           "KEEPERS__CHAINS__MAINNET__RPC": '[{ url = "https://user:pw@rpc.example.org" }]'}  # fmt: skip
    settings = load_config(path, environ=env)
    assert set(settings.keepers) == set(KEEPER_KINDS)
    assert settings.keepers["limit-stop"].params == {"max_orders": 40}
    assert settings.keepers["limit-stop"].shards == 16
    assert settings.keepers["oracle"].shards == 0
    assert settings.chains["mainnet"].chain_id == 1
    assert settings.signer is None, "the key is the sidecar's alone"
    assert settings.signer_url == "unix:/run/keepers-signer/signer.sock"
    assert settings.keepers["liquidation"].isolation == "process"
    assert settings.keepers["liquidation"].strategy_timeout == 1.5
    assert settings.database_url.startswith("postgresql://")


ORACLE_HOST = {"host": "orders.example.org", "keeper": "oracle"}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (
            {"keepers": {"limit-stop": {"enabled": True, "replicas": 0, "chain": "x", "strategy": "y"}}},
            "replicas",
        ),
        (
            {"keepers": {"limit-go": {"enabled": True, "replicas": 1, "chain": "x", "strategy": "y"}}},
            "limit-go",
        ),
        ({"database": {"existingSecret": "", "urlKey": "url"}}, "existingSecret"),
        ({"settings": {"database_url": "postgresql://u:secret@db/k", "chains": {"m": {}}}}, "database_url"),
        ({"image": {"repository": "r", "digest": "latest"}}, "digest"),
        (
            {
                "keepers": {
                    "oracle": {"enabled": True, "replicas": 2, "chain": "x", "strategy": "y", "shards": 4}
                }
            },
            "shards",
        ),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
        # a name that is not a kind says its kind; its chain is a configured one
        ({"keepers": {"ls-polygon": {"enabled": True, "chain": "mainnet"}}}, "kind"),
        ({"keepers": {"ls-polygon": {"enabled": True, "kind": "limit-go"}}}, "kind"),
        ({"keepers": {"lsp": {"enabled": True, "kind": "limit-stop", "chain": "polygon"}}}, "polygon"),
        ({"keepers": {"oracle-2": {"enabled": True, "kind": "oracle", "shards": 4}}}, "shards"),
        ({"keepers": {"Limit_Stop": {"enabled": True, "kind": "limit-stop"}}}, "Limit_Stop"),
        ({"podLabels": {"app.kubernetes.io/component": "x"}}, "propertyName .app.kubernetes.io/component"),
        ({"orderApi": {"keepers": ["twap"]}}, "twap"),
        (
            {"orderApi": {"keepers": ["limit-stop"], "ingress": {"enabled": True, "hosts": [ORACLE_HOST]}}},
            "oracle",
        ),
        ({"topologySpreadConstraints": [{"maxSkew": 1}]}, "topologyKey"),
    ],
)
def test_bad_values_fail_at_install(values: dict[str, Any], complaint: str):
    with pytest.raises(HelmError, match=complaint):
        render(values)


def test_the_key_is_mounted_into_the_signer_sidecar_only():
    """The keeper container (where plugins run) shares a socket with the signer sidecar and
    never mounts the key; the sidecar signs for the keeper's chain, to the chain's contracts
    only, within its budget; a kind can have its own key."""
    deployments = {
        d["metadata"]["name"]: d for d in of_kind(render(_values("all-enabled-values.yaml")), "Deployment")
    }
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        (keeper,) = pod["containers"]
        (sidecar,) = pod["initContainers"]
        assert sidecar["restartPolicy"] == "Always", "a native sidecar: serving before the keeper starts"
        assert {m["name"] for m in keeper["volumeMounts"]} >= {"signer-socket"}
        assert "signer" not in {m["name"] for m in keeper["volumeMounts"]}
        assert {m["name"] for m in sidecar["volumeMounts"]} == {"signer", "signer-socket"}
        assert sidecar["command"] == ["python", "-P", "-m", "keepers.tx.signer_service"]
        args = sidecar["args"]
        assert args[args.index("--chain-id") + 1] == "1"
        assert args[args.index("--max-fees-per-hour-eth") + 1] == "0.5"
        assert args[args.index("--kind") + 1] == name.removeprefix("prod-keepers-")
        contracts = {args[i + 1] for i, a in enumerate(args) if a == "--contract"}
        assert contracts == {
            "order_book=0x0000000000000000000000000000000000000b00",
            "oracle=0x0000000000000000000000000000000000000b01",
        }
        assert "--allow-to" not in args, "nothing signed beyond the kind's own calls unless allowed"
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret = "keepers-signer-liquidation" if name.endswith("-liquidation") else "keepers-signer"
        assert volumes["signer"]["secret"]["secretName"] == secret
        assert volumes["signer"]["secret"]["defaultMode"] == 0o400
        # scrypt of a standard keystore needs ~256 MiB: a smaller limit would never serve.
        assert sidecar["resources"]["limits"]["memory"] == "384Mi"


def test_a_name_too_long_for_kubernetes_fails_at_install():
    long_release = "a-release-name-of-forty-characters-long"
    with Chart.load(CHART) as chart, pytest.raises(HelmError, match="allow 63"):
        chart.render({"keepers": {"liquidation-arbitrum": {"enabled": True, "kind": "liquidation"}}},
                     name=long_release, namespace="keepers")  # fmt: skip


# --- named instances: a kind on several chains ----------------------------------------------


def _instances() -> list[dict[str, Any]]:
    return render(_values("instances-values.yaml"))


def test_one_kind_on_two_chains_with_its_own_signer_and_isolation(tmp_path: Path):
    docs = _instances()
    deployments = {
        d["metadata"]["name"].removeprefix("prod-keepers-"): d for d in of_kind(docs, "Deployment")
    }
    assert set(deployments) == {"limit-stop", "limit-stop-polygon", "oracle", "oracle-polygon"}
    expect = {  # name: (kind, chain id, key's Secret, hourly budget)
        "limit-stop": ("limit-stop", "1", "keepers-signer", None),
        "limit-stop-polygon": ("limit-stop", "137", "keepers-signer-polygon", "20"),
        "oracle": ("oracle", "1", "keepers-signer", None),
        "oracle-polygon": ("oracle", "137", "keepers-signer", None),
    }
    for name, (kind, chain_id, secret, budget) in expect.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["containers"][0]["args"] == ["run", name, "--config", "/etc/keepers/keepers.toml"]
        args = pod["initContainers"][0]["args"]
        assert args[args.index("--kind") + 1] == kind, "the sidecar signs the kind's calls"
        assert args[args.index("--chain-id") + 1] == chain_id
        assert ("--max-fees-per-hour-eth" in args) == (budget is not None)
        if budget:
            assert args[args.index("--max-fees-per-hour-eth") + 1] == budget
        contracts = {args[i + 1] for i, a in enumerate(args) if a == "--contract"}
        book = "0x0000000000000000000000000000000000000c00" if chain_id == "137" else "0x" + "0" * 37 + "b00"
        assert f"order_book={book}" in contracts, "the chain's own contracts"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["signer"]["secret"]["secretName"] == secret
        assert {i["key"] for i in volumes["signer"]["secret"]["items"]} == {"keystore.json", "password"}
    assert deployments["limit-stop-polygon"]["spec"]["replicas"] == 3
    assert deployments["oracle-polygon"]["spec"]["replicas"] == 1
    # limit-stop-polygon took the resources it did not set from keepers.limit-stop
    polygon = deployments["limit-stop-polygon"]["spec"]["template"]["spec"]["containers"][0]
    assert polygon["resources"]["limits"]["memory"] == "512Mi"
    assert {p["metadata"]["name"] for p in of_kind(docs, "PodDisruptionBudget")} == {
        "prod-keepers-limit-stop", "prod-keepers-limit-stop-polygon", "prod-keepers-oracle"
    }  # fmt: skip

    path = tmp_path / "keepers.toml"
    path.write_text(config_text(docs))
    env = {"KEEPERS__DATABASE_URL": "postgresql://keepers@db/keepers"}
    settings = load_config(path, environ=env)
    assert set(settings.keepers) == set(expect)
    for name, (kind, _chain_id, _secret, _budget) in expect.items():
        assert settings.kind_of(name) == kind
    ls = settings.keepers["limit-stop-polygon"]
    assert (ls.chain, ls.strategy) == ("polygon", "best-execution"), "the strategy from keepers.limit-stop"
    assert (ls.isolation, ls.strategy_timeout) == ("process", 0.5)
    assert settings.keepers["limit-stop"].isolation == "in-process"
    assert settings.keepers["limit-stop"].kind is None, "a kind's own name needs no kind"
    assert settings.chains["polygon"].chain_id == 137


def test_every_rendered_config_passes_the_check(docs: list[dict[str, Any]], tmp_path: Path):
    """What `keepers config check` proves offline (strategies, params, kinds, secrets, files,
    URLs), with the secrets supplied as the pods would have them."""
    import tomllib

    from keepers.config.check import check_config
    from tests.unit.test_config_check import _provide

    text = config_text(docs)
    path = tmp_path / "keepers.toml"
    path.write_text(text)
    env = {
        "KEEPERS__DATABASE_URL": "postgresql://keepers@db/keepers",
        **_provide(tomllib.loads(text), tmp_path),
    }
    report = check_config(path, env)
    assert report.exit_code == 0, [str(p) for p in report.problems]
    assert set(report.keepers) == {d["metadata"]["name"].removeprefix("prod-keepers-")
                                   for d in of_kind(docs, "Deployment")}  # fmt: skip


# --- pod fields ------------------------------------------------------------------------------


def test_pod_labels_annotations_scheduling_and_extras_reach_every_keeper():
    docs = _instances()
    values = _values("instances-values.yaml")
    for d in of_kind(docs, "Deployment"):
        name = d["metadata"]["name"].removeprefix("prod-keepers-")
        template = d["spec"]["template"]
        assert template["metadata"]["labels"]["team"] == "trading"
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == name, "the selector stays"
        assert template["metadata"]["annotations"]["example.org/owner"] == "trading"
        assert "checksum/config" in template["metadata"]["annotations"]
        pod = template["spec"]
        assert pod["priorityClassName"] == "keepers-critical"
        assert pod["nodeSelector"] == values["nodeSelector"]
        assert pod["tolerations"] == values["tolerations"]
        assert pod["affinity"] == values["affinity"]
        (spread,) = pod["topologySpreadConstraints"]
        assert spread["topologyKey"] == "topology.kubernetes.io/zone"
        assert spread["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"], (
            "a constraint without labelSelector spreads the instance's own pods"
        )
        keeper, sidecar = pod["containers"][0], pod["initContainers"][0]
        assert {"name": "TZ", "value": "UTC"} in keeper["env"]
        mount = {"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True}
        assert mount in keeper["volumeMounts"]
        assert {"name": "ca-bundle", "configMap": {"name": "corporate-ca"}} in pod["volumes"]
        assert "env" not in sidecar, "the process with the key gets nothing extra"
        assert {m["name"] for m in sidecar["volumeMounts"]} == {"signer", "signer-socket"}
    # a constraint that names its own selector keeps it
    own = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
           "labelSelector": {"matchLabels": {"team": "trading"}}}  # fmt: skip
    (d, *_) = of_kind(render({"topologySpreadConstraints": [own]}), "Deployment")
    assert d["spec"]["template"]["spec"]["topologySpreadConstraints"] == [own]
    # none of it by default
    pod = of_kind(render({}), "Deployment")[0]["spec"]["template"]["spec"]
    scheduling = {"priorityClassName", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"}
    assert not scheduling & set(pod)


# --- the order API ---------------------------------------------------------------------------


def test_the_order_api_has_its_own_services_and_an_ingress_for_orders_only():
    docs = _instances()
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for name in ("limit-stop", "limit-stop-polygon"):
        api = services[f"prod-keepers-{name}-api"]
        assert api["spec"]["selector"] == services[f"prod-keepers-{name}"]["spec"]["selector"]
        assert api["spec"]["ports"] == [{"name": "api", "port": 80, "targetPort": "api", "protocol": "TCP"}]
        assert api["metadata"]["labels"]["app.kubernetes.io/component"] == "order-api"
    # the API on a container port of its own, the one the keeper's config serves it on
    for d in of_kind(docs, "Deployment"):
        (keeper, *_) = d["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in keeper["ports"]}
        assert ports == {"http": 9100, "api": 8081}
    assert tomllib.loads(config_text(docs))["order_api"] == {"port": 8081}
    values = _values("instances-values.yaml")
    values["orderApi"] = {"port": 9200, "keepers": ["limit-stop"]}
    values["settings"]["order_api"] = {"cors_origins": ["https://app.example.org"], "burst": 5}
    custom = render(values)
    assert tomllib.loads(config_text(custom))["order_api"] == {
        "port": 9200, "cors_origins": ["https://app.example.org"], "burst": 5,
    }  # fmt: skip
    (policy,) = of_kind(docs, "NetworkPolicy")
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [9100, 8081]
    (policy,) = of_kind(render({}), "NetworkPolicy")
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [9100], "no API, no port open"
    (monitor,) = of_kind(render(_values("all-enabled-values.yaml") | {"orderApi": {"keepers": ["twap"]}}),
                         "ServiceMonitor")  # fmt: skip
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"], "API Services have no port http"
    (ingress,) = of_kind(docs, "Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    hosts = ["orders.example.org", "polygon.orders.example.org"]
    assert spec["tls"] == [{"secretName": "orders-tls", "hosts": hosts}]
    routes = {
        r["host"]: [(p["path"], p["pathType"], p["backend"]["service"]["name"]) for p in r["http"]["paths"]]
        for r in spec["rules"]
    }
    assert routes == {
        "orders.example.org": [("/orders", "Prefix", "prod-keepers-limit-stop-api")],
        "polygon.orders.example.org": [("/orders", "Prefix", "prod-keepers-limit-stop-polygon-api")],
    }, "one chain's orders per host; /metrics and the probes are never routed"
    assert of_kind(render({}), "Ingress") == []
    assert not [s for s in of_kind(render({}), "Service") if s["metadata"]["name"].endswith("-api")]


# --- helm test -------------------------------------------------------------------------------


def test_helm_test_runs_the_online_check_of_each_keeper_as_its_pod_would(docs: list[dict[str, Any]]):
    from keepers.cli import build_parser

    deployments = {
        d["metadata"]["name"].removeprefix("prod-keepers-"): d for d in of_kind(docs, "Deployment")
    }
    pods = hook_pods(docs)
    assert set(pods) == set(deployments), "one test pod per keeper"
    for name, test in pods.items():
        delete = test["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        assert delete == "before-hook-creation,hook-succeeded", "a failed test pod stays for its logs"
        spec, keeper_pod = test["spec"], deployments[name]["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never"
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"] == keeper_pod["securityContext"]
        check, address = spec["containers"]
        keeper = keeper_pod["containers"][0]
        # the same config, environment, Secrets and extra volumes as the keeper
        assert check["env"] == keeper["env"]
        assert check["volumeMounts"] == keeper["volumeMounts"]
        assert spec["volumes"] == keeper_pod["volumes"]
        assert check["securityContext"] == keeper["securityContext"]
        # the same signer sidecar: the key mounted there only, proven by its serving
        assert spec["initContainers"] == keeper_pod["initContainers"]
        for c in (check, address):
            assert "signer" not in {m["name"] for m in c["volumeMounts"]}
        args = build_parser().parse_args(check["args"])
        assert (args.config_command, args.online, args.keeper) == ("check", True, name)
        assert str(args.config) == "/etc/keepers/keepers.toml"
        args = build_parser().parse_args(address["args"])
        assert (args.signer_command, args.name) == ("address", name)
        assert str(args.config) == "/etc/keepers/keepers.toml"
        assert {m["name"] for m in address["volumeMounts"]} == {"config", "signer-socket", "tmp"}
        # not behind the keeper's Services; under the same NetworkPolicy (the release's pods)
        labels = test["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == f"{name}-test"
        assert labels["app.kubernetes.io/instance"] == "prod"


# --- as a subchart ---------------------------------------------------------------------------


def test_a_parent_chart_sets_global_and_the_chart_renders(tmp_path: Path):
    import shutil

    parent = tmp_path / "platform"
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "keepers")
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "keepers", "version": version, "repository": "file://charts/keepers"}],
    }))  # fmt: skip
    (parent / "values.yaml").write_text(yaml.safe_dump({"global": {"environment": "prod"}}))
    # the subchart's values go under its name
    values = {"global": {"imageRegistry": "mirror.example.org"}, "keepers": _values("instances-values.yaml")}
    with Chart.load(parent) as chart:
        files = chart.render(values, name="prod", namespace="keepers")
    docs = [d for p, text in sorted(files.items()) if not p.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]  # fmt: skip
    assert {d["metadata"]["name"] for d in of_kind(docs, "Deployment")} == {
        f"prod-keepers-{n}" for n in ("limit-stop", "limit-stop-polygon", "oracle", "oracle-polygon")
    }
    for d in docs:
        if d["kind"] not in CRDS:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)


# --- the chart's README ----------------------------------------------------------------------


def test_the_chart_readme_is_generated_from_the_schema():
    import importlib.util

    spec = importlib.util.spec_from_file_location("chart_readme", REPO_ROOT / "tools" / "chart_readme.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (CHART / "README.md").read_text() == module.render(), "stale: run ./dev chart-readme"
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    for key in schema["properties"]:
        assert f"`{key}" in readme, f"{key} is not in the chart README"
