#!/usr/bin/env bash
# Benchmark: estiba against `docker build` (BuildKit) and `buildah bud` on
# the same machine in one run, on the workloads of issue 13's table, with
# every tool's base images loaded and unpacked before anything is timed, so
# that "cold" means the same for all three:
#   docker    the bases are `docker import`ed once (dockerd keeps images
#             unpacked); a cold build follows `rmi` and `builder prune -af`
#   buildah   the bases are committed once and `buildah from` each base once
#             (its layers unpacked in the overlay store); `buildah bud`
#             without --layers caches nothing, a cold build follows `rmi`
#   estiba    a store per base, made once: the base imported and a `FROM
#             base` + `RUN true` built (the base's snapshot unpacked); a cold
#             build starts from a copy of that store (`cp -a`, not timed)
#
# The rows (all offline, all three builders given no network):
#   node      Node.js base from this machine's node (scripts/node-base), an
#             npm cache filled once before timing (npm's registry) and copied
#             in the context, `RUN npm ci --offline` of an app on express and
#             a few common packages
#   apt       Debian bookworm minbase (debootstrap, made once and kept in
#             BENCH_TMPDIR/estiba-bench-cache), the .debs of curl and the
#             dependencies the minbase lacks downloaded once (`apt-get
#             download`), `COPY debs /debs` + `RUN dpkg -i /debs/*.deb`;
#             skipped with a message when debootstrap is missing
#   copy      20,000 small files + 500 MiB (bench/lib.sh's copy context),
#             `COPY . /data` then `RUN find /data | wc -l`, cold
#   export    right after each copy build, its OCI archive (gzip layers):
#             `estiba build -o type=oci,dest=…` (the build is cached),
#             `buildah push bench oci-archive:…` and `docker buildx build -o
#             type=oci,dest=…` if buildx exists, else `docker save` (a docker
#             archive with uncompressed layers: not the same work, so then
#             docker is shown but not the best peer); estiba's second export
#             of the same image is timed too (its gzip blobs kept)
#   stages    two CPU-bound stages + COPY --from both (bench/run-steps.sh's)
#   noop      50 × `RUN echo $i > /f$i`, a no-op rebuild (docker, estiba)
#   edit      the copy context with `COPY . /data` alone, rebuilt after one
#             small file's content changed (docker, estiba)
#   onefile   the same edit with the copy row's Dockerfile (COPY then RUN
#             find), right after the copy row: both steps run again
# Each row runs BENCH_REPEAT times, the builders one after another in each
# run, and prints the median and range of each, the ratio estiba / best peer
# (the faster median of docker and buildah) against the goal of issue 13,
# met or MISS, and the machine's load (`uptime` before and after the row).
# A missed goal is printed, not an error: the script exits 0 unless
# something fails.
#
# Choices: buildah uses overlay (containers/storage's default; vfs would copy
# every layer and flatter estiba) in a private root under BENCH_TMPDIR, as
# root, the default OCI isolation (runc) and `--network none`: its default
# network would make a bridge in a private range, which this machine's
# rules forbid (docker builds with `--network=none`, estiba with `--network
# none` for the same reason and for parity). buildah's default `--jobs 1`
# runs stages one after another; docker and estiba run them side by side.
#
# Usage: bench/compare.sh [--small] [--keep]
#   --small   the copy rows with 2,000 files + 50 MB instead of 20,000 + 500 MB
#   --keep    keep the work directory (printed at the end)
# Environment (defaults in brackets, --small ones second):
#   BENCH_REPEAT [3]             runs per row (median and range)
#   BENCH_ONLY [node apt copy edit stages noop]  the rows to run (copy
#                                also times export and onefile)
#   BENCH_FILES [20000|2000]     small files of the copy context
#   BENCH_BIG_MB [500|50]        MiB of large files of the copy context
#   BENCH_LOOP [2500000]         iterations of each stage's loop
#   BENCH_STEPS [50]             RUN steps of the noop row
#   BENCH_DEBS [curl]            the packages of the apt row
#   BENCH_TMPDIR [/tmp]          where the contexts, stores and the cache go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root, Debian's docker.io, busybox-static, node and npm
# (scripts/test-deps), buildah, GNU time, debootstrap, python3 and curl
# (scripts/bench-deps), and npm's registry and Debian's mirror once per
# machine (the npm cache each run, the minbase and .debs once). dockerd is
# started privately, exactly as DESIGN.md requires (no bridge, no iptables,
# no network), and stopped by its PID on exit, failure or Ctrl-C; buildah's
# containers and mounts are removed then too. Each timed command starts
# after a `sync`; the page cache is not dropped.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_small_keep "$@"
copy_workload_size
LOOP=${BENCH_LOOP:-2500000}
STEPS=${BENCH_STEPS:-50}
ONLY=${BENCH_ONLY:-node apt copy edit stages noop}
DEBS=${BENCH_DEBS:-curl}
check_whole_numbers FILES BIG_MB LOOP STEPS REPEAT
[ "$REPEAT" -ge 1 ] || die "BENCH_REPEAT must be at least 1"

