# loss_torch.py: the PyTorch side of benchmarks/loss.js (npm run bench:loss). For one batch Z [N, D]
# (float32 file written by loss.js) it times, with torch.set_num_threads(2):
#   official  the composition of the official project/entropy.py (my own code, same operations): mm,
#             topk over all N^2 entries, exp, the N x N x D broadcast, torch.inverse, einsum
#             (skipped when the N x N x D tensor does not fit in memory; reported as such)
#   cholesky  the same estimator done right in PyTorch: mm, kthvalue, exp, closed-form G,
#             linalg.cholesky + cholesky_solve
# and reports, against a float64 Cholesky reference, the relative error of both and of our score
# (float32 file from loss.js). Times are the best wall time and the best process CPU time (both
# threads together) over the repetitions. Prints one JSON line. Usage:
#   /usr/bin/python3 benchmarks/loss_torch.py Z.f32 OURS.f32 N D REPS
# Second mode, the whole loss with autograd (official composition per view and group; float64 run as
# the reference for our loss value and gradients):
#   /usr/bin/python3 benchmarks/loss_torch.py loss VIEWS.f32 OURS_GRADS.f32 N D V GROUP REPS OURS_LOSS
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_malloc import handing_memory_back, keep_freed_memory  # noqa: E402

keep_freed_memory()  # freed memory kept for reuse, as PyTorch's tuning guide advises (torch_malloc.py)
torch.set_num_threads(2)
ETA, MIN_WIDTH = 0.01, 0.1


def official(Z, eta=ETA):
    N = Z.shape[0]
    S = torch.mm(Z, Z.t())
    Dist = 1 - S
    k = (N * N) // 2
    tau = torch.topk(Dist.flatten(), k).values[-1].clamp(min=MIN_WIDTH)
    K = torch.exp(S / tau)
    grad_K = K.unsqueeze(-1) * Z.unsqueeze(1) / tau          # [N, N, D]: dK_ik/dz_k = K_ik z_i / tau
    grad_x = grad_K.sum(1)
    Kinv = torch.inverse(K + eta * torch.eye(N, dtype=Z.dtype))
    return -torch.einsum('ik,kd->id', Kinv, grad_x), float(tau)


def cholesky(Z, eta=ETA):
    N = Z.shape[0]
    S = Z @ Z.t()
    k = (N * N) // 2
    tau = (1 - torch.kthvalue(S.flatten(), k).values).clamp(min=MIN_WIDTH)  # k-th largest of 1 - S
    K = torch.exp(S / tau)
    G = Z * K.sum(1, keepdim=True) / tau
    K.diagonal().add_(eta)
    L = torch.linalg.cholesky(K)
    return -torch.cholesky_solve(G, L), float(tau)


def timed(fn, Z, reps):
    """Best wall time and best process CPU time (all threads) over reps runs, and the last output."""
    best, best_cpu, out = float('inf'), float('inf'), None
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(Z)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return (best, best_cpu), out


def rel(a, b):
    return float(torch.linalg.norm((a.double() - b).flatten()) / torch.linalg.norm(b.flatten()))


def mem_available():
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    return 0


def official_loss(online, targets, lambd=0.01, group=None, estimator=official):
    """loss_mveb of pretrainer.py:332-345 (my own code): normalise, crosswise alignment of the global
    views, local views to the unnormalised mean target, entropy surrogate per view with the score
    detached (per group of `group` rows, as per GPU), both terms over V. Returns the loss."""
    V = len(online)
    z = [torch.nn.functional.normalize(u, dim=1) for u in online]
    with torch.no_grad():
        t = [torch.nn.functional.normalize(u, dim=1) for u in targets]
    tm = (t[0] + t[1]) / 2
    A = (z[0] * t[1]).sum(1).mean() + (z[1] * t[0]).sum(1).mean()
    for v in range(2, V):
        A = A + (z[v] * tm).sum(1).mean()
    U = 0
    for v in range(V):
        N = z[v].shape[0]
        g = group or N
        with torch.no_grad():
            s = torch.cat([estimator(z[v][i:i + g].detach())[0] for i in range(0, N, g)])
        U = U + (-(s.detach() * z[v]).sum(1)).mean()
    return -A / V - lambd * U / V


def loss_mode(argv):
    """loss FILE OURS_GRADS N D V GROUP REPS OURS_LOSS: the whole loss with autograd, official composition
    in float32 (timed) and float64 (reference for our loss value and gradients)."""
    import numpy as np
    path, gpath, N, D, V, group, reps, ours_loss = argv[0], argv[1], *map(int, argv[2:7]), float(argv[7])
    data = np.fromfile(path, dtype='float32').reshape(V + 2, N, D)
    ours_g = torch.from_numpy(np.fromfile(gpath, dtype='float32').reshape(V, N, D).copy())
    res = {'N': N, 'D': D, 'V': V, 'group': group}

    def run(dtype):
        online = [torch.tensor(data[v], dtype=dtype, requires_grad=True) for v in range(V)]
        targets = [torch.tensor(data[V + a], dtype=dtype) for a in range(2)]
        L = official_loss(online, targets, group=group)
        L.backward()
        return float(L), torch.stack([u.grad for u in online])

    run(torch.float32)  # warm-up
    best, best_cpu = float('inf'), float('inf')
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        run(torch.float32)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    L64, g64 = run(torch.float64)
    L32, g32 = run(torch.float32)
    res.update(official_s=best, official_cpu=best_cpu, loss64=L64, loss_official32=L32,
               ours_loss_err=abs(ours_loss - L64) / abs(L64), official_loss_err=abs(L32 - L64) / abs(L64),
               ours_grad_err=rel(ours_g, g64), official_grad_err=rel(g32, g64))
    print(json.dumps(res))


def main():
    if sys.argv[1] == 'loss':
        return loss_mode(sys.argv[2:])
    zpath, ourpath, N, D, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    Z = torch.from_numpy(__import__('numpy').fromfile(zpath, dtype='float32').reshape(N, D).copy())
    ours = torch.from_numpy(__import__('numpy').fromfile(ourpath, dtype='float32').reshape(N, D).copy())
    ref, tau64 = cholesky(Z.double())
    res = {'N': N, 'D': D, 'torch': torch.__version__, 'threads': torch.get_num_threads(), 'width64': tau64,
           'ours_err': rel(ours, ref)}
    cholesky(Z)  # warm-up
    (t, c), (s, _) = timed(cholesky, Z, reps)
    res.update(cholesky_s=t, cholesky_cpu=c, cholesky_err=rel(s, ref))
    broadcast_bytes = N * N * D * 4
    # temporaries of GBs: glibc's own settings (a kept heap made it swap: torch_malloc.py)
    with handing_memory_back() if broadcast_bytes > 1 << 30 else contextlib.nullcontext():
        if broadcast_bytes * 2.2 < mem_available():  # the broadcast and its product coexist briefly
            (t, c), (s, _) = timed(official, Z, reps if N <= 256 else 1)
            res.update(official_s=t, official_cpu=c, official_err=rel(s, ref))
        else:
            res.update(official_s=None, official_skipped='N x N x D tensor needs %.1f GB; %.1f GB available' %
                       (broadcast_bytes / 1e9, mem_available() / 1e9))
    print(json.dumps(res))


if __name__ == '__main__':
    main()
