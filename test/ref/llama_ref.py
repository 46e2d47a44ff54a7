"""Reference for test/test_llama.c: tiny random Llama checkpoints and an independent forward/backward.

Usage (run with /usr/bin/python3, from the repository root):
    llama_ref.py make OUT   writes the test models and inputs under OUT/ (numpy only)
    llama_ref.py ref  OUT   reads what test_llama.c dumped under OUT/<case>/dump and writes the
                            expected results under OUT/<case>/ref (needs torch)

The model is written from scratch with HF LlamaForCausalLM semantics (transformers
modeling_llama.py): pre-norm RMSNorm, rotate_half RoPE with rope_theta and linear rope_scaling
(angles computed in fp32 as HF does), GQA through repeat_kv, causal + key padding mask (masked
scores filled with finfo.min, as HF's eager attention), SwiGLU MLP, tied or untied lm_head, and the
causal-LM loss with HF's internal shift: logits[:, :-1] against labels[:, 1:], ignore_index -100,
mean over counted tokens. LoRA follows PEFT: y = x Wᵀ + s·(dropout(x) Aᵀ) Bᵀ. Everything is computed
in float64 from the exact weights the C side dumped (dequantized NF4, fp32 norms/embeddings, LoRA A/B).

Exchange files are raw little-endian arrays: *.f32, *.f64, *.i32, *.u8; text files are whitespace
separated. Safetensors files are written by hand (8-byte LE header length, JSON header padded with
spaces to a multiple of 8, raw bytes) so the script does not depend on the safetensors package.
"""
import json
import math
import os
import struct
import sys

import numpy as np

# name: model shape. dtype is the checkpoint dtype; shards > 1 writes an index + shards.
CASES = {
    "gqa":     dict(hidden=48, inter=97, layers=2, heads=6, kv=2, head_dim=None, vocab=301,
                    theta=10000.0, scaling=None, tied=False, dtype="F32", shards=1, eps=1e-5, left_pad=False),
    "rope":    dict(hidden=60, inter=97, layers=3, heads=6, kv=3, head_dim=None, vocab=301,
                    theta=500000.0, scaling=2.0, tied=False, dtype="F16", shards=1, eps=1e-6, left_pad=False),
    "tied":    dict(hidden=32, inter=64, layers=2, heads=4, kv=4, head_dim=None, vocab=301,
                    theta=10000.0, scaling=None, tied=True, dtype="BF16", shards=1, eps=1e-5, left_pad=True),
    "sharded": dict(hidden=40, inter=72, layers=3, heads=4, kv=2, head_dim=12, vocab=257,
                    theta=10000.0, scaling=None, tied=False, dtype="F32", shards=3, eps=1e-5, left_pad=False),
}
B, T = 2, 12
N_PROMPT, N_GEN = 5, 20
PROJ = [("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
        ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
        ("down", "mlp.down_proj")]


# ---------------------------------------------------------------------------------------------
# safetensors writer (numpy only)

def bf16_bits(a):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode(a, dtype):
    """Returns (bytes, the fp32 values the C loader must see)."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.tobytes(), a
    if dtype == "F16":
        h = a.astype(np.float16)
        return h.tobytes(), h.astype(np.float32)
    if dtype == "BF16":
        b = bf16_bits(a)
        return b.tobytes(), bf16_to_f32(b).reshape(a.shape)
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype string, shape list, raw bytes)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, raw in tensors:
            f.write(raw)


def read_safetensors(path):
    """name -> numpy array (U8, F32, F16 only; enough for the bnb check)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = {"U8": np.uint8, "F32": np.float32, "F16": np.float16}[info["dtype"]]
        out[name] = np.frombuffer(data[base + b:base + e], dtype=dt).reshape(info["shape"])
    return out


# ---------------------------------------------------------------------------------------------
# make: random checkpoints + inputs

def config_json(c):
    hd = c["head_dim"] or c["hidden"] // c["heads"]
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c["hidden"], "intermediate_size": c["inter"],
        "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
        "num_key_value_heads": c["kv"], "vocab_size": c["vocab"],
        "max_position_embeddings": 64, "rms_norm_eps": c["eps"], "rope_theta": c["theta"],
        "rope_scaling": None if c["scaling"] is None else {"type": "linear", "factor": c["scaling"]},
        "tie_word_embeddings": c["tied"], "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[c["dtype"]],
        "attention_bias": False, "mlp_bias": False,
    }
    if c["head_dim"] is not None:
        cfg["head_dim"] = hd
    return cfg


