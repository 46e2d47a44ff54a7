#!/usr/bin/env python3
"""Independent references for the optimizer (shared/spec/qlora-formats.md §4.2, §4.3, §4.5).

usage: optim_ref.py MODE DIR [MODE DIR ...]   (each DIR also receives ref_status: the mode's exit code)
  bnb DIR      numpy float32 re-implementation of bitsandbytes' AdamW kernels
  torch DIR    torch.optim.AdamW + clip_grad_norm_ + LambdaLR (transformers schedules)
  sched DIR    transformers' schedule formulas

DIR/config.txt holds "key value" lines: bits lr beta1 beta2 eps wd steps schedule warmup total clip
min8 nparams, then one "size <n>" line per tensor. Inputs (float32 little-endian):
  DIR/p<i>.f32              initial values of tensor i
  DIR/g<t>_<i>.f32          gradient of tensor i at step t (0-based); NaN/Inf allowed
Outputs:
  DIR/ref_p<i>.f32          final values
  bnb, fp32 state:  DIR/ref_m<i>.f32, DIR/ref_v<i>.f32
  bnb, 8-bit state: DIR/ref_q1_<i>.u8, ref_q2_<i>.u8, ref_a1_<i>.f32, ref_a2_<i>.f32
  torch:            DIR/ref_norm.f64 (pre-clip global norm per step)
bnb mode also parses DIR/opt.ckpt (the C checkpoint after the last step, if present) with its own
reader of the documented layout and exits 3 when its state differs from this reference.
sched mode reads DIR/sched.txt lines "kind lr warmup total nsteps" and writes DIR/ref_sched.f32
(nsteps values per line, concatenated).
"""
import math
import os
import struct
import sys

import numpy as np

F = np.float32


def read_config(d):
    cfg, sizes = {}, []
    for line in open(os.path.join(d, 'config.txt')):
        k, v = line.split()
        if k == 'size':
            sizes.append(int(v))
        else:
            cfg[k] = v
    return cfg, sizes


def lr_lambda(kind, step, warmup, total):
    """transformers.optimization: get_constant_schedule / *_with_warmup / linear / cosine."""
    if kind == 'constant':
        return 1.0
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if kind == 'constant_with_warmup':
        return 1.0
    if kind == 'linear':
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    if kind == 'cosine':
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    raise ValueError(kind)


def dynamic_map(signed):
    """bitsandbytes create_dynamic_map(signed, 7, 8), evaluated with torch float32 like the library."""
    import torch
    vals = []
    for i in range(7):
        k = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        b = torch.linspace(0.1, 1, k)
        mid = (b[:-1] + b[1:]) / 2.0
        vals += ((10 ** (-6 + i)) * mid).tolist()
        if signed:
            vals += (-(10 ** (-6 + i)) * mid).tolist()
    vals += [0.0, 1.0]
    vals.sort()
    return torch.tensor(vals).numpy().astype(F)


def encode(qmap, y):
    """Nearest map entry: the number of float32 midpoints strictly below y."""
    mid = ((qmap[:-1] + qmap[1:]) * F(0.5)).astype(F)
    return np.searchsorted(mid, y, side='left').astype(np.int64)


class Coef:
    def __init__(self, cfg, lr, t):
        b1, b2, eps, wd = F(cfg['beta1']), F(cfg['beta2']), F(cfg['eps']), F(cfg['wd'])
        self.b1, self.b2, self.wd = b1, b2, wd
        self.omb1, self.omb2 = F(1) - b1, F(1) - b2
        c1 = F(1) - F(float(b1) ** t)            # beta^t in double, rounded once to float32
        c2 = np.sqrt(F(1) - F(float(b2) ** t))
        self.step_size = (-lr * c2) / c1
        self.eps_c2 = c2 * eps
        self.decay = F(1) - lr * wd


def adam_update(p, g, m, v, c):
    """bitsandbytes kOptimizer32bit2State arithmetic on float32 arrays; non-finite g: m = v = 0, p kept."""
    ok = np.isfinite(g)
    gz = np.where(ok, g, F(0)).astype(F)
    m_new = (m * c.b1 + c.omb1 * gz).astype(F)
    v_new = (v * c.b2 + c.omb2 * (gz * gz)).astype(F)
    with np.errstate(invalid='ignore', divide='ignore'):
        p_new = (p + c.step_size * (m_new / (np.sqrt(v_new) + c.eps_c2))).astype(F)
        if c.wd > 0:
            p_new = (p_new * c.decay).astype(F)
    return (np.where(ok, p_new, p).astype(F), np.where(ok, m_new, F(0)).astype(F),
            np.where(ok, v_new, F(0)).astype(F))


