"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) and every manifest checked
against the Kubernetes schemas (kubernetes-validate); the ConfigMap is loaded by the CLI's own
config loader; bad values are refused by values.schema.json."""

from __future__ import annotations

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


@pytest.fixture(scope="module", params=["default", "all-enabled"])
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render({} if request.param == "default" else _values("all-enabled-values.yaml"))


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
    for d in of_kind(docs, "Deployment"):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        for env in c["env"]:
            assert "value" not in env, f"{env['name']} must come from a Secret"
            assert env["valueFrom"]["secretKeyRef"]["name"]
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
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
        assert sidecar["command"] == ["python", "-m", "keepers.tx.signer_service"]
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
