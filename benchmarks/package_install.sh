#!/usr/bin/env bash
# Package size, install time and size, and the cold start of `npx plm describe`, as users meet them:
#   1. npm pack perception-lm and its platform package (scripts/platform-packages.js, from build/Release
#      or prebuilds/), printing packed and unpacked sizes;
#   2. install both tarballs into an empty folder, RUNS times with the npm cache warm (--prefer-offline)
#      and once with an empty cache (every dependency downloaded from the registry);
#   3. `npx plm describe samples/scene3.png` in that folder: first with the installed files evicted from
#      the page cache (posix_fadvise DONTNEED on each file, so other processes' cached files stay), then
#      again warm.
# Results go to stdout; benchmarks/RESULTS.md ("Package: size, install and cold start") records a run.
#
#   bash benchmarks/package_install.sh            # RUNS=3
#   RUNS=1 KEEP=1 bash benchmarks/package_install.sh   # keep the temp folder
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${RUNS:-3}"
tmp="$(mktemp -d /tmp/plm-pkg-XXXXXX)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
cd "$root"
[ -f dist/lib/cli.js ] || npm run build:ts >/dev/null
from=build/Release
[ -d "prebuilds/$(node -p 'process.platform + "-" + process.arch')" ] && from="prebuilds/$(node -p 'process.platform + "-" + process.arch')"
cuda_flag=()
[ -f "$from/libplm_cuda.so" ] || cuda_flag=(--allow-missing-cuda)
platform_tgz="$(node scripts/platform-packages.js stage --from "$from" --out "$tmp/platform" --pack "${cuda_flag[@]}" | tail -1)"
npm pack --json --ignore-scripts --pack-destination "$tmp" > "$tmp/pack.json"
main_tgz="$tmp/$(node -p "require('$tmp/pack.json')[0].filename")"
node -e "
const j = require('$tmp/pack.json')[0];
const mib = (b) => (b / 1048576).toFixed(2) + ' MiB';
console.log('perception-lm tarball: ' + mib(j.size) + ' packed, ' + mib(j.unpackedSize) + ' unpacked, ' + j.entryCount + ' files');
const fs = require('fs');
console.log('$(basename "$platform_tgz"): ' + mib(fs.statSync('$platform_tgz').size) + ' packed');
"
tar -tzvf "$platform_tgz" | awk '{ s += $3 } END { printf "  unpacked %.2f MiB\n", s / 1048576 }'

install() { # $1: folder, rest: npm flags
  local app="$1"; shift
  rm -rf "$app"; mkdir -p "$app"
  echo '{"name":"app","version":"1.0.0","private":true}' > "$app/package.json"
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$app" && npm install --no-audit --no-fund --loglevel=error "$@" "$main_tgz" "$platform_tgz" >/dev/null)
  t1=$(date +%s.%N)
  printf '%.1f' "$(echo "$t1 - $t0" | bc)"
}

echo "install, npm cache warm (--prefer-offline):"
for i in $(seq 1 "$runs"); do echo "  run $i: $(install "$tmp/app" --prefer-offline) s"; done
echo "install, empty npm cache (every package from the registry):"
echo "  $(install "$tmp/app-cold" --cache "$tmp/empty-cache") s"
app="$tmp/app"
echo "installed: node_modules $(du -sh "$app/node_modules" | cut -f1), perception-lm $(du -sh "$app/node_modules/perception-lm" | cut -f1)," \
  "$(basename "$platform_tgz" .tgz) $(du -sh "$app/node_modules/@perception-lm" | cut -f1), $(ls "$app/node_modules" | wc -l) top-level packages"

evict() {
  python3 - "$1" <<'EOF'
import os, sys
n = 0
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(d, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        n += 1
print(f"  evicted {n} files from the page cache", file=sys.stderr)
EOF
}
sample="node_modules/perception-lm/samples/scene3.png"
describe() {
  local t0 t1 out
  t0=$(date +%s.%N)
  out="$(cd "$app" && npx --no-install plm describe "$sample")"
  t1=$(date +%s.%N)
  printf '%.2f s: %s' "$(echo "$t1 - $t0" | bc)" "$out"
}
echo "npx plm describe $sample:"
evict "$app"
echo "  cold (files evicted): $(describe)"
for i in $(seq 1 "$runs"); do echo "  warm run $i: $(describe)"; done
echo "machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg); node $(node -v), npm $(npm -v)"
