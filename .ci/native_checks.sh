#!/usr/bin/env bash
# Native checks (issue 19), run by .ci/run after `npm ci` built build/:
#   1. the C++ unit tools that need no GPU (plm_matmul_test, plm_attention_test, plm_sampler_test, plm_parser_fuzz's
#      fixed cases and a short mutation loop), built in build/ next to the addon (only these targets: the core objects are reused);
#   2. the same tools built with AddressSanitizer + UndefinedBehaviorSanitizer (build-sanitize/, CPU only, -O1,
#      PLM_NATIVE_CHECKS: the core, the CPU kernels and the sampler, without the other model code) and run, with a
#      longer seeded mutation loop over the safetensors / JSON / config parsers. Any sanitizer report aborts its
#      tool, and any failing tool fails CI.
# Usage: .ci/native_checks.sh [--fuzz-seconds 60]
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_seconds=60
if [ "${1:-}" = "--fuzz-seconds" ]; then fuzz_seconds=$2; fi
jobs=$(nproc 2>/dev/null || echo 2)
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
targets=(plm_matmul_test plm_attention_test plm_sampler_test plm_parser_fuzz)
fixtures=test/fixtures/text
seeds=("$fixtures"/tied_llama3_gqa4_hd64_bf16_v5_sharded/model-0000[1-5]-of-00005.safetensors
  "$fixtures"/tied_llama3_gqa4_hd64_bf16_v5_sharded/model.safetensors.index.json
  "$fixtures"/*/config.json "$fixtures"/*/generation_config.json models/plm-tiny/config.json)

run_tools() {  # $1: build dir, $2: fuzz seconds
  local dir=$1
  "$dir/plm_matmul_test" --threads 2
  "$dir/plm_attention_test" --threads 2
  "$dir/plm_sampler_test"
  "$dir/plm_parser_fuzz" --seconds "$2" --seed "${PLM_FUZZ_SEED:-1}" "${seeds[@]}"
}

t0=$(date +%s)
# 1. Release tools in build/ (configured by cmake-js; the tools option only adds targets).
cmake -S . -B build -DPLM_BUILD_TOOLS=ON >/dev/null
cmake --build build --target "${targets[@]}" -j "$jobs" >/dev/null
run_tools build 10
t1=$(date +%s)
echo "native unit tools (release): $((t1 - t0)) s"

# 2. ASan + UBSan.
cmake -S . -B build-sanitize "${gen[@]}" -DPLM_CUDA=OFF -DPLM_NATIVE_CHECKS=ON -DPLM_SANITIZE=address,undefined \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" >/dev/null
cmake --build build-sanitize --target "${targets[@]}" -j "$jobs" >/dev/null
t2=$(date +%s)
echo "sanitizer build: $((t2 - t1)) s"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_tools build-sanitize "$fuzz_seconds"
echo "native checks under ASan+UBSan: $(( $(date +%s) - t2 )) s (0 sanitizer reports)"

# 3. Optional: the same parser targets under libFuzzer (clang; apt-get install clang libclang-rt-14-dev).
#    PLM_LIBFUZZER=1 bash .ci/native_checks.sh --fuzz-seconds 60
if [ "${PLM_LIBFUZZER:-0}" = 1 ]; then
  command -v clang++ >/dev/null || { echo "PLM_LIBFUZZER=1 needs clang++ with libFuzzer (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
  out=build-sanitize/libfuzzer
  mkdir -p "$out/corpus"
  clang++ -std=c++17 -O1 -g -DPLM_LIBFUZZER -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Inative \
    native/tools/plm_parser_fuzz.cpp native/core/{json,safetensors,config,error,tensor}.cpp -o "$out/plm_parser_libfuzzer"
  # Seeds: the first byte picks the target (0 safetensors, 1 JSON, 2 config); small valid safetensors files.
  python3 - "$out/corpus" <<'PY'
import json, struct, sys, glob
out = sys.argv[1]
def st(tensors, meta=None, pad=0):
    h, data, off = {}, b"", 0
    for name, dt, shape, size in tensors:
        n = size
        for s in shape:
            n *= s
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes((i * 7) % 256 for i in range(n))
        off += n
    if meta:
        h["__metadata__"] = meta
    hs = json.dumps(h).encode() + b" " * pad
    return struct.pack("<Q", len(hs)) + hs + data
seeds = [st([("a", "F32", [2, 3], 4), ("b.weight", "BF16", [4], 2)]),
         st([("x", "I64", [1], 8), ("y", "U8", [0], 1), ("z", "F16", [3, 1], 2)], {"format": "pt"}, pad=5), st([])]
for i, s in enumerate(seeds):
    open(f"{out}/st{i}", "wb").write(b"\x00" + s)
for i, f in enumerate(sorted(glob.glob("test/fixtures/text/*/config.json")) + ["models/plm-tiny/config.json"]):
    b = open(f, "rb").read()
    open(f"{out}/json{i}", "wb").write(b"\x01" + b)
    open(f"{out}/cfg{i}", "wb").write(b"\x02" + b)
PY
  (cd "$out" && ./plm_parser_libfuzzer -max_total_time="$fuzz_seconds" -max_len=8192 -print_final_stats=1 corpus 2>&1 | tail -6)
fi
