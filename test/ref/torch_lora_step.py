#!/usr/bin/python3
"""torch_lora_step.py - the PyTorch reference of bench/bench_llama.c: one LoRA training step of a
Llama model in plain fp32 PyTorch, timed, with the process's peak RSS.

The model is the HF LlamaForCausalLM architecture written out in torch (RMSNorm, RoPE with
rotate_half, causal softmax attention, SwiGLU MLP, untied lm_head), with random weights. The seven
projections of every layer are frozen DENSE fp32 weights (torch has no NF4 on the CPU) plus a
trainable LoRA adapter each (PEFT semantics: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, no dropout); embedding,
norms and lm_head are frozen. One step = forward, shifted cross-entropy (mean), backward, AdamW
(fp32) on the adapters, zero_grad. No gradient checkpointing.

Usage: torch_lora_step.py --dim 288 --layers 6 --heads 6 --hidden 768 --vocab 32000 --T 256 --B 8
                          [--rank 16] [--steps 3] [--warmup 1] [--threads 2] [--autocast-bf16]
Prints `key value` lines: torch, threads, blas_core, blas_note, blas_lib, malloc, aten_cpu_capability, trainable_params,
step_s_best, step_s_mean, step_cpu_s_min (CPU seconds of all threads), best_step_sys_share (kernel
CPU-seconds / all CPU-seconds of the best step: page faults), best_step_minor_faults,
tokens_per_s, peak_rss_kb, loss. When torch is missing it prints `SKIP <reason>` and exits 0.
torch runs in its best configuration here: the script re-executes itself once with OPENBLAS_CORETYPE
set when OpenBLAS picked a core that does not match the CPU, with OpenBLAS' OpenMP build when the
pthreads build was loaded (two thread pools oversubscribe the cores), and with glibc malloc told to
keep freed memory (no page faults for the activations of every step); it prints what it used
(blas_core, blas_note, blas_lib, malloc).
"""
import argparse
import ctypes
import math
import os
import re
import resource
import sys
import time


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def blas_cores():
    """(library path, core name) of every OpenBLAS loaded in this process."""
    out = []
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return out
    for lib in sorted(set(re.findall(r"(/\S*(?:openblas|libblas)\S*\.so\S*)", maps))):
        try:
            f = ctypes.CDLL(lib).openblas_get_corename
            f.restype = ctypes.c_char_p
            out.append((lib, f().decode()))
        except (OSError, AttributeError):
            pass
    return out


