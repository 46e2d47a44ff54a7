#!/usr/bin/env python3
"""Checks an mlruns tree against the MLflow file-store rules (shared/spec/mlflow-filestore.md), reading
it the way MLflow does: yaml.safe_load for meta.yaml / MLmodel, raw value files, metric lines split on
single spaces.

usage: mlflow_check.py MLRUNS EXPECT
EXPECT: tab-separated lines written by test/test_mlflow.c:
  run <exp_id> <run_id> <status> <run_name> <user>
  param <run_id> <key> <value>          (value: \\n and \\t escaped)
  metric <run_id> <key> <value %.17g or nan/inf/-inf> <step>
  tag <run_id> <key> <value>
  model <name> <version> <run_id> <artifact_path>
  experiment <id> <name>
Prints one line per problem; exit 1 if any.
"""
import json
import math
import os
import pathlib
import posixpath
import re
import sys
import urllib.parse

import yaml

KEY_RE = re.compile(r'^[/\w.\- :]*$')
RESERVED_EXP = {'tags', 'datasets', 'traces', 'models'}
errors = []


def err(msg):
    errors.append(msg)


def key_ok(key):
    return (bool(KEY_RE.match(key)) and posixpath.normpath(key) == key and key != '.'
            and not key.startswith('..') and not key.startswith('/') and 0 < len(key) <= 250)


def load_yaml(path):
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        err('%s: not a mapping' % path)
        return {}
    return data


def is_ms(v):
    return type(v) is int and 10 ** 12 <= v < 10 ** 14


def walk_keys(base):
    """{key: text} for every file under base (keys joined with '/')."""
    out = {}
    for dirpath, _, files in os.walk(base):
        for fn in files:
            full = os.path.join(dirpath, fn)
            key = os.path.relpath(full, base).replace(os.sep, '/')
            if not key_ok(key):
                err('%s: invalid key %r' % (base, key))
            with open(full, 'rb') as f:
                raw = f.read()
            try:
                out[key] = raw.decode('utf-8')
            except UnicodeDecodeError:
                err('%s: not UTF-8' % full)
    return out


def parse_metric(path, text):
    if not text:
        err('%s: empty metric file' % path)
        return []
    if not text.endswith('\n'):
        err('%s: last line not terminated' % path)
    rows = []
    for line in text.split('\n')[:-1]:
        f = line.strip().split(' ')
        if len(f) != 3:
            err('%s: line %r does not have 3 single-space fields' % (path, line))
            continue
        ts, val, step = int(f[0]), float(f[1]), int(f[2])
        if not is_ms(ts):
            err('%s: timestamp %d is not in milliseconds' % (path, ts))
        rows.append((ts, val, step))
    return rows


