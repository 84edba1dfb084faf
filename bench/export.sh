#!/usr/bin/env bash
# Benchmark: `estiba save --format oci` of the same image twice. The first
# export compresses each layer (gzip) and keeps the compressed blob in the
# store; the second writes the kept blob and compresses nothing, so it should
# take about as long as copying the bytes.
#
# The image is one layer of BENCH_MB MiB of files that compress about as
# much as text does (base64 of random bytes, ~0.76 with gzip), made with
# `estiba import` into a fresh store for every run. Each run times the first
# and the second export; the median and range of each are printed. With
# BENCH_BEFORE=/path/to/an/older/estiba, the same export by that binary is
# timed too (it is the "before": every export of it compresses), and its
# archive must be byte for byte the one this estiba writes.
#
# Usage: bench/export.sh [--keep]
#   --keep    keep the work directory (printed at the end)
# Environment (defaults in brackets):
#   BENCH_MB [200]             size of the layer's files, MiB
#   BENCH_FILES [100]          number of files
#   BENCH_REPEAT [3]           runs (median and range)
#   BENCH_BEFORE []            an older estiba binary to compare with
#   BENCH_TMPDIR [/tmp]        where the files, stores and archives go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs GNU time and coreutils; no root, no docker. The page cache is not
# dropped: the store is warm for both exports (it was just written).

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_keep_only "$@"
MB=${BENCH_MB:-200}
FILES=${BENCH_FILES:-100}
BEFORE=${BENCH_BEFORE:-}
check_whole_numbers MB FILES REPEAT
[ "$FILES" -gt 0 ] || die "BENCH_FILES must be at least 1"
[ -x /usr/bin/time ] || die "no /usr/bin/time: install Debian's time package"
[ -z "$BEFORE" ] || [ -x "$BEFORE" ] || die "BENCH_BEFORE=$BEFORE is not an executable"
build_estiba_if_missing
make_work_dirs
KEPT="files $WORK/rootfs"

# base64 of random bytes: 3/4 of it is entropy, like text gzip squeezes.
echo "making $FILES files, about $MB MiB in all"
mkdir -p "$WORK/rootfs/data"
per_file=$((MB * 1024 * 1024 / FILES))
for i in $(seq "$FILES"); do
  head -c $((per_file * 3 / 4)) /dev/urandom | base64 -w 76 >"$WORK/rootfs/data/file-$i"
done
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .

# fresh_store BINARY STORE: an empty STORE holding the image `big` (its
# config dated by SOURCE_DATE_EPOCH, so every import gives the same image).
fresh_store() {
  rm -rf "$2"
  SOURCE_DATE_EPOCH=0 "$1" --root "$2" import "$WORK/rootfs.tar" big >"$LOG/import.log" 2>&1 ||
    { cat "$LOG/import.log" >&2; die "estiba import failed"; }
}

echo "estiba: $("$ESTIBA" --version)"
machine
first=() second=() before=()
for r in $(seq "$REPEAT"); do
  fresh_store "$ESTIBA" "$STORE"
  timed "first-$r" "$ESTIBA" --root "$STORE" save --format oci -o "$WORK/first.tar" big
  first+=("$SECS")
  timed "second-$r" "$ESTIBA" --root "$STORE" save --format oci -o "$WORK/second.tar" big
  second+=("$SECS")
  cmp -s "$WORK/first.tar" "$WORK/second.tar" || die "run $r: the two exports differ"
  line=$(printf '  run %d: first export %7.3f s   second %7.3f s' "$r" "${first[-1]}" "${second[-1]}")
  if [ -n "$BEFORE" ]; then
    fresh_store "$BEFORE" "$WORK/store-before"
    timed "before-$r" "$BEFORE" --root "$WORK/store-before" save --format oci \
      -o "$WORK/before.tar" big
    before+=("$SECS")
    cmp -s "$WORK/first.tar" "$WORK/before.tar" ||
      die "run $r: the archive differs from the one $BEFORE writes"
    line+=$(printf '   before %7.3f s (same bytes)' "${before[-1]}")
  fi
  echo "$line"
done

# summary NAME SECS...: "NAME: median M s (range A–B s)".
summary() {
  local name=$1
  shift
  printf '%-14s median %7.3f s  (range %.3f–%.3f s, %d runs)\n' "$name:" "$(median "$@")" \
    "$(printf '%s\n' "$@" | sort -g | head -n 1)" "$(max "$@")" "$#"
}
echo "archive: $(du -m "$WORK/first.tar" | cut -f1) MiB; load average $(load_average) at the end"
summary "first export" "${first[@]}"
summary "second export" "${second[@]}"
[ -z "$BEFORE" ] || summary "before" "${before[@]}"
