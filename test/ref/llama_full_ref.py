"""Reference for test/test_fulltrain.c: the gradient of EVERY parameter of a dense Llama model.

Usage (run with /usr/bin/python3, from the repository root):
    llama_full_ref.py ref OUT   for every OUT/<case>/ holding model/ (config.json + an F32
                                model.safetensors written by qlora_model_save_dense) and meta.txt,
                                writes OUT/<case>/ref/: loss.f64, grad.<tensor name>.f32 for every
                                tensor, and fd.txt (central finite differences in float64)

The model, the loss and the autograd come from test/ref/llama_ref.py (HF LlamaForCausalLM semantics
in float64, written from scratch); here every weight is a leaf that requires grad, so autograd gives
the embedding (both contributions when tied), lm_head, all norms and all seven projections.

meta.txt: "B T", then B·T tokens, B·T key-mask flags, B·T labels (HF convention, -100 ignored).
fd.txt: one line per sampled element, "tensor_name flat_index derivative": the largest |grad| of
every tensor and one element drawn from a fixed seed, h = 1e-6 on the float64 mean loss.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402  (the shared independent Llama implementation)


def case_config(cfg):
    """config.json -> the dict llama_ref.Model expects."""
    rs = cfg.get("rope_scaling")
    return dict(hidden=cfg["hidden_size"], inter=cfg["intermediate_size"], layers=cfg["num_hidden_layers"],
                heads=cfg["num_attention_heads"], kv=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                head_dim=cfg.get("head_dim"), vocab=cfg["vocab_size"], theta=cfg.get("rope_theta", 10000.0),
                scaling=None if rs is None else rs["factor"], tied=bool(cfg.get("tie_word_embeddings", False)),
                eps=cfg.get("rms_norm_eps", 1e-6))


def read_meta(path):
    with open(path) as f:
        v = [int(x) for x in f.read().split()]
    b, t = v[0], v[1]
    n = b * t
    tokens = np.array(v[2:2 + n]).reshape(b, t)
    mask = np.array(v[2 + n:2 + 2 * n]).reshape(b, t)
    labels = np.array(v[2 + 2 * n:2 + 3 * n]).reshape(b, t)
    return tokens, mask, labels


def hf_names(m):
    """(HF tensor name, key of m.W) for every parameter, the checkpoint's order."""
    out = [("model.embed_tokens.weight", "embed")]
    for l in range(m.L):
        p = "model.layers.%d." % l
        out.append((p + "input_layernorm.weight", p + "in_norm"))
        for _, full in llama_ref.PROJ:
            out.append((p + full + ".weight", p + full))
        out.append((p + "post_attention_layernorm.weight", p + "post_norm"))
    out.append(("model.norm.weight", "norm"))
    if not m.c["tied"]:
        out.append(("lm_head.weight", "lm_head"))
    return out


def run_case(torch, d):
    with open(os.path.join(d, "model", "config.json")) as f:
        c = case_config(json.load(f))
    tensors = llama_ref.read_safetensors(os.path.join(d, "model", "model.safetensors"))
    dump = os.path.join(d, "dump")
    rd = os.path.join(d, "ref")
    os.makedirs(dump, exist_ok=True)
    os.makedirs(rd, exist_ok=True)
    for name, a in tensors.items():
        np.asarray(a, dtype=np.float32).tofile(os.path.join(dump, name + ".f32"))
    with open(os.path.join(dump, "lora.txt"), "w") as f:
        f.write("0 0 0 0\n")   # no adapters
    m = llama_ref.Model(torch, c, dump)
    names = hf_names(m)
    for _, key in names:
        m.W[key].requires_grad_(True)
    tokens, mask, labels = read_meta(os.path.join(d, "meta.txt"))

    def f():
        lg, _ = m.forward(tokens, mask)
        return m.loss(lg, labels)

    loss = f()
    loss.backward()
    llama_ref.write(os.path.join(rd, "loss.f64"), [loss.item()], np.float64)
    for name, key in names:
        llama_ref.write(os.path.join(rd, "grad." + name + ".f32"), m.W[key].grad.numpy(), np.float32)
    rng = np.random.default_rng(77)
    lines = []
    h = 1e-6
    with torch.no_grad():
        for name, key in names:
            P = m.W[key]
            flat = P.grad.reshape(-1)
            for idx in (int(torch.argmax(flat.abs()).item()), int(rng.integers(0, flat.numel()))):
                lines.append("%s %d %.17g" % (name, idx, llama_ref.central_difference(f, P, idx, h)))
    with open(os.path.join(rd, "fd.txt"), "w") as fo:
        fo.write("\n".join(lines) + "\n")


def cmd_ref(out):
    import torch
    torch.set_num_threads(1)
    for name in sorted(os.listdir(out)):
        d = os.path.join(out, name)
        if os.path.isfile(os.path.join(d, "meta.txt")) and os.path.isdir(os.path.join(d, "model")):
            run_case(torch, d)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "ref":
        sys.exit(__doc__)
    cmd_ref(sys.argv[2])
