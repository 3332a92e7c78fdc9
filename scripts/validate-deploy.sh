#!/usr/bin/env bash
# Offline validation of the deployment files (no cluster, no Docker engine needed).
#
#   k8s/*.yaml          kubernetes-validate --strict against the Kubernetes 1.30 schemas.
#                       It has no schema for CRDs: for ServiceMonitor/PrometheusRule (and
#                       for a misspelled apiVersion or kind!) it prints "Couldn't find
#                       schema" and exits 0. So that warning counts as a failure here,
#                       and the two CRD kinds are checked with check-jsonschema against
#                       k8s/schemas/*.schema.json instead; every PrometheusRule expr is
#                       parsed as PromQL (promql-parser). kustomization.yaml must list
#                       exactly the manifests.
#   k8s/redis-cluster/  the managed Redis Cluster component: k8s/ rendered with it
#                       enabled (`kubectl kustomize`), every document validated as
#                       above, and the rendering must be cluster mode with seed nodes
#                       and without the demo Redis.
#   docker-compose.yml  `docker-compose config -q` and the compose-spec JSON schema.
#   nginx/              `nginx -t` on the compose config (compose's node hostnames mapped
#                       to 127.0.0.1: they only resolve inside compose), its upstream
#                       matching compose's nodes, and WebSocket timeouts above the ping.
#   Dockerfile          what compose and k8s rely on: uid 10001, port 8000, healthcheck.
#
# Each check also runs on a deliberately broken copy, which must be rejected for the
# expected reason: a checker that accepts anything would otherwise pass in silence.
#
# Usage: bash scripts/validate-deploy.sh   (installs missing tools; exit 1 on any failure)
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.30.0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failures=0

ok() { printf '  ok    %s\n' "$*"; }
bad() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
indent() { sed 's/^/        /'; }

# expect_pass DESC CMD...: CMD must succeed (its output is shown only if it does not).
expect_pass() {
  local desc=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$desc"; else bad "$desc"; printf '%s\n' "$out" | indent; fi
}

# expect_reject DESC PATTERN CMD...: CMD, run on a broken copy, must fail with output
# matching PATTERN (extended regex), proving it failed for the intended reason.
expect_reject() {
  local desc=$1 pattern=$2 out
  shift 2
  if out=$("$@" 2>&1); then
    bad "$desc: the broken copy was ACCEPTED"
    printf '%s\n' "$out" | indent
  elif printf '%s\n' "$out" | grep -qE -- "$pattern"; then
    ok "$desc: rejected (…$(printf '%s\n' "$out" | grep -m1 -oE -- ".{0,40}($pattern).{0,30}")…)"
  else
    bad "$desc: rejected, but not for /$pattern/"
    printf '%s\n' "$out" | indent
  fi
}

# --- tools ----------------------------------------------------------------------

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  # --no-install-recommends: docker-compose would otherwise pull in a Docker engine.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

echo "== tools"
if ! python3 -c 'import kubernetes_validate, check_jsonschema, promql_parser, yaml' 2>/dev/null; then
  echo "  installing kubernetes-validate check-jsonschema promql-parser (pip)"
  python3 -m pip install --quiet --disable-pip-version-check \
    'kubernetes-validate>=1.30' check-jsonschema promql-parser
fi
# Through python3 -m: pip's console scripts may not be on PATH (pyenv shims, --user).
kv() { python3 -m kubernetes_validate "$@"; }
cj() { python3 -m check_jsonschema "$@"; }
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "  installing nginx (apt)"
  apt_install nginx
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v docker-compose >/dev/null; then
  echo "  installing docker-compose (apt)"
  apt_install docker-compose
fi
echo "  kubernetes-validate $(kv --version), $(cj --version | grep -o '[0-9.]*$' | sed 's/^/check-jsonschema /')," \
  "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(docker-compose version --short)"

# --- checks: each takes the file (or directory) to check, so broken copies can be fed

