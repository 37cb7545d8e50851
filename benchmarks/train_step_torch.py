#!/usr/bin/python3
"""train_step_torch.py: the PyTorch side of benchmarks/train-step.js. One ResNet training step
(forward in train mode, backward of sum(features * g), SGD momentum 0.9 with weight decay) timed with
torch.set_num_threads(threads), NCHW or channels_last. Prints one JSON line:
    {"images_per_s": ..., "seconds_per_step": [...], "images_per_cpu_s": ..., "max_rss_bytes": ...}
(images per CPU-second: less sensitive than wall time to other processes on a shared machine)
Freed memory is kept for reuse (torch_malloc.py: PyTorch's tuning guide's advice; the JSON says
"malloc": "kept", or "default" with MVEB_TORCH_MALLOC=default).
Usage: /usr/bin/python3 benchmarks/train_step_torch.py DEPTH STEM BATCH SIZE STEPS THREADS nchw|channels_last [WIDTH IN_CHANNELS]
With STEPS = serve (train-step.js --interleave): one warm-up step, then a line {"ready": true}; then one
step per line "step" read from stdin, answered by {"s": wall seconds, "cpu": CPU seconds}; at "quit" or
the end of stdin a last line {"max_rss_bytes": ...}. The caller runs its own steps in between.
(WIDTH != 1 or IN_CHANNELS != 3: scripts/make-fixtures.py's ScaledResNet, the fixtures' width-scaled
torchvision ResNet, instead of torchvision's own.)
"""
import importlib.util
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_malloc import keep_freed_memory  # noqa: E402


def main():
    depth, stem, batch, size, steps, threads, fmt = sys.argv[1:8]
    width = float(sys.argv[8]) if len(sys.argv) > 8 else 1.0
    in_channels = int(sys.argv[9]) if len(sys.argv) > 9 else 3
    serve = steps == "serve"
    depth, batch, size, threads = int(depth), int(batch), int(size), int(threads)
    steps = 0 if serve else int(steps)
    malloc = keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if width != 1.0 or in_channels != 3:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "make-fixtures.py")
        spec = importlib.util.spec_from_file_location("make_fixtures", path)
        fixtures = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fixtures)
        net = fixtures.ScaledResNet(depth, round(64 * width), in_channels, stem == "cifar")
        for m in net.modules():  # zero_init_residual, as torchvision's
            if isinstance(m, torchvision.models.resnet.BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, torchvision.models.resnet.Bottleneck):
                nn.init.zeros_(m.bn3.weight)
    else:
        net = getattr(torchvision.models, f"resnet{depth}")(zero_init_residual=True)
        net.fc = nn.Identity()
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
    net.train()
    x = torch.randn(batch, in_channels, size, size)
    if fmt == "channels_last":
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(batch, round(64 * width) * (8 if depth < 50 else 32))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step():
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=False)
        (net(x) * g).sum().backward()
        opt.step()
        return time.perf_counter() - t0, time.process_time() - c0

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # warm-up
    if serve:
        print(json.dumps({"ready": True, "malloc": malloc}), flush=True)
        for line in sys.stdin:
            if line.strip() != "step":
                break
            s, c = step()
            print(json.dumps({"s": s, "cpu": c}), flush=True)
        print(json.dumps({"max_rss_bytes": rss()}), flush=True)
        return
    times, cpu = [], []
    for _ in range(steps):
        s, c = step()
        times.append(s)
        cpu.append(c)
    best = min(times)
    print(json.dumps({"images_per_s": batch / best, "seconds_per_step": times,
                      "images_per_cpu_s": batch / min(cpu),
                      "max_rss_bytes": rss(), "malloc": malloc}))


if __name__ == "__main__":
    main()