def model_tensors(c, rng):
    C, H, V = c["hidden"], c["inter"], c["vocab"]
    hd = c["head_dim"] or C // c["heads"]
    qo, kvo = c["heads"] * hd, c["kv"] * hd
    t = [("model.embed_tokens.weight", rng.standard_normal((V, C)))]
    for l in range(c["layers"]):
        p = "model.layers.%d." % l
        t.append((p + "input_layernorm.weight", 1.0 + 0.2 * rng.standard_normal(C)))
        shapes = {"q": (qo, C), "k": (kvo, C), "v": (kvo, C), "o": (C, qo),
                  "gate": (H, C), "up": (H, C), "down": (C, H)}
        for short, full in PROJ:
            o, i = shapes[short]
            t.append((p + full + ".weight", rng.standard_normal((o, i)) / math.sqrt(i)))
        t.append((p + "post_attention_layernorm.weight", 1.0 + 0.2 * rng.standard_normal(C)))
    t.append(("model.norm.weight", 1.0 + 0.2 * rng.standard_normal(C)))
    if not c["tied"]:
        t.append(("lm_head.weight", 2.0 * rng.standard_normal((V, C)) / math.sqrt(C)))
    return [(n, np.asarray(a, dtype=np.float32)) for n, a in t]


def save_model(d, c, tensors):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config_json(c), f, indent=2)
    enc = [(n, c["dtype"], a.shape, encode(a, c["dtype"])[0]) for n, a in tensors]
    if c["shards"] == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), enc, {"format": "pt"})
        return
    k = c["shards"]
    parts = [enc[i::k] for i in range(k)]   # interleaved, so every shard holds several layers
    wm, total = {}, 0
    for i, part in enumerate(parts):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, k)
        write_safetensors(os.path.join(d, fn), part, {"format": "pt"})
        for n, _, _, raw in part:
            wm[n] = fn
            total += len(raw)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)


def make_inputs(c, rng):
    V = c["vocab"]
    tokens = rng.integers(3, V, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), dtype=np.int32)
    if c["left_pad"]:
        mask[1, :3] = 0
    else:
        mask[1, T - 3:] = 0
    tokens[mask == 0] = 0
    labels = tokens.copy()
    labels[mask == 0] = -100
    if c["left_pad"]:
        labels[1, 3] = -100    # the first real token would be predicted from a padding position
    labels[0, 4] = -100
    prompt = rng.integers(3, V, size=N_PROMPT)
    conts = [rng.integers(3, V, size=n) for n in (1, 3, 4)]
    emb = rng.integers(3, V, size=7)
    lines = ["%d %d" % (B, T), " ".join(map(str, tokens.ravel())), " ".join(map(str, mask.ravel())),
             " ".join(map(str, labels.ravel())), "%d %s" % (len(prompt), " ".join(map(str, prompt))),
             "%d" % N_GEN, "%d" % len(conts)]
    lines += ["%d %s" % (len(x), " ".join(map(str, x))) for x in conts]
    lines.append("%d %s" % (len(emb), " ".join(map(str, emb))))
    return "\n".join(lines) + "\n"


