# shellcheck shell=bash
# What the benchmarks in bench/ share: their checks, the temp dirs and their
# cleanup, the private dockerd, the busybox base imported into both builders,
# the timed scenarios and the verdict on a ratio. A benchmark sets
# `set -euo pipefail`, sources this file at its top level, and then:
#
#   check_host; build_estiba_if_missing
#   make_work_dirs              then sets KEPT and writes its contexts
#   make_base_image; start_dockerd
#   versions; machine; scenario ...; judge ...; report_misses
#
# Cleanup runs from traps and scenario steps are passed by name, and the
# results are read by the benchmarks: shellcheck cannot see those uses.
# shellcheck disable=SC2317,SC2034

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The benchmark's name, for its messages.
BENCH=$(basename "$0" .sh)

# Settings every benchmark takes (each one's usage documents them).
REPEAT=${BENCH_REPEAT:-3}
TMPBASE=${BENCH_TMPDIR:-/tmp}
ESTIBA=${ESTIBA:-$REPO/target/release/estiba}
KEEP=0 # 1 after --keep

DOCKERD_BIN=/usr/sbin/dockerd
[ -x "$DOCKERD_BIN" ] || DOCKERD_BIN=/usr/bin/dockerd
DOCKER_BIN=/usr/bin/docker

# Prints the benchmark's usage: its header comment from `# Usage:` up to the
# `# Needs root` paragraph.
usage() {
  sed -n '/^# Usage:/,/^# Needs root/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

die() {
  echo "$BENCH: $*" >&2
  exit 1
}

# check_whole_numbers NAME...: dies unless each variable NAME is a whole number.
check_whole_numbers() {
  local n
  for n in "$@"; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number, not '${!n}'"
  done
}

check_host() {
  [ "$(id -u)" = 0 ] || die "dockerd needs root"
  [ -x "$DOCKERD_BIN" ] || die "no dockerd: install Debian's docker.io (scripts/test-deps)"
  [ -x "$DOCKER_BIN" ] || die "no $DOCKER_BIN: install Debian's docker.io (scripts/test-deps)"
  [ -x /bin/busybox ] || die "no /bin/busybox: install busybox-static (scripts/test-deps)"
  [ -x /usr/bin/time ] || die "no /usr/bin/time: install Debian's time package"
}

build_estiba_if_missing() {
  [ ! -x "$ESTIBA" ] || return 0
  echo "building $ESTIBA (cargo build --release -p estiba)"
  (cd "$REPO" && cargo build --release -p estiba)
  [ -x "$ESTIBA" ] || die "no estiba binary at $ESTIBA"
}

# --- temp dirs and cleanup --------------------------------------------------

WORK=""
DDIR=""
DOCKERD_PID=""
# What --keep keeps besides estiba's store, for the message at the end
# ("context /tmp/…/ctx"): the benchmark sets it once WORK exists.
KEPT=""
# Functions cleanup calls first (stopping what a benchmark started itself).
CLEANUP_HOOKS=()

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

# stop_child PID TENTHS: SIGTERM to PID (a child of this shell), TENTHS
# tenths of a second to end, then SIGKILL; reaps it.
stop_child() {
  local pid=$1 tenths=$2 i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq "$tenths"); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
      : "$i"
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_dockerd() {
  [ -n "$DOCKERD_PID" ] || return 0
  local cpid
  stop_child "$DOCKERD_PID" 300
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
  local hook
  for hook in "${CLEANUP_HOOKS[@]}"; do "$hook" || true; done
  stop_dockerd
  if [ -n "$DDIR" ]; then
    unmount_under "$DDIR"
    rm -rf "$DDIR"
  fi
  if [ -n "$WORK" ]; then
    unmount_under "$WORK"
    if [ "$KEEP" = 1 ] && [ "$rc" = 0 ]; then
      echo "kept: $KEPT, estiba store $STORE"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}

# Sets the traps that clean up, makes WORK (the contexts, estiba's STORE and
# the LOGs) and DDIR (dockerd's), and the commands that talk to both builders.
make_work_dirs() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mkdir -p "$TMPBASE"
  WORK=$(mktemp -d "$TMPBASE/estiba-bench.XXXXXX")
  # Short path: the socket and containerd's sockets must fit in sun_path.
  DDIR=$(mktemp -d /tmp/estiba-benchd.XXXXXX)
  STORE=$WORK/store
  LOG=$WORK/log
  mkdir -p "$LOG"

  DOCKER=(env -u DOCKER_HOST -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY
    "DOCKER_CONFIG=$DDIR/client" "$DOCKER_BIN" -H "unix://$DDIR/docker.sock")
  # Any extra flags and the context follow.
  DOCKER_BUILD=(env DOCKER_BUILDKIT=1 BUILDKIT_PROGRESS=plain "${DOCKER[@]}"
    build --network=none -t bench)
  ESTIBA_BUILD=("$ESTIBA" --root "$STORE" build -t bench --progress quiet)
}

