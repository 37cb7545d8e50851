#!/usr/bin/env python3
"""run.py: CPU kernel benchmark, mveb vs PyTorch side by side in one run.

Runs the C++ timing binary (kernels_bench, built by benchmarks/build-and-run-kernels.sh against
libmveb_core.a) and times the same SGEMM shapes with torch.mm and the same ResNet-50 convolutions
with torch.nn.functional.conv2d (channels_last, forward + input/weight gradients) and the same batch
norms (train mode, + residual + ReLU), both with 2 threads, alternating shape by shape, and prints
markdown tables with GFLOP/s, the fraction of the measured FP32 peak and the ratios.
Usage: /usr/bin/python3 benchmarks/kernels/run.py BINARY [THREADS] [PARTS]
PARTS: comma-separated subset of gemm,conv,bn (default all), e.g. `gemm` for the SGEMM tables only
(build-and-run-kernels.sh, i.e. npm run bench:cpu, adds the training-step part `step` after these).
On a CPU with AMX the GEMM and conv tables get extra columns for mveb at matmul precision "high"
(MVEB_MATMUL_PRECISION=high: bf16x3 on the AMX tiles, ~4e-6 relative error; the plain columns are
IEEE fp32, the default).
"""
import os
import subprocess
import sys
import time

binary = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
parts = set(sys.argv[3].split(",")) if len(sys.argv) > 3 else {"gemm", "conv", "bn"}

# torch in this process only: OpenBLAS threads and, when it mis-detects the CPU, its SkylakeX kernels
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
os.environ.setdefault("OMP_NUM_THREADS", str(threads))
os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_malloc import keep_freed_memory  # noqa: E402

# freed memory kept for reuse, as PyTorch's tuning guide advises (benchmarks/torch_malloc.py): with
# glibc's defaults each large output of a timed call is a fresh mmap, page-faulted in every call
malloc_mode = keep_freed_memory()
torch.set_num_threads(threads)


def best(fn, budget=0.6, reps=20):
    fn()
    best_t, total = 1e30, 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best_t = min(best_t, dt)
        total += dt
        if total > budget:
            break
    return best_t


def torch_gemm(m, n, k, ta, tb):
    a = torch.randn(k, m).t() if ta else torch.randn(m, k)
    b = torch.randn(n, k).t() if tb else torch.randn(k, n)
    a = a.contiguous() if not ta else a
    b = b.contiguous() if not tb else b
    out = torch.empty(m, n)
    t = best(lambda: torch.mm(a, b, out=out))
    return 2.0 * m * n * k / t / 1e9


def torch_conv(n, h, w, c, k, r, s, stride, pad):
    x = torch.randn(n, c, h, w).to(memory_format=torch.channels_last).requires_grad_(True)
    wt = torch.randn(k, c, r, s).to(memory_format=torch.channels_last).requires_grad_(True)
    with torch.no_grad():
        tf = best(lambda: F.conv2d(x, wt, stride=stride, padding=pad), 0.5, 5)
    y = F.conv2d(x, wt, stride=stride, padding=pad)
    dy = torch.randn_like(y)
    # torch's backward computes both gradients at once
    tb = best(lambda: torch.autograd.grad(y, (x, wt), dy, retain_graph=True), 0.5, 5)
    return tf * 1e3, tb * 1e3


