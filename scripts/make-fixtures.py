#!/usr/bin/python3
"""make-fixtures.py: writes the PyTorch golden fixtures of the model area into test/fixtures/.

Run (needs PyTorch + torchvision for /usr/bin/python3, e.g. Debian python3-torch 1.13):
    /usr/bin/python3 scripts/make-fixtures.py
Checked by test/native/test_model.cpp (mveb_native_tests "model:"). The outputs are committed, so
tests never need PyTorch.

Each fixture is a safetensors file (written here with a tiny writer, no extra package) holding a
small ResNet or projector with fixed float32 weights, computed in float64 by torchvision's own
BasicBlock/Bottleneck/_make_layer code:
    input, grad_out                   the inputs (NCHW / [N, D])
    features, input_grad              train-mode forward output and d(sum(features*grad_out))/d input
    features_eval                     eval-mode forward output with the initial running statistics
    param.<name>, buffer.<name>       initial parameters (OIHW) and buffers (incl. num_batches_tracked, I64)
    grad.<name>                       every parameter gradient
    after.<name>                      buffers after the one train-mode forward
projector_optimizer.safetensors: sgd3.<name> / lars3.<name>, the parameters after three training
steps with torch.optim.SGD and with the official LARS (class LARS below).
Metadata names the architecture. Widths are scaled (width multiplier w: stage widths round(64 w) *
{1,2,4,8}) to keep all fixtures small. torchvision_keys.json lists the state-dict names and shapes of
the real torchvision resnet18/34/50 so the native test can check our naming against them.
"""
import json
import os
import struct
import sys

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures")


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        if t.dtype == torch.float64:
            t = t.float()
        dtype = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


