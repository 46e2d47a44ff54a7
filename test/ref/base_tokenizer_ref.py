"""Reference ids for the embedded base model's tokenizer (data/base/tokenizer.model), from Debian's
python3-sentencepiece, for test/test_tokenizer.c (test_base_tokenizer).

usage: /usr/bin/python3 test/ref/base_tokenizer_ref.py MODEL OUTDIR [CORPUS_TXT [N]]

The strings: every note of data/{train,val,test,sample_orders,dev_handwritten}.jsonl, every line and
label of data/catalogue.tsv, label continuations after a note-like prefix, the first N (default 2000)
lines of CORPUS_TXT when given (the pretraining corpus, `radgen --corpus`), and the edge cases of
tokenizer_corpus.py (byte fallback, whitespace runs, other scripts, invalid UTF-8).
Writes into OUTDIR, in the record format of tokenizer_ref.py (u32 count, then per record u32 length
+ payload, little-endian; id payloads are int32 arrays):
  base_src.txt      one line per string: where it came from (file:line), never its text
  base_corpus.bin   the strings            base_ids.bin  sp.encode(s)     base_dec.bin  sp.decode(ids)
  base_bos.bin      sp.encode(s, add_bos=True, add_eos=True) for the first 64 strings
  base_meta.txt     "vocab_size unk_id bos_id eos_id pad_id"
"""
import json
import os
import struct
import sys

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_corpus import make_corpus  # noqa: E402


def write_records(path, records):
    with open(path, "wb") as f:
        f.write(struct.pack("<I", len(records)))
        for r in records:
            f.write(struct.pack("<I", len(r)))
            if isinstance(r, (bytes, bytearray)):
                f.write(r)
            else:
                f.write(struct.pack("<%di" % len(r), *r))


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: base_tokenizer_ref.py MODEL OUTDIR [CORPUS_TXT [N]]")
    model, out = sys.argv[1], sys.argv[2]
    corpus_txt = sys.argv[3] if len(sys.argv) > 3 else ""
    n_corpus = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    os.makedirs(out, exist_ok=True)
    texts, src = [], []

    def add(s, where):
        texts.append(s.encode("utf-8") if isinstance(s, str) else s)
        src.append(where)

    labels = []
    for name in ["train", "val", "test", "sample_orders", "dev_handwritten"]:
        path = os.path.join("data", name + ".jsonl")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    add(json.loads(line)["note"], "%s:%d" % (path, i))
    cat = os.path.join("data", "catalogue.tsv")
    if os.path.exists(cat):
        with open(cat, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line:
                    continue
                add(line, "%s:%d" % (cat, i))
                if i > 1:
                    labels.append(line.split("\t")[0])
    for k, lab in enumerate(labels + ["REVIEW"]):
        add(lab, "label:%d" % k)
        add(" " + lab, "label_space:%d" % k)
        add("Order: 54F RUQ pain, ?gallstones.\nProtocol: " + lab, "label_prompt:%d" % k)
    if corpus_txt:
        with open(corpus_txt, "rb") as f:
            for i, line in enumerate(f, 1):
                if i > n_corpus:
                    break
                add(line.rstrip(b"\n"), "%s:%d" % (corpus_txt, i))
    for k, s in enumerate(make_corpus(400, 1234)):
        add(s, "tokenizer_corpus:%d" % k)

    sp = spm.SentencePieceProcessor(model_file=model)
    ids, dec, bos = [], [], []
    for i, t in enumerate(texts):
        v = sp.encode(t)
        ids.append(v)
        dec.append(sp.decode(v).encode("utf-8"))
        if i < 64:
            bos.append(sp.encode(t, add_bos=True, add_eos=True))
    write_records(os.path.join(out, "base_corpus.bin"), texts)
    write_records(os.path.join(out, "base_ids.bin"), ids)
    write_records(os.path.join(out, "base_dec.bin"), dec)
    write_records(os.path.join(out, "base_bos.bin"), bos)
    with open(os.path.join(out, "base_src.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(src) + "\n")
    with open(os.path.join(out, "base_meta.txt"), "w") as f:
        f.write("%d %d %d %d %d\n" % (sp.get_piece_size(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()))


if __name__ == "__main__":
    main()
