#!/usr/bin/env bash
# The GPU session that trained the shipped enhancer's UNet ("default") beside the same run with the CLIP
# loss ("clip", measured worse: see server/enhance/model/MODEL_CARD.md), run from the repository root on a CUDA machine with torch, timm, onnxruntime and transformers; diffusers and msgspec
# may come as wheels in .whl/. PHOTOS holds the photos of free_photos.toml (fetch_photos.py), GUIDE_CACHE
# the cached CLIP guide (training/enhance/guide.py builds it where the packaged towers are installed).
#   PHOTOS=.devpack/free GUIDE_CACHE=.cache/enhance MINUTES=7 OUT=/tmp/out bash training/enhance/gpu_session.sh
set -euo pipefail
: "${PHOTOS:?}" "${GUIDE_CACHE:?}" "${OUT:?}"
MINUTES="${MINUTES:-7}"
STEPS="${STEPS:-60000}"
EXTRA="${EXTRA:-}"  # more --set overrides (a smoke test on a CPU: smaller batches)
BENCH_DEVICE="${BENCH_DEVICE:-cuda}"
BENCH_MP="${BENCH_MP:-12}"
PY="${PY:-python3}"
WHEELS="${WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())"

train() {  # name, extra overrides...
  local name="$1"; shift
  "$PY" -m clipalbum.training.enhance.cli train training/enhance/configs/default.toml --quiet --out "/tmp/runs/$name" \
    --set "data.folders=[\"$PHOTOS\"]" --set "train.cache_dir=\"$GUIDE_CACHE\"" \
    --set "train.minutes=$MINUTES" --set "train.steps=$STEPS" $EXTRA "$@" > "$OUT/$name.log" 2>&1
}
train default &
default=$!
train clip --set loss.clip_weight=0.05 &
clip=$!
status=0
wait $default || status=$?
wait $clip || status=$?
tail -n 3 "$OUT/default.log" "$OUT/clip.log"
"$PY" bench/enhance_torch_speed.py /tmp/runs/default --device "$BENCH_DEVICE" --megapixels "$BENCH_MP" | tee "$OUT/cuda_speed.json" || status=$?
for name in default clip; do
  tar -C "/tmp/runs/$name" -cf "$OUT/run-$name.tar" last/unet.safetensors last/head.safetensors last/checkpoint.json log.jsonl
done
exit $status
