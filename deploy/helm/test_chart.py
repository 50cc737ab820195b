"""The Helm chart, checked offline: linted and rendered by the Helm library
(helm-python-sdk) with the default values and with ci/gpu-external-s3-values.yaml,
every rendered object validated against Kubernetes' own schemas (kubernetes-validate,
strict), checkov's findings limited to those the chart's README lists with a reason,
and the topology checked from the rendered YAML: probes and Services reach the ports
the services' configs listen on, every container's environment is accepted by its
binary (`--print-config`), selectors match pods, disruption budgets leave room to
drain, network policies allow exactly the mesh's edges.

Run by scripts/test in its own virtual environment (checkov's dependencies clash
with the model tooling's): python -m unittest deploy/helm/test_chart.py
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "rankmesh"
ROOT = HERE.parent.parent
BIN = Path(os.environ.get("RANKMESH_BIN_DIR", ROOT / "target" / "debug"))
KUBERNETES = "1.30.0"
RELEASE, NAMESPACE = "rm", "shop"

# Kinds Kubernetes does not define (CRDs), and what each must carry.
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["selector", "endpoints"],
    ("cert-manager.io/v1", "Certificate"): ["secretName", "issuerRef", "uris", "dnsNames"],
}

# The binary behind each image.
BINARIES = {
    "feature": "rankmesh-feature",
    "embedding": "rankmesh-embedding",
    "ranking": "rankmesh-ranking",
    "ranking-cuda": "rankmesh-ranking",
    "embedding-cuda": "rankmesh-embedding",
    "registry": "rankmesh-model-registry",
}

# Who may call whom (NetworkPolicy ingress on the gRPC port), besides operators.
EDGES = {
    "ranking": {"storefront"},
    "embedding": {"ranking"},
    "feature": {"ranking", "embedding"},
    "registry": {"ranking", "embedding"},
}


# What an install must set however it is configured (the schema requires it).
REQUIRED = {"registrySecrets": {"verifyKey": "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"}}


def values_sets():
    return {
        "default": REQUIRED,
        "gpu-external-s3": yaml.safe_load((CHART / "ci" / "gpu-external-s3-values.yaml").read_text()),
    }


def render(values):
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return out, docs


def component(obj):
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def env_map(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def checkov_skips():
    """Check ids the chart's README lists, each with a reason."""
    text = (CHART / "README.md").read_text()
    skips = {}
    for m in re.finditer(r"^\| `(CKV_K8S_\d+)` \| ([^|]+?) \|", text, re.M):
        skips[m.group(1)] = m.group(2).strip()
    return skips