def make_bad(out, rng):
    """Broken checkpoints for the error-path checks (all derived from a tiny valid model)."""
    c = dict(CASES["gqa"], layers=1, dtype="F32")
    base = model_tensors(c, rng)

    def fresh(name, cc=None, tensors=None):
        d = os.path.join(out, "bad", name)
        save_model(d, cc or c, tensors or base)
        return d

    d = fresh("no_config")
    os.remove(os.path.join(d, "config.json"))
    d = fresh("truncated")
    p = os.path.join(d, "model.safetensors")
    with open(p, "rb") as f:
        data = f.read()
    with open(p, "wb") as f:
        f.write(data[:len(data) - 100])
    d = fresh("contradict")        # config says intermediate 96, tensors have 97
    cfg = config_json(c)
    cfg["intermediate_size"] = 96
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    # a weight stored as I32 (a valid safetensors dtype that a Llama weight cannot have)
    d = os.path.join(out, "bad", "dtype_i32")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config_json(c), f)
    enc = []
    for n, a in base:
        if n == "model.layers.0.mlp.up_proj.weight":
            enc.append((n, "I32", a.shape, a.astype(np.int32).tobytes()))
        else:
            enc.append((n, "F32", a.shape, a.tobytes()))
    write_safetensors(os.path.join(d, "model.safetensors"), enc)
    # an unknown dtype string
    d = os.path.join(out, "bad", "dtype_unknown")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config_json(c), f)
    enc = [(n, "Q7" if n == "model.norm.weight" else "F32", a.shape, a.tobytes()) for n, a in base]
    write_safetensors(os.path.join(d, "model.safetensors"), enc)
    fresh("missing_tensor", tensors=[t for t in base if t[0] != "model.layers.0.mlp.down_proj.weight"])
    d = fresh("rope_dynamic")
    cfg = config_json(c)
    cfg["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    d = fresh("heads")
    cfg = config_json(c)
    cfg["num_key_value_heads"] = 4     # 6 heads are not a multiple of 4 kv heads
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    d = fresh("gelu")
    cfg = config_json(c)
    cfg["hidden_act"] = "gelu"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    d = fresh("shard_missing", cc=dict(c, shards=2))
    os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))
    # a config that claims far more than the files hold: 77 GB of embedding, 1000 layers (must fail on the
    # tensors before anything is sized by the config)
    for name, key, value in (("claims_vocab", "vocab_size", 400000000), ("claims_layers", "num_hidden_layers", 1000),
                             ("claims_positions", "max_position_embeddings", 1 << 21)):
        d = fresh(name)
        cfg = config_json(c)
        cfg[key] = value
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)


def cmd_make(out):
    rng = np.random.default_rng(1234)
    for name, c in CASES.items():
        d = os.path.join(out, name)
        tensors = model_tensors(c, rng)
        save_model(os.path.join(d, "model"), c, tensors)
        # what the loader must reproduce exactly for the fp32 tensors (after F16/BF16 rounding),
        # and the originals the NF4 tensors approximate
        od = os.path.join(d, "orig")
        os.makedirs(od, exist_ok=True)
        for n, a in tensors:
            encode(a, c["dtype"])[1].astype(np.float32).tofile(os.path.join(od, n + ".f32"))
        with open(os.path.join(d, "meta.txt"), "w") as f:
            f.write(make_inputs(c, rng))
    make_bad(out, rng)


# ---------------------------------------------------------------------------------------------
# ref: HF Llama in float64 from the dumped weights

def read_meta(d):
    with open(os.path.join(d, "meta.txt")) as f:
        v = [int(x) for x in f.read().split()]
    it = iter(v)
    b, t = next(it), next(it)
    tokens = np.array([next(it) for _ in range(b * t)]).reshape(b, t)
    mask = np.array([next(it) for _ in range(b * t)]).reshape(b, t)
    labels = np.array([next(it) for _ in range(b * t)]).reshape(b, t)
    prompt = [next(it) for _ in range(next(it))]
    n_gen = next(it)
    conts = [[next(it) for _ in range(next(it))] for _ in range(next(it))]
    emb = [next(it) for _ in range(next(it))]
    return dict(tokens=tokens, mask=mask, labels=labels, prompt=prompt, n_gen=n_gen, conts=conts, emb=emb)


