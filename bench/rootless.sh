#!/usr/bin/env bash
# Benchmark: estiba rootless against estiba as root (issue 14: at most
# 1.15× slower), on the two workloads of bench/run-steps.sh and
# bench/copy-context.sh, in one run:
#   steps   FROM bench-base + 50 × `RUN echo $i > /f$i`, cold
#   copy    FROM bench-base + `COPY . /data` of 20,000 small files and
#           500 MiB in 5 large ones, cold
# Each cold run starts from a fresh store with only the base imported (not
# timed). Rootless runs as the test user the rootless tests make
# (estiba-rootless, with /etc/subuid and /etc/subgid ranges; made here if
# missing, as tests/support/rootless.rs does) through `setpriv`, with its
# own store; root's store is another. Speed targets live here, never in the
# tests: a miss is printed loudly but the script still exits 0.
#
# Usage: bench/rootless.sh [--small] [--keep]
#   --small   2,000 files + 50 MB instead of 20,000 files + 500 MB
#   --keep    keep the contexts and the stores (printed at the end)
# Environment (defaults in brackets, --small ones second):
#   BENCH_STEPS [50]           RUN steps
#   BENCH_FILES [20000|2000]   small files of the COPY context
#   BENCH_BIG_MB [500|50]      MiB of large files in it
#   BENCH_REPEAT [3]           runs of every scenario (median)
#   BENCH_TMPDIR [/tmp]        where the contexts and stores go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root (to switch to the test user), useradd, setpriv, newuidmap
# (Debian's uidmap), busybox-static, GNU time and python3. No dockerd.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_small_keep "$@"
copy_workload_size
STEPS=${BENCH_STEPS:-50}
USER_NAME=estiba-rootless

# Target: rootless time as a multiple of root's.
TARGET=1.15

check_whole_numbers STEPS FILES BIG_MB REPEAT
[ "$(id -u)" = 0 ] || die "switching to the test user needs root"
for tool in useradd setpriv newuidmap newgidmap python3; do
  command -v "$tool" >/dev/null || die "no $tool (scripts/test-deps installs it)"
done
[ -x /bin/busybox ] || die "no /bin/busybox: install busybox-static (scripts/test-deps)"
[ -x /usr/bin/time ] || die "no /usr/bin/time: install Debian's time package"
build_estiba_if_missing

# The test user and its ranges, made once, after every range already there.
id "$USER_NAME" >/dev/null 2>&1 ||
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$USER_NAME"
for file in /etc/subuid /etc/subgid; do
  touch "$file"
  grep -q "^$USER_NAME:" "$file" && continue
  range=$(awk -F: -v u="$USER_NAME" 'NF >= 3 && $2 + $3 > end { end = $2 + $3 }
    END { if (end < 100000) end = 100000; print u ":" end ":65536" }' "$file")
  echo "$range" >>"$file"
done

make_work_dirs
chmod 0755 "$WORK"
ROOTLESS_STORE=$WORK/user/store
KEPT="contexts under $WORK, the rootless store $ROOTLESS_STORE"
make_base_image
write_steps_dockerfile "$WORK/steps" "$STEPS"
write_copy_context "$WORK/copy" "$FILES" 1024 4096 "$BIG_MB" 5
mkdir -p "$WORK/user/home"
chown -R "$USER_NAME:" "$WORK/user" "$WORK/steps" "$WORK/copy" "$WORK/rootfs.tar"

AS_USER=(setpriv "--reuid=$USER_NAME" "--regid=$USER_NAME" --init-groups --
  env -i "HOME=$WORK/user/home" "PATH=$PATH" "$ESTIBA" --root "$ROOTLESS_STORE")

fresh_stores() {
  fresh_estiba_store
  rm -rf "$ROOTLESS_STORE"
  SOURCE_DATE_EPOCH=0 "${AS_USER[@]}" import "$WORK/rootfs.tar" bench-base \
    >"$LOG/rootless-import.log" 2>&1 ||
    { cat "$LOG/rootless-import.log" >&2; die "rootless estiba import failed"; }
}

# run_both NAME CONTEXT: REPEAT cold runs of each, alternating.
run_both() {
  local name=$1 ctx=$2 r
  local -a root_s=() user_s=()
  for r in $(seq "$REPEAT"); do
    fresh_stores
    timed "root-$name-$r" "$ESTIBA" --root "$STORE" build --progress quiet --network none -t bench "$ctx"
    root_s+=("$SECS")
    timed "rootless-$name-$r" "${AS_USER[@]}" build --progress quiet --network none -t bench "$ctx"
    user_s+=("$SECS")
    printf '  %-6s run %d: root %7.3f s   rootless %7.3f s\n' "$name" "$r" "${root_s[-1]}" "${user_s[-1]}"
  done
  RESULT[$name]="$(median "${root_s[@]}") $(median "${user_s[@]}")"
}

START=$(date +%s)
echo "estiba: $("$ESTIBA" --version); rootless as $USER_NAME ($(grep "^$USER_NAME:" /etc/subuid))"
machine
echo "steps: FROM bench-base + $STEPS × RUN, cold, $REPEAT run(s) each"
run_both steps "$WORK/steps"
echo "copy: FROM bench-base + COPY . /data ($FILES files + $BIG_MB MiB), cold, $REPEAT run(s) each"
run_both copy "$WORK/copy"

echo
printf '%-8s %10s %12s %8s %8s %-6s\n' scenario root_s rootless_s ratio target speed
for name in steps copy; do
  read -r d e <<<"${RESULT[$name]}"
  judge "$d" "$e" "$TARGET"
  printf '%-8s %10.3f %12.3f %8s %8s %-6s\n' "$name" "$d" "$e" "${RATIO}x" "$SHOWN_TARGET" "$SPEED"
done
echo "(times: median wall-clock seconds of $REPEAT run(s); ratio = rootless / root)"
echo "(load average at the end: $(load_average); whole benchmark $(($(date +%s) - START)) s)"
report_misses
exit 0
