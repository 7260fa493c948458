#!/usr/bin/env python3
"""How many bytes per sample the values of live_footprint.py's replay targets carry at least.

  python3 benches/replay_entropy.py [--scrapers 3] [--body ../shared/data/node-exporter.prom]

`../shared/bench/live_footprint.py` serves the recorded node exporter body with its values moved
at every request: a counter grows by one of (0, 0, 1, 2, 5, 17) (fractional ones by one of
(0, 0, 0.001, 0.0042, 0.017)); a gauge moves with probability 0.3 by a uniform factor within
±1 %, rounded to an integer or to 4 significant digits. When k systems scrape a target, each of
them sees k such steps between two of its own scrapes.

This script computes, for each row of the body, the entropy of the value one scraper reads given
the value it read before, H(X_k | X_0), and prints the mean over the rows in bytes. That is a
floor for any lossless store on that load: no coder can spend fewer bytes on average for the
values alone (timestamps, labels and framing come on top). Gauges whose spread is a few thousand
quanta or less are computed exactly, step by step; wider ones from the continuous density of
the sum of the moves (an Irwin-Hall mixture), quantised, which is exact in the limit.
"""
import argparse, collections, itertools, math, os, re

HERE = os.path.dirname(os.path.abspath(__file__))
LINE = re.compile(r'^([^#\s][^ ]*(?:\{.*\})?) (\S+)$')
COUNTER_STEPS = {True: (0, 0, 1, 2, 5, 17), False: (0, 0, 0.001, 0.0042, 0.017)}
MOVE_P, MOVE_WIDTH = 0.3, 0.01


def entropy(dist):
    return -sum(p * math.log2(p) for p in dist.values() if p > 0)


def counter_bits(integral, k):
    steps = COUNTER_STEPS[integral]
    sums = collections.Counter(round(sum(c), 9) for c in itertools.product(steps, repeat=k))
    n = len(steps) ** k
    return entropy({x: c / n for x, c in sums.items()})


def quantum(w, integral):
    return 1.0 if integral else 10 ** (math.floor(math.log10(abs(w))) - 3)


def one_move(w, integral):
    """Distribution of w moved by a uniform factor within ±1 % and rounded to its quantum."""
    q = quantum(w, integral)
    lo, hi = sorted((w * (1 - MOVE_WIDTH), w * (1 + MOVE_WIDTH)))
    out, n = {}, math.floor(lo / q + 0.5)
    while n * q - q / 2 <= hi:
        a, b = max(lo, n * q - q / 2), min(hi, n * q + q / 2)
        if b > a:
            out[round(n * q, 12)] = (b - a) / (hi - lo)
        n += 1
    return out


def gauge_bits_exact(v, integral, k):
    dist = {v: 1.0}
    for _ in range(k):
        nxt = collections.defaultdict(float)
        for w, p in dist.items():
            nxt[w] += (1 - MOVE_P) * p
            for x, pm in one_move(w, integral).items():
                nxt[x] += MOVE_P * p * pm
        dist = nxt
    return entropy(dist)


def irwin_hall(n, x):
    """Density of the sum of n uniforms on [0, 1]."""
    if not 0 <= x <= n:
        return 0.0
    s = sum((-1) ** j * math.comb(n, j) * (x - j) ** (n - 1) for j in range(math.floor(x) + 1))
    return s / math.factorial(n - 1)


def gauge_bits_wide(v, integral, k, grid=4000):
    q, a = quantum(v, integral), 2 * MOVE_WIDTH * abs(v)   # one move: uniform of width a
    p0 = (1 - MOVE_P) ** k
    bits = -p0 * math.log2(p0)                              # no move at all: the same value
    dx = k / grid
    for i in range(grid):
        x = -k / 2 + (i + 0.5) * dx                         # in units of a, centred on v
        f = sum(math.comb(k, j) * MOVE_P ** j * (1 - MOVE_P) ** (k - j) * irwin_hall(j, x + j / 2)
                for j in range(1, k + 1)) / a
        if f > 0:
            bits -= f * dx * a * math.log2(f * q)
    return bits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--scrapers', type=int, default=3)
    ap.add_argument('--body', default=os.path.join(HERE, '..', '..', 'shared', 'data', 'node-exporter.prom'))
    a = ap.parse_args()
    k = a.scrapers
    rows, total = collections.Counter(), collections.Counter()
    for ln in open(a.body):
        m = LINE.match(ln.rstrip('\n'))
        if not m:
            continue
        try:
            v = float(m.group(2))
        except ValueError:
            continue
        name = m.group(1).split('{')[0]
        if v != v or abs(v) == float('inf'):
            kind, bits = 'not finite', 0.0
        elif name.endswith(('_total', '_count', '_sum', '_bucket')):
            integral = v == int(v)
            kind, bits = f"counter, {'integer' if integral else 'fraction'}", counter_bits(integral, k)
        elif v == 0:
            kind, bits = 'gauge at 0', 0.0
        else:
            integral = v == int(v)
            kind = f"gauge, {'integer' if integral else 'fraction'}"
            exact = k * 2 * MOVE_WIDTH * abs(v) / quantum(v, integral) < 3000
            bits = (gauge_bits_exact if exact else gauge_bits_wide)(v, integral, k)
        rows[kind] += 1
        total[kind] += bits
    n = sum(rows.values())
    print(f'{k} scraper(s): {n} rows; the values carry at least {sum(total.values()) / n / 8:.3f} B/sample')
    for kind in sorted(rows):
        print(f'  {kind:20s} {rows[kind]:4d} rows  {total[kind] / rows[kind] / 8:.3f} B/sample each')


if __name__ == '__main__':
    main()
