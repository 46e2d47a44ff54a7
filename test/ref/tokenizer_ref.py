"""Reference outputs for test/test_tokenizer.c, from Debian's python3-sentencepiece.

usage: /usr/bin/python3 test/ref/tokenizer_ref.py MODEL OUTDIR N

Writes into OUTDIR (all integers little-endian; a "record file" is u32 count, then per record
u32 length + payload; id payloads are int32 arrays):
  corpus.bin        N byte strings (test/ref/tokenizer_corpus.py)
  sp_ids.bin        sp.encode(s) per string                 sp_dec.bin   sp.decode(ids) as UTF-8
  bos_ids.bin       sp.encode(s, add_bos=True, add_eos=True) for the first 64 strings
  rnd_ids.bin       random id sequences                     rnd_dec.bin  sp.decode of each
  added.txt         "id<TAB>content" lines: the added tokens of the tokenizer.json files
  hf_ids.bin        ids with the added tokens split out first and each text segment encoded on its
                    own (Hugging Face's legacy Llama pipeline); hf_dec.bin: their decode
  tokenizer.json    Hugging Face tokenizer.json built from MODEL like transformers' LlamaConverter:
                    Prepend("▁") + Replace(" ", "▁") normalizer, merges derived from the scores
  tokenizer_ms.json the same with a Metaspace(prepend_scheme="first", split=false) pre-tokenizer,
                    no normalizer, and ["a", "b"] merges;  ms_ids.bin: its expected ids
  m1.model, m2.model, m3.model   MODEL with remove_extra_whitespaces=true / add_dummy_prefix=false /
                    some pieces turned USER_DEFINED and UNUSED;  m{1,2,3}_ids.bin, m{1,2,3}_dec.bin
                    for the first min(N, 600) strings
"""
import json
import os
import random
import struct
import sys

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_corpus import make_corpus  # noqa: E402

WS = "\u2581"
ADDED = ["<|im_start|>", "<|im_end|>", "<PAD>", "<CLS>", "<SEP>", "<MASK>", "[bib_ref]", "[/bib_ref]",
         "[fig_ref]", "[/fig_ref]", "[bib]", "[/bib]", "[fig]", "[/fig]", "[table]", "[/table]", "[formula]"]


def write_records(path, records):
    with open(path, "wb") as f:
        f.write(struct.pack("<I", len(records)))
        for r in records:
            if isinstance(r, (bytes, bytearray)):
                f.write(struct.pack("<I", len(r)))
                f.write(r)
            else:
                f.write(struct.pack("<I", len(r)))
                f.write(struct.pack("<%di" % len(r), *r))


# --- protobuf patching (wire format) for the model variants ---------------------------------
def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(b, i):
    x = shift = 0
    while True:
        c = b[i]
        i += 1
        x |= (c & 0x7F) << shift
        if not c & 0x80:
            return x, i
        shift += 7


def patch_model(data, normalizer=None, piece_types=None):
    """Appends scalar fields to normalizer_spec and type fields to chosen pieces (last one wins)."""
    normalizer = normalizer or {}
    piece_types = piece_types or {}
    out = bytearray()
    i = 0
    piece = 0
    while i < len(data):
        key, j = read_varint(data, i)
        field, wt = key >> 3, key & 7
        assert wt == 2, "top-level ModelProto fields are messages"
        ln, j = read_varint(data, j)
        payload = bytes(data[j:j + ln])
        if field == 1:
            if piece in piece_types:
                payload += b"\x18" + varint(piece_types[piece])
            piece += 1
        elif field == 3:
            for f, v in sorted(normalizer.items()):
                payload += varint(f << 3) + varint(v)
        out += varint(key) + varint(len(payload)) + payload
        i = j + ln
    return bytes(out)


def split_added(b, tokens):
    """Leftmost-longest split of byte string b at tokens [(bytes, id)] -> [("text", bytes) | ("id", id)]."""
    out, i, start = [], 0, 0
    while i < len(b):
        best = None
        for t, tid in tokens:
            if b.startswith(t, i) and (best is None or len(t) > len(best[0])):
                best = (t, tid)
        if best:
            if i > start:
                out.append(("text", b[start:i], start))
            out.append(("id", best[1], i))
            i += len(best[0])
            start = i
        else:
            i += 1
    if len(b) > start:
        out.append(("text", b[start:], start))
    return out


