# augment_stats_torch.py: distribution check of the official pipeline for benchmarks/augment_stats.js.
# Reads images (uint8 NHWC .npy-free raw file) and writes, per view kind, the mean over many
# augmentations of: the per-channel pixel mean, the per-image pixel std, and the mean absolute
# horizontal gradient (a blur / resize sharpness measure), all after normalisation.
# Run: /usr/bin/python3 benchmarks/augment_stats_torch.py <raw file> N H W C size_global size_local draws
import json
import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit('/', 1)[0])
from augment_torch import dino  # noqa: E402
from PIL import Image  # noqa: E402

torch.manual_seed(0)
import random  # noqa: E402
random.seed(0)

path, N, H, W, C, gs, ls, draws = sys.argv[1], *map(int, sys.argv[2:9])
imgs = np.fromfile(path, dtype=np.uint8).reshape(N, H, W, C)
pils = [Image.fromarray(im[:, :, 0] if C == 1 else im, 'L' if C == 1 else 'RGB') for im in imgs]
mean, std = ([0.5], [0.5]) if C == 1 else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
aug = dino(gs, ls, 1, mean, std)
acc = {k: {'mean': np.zeros(C), 'std': 0.0, 'grad': 0.0} for k in ('global1', 'global2', 'local')}
for d in range(draws):
    views = aug(pils[d % N])
    for k, v in zip(('global1', 'global2', 'local'), views):
        x = v.numpy()
        acc[k]['mean'] += x.mean(axis=(1, 2))
        acc[k]['std'] += x.std()
        acc[k]['grad'] += np.abs(np.diff(x, axis=2)).mean()
print(json.dumps({k: {'mean': (a['mean'] / draws).tolist(), 'std': a['std'] / draws, 'grad': a['grad'] / draws} for k, a in acc.items()}))
