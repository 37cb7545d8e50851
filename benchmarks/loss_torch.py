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
import json
import sys
import time

import torch

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


def main():
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
    if broadcast_bytes * 2.2 < mem_available():  # the broadcast and its product coexist briefly
        (t, c), (s, _) = timed(official, Z, reps if N <= 256 else 1)
        res.update(official_s=t, official_cpu=c, official_err=rel(s, ref))
    else:
        res.update(official_s=None, official_skipped='N x N x D tensor needs %.1f GB; %.1f GB available' %
                   (broadcast_bytes / 1e9, mem_available() / 1e9))
    print(json.dumps(res))


if __name__ == '__main__':
    main()
