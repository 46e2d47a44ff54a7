#!/usr/bin/env bash
# make_base_model.sh - reproduce the embedded base model data/base/ from nothing but this repository:
#
#   1. build build/radgen and build/pretrain (same flags as ./build.sh: OpenBLAS + OpenMP when present)
#   2. corpus:    build/radgen --corpus 64000 --seed 1            (unlabeled synthetic clinical text)
#   3. tokenizer: spm_train --model_type=bpe --vocab_size=3072 ... (Debian's sentencepiece, Llama settings)
#   4. pretrain:  build/pretrain (a 4-layer dense Llama, one epoch over the corpus, AdamW, cosine)
#   5. write data/base/ (config.json, model.safetensors, tokenizer.model, pretrain.json, README.md); the old
#      directory is replaced only when everything succeeded
#
# usage: tools/make_base_model.sh [--out DIR] [--threads N] [--corpus-styles original|train] [--quick]
#   --out DIR     where the model goes (default data/base)
#   --threads N   OpenMP threads for pretraining (default: all cores). The result does not depend on it.
#   --corpus-styles S   original (default: the 8 styles of the shipped model's corpus) or train (all 16 train
#                 styles of radgen; validation and test styles never enter the corpus)
#   --quick       a tiny smoke run (small corpus, 2-layer 64-wide model, 30 steps) into build/base-quick
#                 unless --out is given; for checking the recipe, not for use
# Takes about 15-20 minutes on 2 cores. The same build configuration on the same CPU family reproduces
# model.safetensors bit for bit; another BLAS or SIMD level gives a numerically close model.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=data/base
THREADS=""
QUICK=0
OUT_SET=0
CORPUS_STYLES=original
while [ $# -gt 0 ]; do
    case $1 in
    --out) [ $# -ge 2 ] || { echo "make_base_model: --out needs a directory" >&2; exit 2; }; OUT=$2; OUT_SET=1; shift 2 ;;
    --threads) [ $# -ge 2 ] || { echo "make_base_model: --threads needs a number" >&2; exit 2; }; THREADS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --corpus-styles) [ $# -ge 2 ] || { echo "make_base_model: --corpus-styles needs original or train" >&2; exit 2; }
        CORPUS_STYLES=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make_base_model: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

# --- the recipe (these values define the shipped model) --------------------------------------------------------
CORPUS_LINES=64000
CORPUS_SEED=1
VOCAB=3072
MODEL_ARGS=(--layers 4 --hidden 256 --heads 4 --kv-heads 2 --ffn 688 --max-pos 1024)
TRAIN_ARGS=(--seq 128 --batch 16 --epochs 1 --lr 2e-3 --warmup 100 --wd 0.1 --clip 1.0 --beta2 0.98 --seed 1
            --holdout-every 50 --eval-every 250 --eval-batches 8 --log-every 25 --dtype f32)
if [ $QUICK = 1 ]; then
    CORPUS_LINES=3000
    VOCAB=1024
    MODEL_ARGS=(--layers 2 --hidden 64 --heads 2 --kv-heads 1 --ffn 172 --max-pos 128)
    TRAIN_ARGS=(--seq 64 --batch 8 --steps 30 --lr 2e-3 --warmup 5 --seed 1 --log-every 10 --dtype f32)
fi

B=${QLORA_BUILD_DIR:-build}
if [ $QUICK = 1 ] && [ $OUT_SET = 0 ]; then OUT=$B/base-quick; fi
WORK=$B/base-work
mkdir -p "$B" "$WORK"
command -v spm_train >/dev/null || {
    echo "make_base_model: spm_train not found: install Debian's sentencepiece (apt-get install -y sentencepiece)" >&2
    exit 1
}

# 1. build (only the two programs; ./build.sh build would build everything)
CC=${CC:-gcc}
FLAGS=(-std=c99 -Wall -Wextra -pedantic -Werror -O2 -I.)
if "$CC" -march=native -x c -c /dev/null -o /dev/null 2>/dev/null; then FLAGS+=(-march=native); fi
LIBS=(-lm)
if printf '#include <omp.h>\nint main(void){return omp_get_max_threads()<1;}\n' |
   "$CC" -fopenmp -x c - -o "$WORK/omp-probe" 2>/dev/null; then FLAGS+=(-fopenmp); LIBS=(-fopenmp "${LIBS[@]}"); fi
if printf '#include <cblas.h>\nint main(void){return 0;}\n' |
   "$CC" -x c - -o "$WORK/blas-probe" -lopenblas 2>/dev/null; then FLAGS+=(-DQLORA_USE_OPENBLAS); LIBS=(-lopenblas "${LIBS[@]}"); fi
rm -f "$WORK/omp-probe" "$WORK/blas-probe"
echo "make_base_model: building $B/radgen and $B/pretrain (${FLAGS[*]})"
"$CC" "${FLAGS[@]}" demo/radgen.c -o "$B/radgen" -lm
"$CC" "${FLAGS[@]}" demo/pretrain.c -o "$B/pretrain" "${LIBS[@]}"

# 2. corpus
STYLE_ARGS=()
if [ "$CORPUS_STYLES" != original ]; then STYLE_ARGS=(--corpus-styles "$CORPUS_STYLES"); fi
CORPUS_CMD="build/radgen --corpus $CORPUS_LINES ${STYLE_ARGS[*]}${STYLE_ARGS[*]:+ }--seed $CORPUS_SEED > corpus.txt"
echo "make_base_model: corpus: $CORPUS_CMD"
"$B/radgen" --corpus "$CORPUS_LINES" "${STYLE_ARGS[@]}" --seed "$CORPUS_SEED" >"$WORK/corpus.txt"

# 3. tokenizer: Llama's SentencePiece settings (BPE, byte fallback, digits split, no normalization, dummy prefix,
# whitespace kept as is and allowed in pieces, unk 0 / bos 1 / eos 2, no pad). Relative paths and a fixed thread
# count keep tokenizer.model byte-identical from run to run (spm_train records both in the file).
SPM_ARGS=(--input=corpus.txt --model_prefix=tokenizer --model_type=bpe --vocab_size=$VOCAB
          --character_coverage=1.0 --byte_fallback=true --split_digits=true --normalization_rule_name=identity
          --add_dummy_prefix=true --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true
          --split_by_unicode_script=true --split_by_whitespace=true --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1
          --max_sentence_length=8192 --num_threads=2 --minloglevel=2)
TOK_CMD="spm_train ${SPM_ARGS[*]}"
echo "make_base_model: tokenizer: $TOK_CMD"
(cd "$WORK" && rm -f tokenizer.model tokenizer.vocab && spm_train "${SPM_ARGS[@]}" >spm_train.log 2>&1) || {
    echo "make_base_model: spm_train failed (log: $WORK/spm_train.log)" >&2
    exit 1
}

# 4. pretrain into a fresh directory; 5. swap it in
NEW=$OUT.new.$$
rm -rf "$NEW"
mkdir -p "$(dirname "$OUT")"
THREAD_ARGS=()
if [ -n "$THREADS" ]; then THREAD_ARGS=(--threads "$THREADS"); fi
echo "make_base_model: pretraining (progress below; about 15-20 minutes on 2 cores)"
if ! "$B/pretrain" --corpus "$WORK/corpus.txt" --tokenizer "$WORK/tokenizer.model" --out "$NEW" \
        "${MODEL_ARGS[@]}" "${TRAIN_ARGS[@]}" "${THREAD_ARGS[@]}" \
        --corpus-cmd "$CORPUS_CMD" --tokenizer-cmd "$TOK_CMD"; then
    rm -rf "$NEW"
    echo "make_base_model: pretraining failed; $OUT is unchanged" >&2
    exit 1
fi
if [ -d "$OUT" ]; then
    rm -rf "$OUT.old"
    mv "$OUT" "$OUT.old"
fi
mv "$NEW" "$OUT"
rm -rf "$OUT.old"
echo "make_base_model: wrote $OUT/ ($(du -sh "$OUT" | cut -f1)):"
ls -l "$OUT"
