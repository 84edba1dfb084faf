#!/usr/bin/env bash
# Benchmark: `estiba push` and `estiba pull` against `skopeo copy` of the
# same image, to and from a docker-registry this script starts on loopback.
#
# The image (about BENCH_MB MiB, made here, no network): Debian's busybox
# imported as a base, then five COPY layers built by `estiba build`
# (SOURCE_DATE_EPOCH=0), from incompressible to very compressible:
#   1  one file of random bytes             (24%, gzip ratio ~1.0)
#   2  100 files of random bytes            (20%, ~1.0)
#   3  50 files of base64 of random bytes   (20%, ~0.76)
#   4  20 files of `od` decimal text        (20%, ~0.46)
#   5  10 files of `seq` output             (16%, ~0.28)
# The store keeps layers uncompressed; it is an OCI layout, so skopeo reads
# the same image from it (`oci:STORE:docker.io/library/bench:latest`).
#
# Each run, every push goes to a registry started for it alone (fresh
# storage, a new port), so no blob is skipped or mounted:
#   push, compressing   estiba's first push from a copy of the just-built
#                       store (it gzips each layer and keeps the blobs)
#                       against skopeo from that store (skopeo gzips too)
#   push, gzip kept     estiba's second push (the kept gzip blobs) against
#                       skopeo from a layout of those same gzip blobs
#                       (`estiba save --format oci`): nothing to compress
#   push, all exist     estiba pushing again where every blob is
#   pull, empty store   `estiba --root EMPTY pull` against skopeo into an
#                       empty OCI layout, both from the gzip-kept registry
# and estiba's peak RSS (GNU time) in every push and pull. Each figure is
# the median and range of BENCH_REPEAT runs; the table gives the ratio
# estiba/skopeo and MET or MISSED per goal. A missed goal is printed, not
# an error: the script exits non-zero only when something fails.
#
# Usage: bench/registry.sh [--keep]
#   --keep    keep the work directory (stores, layouts, logs; printed at
#             the end); otherwise it is deleted
# Environment (defaults in brackets):
#   BENCH_MB [500]             size of the five layers' files, MiB
#   BENCH_REPEAT [3]           runs (median and range)
#   BENCH_TMPDIR [/tmp]        where the files, stores and registries go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root (as the other benchmarks), Debian's docker-registry, skopeo,
# busybox-static (scripts/test-deps installs them), GNU time, curl and
# python3 (a free port), and about 8 × BENCH_MB of disk. The page cache is
# not dropped: what each push reads was just written or read. Each timed
# command starts after a `sync`. skopeo keeps its blob info cache in
# /var/lib/containers/cache; the fresh registry per push makes it useless.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_keep_only "$@"
MB=${BENCH_MB:-500}
check_whole_numbers MB REPEAT
[ "$MB" -ge 10 ] || die "BENCH_MB must be at least 10"
[ "$REPEAT" -ge 1 ] || die "BENCH_REPEAT must be at least 1"

REGISTRY_BIN=/usr/bin/docker-registry
# Goals (issue 10, "Speed").
TARGET_RATIO=0.7
TARGET_EXISTS_S=0.5
TARGET_RSS_MB=64

[ "$(id -u)" = 0 ] || die "run it as root, as the other benchmarks"
[ -x "$REGISTRY_BIN" ] || die "no $REGISTRY_BIN: install Debian's docker-registry (scripts/test-deps)"
command -v skopeo >/dev/null || die "no skopeo: install Debian's skopeo (scripts/test-deps)"
[ -x /bin/busybox ] || die "no /bin/busybox: install busybox-static (scripts/test-deps)"
[ -x /usr/bin/time ] || die "no /usr/bin/time: install Debian's time package"
command -v curl >/dev/null || die "no curl: install Debian's curl"
command -v python3 >/dev/null || die "python3 is needed to find a free port"
build_estiba_if_missing
make_work_dirs
KEPT="work directory $WORK"
SKOPEO=(skopeo --insecure-policy)

# --- the registry -------------------------------------------------------------

REG_HOST=""
REG_COUNT=0

# Stops the last registry (bench/lib.sh's start_registry) and starts an
# empty one in a directory of its own; sets REG_HOST. The last one's
# storage goes unless --keep.
fresh_registry() {
  stop_registry
  [ "$KEEP" = 1 ] || [ "$REG_COUNT" = 0 ] || rm -rf "$WORK/registry-$REG_COUNT"
  REG_COUNT=$((REG_COUNT + 1))
  start_registry "$WORK/registry-$REG_COUNT"
  REG_HOST=$REGISTRY
}

# --- the image ------------------------------------------------------------------

