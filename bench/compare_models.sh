#!/usr/bin/env bash
# Gaussian conv, Gaussian resnet and resnet with VQ / FSQ / LFQ at a matched latent size, on MNIST and on the shared
# video clips, compared by `vaekit compare` (PSNR, SSIM, −ELBO where defined, bits per element, code usage).
# Run from the repository root; DATA defaults to ../shared/data. Tables land in runs/models-*/compare/compare.md.
set -euo pipefail
DATA=${DATA:-../shared/data}
Q8_VQ="model.bottleneck.kind=vq model.bottleneck.codebook_size=256 model.bottleneck.threshold_ema_dead_code=1"
Q8_FSQ="model.bottleneck.kind=fsq model.bottleneck.levels=[4,4,4,4]"
Q8_LFQ="model.bottleneck.kind=lfq model.bottleneck.codebook_size=256"

# MNIST 28x28 -> latent (4, 7, 7); quantised kinds at 8 bits per position (0.5 bits per pixel)
M="examples/models_mnist.yaml data.path=$DATA/mnist run.overwrite=true"
RES="model.arch=resnet model.hidden_dims=[32,64,64] model.resnet.layers_per_block=1"
time vaekit train $M run.name=conv-gauss
time vaekit train $M $RES run.name=resnet-gauss
time vaekit train $M $RES $Q8_VQ run.name=resnet-vq
time vaekit train $M $RES $Q8_FSQ run.name=resnet-fsq
time vaekit train $M $RES $Q8_LFQ run.name=resnet-lfq
vaekit compare runs/models-mnist/{conv-gauss,resnet-gauss,resnet-vq,resnet-fsq,resnet-lfq} \
  --metrics psnr,ssim,elbo,rate,codebook --split test --batches 16 --out runs/models-mnist/compare

# video: 9 frames of 32x32 -> conv (4, 9, 8, 8), causal resnet (12, 3, 8, 8): 2304 latent elements each
V="examples/models_video.yaml data.path=$DATA/video run.overwrite=true"
VRES="model.arch=resnet model.hidden_dims=[16,32,32] model.latent_dim=12 model.resnet.layers_per_block=1
      model.resnet.causal=true model.temporal_downsample=2"
time vaekit train $V run.name=conv-gauss
time vaekit train $V $VRES run.name=resnet-gauss
time vaekit train $V $VRES $Q8_VQ run.name=resnet-vq
time vaekit train $V $VRES $Q8_FSQ run.name=resnet-fsq
time vaekit train $V $VRES $Q8_LFQ run.name=resnet-lfq
vaekit compare runs/models-video/{conv-gauss,resnet-gauss,resnet-vq,resnet-fsq,resnet-lfq} \
  --metrics psnr,ssim,elbo,rate,codebook --split val --out runs/models-video/compare

# training wall time of each run (summary.json)
for d in runs/models-mnist/*/ runs/models-video/*/; do
  [ -f "$d/summary.json" ] && python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[1].split('/summary')[0], f\"{s['wall_time_sec']:.0f} s\", f\"{s['parameters']:,} params\")" "$d/summary.json"
done