# Goals of issue 13: estiba's median over the best peer's.
declare -A GOAL=([node]=0.8 [apt]=0.7 [copy]=0.25 [export]=0.5 [export-again]=""
  [stages]=0.7 [noop]=0.25 [onefile]=0.25 [edit]=0.25)
declare -A TITLE=(
  [node]="node app cold (\`RUN npm ci --offline\`)"
  [apt]="apt install cold (\`RUN dpkg -i /debs/*.deb\`, $DEBS)"
  [copy]="$FILES files + $BIG_MB MB, \`COPY . /data\` then \`RUN find /data \\| wc -l\`"
  [export]="the same, OCI archive export (gzip)"
  [export-again]="the same, exported again"
  [stages]="two CPU-bound stages"
  [noop]="no-op rebuild, $STEPS RUN steps"
  [onefile]="one-file edit rebuild, $FILES files, COPY then RUN find (both run again)"
  [edit]="one-file edit rebuild, $FILES files, \`COPY . /data\` alone"
)
ROWS=(node apt copy export export-again stages noop edit onefile)

check_host
command -v buildah >/dev/null || die "no buildah: scripts/bench-deps installs it"
command -v python3 >/dev/null || die "python3 is needed to generate the copy context"
build_estiba_if_missing
make_work_dirs
KEPT="contexts in $WORK"

# --- the builders -------------------------------------------------------------

E_BUILD=("${ESTIBA_BUILD[@]}" --network none)
BUILDAH=(buildah --root "$WORK/buildah" --runroot "$DDIR/buildah-run" --storage-driver overlay)
B_BUILD=("${BUILDAH[@]}" bud --network none -t bench)

# Called by cleanup, from CLEANUP_HOOKS.
# shellcheck disable=SC2317
stop_buildah() {
  "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
  unmount_under "$WORK/buildah"
  unmount_under "$DDIR/buildah-run"
}
CLEANUP_HOOKS+=(stop_buildah)

if "${DOCKER[@]}" buildx version >/dev/null 2>&1; then DOCKER_BUILDX=1; else DOCKER_BUILDX=0; fi

# load_base NAME TAR: the root file system TAR as image NAME in all three,
# unpacked: `docker import`; buildah from scratch + add + commit, then
# `buildah from NAME`; estiba's store for NAME ($WORK/seed-NAME) with it
# imported and `FROM NAME` + `RUN true` built. Not timed.
load_base() {
  local name=$1 tar=$2 ctr
  echo "loading $name into docker, buildah and estiba (not timed)"
  "${DOCKER[@]}" import "$tar" "$name" >/dev/null
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add "$ctr" "$tar" / >/dev/null
  "${BUILDAH[@]}" commit -q "$ctr" "$name" >/dev/null
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
  "${BUILDAH[@]}" from -q "$name" >/dev/null
  rm -rf "$STORE"
  SOURCE_DATE_EPOCH=0 "$ESTIBA" --root "$STORE" import "$tar" "$name" >"$LOG/import-$name.log" 2>&1 ||
    { cat "$LOG/import-$name.log" >&2; die "estiba import of $name failed"; }
  mkdir -p "$WORK/warm-$name"
  printf 'FROM %s\nRUN true\n' "$name" >"$WORK/warm-$name/Dockerfile"
  "${E_BUILD[@]}" "$WORK/warm-$name" >"$LOG/warm-$name.log" 2>&1 ||
    { cat "$LOG/warm-$name.log" >&2; die "estiba's warm-up build on $name failed"; }
  "$ESTIBA" --root "$STORE" rmi bench >/dev/null
  # The store is copied back to the same path, so nothing in it can tell.
  mv "$STORE" "$WORK/seed-$name"
}

