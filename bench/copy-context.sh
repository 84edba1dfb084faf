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

# Cleanup runs from traps and scenario steps are passed by name: shellcheck
# cannot see those calls.
# shellcheck disable=SC2317
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  sed -n '/^# Usage:/,/^# Needs root/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

SMALL=0
KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --small) SMALL=1 ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$SMALL" = 1 ]; then
  FILES=${BENCH_FILES:-2000}
  BIG_MB=${BENCH_BIG_MB:-50}
else
  FILES=${BENCH_FILES:-20000}
  BIG_MB=${BENCH_BIG_MB:-500}
fi
SMALL_MIN=${BENCH_SMALL_MIN:-1024}
SMALL_MAX=${BENCH_SMALL_MAX:-4096}
BIG_FILES=${BENCH_BIG_FILES:-5}
REPEAT=${BENCH_REPEAT:-3}
COLD_REPEAT=${BENCH_COLD_REPEAT:-1}
TMPBASE=${BENCH_TMPDIR:-/tmp}
ESTIBA=${ESTIBA:-$REPO/target/release/estiba}

# Targets: estiba's time as a fraction of docker's, and estiba's peak RSS.
TARGET_COLD=0.20
TARGET_NOOP=0.25
TARGET_ONEFILE=0.20
TARGET_RSS_MB=200

DOCKERD_BIN=/usr/sbin/dockerd
[ -x "$DOCKERD_BIN" ] || DOCKERD_BIN=/usr/bin/dockerd
DOCKER_BIN=/usr/bin/docker

die() {
  echo "copy-context: $*" >&2
  exit 1
}

for n in FILES SMALL_MIN SMALL_MAX BIG_MB BIG_FILES REPEAT COLD_REPEAT; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number, not '${!n}'"
done
[ "$FILES" -ge 1 ] || die "BENCH_FILES must be at least 1"
if [ "$REPEAT" -lt 1 ] || [ "$COLD_REPEAT" -lt 1 ]; then
  die "repeat counts must be at least 1"
fi
[ "$BIG_FILES" -ge 1 ] || die "BENCH_BIG_FILES must be at least 1"
[ "$SMALL_MIN" -le "$SMALL_MAX" ] || die "BENCH_SMALL_MIN > BENCH_SMALL_MAX"

[ "$(id -u)" = 0 ] || die "dockerd needs root"
[ -x "$DOCKERD_BIN" ] || die "no dockerd: install Debian's docker.io (scripts/test-deps)"
[ -x "$DOCKER_BIN" ] || die "no $DOCKER_BIN: install Debian's docker.io (scripts/test-deps)"
[ -x /bin/busybox ] || die "no /bin/busybox: install busybox-static (scripts/test-deps)"
[ -x /usr/bin/time ] || die "no /usr/bin/time: install Debian's time package"
command -v python3 >/dev/null || die "python3 is needed to generate the context"
if [ ! -x "$ESTIBA" ]; then
  echo "building $ESTIBA (cargo build --release -p estiba)"
  (cd "$REPO" && cargo build --release -p estiba)
  [ -x "$ESTIBA" ] || die "no estiba binary at $ESTIBA"
fi

# --- temp dirs and cleanup --------------------------------------------------

WORK=""
DDIR=""
DOCKERD_PID=""

# Unmounts every mount point at or under $1, deepest first. Our temp paths
# contain no characters that mountinfo escapes.
unmount_under() {
  local prefix=$1 p i
  [ -n "$prefix" ] || return 0
  awk -v pre="$prefix" '$5 == pre || index($5, pre "/") == 1 { print length($5), $5 }' \
    /proc/self/mountinfo | sort -rn | cut -d' ' -f2- | uniq |
    while IFS= read -r p; do
      for i in 1 2 3 4 5 6 7 8; do
        umount -l "$p" 2>/dev/null || break
        : "$i"
      done
    done
}