AVX512_CORES = {"skylakex", "cooperlake", "sapphirerapids"}
AVX2_CORES = {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--T", type=int, required=True)
    ap.add_argument("--B", type=int, required=True)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--autocast-bf16", action="store_true",
                    help="run forward (and so backward) under torch.autocast('cpu', bfloat16): torch's bf16 arithmetic")
    a = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print("SKIP torch not importable: %s" % e)
        return 0

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    # torch's best configuration on this machine, set up by re-executing once (these are read at
    # process start):
    # - OpenBLAS on the right core type (Debian's 0.3.21 does not know every AVX-512 CPU);
    # - OpenBLAS' OpenMP build, not its pthreads build: torch runs its own OpenMP pool, and a second
    #   pool of BLAS threads beside it oversubscribes the cores (measured on config M: 6.9 s per
    #   step with the pthreads build, 4.3 s with the OpenMP build);
    # - glibc malloc keeps freed memory: torch allocates its activations afresh every step, and
    #   returning them to the kernel makes every step page-fault them back in (223 thousand minor
    #   faults per M step; 4.3 s -> 3.8 s without them).
    torch.ones(64, 64) @ torch.ones(64, 64)   # makes torch load and initialize its BLAS
    cores = blas_cores()
    flags = cpu_flags()
    want = "SkylakeX" if "avx512f" in flags else ("Haswell" if "avx2" in flags else None)
    ok_set = AVX512_CORES if "avx512f" in flags else AVX2_CORES
    bad = [c for _, c in cores if c.lower() not in ok_set]
    if not os.environ.get("QLORA_TORCH_TUNED"):
        env = dict(os.environ)
        env["QLORA_TORCH_TUNED"] = "1"
        if bad and want:
            env["QLORA_TORCH_CORE_WAS"] = bad[0]
            env["OPENBLAS_CORETYPE"] = want
        for lib, _ in cores:
            omp_dir = os.path.dirname(lib).replace("openblas-pthread", "openblas-openmp")
            if "openblas-pthread" in lib and os.path.exists(os.path.join(omp_dir, os.path.basename(lib))):
                env["LD_LIBRARY_PATH"] = omp_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        for k, v in (("MALLOC_MMAP_THRESHOLD_", "4294967296"), ("MALLOC_TRIM_THRESHOLD_", "68719476736"),
                     ("MALLOC_TOP_PAD_", "1073741824")):
            env.setdefault(k, v)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    core = cores[0][1] if cores else "none (torch BLAS is not OpenBLAS)"
    if os.environ.get("QLORA_TORCH_CORE_WAS"):
        note = "OPENBLAS_CORETYPE=%s set by the script (OpenBLAS had detected %s)" % (
            os.environ.get("OPENBLAS_CORETYPE"), os.environ["QLORA_TORCH_CORE_WAS"])
    elif cores:
        note = "detected core matches this CPU; used as is"
    else:
        note = "no OpenBLAS loaded"
    blas_lib = cores[0][0] if cores else "none"
    malloc_note = "MALLOC_MMAP_THRESHOLD_=%s MALLOC_TRIM_THRESHOLD_=%s" % (
        os.environ.get("MALLOC_MMAP_THRESHOLD_", "default"), os.environ.get("MALLOC_TRIM_THRESHOLD_", "default"))

    C, L, NH, H, V, T, B, R = a.dim, a.layers, a.heads, a.hidden, a.vocab, a.T, a.B, a.rank
    HD = C // NH
    eps, theta, scale = 1e-5, 10000.0, a.alpha / a.rank

    def frozen(*shape, std):
        return torch.empty(*shape).uniform_(-std * math.sqrt(3.0), std * math.sqrt(3.0))

    class LoRALinear(torch.nn.Module):
        def __init__(self, fin, fout):
            super().__init__()
            self.weight = torch.nn.Parameter(frozen(fout, fin, std=1.0 / math.sqrt(fin)), requires_grad=False)
            bound = 1.0 / math.sqrt(fin)   # kaiming_uniform_(a=√5) on (R, fin)
            self.A = torch.nn.Parameter(torch.empty(R, fin).uniform_(-bound, bound))
            self.B = torch.nn.Parameter(torch.zeros(fout, R))

        def forward(self, x):
            return F.linear(x, self.weight) + F.linear(F.linear(x, self.A), self.B) * scale

    class RMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(C), requires_grad=False)

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight

    inv = 1.0 / (theta ** (torch.arange(0, HD, 2).float() / HD))
    ang = torch.outer(torch.arange(T).float(), inv)
    cos = torch.cat([ang.cos(), ang.cos()], -1)[None, None]   # (1, 1, T, HD)
    sin = torch.cat([ang.sin(), ang.sin()], -1)[None, None]

    def rope(x):   # x (B, NH, T, HD), HF rotate_half pairing
        x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    causal = torch.full((T, T), float("-inf")).triu(1)

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = RMSNorm(), RMSNorm()
            self.q, self.k, self.v, self.o = (LoRALinear(C, C) for _ in range(4))
            self.gate, self.up = LoRALinear(C, H), LoRALinear(C, H)
            self.down = LoRALinear(H, C)

        def forward(self, x):
            h = self.n1(x)
            q = self.q(h).view(B, T, NH, HD).transpose(1, 2)
            k = self.k(h).view(B, T, NH, HD).transpose(1, 2)
            v = self.v(h).view(B, T, NH, HD).transpose(1, 2)
            q, k = rope(q), rope(k)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD) + causal, dim=-1)
            x = x + self.o((att @ v).transpose(1, 2).reshape(B, T, C))
            h = self.n2(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Parameter(frozen(V, C, std=0.02), requires_grad=False)
            self.layers = torch.nn.ModuleList(Layer() for _ in range(L))
            self.norm = RMSNorm()
            self.lm_head = torch.nn.Parameter(frozen(V, C, std=0.02), requires_grad=False)

        def forward(self, tokens, labels):
            x = F.embedding(tokens, self.embed)
            for layer in self.layers:
                x = layer(x)
            logits = F.linear(self.norm(x), self.lm_head)
            return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))

    model = Model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    tokens = torch.randint(0, V, (B, T))
    labels = tokens.clone()

    times, cpus, kernel, loss = [], [], [], float("nan")
    for i in range(a.warmup + a.steps):
        c0 = time.process_time()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if a.autocast_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss_t = model(tokens, labels)
        else:
            loss_t = model(tokens, labels)
        loss_t.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = loss_t.item()
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if i >= a.warmup:
            times.append(dt)
            cpus.append(time.process_time() - c0)
            # the kernel's share: torch allocates and frees its activations every step, and the page
            # faults of fresh memory cost more on some machines (VMs) than on others
            kernel.append((r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
    best, mean = min(times), sum(times) / len(times)
    print("torch %s" % torch.__version__)
    print("threads %d" % torch.get_num_threads())
    print("blas_core %s" % core)
    print("blas_note %s" % note)
    print("blas_lib %s" % blas_lib)
    print("malloc %s" % malloc_note)
    print("aten_cpu_capability %s" % os.environ.get("ATEN_CPU_CAPABILITY", "(not set: torch's own choice)"))
    print("arithmetic %s" % ("bf16 (torch.autocast on the CPU)" if a.autocast_bf16 else "fp32"))
    print("trainable_params %d" % sum(p.numel() for p in params))
    print("step_s_best %.6f" % best)
    print("step_s_mean %.6f" % mean)
    print("step_cpu_s_min %.6f" % min(cpus))
    ib = times.index(best)
    print("best_step_sys_share %.4f" % (kernel[ib][0] / cpus[ib] if cpus[ib] > 0 else 0.0))
    print("best_step_minor_faults %d" % kernel[ib][1])
    print("tokens_per_s %.3f" % (B * T / best))
    print("peak_rss_kb %d" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print("loss %.6f" % loss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