# Cold starts (not timed).
BASE=bench-base
estiba_cold() {
  rm -rf "$STORE"
  cp -a "$WORK/seed-$BASE" "$STORE"
}
buildah_cold() {
  "${BUILDAH[@]}" rmi -f bench >/dev/null 2>&1 || true
}

# --- rows ---------------------------------------------------------------------

# Seconds per row and builder ("1.2 1.3 1.1"), load before and after a row.
declare -A TIMES LOAD_BEFORE LOAD_AFTER

# add_time ROW TOOL: appends SECS to ROW's times of TOOL.
add_time() {
  TIMES[$1-$2]="${TIMES[$1-$2]:-} $SECS"
}

row_start() {
  echo
  echo "== ${TITLE[$1]}"
  echo "   before: $(uptime)"
  LOAD_BEFORE[$1]=$(cut -d' ' -f1 /proc/loadavg)
}

# row_end ROW...: the load after the row, for each ROW it timed.
row_end() {
  local row
  echo "   after:  $(uptime)"
  for row in "$@"; do
    LOAD_AFTER[$row]=$(cut -d' ' -f1 /proc/loadavg)
    LOAD_BEFORE[$row]=${LOAD_BEFORE[$row]:-${LOAD_BEFORE[$1]}}
  done
}

# cold_row ROW CONTEXT: REPEAT cold builds of CONTEXT by each builder.
cold_row() {
  local row=$1 ctx=$2 r
  row_start "$row"
  for r in $(seq "$REPEAT"); do
    docker_cold
    timed "docker-$row-$r" "${DOCKER_BUILD[@]}" "$ctx"
    add_time "$row" docker
    buildah_cold
    timed "buildah-$row-$r" "${B_BUILD[@]}" "$ctx"
    add_time "$row" buildah
    estiba_cold
    timed "estiba-$row-$r" "${E_BUILD[@]}" "$ctx"
    add_time "$row" estiba
    run_line "$row" "$r" docker buildah estiba
  done
  row_end "$row"
}

# run_line ROW RUN TOOL...: one run's times.
run_line() {
  local row=$1 r=$2 tool line
  shift 2
  line=$(printf '   %-12s run %d:' "$row" "$r")
  for tool in "$@"; do
    line+=$(printf '  %s %7.3f s' "$tool" "$(echo "${TIMES[$row-$tool]}" | awk '{ print $NF }')")
  done
  echo "$line"
}

node_row() {
  local ctx=$WORK/node prep=$WORK/npm-prep
  BASE=bench-node
  NODE_BASE_TAR=$WORK/node-base.tar "$REPO/scripts/node-base" "$ESTIBA" "$STORE" bench-node \
    >"$LOG/node-base.log" 2>&1 || { tail -n 20 "$LOG/node-base.log" >&2; die "scripts/node-base failed"; }
  rm -rf "$STORE"
  load_base bench-node "$WORK/node-base.tar"
  echo "filling an npm cache for the app (npm's registry, not timed)"
  mkdir -p "$prep" "$ctx"
  cat >"$prep/package.json" <<'EOF'
{ "name": "bench-app", "version": "1.0.0", "private": true,
  "dependencies": { "express": "^4.21.0", "cors": "^2.8.5", "morgan": "^1.10.0",
    "helmet": "^7.1.0", "compression": "^1.7.4", "cookie-parser": "^1.4.6",
    "dotenv": "^16.4.0", "jsonwebtoken": "^9.0.2", "lodash": "^4.17.21",
    "uuid": "^9.0.1", "winston": "^3.13.0", "dayjs": "^1.11.10" } }
EOF
  # install writes the lock; ci online caches what ci asks for (some
  # packuments besides the tarballs); ci offline checks the cache is enough.
  if ! (cd "$prep" && npm install --cache "$ctx/npm-cache" --no-audit --no-fund --loglevel=error &&
    rm -rf node_modules && npm ci --cache "$ctx/npm-cache" --no-audit --no-fund --loglevel=error &&
    rm -rf node_modules && npm ci --offline --cache "$ctx/npm-cache" --no-audit --no-fund \
    --loglevel=error) >"$LOG/npm-prep.log" 2>&1; then
    tail -n 20 "$LOG/npm-prep.log" >&2
    die "filling the npm cache from npm's registry failed"
  fi
  cp "$prep/package.json" "$prep/package-lock.json" "$ctx/"
  echo "   $(find "$prep/node_modules" -mindepth 1 -maxdepth 2 -name package.json | wc -l) packages installed (the lock), npm cache $(du -sh "$ctx/npm-cache" | cut -f1)"
  rm -rf "$prep"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM bench-node
WORKDIR /app
COPY npm-cache /root/.npm
COPY package.json package-lock.json ./
RUN npm ci --offline --no-audit --no-fund && ls node_modules | wc -l
EOF
  cold_row node "$ctx"
}

