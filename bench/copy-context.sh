#!/usr/bin/env bash
# Benchmark: `docker build` (BuildKit) against `estiba build` on the same
# COPY-heavy context, in one run, and print the ratios.
#
# The context is many small files plus a few large incompressible ones, and the
# Dockerfile is `FROM bench-base` + `COPY . /data`, where bench-base is the same
# busybox rootfs imported into both builders. Three scenarios are timed for
# both: a cold build (empty caches), a no-op rebuild and a rebuild after one
# small file's content changed. Speed targets live here, never in the tests:
# a miss is printed loudly but the script still exits 0.
#
# Usage: bench/copy-context.sh [--small] [--keep]
#   --small   2,000 files + 50 MB instead of 20,000 files + 500 MB
#   --keep    keep the context and estiba's store (printed at the end)
# Environment (defaults in brackets, --small ones second):
#   BENCH_FILES [20000|2000]   number of small files
#   BENCH_SMALL_MIN [1024]     smallest small file, bytes
#   BENCH_SMALL_MAX [4096]     largest small file, bytes
#   BENCH_BIG_MB [500|50]      total size of the large files, MiB
#   BENCH_BIG_FILES [5]        number of large files
#   BENCH_REPEAT [3]           runs of the no-op and one-file scenarios (median)
#   BENCH_COLD_REPEAT [1]      runs of the cold scenario (median)
#   BENCH_TMPDIR [/tmp]        where the context and estiba's store go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root, Debian's docker.io (/usr/sbin/dockerd, /usr/bin/docker),
# busybox-static, GNU time and python3 (scripts/test-deps installs the first
# two). dockerd is started privately, exactly as DESIGN.md requires (no bridge,
# no iptables, no network), and stopped by its PID on exit, failure or Ctrl-C.
# The page cache is not dropped: the context is warm for every run of both
# builders (it was just written). Each timed run starts after a `sync`.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_small_keep "$@"

copy_workload_size
SMALL_MIN=${BENCH_SMALL_MIN:-1024}
SMALL_MAX=${BENCH_SMALL_MAX:-4096}
BIG_FILES=${BENCH_BIG_FILES:-5}
COLD_REPEAT=${BENCH_COLD_REPEAT:-1}

# Targets: estiba's time as a fraction of docker's, and estiba's peak RSS.
TARGET_COLD=0.20
TARGET_NOOP=0.25
TARGET_ONEFILE=0.20
TARGET_RSS_MB=200

check_whole_numbers FILES SMALL_MIN SMALL_MAX BIG_MB BIG_FILES REPEAT COLD_REPEAT
[ "$FILES" -ge 1 ] || die "BENCH_FILES must be at least 1"
if [ "$REPEAT" -lt 1 ] || [ "$COLD_REPEAT" -lt 1 ]; then
  die "repeat counts must be at least 1"
fi
[ "$BIG_FILES" -ge 1 ] || die "BENCH_BIG_FILES must be at least 1"
[ "$SMALL_MIN" -le "$SMALL_MAX" ] || die "BENCH_SMALL_MIN > BENCH_SMALL_MAX"

check_host
command -v python3 >/dev/null || die "python3 is needed to generate the context"
build_estiba_if_missing

make_work_dirs
CTX=$WORK/ctx
KEPT="context $CTX"

# --- the context ------------------------------------------------------------

echo "generating the context: $FILES files of $SMALL_MIN-$SMALL_MAX bytes + $BIG_MB MiB in $BIG_FILES files"
write_copy_context "$CTX" "$FILES" "$SMALL_MIN" "$SMALL_MAX" "$BIG_MB" "$BIG_FILES"
MID=$((FILES / 2))
CHANGED=$(copy_context_file "$CTX" "$MID")
[ -f "$CHANGED" ] || die "generated context lacks $CHANGED"
CTX_SIZE=$(du -sh --apparent-size "$CTX" | cut -f1)

make_base_image
start_dockerd

# --- measuring ---------------------------------------------------------------

# Passed to scenario by name: shellcheck cannot see the call.
# shellcheck disable=SC2317
change_one_file() {
  local size
  size=$(stat -c %s "$CHANGED")
  head -c "$size" /dev/urandom >"$CHANGED"
}

versions
echo "context: $CTX_SIZE in $((FILES + BIG_FILES + 1)) files; page cache warm (not dropped)"
machine
echo "cold build (docker: builder prune -af + rmi; estiba: fresh store), $COLD_REPEAT run(s)"
scenario cold "$COLD_REPEAT" docker_cold fresh_estiba_store nothing "$CTX"
both_have_bench
echo "no-op rebuild, $REPEAT run(s)"
scenario noop "$REPEAT" nothing nothing nothing "$CTX"
echo "rebuild after one small file changed (${CHANGED#"$CTX"/}), $REPEAT run(s)"
scenario onefile "$REPEAT" nothing nothing change_one_file "$CTX"

# --- the table -------------------------------------------------------------

echo
printf '%-10s %10s %10s %8s %8s %-6s %9s %7s %-6s\n' \
  scenario docker_s estiba_s ratio target speed rss_MB rss_max rss
for name in cold noop onefile; do
  read -r d e rss _ <<<"${RESULT[$name]}"
  case $name in
    cold) target=$TARGET_COLD ;;
    noop) target=$TARGET_NOOP ;;
    onefile) target=$TARGET_ONEFILE ;;
  esac
  judge "$d" "$e" "$target"
  judge_rss "$rss"
  printf '%-10s %10.3f %10.3f %8s %8s %-6s %9s %7s %-6s\n' \
    "$name" "$d" "$e" "${RATIO}x" "$SHOWN_TARGET" "$SPEED" "$RSS_MB" "<$TARGET_RSS_MB" "$RSS_OK"
done
echo "(times: median wall-clock seconds of the runs; ratio = estiba / docker; rss: estiba's peak, max of the runs)"
echo "(load average at the end: $(load_average))"
report_misses
exit 0
