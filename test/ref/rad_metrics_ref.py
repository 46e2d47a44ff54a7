#!/usr/bin/env python3
"""Independent numpy reference for the evaluation metrics of demo/rad_eval.h (test/test_radiology_eval.c).

usage: rad_metrics_ref.py DIR CATALOGUE_TSV

DIR holds what the C test wrote: meta.json {"n", "R", "bins", "targets"} and raw little-endian arrays
gold.i32 pred.i32 auto.i32 model.i32 top.i32 (n, 3) acc.u64 conf.f64 idx.i64 (R, n).
Writes DIR/ref.f64 (float64, NaN where undefined, +inf for "no threshold"):
    exact, acceptable, macro_f1, top3, ece, contrast_accuracy          6
    recall[61], precision[61], f1[61]                                  183
    selective coverage[T], accuracy[T], threshold[T]                   3T
    exam coverage[T], accuracy[T], threshold[T]                        3T
    bootstrap low[4], high[4] (exact, macro-F1, top-3, acceptable)     8
    contrast class of each of the 61 labels, read from the catalogue   61
The contrast classes come from data/catalogue.tsv (modality and contrast columns), not from the C table:
0 none (US, XR, NM, PET), 1 without (CT/CTA/MRI/MRA, contrast "none"), 2 with ("IV", "none+IV"), 3 REVIEW.
"""
import json
import os
import sys

import numpy as np

K = 61
REVIEW = 60


def load(d, name, dtype, shape=None):
    a = np.fromfile(os.path.join(d, name), dtype=dtype)
    return a.reshape(shape) if shape else a


def macro_f1(g, p):
    """Per class F1 = 2tp / (2tp + fp + fn) over the union of classes in g and p (zero_division = 0)."""
    rec, prec, f1 = np.full(K, np.nan), np.full(K, np.nan), np.full(K, np.nan)
    for c in range(K):
        tp = np.sum((g == c) & (p == c))
        fp = np.sum((g != c) & (p == c))
        fn = np.sum((g == c) & (p != c))
        if tp + fn:
            rec[c] = tp / (tp + fn)
        if tp + fp:
            prec[c] = tp / (tp + fp)
        if tp + fp + fn:
            f1[c] = 2 * tp / (2 * tp + fp + fn)
    present = np.union1d(g, p)
    return (float(np.mean(f1[present])) if len(present) else np.nan), rec, prec, f1


def ece(conf, correct, bins):
    if len(conf) == 0:
        return np.nan
    b = np.minimum((np.clip(conf, 0, 1) * bins).astype(np.int64), bins - 1)
    total = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            total += m.sum() / len(conf) * abs(correct[m].mean() - conf[m].mean())
    return total


def coverage(conf, kind, correct, cnt, denom, targets):
    """kind 0: covered when conf >= t; 1: always; 2: never. Highest threshold whose coverage >= target."""
    ts = [np.inf] + sorted(set(conf[kind == 0].tolist()), reverse=True)
    out = np.full((3, len(targets)), np.nan)
    for t in ts:
        cov_mask = (kind == 1) | ((kind == 0) & (conf >= t))
        c = cnt[cov_mask].sum() / denom if denom > 0 else np.nan
        a = correct[cov_mask].mean() if cov_mask.any() else np.nan
        for k, tg in enumerate(targets):
            if np.isnan(out[0, k]) and c >= tg - 1e-12:
                out[:, k] = (c, a, t)
    return out


def stats(g, p, top, acc):
    exact = np.mean(p == g)
    f1 = macro_f1(g, p)[0]
    t3 = np.mean((p == g) | (top == g[:, None]).any(axis=1))
    ac = np.mean((acc >> p.astype(np.uint64)) & np.uint64(1))
    return [exact, f1, t3, ac]


def contrast_classes(tsv):
    cls = []
    with open(tsv, encoding='utf-8') as f:
        next(f)
        for line in f:
            label, modality, _, contrast = line.rstrip('\n').split('\t')[:4]
            if label == 'REVIEW':
                cls.append(3)
            elif contrast in ('IV', 'none+IV'):
                cls.append(2)
            elif modality in ('CT', 'CTA', 'MRI', 'MRA'):
                cls.append(1)
            else:
                cls.append(0)
    if len(cls) == K - 1:   # catalogue without a REVIEW row
        cls.append(3)
    assert len(cls) == K, len(cls)
    return np.array(cls, dtype=np.float64)


def main():
    d, tsv = sys.argv[1], sys.argv[2]
    meta = json.load(open(os.path.join(d, 'meta.json')))
    n, R, bins, targets = meta['n'], meta['R'], meta['bins'], meta['targets']
    g, p = load(d, 'gold.i32', np.int32), load(d, 'pred.i32', np.int32)
    auto, model = load(d, 'auto.i32', np.int32), load(d, 'model.i32', np.int32)
    top, acc = load(d, 'top.i32', np.int32, (n, 3)), load(d, 'acc.u64', np.uint64)
    conf, idx = load(d, 'conf.f64', np.float64), load(d, 'idx.i64', np.int64, (R, n))
    cls = contrast_classes(tsv)

    exact, f1m, t3, ac = stats(g, p, top, acc)
    both = (g < REVIEW) & (p < REVIEW)
    contrast = np.mean(cls[p[both]] == cls[g[both]]) if both.any() else np.nan
    run = model >= 0
    e = ece(conf[run], (model[run] == g[run]).astype(np.float64), bins)
    _, rec, prec, f1 = macro_f1(g, p)
    correct = (auto == g).astype(np.float64)
    sel = coverage(conf, np.where(auto == REVIEW, 1, 0), correct, np.ones(n), n, targets)
    gold_exam = (g < REVIEW).astype(np.float64)
    exam = coverage(conf, np.where(auto == REVIEW, 2, 0), correct, gold_exam, gold_exam.sum(), targets)
    boot = np.array([stats(g[ix], p[ix], top[ix], acc[ix]) for ix in idx])
    lo = np.percentile(boot, 2.5, axis=0)
    hi = np.percentile(boot, 97.5, axis=0)
    out = np.concatenate([[exact, ac, f1m, t3, e, contrast], rec, prec, f1, sel.ravel(), exam.ravel(), lo, hi, cls])
    out.astype(np.float64).tofile(os.path.join(d, 'ref.f64'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
