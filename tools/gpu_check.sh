#!/bin/sh
# gpu_check.sh - builds, checks and benchmarks the Vulkan backend on a GPU machine in one run, and times
# PyTorch's fp32 matmul on the same GPU as the reference the Vulkan numbers are compared with.
#
#   sh tools/gpu_check.sh --prepare   on the development machine (Debian with libvulkan-dev and
#                                     vulkan-validationlayers): copies what a bare GPU machine may lack
#                                     into build/vkcarry/ (Vulkan headers, the loader, the validation layer)
#   sh tools/gpu_check.sh             on the GPU machine, from the repository root; carry build/vkcarry.
#                                     Writes the log to $OUT/gpu_check.log and the figures (with the
#                                     Vulkan / PyTorch ratios) to $OUT/gpu_figures.txt when OUT is set.
#
# Steps: environment report → locate headers / loader / NVIDIA ICD / validation layer (installed ones
# first, carried ones second) → build test_vulkan, test_hybrid and bench_vulkan into build/gpu_check/ →
# run the kernel test and the hybrid-trainer test (CPU vs device: losses, adapter, generate, score;
# validation layer on when available) → run the bench → PyTorch fp32 reference (skipped, with a line
# saying so, when torch with CUDA is not importable) → figures. Exit status: 0 when both tests pass.
set -u

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
carry="$root/build/vkcarry"

