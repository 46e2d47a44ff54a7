"""Deterministic tokenizer test corpus: make_corpus(n, seed) -> list of byte strings.

The corpus mixes clinical shorthand, numbers and units, many scripts, combining marks, emoji
(ZWJ sequences, flags, skin tones, keycaps), whitespace runs, empty strings, characters that
need byte fallback, literal "<s>" / "</s>" / "<unk>" / "<0x41>" / "▁", chat-template added
tokens, very long strings, and byte strings that are not valid UTF-8. The first strings are a
fixed list of hand-written edge cases; the rest are drawn from a seeded generator, so any n
gives the same prefix.
"""
import random

FIXED = [
    "", " ", "  ", "   ", "\t", "\n", "\r\n", " \n ", "\n\n\n", "\t\t  \t",
    "a", "A", "Hello world", "Hello  world", " Hello", "Hello ", "  leading two", "trailing two  ",
    "67F, 3 d after liver bx, on apixaban, Hgb \u2193, ?bleed",
    "eGFR 28 mL/min/1.73m\u00b2",
    "Cr 2.1 mg/dL (186 \u00b5mol/L)",
    "BP 142/88, HR 96, SpO2 93% on 2L NC, T 38.4\u00b0C",
    "s/p CABG x3 (LIMA-LAD, SVG-OM, SVG-PDA) 2019; EF 35-40%",
    "Na 131, K 5.6 (hemolyzed?), HCO3 18, AG 17 \u2192 ?DKA",
    "CT A/P w/ contrast: 2.3 \u00d7 1.8 cm hypodense lesion seg. VII, ?HCC vs. FNH; LI-RADS 4",
    "Rx: metoprolol 25 mg PO BID; hold if SBP < 100 or HR < 55",
    "INR 3.4 \u2191 (goal 2\u20133) \u2014 hold warfarin \u00d7 1 dose",
    "pt c/o SOB \u00d7 2/7, orthopnea, PND; JVP \u2191; bibasilar crackles",
    "<s>", "</s>", "<unk>", "<s>Hello</s>", "a<s>b", "</s></s>", "<0x41>", "<0x0A>", "<pad>",
    "\u2581", "\u2581\u2581", "a\u2581b", " \u2581 ",
    "<|im_start|>user\nWhat is the eGFR?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a radiologist.<|im_end|>",
    "[bib_ref]Smith 2020[/bib_ref] reported [fig_ref]Fig. 2[/fig_ref]",
    "caf\u00e9", "cafe\u0301", "na\u00efve r\u00e9sum\u00e9", "\u00c5ngstr\u00f6m", "Stra\u00dfe", "\u0141\u00f3d\u017a",
    "\u4e2d\u6587\u5206\u8bcd", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd", "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u0928\u092e\u0938\u094d\u0924\u0947",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\U0001F600", "\U0001F469\u200d\u2695\ufe0f", "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466",
    "\U0001F1FA\U0001F1F8\U0001F1E9\U0001F1EA", "\U0001F44D\U0001F3FD", "1\ufe0f\u20e3", "\u2764\ufe0f",
    "\U0001F9EC \U0001F9A0 \U0001FA7A", "\U00013000", "\ue000", "\ufeffBOM", "\ufffd", "\u200b", "\u00a0", "\u3000",
    "\x00", "a\x00b", "\x01\x02\x1f\x7f", "\u0085", "\u2028\u2029",
    "x" * 1000, " " * 300, "\n" * 100, "ab " * 400,
]

INVALID = [
    b"\xff", b"\xc3", b"ab\xff\xc3cd", b"\xe2\x96", b"\xe2\x96\x81\xe2", b"\xf0\x9f\x98", b"\xed\xa0\x80",
    b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80\x80\x80", b"caf\xc3", b" \xfe \xff ", b"\xf8\x88\x80\x80\x80",
]

WORDS = ("patient presents with acute chronic bilateral left right upper lower lobe pneumonia effusion "
         "consolidation opacity nodule mass lesion enhancement fracture dislocation edema hemorrhage "
         "infarct stenosis occlusion aneurysm thrombus embolism metastasis lymphadenopathy "
         "hepatomegaly splenomegaly cholelithiasis nephrolithiasis hydronephrosis atelectasis "
         "cardiomegaly no evidence of is are was were the a an and or with without for to from in on "
         "at by status post history denies reports follow-up recommended comparison prior study "
         "impression findings technique indication stable unchanged increased decreased new").split()