GEMMS = [
    (256, 256, 256, 0, 0), (1024, 1024, 1024, 0, 0), (2048, 2048, 2048, 0, 0),
    # ResNet-50 layers as NHWC GEMMs at batch 4 (rows = N*P*Q)
    (12544, 64, 576, 0, 1),   # 3x3 conv 64 at 56x56, forward (im2col x weights^T)
    (3136, 256, 64, 0, 1),    # 1x1 conv 64->256 at 56x56, forward
    (784, 256, 2304, 0, 1),   # 3x3 conv 256 at 14x14, forward
    (3136, 64, 256, 0, 0),    # 1x1 conv backward data
    (64, 256, 3136, 1, 0),    # 1x1 conv backward weight
    (1024, 1024, 1024, 1, 1),
    (2048, 2048, 2048, 1, 1), (2048, 2048, 2048, 0, 1), (2048, 2048, 2048, 1, 0), (4096, 4096, 4096, 0, 0),
]
# Every distinct convolution shape of torchvision's ResNet-50 at 224x224 (stride on the 3x3 conv, as
# v1.5), batch 8: (layers, how many of the 53 convolutions have it, (N H W C K R S stride pad)); H, W
# are the input's. The table ends with the whole network's convolution time (each shape times its count).
CONVS = [
    ("conv1 (stem)", 1, (8, 224, 224, 3, 64, 7, 7, 2, 3)),
    ("layer1.0.conv1", 1, (8, 56, 56, 64, 64, 1, 1, 1, 0)),
    ("layer1.x.conv2", 3, (8, 56, 56, 64, 64, 3, 3, 1, 1)),
    ("layer1.x.conv3, layer1.0.downsample", 4, (8, 56, 56, 64, 256, 1, 1, 1, 0)),
    ("layer1.1-2.conv1", 2, (8, 56, 56, 256, 64, 1, 1, 1, 0)),
    ("layer2.0.conv1", 1, (8, 56, 56, 256, 128, 1, 1, 1, 0)),
    ("layer2.0.conv2", 1, (8, 56, 56, 128, 128, 3, 3, 2, 1)),
    ("layer2.0.downsample", 1, (8, 56, 56, 256, 512, 1, 1, 2, 0)),
    ("layer2.x.conv2", 3, (8, 28, 28, 128, 128, 3, 3, 1, 1)),
    ("layer2.x.conv3", 4, (8, 28, 28, 128, 512, 1, 1, 1, 0)),
    ("layer2.1-3.conv1", 3, (8, 28, 28, 512, 128, 1, 1, 1, 0)),
    ("layer3.0.conv1", 1, (8, 28, 28, 512, 256, 1, 1, 1, 0)),
    ("layer3.0.conv2", 1, (8, 28, 28, 256, 256, 3, 3, 2, 1)),
    ("layer3.0.downsample", 1, (8, 28, 28, 512, 1024, 1, 1, 2, 0)),
    ("layer3.x.conv2", 5, (8, 14, 14, 256, 256, 3, 3, 1, 1)),
    ("layer3.x.conv3", 6, (8, 14, 14, 256, 1024, 1, 1, 1, 0)),
    ("layer3.1-5.conv1", 5, (8, 14, 14, 1024, 256, 1, 1, 1, 0)),
    ("layer4.0.conv1", 1, (8, 14, 14, 1024, 512, 1, 1, 1, 0)),
    ("layer4.0.conv2", 1, (8, 14, 14, 512, 512, 3, 3, 2, 1)),
    ("layer4.0.downsample", 1, (8, 14, 14, 1024, 2048, 1, 1, 2, 0)),
    ("layer4.x.conv2", 2, (8, 7, 7, 512, 512, 3, 3, 1, 1)),
    ("layer4.x.conv3", 3, (8, 7, 7, 512, 2048, 1, 1, 1, 0)),
    ("layer4.1-2.conv1", 2, (8, 7, 7, 2048, 512, 1, 1, 1, 0)),
]
BNS = [(25088, 64), (25088, 256), (6272, 512)]  # [rows = N*H*W at batch 8, channels]
ROUNDS = 2  # mveb and torch alternate, best of the rounds: the machine is shared


