#!/usr/bin/env node
// check-torchvision-export.js: end-to-end check of the export contract: a backbone saved by
// Model.save() loads into torchvision.models.resnetXX() with strict=False (only fc.* missing, nothing
// unexpected), and torchvision's eval-mode features for the same input equal ours. Needs the built
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
  fs.rmSync(dir, { recursive: true, force: true });
  process.stdout.write(r.stdout);
  if (r.status !== 0) {
    process.stderr.write(r.stderr);
    console.error(`FAIL: resnet${depth} export does not load into torchvision`);
    process.exit(1);
  }
  console.log(`ok: resnet${depth} saved by mveb loads into torchvision.models.resnet${depth}() (strict=False: only fc missing) and gives the same eval features`);
})();
