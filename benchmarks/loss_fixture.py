# loss_fixture.py: writes test/fixtures/loss_torch.json, golden values of the official MVEB loss
# computed with PyTorch autograd in float64 (official_loss of loss_torch.py: the composition of
# project/entropy.py and pretrainer.py's loss_mveb), for test/loss.test.ts (which then needs no PyTorch).
# Inputs are float32 values (stored exactly); the reference runs in float64 on them.
#   /usr/bin/python3 benchmarks/loss_fixture.py
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from loss_torch import official_loss  # noqa: E402

CASES = [  # name, N, D, V (2 global + V-2 local), groupSize (0: whole batch), lambda
    ('global_only', 5, 3, 2, 0, 0.05),
    ('local_views_groups', 8, 6, 4, 4, 0.01),
    ('eight_views', 6, 16, 8, 0, 0.1),
]


def main():
    torch.manual_seed(1234)
    out = {'generator': 'benchmarks/loss_fixture.py', 'torch': torch.__version__, 'eta': 0.01, 'minWidth': 0.1, 'cases': []}
    for name, N, D, V, group, lambd in CASES:
        raw = (torch.randn(V + 2, N, D) * 0.8 + 0.1).float()
        online = [raw[v].double().clone().requires_grad_(True) for v in range(V)]
        targets = [raw[V + a].double() for a in range(2)]
        L = official_loss(online, targets, lambd=lambd, group=group or None)
        L.backward()
        out['cases'].append({
            'name': name, 'N': N, 'D': D, 'V': V, 'groupSize': group, 'lambda': lambd,
            'online': [raw[v].flatten().tolist() for v in range(V)],
            'targets': [raw[V + a].flatten().tolist() for a in range(2)],
            'loss': float(L),
            'grads': [u.grad.flatten().tolist() for u in online],
        })
    path = os.path.join(os.path.dirname(__file__), '..', 'test', 'fixtures', 'loss_torch.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(out, f)
    print('wrote', os.path.normpath(path), os.path.getsize(path), 'bytes')


if __name__ == '__main__':
    main()
