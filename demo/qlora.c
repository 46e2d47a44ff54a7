// qlora.c - the `qlora` command line: QLoRA fine-tuning of a Llama checkpoint on a JSONL file,
// with checkpoints, bit-identical resume and an MLflow run; plus inspection, quantization,
// generation, scoring, evaluation and merging.
//
//   qlora info      --model DIR                       sizes: parameters and bytes per part
//   qlora quantize  --model DIR --output DIR          save a bitsandbytes 4-bit (NF4) copy
//   qlora train     --model DIR --data FILE.jsonl     train a LoRA adapter (QLoRA recipe defaults)
//   qlora generate  --model DIR [--adapter DIR] --prompt TEXT
//   qlora score     --model DIR [--adapter DIR] --prompt TEXT --candidates "a|b"  (or --data FILE)
//   qlora eval      --model DIR [--adapter DIR] --data FILE.jsonl    loss and perplexity
//   qlora merge     --model DIR --adapter DIR --output DIR [--dtype fp16]   HF safetensors export
//
// Every command takes --help. Options come from defaults < --config FILE (JSON) < flags; `train`
// writes the resolved configuration to OUT/resolved_config.json and as MLflow params.
//
// Training data never reaches the terminal or the logs: only counts, line numbers and metrics.
//
// Build: ./build.sh builds it as build/qlora (cc -std=c99 -O2 -I. demo/qlora.c -lm [-fopenmp]).
// With the Vulkan headers installed, --backend vulkan runs the NF4 matmuls on a GPU (the loader
// is opened at run time; no -lvulkan). The loss curve PNG needs stb_image_write (libstb-dev).
//
// Source layout: demo/qlora_cli.h (options and --config files, file helpers, the JSONL data
// pipeline, the loss-curve PNG) and demo/qlora_commands.h (the commands); this file is main().
#include "qlora_commands.h"

int main(int argc, char **argv) { return qlora_cli_main(argc, argv); }
