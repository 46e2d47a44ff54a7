#!/usr/bin/env python3
"""PyTorch autograd reference for the LoRA linear layer (PEFT semantics, shared/spec/qlora-formats.md §5.1).

usage: lora_ref.py DIR
  DIR/meta.txt: lines "case M in out rank scale" ; per case DIR/<case>.{x,w,a,b,dy,mask} float32 LE
  (w is the dequantized NF4 weight (out,in); mask is the dropout multiplier per x element, 1 without dropout)
  writes DIR/<case>.{y,dx,da,db,merged} computed in float64 with torch autograd:
      y = x·Wᵀ + s·((x⊙mask)·Aᵀ)·Bᵀ,  loss = Σ dy⊙y,  merged = W + s·B·A
"""
import os
import sys
import numpy as np
import torch


def load(d, name, shape):
    return torch.from_numpy(np.fromfile(os.path.join(d, name), dtype='<f4').reshape(shape).astype(np.float64))


def main():
    d = sys.argv[1]
    for line in open(os.path.join(d, 'meta.txt')):
        if not line.strip():
            continue
        case, M, n_in, n_out, r, s = line.split()
        M, n_in, n_out, r, s = int(M), int(n_in), int(n_out), int(r), float(s)
        x = load(d, case + '.x', (M, n_in)).requires_grad_(True)
        w = load(d, case + '.w', (n_out, n_in))
        a = load(d, case + '.a', (r, n_in)).requires_grad_(True)
        b = load(d, case + '.b', (n_out, r)).requires_grad_(True)
        dy = load(d, case + '.dy', (M, n_out))
        mask = load(d, case + '.mask', (M, n_in))
        lora_a = torch.nn.functional.linear(x * mask, a)
        y = torch.nn.functional.linear(x, w) + s * torch.nn.functional.linear(lora_a, b)
        (y * dy).sum().backward()
        out = {'y': y.detach(), 'dx': x.grad, 'da': a.grad, 'db': b.grad, 'merged': w + s * (b.detach() @ a.detach())}
        for k, v in out.items():
            v.numpy().astype('<f4').tofile(os.path.join(d, case + '.' + k))


if __name__ == '__main__':
    main()
