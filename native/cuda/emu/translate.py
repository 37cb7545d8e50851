#!/usr/bin/env python3
"""translate.py IN.cu OUT.cpp: rewrites CUDA launches `kernel<<<grid, block, smem, stream>>>(args);`
into `::emu::launch(grid, block, [&] { kernel(args); });` for the CPU emulation (run.sh)."""
import re
import sys

src = open(sys.argv[1]).read()
pattern = re.compile(r'([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\);', re.S)


def split_top(s):
    parts, depth, cur = [], 0, ''
    for ch in s:
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def repl(m):
    cfg = split_top(m.group(2))
    return '::emu::launch(%s, %s, [&] { %s(%s); });' % (cfg[0], cfg[1], m.group(1), m.group(3))


out, n = pattern.subn(repl, src)
if '<<<' in out:
    sys.exit('translate.py: an untranslated launch is left in ' + sys.argv[1])
open(sys.argv[2], 'w').write('// generated from %s by native/cuda/emu/translate.py\n#line 1 "%s"\n' % (sys.argv[1], sys.argv[1]) + out)
print('%s: %d launches' % (sys.argv[1], n))
