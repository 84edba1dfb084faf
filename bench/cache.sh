#!/usr/bin/env bash
# Benchmark: a build on an empty machine that imports the cache another
# machine exported to a registry, estiba against `docker build`
# (BuildKit, inline cache), in one run, with a docker-registry this script
# starts on 127.0.0.1:<free port>.
#
# Two workloads, both `FROM bench-base` (the same busybox rootfs, imported
# into both builders, never removed):
#   steps   50 × `RUN echo $i > /f$i` (bench/run-steps.sh's steps file)
#   copy    `COPY . /data` of 20,000 small files + 500 MB
#           (bench/copy-context.sh's context)
# Each run, for each workload:
#   estiba A   a fresh store with only the base imported, cold build with
#              --cache-to type=registry,ref=REGISTRY/estiba-W-R:cache,mode=max
#   estiba B   another fresh store with only the base, the same context
#              with --cache-from type=registry,ref=(A's ref)
#   docker A   after `docker rmi` of every image but the base and `builder
#              prune -af`, a cold build with BUILDKIT_INLINE_CACHE=1,
#              tagged REGISTRY/docker-W-R:bench
#   push       `docker push` of that tag (a loopback registry is insecure
#              to dockerd by default: plain http)
#   docker B   rmi and prune again, then the build with --cache-from (tag)
# Each run pushes to repositories of its own, so no run finds the blobs of
# an earlier one. Each figure is the median and range of BENCH_REPEAT runs;
# the table gives two ratios of medians and MET or MISSED per goal:
#   estiba B / estiba A (cold, with the export)   goal <= 0.15
#   estiba B / docker B                            goal <= 0.5
# and how many steps each B found in the cache (plain progress output:
# `#N CACHED`). A missed goal is printed, not an error: the script exits
# non-zero only when something fails.
#
# Usage: bench/cache.sh [--small] [--keep]
#   --small   the copy workload with 2,000 files + 50 MB
#   --keep    keep the work directory (contexts, the last store, logs;
#             printed at the end)
# Environment (defaults in brackets, --small ones second):
#   BENCH_STEPS [50]            RUN steps of the steps workload
#   BENCH_FILES [20000|2000]    small files of the copy workload
#   BENCH_BIG_MB [500|50]       MiB of large files of the copy workload
#   BENCH_REPEAT [3]            runs (median and range)
#   BENCH_TMPDIR [/tmp]         where the contexts, stores and registry go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root, Debian's docker.io (/usr/sbin/dockerd, /usr/bin/docker) and
# docker-registry, busybox-static, GNU time, curl and python3
# (scripts/test-deps installs the first three). dockerd is started
# privately, exactly as DESIGN.md requires (no bridge, no iptables, no
# network), and it and the registry are stopped by their PIDs on exit,
# failure or Ctrl-C. Neither the fresh stores, the imports nor docker's
# pruning are timed; each timed command starts after a `sync`.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_small_keep "$@"

STEPS=${BENCH_STEPS:-50}
copy_workload_size

# Goals: estiba B against estiba's cold A, and against docker's B.
GOAL_B_OVER_A=0.15
GOAL_B_OVER_DOCKER=0.5

check_whole_numbers STEPS FILES BIG_MB REPEAT
[ "$STEPS" -ge 1 ] || die "BENCH_STEPS must be at least 1"
[ "$FILES" -ge 1 ] || die "BENCH_FILES must be at least 1"
[ "$REPEAT" -ge 1 ] || die "BENCH_REPEAT must be at least 1"

check_host
command -v python3 >/dev/null || die "python3 is needed to generate the context"
build_estiba_if_missing

make_work_dirs
STEPS_CTX=$WORK/steps
COPY_CTX=$WORK/ctx
KEPT="work directory $WORK"

echo "generating the contexts: $STEPS RUN steps; $FILES files of 1-4 KiB + $BIG_MB MiB in 5 files"
write_steps_dockerfile "$STEPS_CTX" "$STEPS"
write_copy_context "$COPY_CTX" "$FILES" 1024 4096 "$BIG_MB" 5

make_base_image
start_registry "$WORK/registry"
start_dockerd

# estiba with plain progress, so that its log shows which steps were cached.
ESTIBA_PLAIN=("$ESTIBA" --root "$STORE" build -t bench --progress plain)

# Removes every image but the base from dockerd, then its build cache.
docker_all_but_base() {
  local base id
  base=$("${DOCKER[@]}" image inspect --format '{{.Id}}' bench-base)
  for id in $("${DOCKER[@]}" image ls -aq --no-trunc | sort -u); do
    [ "$id" = "$base" ] || "${DOCKER[@]}" rmi -f "$id" >/dev/null
  done
  "${DOCKER[@]}" builder prune -af >/dev/null
}

# cached_steps LOG: prints how many steps the plain progress in LOG reports
# as cached (both builders print `#N CACHED`).
cached_steps() {
  grep -c '^#[0-9]* CACHED' "$1" || true
}

# Results per workload and figure: the seconds of each run, space-separated.
declare -A SECS_OF
# Cached steps of each B run: "estiba docker", per workload.
declare -A CACHED_OF

