#!/usr/bin/env bash
# Speed figures of the GPU lanes (issue 5) on the GPU machine: writes a synthetic
# Qwen2.5-7B-shaped Q4_K_M model (llama.cpp's reference shape: hidden 3584, 28 layers, 28 heads
# over 4 KV heads, ffn 18944, vocab 151936) unless $MODEL exists, then runs `lockstep bench` on
# each lane: prefill of 512 tokens, time to first token, 128 decode steps, the device copy
# bandwidth measured in the same run, and the capture overhead of a 128-token prefill; then 128
# decode steps after a one-token prompt, as llama-bench's tg128 decodes (from an empty cache),
# the setting of llama.cpp's 268 tok/s on this shape.
# Usage: scripts/gpu-speed.sh LOCKSTEP OUT_DIR   (env: MODEL, LANES, REPEAT)
set -euo pipefail
exe=$1
out=$2
model=${MODEL:-/tmp/qwen2.5-7b-shape-Q4_K_M.gguf}
mkdir -p "$out"
if [ ! -f "$model" ]; then
  start=$(date +%s)
  "$exe" gen-model --family qwen2 --hidden 3584 --layers 28 --heads 28 --kv-heads 4 --ffn 18944 \
    --vocab 151936 --type Q4_K_M --threads "$(nproc)" --quiet --out "$model"
  echo "model written in $(($(date +%s) - start)) s: $model ($(du -h "$model" | cut -f1))"
fi
for lane in ${LANES:-cuda cuda-graph}; do
  echo "== $lane"
  "$exe" bench "$model" --lane "$lane" --prefill 512 --decode 128 --capture-tokens 128 \
    --repeat "${REPEAT:-3}" --json > "$out/bench-$lane.json"
  python3 - "$out/bench-$lane.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
bw = j["bandwidth"]["best_bytes_per_s"]
print(f"device copy {bw/1e12:.2f} TB/s | prefill {j['prefill']['tokens']}: "
      f"{j['prefill']['tokens_per_s']:.0f} tok/s, TTFT {1e3*j['prefill']['time_to_first_token_s']:.1f} ms | "
      f"decode {j['decode']['tokens_per_s']:.1f} tok/s, {j['weight_bytes_per_token']/1e9:.2f} GB/token, "
      f"{100*j['bandwidth_fraction']:.1f}% of copy bandwidth")
c = j.get("capture")
if c:
    print(f"capture {c['tokens']} tokens: all {1e3*c['all_s']:.1f} ms vs none {1e3*c['none_s']:.1f} ms "
          f"= {c['ratio']:.2f}x ({c['cells']} cells, {c['captured_bytes']/1e9:.2f} GB)")
PY
done
for lane in ${LANES:-cuda cuda-graph}; do
  "$exe" bench "$model" --lane "$lane" --prefill 1 --decode 128 --capture-tokens 0 \
    --repeat "${REPEAT:-3}" --json > "$out/bench-$lane-tg128.json"
  python3 - "$out/bench-$lane-tg128.json" "$lane" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"== {sys.argv[2]}, 128 decode steps after a 1-token prompt (llama-bench tg128's setting): "
      f"{j['decode']['tokens_per_s']:.1f} tok/s, {100*j['bandwidth_fraction']:.1f}% of copy bandwidth")
PY
done