def sanitize(b):
    out, i = [], 0
    while i < len(b):
        ok = 0
        for ln in (1, 2, 3, 4):
            if i + ln <= len(b):
                try:
                    ch = b[i:i + ln].decode("utf-8")
                    if len(ch) == 1:
                        ok = ln
                        break
                except UnicodeDecodeError:
                    pass
        if ok:
            out.append(b[i:i + ok].decode("utf-8"))
            i += ok
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def generate_merges(vocab, scores):
    """transformers' rule: every split piece = l + r with both in vocab, ordered by the piece's
    score (descending, stable), then longer l, then longer r; within one piece by (id l, id r)."""
    merges = []
    for piece, score in scores:
        local = []
        for k in range(1, len(piece)):
            l, r = piece[:k], piece[k:]
            if l in vocab and r in vocab:
                local.append((l, r, score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
    return [(l, r) for l, r, _ in merges]


def main():
    model_path, outdir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(outdir, exist_ok=True)
    model_bytes = open(model_path, "rb").read()
    sp = spm.SentencePieceProcessor(model_file=model_path)
    V = sp.get_piece_size()
    corpus = make_corpus(n)
    write_records(os.path.join(outdir, "corpus.bin"), corpus)

    ids = [sp.encode(s) for s in corpus]
    write_records(os.path.join(outdir, "sp_ids.bin"), ids)
    write_records(os.path.join(outdir, "sp_dec.bin"), [sp.decode(x).encode("utf-8") for x in ids])
    write_records(os.path.join(outdir, "bos_ids.bin"),
                  [sp.encode(s, add_bos=True, add_eos=True) for s in corpus[:64]])

    # random id sequences, rich in byte pieces (invalid UTF-8 runs), control ids and "▁" pieces
    r = random.Random(99)
    ws_ids = [i for i in range(V) if sp.id_to_piece(i).startswith(WS)]
    rnd = [[], [1], [2], [0], [1, 2], [29871], [29871, 29871], [1, 29871, 13], [3 + 0xE2], [3 + 0xE2, 3 + 0x96],
           [3 + 0xE2, 3 + 0x96, 3 + 0x81], [3 + 0x20, 100], [0, 100], [1, 0, 100]]
    for _ in range(max(40, n // 4)):
        seq = []
        for _ in range(r.randrange(1, 40)):
            k = r.random()
            if k < 0.35:
                seq.append(3 + r.randrange(256))
            elif k < 0.42:
                seq.append(r.randrange(3))
            elif k < 0.65:
                seq.append(r.choice(ws_ids))
            else:
                seq.append(r.randrange(259, V))
        rnd.append(seq)
    write_records(os.path.join(outdir, "rnd_ids.bin"), rnd)
    write_records(os.path.join(outdir, "rnd_dec.bin"), [sp.decode(x).encode("utf-8") for x in rnd])

    # Hugging Face files
    added = [("<unk>", 0), ("<s>", 1), ("</s>", 2)] + [(t, V + k) for k, t in enumerate(ADDED)]
    with open(os.path.join(outdir, "added.txt"), "w", encoding="utf-8") as f:
        for t, tid in added:
            f.write("%d\t%s\n" % (tid, t))
    vocab = {sp.id_to_piece(i): i for i in range(V)}
    scores = [(sp.id_to_piece(i), 0.0 if i < 3 else sp.get_score(i)) for i in range(V)]
    merges = generate_merges(vocab, scores)
    added_json = [{"id": tid, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                   "normalized": False, "special": True} for t, tid in added]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": ["%s %s" % m for m in merges]}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_json,
          "normalizer": {"type": "Sequence", "normalizers": [
              {"type": "Prepend", "prepend": WS},
              {"type": "Replace", "pattern": {"String": " "}, "content": WS}]},
          "pre_tokenizer": None,
          "post_processor": {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
          "decoder": {"type": "Sequence", "decoders": [
              {"type": "Replace", "pattern": {"String": WS}, "content": " "},
              {"type": "ByteFallback"}, {"type": "Fuse"},
              {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
          "model": model}
    with open(os.path.join(outdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)
    tokens = [(t.encode("utf-8"), tid) for t, tid in added]
    hf_ids = []
    for s in corpus:
        out = []
        for kind, v, _ in split_added(s, tokens):
            out.extend([v] if kind == "id" else sp.encode(v))
        hf_ids.append(out)
    write_records(os.path.join(outdir, "hf_ids.bin"), hf_ids)
    write_records(os.path.join(outdir, "hf_dec.bin"),
                  [sp.decode([i for i in x if i < V]).encode("utf-8") for x in hf_ids])

    # Metaspace variant: no dummy prefix of its own, so BPE runs through a no-prefix model
    sp_np = spm.SentencePieceProcessor(model_proto=patch_model(model_bytes, normalizer={3: 0}))
    tj["normalizer"] = None
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": WS, "prepend_scheme": "first", "split": False}
    model["merges"] = [list(m) for m in merges]
    with open(os.path.join(outdir, "tokenizer_ms.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    ms_ids = []
    for s in corpus:
        out = []
        for kind, v, start in split_added(s, tokens):
            if kind == "id":
                out.append(v)
                continue
            t = sanitize(v).replace(" ", WS)
            if start == 0 and not t.startswith(WS):
                t = WS + t
            out.extend(sp_np.encode(t))
        ms_ids.append(out)
    write_records(os.path.join(outdir, "ms_ids.bin"), ms_ids)

    # model variants
    sub = corpus[:min(n, 600)]
    pid = {sp.id_to_piece(i): i for i in range(V)}
    variants = {
        "m1": patch_model(model_bytes, normalizer={4: 1}),
        "m2": patch_model(model_bytes, normalizer={3: 0}),
        "m3": patch_model(model_bytes, piece_types={pid[WS + "of"]: 4, pid[WS + "the"]: 4, pid["ing"]: 4, pid["/"]: 4,
                                                     pid[WS + "patient"]: 5, pid["ation"]: 5, pid[WS + "with"]: 5,
                                                     pid["er"]: 5}),
    }
    for name, data in variants.items():
        with open(os.path.join(outdir, name + ".model"), "wb") as f:
            f.write(data)
        spv = spm.SentencePieceProcessor(model_proto=data)
        vi = [spv.encode(s) for s in sub]
        write_records(os.path.join(outdir, name + "_ids.bin"), vi)
        write_records(os.path.join(outdir, name + "_dec.bin"), [spv.decode(x).encode("utf-8") for x in vi])
    print("tokenizer_ref: %d strings, %d random id sequences, %d merges" % (len(corpus), len(rnd), len(merges)))


if __name__ == "__main__":
    main()
