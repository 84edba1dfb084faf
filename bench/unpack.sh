#!/usr/bin/env bash
# Benchmark: unpacking a layer with estiba against GNU tar (`tar -xf`) on the
# same layer, in one run, and print the ratios (wall and system time).
#
# estiba has no command that only unpacks, so it is measured through the
# smallest builds that do, each on a fresh store holding only the image
# (imported from the layer tar, not timed):
#   export    `FROM img` with `-o type=local,dest=DIR`: the image's layer
#             unpacked into a fresh DIR (what `unpack_layer` costs, plus
#             starting estiba and reading the image);
#   snapshot  `FROM img` + `RUN true` (--network none): the layer unpacked
#             into a snapshot, the RUN's container and its (empty) layer;
#   run-only  the same build again with --no-cache and the snapshot already
#             there: what `snapshot` costs besides unpacking.
# tar: `tar -xf LAYER` into a fresh directory, as root (owners, modes and
# times kept, as estiba keeps them).
#
# Two layers, each one image (busybox to run `true`, plus):
#   copy      20,000 small files (1-4 KiB, 20 per directory) + 500 MiB in 5
#             large files: the COPY-heavy context of bench/copy-context.sh;
#   node      a node_modules-like tree: many packages of small files in
#             nested directories, with `.bin` symlinks.
#
# Usage: bench/unpack.sh [--small] [--keep]
#   --small   2,000 files + 50 MB, and a tenth of the node tree
#   --keep    keep the layers and stores (printed at the end)
# Environment (defaults in brackets):
#   BENCH_REPEAT [3]        runs of each measurement (median and range)
#   BENCH_NODE_PACKAGES [1500|150]  packages in the node tree
#   BENCH_TMPDIR [/tmp]     where layers, stores and unpacked trees go
#   ESTIBA [target/release/estiba]  the binary (built with cargo if missing)
#
# Needs root (RUN's container; tar keeps owners only as root), busybox-static,
# GNU tar, GNU time and python3. Nothing is started in the background. The
# page cache is not dropped: every layer is warm for both (it was just
# written); each timed run starts after a `sync`, so one run's dirty pages
# are not written back during the next.

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_small_keep "$@"
copy_workload_size
if [ "$SMALL" = 1 ]; then
  NODE_PACKAGES=${BENCH_NODE_PACKAGES:-150}
else
  NODE_PACKAGES=${BENCH_NODE_PACKAGES:-1500}
fi
check_whole_numbers FILES BIG_MB REPEAT NODE_PACKAGES
[ "$REPEAT" -ge 1 ] || die "BENCH_REPEAT must be at least 1"

# Targets (issue 13): estiba's unpack at most tar's wall time, and at most
# 1.5 times its system time.
TARGET_WALL=1.0
TARGET_SYS=1.5

[ "$(id -u)" = 0 ] || die "needs root (RUN's container, tar keeping owners)"
[ -x /bin/busybox ] || die "no /bin/busybox: install busybox-static (scripts/test-deps)"
[ -x /usr/bin/time ] || die "no /usr/bin/time: install Debian's time package"
command -v python3 >/dev/null || die "python3 is needed to generate the layers"
tar --version | grep -q 'GNU tar' || die "needs GNU tar"
build_estiba_if_missing

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d "$TMPBASE/estiba-bench.XXXXXX")
LOG=$WORK/log
STORE=$WORK/store
mkdir -p "$LOG"
KEPT="layers in $WORK"

# --- the layers -------------------------------------------------------------

# A busybox rootfs in $WORK/rootfs (make_base_image), then each layer is that
# rootfs plus its workload, as one tar.
make_base_image
write_copy_context "$WORK/copy/data" "$FILES" 1024 4096 "$BIG_MB" 5
rm -f "$WORK/copy/data/Dockerfile"

