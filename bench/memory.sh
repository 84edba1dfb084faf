#!/usr/bin/env bash
# Benchmark: estiba's peak RSS against the number of files in the build
# context, to show whether its memory stays bounded at any context size.
#
# For each size, a context of that many small random files (20 per leaf
# directory, 10 leaves per top directory, as in copy-context.sh) and a
# Dockerfile `FROM scratch` + `COPY . /data`. With a fresh store for each size,
# three builds are measured once each: a cold build, a no-op rebuild and a
# rebuild after one file's content changed. The table gives each build's wall
# clock seconds and estiba's peak RSS; a line per scenario then gives how the
# RSS grows per 1000 files from the smallest size to the largest. The target
# (every peak RSS under 200 MB) lives here, never in the tests: a miss is
# printed loudly but the script still exits 0. Docker is not involved.
#
# Usage: bench/memory.sh [--keep]
#   --keep    keep each size's context and estiba store (printed at the end);
#             otherwise both are deleted once their size is measured
# Environment (defaults in brackets):
#   BENCH_MEMORY_SIZES [20000 100000 300000]  numbers of files, one context each
#   BENCH_SMALL_MIN [1024]     smallest file, bytes
#   BENCH_SMALL_MAX [4096]     largest file, bytes
#   BENCH_TMPDIR [/tmp]        where the contexts and estiba's stores go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root (as the other benchmarks; nothing here needs it otherwise), GNU
# time and python3, and about 3 KiB of disk per file twice over (the context
# and the store: ~2 GB for 300,000 files). The page cache is not dropped: the
# context is warm for every build (it was just written). Each timed run starts
# after a `sync`. The RSS is GNU time's maximum resident set size of estiba.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_keep_only "$@"

SIZES_TEXT=${BENCH_MEMORY_SIZES:-20000 100000 300000}
SMALL_MIN=${BENCH_SMALL_MIN:-1024}
SMALL_MAX=${BENCH_SMALL_MAX:-4096}

# Target: estiba's peak RSS, at every size and in every scenario.
TARGET_RSS_MB=200
SCENARIOS=(cold noop onefile)