# --- the base image (same rootfs for both) ---------------------------------

make_base_image() {
  local rootfs=$WORK/rootfs a
  mkdir -p "$rootfs/bin" "$rootfs/etc"
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in sh ls cat echo id find wc true; do ln -s busybox "$rootfs/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\n' >"$rootfs/etc/group"
  tar -C "$rootfs" -cf "$WORK/rootfs.tar" .
}

# A fresh store with only the base imported. SOURCE_DATE_EPOCH makes every
# import the same image, as a pulled base is on every machine (its ID is part
# of the steps' cache keys).
fresh_estiba_store() {
  rm -rf "$STORE"
  SOURCE_DATE_EPOCH=0 "$ESTIBA" --root "$STORE" import "$WORK/rootfs.tar" bench-base >"$LOG/estiba-import.log" 2>&1 ||
    { cat "$LOG/estiba-import.log" >&2; die "estiba import failed"; }
}

# --- the workloads ------------------------------------------------------------

# write_steps_dockerfile DIR STEPS: DIR/Dockerfile is `FROM bench-base` and
# STEPS × `RUN echo $i > /f$i` (what one RUN step costs).
write_steps_dockerfile() {
  local dir=$1 steps=$2 i
  mkdir -p "$dir"
  {
    echo "FROM bench-base"
    for i in $(seq "$steps"); do
      echo "RUN echo $i > /f$i"
    done
  } >"$dir/Dockerfile"
}

# write_copy_context DIR FILES SMALL_MIN SMALL_MAX BIG_MB BIG_FILES: DIR is a
# COPY-heavy context (needs python3): FILES small files of SMALL_MIN to
# SMALL_MAX random bytes, 20 per leaf directory (see copy_context_file),
# BIG_MB MiB of random bytes in BIG_FILES files under DIR/big, and a
# Dockerfile `FROM bench-base` + `COPY . /data`.
write_copy_context() {
  mkdir -p "$1"
  python3 - "$@" <<'PY'
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
PY
}

# write_stages_dockerfile DIR LOOP: DIR/Dockerfile is two independent stages
# `FROM bench-base` running the same CPU-bound LOOP-iteration shell loop and
# a final stage copying both results (COPY --from): whether independent
# stages run at the same time. The `echo a`/`echo b` after the loops keeps
# the steps distinct, or BuildKit would run one and reuse it for the other.
write_stages_dockerfile() {
  mkdir -p "$1"
  cat >"$1/Dockerfile" <<EOF
FROM bench-base AS a
RUN i=0; while [ \$i -lt $2 ]; do i=\$((i + 1)); done; echo a \$i > /out

FROM bench-base AS b
RUN i=0; while [ \$i -lt $2 ]; do i=\$((i + 1)); done; echo b \$i > /out

FROM bench-base
COPY --from=a /out /a
COPY --from=b /out /b
EOF
}

