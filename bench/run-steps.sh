#!/usr/bin/env bash
# Benchmark: `docker build` (BuildKit) against `estiba build` on RUN-heavy
# Dockerfiles, in one run, and print the ratios.
#
# Both Dockerfiles start `FROM bench-base`, the same busybox rootfs imported
# into both builders:
#   steps    50 × `RUN echo $i > /f$i`: what one RUN step costs
#   stages   two independent stages running the same CPU-bound shell loop,
#            then a final stage that copies both results (COPY --from):
#            whether independent stages run at the same time
# Four scenarios are timed for both builders: the steps file cold and as a
# no-op rebuild, the stages file cold, and one of its stages alone (--target)
# cold, so that two stages can be set against one. Speed targets live here,
# never in the tests: a miss is printed loudly but the script still exits 0.
#
# Usage: bench/run-steps.sh [--keep]
#   --keep    keep the contexts and estiba's store (printed at the end)
# Environment (defaults in brackets):
#   BENCH_STEPS [50]          RUN steps in the steps Dockerfile
#   BENCH_LOOP [2500000]      iterations of each stage's loop (~4 s alone on the 2-core VM)
#   BENCH_REPEAT [3]          runs of every scenario (median)
#   BENCH_TMPDIR [/tmp]       where the contexts and estiba's store go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root, Debian's docker.io (/usr/sbin/dockerd, /usr/bin/docker),
# busybox-static and GNU time (scripts/test-deps installs the first two).
# dockerd is started privately, exactly as DESIGN.md requires (no bridge, no
# iptables, no network), and stopped by its PID on exit, failure or Ctrl-C.
# A cold run starts from empty caches: docker after `builder prune -af` and
# `rmi`, estiba with a fresh store and the base imported again; neither the
# pruning nor the import is timed. Each timed run starts after a `sync`.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_keep_only "$@"

STEPS=${BENCH_STEPS:-50}
LOOP=${BENCH_LOOP:-2500000}

# Targets: estiba's cold time as a fraction of docker's.
TARGET_STEPS_COLD=0.25
TARGET_STAGES_COLD=1.0

check_whole_numbers STEPS LOOP REPEAT
[ "$STEPS" -ge 1 ] || die "BENCH_STEPS must be at least 1"
[ "$REPEAT" -ge 1 ] || die "BENCH_REPEAT must be at least 1"

check_host
build_estiba_if_missing

make_work_dirs
STEPS_CTX=$WORK/steps
STAGES_CTX=$WORK/stages
KEPT="contexts $STEPS_CTX and $STAGES_CTX"

# --- the Dockerfiles ----------------------------------------------------------

write_steps_dockerfile "$STEPS_CTX" "$STEPS"

write_stages_dockerfile "$STAGES_CTX" "$LOOP"

make_base_image
start_dockerd

# --- the scenarios ---------------------------------------------------------

SCENARIO_WIDTH=12
START=$(date +%s)
versions
machine
echo "cold runs: docker after builder prune -af + rmi; estiba with a fresh store + import (not timed)"
echo "steps: FROM bench-base + $STEPS × RUN echo \$i > /f\$i, cold, $REPEAT run(s)"
scenario steps-cold "$REPEAT" docker_cold fresh_estiba_store nothing "$STEPS_CTX"
both_have_bench
echo "steps: no-op rebuild, $REPEAT run(s)"
scenario steps-noop "$REPEAT" nothing nothing nothing "$STEPS_CTX"
echo "stages: 2 independent stages of a $LOOP-iteration sh loop + COPY --from both, cold, $REPEAT run(s)"
scenario stages-cold "$REPEAT" docker_cold fresh_estiba_store nothing "$STAGES_CTX"
both_have_bench
echo "stages: one stage alone (--target a), cold, $REPEAT run(s)"
scenario one-stage "$REPEAT" docker_cold fresh_estiba_store nothing "$STAGES_CTX" --target a
both_have_bench

# --- the table -------------------------------------------------------------

echo
printf '%-12s %10s %10s %8s %8s %-6s %9s\n' \
  scenario docker_s estiba_s ratio target speed rss_MB
for name in steps-cold steps-noop stages-cold one-stage; do
  read -r d e rss _ <<<"${RESULT[$name]}"
  case $name in
    steps-cold) target=$TARGET_STEPS_COLD ;;
    stages-cold) target=$TARGET_STAGES_COLD ;;
    *) target="" ;;
  esac
  judge "$d" "$e" "$target"
  printf '%-12s %10.3f %10.3f %8s %8s %-6s %9s\n' \
    "$name" "$d" "$e" "${RATIO}x" "$SHOWN_TARGET" "$SPEED" "$(kb_to_mb "$rss")"
done
read -r d2 e2 _ <<<"${RESULT[stages-cold]}"
read -r d1 e1 _ <<<"${RESULT[one-stage]}"
awk -v d2="$d2" -v e2="$e2" -v d1="$d1" -v e1="$e1" 'BEGIN {
  printf "two stages / one stage: docker %.2f, estiba %.2f (1 = the stages ran side by side, 2 = one after the other)\n",
    (d1 > 0 ? d2 / d1 : 0), (e1 > 0 ? e2 / e1 : 0) }'
echo "(times: median wall-clock seconds of $REPEAT run(s); ratio = estiba / docker; rss: estiba's peak, max of the runs)"
echo "(load average at the end: $(load_average); whole benchmark $(($(date +%s) - START)) s)"
report_misses
exit 0