def check_run(root, exp_id, run_dir, run_id):
    meta = load_yaml(os.path.join(run_dir, 'meta.yaml'))
    if not (re.fullmatch(r'[0-9a-f]{32}', run_id)):
        err('%s: run id is not 32 lowercase hex' % run_dir)
    for k, t in (('run_id', str), ('run_uuid', str), ('experiment_id', str), ('user_id', str), ('status', int),
                 ('start_time', int), ('source_type', int), ('lifecycle_stage', str), ('artifact_uri', str),
                 ('run_name', str), ('entry_point_name', str), ('source_name', str), ('source_version', str)):
        if type(meta.get(k)) is not t:
            err('%s/meta.yaml: %s = %r is not %s' % (run_dir, k, meta.get(k), t.__name__))
    if meta.get('run_id') != run_id or meta.get('run_uuid') != run_id:
        err('%s/meta.yaml: run_id/run_uuid differ from the directory name' % run_dir)
    if meta.get('experiment_id') != exp_id:
        err('%s/meta.yaml: experiment_id %r != %r' % (run_dir, meta.get('experiment_id'), exp_id))
    if meta.get('status') not in (1, 2, 3, 4, 5):
        err('%s/meta.yaml: status %r' % (run_dir, meta.get('status')))
    if not is_ms(meta.get('start_time')):
        err('%s/meta.yaml: start_time not in ms' % run_dir)
    end = meta.get('end_time')
    if meta.get('status') == 1:
        if end is not None:
            err('%s: running run with end_time' % run_dir)
    elif not (is_ms(end) and end >= meta.get('start_time', 0)):
        err('%s/meta.yaml: end_time %r' % (run_dir, end))
    if meta.get('lifecycle_stage') != 'active' or meta.get('deleted_time') is not None or meta.get('tags') != []:
        err('%s/meta.yaml: lifecycle_stage / deleted_time / tags' % run_dir)
    if meta.get('source_type') != 4:
        err('%s/meta.yaml: source_type' % run_dir)
    want_uri = pathlib.Path(os.path.abspath(os.path.join(run_dir, 'artifacts'))).as_uri()
    if meta.get('artifact_uri') != want_uri:
        err('%s/meta.yaml: artifact_uri %r != %r' % (run_dir, meta.get('artifact_uri'), want_uri))
    for sub in ('metrics', 'params', 'artifacts'):
        if not os.path.isdir(os.path.join(run_dir, sub)):
            err('%s: missing %s/' % (run_dir, sub))
    for dirpath, _, files in os.walk(run_dir):
        for fn in files:
            if '.tmp.' in fn:
                err('%s: leftover temp file %s' % (run_dir, fn))
    metrics = {k: parse_metric(os.path.join(run_dir, 'metrics', k), v)
               for k, v in walk_keys(os.path.join(run_dir, 'metrics')).items()}
    params = walk_keys(os.path.join(run_dir, 'params'))
    tags = walk_keys(os.path.join(run_dir, 'tags')) if os.path.isdir(os.path.join(run_dir, 'tags')) else {}
    for k, v in list(params.items()) + list(tags.items()):
        if v.endswith('\n') and not k.startswith('mlflow.note'):
            err('%s: value of %s ends with a newline' % (run_dir, k))
    for t in ('mlflow.runName', 'mlflow.user', 'mlflow.source.name', 'mlflow.source.type'):
        if t not in tags:
            err('%s: tag %s missing' % (run_dir, t))
    if tags.get('mlflow.source.type') != 'LOCAL' or tags.get('mlflow.runName') != meta.get('run_name'):
        err('%s: mlflow.source.type / mlflow.runName tag' % run_dir)
    if 'mlflow.log-model.history' in tags:
        hist = json.loads(tags['mlflow.log-model.history'])
        for h in hist:
            if set(h) != {'run_id', 'artifact_path', 'utc_time_created', 'model_uuid', 'flavors'} or h['run_id'] != run_id:
                err('%s: log-model history entry %r' % (run_dir, h))
            mm = os.path.join(run_dir, 'artifacts', h['artifact_path'], 'MLmodel')
            if not os.path.isfile(mm):
                err('%s: MLmodel missing' % mm)
                continue
            m = load_yaml(mm)
            if (not isinstance(m.get('flavors'), dict) or not m['flavors'] or m.get('run_id') != run_id
                    or type(m.get('utc_time_created')) is not str or m.get('model_uuid') != h['model_uuid']
                    or m.get('artifact_path') != h['artifact_path']):
                err('%s: MLmodel fields %r' % (mm, m))
    return meta, metrics, params, tags


def uri_path(uri):
    return urllib.parse.unquote(urllib.parse.urlparse(uri).path)


