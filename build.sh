#!/usr/bin/env bash
# build.sh - builds, tests, benchmarks and demos for qlora.h. Everything it makes goes into build/.
#
#   ./build.sh               build every test, benchmark and demo (tests in build/<config>/, the rest in build/)
#   ./build.sh test [NAME..] build and run the test suite: warning gates, the configuration matrix, sanitizers.
#                            NAMEs (e.g. nf4 lora) restrict it to the test/test_*.c files whose name contains one.
#   ./build.sh bench [ARGS]  build and run every bench/bench_*.c with ARGS (e.g. ./build.sh bench 7b)
#   ./build.sh demo [ARGS]   build demo/$DEMO_MAIN.c and run the main job, `build/$DEMO_MAIN $DEMO_CMD ARGS`: the radiology
#                            demo (QLoRA fine-tune of data/base, evaluation, batch prediction, report in build/demo/)
#   ./build.sh clean         remove build/
# `test` compiles with -Werror; the other commands show warnings but do not stop on them.
#
# Environment
#   CC                  C compiler of the main build and the matrix (default gcc; the gates always use gcc and clang)
#   QLORA_CONFIGS       phases `test` runs (default: gates blas+omp noblas+omp blas+noomp scalar asan fuzz)
#   QLORA_FUZZ_SECONDS  how long each test/fuzz_*.c libFuzzer harness runs in `test` (default 15)
#   QLORA_FUZZ_OPT      optimization of the fuzz harnesses (default -O0: quick to build for the short CI run). A long
#                       run: QLORA_CONFIGS=fuzz QLORA_FUZZ_SECONDS=600 QLORA_FUZZ_OPT=-O1 ./build.sh test; each
#                       harness keeps what it found in build/fuzz/<name>.out/corpus for the next run
#   QLORA_JOBS          parallel compiles (default: number of CPUs)
#   QLORA_TEST_TIMEOUT  seconds one test binary may run (default 300)
#   QLORA_COMPILE_TIMEOUT  seconds one compile or link may take (default 600)
#   QLORA_NO_APT=1      never run apt-get, only say what is missing
#   CI=true             also print the log tail of every failing test binary
#
# Leaks inside system libraries (e.g. a Vulkan driver) can be suppressed for LeakSanitizer in test/lsan.supp
# (`leak:<function or library>` lines); say in a comment there why each one is not ours.
#
# The test protocol (see test/test_util.h): every check prints one line `PASS name`, `FAIL name: detail` or
# `SKIP name: reason`. build.sh prefixes each line with the configuration and binary, e.g.
# `PASS [blas+omp] test_nf4: roundtrip`, keeps everything in build/test-logs/ (all.log holds every line),
# shows only FAIL/SKIP lines and one summary per binary, and ends with the line `N passed, N failed[, N skipped]`.
set -eu
shopt -s nullglob

cd "$(dirname "$0")"
B=${QLORA_BUILD_DIR:-build}

# Debian 12 packages. PKGS is everything `./build.sh test` uses: extend it here. PKGS_BUILD is the subset that
# building and running the demo and the benchmarks needs.
PKGS="gcc g++ clang libclang-rt-14-dev libomp-dev libopenblas-dev libopenblas-openmp-dev python3-torch python3-numpy \
python3-sentencepiece python3-yaml sentencepiece libstb-dev \
mesa-vulkan-drivers libvulkan-dev vulkan-validationlayers glslc spirv-tools"
PKGS_BUILD="gcc libopenblas-dev libopenblas-openmp-dev libstb-dev"

DEMO_MAIN=radiology                      # the main job: build/$DEMO_MAIN $DEMO_CMD, from demo/$DEMO_MAIN.c
DEMO_CMD=demo
ALL_CONFIGS="blas+omp noblas+omp blas+noomp scalar"
TMO=${QLORA_TEST_TIMEOUT:-300}
CTMO=${QLORA_COMPILE_TIMEOUT:-600}
JOBS=${QLORA_JOBS:-$(nproc 2>/dev/null || echo 2)}
PY=/usr/bin/python3

MODE=${1:-all}
[ $# -gt 0 ] && shift
case $MODE in
all|build|test|bench|demo|clean) ;;
help|-h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
*) echo "build.sh: unknown command '$MODE' (try ./build.sh help)" >&2; exit 2 ;;
esac

if [ "$MODE" = clean ]; then rm -rf "$B"; echo "removed $B/"; exit 0; fi

mkdir -p "$B/tmp" "$B/probe"
# Several people (and helpers) may share one checkout: one build.sh at a time per build directory.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$B/.lock"
    if ! flock -n 9; then
        echo "waiting for another ./build.sh that is using $B/ ..."
        flock 9
    fi
fi

# Idle OpenMP threads sleep instead of spinning: on a machine with as many cores as threads, a spinning team steals
# the cores that a preempted teammate (or a parallel compile) needs; measured 2-3x on 2 shared cores.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

now_ms() { date +%s%3N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000.0 }'; }
T_START=$(now_ms)

# ---------------------------------------------------------------------------------------------
# Debian packages

APT_UPDATED=0
pkg_installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

# ensure_packages "LIST": installs the missing ones when root with apt-get, else prints the command to run.
ensure_packages() {
    command -v dpkg >/dev/null 2>&1 || return 0
    local p missing="" failed=""
    for p in $1; do pkg_installed "$p" || missing="$missing $p"; done
    missing=${missing# }
    [ -n "$missing" ] || return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${QLORA_NO_APT:-0}" != 1 ]; then
        echo "installing missing Debian packages: $missing  (log: $B/apt.log)"
        if [ "$APT_UPDATED" = 0 ]; then
            APT_UPDATED=1
            apt-get update >>"$B/apt.log" 2>&1 </dev/null || echo "  ✗ apt-get update failed (see $B/apt.log)"
        fi
        # shellcheck disable=SC2086
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
                >>"$B/apt.log" 2>&1 </dev/null; then
            # One unknown package must not block the others: retry one by one.
            for p in $missing; do
                DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$p" \
                    >>"$B/apt.log" 2>&1 </dev/null || failed="$failed $p"
            done
        fi
        if [ -n "$failed" ]; then
            echo "  ✗ could not install:$failed (see $B/apt.log); continuing with what is installed"
        else
            echo "  ✓ installed"
        fi
    else
        echo "missing Debian packages (the probes below say which checks cannot run). Install them with:"
        echo "  apt-get install -y --no-install-recommends $missing"
    fi
}

case $MODE in
test) ensure_packages "$PKGS" ;;
demo|bench) ensure_packages "$PKGS_BUILD" ;;
*) ;;
esac

# ---------------------------------------------------------------------------------------------
# Probes: what this machine has

have() { command -v "$1" >/dev/null 2>&1; }
ok()  { printf '  ✓ %s\n' "$*"; }
bad() { printf '  ✗ %s\n' "$*"; }