# write_node_tree DIR PACKAGES: a node_modules-like tree under DIR.
write_node_tree() {
  python3 - "$@" <<'PY'
import os, random, sys
root, packages = sys.argv[1], int(sys.argv[2])
rng = random.Random(20251)
nm = os.path.join(root, "app", "node_modules")
os.makedirs(os.path.join(nm, ".bin"), exist_ok=True)
for p in range(packages):
    pkg = os.path.join(nm, f"pkg{p:04d}")
    dirs = [pkg] + [os.path.join(pkg, d) for d in ("lib", "lib/util", "dist", "dist/esm", "types")]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(pkg, "package.json"), "w") as f:
        f.write('{"name": "pkg%04d", "version": "1.0.%d", "main": "lib/index.js"}\n' % (p, p))
    for i in range(rng.randint(10, 40)):
        d = rng.choice(dirs)
        size = min(int(rng.lognormvariate(7.0, 1.2)), 256 * 1024)
        with open(os.path.join(d, f"m{i:02d}.js"), "wb") as f:
            f.write(rng.randbytes(size))
    if p % 5 == 0:
        os.chmod(os.path.join(pkg, "package.json"), 0o755)
        os.symlink(f"../pkg{p:04d}/package.json", os.path.join(nm, ".bin", f"bin{p:04d}"))
PY
}
write_node_tree "$WORK/node" "$NODE_PACKAGES"

# make_layer NAME DIR: $WORK/NAME.tar is the busybox rootfs plus DIR's tree.
make_layer() {
  local name=$1 dir=$2
  tar -C "$WORK/rootfs" -cf "$WORK/$name.tar" .
  tar -C "$dir" -rf "$WORK/$name.tar" .
  rm -rf "$dir"
}
make_layer copy "$WORK/copy"
make_layer node "$WORK/node"

mkdir -p "$WORK/ctx-run" "$WORK/ctx-export"
printf 'FROM img\nRUN true\n' >"$WORK/ctx-run/Dockerfile"
printf 'FROM img\n' >"$WORK/ctx-export/Dockerfile"

# --- measuring ----------------------------------------------------------------

# fresh_store LAYER: an empty store with the layer imported as `img`.
fresh_store() {
  rm -rf "$STORE"
  SOURCE_DATE_EPOCH=0 "$ESTIBA" --root "$STORE" import "$1" img >"$LOG/import.log" 2>&1 ||
    { cat "$LOG/import.log" >&2; die "estiba import failed"; }
}

# ratio A B: A / B, three decimals.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "inf" }'
}

# verdict RATIO TARGET: PASS or MISS (counted).
verdict() {
  if awk -v r="$1" -v t="$2" 'BEGIN { exit !(r != "inf" && r + 0 <= t + 0) }'; then
    echo PASS
  else
    MISSES=$((MISSES + 1))
    echo MISS
  fi
}

echo "estiba: $("$ESTIBA" --version)   tar: $(tar --version | head -n 1)"
machine
echo "layers: copy $((FILES)) files + ${BIG_MB} MiB ($(du -m "$WORK/copy.tar" | cut -f1) MB tar," \
  "$(tar -tf "$WORK/copy.tar" | wc -l) entries), node $NODE_PACKAGES packages" \
  "($(du -m "$WORK/node.tar" | cut -f1) MB tar, $(tar -tf "$WORK/node.tar" | wc -l) entries)"