# debs_for_minbase DIR: the .debs of DEBS and of their dependencies that the
# minbase in DEBIAN_TAR lacks, downloaded with apt-get into DIR once (kept
# in BENCH_CACHE).
debs_for_minbase() {
  local dir=$1 have want
  if compgen -G "$dir/*.deb" >/dev/null; then return 0; fi
  echo "downloading the .debs of $DEBS and the dependencies minbase lacks (not timed)"
  # shellcheck disable=SC2086 # DEBS is a list of packages
  apt-cache show $DEBS >/dev/null 2>&1 || die "apt knows no package $DEBS: run apt-get update"
  have=$(tar -xOf "$DEBIAN_TAR" ./var/lib/dpkg/status | awk '/^Package: / { print $2 }' | sort -u)
  # shellcheck disable=SC2086 # DEBS is a list of packages
  want=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances $DEBS | grep -v '^[ <]' | sort -u)
  want=$(comm -23 <(echo "$want") <(echo "$have"))
  [ -n "$want" ] || die "minbase already has $DEBS"
  mkdir -p "$dir.tmp"
  # shellcheck disable=SC2086 # one package a word
  if ! (cd "$dir.tmp" && apt-get download -q $want) >"$LOG/apt-download.log" 2>&1; then
    tail -n 20 "$LOG/apt-download.log" >&2
    die "apt-get download failed (apt-get update first?)"
  fi
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
}

