#!/usr/bin/python3
"""Independent numpy-only reference for test/test_safetensors.c and test/test_json.c.

Does not use the `safetensors` package (not installed): the format is written and read by hand
(8-byte little-endian header length, JSON header, byte buffer), following the safetensors README.

Usage (run with /usr/bin/python3 from the repository root):
  convert IN_F32 OUT_F16 OUT_BF16 OUT_F16ALL OUT_BF16ALL
      IN_F32: raw float32 values. Writes numpy float16 rounding of them (uint16 bits), bfloat16
      round-to-nearest-even of them computed with uint32 arithmetic (NaN -> 0x7FC0), and the
      float32 bits of every one of the 65536 float16 / bfloat16 bit patterns.
  write PATH MANIFEST EXPECT
      Writes a safetensors file the way the Rust/Python library lays it out (tensors ordered by
      descending dtype size then name, header padded with spaces to a multiple of 8,
      __metadata__ first), a JSON manifest (name, dtype, shape, byte offset into EXPECT, nbytes,
      f32 offset) and EXPECT = raw bytes of every tensor followed by float32 values of the
      floating tensors.
  read PATH MANIFEST EXPECT
      Reads a file written by the C library, validates its layout independently and compares
      every tensor (dtype, shape, bytes) with MANIFEST / EXPECT written by the C test.
  floats IN_F64 IN_F32 OUT
      Python repr() of each double, and repr(float(shortest float32 digits)) of each float32,
      one per line (reference for qlora_format_double).
  jsondump OUT
      json.dumps of a fixed document with indent=None, indent=2, separators compact, and
      ensure_ascii=False, separated by a line "----" (reference for the JSON writer).
"""
import json
import struct
import sys

import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "U64": np.uint64,
    "I32": np.int32, "U32": np.uint32, "I16": np.int16, "U16": np.uint16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}


def bf16_rne(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[np.isnan(x)] = 0x7FC0
    return r


def cmd_convert(inp, out16, outbf, out16all, outbfall):
    x = np.fromfile(inp, dtype=np.float32)
    with np.errstate(over="ignore"):
        np.asarray(x.astype(np.float16).view(np.uint16)).tofile(out16)
    bf16_rne(x).tofile(outbf)
    allbits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    allbits.view(np.float16).astype(np.float32).view(np.uint32).tofile(out16all)
    (allbits.astype(np.uint32) << 16).astype(np.uint32).tofile(outbfall)


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype_str, shape, raw_bytes) in the order to store."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for _, _, _, raw in tensors:
            f.write(raw)


def cmd_write(path, manifest, expect):
    rng = np.random.default_rng(1234)
    items = []
    # (name, dtype, shape)
    spec = [
        ("model.embed.weight", "F32", (5, 7)),
        ("layer.0.w_f16", "F16", (3, 4)),
        ("layer.0.w_bf16", "BF16", (2, 3, 2)),
        ("layer.0.w_f64", "F64", (6,)),
        ("scalar_f32", "F32", ()),
        ("empty_f16", "F16", (0, 4)),
        ("ids", "I64", (4,)),
        ("u32", "U32", (3,)),
        ("i32", "I32", (2, 2)),
        ("i16", "I16", (5,)),
        ("u16", "U16", (5,)),
        ("i8", "I8", (7,)),
        ("packed.weight", "U8", (9, 1)),
        ("mask", "BOOL", (3,)),
        ("fp8", "F8_E4M3", (4,)),
        ("fp8b", "F8_E5M2", (2,)),
        ("u64", "U64", (2,)),
    ]
    for name, dt, shape in spec:
        n = int(np.prod(shape)) if len(shape) else 1
        vals = rng.standard_normal(n) * 3
        if dt == "BF16":
            f = vals.astype(np.float32)
            raw = bf16_rne(f).tobytes()
            f32 = (bf16_rne(f).astype(np.uint32) << 16).view(np.float32)
        elif dt in ("F8_E4M3", "F8_E5M2"):
            raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            f32 = None
        elif dt == "BOOL":
            raw = (rng.integers(0, 2, n) > 0).astype(np.bool_).tobytes()
            f32 = None
        else:
            npdt = DTYPES[dt]
            if np.issubdtype(npdt, np.floating):
                a = vals.astype(npdt)
                f32 = a.astype(np.float32)
            else:
                info = np.iinfo(npdt)
                a = rng.integers(info.min, info.max, n, dtype=npdt, endpoint=True)
                f32 = None
            raw = a.astype(np.dtype(npdt).newbyteorder("<")).tobytes()
        items.append((name, dt, shape, raw, f32))

    size = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
            "I16": 2, "U16": 2}
    # Library order: larger dtypes first, then by name.
    items.sort(key=lambda t: (-size.get(t[1], 1), t[0]))
    write_safetensors(path, [(a, b, c, d) for a, b, c, d, _ in items],
                      {"format": "pt", "note": "written by numpy \u00e9\u4e2d"})
    blob = bytearray()
    man = []
    for name, dt, shape, raw, f32 in items:
        e = {"name": name, "dtype": dt, "shape": list(shape), "offset": len(blob), "nbytes": len(raw)}
        blob += raw
        man.append(e)
    for e, it in zip(man, items):
        f32 = it[4]
        e["f32_offset"] = len(blob) if f32 is not None else -1
        if f32 is not None:
            blob += np.asarray(f32, dtype="<f4").tobytes()
    with open(manifest, "w") as f:
        json.dump(man, f)
    with open(expect, "wb") as f:
        f.write(bytes(blob))