ABBR = ["pt", "hx", "dx", "tx", "rx", "s/p", "c/o", "r/o", "w/", "w/o", "b/l", "BID", "TID", "QID", "PRN",
        "PO", "IV", "IM", "SQ", "NPO", "CXR", "CT", "MRI", "US", "EKG", "ECG", "ABG", "CBC", "BMP", "LFTs",
        "Hgb", "Hct", "WBC", "Plt", "INR", "PTT", "BNP", "eGFR", "Cr", "BUN", "Na", "K", "Cl", "HCO3",
        "SpO2", "FiO2", "PEEP", "MAP", "HR", "BP", "RR", "T", "GCS", "NIHSS", "COPD", "CHF", "CKD",
        "ESRD", "DM2", "HTN", "HLD", "CAD", "AFib", "PE", "DVT", "UTI", "AKI", "DKA", "GI", "GU", "ICU",
        "ED", "OR", "PACU", "SNF", "?bleed", "?PE", "\u2191", "\u2193", "\u2192", "\u00b1", "\u0394", "~", "#"]
UNITS = ["mg", "mcg", "\u00b5g", "g", "kg", "mL", "L", "mL/min", "mL/min/1.73m\u00b2", "mg/dL", "mmol/L",
         "\u00b5mol/L", "mEq/L", "U/L", "IU", "%", "mmHg", "cm H\u2082O", "bpm", "\u00b0C", "\u00b0F", "cm", "mm",
         "HU", "mSv", "mGy", "\u00d710\u2079/L", "g/dL", "ng/mL", "pg/mL", "s", "min", "h", "d", "wk"]
SCRIPTS = [
    "\u00e9\u00e8\u00ea\u00eb\u00e0\u00e2\u00e4\u00f4\u00f6\u00fb\u00fc\u00e7\u00f1\u00df\u00f8\u00e5\u00e6\u0153\u0142\u017c\u017a\u0107\u0144\u0161\u010d\u0159\u017e",
    "\u0430\u0431\u0432\u0433\u0434\u0435\u0436\u0437\u0438\u0439\u043a\u043b\u043c\u043d\u043e\u043f\u0440\u0441\u0442\u0443\u0444\u0445\u0446\u0447\u0448\u0449\u044b\u044d\u044e\u044f",
    "\u0627\u0628\u062a\u062b\u062c\u062d\u062e\u062f\u0630\u0631\u0632\u0633\u0634\u0635\u0636\u0637\u0638\u0639\u063a\u0641\u0642\u0643\u0644\u0645\u0646\u0647\u0648\u064a",
    "\u7684\u4e00\u662f\u4e0d\u4e86\u4eba\u6211\u5728\u6709\u4ed6\u8fd9\u4e2d\u5927\u6765\u4e0a\u56fd\u4e2a\u5230\u8bf4\u4eec\u764c\u80ba\u809d\u80be\u5fc3\u810f\u75c5",
    "\u3042\u3044\u3046\u3048\u304a\u304b\u304d\u304f\u3051\u3053\u30a2\u30a4\u30a6\u30a8\u30aa\u30ab\u30ad\u30af",
    "\uac00\ub098\ub2e4\ub77c\ub9c8\ubc14\uc0ac\uc544\uc790\ucc28\uce74\ud0c0\ud30c\ud558",
    "\u03b1\u03b2\u03b3\u03b4\u03b5\u03b6\u03b7\u03b8\u03b9\u03ba\u03bb\u03bc\u03bd\u03be\u03bf\u03c0\u03c1\u03c3\u03c4",
    "\u05d0\u05d1\u05d2\u05d3\u05d4\u05d5\u05d6\u05d7\u05d8\u05d9\u05db\u05dc\u05de\u05e0",
    "\u0915\u0916\u0917\u0918\u091a\u091b\u091c\u091d\u091f\u0920\u0921\u0922\u0924\u0925\u0926\u0927\u093e\u093f\u0940\u094d",
    "\u0e01\u0e02\u0e04\u0e07\u0e08\u0e09\u0e0a\u0e0b\u0e0d\u0e14\u0e15\u0e16\u0e17\u0e18\u0e19\u0e31\u0e34\u0e35",
]
COMBINING = ["\u0300", "\u0301", "\u0302", "\u0303", "\u0308", "\u030a", "\u0327", "\u0331", "\u20dd", "\u0489"]
EMOJI = ["\U0001F600", "\U0001F622", "\U0001F44D", "\U0001F44D\U0001F3FF", "\U0001F3E5", "\U0001F48A",
         "\U0001F489", "\U0001FA78", "\U0001F9EA", "\U0001F9EC", "\u2764\ufe0f", "\U0001F469\u200d\u2695\ufe0f",
         "\U0001F468\u200d\U0001F4BB", "\U0001F3F3\ufe0f\u200d\U0001F308", "\U0001F1EB\U0001F1F7",
         "\U0001F1EF\U0001F1F5", "\U0001F1E8\U0001F1ED", "#\ufe0f\u20e3", "\u2705", "\u26a0\ufe0f", "\u2b06\ufe0f"]
RARE = ["\U00013000", "\U00010348", "\U0001D11E", "\u16a0", "\u2d30", "\ua000", "\ue001", "\U000F0000",
        "\u0f00", "\u1200", "\u13a0", "\u1780", "\u0d05", "\u0b85", "\u0c05", "\u0a05", "\u0985", "\u1000",
        "\u0001", "\u0007", "\u001b", "\u007f", "\u0080", "\u009f", "\u00ad", "\u2060", "\ufeff", "\U0001F9FF"]