def main():
    root, expect = os.path.abspath(sys.argv[1]), sys.argv[2]
    if not os.path.isdir(os.path.join(root, '.trash')):
        err('.trash missing')
    runs, exps = {}, {}
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if name in ('.trash', 'models') or not os.path.isdir(d):
            continue
        if not name.isdigit():
            err('non-numeric experiment dir %s' % name)
            continue
        meta = load_yaml(os.path.join(d, 'meta.yaml'))
        if meta.get('experiment_id') != name or type(meta.get('name')) is not str or not meta.get('name'):
            err('%s/meta.yaml: experiment_id %r name %r' % (d, meta.get('experiment_id'), meta.get('name')))
        if meta.get('lifecycle_stage') != 'active' or not is_ms(meta.get('creation_time')) \
                or not is_ms(meta.get('last_update_time')):
            err('%s/meta.yaml: lifecycle_stage / times' % d)
        if meta.get('artifact_location') != pathlib.Path(os.path.abspath(d)).as_uri():
            err('%s/meta.yaml: artifact_location %r' % (d, meta.get('artifact_location')))
        exps[name] = meta.get('name')
        for sub in sorted(os.listdir(d)):
            rd = os.path.join(d, sub)
            if sub in RESERVED_EXP or not os.path.isdir(rd):
                continue
            runs[sub] = (name,) + check_run(root, name, rd, sub)
    if exps.get('0') != 'Default':
        err('experiment 0 is not Default')
    if len(set(exps.values())) != len(exps):
        err('duplicate experiment names %r' % exps)
    # registry
    mroot = os.path.join(root, 'models')
    models = {}
    if os.path.isdir(mroot):
        for name in os.listdir(mroot):
            md = os.path.join(mroot, name)
            meta = load_yaml(os.path.join(md, 'meta.yaml'))
            if meta.get('name') != name or not is_ms(meta.get('creation_timestamp')) \
                    or not is_ms(meta.get('last_updated_timestamp')):
                err('%s/meta.yaml: %r' % (md, meta))
            for v in os.listdir(md):
                if not v.startswith('version-'):
                    continue
                vm = load_yaml(os.path.join(md, v, 'meta.yaml'))
                if vm.get('version') != int(v[8:]) or type(vm.get('version')) is not int:
                    err('%s: version %r' % (v, vm.get('version')))
                if vm.get('status') != 'READY' or vm.get('current_stage') != 'None' or vm.get('name') != name:
                    err('%s/%s: status / current_stage / name %r' % (md, v, vm))
                for k in ('source', 'storage_location'):
                    p = uri_path(vm.get(k, ''))
                    if not os.path.isfile(os.path.join(p, 'MLmodel')):
                        err('%s/%s: %s does not point at an MLmodel directory (%s)' % (md, v, k, p))
                models[(name, vm.get('version'))] = (vm.get('run_id'), vm.get('source'))
    # expectations
    for line in open(expect, encoding='utf-8'):
        f = line.rstrip('\n').split('\t')
        unesc = lambda s: s.replace('\\n', '\n').replace('\\t', '\t')
        if f[0] == 'experiment':
            if exps.get(f[1]) != f[2]:
                err('experiment %s: name %r, expected %r' % (f[1], exps.get(f[1]), f[2]))
        elif f[0] == 'run':
            r = runs.get(f[2])
            if not r or r[0] != f[1] or r[1].get('status') != int(f[3]) or r[1].get('run_name') != f[4] \
                    or r[1].get('user_id') != f[5]:
                err('run %s: %r' % (f[2], r[1] if r else None))
        elif f[0] == 'param':
            got = runs.get(f[1], (None, {}, {}, {}, {}))[3].get(f[2])
            if got != unesc(f[3]):
                err('param %s: %r, expected %r' % (f[2], got, unesc(f[3])))
        elif f[0] == 'tag':
            got = runs.get(f[1], (None, {}, {}, {}, {}))[4].get(f[2])
            if got != unesc(f[3]):
                err('tag %s: %r, expected %r' % (f[2], got, unesc(f[3])))
        elif f[0] == 'metric':
            rows = runs.get(f[1], (None, {}, {}, {}, {}))[2].get(f[2], [])
            want, step = float(f[3]), int(f[4])
            hit = [v for (_, v, s) in rows if s == step and (v == want or (math.isnan(v) and math.isnan(want)))]
            if not hit:
                err('metric %s step %d: %r not found in %r' % (f[2], step, want, rows))
        elif f[0] == 'model':
            got = models.get((f[1], int(f[2])))
            if not got or got[0] != f[3] or not got[1].endswith('/artifacts/' + f[4]):
                err('model %s v%s: %r' % (f[1], f[2], got))
    for e in errors:
        print('mlflow_check:', e)
    print('mlflow_check: %d experiments, %d runs, %d model versions, %d problems' % (len(exps), len(runs), len(models),
                                                                                    len(errors)))
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