def torch_bn(m, c):
    """Train-mode BN + residual + ReLU on channels_last [8, c, h, w] with m = 8*h*w rows."""
    hw = m // 8
    h = int(round(hw ** 0.5))
    x = torch.randn(8, c, h, hw // h).to(memory_format=torch.channels_last).requires_grad_(True)
    r = torch.randn_like(x)
    g = torch.ones(c, requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    rm, rv = torch.zeros(c), torch.ones(c)
    fwd = lambda: torch.relu(F.batch_norm(x, rm, rv, g, b, True, 0.1, 1e-5) + r)
    tf = best(fwd, 0.5, 10)
    y = fwd()
    dy = torch.randn_like(y)
    tb = best(lambda: torch.autograd.grad(y, (x, g, b), dy, retain_graph=True), 0.5, 10)
    return tf * 1e3, tb * 1e3


def ours(*args, precision="highest"):
    # torch's BLAS / OpenMP threads keep spinning for up to ~0.1 s after its last call; on 2 cores they
    # would share the CPUs with our threads during a short (few ms) measurement: let them go idle first.
    time.sleep(0.3)
    env = dict(os.environ, MVEB_MATMUL_PRECISION=precision)
    out = subprocess.run([binary, str(threads), *map(str, args)], check=True, capture_output=True, text=True,
                         env=env).stdout
    return [l.split() for l in out.splitlines() if l.strip()]


TORCH_ONE_THREAD = r"""
import sys, time, torch
torch.set_num_threads(1)
for spec in sys.argv[1:]:
    m, n, k, ta, tb = map(int, spec.split(","))
    a = torch.randn(k, m).t() if ta else torch.randn(m, k)
    b = torch.randn(n, k).t() if tb else torch.randn(k, n)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)
    best, total = 1e30, 0.0
    for _ in range(20):
        t0 = time.thread_time()
        torch.mm(a, b, out=out)
        dt = time.thread_time() - t0
        best, total = min(best, dt), total + dt
        if total > 0.6:
            break
    print(spec, 2.0 * m * n * k / best / 1e9, flush=True)
"""


def torch_gemm_one_thread(shapes):
    """torch.mm on one OpenBLAS thread in a fresh process, timed with that thread's CPU time."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    specs = [",".join(map(str, s)) for s in shapes]
    out = subprocess.run([sys.executable, "-c", TORCH_ONE_THREAD, *specs], env=env, check=True,
                         capture_output=True, text=True).stdout
    return {l.split()[0]: float(l.split()[1]) for l in out.splitlines() if l.strip()}


def measure_peak():
    global amx
    best_peak, isa_name = 0.0, "?"
    for _ in range(3):
        for l in ours("peak"):
            if l[0] == "isa":
                isa_name = l[1]
                amx = len(l) > 5 and l[5] == "1"
            if l[0] == "peak1":
                best_peak = max(best_peak, float(l[1]) * threads)
    return best_peak, isa_name


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# The FP32 ceiling: the best one-core AVX-512 FMA rate (measured before and after the kernels; on a
# shared machine a single measurement is easily low) times the thread count.
amx = False  # set by measure_peak from the binary's first line
peak, isa = measure_peak()
gemm_rows, conv_rows, bn_rows = [], [], []
for m, n, k, ta, tb in GEMMS if "gemm" in parts else []:
    log(f"gemm {m} {n} {k} {ta} {tb}")
    g_ours, g_torch, rel, g_high, rel_high = 0.0, 0.0, "-", 0.0, "-"
    for _ in range(ROUNDS):
        l = [x for x in ours("gemm", m, n, k, ta, tb) if x[0] == "gemm"][0]
        g_ours, rel = max(g_ours, float(l[6])), l[7]
        if amx:
            l = [x for x in ours("gemm", m, n, k, ta, tb, precision="high") if x[0] == "gemm"][0]
            g_high, rel_high = max(g_high, float(l[6])), l[7]
        g_torch = max(g_torch, torch_gemm(m, n, k, bool(ta), bool(tb)))
    gemm_rows.append((m, n, k, ta, tb, g_ours, g_torch, rel, g_high, rel_high))
for layer, count, shape in CONVS if "conv" in parts else []:
    log(f"conv {shape}")
    tf = tb = ttf = ttb = hf = hb = 1e30
    for _ in range(ROUNDS):
        l = [x for x in ours("conv", *shape) if x[0] == "conv"][0]
        tf, tb = min(tf, float(l[10])), min(tb, float(l[11]) + float(l[12]))
        if amx:
            l = [x for x in ours("conv", *shape, precision="high") if x[0] == "conv"][0]
            hf, hb = min(hf, float(l[10])), min(hb, float(l[11]) + float(l[12]))
        a, b = torch_conv(*shape)
        ttf, ttb = min(ttf, a), min(ttb, b)
    conv_rows.append((layer, count, shape, tf, tb, ttf, ttb, hf, hb))
for m, c in BNS if "bn" in parts else []:
    log(f"bn {m} {c}")
    tf = tb = ttf = ttb = 1e30
    for _ in range(ROUNDS):
        l = [x for x in ours("bn", m, c) if x[0] == "bn"][0]
        tf, tb = min(tf, float(l[3])), min(tb, float(l[4]))
        a, b = torch_bn(m, c)
        ttf, ttb = min(ttf, a), min(ttb, b)
    bn_rows.append((m, c, tf, tb, ttf, ttb))
# One thread, CPU time of the computing thread on both sides: the figure least disturbed by the other
# jobs on a shared machine.
one_rows = []
for _ in range(ROUNDS if "gemm" in parts else 0):
    log("gemm, one thread")
    theirs = torch_gemm_one_thread(GEMMS)
    for i, shape in enumerate(GEMMS):
        l = [x for x in subprocess.run([binary, "1", "gemm", *map(str, shape)], check=True, capture_output=True,
                                       text=True).stdout.split("\n") if x.startswith("gemm")][0].split()
        g, t = float(l[6]), theirs[",".join(map(str, shape))]
        if len(one_rows) <= i:
            one_rows.append([shape, g, t])
        else:
            one_rows[i][1], one_rows[i][2] = max(one_rows[i][1], g), max(one_rows[i][2], t)
peak = max(peak, measure_peak()[0])
# Our micro-kernel alone, on packed panels that stay in cache (kernels_bench ukernel): the rate none of our fp32 products
# can beat here, next to the FMA loop's (the broadcasts and B loads it needs cost ~10-15 % of it on this VM).
ukernel = 0.0
for _ in range(ROUNDS if "gemm" in parts and peak else 0):
    ukernel = max([ukernel] + [float(l[2]) for l in ours("ukernel", 256) if l[0] == "ukernel"])

print(f"threads: {threads}; torch {torch.__version__}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}; torch's freed memory: {malloc_mode} (torch_malloc.py)")
amx_note = "yes (the 'high' columns: matmul precision high, bf16x3 on AMX)" if amx else "no"
print(f"mveb ISA: {isa}; AMX: {amx_note}")
if peak:
    print(f"FP32 peak: {threads} x the best one-core AVX-512 FMA loop rate (6 tries before/after) = {peak:.1f} GFLOP/s")
if ukernel:
    print(f"Our micro-kernel alone (packed panels in cache, kc 256, one core): {ukernel:.1f} GFLOP/s, "
          f"{100 * ukernel * threads / peak:.0f}% of one core's FMA loop rate: the ceiling of our fp32 products")
print()
pk = (lambda g: f"{100 * g / peak:.0f}%") if peak else (lambda g: "-")
if gemm_rows:
    hh = " mveb high GFLOP/s | high / torch | high max rel err |" if amx else ""
    print("| SGEMM M x N x K (tA,tB) | mveb GFLOP/s | % peak | torch.mm GFLOP/s | % peak | mveb / torch | max rel err |" + hh)
    print("|---|---|---|---|---|---|---|" + ("---|---|---|" if amx else ""))
    for m, n, k, ta, tb, g_ours, g_torch, rel, g_high, rel_high in gemm_rows:
        hc = f" {g_high:.1f} | {g_high / g_torch:.2f} | {rel_high} |" if amx else ""
        print(f"| {m} x {n} x {k} ({ta},{tb}) | {g_ours:.1f} | {pk(g_ours)} | {g_torch:.1f} | {pk(g_torch)} | {g_ours / g_torch:.2f} | {rel} |" + hc)
    print()
    peak1 = peak / threads
    print(f"One thread, timed by the computing thread's CPU time (FP32 peak of one core {peak1:.1f} GFLOP/s):")
    print()
    print("| SGEMM M x N x K (tA,tB), 1 thread | mveb GFLOP/s | % peak | torch.mm (OpenBLAS) GFLOP/s | % peak | mveb / torch |")
    print("|---|---|---|---|---|---|")
    for (m, n, k, ta, tb), g, t in one_rows:
        print(f"| {m} x {n} x {k} ({ta},{tb}) | {g:.1f} | {100 * g / peak1:.0f}% | {t:.1f} | {100 * t / peak1:.0f}% | {g / t:.2f} |")
    print()
if conv_rows:
    hh = " high fwd ms | torch/high fwd | high bwd ms | torch/high bwd |" if amx else ""
    print("| ResNet-50 layers (count) | conv NHWC N,H,W,C -> K, RxS /stride pad | GFLOP fwd | mveb fwd ms (GFLOP/s, % peak) | torch fwd ms | torch/mveb fwd | mveb bwd data+weight ms (GFLOP/s, % peak) | torch bwd ms | torch/mveb bwd |" + hh)
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if amx else ""))
    tot = [0.0] * 6  # fwd, bwd, torch fwd, torch bwd, high fwd, high bwd (times the layer counts)
    for layer, count, shape, tf, tb, ttf, ttb, hf, hb in conv_rows:
        n, h, w, c, k, r, s, stride, pad = shape
        p, q = (h + 2 * pad - r) // stride + 1, (w + 2 * pad - s) // stride + 1
        gflop = 2.0 * n * p * q * k * r * s * c / 1e9
        gf, gb = gflop / tf * 1e3, 2 * gflop / tb * 1e3
        for i, v in enumerate((tf, tb, ttf, ttb, hf, hb)):
            tot[i] += count * v
        hc = f" {hf:.2f} | {ttf / hf:.2f} | {hb:.2f} | {ttb / hb:.2f} |" if amx else ""
        print(f"| {layer} ({count}) | {n},{h},{w},{c} -> {k}, {r}x{s} /{stride} p{pad} | {gflop:.2f} | {tf:.2f} ({gf:.0f}, {pk(gf)}) | {ttf:.2f} | {ttf / tf:.2f} | {tb:.2f} ({gb:.0f}, {pk(gb)}) | {ttb:.2f} | {ttb / tb:.2f} |" + hc)
    if len(conv_rows) == len(CONVS):
        hc = f" {tot[4]:.1f} | {tot[2] / tot[4]:.2f} | {tot[5]:.1f} | {tot[3] / tot[5]:.2f} |" if amx else ""
        print(f"| all 53 convolutions | (sum, ms) | | {tot[0]:.1f} | {tot[2]:.1f} | {tot[2] / tot[0]:.2f} | {tot[1]:.1f} | {tot[3]:.1f} | {tot[3] / tot[1]:.2f} |" + hc)
    print()
if bn_rows:
    print("| batch norm train + residual + ReLU, rows x C | mveb fwd ms | torch fwd ms | torch/mveb fwd | mveb bwd ms | torch bwd ms | torch/mveb bwd |")
    print("|---|---|---|---|---|---|---|")
    for m, c, tf, tb, ttf, ttb in bn_rows:
        print(f"| {m} x {c} | {tf:.2f} | {ttf:.2f} | {ttf / tf:.2f} | {tb:.2f} | {ttb:.2f} | {ttb / tb:.2f} |")