class ScaledResNet(nn.Module):
    """torchvision's ResNet with stage widths w0 * {1,2,4,8}, a cifar or imagenet stem, no fc."""

    _make_layer = ResNet._make_layer

    def __init__(self, depth, w0, in_channels, cifar):
        super().__init__()
        block, layers = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                         50: (Bottleneck, [3, 4, 6, 3])}[depth]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = w0, 1, 1, 64
        if cifar:
            self.conv1 = nn.Conv2d(in_channels, w0, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, w0, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, w0, layers[0])
        self.layer2 = self._make_layer(block, w0 * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, w0 * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, w0 * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def randomize(model, gen):
    """Fixed float32 weights with every path active: kaiming convs, random BN affine and stats."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features ** 0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=gen) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=gen) * 2 - 1) * bound)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=gen) - 0.5) * 0.4)
                m.running_mean.copy_((torch.rand(m.running_mean.shape, generator=gen) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(3)
        # Residual-branch scale 0.3 on the last BN of each Bottleneck: with gamma ~ U(0.5, 1.5)
        # everywhere, the 16-block narrow ResNet-50 is so ill-conditioned that PyTorch's OWN float32
        # result differs from float64 by up to 5e-2 (measured); with 0.3 its float32 error is ~1e-5,
        # so a 1e-4 comparison tests the implementation, not the conditioning. (Trained and
        # zero-init-residual ResNets are even closer to the identity path.)
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.bn3.weight.mul_(0.3)


def fixture(model, x, grad_out, meta, path):
    tensors = {}
    model = model.float()
    for n, p in model.named_parameters():
        tensors["param." + n] = p.detach().clone()
    for n, b in model.named_buffers():
        tensors["buffer." + n] = b.detach().clone()
    model = model.double()
    x = x.double()
    model.eval()
    with torch.no_grad():
        feats_eval = model(x)
    model.train()
    xg = x.clone().requires_grad_(True)
    feats = model(xg)
    (feats * grad_out.double()).sum().backward()
    tensors["input"] = x.float()
    tensors["grad_out"] = grad_out.float()
    tensors["features"] = feats.detach().float()
    tensors["features_eval"] = feats_eval.float()
    tensors["input_grad"] = xg.grad.float()
    for n, p in model.named_parameters():
        tensors["grad." + n] = p.grad.float()
    for n, b in model.named_buffers():
        tensors["after." + n] = b.detach().float() if b.dtype == torch.float64 else b.detach().clone()
    meta = dict(meta, torch=torch.__version__, torchvision=torchvision.__version__)
    write_safetensors(path, tensors, meta)
    print(f"{os.path.relpath(path)}: {os.path.getsize(path)} bytes, features {list(feats.shape)}")


class LARS(torch.optim.Optimizer):
    """The official code's LARS (mveb-spec section 4, Barlow-Twins style), with both filters on:
    biases and BN parameters (ndim == 1) get no weight decay and no trust-ratio scaling."""

    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0, torch.where(update_norm > 0, g["eta"] * param_norm / update_norm, one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def optimizer_fixture(model, x, grad_out, path):
    """Three training steps (train-mode forward, backward of sum(y * g), optimiser step) with
    torch.optim.SGD (momentum 0.9, weight decay 1e-2, lr 0.1) and with the official LARS (momentum
    0.9, weight decay 1e-2, eta 0.001, lr 0.5), in float64 from the same float32 start."""
    import copy
    tensors = {"input": x.float(), "grad_out": grad_out.float()}
    for n, p in model.float().named_parameters():
        tensors["param." + n] = p.detach().clone()
    for n, b in model.named_buffers():
        tensors["buffer." + n] = b.detach().clone()
    for kind in ("sgd", "lars"):
        m = copy.deepcopy(model).double().train()
        opt = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2) if kind == "sgd"
               else LARS(m.parameters(), lr=0.5, weight_decay=1e-2, momentum=0.9, eta=0.001))
        for _ in range(3):
            opt.zero_grad()
            (m(x.double()) * grad_out.double()).sum().backward()
            opt.step()
        for n, p in m.named_parameters():
            tensors[f"{kind}3.{n}"] = p.detach().float()
    write_safetensors(path, tensors, {"kind": "projector_optimizer", "steps": 3})
    print(f"{os.path.relpath(path)}: {os.path.getsize(path)} bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(20240601)
    cases = [
        # name, depth, width multiplier, in channels, cifar, N, H, W
        ("resnet18_cifar_c3", 18, 0.125, 3, True, 4, 32, 32),
        ("resnet18_cifar_c1", 18, 0.0625, 1, True, 3, 17, 15),
        ("resnet50_imagenet_c3", 50, 0.0625, 3, False, 4, 64, 64),
    ]
    for name, depth, wm, cin, cifar, n, h, w in cases:
        w0 = int(round(64 * wm))
        model = ScaledResNet(depth, w0, cin, cifar)
        randomize(model, gen)
        x = torch.randn((n, cin, h, w), generator=gen)
        fdim = w0 * 8 * (4 if depth == 50 else 1)
        grad_out = torch.randn((n, fdim), generator=gen)
        meta = {"kind": "resnet", "depth": depth, "stem": "cifar" if cifar else "imagenet", "in_channels": cin,
                "width_multiplier": wm}
        fixture(model, x, grad_out, meta, os.path.join(OUT, name + ".safetensors"))

    # projector: Linear(no bias) -> BN1d -> ReLU -> Linear(no bias) -> BN1d -> ReLU -> Linear(bias)
    din, dh, dout, n = 32, 48, 24, 8
    proj = nn.Sequential(nn.Linear(din, dh, bias=False), nn.BatchNorm1d(dh), nn.ReLU(inplace=True),
                         nn.Linear(dh, dh, bias=False), nn.BatchNorm1d(dh), nn.ReLU(inplace=True),
                         nn.Linear(dh, dout, bias=True))
    randomize(proj, gen)
    x = torch.randn((n, din), generator=gen)
    grad_out = torch.randn((n, dout), generator=gen)
    fixture(proj, x, grad_out, {"kind": "projector", "in_dim": din, "hidden_dim": dh, "out_dim": dout},
            os.path.join(OUT, "projector.safetensors"))
    # optimiser steps on a small projector (its own generator: the fixtures above stay unchanged)
    ogen = torch.Generator().manual_seed(7)
    small = nn.Sequential(nn.Linear(12, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(inplace=True),
                          nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(inplace=True),
                          nn.Linear(16, 8, bias=True))
    randomize(small, ogen)
    optimizer_fixture(small, torch.randn((10, 12), generator=ogen), torch.randn((10, 8), generator=ogen),
                      os.path.join(OUT, "projector_optimizer.safetensors"))

    keys = {}
    for depth in (18, 34, 50):
        sd = getattr(torchvision.models, f"resnet{depth}")().state_dict()
        keys[str(depth)] = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
                            for k, v in sd.items() if not k.startswith("fc.")]
    with open(os.path.join(OUT, "torchvision_keys.json"), "w") as f:
        json.dump(keys, f, separators=(",", ":"))
    print("test/fixtures/torchvision_keys.json written")


if __name__ == "__main__":
    sys.exit(main())