P=$B/probe
cat >"$P/hello.c" <<'EOF'
#include <stdio.h>
int main(void) { printf("ok\n"); return 0; }
EOF
cat >"$P/blas.c" <<'EOF'
#include <stdio.h>
#include <cblas.h>
char *openblas_get_corename(void);
int openblas_get_parallel(void);
int main(void) {
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {0, 0, 0, 0};
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
    printf("%s\n%d\n", openblas_get_corename(), openblas_get_parallel());   /* 0 serial, 1 pthreads, 2 OpenMP */
    return c[3] == 4.0f ? 0 : 1;
}
EOF
cat >"$P/omp.c" <<'EOF'
#include <stdio.h>
#include <omp.h>
int main(void) {
    int n = 0, i;
#pragma omp parallel for reduction(+ : n)
    for (i = 0; i < 100; i++) n += 1;
    printf("%d\n", omp_get_max_threads());
    return n == 100 ? 0 : 1;
}
EOF
cat >"$P/san.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    int *p = (int *)malloc(4 * sizeof(int));
    int i, s = 0;
    for (i = 0; i < 4; i++) p[i] = i;
    for (i = 0; i < 4; i++) s += p[i];
    free(p);
    printf("%d\n", s);
    return s == 6 ? 0 : 1;
}
EOF
cat >"$P/fuzz.c" <<'EOF'
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return size > 0 && data[0] == 0x51 ? 0 : 0; }
EOF
cat >"$P/hello.cpp" <<'EOF'
#include <cstdio>
int main() { std::printf("ok\n"); return 0; }
EOF

# try CC FLAGS SRC OUT [LIBS]: compile + link + run quietly; stdout of the run in OUT.out.
try() {
    local cc=$1 flags=$2 src=$3 out=$4 libs=${5:-}
    # shellcheck disable=SC2086
    $cc $flags "$src" -o "$out" $libs >"$out.log" 2>&1 && "$out" >"$out.out" 2>>"$out.log" </dev/null
}

echo "qlora.h build: probing this machine"
if [ -z "${CC:-}" ]; then
    for c in gcc clang cc; do if have $c; then CC=$c; break; fi; done
fi
if [ -z "${CC:-}" ] || ! have "$CC"; then
    bad "no C compiler found (install gcc)"; echo "0 passed, 1 failed"; exit 1
fi
ok "C compiler: $CC ($($CC -dumpfullversion -dumpversion 2>/dev/null | head -1))"

MARCH=""
if try "$CC" "-march=native" "$P/hello.c" "$P/march"; then MARCH="-march=native"; fi
DEFS=$($CC $MARCH -dM -E -x c /dev/null 2>/dev/null || true)
isdef() { printf '%s\n' "$DEFS" | grep -q "^#define $1 "; }
SIMD_LIST=""
for m in __AVX512F__ __AVX512BW__ __AVX512VL__ __AVX512VBMI__ __AVX2__ __FMA__ __F16C__ __ARM_NEON; do
    if isdef $m; then SIMD_LIST="$SIMD_LIST ${m//_/}"; fi
done
if isdef __AVX512F__ && isdef __AVX512BW__; then KERN=avx512
elif isdef __AVX2__ && isdef __FMA__; then KERN=avx2
elif isdef __ARM_NEON && isdef __aarch64__; then KERN=neon
else KERN=scalar; fi
if [ -n "$MARCH" ]; then
    ok "SIMD: -march=native defines${SIMD_LIST:- nothing}; qlora.h kernels: $KERN"
else
    bad "SIMD: $CC rejects -march=native; building for the baseline ISA${SIMD_LIST:+ (defines$SIMD_LIST)}; qlora.h kernels: $KERN"
fi

HAVE_BLAS=0 BLAS_CORE=none
if try "$CC" "-std=c99" "$P/blas.c" "$P/blas" "-lopenblas"; then
    HAVE_BLAS=1
    BLAS_CORE=$(head -1 "$P/blas.out")
    ok "OpenBLAS: cblas_sgemm links and runs; openblas_get_corename() = $BLAS_CORE"
else
    bad "OpenBLAS: no working cblas_sgemm with -lopenblas (libopenblas-dev); using the portable path," \
        "configurations blas+omp and blas+noomp are skipped"
fi

HAVE_OMP=0
if try "$CC" "-std=c99 -fopenmp" "$P/omp.c" "$P/omp"; then
    HAVE_OMP=1
    ok "OpenMP: $CC -fopenmp works (omp_get_max_threads() = $(head -1 "$P/omp.out") here; tests use OMP_NUM_THREADS=${OMP_NUM_THREADS:-2})"
else
    bad "OpenMP: $CC -fopenmp does not work; single-threaded builds only, configurations blas+omp and noblas+omp are skipped"
fi

# With OpenMP on, OpenBLAS must be its OpenMP build: the pthread build keeps a thread pool of its own whose
# threads spin against the OpenMP threads of the NF4 kernels (config S of bench_llama ran 1.9x slower so).
# The OpenMP build runs its sgemm on libgomp's team, the same threads as ours: one pool.
BLAS_OMP_LIBS="-lopenblas"
if [ $HAVE_BLAS = 1 ] && [ $HAVE_OMP = 1 ]; then
    MA=$($CC -print-multiarch 2>/dev/null || true)
    if try "$CC" "-std=c99 -fopenmp" "$P/blas.c" "$P/blas_omp0" "-lopenblas" && [ "$(sed -n 2p "$P/blas_omp0.out")" = 2 ]; then
        ok "OpenBLAS threading: -lopenblas is OpenBLAS' OpenMP build: it shares the OpenMP thread pool of the kernels"
    else
        found=""
        for d in ${MA:+/usr/lib/$MA/openblas-openmp} /usr/lib/openblas-openmp /usr/lib64/openblas-openmp; do
            [ -d "$d" ] || continue
            if try "$CC" "-std=c99 -fopenmp" "$P/blas.c" "$P/blas_omp" "-L$d -Wl,-rpath,$d -lopenblas" &&
                [ "$(sed -n 2p "$P/blas_omp.out")" = 2 ]; then
                found=$d; break
            fi
        done
        if [ -n "$found" ]; then
            BLAS_OMP_LIBS="-L$found -Wl,-rpath,$found -lopenblas"
            ok "OpenBLAS threading: blas+omp links OpenBLAS' OpenMP build ($found), so sgemm and the kernels share one thread pool"
        else
            bad "OpenBLAS threading: no OpenMP build of OpenBLAS (libopenblas-openmp-dev): blas+omp links the pthread" \
                "build, whose own thread pool competes with the OpenMP threads (much slower training steps)"
        fi
    fi
fi

HAVE_GCC=0
if have gcc && try gcc "-std=c99" "$P/hello.c" "$P/gcc"; then HAVE_GCC=1; fi