# fill DIR FILES MIB KIND: FILES files in DIR, MIB MiB in all, of KIND:
# random, base64, od or seq.
fill() {
  local dir=$1 files=$2 mib=$3 kind=$4 i bytes
  mkdir -p "$dir"
  bytes=$((mib * 1024 * 1024 / files))
  for i in $(seq "$files"); do
    case $kind in
      random) head -c "$bytes" /dev/urandom ;;
      base64) head -c $((bytes * 3 / 4)) /dev/urandom | base64 -w 76 ;;
      # 16 random bytes make a line of 49 characters.
      od) head -c $((bytes * 16 / 49)) /dev/urandom | od -An -tu2 -w16 ;;
      # Lines of 10 characters (nine digits), each file counting on.
      seq) seq $((100000000 + i * bytes / 10)) $((100000000 + (i + 1) * bytes / 10 - 1)) ;;
    esac >"$dir/f$i"
  done
}

echo "making a $MB MiB image: busybox and five COPY layers"
make_base_image
fresh_estiba_store
CTX=$WORK/ctx
fill "$CTX/l1" 1 $((MB * 24 / 100)) random
fill "$CTX/l2" 100 $((MB * 20 / 100)) random
fill "$CTX/l3" 50 $((MB * 20 / 100)) base64
fill "$CTX/l4" 20 $((MB * 20 / 100)) od
fill "$CTX/l5" 10 $((MB * 16 / 100)) seq
{
  echo "FROM bench-base"
  for l in 1 2 3 4 5; do echo "COPY l$l /data/l$l"; done
} >"$CTX/Dockerfile"
SOURCE_DATE_EPOCH=0 "${ESTIBA_BUILD[@]}" "$CTX" >"$LOG/build.log" 2>&1 ||
  { tail -n 20 "$LOG/build.log" >&2; die "estiba build failed"; }
rm -rf "$CTX"
IMAGE=docker.io/library/bench:latest
"${SKOPEO[@]}" inspect "oci:$STORE:$IMAGE" >"$LOG/skopeo-inspect.json" ||
  die "skopeo cannot read the image in estiba's store as oci:$STORE:$IMAGE"
image_mb=$(du -sm "$STORE/blobs" | cut -f1)
# Each run pushes first from a copy of the store as built (no gzip blobs).
PRISTINE=$WORK/store-built
mv "$STORE" "$PRISTINE"

# The same image with the gzip blobs estiba makes, as an OCI layout.
GZIP_LAYOUT=$WORK/layout-gzip
cp -a "$PRISTINE" "$STORE"
"$ESTIBA" --root "$STORE" save --format oci -o "$WORK/gzip.tar" bench >"$LOG/save.log" 2>&1 ||
  { cat "$LOG/save.log" >&2; die "estiba save failed"; }
