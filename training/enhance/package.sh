#!/usr/bin/env bash
# Makes the packaged enhancer (server/enhance/model) from a trained run: int8 UNet only (the package stays
# under 10 MB; refused if int8 loses over 0.3 dB), the model card and the photo credits beside it.
#   bash training/enhance/package.sh RUN_DIR
set -euo pipefail
run="${1:?usage: package.sh RUN_DIR}"
py="${PYTHON:-.venv/bin/python}"
out=server/enhance/model
"$py" -m clipalbum.export.enhance_cli export "$run" "$out" --int8-only --model-id enhance-default-v1 \
  --description "clipalbum's default enhancer: diffusers UNet (32/64/128, 1 step) + statistics head; see MODEL_CARD.md"
cp training/enhance/MODEL_CARD.md "$out/MODEL_CARD.md"
"$py" -c "from pathlib import Path; from training.enhance.fetch_photos import write_notice; write_notice(Path('$out/NOTICE.md'))"
du -sh "$out"