# One manifest: built-in kinds through kubernetes-validate, the two CRD kinds through
# their JSON schema (and PromQL for rules). Mixed files are not supported.
check_manifest() {
  local file=$1 kinds out
  kinds=$(python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
print(" ".join(sorted({str(d.get("kind")) for d in docs})) or "none")' "$file")
  case "$kinds" in
    ServiceMonitor) cj --schemafile k8s/schemas/servicemonitor.schema.json "$file" ;;
    PrometheusRule)
      # Both, whatever the first says (this runs where `set -e` does not apply).
      local rc=0
      cj --schemafile k8s/schemas/prometheusrule.schema.json "$file" || rc=1
      check_promql "$file" || rc=1
      return "$rc"
      ;;
    *ServiceMonitor* | *PrometheusRule*) echo "error: $file mixes CRDs with other kinds ($kinds)"; return 1 ;;
    *)
      out=$(kv --strict -k "$K8S_VERSION" "$file" 2>&1) || { echo "$out"; return 1; }
      echo "$out"
      if grep -q "Couldn't find schema" <<<"$out"; then
        echo "error: no schema, so not validated (misspelled apiVersion or kind?)"
        return 1
      fi
      ;;
  esac
}

check_promql() {
  python3 - "$1" <<'EOF'
import sys, yaml, promql_parser
doc = yaml.safe_load(open(sys.argv[1]))
errors = 0
for group in doc["spec"]["groups"]:
    for rule in group["rules"]:
        name = rule.get("alert") or rule.get("record")
        try:
            promql_parser.parse(str(rule["expr"]))
        except Exception as e:
            print(f"error: {name}: PromQL does not parse: {e}")
            errors += 1
sys.exit(1 if errors else 0)
EOF
}

# kustomization.yaml must list every manifest of its directory, and only existing ones.
check_kustomization() {
  python3 - "$1" <<'EOF'
import pathlib, sys, yaml
d = pathlib.Path(sys.argv[1])
listed = set(yaml.safe_load((d / "kustomization.yaml").read_text())["resources"])
present = {p.name for p in d.glob("*.yaml")} - {"kustomization.yaml"}
for name in sorted(listed - present):
    print(f"error: kustomization lists {name}, which does not exist")
for name in sorted(present - listed):
    print(f"error: {name} is not listed in kustomization.yaml")
sys.exit(1 if listed != present else 0)
EOF
}

check_compose_cli() { (cd "$(dirname "$1")" && docker-compose -f "$(basename "$1")" config -q); }
check_compose_schema() { cj --builtin-schema vendor.compose-spec "$1"; }