class Chart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = {name: render(v) for name, v in values_sets().items()}

    def each(self):
        """(values set, rendered files, objects) for each values set."""
        return [(name, out, docs) for name, (out, docs) in self.rendered.items()]

    def test_lints_clean(self):
        for name, values in values_sets().items():
            with self.subTest(values=name):
                report = helm_python.lint(str(CHART), values, strict=True, kube_version="v" + KUBERNETES)
                self.assertEqual(report["errors"], [])
                serious = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(serious, [])

    def test_every_object_is_valid_kubernetes(self):
        for _, _, docs in self.each():
            kinds = set()
            for path, doc in docs:
                kinds.add(doc["kind"])
                key = (doc["apiVersion"], doc["kind"])
                if key in CRDS:
                    for field in CRDS[key]:
                        self.assertIn(field, doc["spec"], f"{path}: {doc['kind']}")
                    continue
                try:
                    kubernetes_validate.validate(doc, KUBERNETES, strict=True)
                except Exception as e:  # noqa: BLE001 - the message is the finding
                    self.fail(f"{path}: {doc['kind']} {doc['metadata']['name']}: {e}")
                self.assertEqual(doc["metadata"].get("namespace"), NAMESPACE, f"{path}: {doc['kind']}")
            for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"):
                self.assertIn(kind, kinds)

    def test_values_outside_the_schema_are_refused(self):
        chart = helm_python.Chart.load(str(CHART))
        for bad in (
            None,
            {"registrySecrets": {"verifyKey": "not hex"}},
            {"etcd": {"enabled": False}},
            {"registry": {"store": "s3"}},
            {"service": {"probePort": 0}},
            {"ranking": {"gpu": {"enabled": True, "count": 0}}},
            {"unknown": True},
        ):
            values = None if bad is None else {**REQUIRED, **bad}
            with self.subTest(values=bad), self.assertRaises(helm_python.HelmValuesError):
                chart.render(values, name=RELEASE, namespace=NAMESPACE)

    def test_checkov_finds_only_what_the_readme_explains(self):
        skips = checkov_skips()
        self.assertTrue(skips, "the chart README lists checkov's skipped checks")
        checkov = shutil.which("checkov", path=str(Path(sys.executable).parent)) or "checkov"
        for name, out, _ in self.each():
            with tempfile.TemporaryDirectory() as d:
                for path, text in out.items():
                    (Path(d) / Path(path).name).write_text(text)
                run = subprocess.run(
                    [checkov, "-d", d, "--framework", "kubernetes", "--compact", "--quiet", "-o", "json"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
            report = yaml.safe_load(run.stdout)
            report = report[0] if isinstance(report, list) else report
            self.assertEqual(report["summary"]["parsing_errors"], 0)
            self.assertGreater(report["summary"]["passed"], 100)
            failed = {c["check_id"] for c in report["results"]["failed_checks"]}
            unexplained = failed - set(skips)
            self.assertEqual(unexplained, set(), f"{name}: checkov fails these and the README does not say why")

    def test_probes_and_services_reach_the_ports_the_configs_listen_on(self):
        for name, _, docs in self.each():
            deployments = [d for _, d in docs if d["kind"] == "Deployment"]
            services = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Service"}
            self.assertEqual({component(d) for d in deployments}, set(BINARIES) - {"ranking-cuda", "embedding-cuda"})
            for dep in deployments:
                pod = dep["spec"]["template"]["spec"]
                (c,) = pod["containers"]
                env = env_map(c)
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                self.assertEqual(ports["grpc"], port_of(env["RANKMESH__SERVER__LISTEN"]))
                self.assertEqual(ports["admin"], port_of(env["RANKMESH__SERVER__ADMIN_LISTEN"]))
                self.assertEqual(ports["probe"], port_of(env["RANKMESH__SERVER__PROBE_LISTEN"]))
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    self.assertEqual(c[probe]["grpc"]["port"], ports["probe"], f"{name} {dep['metadata']['name']} {probe}")
                self.assertEqual(c["readinessProbe"]["grpc"].get("service", ""), "", "readiness follows /ready")
                self.assertEqual(c["livenessProbe"]["grpc"]["service"], "liveness")
                # The kubelet waits out the preStop sleep, the discovery grace and the
                # drain before it kills.
                sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                grace_ms = int(env["RANKMESH__SERVER__SHUTDOWN_GRACE_MS"]) + int(env["RANKMESH__SERVER__DRAIN_TIMEOUT_MS"])
                self.assertGreater(pod["terminationGracePeriodSeconds"], sleep + grace_ms / 1000)
                svc = services[dep["metadata"]["name"]]
                self.assertTrue(selects(svc["spec"]["selector"], pod_labels(dep)))
                for p in svc["spec"]["ports"]:
                    self.assertIn(p["targetPort"], ports)
                # Non-root, read-only, no capabilities.
                sc = c["securityContext"]
                self.assertTrue(sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"])
                self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                self.assertIn("limits", c["resources"])

    def test_every_container_environment_is_accepted_by_its_binary(self):
        # What the init container writes: owner-only secret files (the binaries
        # read them when they check their config).
        secrets = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, secrets)
        for file in ("admin-token", "master-key-local1", "signing-key"):
            (secrets / file).write_text(os.urandom(32).hex())
            (secrets / file).chmod(0o600)
        for name, _, docs in self.each():
            for dep in (d for _, d in docs if d["kind"] == "Deployment"):
                (c,) = dep["spec"]["template"]["spec"]["containers"]
                image = c["image"].rsplit("/", 1)[1].split(":")[0]
                binary = BIN / BINARIES[image]
                if not binary.exists():
                    self.fail(f"{binary} is missing: build the workspace first (scripts/test does)")
                env = {"PATH": "/usr/bin:/bin"}
                for e in c["env"]:
                    if "value" in e:
                        env[e["name"]] = e["value"].replace("/run/rankmesh/secrets", str(secrets))
                    elif "fieldRef" in e.get("valueFrom", {}):
                        # What the kubelet fills in.
                        path = e["valueFrom"]["fieldRef"]["fieldPath"]
                        env[e["name"]] = {"metadata.name": "pod-0", "status.podIP": "10.0.0.7"}[path]
                run = subprocess.run([str(binary), "--print-config"], env=env, capture_output=True, text=True, check=False)
                self.assertEqual(run.returncode, 0, f"{name} {dep['metadata']['name']}: {run.stderr}")
                config = tomllib.loads(run.stdout)
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                self.assertEqual(port_of(config["server"]["listen"]), ports["grpc"])
                self.assertEqual(port_of(config["server"]["probe_listen"]), ports["probe"])
                self.assertTrue(config["etcd"]["endpoints"], "every service registers in etcd")
                self.assertTrue(all(e.startswith("https://") for e in config["etcd"]["endpoints"]))
        # And the check can fail: a key the binary does not know, and a value its
        # checks refuse, stop it with exit 64.
        for bad in ({"RANKMESH__SERVER__PROBE_PORT": "9001"}, {"RANKMESH__SERVER__MAX_CONCURRENT_STREAMS": "0"}):
            run = subprocess.run(
                [str(BIN / "rankmesh-feature"), "--print-config"],
                env={"PATH": "/usr/bin:/bin", **bad},
                capture_output=True,
                text=True,
                check=False,
            )
            self.assertEqual(run.returncode, 64, f"{bad}: {run.stderr}")

    def test_disruption_budgets_and_autoscalers_fit_their_pods(self):
        for name, _, docs in self.each():
            workloads = [d for _, d in docs if d["kind"] in ("Deployment", "StatefulSet")]
            hpas = {d["spec"]["scaleTargetRef"]["name"]: d for _, d in docs if d["kind"] == "HorizontalPodAutoscaler"}
            pdbs = [d for _, d in docs if d["kind"] == "PodDisruptionBudget"]
            self.assertEqual(
                {component(p) for p in pdbs} - {"etcd"},
                {"registry", "feature", "embedding", "ranking"},
            )
            for pdb in pdbs:
                sel = pdb["spec"]["selector"]["matchLabels"]
                (target,) = [w for w in workloads if selects(sel, pod_labels(w))]
                hpa = hpas.get(target["metadata"]["name"])
                replicas = hpa["spec"]["minReplicas"] if hpa else target["spec"]["replicas"]
                if "minAvailable" in pdb["spec"]:
                    # A budget equal to the replicas would block every node drain.
                    self.assertLess(pdb["spec"]["minAvailable"], replicas, f"{name} {pdb['metadata']['name']}")
                else:
                    self.assertGreaterEqual(pdb["spec"]["maxUnavailable"], 1)
            for target, hpa in hpas.items():
                (dep,) = [w for w in workloads if w["metadata"]["name"] == target]
                self.assertEqual(dep["kind"], "Deployment")
                self.assertNotIn("replicas", dep["spec"], "the autoscaler owns the replica count")
                self.assertEqual(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu")
            for w in workloads:
                self.assertTrue(selects(w["spec"]["selector"]["matchLabels"], pod_labels(w)))

    def test_network_policies_allow_exactly_the_mesh_edges(self):
        for name, _, docs in self.each():
            policies = {component(d): d for _, d in docs if d["kind"] == "NetworkPolicy"}
            workloads = [d for _, d in docs if d["kind"] in ("Deployment", "StatefulSet")]
            for comp, callers in EDGES.items():
                policy = policies[comp]
                self.assertTrue(any(selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(w)) for w in workloads))
                grpc_rule = policy["spec"]["ingress"][0]
                allowed = set()
                for peer in grpc_rule["from"]:
                    labels = peer.get("podSelector", {}).get("matchLabels", {})
                    if labels.get("rankmesh-operator") == "true":
                        continue
                    caller = labels.get("app.kubernetes.io/component")
                    if labels.get("rankmesh-client") == "true" or "namespaceSelector" in peer:
                        allowed.add("storefront")
                    elif caller:
                        allowed.add(caller)
                    else:
                        self.fail(f"{name}: {comp} admits an unknown peer {peer}")
                self.assertEqual(allowed, callers, f"{name}: who may call {comp}")
                # The other rule opens only the admin and probe ports.
                ports = {p["port"] for p in policy["spec"]["ingress"][1]["ports"]}
                self.assertEqual(ports, {9000, 9001})
            if "redis" in policies:
                (rule,) = policies["redis"]["spec"]["ingress"]
                callers = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for p in rule["from"]}
                self.assertEqual(callers, {"feature"}, f"{name}: only the feature service reaches Redis")
            if "etcd" in policies:
                clients = policies["etcd"]["spec"]["ingress"][0]
                self.assertEqual([p["port"] for p in clients["ports"]], [2379])
                mesh = [p for p in clients["from"] if p["podSelector"]["matchLabels"].get("rankmesh-mesh") == "true"]
                self.assertTrue(mesh, "every service registers in etcd")
                for w in workloads:
                    if component(w) in EDGES:
                        self.assertTrue(selects(mesh[0]["podSelector"]["matchLabels"], pod_labels(w)), component(w))

    def test_etcd_members_know_each_other(self):
        _, docs = self.rendered["default"]
        (sts,) = [d for _, d in docs if d["kind"] == "StatefulSet" and component(d) == "etcd"]
        name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
        args = dict(a[2:].split("=", 1) for a in sts["spec"]["template"]["spec"]["containers"][0]["args"] if "=" in a)
        members = dict(m.split("=", 1) for m in args["initial-cluster"].split(","))
        self.assertEqual(sorted(members), [f"{name}-{i}" for i in range(replicas)])
        for member, url in members.items():
            self.assertEqual(url, f"https://{member}.{sts['spec']['serviceName']}.{NAMESPACE}.svc:2380")
        self.assertEqual(args["peer-cert-allowed-hostname"], "etcd.rankmesh")
        # The services dial the same members.
        (ranking,) = [d for _, d in docs if d["kind"] == "Deployment" and component(d) == "ranking"]
        endpoints = env_map(ranking["spec"]["template"]["spec"]["containers"][0])["RANKMESH__ETCD__ENDPOINTS"]
        self.assertEqual(
            endpoints.split(","),
            [u.replace(":2380", ":2379") for u in members.values()],
        )

    def test_the_gpu_values_put_ranking_and_embedding_on_gpus(self):
        _, docs = self.rendered["gpu-external-s3"]
        for name, device in (("ranking", "cuda"), ("embedding", "auto")):
            (dep,) = [d for _, d in docs if d["kind"] == "Deployment" and component(d) == name]
            pod = dep["spec"]["template"]["spec"]
            (c,) = pod["containers"]
            self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1, name)
            self.assertIn(f"{name}-cuda", c["image"])
            self.assertEqual(env_map(c)["RANKMESH__ONNX__DEVICE"], device, name)
            self.assertTrue(any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), name)
        _, default = self.rendered["default"]
        for _, d in default:
            if d["kind"] == "Deployment":
                (c,) = d["spec"]["template"]["spec"]["containers"]
                self.assertNotIn("RANKMESH__ONNX__DEVICE", env_map(c), component(d))
                self.assertNotIn("nvidia.com/gpu", c["resources"]["limits"], component(d))
        self.assertFalse([d for _, d in docs if d["kind"] == "StatefulSet"], "etcd and Redis are external")
        (registry,) = [d for _, d in docs if d["kind"] == "Deployment" and component(d) == "registry"]
        self.assertEqual(env_map(registry["spec"]["template"]["spec"]["containers"][0])["RANKMESH__REGISTRY__STORE"], "s3")


if __name__ == "__main__":
    unittest.main()