mkdir -p "$GZIP_LAYOUT"
tar -C "$GZIP_LAYOUT" -xf "$WORK/gzip.tar"
rm -f "$WORK/gzip.tar"
gzip_ref=$(python3 -c 'import json, sys
for m in json.load(open(sys.argv[1]))["manifests"]:
    print(m.get("annotations", {}).get("org.opencontainers.image.ref.name", ""))' \
  "$GZIP_LAYOUT/index.json" | head -n 1)
GZIP_SRC="oci:$GZIP_LAYOUT${gzip_ref:+:$gzip_ref}"
"${SKOPEO[@]}" inspect "$GZIP_SRC" >/dev/null || die "skopeo cannot read $GZIP_SRC"
gzip_mb=$(du -sm "$GZIP_LAYOUT/blobs" | cut -f1)
rm -rf "$STORE"

echo "estiba: $("$ESTIBA" --version)   skopeo: $(skopeo --version | cut -d' ' -f3)" \
  "  registry: $("$REGISTRY_BIN" --version 2>/dev/null | awk '{print $NF}')"
machine
echo "image: $(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["Layers"]))' \
  "$LOG/skopeo-inspect.json") layers," \
  "$image_mb MiB uncompressed, $gzip_mb MiB gzip"

# --- the runs ---------------------------------------------------------------------

declare -A T # "NAME" -> seconds of each run, space-separated
declare -A M # "NAME" -> peak RSS (KB) of each run, space-separated

# run NAME CMD...: one timed run of CMD, kept under NAME.
run() {
  local name=$1
  shift
  timed "$name-$r" "$@"
  T[$name]+="$SECS "
  M[$name]+="$RSS_KB "
  printf '    %-22s %8.3f s  %7s MB\n' "$name" "$SECS" "$(kb_to_mb "$RSS_KB")"
}

EMPTY_STORE=$WORK/store-pulled
EMPTY_LAYOUT=$WORK/layout-pulled
for r in $(seq "$REPEAT"); do
  echo "  run $r"
  rm -rf "$STORE" "$EMPTY_STORE" "$EMPTY_LAYOUT"
  cp -a "$PRISTINE" "$STORE"

  fresh_registry
  run skopeo-compressing "${SKOPEO[@]}" copy --quiet "oci:$STORE:$IMAGE" \
    "docker://$REG_HOST/bench:latest" --dest-tls-verify=false
  fresh_registry
  run estiba-compressing "$ESTIBA" --root "$STORE" push --progress quiet bench "$REG_HOST/bench:latest"
  fresh_registry
  run skopeo-gzip "${SKOPEO[@]}" copy --quiet "$GZIP_SRC" \
    "docker://$REG_HOST/bench:latest" --dest-tls-verify=false
  fresh_registry
  run estiba-gzip "$ESTIBA" --root "$STORE" push --progress quiet bench "$REG_HOST/bench:latest"
  run estiba-exists "$ESTIBA" --root "$STORE" push --progress plain bench "$REG_HOST/bench:latest"
  # An uploaded blob's line: "#1 0.5 sha256:0123456789ab 12.6MB 0.1s done".
  if grep -qE '^#[0-9]+ [0-9.]+ sha256:[0-9a-f]{12} .* done$' "$LOG/estiba-exists-$r.log"; then
    die "the push where every blob exists uploaded some (see $LOG/estiba-exists-$r.log)"
  fi

  # Both pull what estiba pushed (its gzip blobs) from the same registry.
  run skopeo-pull "${SKOPEO[@]}" copy --quiet "docker://$REG_HOST/bench:latest" \
    "oci:$EMPTY_LAYOUT:bench" --src-tls-verify=false
  run estiba-pull "$ESTIBA" --root "$EMPTY_STORE" pull "$REG_HOST/bench:latest"
  "$ESTIBA" --root "$EMPTY_STORE" inspect "$REG_HOST/bench:latest" >/dev/null ||
    die "estiba has no image $REG_HOST/bench:latest after the pull"
done
stop_registry
# For cleanup's message with --keep.
STORE="$STORE (pulled: $EMPTY_STORE)"

# --- the table ------------------------------------------------------------------

# cell NAME: "median (min–max)" of NAME's seconds.
cell() {
  local -a v
  read -r -a v <<<"${T[$1]}"
  spread "${v[@]}"
}

# verdict PASS|MISS: MET or MISSED.
verdict() {
  if [ "$1" = PASS ]; then echo MET; else echo MISSED; fi
}

# row LABEL ESTIBA_NAME SKOPEO_NAME: a row comparing the two, judged
# against TARGET_RATIO.
row() {
  local -a e s
  read -r -a e <<<"${T[$2]}"
  read -r -a s <<<"${T[$3]}"
  judge "$(median "${s[@]}")" "$(median "${e[@]}")" "$TARGET_RATIO"
  printf '%-34s %-26s %-26s %7sx  %-7s %s\n' "$1" "$(cell "$2")" "$(cell "$3")" "$RATIO" \
    "<= ${TARGET_RATIO}x" "$(verdict "$SPEED")"
}

echo
printf '%-34s %-24s %-24s %8s  %-7s %s\n' "seconds, median (range) of $REPEAT" estiba skopeo ratio goal verdict
row "push, compressing (raw layers)" estiba-compressing skopeo-compressing
row "push, gzip kept / gzip layout" estiba-gzip skopeo-gzip
read -r -a ex <<<"${T[estiba-exists]}"
judge_below "$(median "${ex[@]}")" "$TARGET_EXISTS_S"
printf '%-34s %-26s %-24s %8s  %-7s %s\n' "push, every blob exists" "$(cell estiba-exists)" - - \
  "< ${TARGET_EXISTS_S} s" "$(verdict "$BELOW")"
row "pull into an empty store" estiba-pull skopeo-pull

echo
printf '%-34s %10s %10s  %-7s %s\n' "peak RSS, MB (max of $REPEAT)" estiba skopeo goal verdict
for pair in "push, compressing:estiba-compressing:skopeo-compressing" \
  "push, gzip kept:estiba-gzip:skopeo-gzip" "push, every blob exists:estiba-exists:" \
  "pull:estiba-pull:skopeo-pull"; do
  IFS=: read -r label e s <<<"$pair"
  read -r -a ek <<<"${M[$e]}"
  judge_rss "$(max "${ek[@]}")"
  skopeo_mb=-
  if [ -n "$s" ]; then
    read -r -a sk <<<"${M[$s]}"
    skopeo_mb=$(kb_to_mb "$(max "${sk[@]}")")
  fi
  printf '%-34s %10s %10s  %-7s %s\n' "$label" "$RSS_MB" "$skopeo_mb" "< $TARGET_RSS_MB" "$(verdict "$RSS_OK")"
done
echo "(ratio: estiba median / skopeo median; load average at the end: $(load_average))"
report_misses
exit 0
