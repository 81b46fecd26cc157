#!/usr/bin/env bash
# The GPU session that trained the shipped enhancer: the UNet ("unet": continuing INIT's UNet on every photo of
# free_photos.toml) beside the global head alone ("head": small views, large batches), then the CUDA figures
# (torch reference pipeline; the server's onnxruntime CUDA path where that build is installed). Run from the
# repository root on a CUDA machine with torch, timm, onnxruntime and transformers; diffusers and msgspec may
# come as wheels in .whl/. PHOTOS holds the photos of free_photos.toml (fetch_photos.py), GUIDE_CACHE the
# cached CLIP guide (training/enhance/guide.py builds it where the packaged towers are installed), INIT a
# run whose UNet starts this one (empty: from scratch).
#   PHOTOS=.devpack/free GUIDE_CACHE=.devpack/guide INIT=.devpack/init MINUTES=7 OUT=/tmp/out bash training/enhance/gpu_session.sh
set -euo pipefail
: "${PHOTOS:?}" "${GUIDE_CACHE:?}" "${OUT:?}"
MINUTES="${MINUTES:-7}"
STEPS="${STEPS:-60000}"
INIT="${INIT:-}"
EXTRA="${EXTRA:-}"  # more --set overrides (a smoke test on a CPU: smaller batches)
UNET_BATCH="${UNET_BATCH:-64}"
HEAD_BATCH="${HEAD_BATCH:-256}"
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
  "$PY" -m training.enhance.cli train training/enhance/configs/default.toml --quiet --out "/tmp/runs/$name" \
    --set "data.folders=[\"$PHOTOS\"]" --set "train.cache_dir=\"$GUIDE_CACHE\"" \
    --set "train.minutes=$MINUTES" --set "train.steps=$STEPS" --set "train.init_unet=\"$INIT\"" "$@" $EXTRA \
    > "$OUT/$name.log" 2>&1
}
train unet --set "train.batch=$UNET_BATCH" &
unet=$!
train head --set 'train.parts="head"' --set "train.batch=$HEAD_BATCH" --set data.crop=128 --set data.min_scale=0.5 \
  --set data.short_side=200 --set optim.head_lr=2e-3 --set optim.warmup=50 &
head=$!
status=0
wait $unet || status=$?
wait $head || status=$?
tail -n 3 "$OUT/unet.log" "$OUT/head.log"
for name in unet head; do
  tar -C "/tmp/runs/$name" -cf "$OUT/run-$name.tar" last/unet.safetensors last/head.safetensors last/checkpoint.json log.jsonl || status=1
done
"$PY" bench/enhance_torch_speed.py /tmp/runs/unet --device "$BENCH_DEVICE" --megapixels "$BENCH_MP" | tee "$OUT/cuda_speed.json" || status=$?
"$PY" bench/enhance_ort_cuda.py --megapixels "$BENCH_MP" | tee "$OUT/ort_cuda.json" || true
exit $status