apt_row() {
  local ctx=$WORK/apt
  if ! command -v debootstrap >/dev/null && [ ! -x /usr/sbin/debootstrap ] &&
    [ ! -s "$BENCH_CACHE/bookworm-minbase.tar" ]; then
    echo
    echo "== ${TITLE[apt]}: SKIPPED, no debootstrap (apt-get install -y debootstrap, or scripts/bench-deps)"
    return 0
  fi
  BASE=bench-debian
  debian_minbase_tar
  load_base bench-debian "$DEBIAN_TAR"
  debs_for_minbase "$BENCH_CACHE/debs-${DEBS// /-}"
  mkdir -p "$ctx"
  cp -r "$BENCH_CACHE/debs-${DEBS// /-}" "$ctx/debs"
  echo "   $(find "$ctx/debs" -name '*.deb' | wc -l) .debs, $(du -sh "$ctx/debs" | cut -f1)"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM bench-debian
COPY debs /debs
RUN dpkg -i /debs/*.deb
EOF
  cold_row apt "$ctx"
}

# copy_context: the copy rows' context in $WORK/copy (made once, not timed)
# and CHANGED, the small file the one-file rows change.
copy_context() {
  local ctx=$WORK/copy
  CHANGED=$(copy_context_file "$ctx" $((FILES / 2)))
  [ ! -f "$ctx/Dockerfile" ] || return 0
  echo
  echo "generating the copy context: $FILES files of 1-4 KiB + $BIG_MB MiB in 5 files (not timed)"
  write_copy_context "$ctx" "$FILES" 1024 4096 "$BIG_MB" 5
  echo 'RUN find /data | wc -l' >>"$ctx/Dockerfile"
  [ -f "$CHANGED" ] || die "the copy context lacks $CHANGED"
}

# change_one_file: new random bytes in CHANGED, the same size.
change_one_file() {
  local size
  size=$(stat -c %s "$CHANGED")
  head -c "$size" /dev/urandom >"$CHANGED"
}

copy_row() {
  local ctx=$WORK/copy r
  BASE=bench-base
  copy_context
  if [ "$DOCKER_BUILDX" = 1 ]; then
    echo "docker's export: docker buildx build -o type=oci"
  else
    echo "docker's export: no buildx here, so \`docker save\` (uncompressed layers: shown, not the best peer)"
  fi
  row_start copy
  for r in $(seq "$REPEAT"); do
    docker_cold
    timed "docker-copy-$r" "${DOCKER_BUILD[@]}" "$ctx"
    add_time copy docker
    if [ "$DOCKER_BUILDX" = 1 ]; then
      timed "docker-export-$r" env DOCKER_BUILDKIT=1 "${DOCKER[@]}" buildx build --network=none \
        -o "type=oci,dest=$WORK/docker-oci.tar" "$ctx"
    else
      timed "docker-export-$r" "${DOCKER[@]}" save -o "$WORK/docker-save.tar" bench
    fi
    add_time export docker
    buildah_cold
    timed "buildah-copy-$r" "${B_BUILD[@]}" "$ctx"
    add_time copy buildah
    rm -f "$WORK/buildah-oci.tar"
    timed "buildah-export-$r" "${BUILDAH[@]}" push -q bench "oci-archive:$WORK/buildah-oci.tar"
    add_time export buildah
    estiba_cold
    timed "estiba-copy-$r" "${E_BUILD[@]}" "$ctx"
    add_time copy estiba
    timed "estiba-export-$r" "${E_BUILD[@]}" -o "type=oci,dest=$WORK/estiba-oci.tar" "$ctx"
    add_time export estiba
    timed "estiba-export-again-$r" "${E_BUILD[@]}" -o "type=oci,dest=$WORK/estiba-oci-2.tar" "$ctx"
    add_time export-again estiba
    run_line copy "$r" docker buildah estiba
    run_line export "$r" docker buildah estiba
    run_line export-again "$r" estiba
    rm -f "$WORK"/*-oci.tar "$WORK"/*-oci-2.tar "$WORK/docker-save.tar"
  done
  echo "   archives: gzip layers for buildah and estiba"
  row_end copy export export-again
  # The builders keep the last cold build: one file changed, then a rebuild.
  row_start onefile
  for r in $(seq "$REPEAT"); do
    change_one_file
    timed "docker-onefile-$r" "${DOCKER_BUILD[@]}" "$ctx"
    add_time onefile docker
    timed "estiba-onefile-$r" "${E_BUILD[@]}" "$ctx"
    add_time onefile estiba
    run_line onefile "$r" docker estiba
  done
  row_end onefile
}

# edit_row: the copy context with only `COPY . /data` (a Dockerfile outside
# it), built cold once, then rebuilt after one small file changed: the
# issue's one-file edit (nothing after the COPY to run again).
edit_row() {
  local ctx=$WORK/copy dockerfile=$WORK/copy-only.Dockerfile r
  BASE=bench-base
  copy_context
  printf 'FROM bench-base\nCOPY . /data\n' >"$dockerfile"
  echo
  echo "a cold build of \`COPY . /data\` alone by docker and estiba first (not timed)"
  docker_cold
  timed docker-edit-cold "${DOCKER_BUILD[@]}" -f "$dockerfile" "$ctx"
  estiba_cold
  timed estiba-edit-cold "${E_BUILD[@]}" -f "$dockerfile" "$ctx"
  row_start edit
  for r in $(seq "$REPEAT"); do
    change_one_file
    timed "docker-edit-$r" "${DOCKER_BUILD[@]}" -f "$dockerfile" "$ctx"
    add_time edit docker
    timed "estiba-edit-$r" "${E_BUILD[@]}" -f "$dockerfile" "$ctx"
    add_time edit estiba
    run_line edit "$r" docker estiba
  done
  row_end edit
}

stages_row() {
  BASE=bench-base
  write_stages_dockerfile "$WORK/stages" "$LOOP"
  cold_row stages "$WORK/stages"
}

noop_row() {
  local ctx=$WORK/steps r
  BASE=bench-base
  write_steps_dockerfile "$ctx" "$STEPS"
  echo
  echo "a cold build of $STEPS RUN steps by docker and estiba first (not timed)"
  docker_cold
  timed docker-noop-cold "${DOCKER_BUILD[@]}" "$ctx"
  estiba_cold
  timed estiba-noop-cold "${E_BUILD[@]}" "$ctx"
  row_start noop
  for r in $(seq "$REPEAT"); do
    timed "docker-noop-$r" "${DOCKER_BUILD[@]}" "$ctx"
    add_time noop docker
    timed "estiba-noop-$r" "${E_BUILD[@]}" "$ctx"
    add_time noop estiba
    run_line noop "$r" docker estiba
  done
  row_end noop
}

# --- the run ------------------------------------------------------------------

START=$(date +%s)
make_base_image
start_dockerd
"${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
echo "estiba: $("$ESTIBA" --version)   docker: $("${DOCKER[@]}" version --format '{{.Server.Version}}') (BuildKit)   $(buildah --version)"
echo "buildah storage: $("${BUILDAH[@]}" info --format '{{.store.GraphDriverName}}' 2>/dev/null || echo overlay), as root, --network none"
machine
load_base bench-base "$WORK/rootfs.tar"

for only in $ONLY; do
  case $only in
    node) node_row ;;
    apt) apt_row ;;
    copy) copy_row ;;
    stages) stages_row ;;
    noop) noop_row ;;
    edit) edit_row ;;
    *) die "unknown row $only (node, apt, copy, edit, stages, noop)" ;;
  esac
done

# --- the table ----------------------------------------------------------------

# cell ROW TOOL: "median (min–max)" of ROW's times for TOOL, or empty.
cell() {
  local -a t
  read -ra t <<<"${TIMES[$1-$2]:-}"
  [ ${#t[@]} -gt 0 ] || return 0
  printf '%s s (%.3f–%.3f)' "$(median "${t[@]}")" "$(min "${t[@]}")" "$(max "${t[@]}")"
}

# med ROW TOOL: the median, or empty.
med() {
  local -a t
  read -ra t <<<"${TIMES[$1-$2]:-}"
  [ ${#t[@]} -gt 0 ] || return 0
  median "${t[@]}"
}

echo
echo "median (range) of $REPEAT run(s), wall-clock; ratio = estiba / best peer; load = 1-min load average before → after the row"
echo
echo "| workload | docker | buildah | estiba | estiba/best peer | goal | | load |"
echo "|---|---|---|---|---|---|---|---|"
for row in "${ROWS[@]}"; do
  [ -n "${TIMES[$row-estiba]:-}" ] || continue
  e=$(med "$row" estiba)
  best=""
  for peer in docker buildah; do
    p=$(med "$row" "$peer")
    [ -n "$p" ] || continue
    # docker save does not compress: not the same work as the others' export.
    if [ "$row" = export ] && [ "$peer" = docker ] && [ "$DOCKER_BUILDX" = 0 ]; then continue; fi
    if [ -z "$best" ] || awk -v p="$p" -v b="$best" 'BEGIN { exit !(p < b) }'; then best=$p; fi
  done
  docker_cell=$(cell "$row" docker)
  if [ "$row" = export ] && [ "$DOCKER_BUILDX" = 0 ]; then docker_cell="$docker_cell (docker save, no gzip)"; fi
  if [ -n "$best" ]; then
    judge "$best" "$e" "${GOAL[$row]}"
    ratio="${RATIO}×"
    goal=${GOAL[$row]:+≤ ${GOAL[$row]}×}
    case $SPEED in PASS) verdict=met ;; MISS) verdict=MISS ;; *) verdict="" ;; esac
  else
    ratio="" goal="" verdict=""
  fi
  if [ "$row" = export-again ]; then
    judge_below "$e" 1
    goal="< 1 s"
    verdict=$([ "$BELOW" = PASS ] && echo met || echo MISS)
  fi
  echo "| ${TITLE[$row]} | $docker_cell | $(cell "$row" buildah) | $(cell "$row" estiba) | $ratio | $goal | $verdict | ${LOAD_BEFORE[$row]} → ${LOAD_AFTER[$row]} |"
done
echo
echo "(whole benchmark $(($(date +%s) - START)) s; load average at the end $(load_average))"
report_misses
exit 0
