#!/usr/bin/env python3
"""bench_torch.py [OURS.txt]: the PyTorch side of bench_cuda.cpp (same ops, same sizes, fp32 with
TF32 off, channels-last for convolutions and BN), in the same run on the same GPU. With OURS.txt
(bench_cuda's output) prints one table: op, ours ms, torch ms, ratio ours/torch (> 1: slower).
Run by benchmarks/device/check.sh on the GPU machine."""
import sys
import time

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = 'cuda'


def time_ms(fn, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / iters


def vmf(z, eta=0.01, min_width=0.1):
    n = z.shape[0]
    s = z @ z.T
    d = (1 - s).flatten()
    tau = max(torch.topk(d, n * n // 2).values[-1].item(), min_width)
    k = torch.exp(s / tau)
    g = z / tau * k.sum(1, keepdim=True)
    return -torch.linalg.solve(k + eta * torch.eye(n, device=z.device), g)


torch_ms = {}
n = 4096
A = torch.randn(n, n, device=dev)
B = torch.randn(n, n, device=dev)
torch_ms['gemm_nn_4096'] = time_ms(lambda: A @ B, 5)
torch_ms['gemm_tn_4096'] = time_ms(lambda: A.T @ B, 5)
a2 = torch.randn(256, 2048, device=dev)
w2 = torch.randn(2048, 2048, device=dev)
torch_ms['gemm_nt_256x2048x2048'] = time_ms(lambda: a2 @ w2.T)

x = torch.randn(32, 64, 56, 56, device=dev).to(memory_format=torch.channels_last).requires_grad_(True)
w = (0.1 * torch.randn(64, 64, 3, 3, device=dev)).to(memory_format=torch.channels_last).requires_grad_(True)
y = F.conv2d(x, w, padding=1)
gy = torch.randn_like(y)
torch_ms['conv3x3_fwd_32x56x56x64'] = time_ms(lambda: F.conv2d(x, w, padding=1))
torch_ms['conv3x3_bwd_data'] = time_ms(
    lambda: torch.ops.aten.convolution_backward(gy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                [True, False, False]))
torch_ms['conv3x3_bwd_weight'] = time_ms(
    lambda: torch.ops.aten.convolution_backward(gy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                [False, True, False]))

xb = torch.randn(32, 64, 56, 56, device=dev).to(memory_format=torch.channels_last).requires_grad_(True)
gamma = torch.ones(64, device=dev, requires_grad=True)
beta = torch.zeros(64, device=dev, requires_grad=True)
rm = torch.zeros(64, device=dev)
rv = torch.ones(64, device=dev)
torch_ms['bn_relu_train_fwd'] = time_ms(lambda: F.relu(F.batch_norm(xb, rm, rv, gamma, beta, True, 0.1, 1e-5)))
yb = F.relu(F.batch_norm(xb, rm, rv, gamma, beta, True, 0.1, 1e-5))
gb = torch.randn_like(yb)
torch_ms['bn_relu_bwd'] = time_ms(lambda: torch.autograd.grad(yb, (xb, gamma, beta), gb, retain_graph=True))

p = torch.randn(25557032, device=dev)
m = torch.zeros_like(p)
g = torch.randn_like(p)


def lars():
    dp = g.add(p, alpha=1e-6)
    q = 0.001 * torch.norm(p) / torch.norm(dp)
    m.mul_(0.9).add_(dp.mul(q))
    p.add_(m, alpha=-0.3)


torch_ms['lars_step_25.6M'] = time_ms(lars)
z = F.normalize(torch.randn(128, 2048, device=dev), dim=1)
torch_ms['vmf_score_128x2048'] = time_ms(lambda: vmf(z))

ours = {}
if len(sys.argv) > 1:
    for line in open(sys.argv[1]):
        parts = line.split()
        if len(parts) >= 3 and parts[0] == 'ours':
            ours[parts[1]] = float(parts[2])
print('op %-28s %10s %10s %8s' % ('', 'ours ms', 'torch ms', 'ratio'))
for op, t in torch_ms.items():
    o = ours.get(op)
    print('op %-28s %10s %10.4f %8s' % (op, '%.4f' % o if o else '-', t, '%.2f' % (o / t) if o else '-'))
print('torch', torch.__version__, torch.cuda.get_device_name(0))