HAVE_CLANG=0 CLANG_OMP=0 CLANG_SAN=0 CLANG_FUZZ=0
if have clang && try clang "-std=c99" "$P/hello.c" "$P/clang"; then
    HAVE_CLANG=1
    try clang "-std=c99 -fopenmp" "$P/omp.c" "$P/clang_omp" && CLANG_OMP=1
    ASAN_OPTIONS=detect_leaks=1 try clang "-fsanitize=address,undefined -g" "$P/san.c" "$P/clang_san" && CLANG_SAN=1
    clang -g -fsanitize=fuzzer,address,undefined "$P/fuzz.c" -o "$P/clang_fuzz" >"$P/clang_fuzz.log" 2>&1 && CLANG_FUZZ=1
    msg="clang $(clang -dumpversion 2>/dev/null): warning gate"
    if [ $CLANG_OMP = 1 ]; then msg="$msg; -fopenmp works"; else msg="$msg; -fopenmp does not (libomp-dev): its gate builds without OpenMP"; fi
    if [ $CLANG_SAN = 1 ]; then msg="$msg; ASan+UBSan work"; else msg="$msg; no sanitizer runtime (libclang-rt-14-dev)"; fi
    if [ $CLANG_FUZZ = 1 ]; then msg="$msg; libFuzzer works"; else msg="$msg; no libFuzzer: fuzz runs skipped"; fi
    ok "$msg"
else
    bad "clang: not found (apt-get install clang): the clang warning gate is skipped"
fi

GCC_SAN=0
if [ $HAVE_GCC = 1 ] && ASAN_OPTIONS=detect_leaks=1 try gcc "-fsanitize=address,undefined -g" "$P/san.c" "$P/gcc_san"; then
    GCC_SAN=1
fi
if [ $CLANG_SAN = 1 ]; then SAN_CC=clang
elif [ $GCC_SAN = 1 ]; then SAN_CC=gcc
else SAN_CC=""; fi
if [ -n "$SAN_CC" ]; then
    ok "sanitizers: ASan+UBSan with $SAN_CC"
else
    bad "sanitizers: neither clang nor gcc can build -fsanitize=address,undefined: the asan pass is skipped"
fi

# Vulkan: CI has no GPU, so test_vulkan runs on Mesa's lavapipe (a CPU driver) with the validation layer.
LVP_JSON=""
for f in /usr/share/vulkan/icd.d/lvp_icd.*.json; do LVP_JSON=$f; break; done
LVP_LIB=""
[ -n "$LVP_JSON" ] && LVP_LIB=$(sed -n 's/.*"library_path"[^"]*"\([^"]*\)".*/\1/p' "$LVP_JSON" | head -1)
VK_LAYER=0
[ -f /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ] && VK_LAYER=1
if [ -n "$LVP_JSON" ] && ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
    msg="Vulkan: loader and lavapipe ($LVP_JSON)"
    if [ $VK_LAYER = 1 ]; then msg="$msg, validation layer"; else msg="$msg; no validation layer (vulkan-validationlayers)"; fi
    if have glslc; then msg="$msg, glslc"; else msg="$msg; no glslc: shaders cannot be regenerated"; fi
    ok "$msg"
else
    bad "Vulkan: no loader or no lavapipe (mesa-vulkan-drivers, libvulkan-dev): Vulkan checks will be SKIPped"
fi

HAVE_GXX=0
if have g++ && try g++ "" "$P/hello.cpp" "$P/gxx"; then
    HAVE_GXX=1
    ok "g++ $(g++ -dumpfullversion -dumpversion 2>/dev/null): C++ translation unit check"
else
    bad "g++: not found (apt-get install g++): the C++ check is skipped"
fi

if [ -x "$PY" ]; then
    pyinfo=$("$PY" - <<'EOF' 2>/dev/null || true
import importlib, sys
out = ["python %d.%d" % sys.version_info[:2]]
missing = []
for m in ("torch", "numpy", "sentencepiece"):
    try:
        mod = importlib.import_module(m)
        out.append("%s %s" % (m, getattr(mod, "__version__", "")))
    except Exception:
        missing.append(m)
print(", ".join(out))
print(" ".join(missing))
EOF
)
    pyfound=$(printf '%s\n' "$pyinfo" | sed -n 1p)
    pymissing=$(printf '%s\n' "$pyinfo" | sed -n 2p)
    if [ -z "$pyfound" ]; then
        bad "python references: $PY does not run: reference checks will be SKIPped"
    elif [ -z "$pymissing" ]; then
        ok "python references: $PY ($pyfound)"
    else
        bad "python references: $PY ($pyfound) lacks $pymissing: checks needing it will be SKIPped"
    fi
else
    bad "python references: no $PY: reference checks will be SKIPped"
fi

# ---------------------------------------------------------------------------------------------
# Flags per configuration

# `test` treats every warning as an error. The plain builds (all, bench, demo) only show warnings, so that a newer
# compiler's new warning cannot stop the main job.
WARN="-std=c99 -Wall -Wextra -pedantic -Werror"
[ "$MODE" = test ] || WARN="-std=c99 -Wall -Wextra -pedantic"
BASE="$WARN -O2 $MARCH -I."

cfg_usable() {
    case $1 in
    blas+omp)   [ $HAVE_BLAS = 1 ] && [ $HAVE_OMP = 1 ] ;;
    noblas+omp) [ $HAVE_OMP = 1 ] ;;
    blas+noomp) [ $HAVE_BLAS = 1 ] ;;
    *) true ;;
    esac
}
cfg_missing() {
    case $1 in
    blas+omp)   [ $HAVE_BLAS = 1 ] && echo "OpenMP not available" || echo "OpenBLAS not available" ;;
    noblas+omp) echo "OpenMP not available" ;;
    blas+noomp) echo "OpenBLAS not available" ;;
    esac
}
cfg_cflags() {
    case $1 in
    blas+omp)   echo "$BASE -fopenmp -DQLORA_USE_OPENBLAS" ;;
    noblas+omp) echo "$BASE -fopenmp" ;;
    blas+noomp) echo "$BASE -DQLORA_USE_OPENBLAS" ;;
    scalar)     echo "$BASE -DQLORA_NO_SIMD" ;;
    plain)      echo "$BASE" ;;
    esac
}
cfg_libs() {
    case $1 in
    blas+omp)   echo "-fopenmp $BLAS_OMP_LIBS -lm" ;;
    noblas+omp) echo "-fopenmp -lm" ;;
    blas+noomp) echo "-lopenblas -lm" ;;
    *)          echo "-lm" ;;
    esac
}
# The configuration of the main build: the fastest one this machine allows.
if [ $HAVE_BLAS = 1 ] && [ $HAVE_OMP = 1 ]; then BEST=blas+omp
elif [ $HAVE_OMP = 1 ]; then BEST=noblas+omp
elif [ $HAVE_BLAS = 1 ]; then BEST=blas+noomp
else BEST=plain; fi
if [ $HAVE_BLAS = 0 ]; then echo "  → no OpenBLAS: the main build uses the portable (SIMD/scalar) kernels"; fi
echo "  → main build: $BEST ($(cfg_cflags $BEST) ... $(cfg_libs $BEST))"

# ---------------------------------------------------------------------------------------------
# Cached, parallel compiles

# Every header and .inc in the tree: a change to any of them rebuilds everything.
HDRS=()
while IFS= read -r f; do HDRS+=("$f"); done < <(find . \( -path ./.git -o -path "./$B" -o -path ./build \) -prune \
    -o -type f \( -name '*.h' -o -name '*.inc' \) -print)

# up_to_date OUT CMD DEPS...: OUT exists, was made by CMD, and no DEP is newer.
up_to_date() {
    local out=$1 cmd=$2
    shift 2
    [ -f "$out" ] && [ -f "$out.cmd" ] || return 1
    [ "$(cat "$out.cmd")" = "$cmd" ] || return 1
    [ -z "$(find "$@" -newer "$out" -print -quit 2>/dev/null)" ]
}

