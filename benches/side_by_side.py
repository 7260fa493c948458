#!/usr/bin/env python3
"""Two Perch builds side by side on the live benchmark's load: CPU per sample and peak RSS.

  python3 benches/side_by_side.py BIN_A BIN_B [MINUTES]

Starts what `../shared/bench/live_footprint.py` starts (one node exporter and 10 replay targets
at 1 s, its own code, read in place), but instead of the peers runs two Perch binaries at once,
both scraping the same targets. Both then see the same load and the same machine at the same
moments, so a difference in CPU per sample between two builds shows even when the machine's
speed drifts from run to run (consecutive runs of one build differed by up to 20 % on the
shared build machine; two builds side by side, by about 1 %). Run it twice with the builds in
either order. CPU is utime + stime from /proc over MINUTES (default 3) after a 5 s warm-up,
divided by the samples each stored in that window (counted as live_footprint.py counts them).
Each replay target moves its values at every request, so with two scrapers each sees two
steps per scrape: the figures are not those of a live_footprint.py run (three scrapers).
"""
import os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'bench'))
import live_footprint as lf  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    bins, minutes = sys.argv[1:3], float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    work = tempfile.mkdtemp(prefix='side-by-side-')
    procs = []
    try:
        ne = lf.free_port()
        procs.append(subprocess.Popen(['prometheus-node-exporter', f'--web.listen-address=127.0.0.1:{ne}'],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports = [lf.free_port() for _ in range(10)]
        for i, p in enumerate(ports):
            lf.serve_replay(p, lf.Replay(i))
        cfg = os.path.join(work, 'scrape.yml')
        with open(cfg, 'w') as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                    f"  - job_name: node\n    static_configs: [{{targets: ['127.0.0.1:{ne}']}}]\n"
                    "  - job_name: replay\n    static_configs: [{targets: ["
                    + ', '.join(repr(f'127.0.0.1:{p}') for p in ports) + "]}]\n")
        lf.wait_http(f'http://127.0.0.1:{ne}/metrics')
        agents = {}
        for name, binary in zip('AB', bins):
            port, d = lf.free_port(), os.path.join(work, name)
            p = subprocess.Popen([binary, '--config.file', cfg, '--storage.tsdb.path', d,
                                  '--web.listen-address', f'127.0.0.1:{port}'],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            agents[name] = (p, port, binary)
        for p, port, _ in agents.values():
            lf.wait_http(f'http://127.0.0.1:{port}/api/v1/query?query=1')
        time.sleep(5)
        start = {n: lf.proc_stats(p.pid) for n, (p, _, _) in agents.items()}
        t0, peak = time.time(), {n: 0 for n in agents}
        while time.time() - t0 < minutes * 60:
            time.sleep(5)
            for n, (p, _, _) in agents.items():
                peak[n] = max(peak[n], lf.proc_stats(p.pid)['rss_kb'])
        end = {n: lf.proc_stats(p.pid) for n, (p, _, _) in agents.items()}
        t1 = time.time()
        for n, (p, port, binary) in agents.items():
            samples = lf.stored_samples(f'http://127.0.0.1:{port}', t0, t1)
            cpu = end[n]['cpu_s'] - start[n]['cpu_s']
            per = f'{cpu * 1e6 / samples:.3f}' if isinstance(samples, int) and samples > 0 else '-'
            print(f'{n} {binary}: samples {samples} cpu_s {cpu:.2f} us/sample {per} '
                  f'peak_rss_MB {peak[n] / 1024:.2f}', flush=True)
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