read -r -a SIZES <<<"$SIZES_TEXT"
[ ${#SIZES[@]} -ge 1 ] || die "BENCH_MEMORY_SIZES names no size"
for size in "${SIZES[@]}"; do
  [[ $size =~ ^[0-9]+$ ]] || die "BENCH_MEMORY_SIZES must be whole numbers, not '$size'"
  [ "$size" -ge 1 ] || die "every size in BENCH_MEMORY_SIZES must be at least 1"
done
# Smallest first, each size once.
mapfile -t SIZES < <(printf '%s\n' "${SIZES[@]}" | sort -n -u)
check_whole_numbers SMALL_MIN SMALL_MAX
[ "$SMALL_MIN" -le "$SMALL_MAX" ] || die "BENCH_SMALL_MIN > BENCH_SMALL_MAX"

# What this benchmark needs of the host (check_host's list is docker's).
[ "$(id -u)" = 0 ] || die "run it as root, as the other benchmarks"
[ -x /usr/bin/time ] || die "no /usr/bin/time: install Debian's time package"
command -v python3 >/dev/null || die "python3 is needed to generate the contexts"
build_estiba_if_missing

make_work_dirs
KEPT="for each size N: context $WORK/N/ctx"
STORE=$WORK/N/store

# --- the contexts -------------------------------------------------------------

# make_context DIR FILES: writes the context and prints the path of the file
# that the one-file scenario changes (the middle one).
make_context() {
  python3 - "$1" "$2" "$SMALL_MIN" "$SMALL_MAX" <<'EOF'
import os, random, sys
ctx, files, lo, hi = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(20240)
flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
mid = None
for i in range(files):
    # 20 files per leaf directory, 10 leaves per top directory.
    if i % 20 == 0:
        d = os.path.join(ctx, f"d{i // 200:04d}", f"e{(i // 20) % 10}")
        os.makedirs(d)
    path = os.path.join(d, f"f{i:06d}.dat")
    fd = os.open(path, flags, 0o644)
    os.write(fd, rng.randbytes(rng.randint(lo, hi)))
    os.close(fd)
    if i == files // 2:
        mid = path
with open(os.path.join(ctx, "Dockerfile"), "w") as f:
    f.write("FROM scratch\nCOPY . /data\n")
print(mid)
EOF
}

# --- measuring ---------------------------------------------------------------

CHANGED=""

change_one_file() {
  local size
  size=$(stat -c %s "$CHANGED")
  head -c "$size" /dev/urandom >"$CHANGED"
}

# Results: "seconds rss_kb" per "files scenario".
declare -A MEASURED

# measure FILES SCENARIO: one timed build of the current context.
measure() {
  timed "estiba-$1-$2" "${ESTIBA_BUILD[@]}" "$CTX"
  MEASURED["$1 $2"]="$SECS $RSS_KB"
  printf '  %-8s %7.3f s  %7s MB\n' "$2" "$SECS" "$(kb_to_mb "$RSS_KB")"
}

echo "estiba: $("$ESTIBA" --version)"
machine
echo "sizes: ${SIZES[*]} files of $SMALL_MIN-$SMALL_MAX bytes; fresh store per size; page cache warm (not dropped)"
for files in "${SIZES[@]}"; do
  dir=$WORK/$files
  CTX=$dir/ctx
  STORE=$dir/store
  ESTIBA_BUILD=("$ESTIBA" --root "$STORE" build -t bench --progress quiet)
  mkdir -p "$CTX"
  echo
  echo "$files files: generating the context"
  gen_start=$(date +%s%N)
  CHANGED=$(make_context "$CTX" "$files")
  gen_end=$(date +%s%N)
  [ -f "$CHANGED" ] || die "generated context lacks the file to change ($CHANGED)"
  echo "  generated in $(awk -v ns=$((gen_end - gen_start)) 'BEGIN { printf "%.1f", ns / 1e9 }') s," \
    "$(du -sh --apparent-size "$CTX" | cut -f1); one-file change: ${CHANGED#"$CTX"/}"
  measure "$files" cold
  "$ESTIBA" --root "$STORE" inspect bench >/dev/null || die "estiba has no image 'bench' after the build"
  measure "$files" noop
  change_one_file
  measure "$files" onefile
  if [ "$KEEP" != 1 ]; then
    rm -rf "$dir"
  fi
done
# For cleanup's message with --keep.
STORE=$WORK/N/store

# --- the table -------------------------------------------------------------

echo
printf '%9s %-10s %9s %8s %-6s\n' files scenario seconds rss_MB rss
for files in "${SIZES[@]}"; do
  for name in "${SCENARIOS[@]}"; do
    read -r secs rss <<<"${MEASURED["$files $name"]}"
    judge_rss "$rss"
    printf '%9s %-10s %9.3f %8s %-6s\n' "$files" "$name" "$secs" "$RSS_MB" "$RSS_OK"
  done
done
echo "(seconds: wall clock of one build; rss_MB: estiba's peak RSS, MiB; target: every rss_MB < $TARGET_RSS_MB)"

echo
first=${SIZES[0]}
last=${SIZES[-1]}
for name in "${SCENARIOS[@]}"; do
  read -r _ rss_first <<<"${MEASURED["$first $name"]}"
  read -r _ rss_last <<<"${MEASURED["$last $name"]}"
  if [ "$first" = "$last" ]; then
    printf '%-10s rss growth: n/a (one size only)\n' "$name"
    continue
  fi
  growth=$(awk -v a="$rss_first" -v b="$rss_last" -v n=$((last - first)) \
    'BEGIN { printf "%+.1f", (b - a) * 1000 / n }')
  printf '%-10s rss growth %s to %s files: %s KB per 1000 files (%s -> %s MB)\n' "$name" \
    "$first" "$last" "$growth" "$(kb_to_mb "$rss_first")" "$(kb_to_mb "$rss_last")"
done
if [ "$MISSES" = 0 ]; then
  echo "every peak RSS under the $TARGET_RSS_MB MB target: PASS"
else
  echo "peak RSS under the $TARGET_RSS_MB MB target: MISS ($MISSES of $((${#SIZES[@]} * ${#SCENARIOS[@]})) builds over)"
fi
echo "(load average at the end: $(load_average))"
report_misses
exit 0