# run_cached OUT CMD DEPS...: runs CMD (a string) unless OUT is up to date; its output goes to OUT.log.
# OUT gets the time the command started, so an edit made during a compile triggers the next rebuild.
run_cached() {
    local out=$1 cmd=$2
    shift 2
    if up_to_date "$out" "$cmd" "$@"; then return 0; fi
    # The same command failed on the same inputs before (e.g. the gcc gate, then the matrix): fail again at once.
    if up_to_date "$out.failed" "$cmd" "$@"; then return 1; fi
    mkdir -p "$(dirname "$out")"
    rm -f "$out" "$out.cmd" "$out.failed" "$out.failed.cmd"
    : >"$out.stamp"
    local rc=0
    # shellcheck disable=SC2086
    (set -f; timeout -k 10 "$CTMO" $cmd) >"$out.log" 2>&1 || rc=$?
    [ $rc -eq 124 ] && echo "build.sh: error: stopped after $CTMO s (QLORA_COMPILE_TIMEOUT)" >>"$out.log"
    if [ $rc -eq 0 ]; then
        touch -r "$out.stamp" "$out"
        printf '%s\n' "$cmd" >"$out.cmd"
        rm -f "$out.stamp"
        return 0
    fi
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        rm -f "$out.stamp"             # a timeout may be the machine's load: try again next time
    else
        mv "$out.stamp" "$out.failed"
        printf '%s\n' "$cmd" >"$out.failed.cmd"
    fi
    rm -f "$out"
    return 1
}

compile() {  # CC FLAGS SRC OBJ (deps: SRC, every header, and the .c files SRC includes, e.g. demo/radgen.c)
    local inc=()
    while IFS= read -r f; do [ -f "$f" ] && inc+=("$f"); done < <(sed -n 's/^#include "\(.*\.c\)".*/\1/p' "$3")
    run_cached "$4" "$1 $2 -c $3 -o $4" "$3" ${inc[@]+"${inc[@]}"} "${HDRS[@]}"
}
link() {     # CC OUT LIBS OBJ...
    local cc=$1 out=$2 libs=$3
    shift 3
    run_cached "$out" "$cc $* -o $out $libs" "$@"
}

# build_job CC TAG FLAGS LIBS SRC BIN: compile + link; writes ok / compile / link to BIN.status.
build_job() {
    local cc=$1 tag=$2 flags=$3 libs=$4 src=$5 bin=$6 name obj
    name=$(basename "$src"); name=${name%.*}
    obj=$B/obj/$(basename "$cc")-$tag/$name.o
    mkdir -p "$(dirname "$bin")"
    if ! compile "$cc" "$flags" "$src" "$obj"; then echo compile >"$bin.status"
    elif ! link "$cc" "$bin" "$libs" "$obj"; then echo link >"$bin.status"
    else echo ok >"$bin.status"; fi
}
# compile_job CC FLAGS SRC OBJ: writes ok / compile to OBJ.status.
compile_job() {
    if compile "$1" "$2" "$3" "$4"; then echo ok >"$4.status"; else echo compile >"$4.status"; fi
}
# static_job CC FLAGS LIBS BIN SRC...: the QLORA_STATIC program of several TUs. BIN.status gets one line
# per step: `compiled SRC`, `failed SRC OBJ`, then `linked` or `unlinked`.
static_job() {
    local cc=$1 flags=$2 libs=$3 bin=$4 src obj objs=() bad=0
    shift 4
    mkdir -p "$(dirname "$bin")"
    : >"$bin.status"
    for src in "$@"; do
        obj=$B/obj/$(basename "$cc")-static/$(basename "$src" .c).o
        objs+=("$obj")
        if compile "$cc" "$flags" "$src" "$obj"; then echo "compiled $src" >>"$bin.status"
        else echo "failed $src $obj" >>"$bin.status"; bad=1; fi
    done
    [ $bad = 1 ] && return 0
    if link "$cc" "$bin" "$libs" "${objs[@]}"; then echo linked >>"$bin.status"; else echo unlinked >>"$bin.status"; fi
}

# pool CMD...: runs CMD in the background, at most $JOBS at a time; pool_wait waits for all.
pool() {
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n 2>/dev/null || true; done
    "$@" &
}
pool_wait() { wait || true; }

CI_MODE=0
case ${CI:-} in true|1|yes) CI_MODE=1 ;; esac