declare -A W S
for layer in copy node; do
  tar_w=() tar_s=() exp_w=() exp_s=() snap_w=() snap_s=() run_w=() run_s=()
  for r in $(seq "$REPEAT"); do
    rm -rf "$WORK/out"
    mkdir "$WORK/out"
    timed "tar-$layer-$r" tar -C "$WORK/out" -xf "$WORK/$layer.tar"
    tar_w+=("$SECS") tar_s+=("$SYS")
    rm -rf "$WORK/out"

    fresh_store "$WORK/$layer.tar"
    timed "export-$layer-$r" "$ESTIBA" --root "$STORE" build --progress quiet \
      -o "type=local,dest=$WORK/out" "$WORK/ctx-export"
    exp_w+=("$SECS") exp_s+=("$SYS")
    rm -rf "$WORK/out"

    fresh_store "$WORK/$layer.tar"
    timed "snapshot-$layer-$r" "$ESTIBA" --root "$STORE" build --progress quiet \
      --network none -t out "$WORK/ctx-run"
    snap_w+=("$SECS") snap_s+=("$SYS")
    timed "run-only-$layer-$r" "$ESTIBA" --root "$STORE" build --progress quiet \
      --network none --no-cache -t out "$WORK/ctx-run"
    run_w+=("$SECS") run_s+=("$SYS")
    printf '  %-4s run %d: tar %6.3f s (sys %5.2f)   export %6.3f s (sys %5.2f)   snapshot %6.3f s (sys %5.2f)   run-only %6.3f s (sys %5.2f)\n' \
      "$layer" "$r" "${tar_w[-1]}" "${tar_s[-1]}" "${exp_w[-1]}" "${exp_s[-1]}" \
      "${snap_w[-1]}" "${snap_s[-1]}" "${run_w[-1]}" "${run_s[-1]}"
  done
  W[$layer-tar]=$(median "${tar_w[@]}") S[$layer-tar]=$(median "${tar_s[@]}")
  W[$layer-export]=$(median "${exp_w[@]}") S[$layer-export]=$(median "${exp_s[@]}")
  W[$layer-snapshot]=$(median "${snap_w[@]}") S[$layer-snapshot]=$(median "${snap_s[@]}")
  W[$layer-run]=$(median "${run_w[@]}") S[$layer-run]=$(median "${run_s[@]}")
  printf '  %-4s wall: tar %s  export %s  snapshot %s  run-only %s\n' "$layer" \
    "$(spread "${tar_w[@]}")" "$(spread "${exp_w[@]}")" "$(spread "${snap_w[@]}")" "$(spread "${run_w[@]}")"
  printf '  %-4s sys:  tar %s  export %s  snapshot %s  run-only %s\n' "$layer" \
    "$(spread "${tar_s[@]}")" "$(spread "${exp_s[@]}")" "$(spread "${snap_s[@]}")" "$(spread "${run_s[@]}")"
done

echo
echo "load average at the end: $(load_average)"
echo
printf '%-6s %-9s %9s %9s %8s %8s %6s %9s %9s %8s %8s %6s\n' \
  layer what "wall s" "tar s" ratio target "" "sys s" "tar sys" ratio target ""
for layer in copy node; do
  # snapshot-minus-run: the unpack into a snapshot alone (the build's own
  # overhead, measured by run-only, taken out).
  unpack_w=$(awk -v a="${W[$layer-snapshot]}" -v b="${W[$layer-run]}" 'BEGIN { printf "%.3f", a - b }')
  unpack_s=$(awk -v a="${S[$layer-snapshot]}" -v b="${S[$layer-run]}" 'BEGIN { printf "%.3f", a - b }')
  for what in export snapshot-run; do
    if [ "$what" = export ]; then w=${W[$layer-export]} s=${S[$layer-export]}; else w=$unpack_w s=$unpack_s; fi
    rw=$(ratio "$w" "${W[$layer-tar]}")
    rs=$(ratio "$s" "${S[$layer-tar]}")
    printf '%-6s %-9s %9s %9s %7sx %7sx %6s %9s %9s %7sx %7sx %6s\n' "$layer" "$what" \
      "$w" "${W[$layer-tar]}" "$rw" "$TARGET_WALL" "$(verdict "$rw" "$TARGET_WALL")" \
      "$s" "${S[$layer-tar]}" "$rs" "$TARGET_SYS" "$(verdict "$rs" "$TARGET_SYS")"
  done
done
echo "(export: FROM img -o type=local; snapshot-run: FROM img + RUN true on a fresh store minus the same build with the snapshot there; medians of $REPEAT)"
report_misses