# copy_context_file DIR N: the path of small file number N of a context
# write_copy_context made in DIR.
copy_context_file() {
  printf '%s/d%03d/e%d/f%05d.dat' "$1" $(($2 / 200)) $((($2 / 20) % 10)) "$2"
}

# --- a Debian base ----------------------------------------------------------------

# Where what a benchmark downloads once is kept between runs (the Debian
# minbase tar): BENCH_TMPDIR/estiba-bench-cache.
BENCH_CACHE=$TMPBASE/estiba-bench-cache

# debian_mirror: prints Debian's own mirror from the apt sources (not a third
# party's), else deb.debian.org.
debian_mirror() {
  local mirror
  mirror=$(awk '($1 == "URIs:" || $1 == "deb") && /\/debian\/?( |$)/ && !/security/ {
    for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true)
  echo "${mirror:-http://deb.debian.org/debian}"
}

# debian_minbase_tar: sets DEBIAN_TAR to a tar of a Debian bookworm root file
# system made with `debootstrap --variant=minbase` (not timed), made once and
# kept in BENCH_CACHE for the next runs.
debian_minbase_tar() {
  local mirror root
  DEBIAN_TAR=$BENCH_CACHE/bookworm-minbase.tar
  [ ! -s "$DEBIAN_TAR" ] || return 0
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] ||
    die "no debootstrap: apt-get install -y debootstrap (scripts/bench-deps)"
  mirror=$(debian_mirror)
  mkdir -p "$BENCH_CACHE"
  root=$(mktemp -d "$BENCH_CACHE/debootstrap.XXXXXX")
  echo "debootstrap --variant=minbase bookworm from $mirror, once (not timed; kept in $BENCH_CACHE)"
  if ! PATH=$PATH:/usr/sbin:/sbin debootstrap --variant=minbase bookworm "$root" "$mirror" \
    >"$LOG/debootstrap.log" 2>&1; then
    rm -rf "$root"
    tail -n 20 "$LOG/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  tar -C "$root" --numeric-owner -cf "$DEBIAN_TAR.tmp" .
  rm -rf "$root"
  mv "$DEBIAN_TAR.tmp" "$DEBIAN_TAR"
}

# --- a local registry ----------------------------------------------------------

REGISTRY_PID=""
# 127.0.0.1:PORT of the registry start_registry started.
REGISTRY=""

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_registry DIR: starts Debian's docker-registry on 127.0.0.1:<free
# port>, plain http, anonymous, with its config, filesystem storage and log
# in DIR (made here); waits until /v2/ answers and sets REGISTRY. It is
# stopped by its PID at exit (CLEANUP_HOOKS) or by stop_registry.
start_registry() {
  local dir=$1 i port
  [ -x /usr/bin/docker-registry ] ||
    die "no /usr/bin/docker-registry: install Debian's docker-registry (scripts/test-deps)"
  command -v curl >/dev/null || die "curl is needed to see the registry answer"
  command -v python3 >/dev/null || die "python3 is needed to find a free port"
  mkdir -p "$dir/storage"
  port=$(free_port)
  # distribution reads YAML, and JSON is YAML.
  cat >"$dir/config.yml" <<EOF
{"version": "0.1",
 "log": {"level": "warn", "formatter": "text"},
 "storage": {"filesystem": {"rootdirectory": "$dir/storage"},
             "delete": {"enabled": true},
             "maintenance": {"uploadpurging": {"enabled": false}}},
 "http": {"addr": "127.0.0.1:$port", "secret": "estiba-bench-$port-$$"},
 "health": {"storagedriver": {"enabled": false}}}
EOF
  local -a unset_env=()
  # distribution reads REGISTRY_* variables as config overrides.
  for i in $(compgen -e | grep '^REGISTRY_' || true); do unset_env+=(-u "$i"); done
  env "${unset_env[@]}" /usr/bin/docker-registry serve "$dir/config.yml" \
    </dev/null >"$dir/registry.log" 2>&1 &
  REGISTRY_PID=$!
  CLEANUP_HOOKS+=(stop_registry)
  for i in $(seq 150); do
    if ! kill -0 "$REGISTRY_PID" 2>/dev/null; then
      tail -n 20 "$dir/registry.log" >&2
      die "docker-registry exited before answering"
    fi
    curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null && break
    [ "$i" -lt 150 ] || { tail -n 20 "$dir/registry.log" >&2; die "docker-registry did not answer in 30 s"; }
    sleep 0.2
  done
  REGISTRY=127.0.0.1:$port
}

