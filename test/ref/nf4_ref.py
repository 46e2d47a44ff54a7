#!/usr/bin/env python3
"""Independent NF4 + double-quantization reference in numpy, following bitsandbytes' rules as written in
shared/spec/qlora-formats.md §1-2. The 8-bit dynamic map is built with torch exactly as bitsandbytes'
create_dynamic_map does (torch float32 linspace and scaling), since its float32 bits depend on torch.

usage: nf4_ref.py CASES_DIR
  reads  CASES_DIR/cases.txt  lines "name n blocksize" and CASES_DIR/<name>.x (float32 LE, n values)
  writes CASES_DIR/<name>.codes (uint8, (n+1)//2), <name>.absmax (float32), <name>.qabsmax (uint8),
         <name>.nested (float32), <name>.offset (float32 scalar), and maps.bin (signed then unsigned, 2x256 float32)
"""
import sys, os
import numpy as np

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
THRESH = ((NF4[:-1] + NF4[1:]) / np.float32(2)).astype(np.float32)


def dynamic_map(signed):
    import torch
    data = []
    for i in range(7):
        k = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        b = torch.linspace(0.1, 1, k)
        m = (b[:-1] + b[1:]) / 2.0
        data += ((10 ** (-6 + i)) * m).tolist()
        if signed:
            data += (-(10 ** (-6 + i)) * m).tolist()
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data).numpy().astype(np.float32)


def normalize(v, amax):
    """y = v * (1/amax) in float32; zero block -> 0; overflowing reciprocal -> divide."""
    with np.errstate(divide='ignore', over='ignore', invalid='ignore'):
        inv = np.float32(1) / amax if amax > 0 else np.float32(0)
        if not np.isfinite(inv):
            return (v / amax).astype(np.float32)
        return (v * inv).astype(np.float32)


def nf4_quantize(x, bs):
    n = len(x)
    nb = (n + bs - 1) // bs
    absmax = np.zeros(nb, np.float32)
    codes = np.zeros(n + (n & 1), np.uint8)
    codes[n:] = 7
    for b in range(nb):
        blk = x[b * bs:(b + 1) * bs]
        amax = np.float32(np.max(np.abs(blk)))
        absmax[b] = amax
        y = normalize(blk, amax)
        codes[b * bs:b * bs + len(blk)] = np.searchsorted(THRESH, y, side='left')
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)
    return packed, absmax


def blockwise8(v, bs, cmap):
    mids = ((cmap[:-1] + cmap[1:]) * np.float32(0.5)).astype(np.float32)
    n = len(v)
    nb = (n + bs - 1) // bs
    q = np.zeros(n, np.uint8)
    scale = np.zeros(nb, np.float32)
    for b in range(nb):
        blk = v[b * bs:(b + 1) * bs]
        amax = np.float32(np.max(np.abs(blk)))
        scale[b] = amax
        q[b * bs:b * bs + len(blk)] = np.searchsorted(mids, normalize(blk, amax), side='left')
    return q, scale


def main():
    d = sys.argv[1]
    smap, umap = dynamic_map(True), dynamic_map(False)
    np.concatenate([smap, umap]).astype(np.float32).tofile(os.path.join(d, 'maps.bin'))
    for line in open(os.path.join(d, 'cases.txt')):
        if not line.strip():
            continue
        name, n, bs = line.split()
        n, bs = int(n), int(bs)
        x = np.fromfile(os.path.join(d, name + '.x'), dtype='<f4', count=n)
        packed, absmax = nf4_quantize(x, bs)
        packed.tofile(os.path.join(d, name + '.codes'))
        absmax.tofile(os.path.join(d, name + '.absmax'))
        offset = np.float32(sum(float(a) for a in absmax) / len(absmax))   # sequential double sum
        q, nested = blockwise8((absmax - offset).astype(np.float32), 256, smap)
        q.tofile(os.path.join(d, name + '.qabsmax'))
        nested.tofile(os.path.join(d, name + '.nested'))
        np.array([offset], np.float32).tofile(os.path.join(d, name + '.offset'))


if __name__ == '__main__':
    main()