class Model:
    def __init__(self, torch, c, dump):
        self.torch, self.c = torch, c
        self.C, self.H, self.V, self.L = c["hidden"], c["inter"], c["vocab"], c["layers"]
        self.NH, self.NKV = c["heads"], c["kv"]
        self.HD = c["head_dim"] or self.C // self.NH
        self.dump = dump
        with open(os.path.join(dump, "lora.txt")) as f:
            r, alpha, rslora, mask = f.read().split()
        self.rank, self.targets = int(r), int(mask)
        # PEFT: s = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora
        if self.rank > 0:
            self.scale = float(alpha) / (math.sqrt(self.rank) if int(rslora) else self.rank)
        self.W = {}
        self.lora = {}
        shapes = self.shapes()
        for l in range(self.L):
            p = "model.layers.%d." % l
            for ti, (short, full) in enumerate(PROJ):
                o, i = shapes[short]
                self.W[p + full] = self.load(p + full + ".weight", (o, i))
                if self.rank > 0 and (self.targets >> ti) & 1:
                    A = self.load(p + full + ".lora_A.weight", (self.rank, i)).requires_grad_(True)
                    Bm = self.load(p + full + ".lora_B.weight", (o, self.rank)).requires_grad_(True)
                    self.lora[p + full] = (A, Bm, l, ti)
            self.W[p + "in_norm"] = self.load(p + "input_layernorm.weight", (self.C,))
            self.W[p + "post_norm"] = self.load(p + "post_attention_layernorm.weight", (self.C,))
        self.W["embed"] = self.load("model.embed_tokens.weight", (self.V, self.C))
        self.W["norm"] = self.load("model.norm.weight", (self.C,))
        self.W["lm_head"] = self.W["embed"] if c["tied"] else self.load("lm_head.weight", (self.V, self.C))
        self.masks = None     # {module: (M, in) float64 keep/(1-p) factors} for the dropout check

    def shapes(self):
        C, H, qo, kvo = self.C, self.H, self.NH * self.HD, self.NKV * self.HD
        return {"q": (qo, C), "k": (kvo, C), "v": (kvo, C), "o": (C, qo),
                "gate": (H, C), "up": (H, C), "down": (C, H)}

    def load(self, name, shape):
        a = np.fromfile(os.path.join(self.dump, name + ".f32"), dtype=np.float32)
        return self.torch.from_numpy(a.reshape(shape).astype(np.float64))

    def rope(self, T):
        torch, c = self.torch, self.c
        inv_freq = 1.0 / (c["theta"] ** (torch.arange(0, self.HD, 2, dtype=torch.int64).float() / self.HD))
        t = torch.arange(T, dtype=torch.int64).float()
        if c["scaling"] is not None:
            t = t / c["scaling"]
        freqs = torch.outer(t, inv_freq)                 # fp32, as HF
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().double(), emb.sin().double()

    def lin(self, x, module):
        y = x @ self.W[module].T
        if module in self.lora:
            A, Bm, _, _ = self.lora[module]
            xd = x
            if self.masks is not None:
                xd = x * self.masks[module].reshape(x.shape)
            y = y + self.scale * ((xd @ A.T) @ Bm.T)
        return y

    def forward(self, tokens, mask):
        """tokens, mask: (B, T) int arrays -> (logits (B,T,V), final hidden (B,T,C))."""
        torch = self.torch
        tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        mask = torch.from_numpy(np.asarray(mask, dtype=np.int64))
        b, t = tokens.shape
        NH, NKV, HD = self.NH, self.NKV, self.HD
        eps = self.c["eps"]

        def rms(x, w):
            return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

        def rot(x):
            h = x.shape[-1] // 2
            return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

        cos, sin = self.rope(t)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        allowed = causal[None] & mask[:, None, :].bool()          # (B, Tq, Tk)
        add = torch.zeros(b, 1, t, t, dtype=torch.float64)
        add.masked_fill_(~allowed[:, None], torch.finfo(torch.float64).min)
        x = self.W["embed"][tokens]
        for l in range(self.L):
            p = "model.layers.%d." % l
            h = rms(x, self.W[p + "in_norm"])
            q = self.lin(h, p + "self_attn.q_proj").view(b, t, NH, HD).transpose(1, 2)
            k = self.lin(h, p + "self_attn.k_proj").view(b, t, NKV, HD).transpose(1, 2)
            v = self.lin(h, p + "self_attn.v_proj").view(b, t, NKV, HD).transpose(1, 2)
            q = q * cos + rot(q) * sin
            k = k * cos + rot(k) * sin
            rep = NH // NKV
            k = k[:, :, None].expand(b, NKV, rep, t, HD).reshape(b, NH, t, HD)   # repeat_kv
            v = v[:, :, None].expand(b, NKV, rep, t, HD).reshape(b, NH, t, HD)
            s = q @ k.transpose(2, 3) / math.sqrt(HD) + add
            a = torch.softmax(s, dim=-1)
            o = (a @ v).transpose(1, 2).reshape(b, t, NH * HD)
            x = x + self.lin(o, p + "self_attn.o_proj")
            h = rms(x, self.W[p + "post_norm"])
            g = self.lin(h, p + "mlp.gate_proj")
            u = self.lin(h, p + "mlp.up_proj")
            x = x + self.lin(torch.nn.functional.silu(g) * u, p + "mlp.down_proj")
        hidden = rms(x, self.W["norm"])
        return hidden @ self.W["lm_head"].T, hidden

    def loss(self, logits, labels):
        """HF LlamaForCausalLM: logits[:, :-1] predict labels[:, 1:], ignore -100, mean."""
        torch = self.torch
        labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        sl = logits[:, :-1].reshape(-1, self.V)
        tl = labels[:, 1:].reshape(-1)
        return torch.nn.functional.cross_entropy(sl, tl, ignore_index=-100, reduction="mean")