stop_dockerd() {
  [ -n "$DOCKERD_PID" ] || return 0
  local i cpid
  if kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for i in $(seq 300); do
      kill -0 "$DOCKERD_PID" 2>/dev/null || break
      sleep 0.1
      : "$i"
    done
    kill -KILL "$DOCKERD_PID" 2>/dev/null || true
  fi
  wait "$DOCKERD_PID" 2>/dev/null || true
  # dockerd's own containerd, if a killed dockerd left it: only the process
  # whose command line names our directory.
  if [ -f "$DDIR/exec/containerd/containerd.pid" ]; then
    cpid=$(cat "$DDIR/exec/containerd/containerd.pid" 2>/dev/null || true)
    if [[ $cpid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$cpid/cmdline" 2>/dev/null | grep -qF "$DDIR"; then
      kill -KILL "$cpid" 2>/dev/null || true
    fi
  fi
  DOCKERD_PID=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_dockerd
  if [ -n "$DDIR" ]; then
    unmount_under "$DDIR"
    rm -rf "$DDIR"
  fi
  if [ -n "$WORK" ]; then
    unmount_under "$WORK"
    if [ "$KEEP" = 1 ] && [ "$rc" = 0 ]; then
      echo "kept: context $WORK/ctx, estiba store $WORK/store"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d "$TMPBASE/estiba-bench.XXXXXX")
# Short path: the socket and containerd's sockets must fit in sun_path.
DDIR=$(mktemp -d /tmp/estiba-benchd.XXXXXX)
CTX=$WORK/ctx
STORE=$WORK/store
LOG=$WORK/log
mkdir -p "$CTX" "$LOG"

DOCKER=(env -u DOCKER_HOST -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY
  "DOCKER_CONFIG=$DDIR/client" "$DOCKER_BIN" -H "unix://$DDIR/docker.sock")
DOCKER_BUILD=(env DOCKER_BUILDKIT=1 BUILDKIT_PROGRESS=plain "${DOCKER[@]}"
  build --network=none -t bench "$CTX")
ESTIBA_BUILD=("$ESTIBA" --root "$STORE" build -t bench --progress quiet "$CTX")

# --- the context ------------------------------------------------------------

echo "generating the context: $FILES files of $SMALL_MIN-$SMALL_MAX bytes + $BIG_MB MiB in $BIG_FILES files"
python3 - "$CTX" "$FILES" "$SMALL_MIN" "$SMALL_MAX" "$BIG_MB" "$BIG_FILES" <<'EOF'
import os, random, sys
ctx, files, lo, hi, big_mb, big_files = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(20240)
for i in range(files):
    # 20 files per leaf directory, 10 leaves per top directory.
    d = os.path.join(ctx, f"d{i // 200:03d}", f"e{(i // 20) % 10}")
    if i % 20 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.dat"), "wb") as f:
        f.write(rng.randbytes(rng.randint(lo, hi)))
total = big_mb * 1024 * 1024
os.makedirs(os.path.join(ctx, "big"), exist_ok=True)
chunk = 1 << 20
for n in range(big_files):
    size = total // big_files + (total % big_files if n == 0 else 0)
    with open(os.path.join(ctx, "big", f"blob{n}.bin"), "wb") as f:
        while size > 0:
            k = min(chunk, size)
            f.write(os.urandom(k))
            size -= k
with open(os.path.join(ctx, "Dockerfile"), "w") as f:
    f.write("FROM bench-base\nCOPY . /data\n")
EOF
MID=$((FILES / 2))
CHANGED=$CTX/d$(printf '%03d' $((MID / 200)))/e$(((MID / 20) % 10))/f$(printf '%05d' "$MID").dat
[ -f "$CHANGED" ] || die "generated context lacks $CHANGED"
CTX_SIZE=$(du -sh --apparent-size "$CTX" | cut -f1)

# --- the base image (same rootfs for both) ---------------------------------

ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS/bin" "$ROOTFS/etc"
cp /bin/busybox "$ROOTFS/bin/busybox"
for a in sh ls cat echo id; do ln -s busybox "$ROOTFS/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\n' >"$ROOTFS/etc/group"
tar -C "$ROOTFS" -cf "$WORK/rootfs.tar" .

fresh_estiba_store() {
  rm -rf "$STORE"
  "$ESTIBA" --root "$STORE" import "$WORK/rootfs.tar" bench-base >"$LOG/estiba-import.log" 2>&1 ||
    { cat "$LOG/estiba-import.log" >&2; die "estiba import failed"; }
}

# --- dockerd ----------------------------------------------------------------

echo "starting a private dockerd in $DDIR"
"$DOCKERD_BIN" --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
  --data-root "$DDIR/data" --exec-root "$DDIR/exec" --pidfile "$DDIR/pid" \
  -H "unix://$DDIR/docker.sock" </dev/null >"$DDIR/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for i in $(seq 300); do
  if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
    tail -n 20 "$DDIR/dockerd.log" >&2
    die "dockerd exited before answering"
  fi
  "${DOCKER[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
  [ "$i" -lt 300 ] || { tail -n 20 "$DDIR/dockerd.log" >&2; die "dockerd did not answer in 60 s"; }
  sleep 0.2
done
"${DOCKER[@]}" import "$WORK/rootfs.tar" bench-base >/dev/null

# --- measuring ---------------------------------------------------------------

SECS=""
RSS_KB=""

# timed NAME CMD...: runs CMD with its output in $LOG/NAME.log; sets SECS (wall
# clock) and RSS_KB (peak RSS of CMD and its largest descendant, GNU time).
# A `sync` first (not timed): otherwise one builder's dirty pages are written
# back during, and charged to, the other's run (estiba's syncfs waits for all
# of the file system's dirty data, docker's included).
timed() {
  local name=$1 start end
  shift
  sync
  start=$(date +%s%N)
  if ! /usr/bin/time -f '%M' -o "$LOG/$name.time" "$@" >"$LOG/$name.log" 2>&1; then
    tail -n 30 "$LOG/$name.log" >&2
    die "$name failed: $*"
  fi
  end=$(date +%s%N)
  SECS=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')
  RSS_KB=$(tail -n 1 "$LOG/$name.time")
}

median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

max() {
  printf '%s\n' "$@" | sort -g | tail -n 1
}

# Results per scenario: "docker_median estiba_median estiba_max_rss_kb runs".
declare -A RESULT

# scenario NAME RUNS PREPARE_DOCKER PREPARE_ESTIBA PREPARE_BOTH
# Each run: PREPARE_BOTH, then docker (after PREPARE_DOCKER), then estiba
# (after PREPARE_ESTIBA). Preparations are not timed.
scenario() {
  local name=$1 runs=$2 prep_docker=$3 prep_estiba=$4 prep_both=$5 r
  local -a d_secs=() e_secs=() e_rss=()
  for r in $(seq "$runs"); do
    $prep_both
    $prep_docker
    timed "docker-$name-$r" "${DOCKER_BUILD[@]}"
    d_secs+=("$SECS")
    $prep_estiba
    timed "estiba-$name-$r" "${ESTIBA_BUILD[@]}"
    e_secs+=("$SECS")
    e_rss+=("$RSS_KB")
    printf '  %-8s run %d: docker %7.3f s   estiba %7.3f s  (%d MB)\n' \
      "$name" "$r" "${d_secs[-1]}" "${e_secs[-1]}" $((RSS_KB / 1024))
  done
  RESULT[$name]="$(median "${d_secs[@]}") $(median "${e_secs[@]}") $(max "${e_rss[@]}") $runs"
}

docker_cold() {
  "${DOCKER[@]}" rmi -f bench >/dev/null 2>&1 || true
  "${DOCKER[@]}" builder prune -af >/dev/null
}
change_one_file() {
  local size
  size=$(stat -c %s "$CHANGED")
  head -c "$size" /dev/urandom >"$CHANGED"
}
nothing() { :; }

echo "estiba: $("$ESTIBA" --version)   docker: $("${DOCKER[@]}" version --format '{{.Server.Version}}') (BuildKit)"
echo "context: $CTX_SIZE in $((FILES + BIG_FILES + 1)) files; page cache warm (not dropped)"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start (other load skews the times)"
echo "cold build (docker: builder prune -af + rmi; estiba: fresh store), $COLD_REPEAT run(s)"
scenario cold "$COLD_REPEAT" docker_cold fresh_estiba_store nothing
"$ESTIBA" --root "$STORE" inspect bench >/dev/null || die "estiba has no image 'bench' after the build"
"${DOCKER[@]}" image inspect bench >/dev/null || die "docker has no image 'bench' after the build"
echo "no-op rebuild, $REPEAT run(s)"
scenario noop "$REPEAT" nothing nothing nothing
echo "rebuild after one small file changed (${CHANGED#"$CTX"/}), $REPEAT run(s)"
scenario onefile "$REPEAT" nothing nothing change_one_file

# --- the table -------------------------------------------------------------

MISSES=0
echo
printf '%-10s %10s %10s %8s %8s %-6s %9s %7s %-6s\n' \
  scenario docker_s estiba_s ratio target speed rss_MB rss_max rss
for name in cold noop onefile; do
  read -r d e rss runs <<<"${RESULT[$name]}"
  case $name in
    cold) target=$TARGET_COLD ;;
    noop) target=$TARGET_NOOP ;;
    onefile) target=$TARGET_ONEFILE ;;
  esac
  ratio=$(awk -v d="$d" -v e="$e" 'BEGIN { if (d > 0) printf "%.3f", e / d; else print "inf" }')
  if awk -v r="$ratio" -v t="$target" 'BEGIN { exit !(r != "inf" && r + 0 <= t + 0) }'; then
    speed=PASS
  else
    speed=MISS
    MISSES=$((MISSES + 1))
  fi
  rss_mb=$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')
  if awk -v m="$rss_mb" -v t="$TARGET_RSS_MB" 'BEGIN { exit !(m + 0 < t + 0) }'; then
    rss_ok=PASS
  else
    rss_ok=MISS
    MISSES=$((MISSES + 1))
  fi
  printf '%-10s %10.3f %10.3f %8s %8s %-6s %9s %7s %-6s\n' \
    "$name" "$d" "$e" "${ratio}x" "${target}x" "$speed" "$rss_mb" "<$TARGET_RSS_MB" "$rss_ok"
done
echo "(times: median wall-clock seconds of the runs; ratio = estiba / docker; rss: estiba's peak, max of the runs)"
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
if [ "$MISSES" -gt 0 ]; then
  echo
  echo "*** $MISSES TARGET(S) MISSED (see MISS above) ***"
fi
exit 0
