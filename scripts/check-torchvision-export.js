#!/usr/bin/env node
// check-torchvision-export.js: end-to-end check of the checkpoint contract both ways. (1) A backbone
// saved by mveb loads into torchvision.models.resnetXX() with strict=False (only fc.* missing,
// nothing unexpected), and torchvision's eval-mode features for the same input equal ours. (2) A
// torchvision resnetXX state dict (with fc, I64 num_batches_tracked, trained BN statistics) written
// as safetensors loads into ours with strict=true and gives torchvision's eval features. Needs the built
// addon (MVEB_ADDON_PATH or build/Release) and PyTorch + torchvision for /usr/bin/python3.
//   node scripts/check-torchvision-export.js [depth=50]
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const addonPath = process.env.MVEB_ADDON_PATH || path.join(root, 'build', 'Release', 'mveb.node');
const addon = require(addonPath);
const depth = Number(process.argv[2] || 50);

(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mveb-export-'));
  const net = addon.modelResnet({ depth, stem: 'imagenet', inChannels: 3, zeroInitResidual: false, seed: 3, device: 'cpu' });
  const x = addon.tensorRandn([2, 3, 64, 64], 5, 'cpu');
  // a few train steps so the running statistics and counters are not the defaults
  for (let i = 0; i < 2; i++) (await addon.modelForward(net, x, true)).dispose();
  const feats = await addon.modelForward(net, x, false);
  const sd = addon.modelNamed(net, 'stateDict');
  const weights = path.join(dir, 'backbone.safetensors');
  fs.writeFileSync(weights, await addon.safetensorsEncode(sd.names, sd.tensors, { format: 'pt' }));
  fs.writeFileSync(path.join(dir, 'io.safetensors'), await addon.safetensorsEncode(['input', 'features'], [x, feats], {}));
  const py = `
import json, struct, sys, torch, torchvision
def read(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        dt = {'F32': torch.float32, 'I64': torch.int64, 'I32': torch.int32}[v['dtype']]
        s, e = v['data_offsets']
        out[k] = torch.frombuffer(bytearray(b[8 + n + s:8 + n + e]), dtype=dt).reshape(v['shape']) if e > s else torch.zeros(v['shape'], dtype=dt)
    return out
sd = read(sys.argv[1]); io = read(sys.argv[2])
net = getattr(torchvision.models, 'resnet${depth}')()
r = net.load_state_dict(sd, strict=False)
assert sorted(r.missing_keys) == ['fc.bias', 'fc.weight'], r.missing_keys
assert not r.unexpected_keys, r.unexpected_keys
assert int(net.bn1.num_batches_tracked) == 2, int(net.bn1.num_batches_tracked)
net.fc = torch.nn.Identity(); net.eval()
with torch.no_grad(): f = net(io['input'])
err = ((f - io['features']).norm() / io['features'].norm()).item()
print(json.dumps({'missing': r.missing_keys, 'unexpected': r.unexpected_keys, 'rel_error': err}))
assert err < 1e-4, err
`;
  const r = spawnSync('/usr/bin/python3', ['-c', py, weights, path.join(dir, 'io.safetensors')], { encoding: 'utf8' });
  process.stdout.write(r.stdout);
  if (r.status !== 0) {
    process.stderr.write(r.stderr);
    console.error(`FAIL: resnet${depth} export does not load into torchvision`);
    process.exit(1);
  }
  console.log(`ok: resnet${depth} saved by mveb loads into torchvision.models.resnet${depth}() (strict=False: only fc missing) and gives the same eval features`);

  // (2) torchvision -> mveb
  const py2 = `
import json, struct, sys, torch, torchvision
torch.manual_seed(0)
net = getattr(torchvision.models, 'resnet${depth}')()
net.train()
with torch.no_grad():
    for _ in range(3): net(torch.randn(4, 3, 64, 64))  # non-default running statistics
net.eval()
x = torch.randn(2, 3, 64, 64)
sd = dict(net.state_dict())  # with fc.*
net.fc = torch.nn.Identity()
with torch.no_grad(): f = net(x)
def write(path, tensors):
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        t = t.contiguous(); b = t.numpy().tobytes()
        header[k] = {'dtype': {torch.float32: 'F32', torch.int64: 'I64'}[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header).encode(); h += b' ' * ((8 - len(h) % 8) % 8)
    open(path, 'wb').write(struct.pack('<Q', len(h)) + h + b''.join(blobs))
write(sys.argv[1], sd)
write(sys.argv[2], {'input': x, 'features': f})
`;
  const tvWeights = path.join(dir, 'torchvision.safetensors');
  const tvIo = path.join(dir, 'tv-io.safetensors');
  const r2 = spawnSync('/usr/bin/python3', ['-c', py2, tvWeights, tvIo], { encoding: 'utf8' });
  if (r2.status !== 0) {
    process.stderr.write(r2.stderr);
    process.exit(1);
  }
  const ours = addon.modelResnet({ depth, stem: 'imagenet', inChannels: 3, seed: 9, device: 'cpu' });
  const tv = await addon.safetensorsDecode(fs.readFileSync(tvWeights), 'cpu');
  addon.modelLoadStateDict(ours, tv.names, tv.tensors, true);
  const io = await addon.safetensorsDecode(fs.readFileSync(tvIo), 'cpu');
  const mine = addon.tensorReadSync(await addon.modelForward(ours, io.tensors[0], false));
  const ref = addon.tensorReadSync(io.tensors[1]);
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (mine[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  const err = Math.sqrt(num / den);
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(JSON.stringify({ torchvision_entries: tv.names.length, rel_error: err }));
  if (!(err < 1e-4)) {
    console.error(`FAIL: torchvision resnet${depth} weights give different features in mveb (${err})`);
    process.exit(1);
  }
  console.log(`ok: a torchvision resnet${depth} state dict (with fc, I64 counters) loads into mveb with strict=true and gives torchvision's eval features`);
})();