# excerpt FILE [N]: the first N (default 12) lines of a compiler log, indented.
excerpt() { head -n "${2:-12}" "$1" 2>/dev/null | sed 's/^/    | /'; }
# show_error LOG [N]: the excerpt of a failed compile or link, unless the same first error was shown already
# (a broken header fails every program in every configuration the same way).
declare -A SEEN_ERR=()
show_error() {
    local log=$1 n=${2:-12} sig
    sig=$(grep -m1 -oE "(error|undefined reference).*" "$log" 2>/dev/null | cut -c1-100 || true)
    if [ -n "$sig" ] && [ -n "${SEEN_ERR[$sig]:-}" ]; then echo "    | (same as above: $sig)"; return 0; fi
    [ -n "$sig" ] && SEEN_ERR[$sig]=1
    [ $CI_MODE = 1 ] && n=$((n * 3))
    excerpt "$log" "$n"
}
# tail_excerpt FILE [N]
tail_excerpt() { tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/    | /'; }

# ---------------------------------------------------------------------------------------------
# Sources

TESTS=(test/test_*.c)
FUZZERS=(test/fuzz_*.c)           # libFuzzer harnesses: LLVMFuzzerTestOneInput, no main()
BENCHES=(bench/bench_*.c)
DEMOS=(demo/*.c)
[ "$MODE" = demo ] && DEMOS=("demo/$DEMO_MAIN.c")   # the main job needs only its own program
STATIC_SRCS=(test/static_a.c test/static_b.c)
CPP_SRC=test/test_cpp.cpp
FILTER=""
if [ "$MODE" = test ] && [ $# -gt 0 ]; then
    FILTER="$*"
    sel=()
    for t in "${TESTS[@]}"; do
        for w in "$@"; do case $t in *"$w"*) sel+=("$t"); break ;; esac; done
    done
    TESTS=("${sel[@]}")
    sel=()
    for t in "${FUZZERS[@]}"; do
        for w in "$@"; do case $t in *"$w"*) sel+=("$t"); break ;; esac; done
    done
    FUZZERS=("${sel[@]}")
    if [ ${#TESTS[@]} -gt 0 ]; then echo "  → only: ${TESTS[*]}"; else echo "  → no test/test_*.c matches: $FILTER"; fi
fi
name_of() { local n; n=$(basename "$1"); echo "${n%.*}"; }

# build_set TAG CC FLAGS LIBS DIR SRC...: builds every SRC into DIR/<name> in parallel; sets BUILT_OK (names).
# Prints a FAIL line (and the compiler's first lines) for each failure when REPORT=1.
NPASS=0 NFAIL=0 NSKIP=0
LOGDIR=$B/test-logs
ALLLOG=$LOGDIR/all.log
emit() {  # KIND TEXT: one check line of build.sh's own (counted, logged, FAIL/SKIP shown)
    case $1 in
    PASS) NPASS=$((NPASS + 1)) ;;
    FAIL) NFAIL=$((NFAIL + 1)) ;;
    SKIP) NSKIP=$((NSKIP + 1)) ;;
    esac
    [ -d "$LOGDIR" ] && printf '%s %s\n' "$1" "$2" >>"$ALLLOG"
    if [ "$1" != PASS ]; then printf '%s %s\n' "$1" "$2"; fi
}

build_set() {
    local tag=$1 cc=$2 flags=$3 libs=$4 dir=$5 src bin st
    shift 5
    for src in "$@"; do
        bin=$dir/$(name_of "$src")
        rm -f "$bin.status"
        pool build_job "$cc" "$tag" "$flags" "$libs" "$src" "$bin"
    done
    pool_wait
    BUILT_OK=()
    BUILD_FAILS=0
    for src in "$@"; do
        bin=$dir/$(name_of "$src")
        st=$(cat "$bin.status" 2>/dev/null || echo compile)
        if [ "$st" = ok ]; then BUILT_OK+=("$src"); continue; fi
        BUILD_FAILS=$((BUILD_FAILS + 1))
        local obj
        obj=$B/obj/$(basename "$cc")-$tag/$(name_of "$src").o
        if [ "$st" = compile ]; then
            emit FAIL "[$tag] $(name_of "$src"): $src does not compile (log: $obj.log)"
            show_error "$obj.log"
        else
            emit FAIL "[$tag] $(name_of "$src"): does not link (log: $bin.log)"
            show_error "$bin.log" 8
        fi
    done
    return 0
}

# ---------------------------------------------------------------------------------------------
# all / bench / demo

if [ "$MODE" = all ] || [ "$MODE" = build ] || [ "$MODE" = bench ] || [ "$MODE" = demo ]; then
    echo
    fails=0
    if [ "$MODE" = all ] || [ "$MODE" = build ]; then
        if [ ${#TESTS[@]} -gt 0 ]; then
            build_set "$BEST" "$CC" "$(cfg_cflags $BEST)" "$(cfg_libs $BEST)" "$B/$BEST" "${TESTS[@]}"
            fails=$((fails + BUILD_FAILS))
            echo "tests:  ${#BUILT_OK[@]} of ${#TESTS[@]} built into $B/$BEST/"
        fi
    fi
    if [ "$MODE" != demo ] && [ ${#BENCHES[@]} -gt 0 ]; then
        build_set "$BEST" "$CC" "$(cfg_cflags $BEST)" "$(cfg_libs $BEST)" "$B" "${BENCHES[@]}"
        fails=$((fails + BUILD_FAILS))
        BENCH_OK=("${BUILT_OK[@]}")
        echo "bench:  ${#BUILT_OK[@]} of ${#BENCHES[@]} built: $(for s in "${BUILT_OK[@]}"; do printf '%s ' "$B/$(name_of "$s")"; done)"
    fi
    if [ "$MODE" != bench ] && [ ${#DEMOS[@]} -gt 0 ]; then
        build_set "$BEST" "$CC" "$(cfg_cflags $BEST)" "$(cfg_libs $BEST)" "$B" "${DEMOS[@]}"
        fails=$((fails + BUILD_FAILS))
        echo "demos:  ${#BUILT_OK[@]} of ${#DEMOS[@]} built: $(for s in "${BUILT_OK[@]}"; do printf '%s ' "$B/$(name_of "$s")"; done)"
    fi
    case $MODE in
    all|build)
        echo "build done in $(secs "$T_START" "$(now_ms)") s"
        [ $fails -eq 0 ] || { echo "$fails program(s) failed to build"; exit 1; }
        exit 0 ;;
    bench)
        [ ${#BENCHES[@]} -gt 0 ] || { echo "no bench/bench_*.c yet"; exit 0; }
        exec 9>&-                       # the build is done: let other build.sh runs proceed
        rc=$fails
        for s in "${BENCH_OK[@]}"; do
            echo
            echo "== $B/$(name_of "$s") $*"
            "$B/$(name_of "$s")" "$@" || { echo "✗ $(name_of "$s") exited with status $?"; rc=$((rc + 1)); }
        done
        [ $rc -eq 0 ] || exit 1
        exit 0 ;;
    demo)
        if [ ! -f "demo/$DEMO_MAIN.c" ]; then echo "✗ demo/$DEMO_MAIN.c does not exist yet"; exit 1; fi
        if [ ! -x "$B/$DEMO_MAIN" ] || [ "$(cat "$B/$DEMO_MAIN.status" 2>/dev/null)" != ok ]; then
            echo "✗ $B/$DEMO_MAIN did not build"; exit 1
        fi
        echo
        echo "== $B/$DEMO_MAIN $DEMO_CMD $*"
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc 2>/dev/null || echo 2)}
        exec 9>&-                       # the build is done: let other build.sh runs proceed
        exec "$B/$DEMO_MAIN" $DEMO_CMD "$@" ;;
    esac
fi

# ---------------------------------------------------------------------------------------------
# test

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ $CI_MODE = 1 ]; then
    # CI: pin lavapipe, and make "no Vulkan device" a failure instead of a skip.
    if [ -n "$LVP_JSON" ]; then
        export VK_DRIVER_FILES="${VK_DRIVER_FILES:-$LVP_JSON}" VK_ICD_FILENAMES="${VK_ICD_FILENAMES:-$LVP_JSON}"
    fi
    export QLORA_VK_REQUIRE="${QLORA_VK_REQUIRE:-1}"
fi
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR" "$B/tmp"
: >"$ALLLOG"
PHASES=${QLORA_CONFIGS:-gates $ALL_CONFIGS asan fuzz}
want_phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# run_exec TAG BIN QUICK SAN [SRC]: runs one test binary; its output goes to the log, its exit status and
# run time to LOG.rc. Each binary gets its own scratch directory, so that binaries may run side by side.
run_exec() {
    local tag=$1 bin=$2 quick=$3 san=$4 src=${5:-} name log t0 t1 rc envs
    name=$(basename "$bin")
    mkdir -p "$LOGDIR/$tag" "$B/tmp/$tag/$name"
    log=$LOGDIR/$tag/$name.log
    envs=(QLORA_TEST_TMP="$B/tmp/$tag/$name")
    [ "$quick" = 1 ] && envs+=(QLORA_TEST_QUICK=1)
    [ "$san" = 1 ] && envs+=(ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1)
    [ "$san" = 1 ] && [ -f test/lsan.supp ] && envs+=(LSAN_OPTIONS="suppressions=$PWD/test/lsan.supp:print_suppressions=0")
    # The Vulkan loader unloads the driver at vkDestroyInstance, and LeakSanitizer then reports the driver's
    # one-time allocations (still referenced from its globals) as leaks from "<unknown module>". Preloading the
    # driver keeps it mapped, so only real leaks remain.
    [ "$san" = 1 ] && [ -n "$LVP_LIB" ] && [ -f "$LVP_LIB" ] && [ -n "$src" ] && grep -q 'qlora_vulkan\.h' "$src" &&
        envs+=(LD_PRELOAD="$LVP_LIB")
    t0=$(now_ms)
    rc=0
    # In a subshell with stderr discarded, so that bash's own "Segmentation fault" notice stays off the terminal.
    (env "${envs[@]}" timeout -k 10 "$TMO" "$bin" >"$log" 2>&1 </dev/null; r=$?; exit $r) 2>/dev/null || rc=$?
    t1=$(now_ms)
    echo "$rc $t0 $t1" >"$log.rc"
}

# run_report TAG BIN: counts the check lines of a finished run, adds FAIL lines for crashes, prints its summary.
run_report() {
    local tag=$1 bin=$2 name log counts t0 t1 rc np nf ns shown
    name=$(basename "$bin")
    log=$LOGDIR/$tag/$name.log
    counts=$LOGDIR/$tag/$name.counts
    read -r rc t0 t1 <"$log.rc" 2>/dev/null || { rc=125; t0=0; t1=0; }
    [ -f "$log" ] || : >"$log"
    awk -v p="[$tag] $name" -v all="$ALLLOG" -v counts="$counts" '
        /^(PASS|FAIL|SKIP)( |$)/ {
            k = substr($0, 1, 4); rest = substr($0, 6); n[k]++
            line = k " " p ": " rest
            print line >> all
            if (k != "PASS") { shown++; if (shown <= 20) print line }
            next
        }
        { print p ": " $0 >> all }
        END {
            if (shown > 20) printf "    (%d more FAIL/SKIP lines in the log)\n", shown - 20
            printf "%d %d %d\n", n["PASS"] + 0, n["FAIL"] + 0, n["SKIP"] + 0 > counts
        }' "$log"
    read -r np nf ns <"$counts"
    NPASS=$((NPASS + np)); NFAIL=$((NFAIL + nf)); NSKIP=$((NSKIP + ns))

    local why="" san_line
    san_line=$(grep -n -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log" | cut -d: -f1 || true)
    if [ -n "$san_line" ]; then
        why="sanitizer report: $(grep -m1 -E 'SUMMARY: |runtime error:' "$log" | cut -c1-140)"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="timed out after ${TMO} s"
    elif [ "$rc" -gt 128 ]; then why="crashed with signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null || echo '?'))"
    elif [ "$rc" -eq 77 ] && [ $((np + nf + ns)) -eq 0 ]; then emit SKIP "[$tag] $name: exited 77 (skipped)"; ns=1
    elif [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ] && [ "$rc" -ne 77 ]; then why="exited with status $rc"
    elif [ "$rc" -eq 1 ] && [ "$nf" -eq 0 ]; then why="exited with status 1 without a FAIL line"
    elif [ "$rc" -eq 0 ] && [ "$nf" -gt 0 ]; then why="printed FAIL lines but exited 0"
    elif [ "$rc" -eq 0 ] && [ $((np + ns)) -eq 0 ]; then why="printed no check lines"
    fi
    shown=15
    [ $CI_MODE = 1 ] && shown=80
    if [ -n "$why" ]; then
        emit FAIL "[$tag] $name: $why (log: $log)"
        nf=$((nf + 1))
        if [ -n "$san_line" ]; then
            tail -n "+$san_line" "$log" | awk -v max=$((shown + 10)) '{ print "    | " $0; if (/SUMMARY: / || ++n >= max) exit }'
        else
            tail_excerpt "$log" $shown
        fi
    elif [ "$nf" -gt 0 ] && [ $CI_MODE = 1 ]; then
        tail_excerpt "$log" $shown
    fi
    local mark="✓" total="$np passed"
    [ "$nf" -gt 0 ] && total="$total, $nf failed"
    [ "$ns" -gt 0 ] && total="$total, $ns skipped"
    [ "$nf" -gt 0 ] && mark="✗"
    printf '  %s %-34s %-30s %6s s\n' "$mark" "[$tag] $name" "$total" "$(secs "$t0" "$t1")"
}

run_bin() { run_exec "$@"; run_report "$1" "$2"; }

# run_set TAG PARALLEL QUICK SAN SRC...: runs the built tests of a configuration, PARALLEL at a time (1 for
# OpenMP builds, which use both cores each), then reports them in order.
run_set() {
    local tag=$1 par=$2 quick=$3 san=$4 src
    shift 4
    for src in "$@"; do
        rm -f "$LOGDIR/$tag/$(name_of "$src").log.rc"
        if [ "$par" -gt 1 ]; then
            while [ "$(jobs -rp | wc -l)" -ge "$par" ]; do wait -n 2>/dev/null || true; done
            run_exec "$tag" "$B/$tag/$(name_of "$src")" "$quick" "$san" "$src" &
        else
            run_exec "$tag" "$B/$tag/$(name_of "$src")" "$quick" "$san" "$src"
        fi
    done
    wait || true
    for src in "$@"; do run_report "$tag" "$B/$tag/$(name_of "$src")"; done
}

phase() { echo; echo "== $*"; }
PHASE_TIMES=""
phase_done() {  # NAME: prints and records the time since T0
    local t
    t=$(secs "$T0" "$(now_ms)")
    echo "  ($t s)"
    PHASE_TIMES="$PHASE_TIMES${PHASE_TIMES:+ · }$1 $t s"
}

# --- 1. warning gates -------------------------------------------------------------------------
if want_phase gates; then
    T0=$(now_ms)
    phase "warning gates: every test/bench/demo TU with gcc and clang at $WARN"
    GATE_TUS=("${TESTS[@]}" "${FUZZERS[@]}")
    if [ -z "$FILTER" ]; then GATE_TUS+=("${BENCHES[@]}" "${DEMOS[@]}"); fi
    README_C=""
    if [ -z "$FILTER" ] && [ -f README.md ]; then
        # The first ```c block of README.md must compile and run: the README's example stays true.
        README_C=$B/gate/readme_example.c
        mkdir -p "$B/gate"
        awk '/^```c[[:space:]]*$/ { if (!done) on = 1; next } /^```/ { if (on) done = 1; on = 0; next } on' README.md \
            >"$README_C.new"
        if [ -s "$README_C.new" ]; then
            if ! cmp -s "$README_C.new" "$README_C"; then mv "$README_C.new" "$README_C"; else rm -f "$README_C.new"; fi
        else
            rm -f "$README_C.new"; README_C=""
        fi
    fi

    GCC_FLAGS=$(cfg_cflags $BEST)
    # clang's warnings come from its front end, so -O0 checks the same at a seventh of the -O2 compile time.
    CLANG_FLAGS="${BASE/-O2/-O0}"
    [ $HAVE_OMP = 1 ] && [ $CLANG_OMP = 1 ] && CLANG_FLAGS="$CLANG_FLAGS -fopenmp"
    [ $HAVE_BLAS = 1 ] && CLANG_FLAGS="$CLANG_FLAGS -DQLORA_USE_OPENBLAS"
    gate_obj() { echo "$B/obj/$1-$2/$(name_of "$3").o"; }   # CC TAG SRC

    for src in "${GATE_TUS[@]}"; do
        if [ $HAVE_GCC = 1 ]; then
            o=$(gate_obj gcc "$BEST" "$src"); rm -f "$o.status"; pool compile_job gcc "$GCC_FLAGS" "$src" "$o"
        fi
        if [ $HAVE_CLANG = 1 ]; then
            o=$(gate_obj clang gate "$src"); rm -f "$o.status"; pool compile_job clang "$CLANG_FLAGS" "$src" "$o"
        fi
    done
    CPP_FLAGS="-std=c++11 -Wall -Wextra -pedantic -Werror -O2 $MARCH -I."
    [ $HAVE_OMP = 1 ] && CPP_FLAGS="$CPP_FLAGS -fopenmp"
    [ $HAVE_BLAS = 1 ] && CPP_FLAGS="$CPP_FLAGS -DQLORA_USE_OPENBLAS"
    [ -f qlora_vulkan.h ] && CPP_FLAGS="$CPP_FLAGS -DQLORA_TEST_VULKAN_H"
    if [ -z "$FILTER" ] && [ $HAVE_GXX = 1 ] && [ -f "$CPP_SRC" ]; then
        rm -f "$B/gate/test_cpp.status"
        pool build_job g++ gate "$CPP_FLAGS" "$(cfg_libs $BEST)" "$CPP_SRC" "$B/gate/test_cpp"
    fi
    if [ -z "$FILTER" ] && [ -n "$README_C" ] && [ $HAVE_GCC = 1 ]; then
        rm -f "$B/gate/readme_example.status"
        pool build_job gcc readme "$GCC_FLAGS" "$(cfg_libs $BEST)" "$README_C" "$B/gate/readme_example"
    fi
    STATIC_CCS=()
    if [ -z "$FILTER" ] && [ -f "${STATIC_SRCS[0]}" ] && [ -f "${STATIC_SRCS[1]}" ]; then
        [ $HAVE_GCC = 1 ] && STATIC_CCS+=(gcc)
        [ $HAVE_CLANG = 1 ] && STATIC_CCS+=(clang)
        for cc in "${STATIC_CCS[@]}"; do
            rm -f "$B/static-$cc/static_ab.status"
            pool static_job "$cc" "$BASE" "-lm" "$B/static-$cc/static_ab" "${STATIC_SRCS[@]}"
        done
    fi
    pool_wait

    # Report the compiles in a stable order, with the compiler's words for each distinct error.
    for cc in gcc clang; do
        if [ $cc = gcc ]; then have_it=$HAVE_GCC tag=$BEST; else have_it=$HAVE_CLANG tag=gate; fi
        if [ "$have_it" = 0 ]; then emit SKIP "[gate] $cc: not installed, its warning gate did not run"; continue; fi
        passed=0
        for src in "${GATE_TUS[@]}"; do
            o=$(gate_obj $cc $tag "$src")
            if [ "$(cat "$o.status" 2>/dev/null)" = ok ]; then
                emit PASS "[gate] $cc: $src"; passed=$((passed + 1))
            else
                emit FAIL "[gate] $cc: $src does not compile warning-free (log: $o.log)"
                show_error "$o.log"
            fi
        done
        mark="✓"; [ $passed -eq ${#GATE_TUS[@]} ] || mark="✗"
        printf '  %s %-34s %s of %s compile warning-free\n' "$mark" "[gate] $cc" "$passed" "${#GATE_TUS[@]}"
    done

    # Benchmarks and demos must also link (gcc, main configuration): build/<name>.
    P0=$NPASS F0=$NFAIL
    if [ -z "$FILTER" ] && [ $HAVE_GCC = 1 ]; then
        for src in "${BENCHES[@]}" "${DEMOS[@]}"; do
            o=$(gate_obj gcc "$BEST" "$src")
            [ "$(cat "$o.status" 2>/dev/null)" = ok ] || continue
            bin=$B/$(name_of "$src")
            if link gcc "$bin" "$(cfg_libs $BEST)" "$o"; then
                echo ok >"$bin.status"
                emit PASS "[gate] link: $src"
            else
                echo link >"$bin.status"
                emit FAIL "[gate] link: $src does not link (log: $bin.log)"
                show_error "$bin.log" 8
            fi
        done
    fi

    # The C++ translation unit.
    if [ -z "$FILTER" ]; then
        if [ $HAVE_GXX = 0 ]; then emit SKIP "[gate] g++: not installed, the C++ check did not run"
        elif [ ! -f "$CPP_SRC" ]; then emit FAIL "[gate] g++: $CPP_SRC is missing"
        else
            st=$(cat "$B/gate/test_cpp.status" 2>/dev/null || echo compile)
            if [ "$st" = ok ]; then
                emit PASS "[gate] g++: $CPP_SRC compiles warning-free as C++ and links"
                run_bin c++ "$B/gate/test_cpp" 0 0
            elif [ "$st" = compile ]; then
                emit FAIL "[gate] g++: $CPP_SRC does not compile warning-free (log: $B/obj/g++-gate/test_cpp.o.log)"
                show_error "$B/obj/g++-gate/test_cpp.o.log"
            else
                emit FAIL "[gate] g++: $CPP_SRC does not link (log: $B/gate/test_cpp.log)"
                show_error "$B/gate/test_cpp.log" 8
            fi
        fi
        # The two-TU QLORA_STATIC program.
        for cc in "${STATIC_CCS[@]}"; do
            while read -r what src obj; do
                case $what in
                compiled) emit PASS "[gate] static-$cc: $src compiles warning-free with QLORA_STATIC" ;;
                failed)
                    emit FAIL "[gate] static-$cc: $src does not compile warning-free with QLORA_STATIC (log: $obj.log)"
                    show_error "$obj.log" ;;
                linked)
                    emit PASS "[gate] static-$cc: ${STATIC_SRCS[*]} (two private copies) link into one program"
                    run_bin "static-$cc" "$B/static-$cc/static_ab" 0 0 ;;
                unlinked)
                    emit FAIL "[gate] static-$cc: ${STATIC_SRCS[*]} do not link together (log: $B/static-$cc/static_ab.log)"
                    show_error "$B/static-$cc/static_ab.log" 8 ;;
                esac
            done < <(cat "$B/static-$cc/static_ab.status" 2>/dev/null || echo unlinked)
        done
        if [ -n "$README_C" ] && [ $HAVE_GCC = 1 ]; then
            st=$(cat "$B/gate/readme_example.status" 2>/dev/null || echo compile)
            if [ "$st" = ok ]; then
                rc=0
                timeout 60 "$B/gate/readme_example" >"$LOGDIR/readme_example.log" 2>&1 </dev/null || rc=$?
                if [ $rc -eq 0 ]; then emit PASS "[gate] readme: the README.md example compiles and runs"
                else
                    emit FAIL "[gate] readme: the README.md example exits with status $rc (log: $LOGDIR/readme_example.log)"
                    tail_excerpt "$LOGDIR/readme_example.log" 8
                fi
            else
                emit FAIL "[gate] readme: the README.md example does not build with $GCC_FLAGS (log: $B/obj/gcc-readme/readme_example.o.log, $B/gate/readme_example.log)"
                if [ "$st" = compile ]; then show_error "$B/obj/gcc-readme/readme_example.o.log"
                else show_error "$B/gate/readme_example.log" 8; fi
            fi
        fi
    fi
    if [ $((NPASS - P0 + NFAIL - F0)) -gt 0 ]; then
        mark="✓"; [ $NFAIL -eq "$F0" ] || mark="✗"
        printf '  %s %-34s %s passed, %s failed\n' "$mark" "[gate] link/c++/static/readme" \
            $((NPASS - P0)) $((NFAIL - F0))
    fi
    phase_done gates
fi

# --- 2. the configuration matrix -------------------------------------------------------------
FULL_DONE=0
for cfg in $ALL_CONFIGS; do
    want_phase "$cfg" || continue
    if ! cfg_usable "$cfg"; then
        phase "[$cfg]"
        emit SKIP "[$cfg] configuration: $(cfg_missing "$cfg")"
        continue
    fi
    quick=1
    if [ $FULL_DONE = 0 ]; then quick=0; FULL_DONE=1; fi
    T0=$(now_ms)
    phase "[$cfg] $(cfg_cflags "$cfg")$([ $quick = 1 ] && echo ' · QLORA_TEST_QUICK=1')"
    if [ ${#TESTS[@]} -eq 0 ]; then echo "  (no test/test_*.c yet)"; continue; fi
    build_set "$cfg" "$CC" "$(cfg_cflags "$cfg")" "$(cfg_libs "$cfg")" "$B/$cfg" "${TESTS[@]}"
    par=1
    case $cfg in *noomp|scalar) par=$JOBS ;; esac
    run_set "$cfg" "$par" $quick 0 "${BUILT_OK[@]}"
    phase_done "$cfg"
done

# --- 3. sanitizers --------------------------------------------------------------------------------
if want_phase asan; then
    if [ -z "$SAN_CC" ]; then
        phase "[asan]"
        emit SKIP "[asan] configuration: no compiler can build -fsanitize=address,undefined"
    elif [ ${#TESTS[@]} -gt 0 ]; then
        T0=$(now_ms)
        # -O0: clang instruments the intrinsic-heavy kernels at -O1 for ~40 s per test binary (5 s at -O0), and the
        # checks are the same (optimization only removes some); the quick tests run 1-3x slower. Phase: 481 s -> 89 s.
        SAN_FLAGS="-std=c99 -Wall -Wextra -pedantic -O0 -g -fsanitize=address,undefined -fno-sanitize-recover=all"
        SAN_FLAGS="$SAN_FLAGS -fno-omit-frame-pointer $MARCH -I."
        SAN_LIBS="-fsanitize=address,undefined -lm"
        if [ $HAVE_BLAS = 1 ]; then SAN_FLAGS="$SAN_FLAGS -DQLORA_USE_OPENBLAS"; SAN_LIBS="$SAN_LIBS -lopenblas"; fi
        phase "[asan] $SAN_CC $SAN_FLAGS · no OpenMP · QLORA_TEST_QUICK=1"
        build_set asan "$SAN_CC" "$SAN_FLAGS" "$SAN_LIBS" "$B/asan" "${TESTS[@]}"
        run_set asan "$JOBS" 1 1 "${BUILT_OK[@]}"
        phase_done asan
    fi
fi

# --- 4. fuzzing ---------------------------------------------------------------------------------
if want_phase fuzz && [ ${#FUZZERS[@]} -gt 0 ]; then
    FUZZ_SECS=${QLORA_FUZZ_SECONDS:-15}
    phase "[fuzz] clang ${QLORA_FUZZ_OPT:--O0} -fsanitize=fuzzer,address,undefined · ${FUZZ_SECS} s per harness"
    if [ $CLANG_FUZZ = 0 ]; then
        emit SKIP "[fuzz] configuration: clang cannot link -fsanitize=fuzzer (libclang-rt-14-dev)"
    else
        T0=$(now_ms)
        # -O0: a harness builds in ~6 s instead of ~40 s at -O1 and runs ~2.7x fewer inputs a second; in a short
        # run the committed seeds (regressions included) matter more than speed. Long runs: QLORA_FUZZ_OPT=-O1.
        FUZZ_FLAGS="-std=c99 -Wall -Wextra -pedantic ${QLORA_FUZZ_OPT:--O0} -g -fsanitize=fuzzer,address,undefined"
        FUZZ_FLAGS="$FUZZ_FLAGS -fno-sanitize-recover=all -fno-omit-frame-pointer $MARCH -I."
        build_set fuzz clang "$FUZZ_FLAGS" "-fsanitize=fuzzer,address,undefined -lm" "$B/fuzz" "${FUZZERS[@]}"
        for src in "${BUILT_OK[@]}"; do
            name=$(name_of "$src")
            dir=$B/fuzz/$name.out
            log=$LOGDIR/fuzz/$name.log
            mkdir -p "$dir/corpus" "$LOGDIR/fuzz"
            seeds=()
            [ -d "test/${name}_corpus" ] && seeds+=("test/${name}_corpus")
            # a harness whose seeds are larger says so in a "libFuzzer max_len: N" comment (longer seeds are cut)
            maxlen=$(grep -m1 -oE 'libFuzzer max_len: [0-9]+' "$src" | grep -oE '[0-9]+$' || true)
            t0=$(now_ms); rc=0
            lsan=""
            [ -f test/lsan.supp ] && lsan="suppressions=$PWD/test/lsan.supp:print_suppressions=0"
            (ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 LSAN_OPTIONS=$lsan \
                timeout -k 10 $((FUZZ_SECS + 120)) "$B/fuzz/$name" -max_total_time="$FUZZ_SECS" -max_len="${maxlen:-4096}" \
                -artifact_prefix="$dir/" -print_final_stats=1 "$dir/corpus" "${seeds[@]}" \
                >"$log" 2>&1 </dev/null; r=$?; exit $r) 2>/dev/null || rc=$?
            runs=$(grep -m1 -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
            if [ $rc -eq 0 ]; then
                emit PASS "[fuzz] $name: ${runs:-?} inputs in $FUZZ_SECS s, no crash, leak or undefined behaviour"
                printf '  ✓ %-34s %-30s %6s s\n' "[fuzz] $name" "${runs:-?} inputs" "$(secs "$t0" "$(now_ms)")"
            else
                emit FAIL "[fuzz] $name: libFuzzer stopped with status $rc; the input is in $dir/ (log: $log)"
                awk '/ERROR: |runtime error:|deadly signal/ { on = 1 } on { print "    | " $0; if (++n >= 40) exit }' "$log"
                printf '  ✗ %-34s %-30s %6s s\n' "[fuzz] $name" "crashed after ${runs:-?} inputs" "$(secs "$t0" "$(now_ms)")"
            fi
        done
        phase_done fuzz
    fi
fi

echo
echo "time: ${PHASE_TIMES:-none} · total $(secs "$T_START" "$(now_ms)") s"
echo "logs: $LOGDIR/ (all.log has every line)"
final="$NPASS passed, $NFAIL failed"
[ $NSKIP -gt 0 ] && final="$final, $NSKIP skipped"
echo "$final" >>"$ALLLOG"
echo "$final"
[ $NFAIL -eq 0 ]