if [ "${1:-}" = "--prepare" ]; then
    set -e
    rm -rf "$carry"
    mkdir -p "$carry/include" "$carry/lib" "$carry/layer"
    cp -r /usr/include/vulkan /usr/include/vk_video "$carry/include/" 2>/dev/null || cp -r /usr/include/vulkan "$carry/include/"
    rm -f "$carry"/include/vulkan/*.hpp                       # C++ bindings: large and unused
    cp -L "$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')" "$carry/lib/libvulkan.so.1"
    layer=$(ldconfig -p | awk '/libVkLayer_khronos_validation\.so .*x86-64/ {print $NF; exit}')
    if [ -n "$layer" ] && [ -f /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ]; then
        cp -L "$layer" "$carry/layer/"
        sed 's|"library_path": *"[^"]*"|"library_path": "./libVkLayer_khronos_validation.so"|' \
            /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json > "$carry/layer/VkLayer_khronos_validation.json"
    fi
    du -sh "$carry"
    exit 0
fi

log=/dev/null
if [ -n "${OUT:-}" ]; then log="$OUT/gpu_check.log"; : > "$log"; fi
say() { echo "$*" | tee -a "$log"; }
run_logged() { "$@" 2>&1 | tee -a "$log"; }   # status of the pipeline is tee's; callers read files instead

say "== environment"
run_logged uname -srm
if command -v nvidia-smi >/dev/null 2>&1; then run_logged nvidia-smi -L; else say "nvidia-smi: not found"; fi
cc=${CC:-cc}
say "compiler: $($cc --version 2>/dev/null | head -n 1)"

# Headers: installed, else carried.
cflags="-std=c99 -O2 -Wall -Wextra -pedantic -march=native -I."
bd=build/gpu_check                      # not build/: ./build.sh's bench binaries live there
if [ -f /usr/include/vulkan/vulkan.h ]; then
    say "vulkan headers: /usr/include/vulkan"
elif [ -f "$carry/include/vulkan/vulkan.h" ]; then
    cflags="$cflags -I$carry/include"
    say "vulkan headers: carried ($carry/include)"
else
    say "FAIL no Vulkan headers (install libvulkan-dev, or run --prepare on a machine that has them and carry build/vkcarry)"
    exit 1
fi

# Loader: installed, else carried.
if ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
    say "vulkan loader: installed"
elif [ -f "$carry/lib/libvulkan.so.1" ]; then
    export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "vulkan loader: carried ($carry/lib)"
else
    say "vulkan loader: none (the test and bench will SKIP)"
fi

# NVIDIA ICD: a manifest in the standard folders, else the driver mount, else one written for libGLX_nvidia.
icd=""
for d in /etc/vulkan/icd.d /usr/share/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    for f in "$d"/nvidia*.json; do [ -f "$f" ] && icd="$f" && break 2; done
done
if [ -z "$icd" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
fi
if [ -z "$icd" ]; then
    glx=$(ldconfig -p 2>/dev/null | awk '/libGLX_nvidia\.so\.0/ {print $NF; exit}')
    [ -z "$glx" ] && [ -f /usr/local/nvidia/lib64/libGLX_nvidia.so.0 ] && glx=/usr/local/nvidia/lib64/libGLX_nvidia.so.0
    if [ -n "$glx" ]; then
        icd=/tmp/qlora_nvidia_icd.json
        printf '{ "file_format_version": "1.0.0", "ICD": { "library_path": "%s", "api_version": "1.3.0" } }\n' "$glx" > "$icd"
        export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
    fi
fi
say "nvidia ICD: ${icd:-none found}"

# Validation layer: installed, else carried (the test runs without it and says SKIP when absent).
if [ -f "$carry/layer/VkLayer_khronos_validation.json" ] &&
   ! ls /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json >/dev/null 2>&1; then
    export VK_ADD_LAYER_PATH="$carry/layer" VK_LAYER_PATH="$carry/layer"
    say "validation layer: carried"
fi

say "== build"
mkdir -p "$bd/tmp"
ok=1
for t in test/test_vulkan test/test_hybrid bench/bench_vulkan; do
    n=$(basename "$t")
    # -ldl: dlopen of the Vulkan loader on glibc < 2.34 (an empty stub library on newer ones)
    # shellcheck disable=SC2086  # cflags is a list of words
    if ! timeout 300 $cc $cflags -Itest "$t.c" -o "$bd/$n" -lm -ldl >"$bd/$n.build.log" 2>&1; then
        say "FAIL build $n (first 40 lines of $bd/$n.build.log):"; run_logged head -n 40 "$bd/$n.build.log"; ok=0
    else
        say "built $bd/$n"
    fi
done
[ $ok = 1 ] || exit 1

rc=0
for n in test_vulkan test_hybrid; do
    say "== $n"
    QLORA_TEST_TMP="$bd/tmp" QLORA_VK_REQUIRE=1 timeout 300 "./$bd/$n" > "$bd/$n.out" 2>&1
    r=$?
    run_logged cat "$bd/$n.out"
    say "$n exit status: $r ($(grep -c '^PASS' "$bd/$n.out") passed, $(grep -c '^FAIL' "$bd/$n.out") failed, $(grep -c '^SKIP' "$bd/$n.out") skipped)"
    [ $r = 0 ] || rc=1
done

say "== bench_vulkan"
timeout 300 "./$bd/bench_vulkan" > "$bd/bench_vulkan.out" 2>&1
run_logged cat "$bd/bench_vulkan.out"

say "== PyTorch fp32 reference on the same GPU"
py=python3
if $py -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    PYTHONUNBUFFERED=1 timeout 300 $py - <<'EOF' 2>&1
import torch
dev = torch.device("cuda")
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))

def bench(fn, reps=None):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); fn(); end.record(); torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    reps = reps or max(5, min(200, int(300.0 / one)))
    start.record()
    for _ in range(reps):
        fn()
    end.record(); torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3   # seconds

for tf32 in (False, True):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    label = "tf32" if tf32 else "fp32"
    for (M, K, N) in ((512, 4096, 4096), (512, 4096, 11008)):
        x = torch.randn(M, K, device=dev)
        w = torch.randn(N, K, device=dev)
        t = bench(lambda: x @ w.t())
        print("torch %s GEMM Y = X·Wᵀ M=%d K=%d N=%d: %.3f ms %.1f GFLOP/s" % (label, M, K, N, t * 1e3, 2.0 * M * N * K / t / 1e9))
        dy = torch.randn(M, N, device=dev)
        t = bench(lambda: dy @ w)
        print("torch %s GEMM dX = dY·W M=%d K=%d N=%d: %.3f ms %.1f GFLOP/s" % (label, M, K, N, t * 1e3, 2.0 * M * N * K / t / 1e9))
torch.backends.cuda.matmul.allow_tf32 = False
for (K, N) in ((4096, 4096), (4096, 11008)):
    x = torch.randn(1, K, device=dev)
    w = torch.randn(N, K, device=dev)
    t = bench(lambda: x @ w.t())
    print("torch fp32 GEMV M=1 K=%d N=%d (dense fp32 weights): %.3f ms %.1f GB/s" % (K, N, t * 1e3, 4.0 * (N * K + N + K) / t / 1e9))
a = torch.empty(512 << 20, dtype=torch.uint8, device=dev)
b = torch.empty_like(a)
t = bench(lambda: b.copy_(a))
print("torch copy 512 MiB: %.3f ms %.1f GB/s (read + write)" % (t * 1e3, 2.0 * a.numel() / t / 1e9))
EOF
else
    echo "SKIP torch reference: torch with CUDA is not importable here"
fi > "$bd/torch.out"
run_logged cat "$bd/torch.out"

# Figures: the first non-CPU device of bench_vulkan against torch fp32 (TF32 off) on the same GPU.
fig=/dev/null
[ -n "${OUT:-}" ] && fig="$OUT/gpu_figures.txt"
{
    gpu=$(nvidia-smi -L 2>/dev/null | head -n 1)
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%MZ) on ${gpu:-a machine without nvidia-smi}"
    grep -h -E '^# (running on|hybrid runs on|train:|[0-9]+ steps in|worst relative|eval_loss|adapter)' \
        "$bd/test_vulkan.out" "$bd/test_hybrid.out" 2>/dev/null
    awk '
        FNR == 1 { f++ }
        f == 1 && /^device / { dev = (index($0, "CPU Vulkan") == 0 && !seen) ? 1 : 0; if (dev) { seen = 1; print } }
        f == 1 && dev && / GEMM M=/ { k = $1 " " $3 " " $4 " " $5; sub(/:$/, "", k); vk[k] = $9; print }
        f == 1 && dev && /GEMV M=1|copy / { print }
        f == 2 && /^torch (fp32|tf32) GEMM|^torch fp32 GEMV|^torch copy|^torch [0-9]/ { print }
        f == 2 && /^torch fp32 GEMM/ {
            d = (index($0, "dX = dY") > 0) ? "bwd" : "fwd"
            for (i = 1; i <= NF; i++) if ($i ~ /^[MKN]=/) m[substr($i, 1, 1)] = $i
            k = d " M=" substr(m["M"], 3) " K=" substr(m["K"], 3) " N=" substr(m["N"], 3); sub(/:$/, "", k)
            t[k] = $(NF - 1)
        }
        END {
            n = 0
            for (k in vk) if (k in t && t[k] > 0) {
                printf "ratio Vulkan NF4 / torch fp32 dense, %s: %.2f (%s vs %s GFLOP/s; target >= 0.5)\n", k, vk[k] / t[k], vk[k], t[k]
                n++
            }
            if (n == 0) print "ratios: none (no GPU device in bench_vulkan, or no torch reference)"
        }' "$bd/bench_vulkan.out" "$bd/torch.out"
    echo "tests: exit status $rc (0 = test_vulkan and test_hybrid passed)"
} | tee "$fig" | tee -a "$log"
say "== done (tests exit status $rc)"
exit $rc