# run_workload NAME CONTEXT STEPS: one run of every figure, REPEAT times.
run_workload() {
  local w=$1 ctx=$2 steps=$3 r ref tag e_cached d_cached
  echo "$w: $steps step(s) after FROM, $REPEAT run(s)"
  for r in $(seq "$REPEAT"); do
    ref=$REGISTRY/estiba-$w-$r:cache
    tag=$REGISTRY/docker-$w-$r:bench

    fresh_estiba_store
    timed "estiba-$w-A-$r" "${ESTIBA_PLAIN[@]}" \
      --cache-to "type=registry,ref=$ref,mode=max" "$ctx"
    SECS_OF[$w estiba-A]+=" $SECS"
    fresh_estiba_store
    timed "estiba-$w-B-$r" "${ESTIBA_PLAIN[@]}" \
      --cache-from "type=registry,ref=$ref" "$ctx"
    SECS_OF[$w estiba-B]+=" $SECS"
    e_cached=$(cached_steps "$LOG/estiba-$w-B-$r.log")

    docker_all_but_base
    timed "docker-$w-A-$r" "${DOCKER_BUILD[@]}" --build-arg BUILDKIT_INLINE_CACHE=1 \
      -t "$tag" "$ctx"
    SECS_OF[$w docker-A]+=" $SECS"
    timed "docker-$w-push-$r" "${DOCKER[@]}" push "$tag"
    SECS_OF[$w docker-push]+=" $SECS"
    docker_all_but_base
    timed "docker-$w-B-$r" "${DOCKER_BUILD[@]}" --cache-from "$tag" "$ctx"
    SECS_OF[$w docker-B]+=" $SECS"
    d_cached=$(cached_steps "$LOG/docker-$w-B-$r.log")
    CACHED_OF[$w]+=" $e_cached/$d_cached"

    printf '  %-5s run %d: estiba A %7.3f  B %7.3f (%s/%s cached)   docker A %7.3f  push %7.3f  B %7.3f (%s/%s cached)\n' \
      "$w" "$r" "$(last "${SECS_OF[$w estiba-A]}")" "$(last "${SECS_OF[$w estiba-B]}")" \
      "$e_cached" "$steps" "$(last "${SECS_OF[$w docker-A]}")" "$(last "${SECS_OF[$w docker-push]}")" \
      "$(last "${SECS_OF[$w docker-B]}")" "$d_cached" "$steps"
  done
}

# last WORDS: the last of the space-separated WORDS.
last() {
  local -a words
  read -ra words <<<"$1"
  echo "${words[-1]}"
}

# verdict RATIO GOAL: sets VERDICT, MET or MISSED (counted in MISSES).
verdict() {
  if awk -v r="$1" -v g="$2" 'BEGIN { exit !(r != "inf" && r + 0 <= g + 0) }'; then
    VERDICT=MET
  else
    MISSES=$((MISSES + 1))
    VERDICT=MISSED
  fi
}

# ratio A B: A / B, three decimals ("inf" when B took no time).
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "inf" }'
}

START=$(date +%s)
versions
machine
echo "registry: docker-registry $("/usr/bin/docker-registry" --version | awk '{ print $NF }') on $REGISTRY"
run_workload steps "$STEPS_CTX" "$STEPS"
run_workload copy "$COPY_CTX" 1

# --- the table -------------------------------------------------------------

echo
echo "figures: median (range) of $REPEAT run(s), wall-clock seconds"
printf '%-8s %-24s %-24s %-24s %-24s %-24s\n' \
  workload "estiba A (cache-to)" "estiba B (cache-from)" "docker A (inline)" "docker push" "docker B (cache-from)"
for w in steps copy; do
  row=()
  for f in estiba-A estiba-B docker-A docker-push docker-B; do
    # shellcheck disable=SC2086 # the runs' seconds are words
    row+=("$(spread ${SECS_OF[$w $f]})")
  done
  printf '%-8s %-24s %-24s %-24s %-24s %-24s\n' "$w" "${row[@]}"
done
echo
echo "goals (ratios of medians):"
printf '%-8s %-28s %8s %6s %-7s %-28s %8s %6s %-7s %s\n' \
  workload "estiba B / estiba A cold" ratio goal "" "estiba B / docker B" ratio goal "" "cached estiba/docker per run"
for w in steps copy; do
  # shellcheck disable=SC2086 # the runs' seconds are words
  {
    ea=$(median ${SECS_OF[$w estiba-A]})
    eb=$(median ${SECS_OF[$w estiba-B]})
    db=$(median ${SECS_OF[$w docker-B]})
  }
  r1=$(ratio "$eb" "$ea")
  verdict "$r1" "$GOAL_B_OVER_A"
  v1=$VERDICT
  r2=$(ratio "$eb" "$db")
  verdict "$r2" "$GOAL_B_OVER_DOCKER"
  v2=$VERDICT
  printf '%-8s %-28s %8s %6s %-7s %-28s %8s %6s %-7s %s\n' \
    "$w" "$eb / $ea" "${r1}x" "${GOAL_B_OVER_A}x" "$v1" "$eb / $db" "${r2}x" "${GOAL_B_OVER_DOCKER}x" "$v2" "${CACHED_OF[$w]# }"
done
echo "(load average at the end: $(load_average); whole benchmark $(($(date +%s) - START)) s)"
report_misses
exit 0