def write(path, a, dtype):
    np.asarray(a, dtype=dtype).tofile(path)


def central_difference(f, P, idx, h):
    """(f() at P[idx] + h  -  f() at P[idx] - h) / 2h for the flat index idx of P; P is restored (call under
    torch.no_grad())."""
    v = P.view(-1)
    old = v[idx].item()
    v[idx] = old + h
    lp = f().item()
    v[idx] = old - h
    lm = f().item()
    v[idx] = old
    return (lp - lm) / (2 * h)


def check_weights(m, case_dir, rd):
    """Dumped weights against the checkpoint: fp32 tensors exactly, NF4 ones within NF4 error."""
    c = m.c
    bad = []
    od = os.path.join(case_dir, "orig")
    for fn in sorted(os.listdir(od)):
        name = fn[:-4]
        orig = np.fromfile(os.path.join(od, fn), dtype=np.float32)
        got = np.fromfile(os.path.join(m.dump, fn), dtype=np.float32)
        if got.size != orig.size:
            bad.append("%s: %d elements, want %d" % (name, got.size, orig.size))
            continue
        if name.endswith("proj.weight"):
            rel = np.sqrt(np.mean((got - orig) ** 2) / np.mean(orig ** 2))
            if not rel < 0.12:           # NF4 blocksize 64 on Gaussian data: ~0.09
                bad.append("%s: NF4 relative rms error %.3f" % (name, rel))
        elif not np.array_equal(got, orig):
            bad.append("%s: differs from the checkpoint (max |diff| %g)" % (name, np.abs(got - orig).max()))
    with open(os.path.join(rd, "weights_check.txt"), "w") as f:
        f.write("ok\n" if not bad else "\n".join(bad) + "\n")


