"""The Helm chart: lint, schema validation of every manifest, and what the manifests contain."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from gateway.policy.loader import file_signature, load_policy
from tests.ops.conftest import (
    CHART_DIR,
    CLIENTS_SECRET_NAME,
    FULL_VALUES,
    NAMESPACE,
    RELEASE,
    RUNBOOK_BASE_URL,
    SECRET_NAME,
    merged,
    objects_of,
    only,
    render_chart,
)

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest bundled schema.
KUBE_VERSIONS = ("1.27.0", "1.37.0")

# Custom resources of the Prometheus operator: no bundled schema, checked field by field below.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}

SECRET_VARIABLES = (
    "GATEWAY_KEYRING_KEY",
    "GATEWAY_REDIS_URL",
    "MUX_PRIVATE_KEY",
    "MUX_SIGNING_KEY",
    "MUX_TOKEN_ID",
    "MUX_TOKEN_SECRET",
)

POLICY_MOUNT = "/etc/playback-gateway/policies"

DENY_POLICY = """version: 1
rules:
  - name: deny-all
    effect: deny
    when: 'true'
    message: {message}
"""


def gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = only(objects, "Deployment", RELEASE)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [container["name"] for container in containers] == ["gateway"]
    return containers[0]


def cronjob_container(objects: list[dict[str, Any]], command: str) -> dict[str, Any]:
    cronjob = only(objects, "CronJob", f"{RELEASE}-keys-{command}")
    containers = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_by_name(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container["env"]}


def render_error(values: dict[str, Any]) -> str:
    """Render with `values`, expecting a fail() from the chart; return its message."""
    with pytest.raises(helm.HelmRenderError) as caught:
        render_chart(values)
    # Helm prefixes "execution error at (template:line:column): " to the chart's own message.
    return str(caught.value).split("): ", 1)[1]


class TestChartFiles:
    def test_chart_metadata(self) -> None:
        with helm.Chart.load(CHART_DIR) as chart:
            metadata = chart.metadata

        assert metadata["apiVersion"] == "v2"
        assert metadata["name"] == "playback-gateway"
        assert metadata["version"] == "0.1.0"
        assert metadata["appVersion"] == "0.1.0"

    @pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
    def test_strict_lint_finds_nothing(self, values: dict[str, Any] | None) -> None:
        report = helm.lint(CHART_DIR, values, strict=True, kube_version="v1.27.0")

        # Lint also checks the values against values.schema.json.
        assert report["errors"] == []
        # Severity 1 is informational ("icon is recommended"); warnings (2) and errors (3) fail.
        findings = [message for message in report["messages"] if message["severity"] >= 2]
        assert findings == []

    def test_values_hold_no_credentials(self) -> None:
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

        assert values["secrets"]["existingSecret"] == ""
        assert values["secrets"]["keys"] == {name: name for name in SECRET_VARIABLES}
        assert not set(values["config"]) & set(SECRET_VARIABLES)
        assert values["clients"]["existingSecret"] == ""


class TestSchemaValidation:
    @pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
    @pytest.mark.parametrize("variant", ["default", "full"])
    def test_manifests_match_kubernetes_schema(
        self, variant: str, kube_version: str, default_objects: list[dict[str, Any]],
        full_objects: list[dict[str, Any]],
    ) -> None:
        objects = default_objects if variant == "default" else full_objects
        failures = []

        for item in objects:
            if item["kind"] in OPERATOR_KINDS:
                continue
            try:
                kubernetes_validate.validate(item, kube_version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                failures.append(f"{item['kind']}/{item['metadata']['name']}: {path}: {error.message}")

        assert failures == []


class TestRenderedObjects:
    def test_default_render_objects(self, default_objects: list[dict[str, Any]]) -> None:
        names = sorted((item["kind"], item["metadata"]["name"]) for item in default_objects)

        assert names == [
            ("ConfigMap", f"{RELEASE}-config"),
            ("ConfigMap", f"{RELEASE}-policies"),
            ("Deployment", RELEASE),
            ("PodDisruptionBudget", RELEASE),
            ("Service", RELEASE),
            ("ServiceAccount", RELEASE),
        ]

    def test_full_render_objects(self, full_objects: list[dict[str, Any]]) -> None:
        names = sorted((item["kind"], item["metadata"]["name"]) for item in full_objects)

        assert names == [
            ("ConfigMap", f"{RELEASE}-config"),
            ("ConfigMap", f"{RELEASE}-dashboard"),
            ("ConfigMap", f"{RELEASE}-policies"),
            ("ConfigMap", f"{RELEASE}-shadow-policies"),
            ("CronJob", f"{RELEASE}-keys-retire"),
            ("CronJob", f"{RELEASE}-keys-rotate"),
            ("Deployment", RELEASE),
            ("HorizontalPodAutoscaler", RELEASE),
            ("PodDisruptionBudget", RELEASE),
            ("PrometheusRule", RELEASE),
            ("Service", RELEASE),
            ("ServiceAccount", RELEASE),
            ("ServiceMonitor", RELEASE),
        ]

    def test_no_secret_objects_rendered(self, full_objects: list[dict[str, Any]]) -> None:
        assert [item for item in full_objects if item["kind"] == "Secret"] == []

    def test_notes_warn_without_secret(self, default_rendered: dict[str, str]) -> None:
        notes = default_rendered[f"{RELEASE}/templates/NOTES.txt"]

        assert "WARNING: secrets.existingSecret is empty." in notes
        assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}" in notes

    def test_notes_name_secret(self, full_rendered: dict[str, str]) -> None:
        notes = full_rendered[f"{RELEASE}/templates/NOTES.txt"]

        assert "WARNING" not in notes
        assert f"Credentials are read from the Secret {SECRET_NAME} (keys: " in notes
        assert "Key CronJobs: keys retire (17 * * * *), keys rotate (0 4 1 */3 *)." in notes


class TestDeployment:
    def test_replicas_and_rollout(self, default_objects: list[dict[str, Any]]) -> None:
        spec = only(default_objects, "Deployment", RELEASE)["spec"]

        assert spec["replicas"] == 2
        assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}

    def test_serve_command(self, default_objects: list[dict[str, Any]]) -> None:
        container = gateway_container(default_objects)

        assert "command" not in container
        assert container["args"] == ["serve", "--bind", "0.0.0.0:8080", "--workers", "2"]
        assert container["image"] == f"playback-gateway:{'0.1.0'}"
        assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]

    def test_image_digest_wins(self, full_objects: list[dict[str, Any]]) -> None:
        assert gateway_container(full_objects)["image"] == "playback-gateway@sha256:" + "ab" * 32

    def test_probe_paths(self, default_objects: list[dict[str, Any]]) -> None:
        container = gateway_container(default_objects)

        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    def test_runs_as_non_root(self, default_objects: list[dict[str, Any]]) -> None:
        pod = only(default_objects, "Deployment", RELEASE)["spec"]["template"]["spec"]
        container = gateway_container(default_objects)

        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    def test_writable_paths_are_empty_dirs(self, default_objects: list[dict[str, Any]]) -> None:
        pod = only(default_objects, "Deployment", RELEASE)["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in gateway_container(default_objects)["volumeMounts"]}

        assert mounts["/tmp"] == "tmp"
        assert mounts["/var/lib/playback-gateway"] == "data"
        assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "256Mi"}
        assert volumes["data"]["emptyDir"] == {"sizeLimit": "64Mi"}
        assert env_by_name(gateway_container(default_objects))["GATEWAY_DATA_DIR"]["value"] == (
            "/var/lib/playback-gateway"
        )

    def test_resources(self, default_objects: list[dict[str, Any]]) -> None:
        assert gateway_container(default_objects)["resources"] == {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "512Mi"},
        }

    def test_default_reads_no_secret(self, default_objects: list[dict[str, Any]]) -> None:
        env = env_by_name(gateway_container(default_objects))

        assert sorted(env) == ["GATEWAY_DATA_DIR", "GATEWAY_POLICY_PATH"]

    def test_secrets_referenced_by_name(self, full_objects: list[dict[str, Any]]) -> None:
        env = env_by_name(gateway_container(full_objects))

        for variable in SECRET_VARIABLES:
            assert "value" not in env[variable]
            assert env[variable]["valueFrom"] == {
                "secretKeyRef": {"name": SECRET_NAME, "key": variable, "optional": True},
            }

    def test_secret_key_mapping(self) -> None:
        values = merged(FULL_VALUES, {"secrets": {"keys": {"MUX_PRIVATE_KEY": "private-key.pem"}}})

        env = env_by_name(gateway_container(objects_of(render_chart(values))))

        assert env["MUX_PRIVATE_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "private-key.pem"

    def test_settings_come_from_configmap(self, full_objects: list[dict[str, Any]]) -> None:
        configmap = only(full_objects, "ConfigMap", f"{RELEASE}-config")
        container = gateway_container(full_objects)

        assert configmap["data"] == {
            "GATEWAY_RATE_LIMITS": "viewer=120/minute,ip=600/minute",
            "GATEWAY_TRUSTED_PROXIES": "1",
            "GATEWAY_VIEWER_JWKS_URL": "https://auth.example.com/.well-known/jwks.json",
        }
        assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-config"}}]
        assert env_by_name(container)["TZ"] == {"name": "TZ", "value": "UTC"}

    def test_empty_settings_left_out(self, default_objects: list[dict[str, Any]]) -> None:
        assert only(default_objects, "ConfigMap", f"{RELEASE}-config")["data"] == {}

    def test_clients_file_from_secret(self, full_objects: list[dict[str, Any]]) -> None:
        pod = only(full_objects, "Deployment", RELEASE)["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        container = gateway_container(full_objects)
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}

        assert volumes["clients"]["secret"] == {
            "secretName": CLIENTS_SECRET_NAME,
            "defaultMode": 0o440,
            "items": [{"key": "clients.yaml", "path": "clients.yaml"}],
        }
        assert mounts["clients"] == {
            "name": "clients", "mountPath": "/etc/playback-gateway/clients", "readOnly": True,
        }
        assert env_by_name(container)["GATEWAY_CLIENTS_FILE"]["value"] == (
            "/etc/playback-gateway/clients/clients.yaml"
        )

    def test_no_replicas_under_autoscaler(self, full_objects: list[dict[str, Any]]) -> None:
        deployment = only(full_objects, "Deployment", RELEASE)
        autoscaler = only(full_objects, "HorizontalPodAutoscaler", RELEASE)

        assert "replicas" not in deployment["spec"]
        assert autoscaler["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE,
        }
        assert autoscaler["spec"]["minReplicas"] == 3
        assert autoscaler["spec"]["maxReplicas"] == 12
        assert autoscaler["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    def test_disruption_budget_selects_gateway_pods(self, default_objects: list[dict[str, Any]]) -> None:
        budget = only(default_objects, "PodDisruptionBudget", RELEASE)
        pod_labels = only(default_objects, "Deployment", RELEASE)["spec"]["template"]["metadata"]["labels"]

        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    def test_service_targets_gateway_pods(self, default_objects: list[dict[str, Any]]) -> None:
        service = only(default_objects, "Service", RELEASE)
        pod_labels = only(default_objects, "Deployment", RELEASE)["spec"]["template"]["metadata"]["labels"]

        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"] == [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        ]


class TestPolicyMount:
    def test_policy_path_is_configmap_mount(self, default_objects: list[dict[str, Any]]) -> None:
        pod = only(default_objects, "Deployment", RELEASE)["spec"]["template"]["spec"]
        container = gateway_container(default_objects)
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}

        assert env_by_name(container)["GATEWAY_POLICY_PATH"]["value"] == POLICY_MOUNT
        # A subPath mount would never see ConfigMap updates, and policy reloads rely on them.
        assert mounts["policies"] == {"name": "policies", "mountPath": POLICY_MOUNT, "readOnly": True}
        assert {"name": "policies", "configMap": {"name": f"{RELEASE}-policies"}} in pod["volumes"]

    def test_policy_files_from_values(self, default_objects: list[dict[str, Any]]) -> None:
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

        configmap = only(default_objects, "ConfigMap", f"{RELEASE}-policies")

        assert configmap["data"] == values["policies"]["files"]
        assert list(configmap["data"]) == ["policy.yaml"]
        assert yaml.safe_load(configmap["data"]["policy.yaml"])["rules"][0]["effect"] == "deny"

    def test_default_policy_loads(self, tmp_path: Path) -> None:
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        for name, content in values["policies"]["files"].items():
            (tmp_path / name).write_text(content)

        policy = load_policy(tmp_path)

        assert [rule.name for rule in policy.rules] == ["deny-until-configured"]
        assert [warning.message for warning in policy.warnings] == ["no allow rules: every request is denied"]

    def test_configmap_update_is_noticed(self, tmp_path: Path) -> None:
        # The kubelet's layout for a ConfigMap volume: files are symlinks through `..data`, which
        # it points at a new timestamped folder in one rename when the ConfigMap changes.
        first = tmp_path / "..2026_01_01_00_00_00.000000001"
        first.mkdir()
        (first / "policy.yaml").write_text(DENY_POLICY.format(message="first"))
        (tmp_path / "..data").symlink_to(first.name)
        (tmp_path / "policy.yaml").symlink_to("..data/policy.yaml")
        before_signature = file_signature(tmp_path)
        before = load_policy(tmp_path)

        second = tmp_path / "..2026_01_01_00_01_00.000000002"
        second.mkdir()
        (second / "policy.yaml").write_text(DENY_POLICY.format(message="second, after the update"))
        (tmp_path / "..data_tmp").symlink_to(second.name)
        (tmp_path / "..data_tmp").replace(tmp_path / "..data")

        after = load_policy(tmp_path)

        assert file_signature(tmp_path) != before_signature
        assert after.version != before.version
        assert after.files == (str(tmp_path / "policy.yaml"),)

    def test_existing_policy_configmap(self) -> None:
        objects = objects_of(render_chart({"policies": {"existingConfigMap": "team-policies"}}))
        pod = only(objects, "Deployment", RELEASE)["spec"]["template"]["spec"]

        assert [item for item in objects if item["metadata"]["name"] == f"{RELEASE}-policies"] == []
        assert {"name": "policies", "configMap": {"name": "team-policies"}} in pod["volumes"]

    def test_shadow_policy_mount(self, full_objects: list[dict[str, Any]]) -> None:
        container = gateway_container(full_objects)
        configmap = only(full_objects, "ConfigMap", f"{RELEASE}-shadow-policies")

        assert env_by_name(container)["GATEWAY_SHADOW_POLICY_PATH"]["value"] == (
            "/etc/playback-gateway/shadow-policies"
        )
        assert configmap["data"] == {"shadow.yaml": "version: 1\nrules: []\n"}


class TestChecksum:
    def test_annotation_hashes_settings(self, default_rendered: dict[str, str]) -> None:
        deployment = only(objects_of(default_rendered), "Deployment", RELEASE)
        settings_text = default_rendered[f"{RELEASE}/templates/configmap.yaml"]

        annotation = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

        assert annotation == hashlib.sha256(settings_text.encode()).hexdigest()

    def test_setting_change_rolls_pods(self, default_rendered: dict[str, str]) -> None:
        changed = render_chart({"config": {"GATEWAY_LOG_LEVEL": "DEBUG"}})

        before = only(objects_of(default_rendered), "Deployment", RELEASE)
        after = only(objects_of(changed), "Deployment", RELEASE)

        assert (
            before["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            != after["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        )

    def test_policy_change_keeps_pods(self, default_rendered: dict[str, str]) -> None:
        policy = "version: 1\nrules:\n  - {name: everyone, effect: allow, when: 'true'}\n"
        changed = render_chart({"policies": {"files": {"policy.yaml": policy}}})

        template = f"{RELEASE}/templates/deployment.yaml"

        assert changed[template] == default_rendered[template]
        assert changed[f"{RELEASE}/templates/policies-configmap.yaml"] != (
            default_rendered[f"{RELEASE}/templates/policies-configmap.yaml"]
        )


class TestKeyCronJobs:
    @pytest.mark.parametrize("command", ["retire", "rotate"])
    def test_runs_key_command(self, command: str, full_objects: list[dict[str, Any]]) -> None:
        cronjob = only(full_objects, "CronJob", f"{RELEASE}-keys-{command}")
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        container = cronjob_container(full_objects, command)

        assert "command" not in container
        assert container["args"] == ["keys", command]
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        assert cronjob["spec"]["timeZone"] == "Etc/UTC"
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True

    def test_schedules(self, full_objects: list[dict[str, Any]]) -> None:
        assert only(full_objects, "CronJob", f"{RELEASE}-keys-retire")["spec"]["schedule"] == "17 * * * *"
        assert only(full_objects, "CronJob", f"{RELEASE}-keys-rotate")["spec"]["schedule"] == "0 4 1 */3 *"

    @pytest.mark.parametrize("command", ["retire", "rotate"])
    def test_same_settings_as_gateway(self, command: str, full_objects: list[dict[str, Any]]) -> None:
        gateway = gateway_container(full_objects)
        job = cronjob_container(full_objects, command)
        job_env = env_by_name(job)

        # No gunicorn creates /tmp/prometheus in a job pod, so the job uses /tmp, an existing emptyDir.
        assert job_env.pop("PROMETHEUS_MULTIPROC_DIR") == {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp"}
        assert job_env == env_by_name(gateway)
        assert job["envFrom"] == gateway["envFrom"]
        assert job["image"] == gateway["image"]
        assert job["volumeMounts"] == gateway["volumeMounts"]
        assert {"name": "tmp", "mountPath": "/tmp"} in job["volumeMounts"]

    def test_absent_without_secret(self, default_objects: list[dict[str, Any]]) -> None:
        assert [item for item in default_objects if item["kind"] == "CronJob"] == []

    def test_retire_only_by_default(self) -> None:
        objects = objects_of(render_chart({"secrets": {"existingSecret": SECRET_NAME}}))

        names = [item["metadata"]["name"] for item in objects if item["kind"] == "CronJob"]

        assert names == [f"{RELEASE}-keys-retire"]


class TestOperatorResources:
    def test_service_monitor_selects_service(self, full_objects: list[dict[str, Any]]) -> None:
        monitor = only(full_objects, "ServiceMonitor", RELEASE)
        service = only(full_objects, "Service", RELEASE)

        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert monitor["spec"]["endpoints"] == [
            {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"},
        ]
        assert "http" in [port["name"] for port in service["spec"]["ports"]]

    def test_prometheus_rule_carries_alert_file(
        self, full_objects: list[dict[str, Any]], alert_rules: dict[str, Any],
    ) -> None:
        rule = only(full_objects, "PrometheusRule", RELEASE)

        expected = copy.deepcopy(alert_rules["groups"])
        for group in expected:
            for entry in group["rules"]:
                if entry.get("record") == "playback_gateway:key_rotation_period_seconds":
                    entry["expr"] = "vector(2592000)"
                if "annotations" in entry:
                    entry["annotations"]["runbook_url"] = RUNBOOK_BASE_URL + entry["annotations"]["runbook_url"]

        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert rule["spec"] == {"groups": expected}

    def test_prometheus_rule_structure(self, full_objects: list[dict[str, Any]]) -> None:
        groups = only(full_objects, "PrometheusRule", RELEASE)["spec"]["groups"]

        for group in groups:
            assert set(group) == {"name", "rules"}
            for entry in group["rules"]:
                assert ("alert" in entry) != ("record" in entry)
                assert isinstance(entry["expr"], str)
                assert set(entry) <= {"alert", "record", "expr", "for", "labels", "annotations"}

    def test_dashboard_configmap(self, full_objects: list[dict[str, Any]]) -> None:
        configmap = only(full_objects, "ConfigMap", f"{RELEASE}-dashboard")

        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["data"] == {
            "playback-gateway.json": (CHART_DIR / "files" / "grafana-dashboard.json").read_text().rstrip("\n"),
        }


class TestValueChecks:
    @pytest.mark.parametrize(
        ("values", "message"),
        [
            (
                {"config": {"MUX_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----"}},
                "config.MUX_PRIVATE_KEY holds a credential: store it in the Secret named by "
                "secrets.existingSecret (mapped by secrets.keys), never in values",
            ),
            (
                {"config": {"GATEWAY_REDIS_URL": "redis://:password@redis:6379/0"}},
                "config.GATEWAY_REDIS_URL holds a credential: store it in the Secret named by "
                "secrets.existingSecret (mapped by secrets.keys), never in values",
            ),
            (
                {"keyJobs": {"rotate": {"enabled": True}}},
                "keyJobs.rotate.enabled needs secrets.existingSecret: rotation calls the System API "
                "with MUX_TOKEN_ID and MUX_TOKEN_SECRET",
            ),
            (
                {"policies": {"files": None}},
                "policies: set policies.files or policies.existingConfigMap; "
                "the gateway does not start without a policy",
            ),
            (
                {"policies": {"files": {"policy.yml": "version: 1\n"}}},
                'policies.files key "policy.yml" must be a file name ending in .yaml '
                "(the gateway loads *.yaml from the folder)",
            ),
            (
                {"shadowPolicies": {"enabled": True}},
                "shadowPolicies.enabled is true: set shadowPolicies.files or "
                "shadowPolicies.existingConfigMap",
            ),
            (
                {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}},
                "autoscaling.minReplicas (5) is greater than autoscaling.maxReplicas (3)",
            ),
            (
                {"secrets": {"keys": {"mux_private_key": "MUX_PRIVATE_KEY"}}},
                'secrets.keys has an invalid environment variable name "mux_private_key": '
                "use upper-case letters, digits and underscores",
            ),
        ],
        ids=[
            "private-key-in-config", "redis-url-in-config", "rotate-without-secret", "no-policy",
            "policy-file-suffix", "shadow-without-files", "autoscaling-bounds", "secret-variable-name",
        ],
    )
    def test_rejected_values(self, values: dict[str, Any], message: str) -> None:
        assert render_error(values) == message

    def test_unknown_setting_rejected(self) -> None:
        message = render_error({"config": {"GATEWAY_POLICY_PATH": "/srv/policies"}})

        assert message.startswith("config.GATEWAY_POLICY_PATH is not a gateway setting the chart accepts")
        assert message.endswith("; use extraEnv for anything else")


class TestValuesSchema:
    @pytest.mark.parametrize(
        ("values", "problem"),
        [
            ({"secret": {"existingSecret": SECRET_NAME}}, "at '': additional properties 'secret' not allowed"),
            ({"gunicorn": {"workers": 0}}, "at '/gunicorn/workers': minimum: got 0, want 1"),
            ({"gunicorn": {"workers": "4"}}, "at '/gunicorn/workers': got string, want integer"),
            (
                {"monitoring": {"keyRotationPeriodDays": 0}},
                "at '/monitoring/keyRotationPeriodDays': exclusiveMinimum: got 0, want 0",
            ),
            ({"tmp": {"medium": "Disk"}}, "at '/tmp/medium': value must be one of '', 'Memory'"),
            ({"image": {"digest": "latest"}}, "at '/image/digest'"),
        ],
        ids=["misspelled-key", "no-workers", "workers-as-text", "rotation-period", "tmp-medium", "digest"],
    )
    def test_schema_rejects(self, values: dict[str, Any], problem: str) -> None:
        with pytest.raises(helm.HelmValuesError) as caught:
            render_chart(values)

        assert f"- {problem}" in str(caught.value)