stop_registry() {
  [ -n "$REGISTRY_PID" ] || return 0
  stop_child "$REGISTRY_PID" 100
  REGISTRY_PID=""
}

# --- dockerd ----------------------------------------------------------------

# Starts the private dockerd, waits for it to answer and imports the base
# image into it.
start_dockerd() {
  local i
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
}

# --- measuring ---------------------------------------------------------------

SECS=""
RSS_KB=""
SYS=""

# timed NAME CMD...: runs CMD with its output in $LOG/NAME.log; sets SECS (wall
# clock), RSS_KB (peak RSS of CMD and its largest descendant) and SYS (system
# CPU seconds of CMD and the children it waited for), both from GNU time.
# A `sync` first (not timed): otherwise one run's dirty pages are written
# back during, and charged to, the next run.
timed() {
  local name=$1 start end
  shift
  sync
  start=$(date +%s%N)
  if ! /usr/bin/time -f '%M %S' -o "$LOG/$name.time" "$@" >"$LOG/$name.log" 2>&1; then
    tail -n 30 "$LOG/$name.log" >&2
    die "$name failed: $*"
  fi
  end=$(date +%s%N)
  SECS=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')
  read -r RSS_KB SYS < <(tail -n 1 "$LOG/$name.time")
}

median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

max() {
  printf '%s\n' "$@" | sort -g | tail -n 1
}

min() {
  printf '%s\n' "$@" | sort -g | head -n 1
}

# spread SECS...: "median (min–max)", three decimals.
spread() {
  printf '%s (%.3f–%.3f)' "$(median "$@")" "$(min "$@")" "$(max "$@")"
}

# Results per scenario: "docker_median estiba_median estiba_max_rss_kb runs".
declare -gA RESULT
# Width of the scenario names in the lines of each run.
SCENARIO_WIDTH=8

# scenario NAME RUNS PREPARE_DOCKER PREPARE_ESTIBA PREPARE_BOTH CONTEXT [BUILD_FLAG...]
# Each run: PREPARE_BOTH, then docker (after PREPARE_DOCKER), then estiba
# (after PREPARE_ESTIBA), both given BUILD_FLAGs and CONTEXT. Preparations are
# not timed.
scenario() {
  local name=$1 runs=$2 prep_docker=$3 prep_estiba=$4 prep_both=$5 ctx=$6 r
  shift 6
  local -a d_secs=() e_secs=() e_rss=()
  for r in $(seq "$runs"); do
    $prep_both
    $prep_docker
    timed "docker-$name-$r" "${DOCKER_BUILD[@]}" "$@" "$ctx"
    d_secs+=("$SECS")
    $prep_estiba
    timed "estiba-$name-$r" "${ESTIBA_BUILD[@]}" "$@" "$ctx"
    e_secs+=("$SECS")
    e_rss+=("$RSS_KB")
    printf '  %-*s run %d: docker %7.3f s   estiba %7.3f s  (%d MB)\n' \
      "$SCENARIO_WIDTH" "$name" "$r" "${d_secs[-1]}" "${e_secs[-1]}" $((RSS_KB / 1024))
  done
  RESULT[$name]="$(median "${d_secs[@]}") $(median "${e_secs[@]}") $(max "${e_rss[@]}") $runs"
}