# nginx -t on a copy of the nginx/ directory DIR (compose's hostnames → 127.0.0.1).
check_nginx() {
  local dir=$1 copy
  copy=$(mktemp -d "$WORK/nginx.XXXX")
  cp "$dir"/*.conf "$copy"/
  sed -i -E 's/server +node[0-9]+:8000;/server 127.0.0.1:8000;/' "$copy/nginx.conf"
  "$NGINX" -t -q -p "$copy/" -c "$copy/nginx.conf" -e stderr
}

# nginx.conf's upstream must be compose's node services, listening where compose publishes.
check_nginx_matches_compose() {
  python3 - "$1" "$2" <<'EOF'
import re, sys, yaml
conf, compose = open(sys.argv[1]).read(), yaml.safe_load(open(sys.argv[2]))
upstream = set(re.findall(r"^\s*server\s+([\w.-]+):8000;", conf, re.M))
nodes = {name for name, svc in compose["services"].items() if "build" in svc}
listen = re.findall(r"^\s*listen\s+(\d+);", conf, re.M)
published = [str(p).split(":")[-1] for p in compose["services"]["nginx"]["ports"]]
errors = []
if upstream != nodes:
    errors.append(f"upstream {sorted(upstream)} != compose nodes {sorted(nodes)}")
# Nodes are stateless: plain round robin, no hashing or stickiness (the e2e test
# tests/nginx.rs writes its own upstream block, so this is where it is guarded).
block = re.search(r"upstream\s+signal_nodes\s*\{([^}]*)\}", conf)
sticky = re.findall(r"^\s*(ip_hash|hash|sticky|least_conn|random)\b", block.group(1) if block else "", re.M)
if not block or sticky:
    errors.append(f"upstream signal_nodes must be plain round robin, found {sticky or 'no upstream'}")
if listen != published:
    errors.append(f"nginx listens on {listen}, compose publishes container port {published}")
for e in errors:
    print("error:", e)
sys.exit(1 if errors else 0)
EOF
}

# An idle WebSocket carries a ping every 20 s (PING_INTERVAL_SECONDS default): the
# proxies must wait at least 3 periods before calling the upstream dead.
check_timeouts() {
  python3 - "$1" "$2" <<'EOF'
import re, sys, yaml
locations, ingress = open(sys.argv[1]).read(), yaml.safe_load(open(sys.argv[2]))
values = {f"nginx {k}": v for k, v in re.findall(r"^\s*(proxy_(?:read|send)_timeout)\s+(\d+)s?;", locations, re.M)}
notes = ingress["metadata"]["annotations"]
for key in ("proxy-read-timeout", "proxy-send-timeout"):
    values[f"ingress {key}"] = notes.get(f"nginx.ingress.kubernetes.io/{key}", "0")
low = {k: v for k, v in values.items() if int(v) < 60}
if len(values) != 4 or low:
    print(f"error: timeouts must be set and >= 60 s: {values}")
    sys.exit(1)
EOF
}

# Tokens and room passwords travel in WebSocket query strings: every access_log in the
# nginx/ directory DIR must be `off` or use signal_redacted, whose format must not log
# the query ($request, $request_uri, $args, $query_string, $arg_*).
check_access_log() {
  python3 - "$1" <<'EOF'
import pathlib, re, sys
text = "\n".join(p.read_text() for p in sorted(pathlib.Path(sys.argv[1]).glob("*.conf")))
text = re.sub(r"#[^\n]*", "", text)
errors = []
fmt = re.search(r"log_format\s+signal_redacted\s+([^;]*);", text)
if not fmt:
    errors.append("no log_format signal_redacted")
else:
    leaks = re.findall(r"\$(?:request|request_uri|args|query_string|arg_\w+)\b", fmt.group(1))
    if leaks:
        errors.append(f"log_format signal_redacted logs the query string: {sorted(set(leaks))}")
for directive in re.findall(r"\baccess_log\s+([^;]*);", text):
    words = directive.split()
    if words != ["off"] and (len(words) < 2 or words[1] != "signal_redacted"):
        errors.append(f"access_log {directive}: must be off or use signal_redacted (no query strings)")
for e in errors:
    print(f"error: {e}")
sys.exit(1 if errors else 0)
EOF
}

check_dockerfile() {
  python3 - "$1" "$2" <<'EOF'
import re, sys
text, ignore = open(sys.argv[1]).read(), open(sys.argv[2]).read().split()
need = {
    "a build stage": r"^FROM\s+\S+\s+AS\s+\w+",
    "cargo build --release --locked": r"cargo build --release --locked",
    "USER 10001 (k8s runAsUser)": r"^USER\s+10001(:10001)?\s*$",
    "EXPOSE 8000": r"^EXPOSE\s+8000\s*$",
    "HEALTHCHECK via signal-node healthcheck": r"^HEALTHCHECK[\s\S]*?signal-node\",\s*\"healthcheck\"",
    "ENTRYPOINT the binary": r"^ENTRYPOINT\s+\[\"/usr/local/bin/signal-node\"\]",
}
missing = [what for what, rx in need.items() if not re.search(rx, text, re.M)]
if "target/" not in ignore:
    missing.append(".dockerignore excluding target/")
for what in missing:
    print("error: missing", what)
sys.exit(1 if missing else 0)
EOF
}

# broken COPY_NAME SRC SED_EXPR: a copy of SRC with one deliberate mistake.
broken() {
  local dest="$WORK/broken/$1"
  mkdir -p "$(dirname "$dest")"
  sed -E "$3" "$2" >"$dest"
  if cmp -s "$2" "$dest"; then echo "validate-deploy: sed '$3' changed nothing in $2" >&2; exit 1; fi
  echo "$dest"
}

# --- Kubernetes -------------------------------------------------------------------

echo "== k8s/ (kubernetes-validate --strict -k $K8S_VERSION; CRDs: check-jsonschema + PromQL)"
expect_pass "k8s/kustomization.yaml lists exactly the manifests" check_kustomization k8s
for file in k8s/*.yaml; do
  [ "$file" = k8s/kustomization.yaml ] && continue
  expect_pass "$file" check_manifest "$file"
done

echo "== k8s/: broken copies must be rejected"
expect_reject "Deployment with a misspelled key (readinesProbe)" "readinesProbe' was unexpected" \
  check_manifest "$(broken deployment-key.yaml k8s/deployment.yaml 's/readinessProbe:/readinesProbe:/')"
expect_reject "Deployment with a wrong apiVersion (apps/v2)" "no schema, so not validated" \
  check_manifest "$(broken deployment-api.yaml k8s/deployment.yaml 's#^apiVersion: apps/v1#apiVersion: apps/v2#')"
expect_reject "ServiceMonitor with a misspelled key (scrapeTimout)" "scrapeTimout' was unexpected" \
  check_manifest "$(broken servicemonitor.yaml k8s/servicemonitor.yaml 's/scrapeTimeout:/scrapeTimout:/')"
expect_reject "PrometheusRule with a misspelled key (fro)" "fro' was unexpected" \
  check_manifest "$(broken prometheusrule-key.yaml k8s/prometheusrule.yaml '0,/ for: 1m/s// fro: 1m/')"
expect_reject "PrometheusRule with an expr that is not PromQL" "PromQL does not parse" \
  check_manifest "$(broken prometheusrule-expr.yaml k8s/prometheusrule.yaml 's/(signal_redis_up\{job="signal-node"\}) == 0/\1 == /')"
mkdir -p "$WORK/broken/k8s" && cp k8s/*.yaml "$WORK/broken/k8s/" && rm "$WORK/broken/k8s/pdb.yaml"
expect_reject "kustomization.yaml listing a missing file" "lists pdb.yaml, which does not exist" \
  check_kustomization "$WORK/broken/k8s"

# k8s/ rendered with the redis-cluster component enabled (a copy of k8s/ whose
# kustomization.yaml has `components` uncommented): each document validated, and
# the component must do what it is for.
check_cluster_component() {
  local base=$1 out="$WORK/rendered-$RANDOM"
  mkdir -p "$out"
  local copy="$out/k8s"
  cp -r "$base" "$copy"
  sed -i -E 's/^# components:/components:/; s/^#   - redis-cluster/  - redis-cluster/' "$copy/kustomization.yaml"
  if ! command -v kubectl >/dev/null 2>&1; then
    echo "error: kubectl (for kubectl kustomize) is not installed"
    return 1
  fi
  kubectl kustomize "$copy" >"$out/all.yaml" || return 1
  python3 - "$out" <<'PY' || return 1
import pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
docs = [d for d in yaml.safe_load_all((out / "all.yaml").read_text()) if d]
for i, doc in enumerate(docs):
    (out / f"doc-{i:02}.yaml").write_text(yaml.safe_dump(doc))
def named(kind, name):
    return [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
errors = []
config = named("ConfigMap", "signal-node-config")
if not config or config[0].get("data", {}).get("REDIS_MODE") != "cluster":
    errors.append("REDIS_MODE is not cluster")
secret = named("Secret", "signal-node-secrets")
if not secret or "," not in secret[0].get("stringData", {}).get("REDIS_URL", ""):
    errors.append("REDIS_URL does not list seed nodes")
if any(d["metadata"]["name"] == "signal-redis" for d in docs):
    errors.append("the demo Redis (signal-redis) is still rendered")
for e in errors:
    print("error:", e)
sys.exit(1 if errors else 0)
PY
  local doc
  for doc in "$out"/doc-*.yaml; do check_manifest "$doc" >/dev/null || { check_manifest "$doc"; return 1; }; done
}

echo "== k8s/redis-cluster (component rendered with kubectl kustomize)"
expect_pass "k8s/ with the redis-cluster component" check_cluster_component k8s
mkdir -p "$WORK/broken/k8s-component" && cp -r k8s "$WORK/broken/k8s-component/"
sed -i 's/REDIS_MODE: cluster/REDIS_MODE: single/' "$WORK/broken/k8s-component/k8s/redis-cluster/cluster-mode.yaml"
expect_reject "the component without cluster mode" "REDIS_MODE is not cluster" \
  check_cluster_component "$WORK/broken/k8s-component/k8s"

# --- docker-compose ------------------------------------------------------------------

echo "== docker-compose.yml (docker-compose config -q; check-jsonschema vendor.compose-spec)"
expect_pass "docker-compose config -q" check_compose_cli docker-compose.yml
expect_pass "compose-spec schema" check_compose_schema docker-compose.yml
mkdir -p "$WORK/broken/compose"
bad_compose=$(broken compose/docker-compose.yml docker-compose.yml '0,/^    environment:/s//    enviroment:/')
expect_reject "compose with a misspelled key, docker-compose" "Unsupported config option.*enviroment" \
  check_compose_cli "$bad_compose"
expect_reject "compose with a misspelled key, compose-spec" "'enviroment' was unexpected" \
  check_compose_schema "$bad_compose"

# --- nginx ----------------------------------------------------------------------------

echo "== nginx/ (nginx -t; upstream vs compose; timeouts vs ping interval; access log)"
expect_pass "nginx -t nginx/nginx.conf (+ signal-http.conf, signal-locations.conf)" check_nginx nginx
expect_pass "nginx upstream = compose nodes, plain round robin; listen = published port" \
  check_nginx_matches_compose nginx/nginx.conf docker-compose.yml
expect_pass "proxy/ingress read+send timeouts >= 60 s (3 x 20 s ping)" \
  check_timeouts nginx/signal-locations.conf k8s/ingress.yaml
expect_pass "access logs without query strings (tokens, passwords)" check_access_log nginx

echo "== nginx/: broken copies must be rejected"
mkdir -p "$WORK/broken/nginx" && cp nginx/*.conf "$WORK/broken/nginx/"
broken nginx/signal-locations.conf nginx/signal-locations.conf 's/proxy_read_timeout 75s;/proxy_read_timout 75s;/' >/dev/null
expect_reject "nginx config with a misspelled directive" "unknown directive \"proxy_read_timout\"" \
  check_nginx "$WORK/broken/nginx"
expect_reject "nginx upstream missing a compose node" "upstream .* != compose nodes" \
  check_nginx_matches_compose "$(broken nginx-upstream.conf nginx/nginx.conf '/server node3:8000;/d')" docker-compose.yml
expect_reject "nginx upstream with sticky sessions (ip_hash)" "must be plain round robin" \
  check_nginx_matches_compose "$(broken nginx-sticky.conf nginx/nginx.conf 's/upstream signal_nodes \{/&\n        ip_hash;/')" docker-compose.yml
expect_reject "proxy_read_timeout below 60 s" "timeouts must be set and >= 60" \
  check_timeouts "$(broken locations-timeout.conf nginx/signal-locations.conf 's/proxy_read_timeout 75s;/proxy_read_timeout 30s;/')" k8s/ingress.yaml
mkdir -p "$WORK/broken/nginx-log" && cp nginx/*.conf "$WORK/broken/nginx-log/"
broken nginx-log/nginx.conf nginx/nginx.conf 's|access_log /dev/stdout signal_redacted;|access_log /dev/stdout;|' >/dev/null
expect_reject "access_log in the default format (logs ?token=)" "must be off or use signal_redacted" \
  check_access_log "$WORK/broken/nginx-log"
mkdir -p "$WORK/broken/nginx-fmt" && cp nginx/*.conf "$WORK/broken/nginx-fmt/"
broken nginx-fmt/signal-http.conf nginx/signal-http.conf 's|\$request_method \$uri \$server_protocol|$request|' >/dev/null
expect_reject "signal_redacted logging \$request" "logs the query string" \
  check_access_log "$WORK/broken/nginx-fmt"

# --- Dockerfile -------------------------------------------------------------------------

echo "== Dockerfile (no Docker engine here: static checks only)"
expect_pass "Dockerfile and .dockerignore" check_dockerfile Dockerfile .dockerignore
expect_reject "Dockerfile running as root" "missing USER 10001" \
  check_dockerfile "$(broken Dockerfile Dockerfile 's/^USER 10001:10001/USER root/')" .dockerignore

echo
if [ "$failures" -ne 0 ]; then
  echo "validate-deploy: $failures check(s) FAILED"
  exit 1
fi
echo "validate-deploy: all checks passed"
