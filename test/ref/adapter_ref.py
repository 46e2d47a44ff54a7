#!/usr/bin/env python3
"""Independent reader / writer of PEFT LoRA adapter folders (shared/spec/qlora-formats.md §5.3, §7),
with the standard json module and numpy only.

usage: adapter_ref.py check DIR     checks DIR/adapter_config.json and DIR/adapter_model.safetensors
                                     written by qlora_adapter_save against DIR/expect.txt:
                                       "config <r> <lora_alpha> <lora_dropout> <base_model>"
                                       "module <name> <in> <out> <rank> <alpha>"   (one per module)
                                     and the raw values DIR/raw/<name>.{A,B}.f32; exit 1 on any mismatch
       adapter_ref.py write DIR     writes two PEFT-style adapters as PEFT/transformers would:
         DIR/peft1: target_modules list [q_proj, v_proj], keys "...lora_A.default.weight", no
                    lora_dropout / use_rslora / bias keys (PEFT defaults), r 8, lora_alpha 16,
                    rank_pattern {"model.layers.1.self_attn.v_proj": 4}, alpha_pattern {"v_proj": 32},
                    one F16 tensor; 2 layers of q/v.
         DIR/peft2: target_modules regex string, layers_to_transform [0], BF16 tensors, keys without
                    an adapter name, use_rslora true, lora_dropout 0.1.
       Each also gets raw/<module>.{A,B}.f32: the values as float32 after the dtype round trip.
Model dims: hidden 64, kv 32, intermediate 96 (q/o 64x64, k/v 32x64, gate/up 96x64, down 64x96).
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {'F32': ('<f4', 4), 'F16': ('<f2', 2), 'BF16': (None, 2)}


def read_safetensors(path):
    raw = open(path, 'rb').read()
    (n,) = struct.unpack_from('<Q', raw, 0)
    header = json.loads(raw[8:8 + n].decode('utf-8'))
    data = raw[8 + n:]
    meta = header.pop('__metadata__', None)
    tensors, end = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]['data_offsets'][0]):
        b, e = info['data_offsets']
        if b != end:
            raise ValueError('%s: offsets not contiguous' % name)
        end = e
        numel = int(np.prod(info['shape'])) if info['shape'] else 1
        dt, size = DTYPES[info['dtype']]
        if e - b != numel * size:
            raise ValueError('%s: size' % name)
        buf = data[b:e]
        if info['dtype'] == 'BF16':
            arr = (np.frombuffer(buf, '<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dt).astype(np.float32)
        tensors[name] = (info['dtype'], info['shape'], arr.reshape(info['shape']))
    if end != len(data):
        raise ValueError('buffer not covered')
    return meta, tensors, n


def check(d):
    errors = []
    text = open(os.path.join(d, 'adapter_config.json'), encoding='utf-8').read()
    cfg = json.loads(text)
    if json.dumps(cfg, indent=2, sort_keys=True) != text:
        errors.append('adapter_config.json is not json.dumps(indent=2, sort_keys=True) output')
    exp_mods, exp_cfg = [], None
    for line in open(os.path.join(d, 'expect.txt')):
        f = line.split()
        if f[0] == 'config':
            exp_cfg = f[1:]
        elif f[0] == 'module':
            exp_mods.append((f[1], int(f[2]), int(f[3]), int(f[4]), float(f[5])))
    r, alpha, dropout, base = int(exp_cfg[0]), float(exp_cfg[1]), float(exp_cfg[2]), exp_cfg[3]
    fixed = {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'bias': 'none', 'fan_in_fan_out': False,
             'use_rslora': False, 'use_dora': False, 'init_lora_weights': True, 'modules_to_save': None,
             'inference_mode': True, 'revision': None, 'layers_to_transform': None, 'layers_pattern': None,
             'lora_bias': False, 'r': r, 'base_model_name_or_path': base}
    for k, v in fixed.items():
        if k not in cfg or cfg[k] != v or type(cfg[k]) is not type(v):
            errors.append('%s = %r, expected %r' % (k, cfg.get(k, '<missing>'), v))
    if cfg.get('lora_alpha') != alpha or (alpha == int(alpha) and not isinstance(cfg.get('lora_alpha'), int)):
        errors.append('lora_alpha = %r, expected %r (an int when integral)' % (cfg.get('lora_alpha'), alpha))
    if abs(cfg.get('lora_dropout', -1) - dropout) > 1e-7:
        errors.append('lora_dropout = %r' % cfg.get('lora_dropout'))
    targets = sorted({m[0].split('.')[-1] for m in exp_mods})
    if cfg.get('target_modules') != targets:
        errors.append('target_modules = %r, expected %r' % (cfg.get('target_modules'), targets))
    rp = {m[0]: m[3] for m in exp_mods if m[3] != r}
    ap = {m[0]: m[4] for m in exp_mods if m[4] != alpha}
    if cfg.get('rank_pattern') != rp:
        errors.append('rank_pattern = %r, expected %r' % (cfg.get('rank_pattern'), rp))
    if cfg.get('alpha_pattern') != ap:
        errors.append('alpha_pattern = %r, expected %r' % (cfg.get('alpha_pattern'), ap))

    meta, tensors, hlen = read_safetensors(os.path.join(d, 'adapter_model.safetensors'))
    if meta != {'format': 'pt'}:
        errors.append('__metadata__ = %r' % meta)
    if (8 + hlen) % 8:
        errors.append('header not padded to 8 bytes')
    want_keys = set()
    for name, n_in, n_out, rank, _ in exp_mods:
        for ab, shape in (('A', [rank, n_in]), ('B', [n_out, rank])):
            key = 'base_model.model.%s.lora_%s.weight' % (name, ab)
            want_keys.add(key)
            if key not in tensors:
                errors.append('missing tensor ' + key)
                continue
            dt, sh, arr = tensors[key]
            ref = np.fromfile(os.path.join(d, 'raw', '%s.%s.f32' % (name, ab)), '<f4')
            if dt != 'F32' or sh != shape or arr.tobytes() != ref.tobytes():
                errors.append('%s: %s %r, values equal %s' % (key, dt, sh, arr.tobytes() == ref.tobytes()))
    extra = set(tensors) - want_keys
    if extra:
        errors.append('unexpected tensors %r' % sorted(extra))
    for e in errors:
        print('adapter_ref check:', e)
    return 1 if errors else 0


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (dtype, array)}; the safetensors library's layout (sorted by name, padded header)."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header['__metadata__'] = metadata
    for name in sorted(tensors):
        dt, arr = tensors[name]
        if dt == 'F32':
            b = arr.astype('<f4').tobytes()
        elif dt == 'F16':
            b = arr.astype('<f2').tobytes()
        else:  # BF16, round to nearest even
            u = arr.astype(np.float32).view(np.uint32).astype(np.uint64)
            u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype('<u2')
            b = u.tobytes()
        header[name] = {'dtype': dt, 'shape': list(arr.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(',', ':')).encode('utf-8')
    h += b' ' * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def as_f32(dt, arr):
    if dt == 'F16':
        return arr.astype('<f2').astype(np.float32)
    if dt == 'BF16':
        u = arr.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
        return u.astype(np.uint32).view(np.float32)
    return arr.astype(np.float32)


DIMS = {'self_attn.q_proj': (64, 64), 'self_attn.k_proj': (64, 32), 'self_attn.v_proj': (64, 32),
        'self_attn.o_proj': (64, 64), 'mlp.gate_proj': (64, 96), 'mlp.up_proj': (64, 96), 'mlp.down_proj': (96, 64)}


def write_adapter(d, cfg, modules, key_fmt, rng):
    """modules: list of (module name, rank, dtype)."""
    os.makedirs(os.path.join(d, 'raw'), exist_ok=True)
    tensors = {}
    for name, rank, dt in modules:
        n_in, n_out = DIMS[name.split('.', 3)[3]]
        a = (rng.standard_normal((rank, n_in)) * 0.1).astype(np.float32)
        b = (rng.standard_normal((n_out, rank)) * 0.1).astype(np.float32)
        for ab, arr in (('A', a), ('B', b)):
            tensors[key_fmt % (name, ab)] = (dt, arr)
            as_f32(dt, arr).astype('<f4').tofile(os.path.join(d, 'raw', '%s.%s.f32' % (name, ab)))
    write_safetensors(os.path.join(d, 'adapter_model.safetensors'), tensors, {'format': 'pt'})
    with open(os.path.join(d, 'adapter_config.json'), 'w') as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True))


def write(d):
    rng = np.random.default_rng(7)
    cfg1 = {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': 8, 'lora_alpha': 16,
            'target_modules': ['q_proj', 'v_proj'], 'base_model_name_or_path': 'peft/base',
            'rank_pattern': {'model.layers.1.self_attn.v_proj': 4}, 'alpha_pattern': {'v_proj': 32},
            'inference_mode': True, 'some_future_field': {'ignored': True}}
    mods1 = [('model.layers.0.self_attn.q_proj', 8, 'F32'), ('model.layers.0.self_attn.v_proj', 8, 'F16'),
             ('model.layers.1.self_attn.q_proj', 8, 'F32'), ('model.layers.1.self_attn.v_proj', 4, 'F32')]
    write_adapter(os.path.join(d, 'peft1'), cfg1, mods1, 'base_model.model.%s.lora_%s.default.weight', rng)
    cfg2 = {'peft_type': 'LORA', 'r': 4, 'lora_alpha': 8, 'lora_dropout': 0.1, 'use_rslora': True,
            'target_modules': r'.*\.(q_proj|k_proj)$', 'layers_to_transform': [0], 'bias': 'none'}
    mods2 = [('model.layers.0.self_attn.q_proj', 4, 'BF16'), ('model.layers.0.self_attn.k_proj', 4, 'BF16')]
    write_adapter(os.path.join(d, 'peft2'), cfg2, mods2, 'base_model.model.%s.lora_%s.weight', rng)
    return 0


if __name__ == '__main__':
    sys.exit({'check': check, 'write': write}[sys.argv[1]](sys.argv[2]))