docker_cold() {
  "${DOCKER[@]}" rmi -f bench >/dev/null 2>&1 || true
  "${DOCKER[@]}" builder prune -af >/dev/null
}
nothing() { :; }

both_have_bench() {
  "$ESTIBA" --root "$STORE" inspect bench >/dev/null || die "estiba has no image 'bench' after the build"
  "${DOCKER[@]}" image inspect bench >/dev/null || die "docker has no image 'bench' after the build"
}

load_average() {
  cut -d' ' -f1-3 /proc/loadavg
}

versions() {
  echo "estiba: $("$ESTIBA" --version)   docker: $("${DOCKER[@]}" version --format '{{.Server.Version}}') (BuildKit)"
}

machine() {
  echo "machine: $(nproc) CPUs, load average $(load_average) at start (other load skews the times)"
}

# --- the table -------------------------------------------------------------

MISSES=0
RATIO=""
SPEED=""
SHOWN_TARGET=""

# judge DOCKER_S ESTIBA_S [TARGET]: sets RATIO (estiba / docker, "inf" when
# docker took no time), SHOWN_TARGET and SPEED: PASS if RATIO is at most
# TARGET, MISS (counted in MISSES) if not, info if there is no TARGET.
judge() {
  local d=$1 e=$2 target=${3:-}
  RATIO=$(awk -v d="$d" -v e="$e" 'BEGIN { if (d > 0) printf "%.3f", e / d; else print "inf" }')
  if [ -z "$target" ]; then
    SPEED=info
    SHOWN_TARGET=-
    return 0
  fi
  SHOWN_TARGET=${target}x
  if awk -v r="$RATIO" -v t="$target" 'BEGIN { exit !(r != "inf" && r + 0 <= t + 0) }'; then
    SPEED=PASS
  else
    SPEED=MISS
    MISSES=$((MISSES + 1))
  fi
}

# judge_below VALUE LIMIT: sets BELOW, PASS when VALUE < LIMIT, else MISS
# (counted in MISSES).
judge_below() {
  if awk -v v="$1" -v l="$2" 'BEGIN { exit !(v + 0 < l + 0) }'; then
    BELOW=PASS
  else
    BELOW=MISS
    MISSES=$((MISSES + 1))
  fi
}

# judge_rss KB: sets RSS_MB (KB in MiB) and RSS_OK, PASS when under
# TARGET_RSS_MB, else MISS (counted in MISSES).
judge_rss() {
  RSS_MB=$(kb_to_mb "$1")
  judge_below "$RSS_MB" "$TARGET_RSS_MB"
  RSS_OK=$BELOW
}

# parse_keep_only ARGS...: the options of a script whose only one is --keep.
parse_keep_only() {
  while [ $# -gt 0 ]; do
    case $1 in
      --keep) KEEP=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
    shift
  done
}

# parse_small_keep ARGS...: the options of a script whose options are
# --small (sets SMALL=1) and --keep.
SMALL=0
parse_small_keep() {
  while [ $# -gt 0 ]; do
    case $1 in
      --small) SMALL=1 ;;
      --keep) KEEP=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
    shift
  done
}

# copy_workload_size: sets FILES and BIG_MB of write_copy_context's context
# from BENCH_FILES and BENCH_BIG_MB, by default 20,000 files + 500 MiB, or
# 2,000 + 50 MiB after --small.
copy_workload_size() {
  if [ "$SMALL" = 1 ]; then
    FILES=${BENCH_FILES:-2000}
    BIG_MB=${BENCH_BIG_MB:-50}
  else
    FILES=${BENCH_FILES:-20000}
    BIG_MB=${BENCH_BIG_MB:-500}
  fi
}

# kb_to_mb KB: prints KB in MiB, one decimal.
kb_to_mb() {
  awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'
}

report_misses() {
  if [ "$MISSES" -gt 0 ]; then
    echo
    echo "*** $MISSES TARGET(S) MISSED (see above) ***"
  fi
}
