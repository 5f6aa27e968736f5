#!/usr/bin/env bash
# Issue 22's GPU figures in one call on an H100 (the device tool's nvidia-h100-x1), from the repository root:
#   OUT=/some/dir bash benchmarks/gpu/issue22.sh          # e.g. the device tool: OUT=$OUT bash benchmarks/gpu/issue22.sh
# Builds the CUDA backend and tools for sm_90a, runs the CUDA-vs-CPU parity test (every op on random inputs,
# every text/vision fixture end to end), writes a PLM-1B-shaped random checkpoint, then times, ours (plm_bench)
# and transformers (hf_peer.py, bf16 + sdpa) in the same run:
#   - time to first token of a 36-tile image (36 x 256 image tokens + text: vision + prefill + first sample),
#     with its vision / prefill split, and a per-op device profile of the same work (PLM_CUDA_PROFILE=1);
#   - decode ms/token at batch 1 (128 tokens), prefill 512 tokens/s, vision 36 tiles/s;
#   - batched decode at 8 and 32 sequences, when plm_bench has --sequences (the engine's many-sequence work).
# Targets checked in $OUT/issue22.json: TTFT 36 tiles <= 90 ms and below transformers' in the same run;
# decode <= 0.95 ms/token. Files: $OUT/issue22.json (summary, device name, commit), parity.json, bench_1b.json,
# hf_1b.json, profile_1b.txt, log.txt. PLM_BUDGET_S (default 540 s) bounds the whole run: a step that would not
# fit is skipped and logged. One failed step never stops the script.
set -u
OUT=${OUT:-/tmp/plm_issue22_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
START=$(date +%s)
BUDGET=${PLM_BUDGET_S:-540}
WORK=${PLM_WORK:-/tmp/plm_gpu_work}
TILES=${PLM_TTFT_TILES:-36}
mkdir -p "$WORK"
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$LOG"; }
# step NAME MIN_SECONDS TIMEOUT CMD...: runs when at least MIN_SECONDS of the budget remain
step() {
  local name=$1 need=$2 to=$3; shift 3
  local l; l=$(left)
  if [ "$l" -lt "$need" ]; then log "SKIP $name: ${l}s left of the budget, needs ${need}s"; return 99; fi
  [ "$to" -gt "$l" ] && to=$l
  log "RUN  $name (timeout ${to}s)"
  timeout -k 5 "$to" "$@" >> "$LOG" 2>&1
  local rc=$?
  log "END  $name rc=$rc"
  return $rc
}

export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONUNBUFFERED=1
log "perception-lm issue 22 GPU run; budget ${BUDGET}s; OUT=$OUT; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv >> "$LOG" 2>&1
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
log "gpu: ${GPU:-none}; cpus: $(nproc)"

# --- build (a copy of native/, as run.sh does; -a keeps mtimes so a warm machine rebuilds only what changed) ---
SRC="$WORK/src"
BUILD="$WORK/build"
rm -rf "$SRC"; mkdir -p "$SRC"
cp -a native CMakeLists.txt cmake "$SRC"/ 2>/dev/null || cp -a native CMakeLists.txt "$SRC"/
step configure 60 60 cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPLM_BUILD_TOOLS=ON -DPLM_CUDA_ARCHS=90a-real
step build 120 300 cmake --build "$BUILD" -j"$(nproc)" --target plm_cuda plm_cuda_test plm_bench -- -k
export PLM_CUDA_LIBRARY="$BUILD/Release/libplm_cuda.so"
TEST="$BUILD/plm_cuda_test"
BENCH="$BUILD/plm_bench"

# --- parity: every CUDA op against the CPU op, every fixture end to end ---
FIX=$(ls -d test/fixtures/text/*/ test/fixtures/vision/*/ 2>/dev/null | sed 's#/$##')
if [ -x "$TEST" ]; then
  step parity 60 150 "$TEST" --json "$OUT/parity.json" $FIX
else
  log "no plm_cuda_test binary (build failed?)"
fi

# --- PLM-1B-shaped random checkpoint and the figures ---
DIR="$WORK/plm-1b"
[ -f "$DIR/config.json" ] || step "checkpoint 1b" 60 150 python3 benchmarks/gpu/make_random_checkpoint.py --variant 1b --out "$DIR"
if [ -x "$BENCH" ] && [ -f "$DIR/config.json" ]; then
  step "bench 1b" 40 120 "$BENCH" --model "$DIR" --backend cuda --json "$OUT/bench_1b.json" \
    --decode-tokens 128 --prefill 512 --tiles "$TILES" --ttft-tiles "$TILES" --describe-tokens 64 --runs 5
  # where the TTFT's device time goes (per-op totals, vision and prefill of the same prompt)
  step "profile 1b" 30 60 env PLM_CUDA_PROFILE=1 "$BENCH" --model "$DIR" --backend cuda --json "$WORK/profile_1b.json" \
    --decode-tokens 0 --prefill "" --tiles "" --ttft-tiles "$TILES" --runs 3
  sed -n '/RUN  profile 1b/,/END  profile 1b/p' "$LOG" > "$OUT/profile_1b.txt"
  if grep -q -- '"--sequences"' native/tools/plm_bench.cpp; then
    for n in 8 32; do
      step "batched decode $n" 30 90 "$BENCH" --model "$DIR" --backend cuda --json "$OUT/bench_1b_seq$n.json" \
        --sequences "$n" --decode-tokens 128 --prefill "" --tiles "" --ttft-tiles 0 --runs 3
    done
  else
    log "batched decode: plm_bench has no --sequences yet (the engine's many-sequence work); not measured"
  fi
fi
[ "${PLM_HF_PEER:-1}" = 1 ] && [ -f "$DIR/config.json" ] && step "hf peer 1b" 60 150 python3 benchmarks/gpu/hf_peer.py \
  --model "$DIR" --json "$OUT/hf_1b.json" --decode-tokens 64 --prefill 512 --tiles "$TILES" --ttft-tiles "$TILES" \
  --describe-tokens 64 --runs 3 --time-budget 120

# --- summary: $OUT/issue22.json and a table in the log ---
python3 - "$OUT" "$TILES" "${GPU:-unknown}" "$(git rev-parse HEAD 2>/dev/null || echo unknown)" <<'PY' 2>&1 | tee -a "$LOG"
import json, os, sys, time
out, tiles, gpu, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(n):
    try:
        return json.load(open(os.path.join(out, n)))
    except Exception:
        return None
ours, hf, parity = load("bench_1b.json") or {}, load("hf_1b.json") or {}, load("parity.json") or {}
def fig(d):
    pf, vi = d.get("prefill", {}), d.get("vision", {})
    return {
        "ttft_ms": d.get("ttft_ms"), "ttft_tiles": d.get("ttft_tiles"),
        "ttft_vision_ms": d.get("ttft_vision_ms"), "ttft_prefill_ms": d.get("ttft_prefill_ms"),
        "decode_ms_per_token": d.get("decode_ms_per_token"),
        "prefill512_tokens_per_s": pf.get("512", {}).get("tokens_per_s"),
        "vision_tiles_per_s": vi.get(str(tiles), {}).get("tiles_per_s"),
        "describe_ms": d.get("describe_ms"),
    }
o, h = fig(ours), fig(hf)
seq = {}
for n in (8, 32):
    d = load(f"bench_1b_seq{n}.json")
    if d:
        seq[str(n)] = d
t, ht, dec = o["ttft_ms"], h["ttft_ms"], o["decode_ms_per_token"]
summary = {
    "issue": 22, "device": gpu, "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "ttft_tiles": tiles,
    "parity": {"passed": parity.get("passed"), "failed": parity.get("failed"), "device": parity.get("device")},
    "ours": o, "transformers": h, "batched_decode": seq or "not measured (plm_bench has no --sequences)",
    "targets": {
        f"ttft{tiles}_le_90ms": None if t is None else t <= 90.0,
        f"ttft{tiles}_ahead_of_transformers": None if t is None or ht is None else t < ht,
        "decode_le_0.95ms_per_token": None if dec is None else dec <= 0.95,
    },
}
json.dump(summary, open(os.path.join(out, "issue22.json"), "w"), indent=2)
f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"
print(f"device {gpu}; parity {summary['parity']['passed']} passed, {summary['parity']['failed']} failed")
print(f"{'':<14}{'TTFT ' + str(tiles) + ' ms':>12}{'vision ms':>11}{'prefill ms':>12}{'decode ms/tok':>15}{'prefill512 tok/s':>18}")
for name, d in (("ours", o), ("transformers", h)):
    print(f"{name:<14}{f(d['ttft_ms']):>12}{f(d['ttft_vision_ms']):>11}{f(d['ttft_prefill_ms']):>12}"
          f"{f(d['decode_ms_per_token'], 3):>15}{f(d['prefill512_tokens_per_s'], 0):>18}")
print("targets:", json.dumps(summary["targets"]))
PY
log "done in $(elapsed)s"
exit 0
