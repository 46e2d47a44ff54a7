#!/usr/bin/python3
"""PyTorch reference for the transformer ops of qlora.h (test/test_ops.c).

Usage: ops_ref.py DIR

DIR/ops_cfg.txt lists one case per line, "<op> <tag> <dims...>"; the inputs of a case are raw
little-endian arrays DIR/<tag>_<name>.<f32|i32|u8>. For every case this script writes the forward
outputs and the gradients (float32 autograd, as HF computes them) as DIR/<tag>_<name>.ref.f32
(.ref.f64 for a loss sum). Written independently of qlora.h, following HF transformers'
modeling_llama.py (LlamaRMSNorm, rotate_half RoPE, repeat_kv, eager attention, LlamaMLP).
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

D = sys.argv[1]


def load(tag, name, dtype, shape):
    ext = {np.float32: "f32", np.int32: "i32", np.uint8: "u8"}[dtype]
    a = np.fromfile(os.path.join(D, "%s_%s.%s" % (tag, name, ext)), dtype=dtype)
    return torch.from_numpy(a.reshape(shape).copy())


def save(tag, name, t, dtype=np.float32):
    ext = "f64" if dtype == np.float64 else "f32"
    np.asarray(t.detach().numpy(), dtype=dtype).tofile(os.path.join(D, "%s_%s.ref.%s" % (tag, name, ext)))


def leaf(t):
    return t.clone().requires_grad_(True)


def rmsnorm(tag, N, C, eps):
    x, w, g = leaf(load(tag, "x", np.float32, (N, C))), leaf(load(tag, "w", np.float32, (C,))), \
        load(tag, "g", np.float32, (N, C))
    var = x.pow(2).mean(-1, keepdim=True)
    y = w * (x * torch.rsqrt(var + eps))
    (y * g).sum().backward()
    save(tag, "out", y)
    save(tag, "rstd", torch.rsqrt(var + eps).reshape(N))
    save(tag, "dx", x.grad)
    save(tag, "dw", w.grad)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope(tag, N, NH, HD, theta, factor, max_pos):
    x, g = leaf(load(tag, "x", np.float32, (N, NH, HD))), load(tag, "g", np.float32, (N, NH, HD))
    pos = load(tag, "pos", np.int32, (N,)).long()
    inv_freq = 1.0 / (theta ** (torch.arange(0, HD, 2, dtype=torch.int64).float() / HD))
    t = torch.arange(max_pos, dtype=torch.float32) / factor
    freqs = torch.outer(t, inv_freq)
    save(tag, "cos", freqs.cos())
    save(tag, "sin", freqs.sin())
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[pos][:, None, :], emb.sin()[pos][:, None, :]
    y = (x * cos) + (rotate_half(x) * sin)
    (y * g).sum().backward()
    save(tag, "out", y)
    save(tag, "dx", x.grad)


def attention(tag, B, T, NH, NKV, HD, has_mask):
    q = leaf(load(tag, "q", np.float32, (B, T, NH, HD)))
    k = leaf(load(tag, "k", np.float32, (B, T, NKV, HD)))
    v = leaf(load(tag, "v", np.float32, (B, T, NKV, HD)))
    g = load(tag, "g", np.float32, (B, T, NH, HD))
    km = load(tag, "mask", np.uint8, (B, T)).bool() if has_mask else torch.ones(B, T, dtype=torch.bool)
    G = NH // NKV
    qh = q.transpose(1, 2)                                   # (B, NH, T, HD)
    kh = k.transpose(1, 2).repeat_interleave(G, dim=1)       # repeat_kv: kv head j serves q heads jG..jG+G-1
    vh = v.transpose(1, 2).repeat_interleave(G, dim=1)
    s = torch.matmul(qh, kh.transpose(2, 3)) * (HD ** -0.5)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal[None, None] & km[:, None, None, :]
    anyrow = allowed.any(-1, keepdim=True)
    s = s.masked_fill(~allowed, float("-inf"))
    s = torch.where(anyrow, s, torch.zeros_like(s))          # a row with no allowed key: probability 0
    p = torch.softmax(s, dim=-1) * anyrow
    o = torch.matmul(p, vh).transpose(1, 2)                  # (B, T, NH, HD)
    (o * g).sum().backward()
    save(tag, "out", o)
    save(tag, "att", p)
    save(tag, "dq", q.grad)
    save(tag, "dk", k.grad)
    save(tag, "dv", v.grad)


def swiglu(tag, n):
    gt, u, g = leaf(load(tag, "gate", np.float32, (n,))), leaf(load(tag, "up", np.float32, (n,))), \
        load(tag, "g", np.float32, (n,))
    h = F.silu(gt) * u
    (h * g).sum().backward()
    save(tag, "h", h)
    save(tag, "dgate", gt.grad)
    save(tag, "dup", u.grad)


def embedding(tag, N, C, V):
    table, g = leaf(load(tag, "table", np.float32, (V, C))), load(tag, "g", np.float32, (N, C))
    tok = load(tag, "tok", np.int32, (N,)).long()
    y = F.embedding(tok, table)
    (y * g).sum().backward()
    save(tag, "out", y)
    save(tag, "dtable", table.grad)


def cross_entropy(tag, N, V):
    logits = leaf(load(tag, "logits", np.float32, (N, V)))
    tgt = load(tag, "tgt", np.int32, (N,)).long()
    loss = F.cross_entropy(logits, tgt, ignore_index=-100, reduction="sum")
    count = int((tgt != -100).sum())
    (loss / max(count, 1)).backward()
    save(tag, "loss", loss.reshape(1), np.float64)
    save(tag, "rows", F.cross_entropy(logits, tgt, ignore_index=-100, reduction="none"))
    save(tag, "dlogits", logits.grad)
    save(tag, "logsm", F.log_softmax(logits.detach(), dim=-1))


OPS = {"rmsnorm": rmsnorm, "rope": rope, "attention": attention, "swiglu": swiglu,
       "embedding": embedding, "cross_entropy": cross_entropy}

torch.set_num_threads(1)
with open(os.path.join(D, "ops_cfg.txt")) as f:
    for line in f:
        w = line.split()
        if not w:
            continue
        args = [float(a) if ("." in a or "e" in a) else int(a) for a in w[2:]]
        OPS[w[0]](w[1], *args)