WS = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \t ", "\u00a0", "\u3000", "\u2003", "\u200b"]
SPECIAL_TEXT = ["<s>", "</s>", "<unk>", "<0x41>", "<0xFF>", "\u2581", "<pad>", "<|im_start|>", "<|im_end|>",
                "[bib_ref]", "[/bib_ref]", "<|im_start", "im_end|>", "<s", "/s>"]


def _number(r):
    k = r.randrange(6)
    if k == 0:
        return str(r.randrange(0, 10))
    if k == 1:
        return str(r.randrange(10, 1000))
    if k == 2:
        return "%.1f" % (r.random() * 200)
    if k == 3:
        return "%d/%d" % (r.randrange(60, 220), r.randrange(30, 130))
    if k == 4:
        return "%d,%03d" % (r.randrange(1, 999), r.randrange(0, 1000))
    return "%d\u2013%d" % (r.randrange(0, 50), r.randrange(50, 100))


def _clinical(r):
    parts = []
    for _ in range(r.randrange(3, 14)):
        k = r.randrange(10)
        if k < 3:
            parts.append(r.choice(WORDS))
        elif k < 6:
            parts.append(r.choice(ABBR))
        elif k < 8:
            parts.append(_number(r) + r.choice(["", " "]) + r.choice(UNITS))
        else:
            parts.append(r.choice(["67F", "82M", "POD#2", "HD 5", "x3", "q6h", "1:1", "3+", "(-)", "(+)",
                                   "?", ";", ",", ".", ":", "--", "->"]))
    sep = r.choice([" ", " ", " ", ", ", "; ", "  "])
    return sep.join(parts)


def _script(r):
    chars = r.choice(SCRIPTS)
    out = []
    for _ in range(r.randrange(1, 30)):
        out.append(r.choice(chars))
        if r.random() < 0.15:
            out.append(" ")
        if r.random() < 0.08:
            out.append(r.choice(COMBINING))
    return "".join(out)


def _mixed(r):
    pools = [lambda: r.choice(WORDS), lambda: r.choice(ABBR), lambda: _number(r), lambda: r.choice(EMOJI),
             lambda: r.choice(RARE), lambda: r.choice(WS), lambda: r.choice(SPECIAL_TEXT), lambda: _script(r),
             lambda: r.choice(UNITS), lambda: r.choice(COMBINING)]
    return "".join(r.choice(pools)() for _ in range(r.randrange(1, 20)))


def _whitespace(r):
    core = r.choice(["", "x", "ab cd", _clinical(r), r.choice(WORDS)])
    pre = "".join(r.choice(WS) for _ in range(r.randrange(0, 5)))
    post = "".join(r.choice(WS) for _ in range(r.randrange(0, 5)))
    mid = core.replace(" ", r.choice(WS))
    return pre + mid + post


def _long(r):
    k = r.randrange(4)
    if k == 0:
        return " ".join(_clinical(r) for _ in range(r.randrange(20, 120)))
    if k == 1:
        return "".join(_mixed(r) for _ in range(r.randrange(20, 80)))
    if k == 2:
        return r.choice(WS) * r.randrange(100, 3000)
    return "".join(r.choice(RARE + EMOJI) for _ in range(r.randrange(100, 800)))


def _chat(r):
    turns = []
    for _ in range(r.randrange(1, 4)):
        role = r.choice(["system", "user", "assistant"])
        turns.append("<|im_start|>%s\n%s<|im_end|>" % (role, r.choice([_clinical(r), _mixed(r), ""])))
    return r.choice(["\n", "", " "]).join(turns) + r.choice(["", "\n<|im_start|>assistant\n"])


def _invalid(r):
    s = bytearray(_mixed(r).encode("utf-8"))
    for _ in range(r.randrange(1, 4)):
        pos = r.randrange(len(s) + 1)
        s[pos:pos] = bytes([r.randrange(0x80, 0x100)])
    return bytes(s)


def make_corpus(n, seed=1234):
    r = random.Random(seed)
    out = [s.encode("utf-8") for s in FIXED] + list(INVALID)
    gens = [(_clinical, 30), (_script, 12), (_mixed, 20), (_whitespace, 10), (_chat, 6), (_long, 2),
            (_invalid, 5), (lambda r: r.choice(EMOJI) * r.randrange(1, 4), 3), (lambda r: "", 1),
            (lambda r: "".join(r.choice(RARE) for _ in range(r.randrange(1, 8))), 4)]
    weights = [w for _, w in gens]
    while len(out) < n:
        g = r.choices(gens, weights)[0][0]
        s = g(r)
        out.append(s if isinstance(s, bytes) else s.encode("utf-8"))
    return out[:n]


if __name__ == "__main__":
    c = make_corpus(2200)
    print(len(c), sum(len(s) for s in c), max(len(s) for s in c))