def run_bnb(d):
    cfg, sizes = read_config(d)
    bits, steps, min8 = int(cfg['bits']), int(cfg['steps']), int(cfg['min8'])
    kind, warmup, total = cfg['schedule'], int(cfg['warmup']), int(cfg['total'])
    lr0 = float(F(cfg['lr']))
    map1, map2 = dynamic_map(True), dynamic_map(False)
    ps = [np.fromfile(os.path.join(d, 'p%d.f32' % i), '<f4') for i in range(len(sizes))]
    st = []
    for n in sizes:
        if bits == 8 and n >= min8:
            nb = (n + 255) // 256
            st.append({'q1': np.zeros(n, np.int64), 'q2': np.zeros(n, np.int64),
                       'a1': np.zeros(nb, F), 'a2': np.zeros(nb, F)})
        else:
            st.append({'m': np.zeros(n, F), 'v': np.zeros(n, F)})
    for t in range(steps):
        lr = F(lr0 * lr_lambda(kind, t, warmup, total))
        c = Coef(cfg, lr, t + 1)
        for i, n in enumerate(sizes):
            g = np.fromfile(os.path.join(d, 'g%d_%d.f32' % (t, i)), '<f4')
            s = st[i]
            if 'm' in s:
                ps[i], s['m'], s['v'] = adam_update(ps[i], g, s['m'], s['v'], c)
                continue
            for b in range((n + 255) // 256):
                lo, hi = b * 256, min(n, b * 256 + 256)
                m = (map1[s['q1'][lo:hi]] * s['a1'][b]).astype(F)
                v = (map2[s['q2'][lo:hi]] * s['a2'][b]).astype(F)
                ps[i][lo:hi], m, v = adam_update(ps[i][lo:hi], g[lo:hi], m, v, c)
                a1, a2 = F(np.max(np.abs(m))), F(np.max(np.abs(v)))
                s['a1'][b], s['a2'][b] = a1, a2
                if a1 > 0:
                    q1 = encode(map1, (m / a1).astype(F))
                    fix = np.signbit(map1[q1]) != np.signbit(m)
                    q1 = np.where(fix, q1 + np.where(m > 0, 1, -1), q1)
                else:
                    q1 = np.full(hi - lo, 127, np.int64)
                q2 = encode(map2, (v / a2).astype(F)) if a2 > 0 else np.zeros(hi - lo, np.int64)
                s['q1'][lo:hi], s['q2'][lo:hi] = q1, q2
    for i in range(len(sizes)):
        ps[i].astype('<f4').tofile(os.path.join(d, 'ref_p%d.f32' % i))
        s = st[i]
        if 'm' in s:
            s['m'].astype('<f4').tofile(os.path.join(d, 'ref_m%d.f32' % i))
            s['v'].astype('<f4').tofile(os.path.join(d, 'ref_v%d.f32' % i))
        else:
            s['q1'].astype(np.uint8).tofile(os.path.join(d, 'ref_q1_%d.u8' % i))
            s['q2'].astype(np.uint8).tofile(os.path.join(d, 'ref_q2_%d.u8' % i))
            s['a1'].astype('<f4').tofile(os.path.join(d, 'ref_a1_%d.f32' % i))
            s['a2'].astype('<f4').tofile(os.path.join(d, 'ref_a2_%d.f32' % i))
    ck = os.path.join(d, 'opt.ckpt')
    if os.path.exists(ck):
        return check_ckpt(ck, sizes, st, steps)
    return 0


def check_ckpt(path, sizes, st, steps):
    """Reads the checkpoint layout documented in qlora.h and compares the states with ours."""
    raw = open(path, 'rb').read()
    h = raw[:256]
    if h[:8] != b'QLORAOPT' or struct.unpack_from('<II', h, 8) != (1, 256):
        print('ckpt: bad magic/version')
        return 3
    step, nparams = struct.unpack_from('<qq', h, 16)
    rng_bytes = struct.unpack_from('<q', h, 48)[0]
    if step != steps or nparams != len(sizes):
        print('ckpt: step %d nparams %d' % (step, nparams))
        return 3
    pos = 256
    for i, n in enumerate(sizes):
        (nl,) = struct.unpack_from('<I', raw, pos)
        pos += 4 + nl
        cn, kind, zero = struct.unpack_from('<qii', raw, pos)
        pos += 16
        s = st[i]
        if cn != n or kind != (0 if 'm' in s else 1) or zero != 0:
            print('ckpt: param %d header' % i)
            return 3
        if kind == 0:
            m = np.frombuffer(raw, '<f4', n, pos)
            v = np.frombuffer(raw, '<f4', n, pos + 4 * n)
            pos += 8 * n
            if m.tobytes() != s['m'].tobytes() or v.tobytes() != s['v'].tobytes():
                print('ckpt: param %d fp32 state differs (max |dm| %g)' % (i, np.max(np.abs(m - s['m']))))
                return 3
        else:
            nb = (n + 255) // 256
            a1 = np.frombuffer(raw, '<f4', nb, pos)
            a2 = np.frombuffer(raw, '<f4', nb, pos + 4 * nb)
            q1 = np.frombuffer(raw, np.uint8, n, pos + 8 * nb)
            q2 = np.frombuffer(raw, np.uint8, n, pos + 8 * nb + n)
            pos += 8 * nb + 2 * n
            if (a1.tobytes() != s['a1'].tobytes() or a2.tobytes() != s['a2'].tobytes()
                    or not np.array_equal(q1, s['q1']) or not np.array_equal(q2, s['q2'])):
                print('ckpt: param %d 8-bit state differs' % i)
                return 3
    pos += rng_bytes
    h64 = 0xCBF29CE484222325
    for byte in raw[:pos]:
        h64 = ((h64 ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    if struct.unpack_from('<Q', raw, pos)[0] != h64 or raw[pos + 8:pos + 16] != b'QLORAEND' or len(raw) != pos + 16:
        print('ckpt: trailer')
        return 3
    return 0


def run_torch(d):
    import torch
    cfg, sizes = read_config(d)
    steps, kind = int(cfg['steps']), cfg['schedule']
    warmup, total, clip = int(cfg['warmup']), int(cfg['total']), float(cfg['clip'])
    ps = [torch.nn.Parameter(torch.from_numpy(np.fromfile(os.path.join(d, 'p%d.f32' % i), '<f4').copy()))
          for i in range(len(sizes))]
    opt = torch.optim.AdamW(ps, lr=float(F(cfg['lr'])), betas=(float(F(cfg['beta1'])), float(F(cfg['beta2']))),
                            eps=float(F(cfg['eps'])), weight_decay=float(F(cfg['wd'])))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(kind, s, warmup, total))
    norms = []
    for t in range(steps):
        for i, p in enumerate(ps):
            p.grad = torch.from_numpy(np.fromfile(os.path.join(d, 'g%d_%d.f32' % (t, i)), '<f4').copy())
        flat = torch.cat([p.grad.double() for p in ps])
        norms.append(float(torch.sqrt(torch.sum(flat * flat))))
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(ps, clip)
        opt.step()
        sched.step()
    for i, p in enumerate(ps):
        p.detach().numpy().astype('<f4').tofile(os.path.join(d, 'ref_p%d.f32' % i))
    np.array(norms, '<f8').tofile(os.path.join(d, 'ref_norm.f64'))
    return 0


def run_sched(d):
    out = []
    for line in open(os.path.join(d, 'sched.txt')):
        kind, lr, warmup, total, nsteps = line.split()
        lr0 = float(F(lr))
        out += [F(lr0 * lr_lambda(kind, s, int(warmup), int(total))) for s in range(int(nsteps))]
    np.array(out, '<f4').tofile(os.path.join(d, 'ref_sched.f32'))
    return 0


if __name__ == '__main__':
    # several "MODE DIR" pairs in one call (one torch import); each DIR gets ref_status (the exit code)
    worst = 0
    args = sys.argv[1:]
    for mode, d in zip(args[0::2], args[1::2]):
        rc = {'bnb': run_bnb, 'torch': run_torch, 'sched': run_sched}[mode](d)
        open(os.path.join(d, 'ref_status'), 'w').write('%d\n' % rc)
        worst = max(worst, rc)
    sys.exit(worst)