def cmd_read(path, manifest, expect):
    data = open(path, "rb").read()
    man = json.load(open(manifest))
    blob = open(expect, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    assert (8 + n) % 8 == 0, "header not padded to a multiple of 8"
    htext = data[8:8 + n].decode("utf-8")
    assert htext.startswith("{"), "header must start with {"
    assert htext.rstrip(" ") == htext.rstrip(), "padding must be spaces"
    header = json.loads(htext)
    meta = header.pop("__metadata__", None)
    assert meta == {"format": "pt"}, "metadata %r" % (meta,)
    assert list(json.loads(htext).keys())[0] == "__metadata__", "__metadata__ must come first"
    buf = data[8 + n:]
    assert [e["name"] for e in man] == list(header.keys()), "tensor order differs"
    off = 0
    for e in man:
        h = header[e["name"]]
        assert h["dtype"] == e["dtype"], (e["name"], h["dtype"], e["dtype"])
        assert h["shape"] == e["shape"], (e["name"], h["shape"], e["shape"])
        b, end = h["data_offsets"]
        assert b == off, "offsets not contiguous at %s" % e["name"]
        raw = buf[b:end]
        assert len(raw) == e["nbytes"], e["name"]
        assert raw == blob[e["offset"]:e["offset"] + e["nbytes"]], "bytes differ for %s" % e["name"]
        if e["dtype"] in DTYPES:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[e["dtype"]]).newbyteorder("<"))
            assert arr.size == (int(np.prod(e["shape"])) if e["shape"] else 1), e["name"]
        off = end
    assert off == len(buf), "buffer not covered exactly"
    print("ok %d tensors" % len(man))


def shortest_f32_repr(f):
    s = np.format_float_scientific(np.float32(f), unique=True)
    return repr(float(s))


def cmd_floats(in64, in32, out):
    d = np.fromfile(in64, dtype="<f8")
    f = np.fromfile(in32, dtype="<f4")
    with open(out, "w") as o:
        for v in d:
            o.write(repr(float(v)) + "\n")
        for v in f:
            o.write(shortest_f32_repr(v) + "\n")


def cmd_jsondump(out):
    doc = {"name": "q\"l\\ora\n\t\u0001", "n": 3, "x": 1e-05, "y": 0.029266357421875, "big": 1e16,
           "neg": -2.5, "zero": 0.0, "list": [1, 2.0, True, False, None, [], {}],
           "uni": "caf\u00e9 \u4e2d \U0001F600", "nested": {"a": {"b": [{"c": 1}]}}}
    parts = [json.dumps(doc), json.dumps(doc, indent=2), json.dumps(doc, separators=(",", ":")),
             json.dumps(doc, ensure_ascii=False, indent=2)]
    with open(out, "w", encoding="utf-8") as o:
        o.write("\n----\n".join(parts))


if __name__ == "__main__":
    cmd = sys.argv[1]
    {"convert": cmd_convert, "write": cmd_write, "read": cmd_read, "floats": cmd_floats,
     "jsondump": cmd_jsondump}[cmd](*sys.argv[2:])