def check_bnb(m, case_dir, rd):
    """Independent dequantization of the bnb 4-bit checkpoint that test_llama.c saved."""
    d = os.path.join(case_dir, "bnb")
    out = []
    if not os.path.isdir(d):
        return
    code = None
    try:
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        qc = cfg.get("quantization_config", {})
        if qc.get("quant_method") != "bitsandbytes" or not qc.get("load_in_4bit") \
                or qc.get("bnb_4bit_quant_type") != "nf4":
            out.append("config.json quantization_config wrong: %r" % (qc,))
        t = read_safetensors(os.path.join(d, "model.safetensors"))
        for l in range(m.L):
            for short, full in PROJ:
                p = "model.layers.%d.%s.weight" % (l, full)
                st = json.loads(bytes(t[p + ".quant_state.bitsandbytes__nf4"]).decode())
                shape, bs = st["shape"], st["blocksize"]
                n = shape[0] * shape[1]
                packed = t[p].reshape(-1)
                nib = np.empty(packed.size * 2, dtype=np.uint8)
                nib[0::2] = packed >> 4
                nib[1::2] = packed & 15
                qm = t[p + ".quant_map"].astype(np.float32)
                if code is None:
                    code = qm
                am = t[p + ".absmax"]
                if am.dtype == np.uint8:
                    nm = t[p + ".nested_quant_map"]
                    na = t[p + ".nested_absmax"]
                    idx = np.arange(am.size) // st["nested_blocksize"]
                    am = (nm[am] * na[idx]).astype(np.float32) + np.float32(st["nested_offset"])
                vals = qm[nib[:n]] * am[np.arange(n) // bs]
                got = np.fromfile(os.path.join(m.dump, p + ".f32"), dtype=np.float32)
                if not np.allclose(vals, got, rtol=1e-6, atol=1e-7):
                    out.append("%s: dequantized bnb differs (max |diff| %g)" % (p, np.abs(vals - got).max()))
        for n in ["model.embed_tokens.weight", "model.norm.weight"]:
            got = np.fromfile(os.path.join(m.dump, n + ".f32"), dtype=np.float32)
            if not np.array_equal(t[n].astype(np.float32).reshape(-1), got):
                out.append("%s differs" % n)
    except Exception as e:   # reported as a failed check by the C side
        out.append("exception %r" % (e,))
    with open(os.path.join(rd, "bnb_check.txt"), "w") as f:
        f.write("ok\n" if not out else "\n".join(out) + "\n")


def cmd_ref(out):
    import torch
    torch.set_num_threads(1)
    for name, c in CASES.items():
        d = os.path.join(out, name)
        if not os.path.isdir(os.path.join(d, "dump")):
            continue
        rd = os.path.join(d, "ref")
        os.makedirs(rd, exist_ok=True)
        meta = read_meta(d)
        m = Model(torch, c, os.path.join(d, "dump"))
        check_weights(m, d, rd)
        check_bnb(m, d, rd)

        logits, _ = m.forward(meta["tokens"], meta["mask"])
        loss = m.loss(logits, meta["labels"])
        loss.backward()
        write(os.path.join(rd, "logits.f32"), logits.detach().numpy(), np.float32)
        write(os.path.join(rd, "loss.f64"), [loss.item()], np.float64)
        for mod, (A, Bm, l, ti) in m.lora.items():
            write(os.path.join(rd, "grad.%d.%d.A.f32" % (l, ti)), A.grad.numpy(), np.float32)
            write(os.path.join(rd, "grad.%d.%d.B.f32" % (l, ti)), Bm.grad.numpy(), np.float32)

        with torch.no_grad():
            seq = list(meta["prompt"])                       # greedy, full forward every step
            for _ in range(meta["n_gen"]):
                lg, _ = m.forward([seq], [[1] * len(seq)])
                seq.append(int(torch.argmax(lg[0, -1]).item()))
            write(os.path.join(rd, "gen.i32"), seq[len(meta["prompt"]):], np.int32)
            scores = []
            for cont in meta["conts"]:
                s = list(meta["prompt"]) + list(cont)
                lg, _ = m.forward([s], [[1] * len(s)])
                lp = torch.log_softmax(lg[0], dim=-1)
                n0 = len(meta["prompt"])
                scores.append(sum(lp[n0 - 1 + j, cont[j]].item() for j in range(len(cont))))
            write(os.path.join(rd, "score.f64"), scores, np.float64)
            _, hid = m.forward([meta["emb"]], [[1] * len(meta["emb"])])
            write(os.path.join(rd, "embed.f32"), hid[0].mean(0).numpy(), np.float32)

        dd = os.path.join(d, "dump_drop")
        if os.path.isdir(dd):
            ref_dropout(torch, m, meta, dd, rd)


def ref_dropout(torch, m, meta, dd, rd):
    """Training with dropout > 0: autograd and central finite differences (float64) with the masks
    the C forward used, dumped as (M, in) uint8 keep flags per module."""
    with open(os.path.join(dd, "dropout.txt")) as f:
        p = float(f.read().split()[0])
    M = meta["tokens"].size
    m.masks = {}
    for mod, (A, Bm, l, ti) in m.lora.items():
        keep = np.fromfile(os.path.join(dd, "mask.%d.%d.u8" % (l, ti)), dtype=np.uint8)
        m.masks[mod] = torch.from_numpy(keep.astype(np.float64) / (1.0 - p)).reshape(M, -1)
        A.grad = None
        Bm.grad = None

    def f():
        lg, _ = m.forward(meta["tokens"], meta["mask"])
        return m.loss(lg, meta["labels"])

    loss = f()
    loss.backward()
    write(os.path.join(rd, "drop_loss.f64"), [loss.item()], np.float64)
    lines = []
    for mod, (A, Bm, l, ti) in m.lora.items():
        write(os.path.join(rd, "drop_grad.%d.%d.A.f32" % (l, ti)), A.grad.numpy(), np.float32)
        write(os.path.join(rd, "drop_grad.%d.%d.B.f32" % (l, ti)), Bm.grad.numpy(), np.float32)
    # finite differences on a few entries: the largest |grad| of A and B in two modules
    chosen = list(m.lora.items())
    chosen = [chosen[0], chosen[len(chosen) // 2], chosen[-1]]
    h = 1e-6
    with torch.no_grad():
        for mod, (A, Bm, l, ti) in chosen:
            for which, P in (("A", A), ("B", Bm)):
                flat = P.grad.reshape(-1)
                for idx in (int(torch.argmax(flat.abs()).item()), 0):
                    lines.append("%d %d %s %d %.17g" % (l, ti, which, idx, central_difference(f, P, idx, h)))
    with open(os.path.join(rd, "fd.txt"), "w") as f2:
        f2.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "ref"):
        sys.exit(__doc__)
    (cmd_make if sys.argv[1] == "make" else cmd_ref)(sys.argv[2])
