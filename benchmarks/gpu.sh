#!/usr/bin/env bash
# The CUDA benchmark in one prepared run: every camlib method beside the peers' versions,
# the references (lower bound, no-grad forward, the Score-CAM / Ablation-CAM floors),
# vit_b_16 Grad-CAM against pytorch-grad-cam with its ViT reshape_transform, the Score-CAM
# memory study; batch sizes 1, 16, 64; float32, no autocast (AMP off).
#
#   bash benchmarks/gpu.sh            # from the repository root, on a machine with one GPU
#   bash benchmarks/gpu.sh throughput # only the throughput benchmark (issue 9's methods)
#   bash benchmarks/gpu.sh round2     # only issue 18's methods, merged into the same results
#   bash benchmarks/gpu.sh metrics    # only camlib's metrics against Quantus (below)
#
# Sized to finish in about 6 minutes on one H100 (estimated, not yet run: no GPU was lent
# where it was written); a hard stop at 470 s of measurement (SIGINT) still writes the
# configurations measured by then, with a note saying which. Writes
# benchmarks/results/cuda/{results.json,results.md,*.png} and nvidia-smi.txt.
# The perturbation methods (one forward pass per image and channel) run on the MNIST net
# and on ResNet-18 at 224x224 up to batch 16 (512 channels: 8192 masked forward passes
# per call at batch 16), batch_size 256 for camlib, the peers and the floors alike.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT=benchmarks/results/cuda
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "benchmarks/gpu.sh needs CUDA (torch.cuda.is_available() is False)"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
EOF
WHAT=${1:-all}
if [ "$WHAT" = all ] || [ "$WHAT" = throughput ]; then
timeout --signal=INT 470 "$PY" benchmarks/throughput.py --device cuda \
    --methods cam,gradcam,gradcam++,xgradcam,layercam,hirescam,scorecam,ablationcam,eigencam,guided_backprop,guided_gradcam \
    --models mnist,resnet18,resnet50,vit_b_16 --batch-sizes 1,16,64 \
    --perturbation-at mnist@28,resnet18@224=16 --perturbation-batch 256 \
    --scorecam-memory resnet18@224 \
    --compare pytorch-grad-cam,captum,torchcam \
    --rounds 3 --block-seconds 0.2 --no-progress --out "$OUT"
fi
# Issue 18's methods (round 2) beside their peers and floors, merged (--merge) into the
# results above as a second run: the MNIST net, ResNet-18 at 224x224 and vit_b_16 (LeGrad
# against torchcam), batch sizes 1 and 16; SS-CAM, IS-CAM and SESS (one forward pass per
# image, channel and sample, or per patch) on the MNIST net and ResNet-18 at batch 1 only;
# 4 samples for SS-CAM / IS-CAM / Smooth Grad-CAM++ and 4 SESS scales, for camlib, the
# peers and the floors alike. Estimated 3-4 minutes on one H100 (not yet run); a hard stop
# at 240 s keeps what was measured.
if [ "$WHAT" = all ] || [ "$WHAT" = round2 ]; then
timeout --signal=INT 240 "$PY" benchmarks/throughput.py --device cuda \
    --methods gradcam_elementwise,eigengradcam,segeigencam,kpcacam,fem,shapleycam,fullgrad,dff,randomcam,sscam,iscam,smoothgradcampp,finercam,sess,refinecam,legrad \
    --models mnist,resnet18,vit_b_16 --batch-sizes 1,16 \
    --perturbation-at mnist@28,resnet18@224=1 --perturbation-batch 256 \
    --samples 4 --sess-scales 4 --scorecam-memory none \
    --compare pytorch-grad-cam,captum,torchcam \
    --rounds 3 --block-seconds 0.2 --no-progress --merge --out "$OUT"
fi
# camlib's metrics against Quantus 0.6.0 on the GPU (benchmarks/metrics_vs_quantus.py):
# every shared metric on the MNIST net (batch 64) and ResNet-18 at 224x224 (batch 32), the
# values checked against Quantus's, the forward passes / explanations alone as the floor.
# Estimated 3-4 minutes on one H100 (not yet run: no GPU was lent where it was written);
# a hard stop at 300 s. Writes benchmarks/results/cuda/metrics_vs_quantus.{json,md}.
if [ "$WHAT" = all ] || [ "$WHAT" = metrics ]; then
timeout --signal=INT 300 "$PY" benchmarks/metrics_vs_quantus.py --device cuda --threads 2 \
    --models mnist,resnet18 --size 224 --batch mnist=64,resnet18=32 --repeats 3 \
    --fc-runs 100 --out "$OUT"
fi
# docs: python docs/gen_figures.py   (copies the tables and plots into docs/)
