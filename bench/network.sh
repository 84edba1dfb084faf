#!/usr/bin/env bash
# Benchmark: what the default RUN network (a private namespace with pasta)
# costs against the host's network, on the same estiba binary in one run.
#
#   steps   BENCH_STEPS × `RUN true` on a busybox base: the fixed cost per
#           step (namespace, pasta start, its default route)
#   npm     `RUN npm install` of express and its dependencies from the npm
#           registry, on a Node.js base made from this machine's node
#           (scripts/node-base), npm's cache empty each time
#   apt     `RUN apt-get update && apt-get install -y curl` on a Debian
#           bookworm minbase made with debootstrap (mirror from the apt
#           sources)
# Every build is cold (`--no-cache`); each scenario runs BENCH_REPEAT times
# per network, the networks interleaved, and prints the median and range and
# the ratio default/host. Figures only: nothing here is a target.
#
# Usage: bench/network.sh [--keep]
#   --keep    keep the contexts and estiba's store (printed at the end)
# Environment (defaults in brackets):
#   BENCH_STEPS [20]          RUN steps of the steps scenario
#   BENCH_REPEAT [3]          runs per scenario and network
#   BENCH_ONLY [steps npm apt] the scenarios to run
#   BENCH_TMPDIR [/tmp]       where the contexts and estiba's store go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root, pasta (Debian's passt), busybox-static, node and npm, GNU time
# and debootstrap (scripts/test-deps and scripts/bench-deps install them), and
# the package registries (npm, Debian's mirror): unlike the tests, this
# measures real downloads. The Debian minbase is made once and kept in
# BENCH_TMPDIR/estiba-bench-cache.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_keep_only "$@"
STEPS=${BENCH_STEPS:-20}
ONLY=${BENCH_ONLY:-steps npm apt}
check_whole_numbers STEPS REPEAT

[ "$(id -u)" = 0 ] || die "estiba's RUN steps need root"
command -v pasta >/dev/null || die "no pasta: install Debian's passt (scripts/test-deps)"
[ -x /usr/bin/time ] || die "no /usr/bin/time: install Debian's time package"
build_estiba_if_missing
make_work_dirs
KEPT="contexts in $WORK"
make_base_image
fresh_estiba_store

# scenario_net NAME CONTEXT: REPEAT cold builds of CONTEXT on each network.
scenario_net() {
  local name=$1 ctx=$2 r net
  local -a host=() default=()
  for r in $(seq "$REPEAT"); do
    for net in host default; do
      timed "$name-$net-$r" "$ESTIBA" --root "$STORE" build --progress plain --no-cache \
        --network "$net" -t "bench-$name" "$ctx"
      if grep -q 'no outbound network' "$LOG/$name-$net-$r.log"; then
        die "$name on the $net network ran without pasta (see $LOG/$name-$net-$r.log)"
      fi
      if [ "$net" = host ]; then host+=("$SECS"); else default+=("$SECS"); fi
      printf '  %-6s run %d  %-7s %7.3f s\n' "$name" "$r" "$net" "$SECS"
    done
  done
  local hm dm
  hm=$(median "${host[@]}")
  dm=$(median "${default[@]}")
  printf '%-6s host %7.3f s (%s–%s)   default %7.3f s (%s–%s)   default/host %s\n' \
    "$name" "$hm" "$(printf '%s\n' "${host[@]}" | sort -g | head -n1)" "$(max "${host[@]}")" \
    "$dm" "$(printf '%s\n' "${default[@]}" | sort -g | head -n1)" "$(max "${default[@]}")" \
    "$(awk -v d="$dm" -v h="$hm" 'BEGIN { printf "%.2fx", d / h }')" >>"$WORK/table"
}

echo "estiba: $("$ESTIBA" --version)   pasta: $(pasta --version 2>/dev/null | head -n1)"
machine
: >"$WORK/table"

for only in $ONLY; do
  case $only in
    steps)
      mkdir -p "$WORK/steps"
      {
        echo "FROM bench-base"
        for i in $(seq "$STEPS"); do echo "RUN echo $i > /f$i"; done
      } >"$WORK/steps/Dockerfile"
      scenario_net steps "$WORK/steps"
      ;;
    npm)
      command -v node >/dev/null || die "no node: install nodejs and npm (scripts/test-deps)"
      "$REPO/scripts/node-base" "$ESTIBA" "$STORE" bench-node >"$LOG/node-base.log" 2>&1 ||
        { tail -n 20 "$LOG/node-base.log" >&2; die "scripts/node-base failed"; }
      mkdir -p "$WORK/npm"
      # The host's CA bundle, for a network whose TLS goes through a proxy.
      cp /etc/ssl/certs/ca-certificates.crt "$WORK/npm/ca.crt"
      cat >"$WORK/npm/package.json" <<'EOF'
{ "name": "bench", "version": "1.0.0", "dependencies": { "express": "4.19.2" } }
EOF
      cat >"$WORK/npm/Dockerfile" <<'EOF'
FROM bench-node
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca.crt
COPY ca.crt /etc/ssl/certs/ca.crt
WORKDIR /app
COPY package.json .
RUN npm install --offline=false --no-audit --no-fund --cache /tmp/npm-cache && ls node_modules | wc -l
EOF
      scenario_net npm "$WORK/npm"
      ;;
    apt)
      debian_minbase_tar
      "$ESTIBA" --root "$STORE" import "$DEBIAN_TAR" bench-debian >/dev/null
      mkdir -p "$WORK/apt"
      cat >"$WORK/apt/Dockerfile" <<'EOF'
FROM bench-debian
RUN apt-get update && apt-get install -y --no-install-recommends curl
EOF
      scenario_net apt "$WORK/apt"
      ;;
    *) die "unknown scenario $only (steps, npm, apt)" ;;
  esac
done

echo
echo "median (range) of $REPEAT cold builds per network:"
cat "$WORK/table"
