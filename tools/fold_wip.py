#!/usr/bin/env python3
"""Folds the wip/<area>.inc parts into qlora.h (development-time tool; run once, then delete wip/).

Each wip/<area>.inc holds '#if defined(QLORA__PART_API)' declarations '#elif defined(QLORA__PART_IMPL)'
implementation '#endif'. qlora.h includes wip/parts.inc twice; this script replaces each include block
with the matching parts of every area, in the order parts.inc lists them.
"""
import re
import sys

HEADER = 'qlora.h'


def split_part(text, name):
    m = re.search(r'^#if defined\(QLORA__PART_API\)\n(.*?)^#elif defined\(QLORA__PART_IMPL\)\n(.*)^#endif[^\n]*\n?\Z',
                  text, re.S | re.M)
    if not m:
        sys.exit('fold_wip: %s does not have the API/IMPL skeleton' % name)
    return m.group(1).strip('\n'), m.group(2).strip('\n')


def main():
    src = open(HEADER).read()
    order = re.findall(r'^#include "(\w+\.inc)"', open('wip/parts.inc').read(), re.M)
    apis, impls = [], []
    for inc in order:
        api, impl = split_part(open('wip/' + inc).read(), inc)
        if api.strip():
            apis.append(api)
        if impl.strip():
            impls.append(impl)
    api_block = re.compile(r'^// Sections under development.*?\n#define QLORA__PART_API\n#include "wip/parts.inc"\n#undef QLORA__PART_API\n',
                           re.S | re.M)
    impl_block = re.compile(r'^#define QLORA__PART_IMPL\n#include "wip/parts.inc"\n#undef QLORA__PART_IMPL\n', re.M)
    if not api_block.search(src) or not impl_block.search(src):
        sys.exit('fold_wip: include blocks not found in qlora.h')
    src = api_block.sub(lambda _: '\n\n'.join(apis) + '\n', src)
    src = impl_block.sub(lambda _: '\n\n'.join(impls) + '\n', src)
    open(HEADER, 'w').write(src)
    print('folded', ', '.join(order))


if __name__ == '__main__':
    main()
