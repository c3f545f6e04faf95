#!/usr/bin/env python3
"""brood's benchmark suite: brood against C reference programs and peers.

Run through make: `make bench` (full), `make bench-quick` (under a minute),
`make bench-check` (quick sizes, one round, only proves that every
benchmark produces numbers). See benches/README.md for the workloads, the
method and the targets.

Every benchmark runs its subjects alternately, brood then the reference
then the peers, round after round (A B C A B C ...), so that a change in
the machine's state (page cache, CPU frequency, a neighbour's load) hits
every subject alike. Each subject's numbers are summarised as median, min
and max over the rounds; the ratio is brood's median over the other's
median, oriented so that > 1 means brood does more (for rates) or takes
longer (for times) — the target column says which way is good.

Stdlib only. Linux only (reads /proc).
"""

import argparse
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(ROOT, "target", "bench")
MiB = 1024 * 1024
GiB = 1024 * MiB

# Sizes per mode. "check" is quick's sizes with a single round.
MODES = {
    "full": dict(
        rounds=5, spawn_n=5000, spawn_peer_n=2000, parallel_n=500, spawn_static_n=10000,
        out_bytes=1 * GiB, out_multi_k=8, out_multi_bytes=128 * MiB,
        out_line_bytes=256 * MiB, out_byte_bytes=4 * MiB, out_file_bytes=1 * GiB, out_run_bytes=512 * MiB,
        honcho_bytes=8 * MiB, parallel_bytes=256 * MiB,
        alive_n=10000, alive_rounds=3, rss_rounds=3, run_many=(1000, 9000),
        lat_n=3000, lat_j=4, lat_delay_us=5000, idle_s=10.0,
        restart_k=40, restart_peer_k=10, restart_run_us=20000,
    ),
    "quick": dict(
        rounds=3, spawn_n=1000, spawn_peer_n=300, parallel_n=60, spawn_static_n=2000,
        out_bytes=256 * MiB, out_multi_k=8, out_multi_bytes=32 * MiB,
        out_line_bytes=32 * MiB, out_byte_bytes=512 * 1024, out_file_bytes=256 * MiB, out_run_bytes=128 * MiB,
        honcho_bytes=2 * MiB, parallel_bytes=32 * MiB,
        alive_n=1000, alive_rounds=3, rss_rounds=1, run_many=(200, 1000),
        lat_n=500, lat_j=4, lat_delay_us=5000, idle_s=3.0,
        restart_k=15, restart_peer_k=5, restart_run_us=20000,
    ),
}


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# processes and /proc


def proc_status(pid):
    """/proc/PID/status as a dict of str -> str (empty if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def kib(value):
    """'1234 kB' -> 1234."""
    return int(value.split()[0]) if value else 0


def cpu_ticks(pid):
    """utime + stime of PID, in clock ticks (fields 14 and 15 of stat)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def all_procs():
    """[(pid, ppid, comm)] for every process."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_status(name)
        if st:
            out.append((int(name), int(st.get("PPid", "0")), st.get("Name", "")))
    return out


def descendants(root):
    """[(pid, comm)] of every descendant of root."""
    procs = all_procs()
    kids = {}
    for pid, ppid, comm in procs:
        kids.setdefault(ppid, []).append((pid, comm))
    out, todo = [], [root]
    while todo:
        for pid, comm in kids.get(todo.pop(), []):
            out.append((pid, comm))
            todo.append(pid)
    return out


def kill_strays(marker):
    """SIGKILL the pause children of this run that outlived their supervisor:
    only processes whose command line holds marker (this run's FIFO path)."""
    for pid, _ppid, name in all_procs():
        if name != "pausechild":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def pss_kib(pid):
    """Proportional set size (shared pages divided among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_timed(cmd, input_bytes=None, cwd=None, stdout=subprocess.DEVNULL, timeout=600):
    """Run cmd to completion; wall-clock seconds. Non-zero exit is an error."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, input=input_bytes, stdout=stdout, stderr=subprocess.PIPE,
                       cwd=cwd, timeout=timeout)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"{cmd[0]} exited {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}")
    return dt


class Fifo:
    """A FIFO that ready-announcing children (pausechild FIFO N) write a byte to."""

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "ready.fifo")
        if not os.path.exists(self.path):
            os.mkfifo(self.path)
        # O_RDWR: the open never blocks and there is never "no writer" EOF.
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    def drain(self):
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def wait(self, n, proc, timeout):
        """Block until n bytes came in; error if proc exits first or on timeout."""
        got, deadline = 0, time.monotonic() + timeout
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"only {got} of {n} children came alive within {timeout:.0f}s")
            r, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if r:
                try:
                    got += len(os.read(self.fd, 65536))
                except BlockingIOError:
                    pass
            elif proc.poll() is not None:
                raise BenchError(f"supervisor exited ({proc.returncode}) with {got} of {n} children alive")
        return got


def stop(proc, sig=signal.SIGTERM, timeout=30):
    """Signal proc and wait; seconds until it exited."""
    t0 = time.perf_counter()
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(f"did not exit within {timeout}s of {signal.Signals(sig).name}")
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# results


class Bench:
    """One benchmark: subjects run alternately, samples per subject and metric."""

    def __init__(self, name, title, params):
        self.name, self.title, self.params = name, title, params
        self.subjects = []      # [(subject, fn)] fn() -> {metric: value}
        self.samples = {}       # subject -> metric -> [values]
        self.errors = {}        # subject -> message
        self.skipped = {}       # subject -> reason
        self.metrics = []       # [(metric, unit, better, ratio_target, abs_target)]
        self.why = {}           # metric -> what is known about a miss (printed with MISSED)
        self.reference = None
        self.notes = []

    def subject(self, name, fn, reference=False):
        self.subjects.append((name, fn))
        if reference:
            self.reference = name

    def skip(self, name, reason):
        self.skipped[name] = reason

    def metric(self, metric, unit, better, ratio_target=None, abs_target=None, why=None):
        """better: 'higher' or 'lower'. ratio_target: brood/reference must be
        >= (higher) or <= (lower) it. abs_target: (op, value) on brood.
        why: the known reason, printed if the target is missed."""
        self.metrics.append((metric, unit, better, ratio_target, abs_target))
        if why:
            self.why[metric] = why

    def run(self, rounds, log):
        for r in range(rounds):
            for subject, fn in self.subjects:
                if subject in self.errors:
                    continue
                try:
                    values = fn()
                except (BenchError, OSError, subprocess.SubprocessError) as e:
                    self.errors[subject] = str(e).strip().replace("\n", " ")
                    log(f"  {subject}: ERROR {self.errors[subject]}")
                    continue
                for k, v in values.items():
                    self.samples.setdefault(subject, {}).setdefault(k, []).append(v)
                shown = ", ".join(f"{k}={fmt(v)}" for k, v in values.items())
                log(f"  round {r + 1}/{rounds} {subject}: {shown}")

    def rows(self):
        rows = []
        for metric, unit, better, ratio_target, abs_target in self.metrics:
            brood = median_of(self.samples, "brood", metric)
            for subject, _fn in self.subjects:
                vals = self.samples.get(subject, {}).get(metric)
                row = dict(bench=self.name, subject=subject, metric=metric, unit=unit,
                           better=better, n=0, median=None, min=None, max=None,
                           ratio=None, target="", status="", why=self.why.get(metric, ""))
                if subject in self.errors:
                    row["status"] = "ERROR: " + self.errors[subject][:120]
                if vals:
                    row.update(n=len(vals), median=statistics.median(vals), min=min(vals), max=max(vals))
                elif subject == "brood" or subject == self.reference or subject in self.errors:
                    pass
                else:
                    continue  # this subject does not report this metric
                if subject != "brood" and brood is not None and row["median"]:
                    row["ratio"] = brood / row["median"]
                if subject == self.reference and ratio_target is not None:
                    op = ">=" if better == "higher" else "<="
                    row["target"] = f"brood/ref {op} {ratio_target:g}"
                    if row["ratio"] is not None:
                        ok = row["ratio"] >= ratio_target if better == "higher" else row["ratio"] <= ratio_target
                        row["status"] = "ok" if ok else "MISSED"
                if subject == "brood" and abs_target is not None:
                    op, limit = abs_target
                    row["target"] = f"{op} {limit:g} {unit}"
                    if row["median"] is not None:
                        # every round must meet an absolute target
                        worst = row["max"] if op in ("<=", "==") else row["min"]
                        ok = {"<=": worst <= limit, "==": worst == limit, ">=": worst >= limit}[op]
                        row["status"] = "ok" if ok else "MISSED"
                rows.append(row)
            for subject, reason in self.skipped.items():
                if metric == self.metrics[0][0]:
                    rows.append(dict(bench=self.name, subject=subject, metric=metric, unit=unit,
                                     better=better, n=0, median=None, min=None, max=None,
                                     ratio=None, target="", status="skipped: " + reason))
        return rows

    def produced_numbers(self):
        """brood has a number for every metric, and the reference for every
        metric it is compared on."""
        for metric, _unit, _better, ratio_target, _abs in self.metrics:
            if not self.samples.get("brood", {}).get(metric):
                return False
            if ratio_target is not None and self.reference \
                    and not self.samples.get(self.reference, {}).get(metric):
                return False
        return True


def median_of(samples, subject, metric):
    vals = samples.get(subject, {}).get(metric)
    return statistics.median(vals) if vals else None


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e6):
        return str(int(v))
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(r):
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def print_table(rows, out):
    heads = ["benchmark", "subject", "metric", "median", "min", "max", "ratio", "target", "status"]
    table = [heads]
    for r in rows:
        table.append([
            r["bench"], r["subject"], f"{r['metric']} ({r['unit']})",
            fmt(r["median"]), fmt(r["min"]), fmt(r["max"]),
            fmt_ratio(r['ratio']) if r["ratio"] is not None else "",
            r["target"], r["status"],
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(heads))]
    right = {3, 4, 5, 6}
    lines = []
    for i, row in enumerate(table):
        cells = [c.rjust(widths[j]) if j in right else c.ljust(widths[j]) for j, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    out.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# peers


def gnu_parallel():
    exe = shutil.which("parallel")
    if not exe:
        return None
    try:
        v = subprocess.run([exe, "--version"], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if b"GNU parallel" in v else None  # not moreutils' parallel


def python_module_cmd(module, script):
    """How to run a pip-installed tool: its script on PATH, else python3 -m."""
    exe = shutil.which(script)
    if exe:
        return [exe]
    try:
        ok = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return [sys.executable, "-m", module] if ok.returncode == 0 else None


HORUST_ROOT = os.path.join(OUT_DIR, "peers")


def horust():
    """Horust, a Rust supervisor from crates.io: on PATH or where
    install_peers puts it."""
    exe = shutil.which("horust")
    if exe:
        return exe
    exe = os.path.join(HORUST_ROOT, "bin", "horust")
    return exe if os.access(exe, os.X_OK) else None


def install_peers(log):
    """Install the peers that are missing, through apt-get, pip and cargo, if we can."""
    if not horust() and shutil.which("cargo"):
        # About 4 minutes of compiling on the 2-core machine, once: the
        # binary stays in target/bench/peers.
        log("installing Horust (cargo install horust, a few minutes, once)...")
        try:
            r = subprocess.run(["cargo", "install", "--quiet", "--root", HORUST_ROOT, "horust"],
                               capture_output=True, timeout=1200)
            if r.returncode != 0:
                log(f"  cargo install horust failed: {r.stderr.decode(errors='replace')[-300:]}")
        except (OSError, subprocess.SubprocessError) as e:
            log(f"  cargo install horust failed: {e}")
    if not gnu_parallel() and shutil.which("apt-get") and os.geteuid() == 0:
        log("installing GNU parallel (apt-get)...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-qq", "parallel"]
        try:
            if subprocess.run(cmd, capture_output=True, env=env, timeout=300).returncode != 0:
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
                subprocess.run(cmd, capture_output=True, env=env, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            log(f"  apt-get failed: {e}")
    missing = [pkg for pkg, mod, script in (("honcho", "honcho", "honcho"),
                                             ("supervisor", "supervisor.supervisord", "supervisord"))
               if not python_module_cmd(mod, script)]
    if missing:
        log(f"installing {' '.join(missing)} (pip)...")
        try:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing],
                           capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            log(f"  pip failed: {e}")


PY_FORK_LOOP = r"""
import os, sys
n, p, prog = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
started = running = failed = 0
while started < n or running:
    while started < n and running < p:
        started += 1
        pid = os.fork()
        if pid == 0:
            try:
                os.execlp(prog, prog, str(started))
            finally:
                os._exit(127)
        running += 1
    _, st = os.wait()
    running -= 1
    failed += st != 0
sys.exit(1 if failed else 0)
"""


# --------------------------------------------------------------------------
# the benchmarks


class Suite:
    def __init__(self, mode, check, bindir, brood, log):
        self.mode, self.check, self.log = mode, check, log
        self.p = dict(MODES["quick" if mode == "check" else mode])
        if check:
            self.p["rounds"] = self.p["alive_rounds"] = self.p["rss_rounds"] = 1
            # supervisord restarts once a second: 2 restarts keep --check short
            self.p["restart_k"], self.p["restart_peer_k"] = 5, 2
        self.bin = lambda name: os.path.join(bindir, name)
        self.brood = brood
        self.tmp = tempfile.mkdtemp(prefix="brood-bench-")
        self.fifo = Fifo(self.tmp)
        self.parallel = gnu_parallel()
        self.honcho = python_module_cmd("honcho", "honcho")
        self.supervisord = python_module_cmd("supervisor.supervisord", "supervisord")
        self.horust = horust()
        self.benches = []
        self.raise_nofile()

    def raise_nofile(self):
        """N children alive need 2 pipes each in brood: lift the hard limit if root."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 2 * self.p["alive_n"] + 1024
        if hard != resource.RLIM_INFINITY and hard < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
                hard = want
            except (ValueError, OSError):
                pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.nofile = hard

    def brood_cmd(self, *args):
        return [self.brood, "spawn", "-q", *args]

    def add(self, bench):
        self.benches.append(bench)
        return bench

    # -- 1. spawn rate --------------------------------------------------------

    def spawn(self, jobs):
        n, pn = self.p["spawn_n"], self.p["spawn_peer_n"]
        b = self.add(Bench(f"spawn-j{jobs}", f"spawn /bin/true, {jobs} in flight",
                           dict(n=n, jobs=jobs, peer_n=pn, parallel_n=self.p["parallel_n"])))
        b.metric("rate", "spawns/s", "higher", ratio_target=0.95)
        true = shutil.which("true") or "/bin/true"
        b.subject("brood", lambda: {"rate": n / run_timed(self.brood_cmd("-n", str(n), "-j", str(jobs), "--", true))})
        b.subject("C forkloop", lambda: {"rate": n / run_timed(
            [self.bin("forkloop"), "-n", str(n), "-j", str(jobs), true])}, reference=True)
        args = "".join(f"{i}\n" for i in range(1, pn + 1)).encode()
        b.subject("xargs -P", lambda: {"rate": pn / run_timed(
            ["xargs", "-P", str(jobs), "-n", "1", true], input_bytes=args)})
        b.subject("python fork loop", lambda: {"rate": pn / run_timed(
            [sys.executable, "-c", PY_FORK_LOOP, str(pn), str(jobs), true])})
        if self.parallel:
            qn = self.p["parallel_n"]
            qargs = "".join(f"{i}\n" for i in range(1, qn + 1)).encode()
            b.subject("GNU parallel", lambda: {"rate": qn / run_timed(
                [self.parallel, "--will-cite", "-j", str(jobs), "--line-buffer", "--tag", true],
                input_bytes=qargs)})
        else:
            b.skip("GNU parallel", "not installed")
        return b

    def spawn_static(self, jobs):
        """The issue's tighter limit: a static do-nothing child (no dynamic
        loading to hide behind) against a C vfork+execv loop."""
        n = self.p["spawn_static_n"]
        b = self.add(Bench(f"vfork-j{jobs}", f"spawn a static do-nothing child, {jobs} in flight",
                           dict(n=n, jobs=jobs)))
        b.metric("rate", "spawns/s", "higher", ratio_target=0.95,
                 why="per child brood makes and closes two pipes (stdout, stderr), registers them,"
                     " and wakes twice: once for their hang-up, once for SIGCHLD (the kernel closes"
                     " an exiting child's files before it signals its parent); the C loop has no"
                     " pipes and wakes once, in waitpid. See benches/README.md, spawning")
        nop = self.bin("nop")
        b.subject("brood", lambda: {"rate": n / run_timed(self.brood_cmd("-n", str(n), "-j", str(jobs), "--", nop))})
        b.subject("C vfork loop", lambda: {"rate": n / run_timed(
            [self.bin("forkloop"), "-v", "-n", str(n), "-j", str(jobs), nop])}, reference=True)
        b.subject("C fork loop", lambda: {"rate": n / run_timed(
            [self.bin("forkloop"), "-n", str(n), "-j", str(jobs), nop])})
        return b

    # -- 2-4. output throughput -------------------------------------------------

    def output(self, name, title, k, nbytes, wsize, peers=False):
        b = self.add(Bench(name, title, dict(children=k, bytes_each=nbytes, write_size=wsize)))
        b.metric("throughput", "MB/s", "higher", ratio_target=0.8)
        gen = [self.bin("linegen"), str(nbytes), str(wsize)]
        total = k * nbytes / 1e6
        b.subject("brood", lambda: {"throughput": total / run_timed(self.brood_cmd("-n", str(k), "--", *gen))})
        b.subject("C prefixer", lambda: {"throughput": total / run_timed(
            [self.bin("prefixer"), "-k", str(k), *gen])}, reference=True)
        if peers:
            hb = self.p["honcho_bytes"]
            if self.honcho:
                d = os.path.join(self.tmp, "honcho-out")
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "Procfile"), "w") as f:
                    f.write(f"linegen: {self.bin('linegen')} {hb} {wsize} 1\n")
                b.subject("honcho", lambda: {"throughput": hb / 1e6 / run_timed(
                    [*self.honcho, "start", "-f", os.path.join(d, "Procfile")], cwd=d)})
            else:
                b.skip("honcho", "not installed")
            pb = self.p["parallel_bytes"]
            if self.parallel:
                b.subject("GNU parallel", lambda: {"throughput": pb / 1e6 / run_timed(
                    [self.parallel, "--will-cite", "--line-buffer", "--tag", "-j", "1",
                     self.bin("linegen"), str(pb), str(wsize), ":::", "1"])})
            else:
                b.skip("GNU parallel", "not installed")
        return b

    def output_run(self):
        """Run mode, as Procfile users run it: `brood run` of one program
        writing lines in 64 KiB writes, prefixed to /dev/null. Unlike spawn
        mode, every line also goes to the program's ctl logs ring."""
        nbytes = self.p["out_run_bytes"]
        b = self.add(Bench("out-run", "brood run, 1 program, 64 KiB writes, prefixed to /dev/null",
                           dict(children=1, bytes_each=nbytes, write_size=65536)))
        b.metric("throughput", "MB/s", "higher", ratio_target=0.95,
                 why="a call into the sink per line, as in spawn mode (out-1x64k), plus the ring's"
                     " bookkeeping per read; brood's CPU per 512 MiB is 212 ms against the C program's 163")
        d = os.path.join(self.tmp, "out-run")
        os.makedirs(d, exist_ok=True)
        cfg = os.path.join(d, "brood.toml")
        with open(cfg, "w") as f:
            f.write("[program.gen]\n"
                    f"command = [{json.dumps(self.bin('linegen'))}, \"{nbytes}\", \"65536\"]\n"
                    "restart = \"never\"\n")
        b.subject("brood", lambda: {"throughput": nbytes / 1e6 / run_timed(
            [self.brood, "run", "-q", "--socket", os.path.join(d, "s.sock"), "-f", cfg], cwd=d)})
        b.subject("C prefixer", lambda: {"throughput": nbytes / 1e6 / run_timed(
            [self.bin("prefixer"), "-k", "1", self.bin("linegen"), str(nbytes), "65536"])}, reference=True)
        b.skip("Horust", "not the same work: its children write straight to its stdout"
                         " (no capture, no prefix, no lines)")
        b.skip("honcho", "see out-1x64k (honcho's run mode is its only mode)")
        return b

    def output_file(self):
        """The file sink: `brood run` with `log = { file }` (the console
        still written, to /dev/null) against the C prefixer writing the
        same child's lines to a file. Both files live in the bench's temp
        dir and are removed after each run, so neither fills the page cache
        for the other."""
        nbytes = self.p["out_file_bytes"]
        b = self.add(Bench("out-file", "1 child, 64 KiB writes, lines to a log file",
                           dict(children=1, bytes_each=nbytes, write_size=65536)))
        b.metric("throughput", "MB/s", "higher", ratio_target=0.8)
        d = os.path.join(self.tmp, "out-file")
        os.makedirs(d, exist_ok=True)
        cfg = os.path.join(d, "brood.toml")
        log = os.path.join(d, "gen.log")
        ref_log = os.path.join(d, "ref.log")
        # max_size = 0: no rotation, as the prefixer has none.
        with open(cfg, "w") as f:
            f.write("[program.gen]\n"
                    f"command = [{json.dumps(self.bin('linegen'))}, \"{nbytes}\", \"65536\"]\n"
                    "restart = \"never\"\n"
                    "log = { file = \"gen.log\", max_size = 0 }\n")

        def brood_run():
            try:
                return {"throughput": nbytes / 1e6 / run_timed(
                    [self.brood, "run", "-q", "--socket", os.path.join(d, "s.sock"), "-f", cfg], cwd=d)}
            finally:
                if os.path.exists(log) and os.path.getsize(log) < nbytes:
                    raise BenchError(f"brood's log file has {os.path.getsize(log)} of {nbytes} bytes")
                for p in (log, log + ".1"):
                    if os.path.exists(p):
                        os.unlink(p)

        def ref_run():
            try:
                with open(ref_log, "wb") as out:
                    return {"throughput": nbytes / 1e6 / run_timed(
                        [self.bin("prefixer"), "-k", "1", self.bin("linegen"), str(nbytes), "65536"], stdout=out)}
            finally:
                if os.path.exists(ref_log):
                    os.unlink(ref_log)

        b.subject("brood", brood_run)
        b.subject("C prefixer to a file", ref_run, reference=True)
        return b

    # -- 5. N children alive, then SIGTERM ----------------------------------

    def alive(self):
        n = self.p["alive_n"]
        fit = (self.nofile - 64) // 2
        note = None
        if n > fit:
            note = f"alive_n lowered from {n} to {fit} by RLIMIT_NOFILE {self.nofile} (2 pipes per child)"
            n = fit
        b = self.add(Bench(f"alive-{n}", f"{n} pause children alive at once, then SIGTERM",
                           dict(children=n, nofile=self.nofile)))
        if note:
            b.notes.append(note)
        b.metric("to all alive", "s", "lower", ratio_target=1.1)
        b.metric("shutdown", "s", "lower", abs_target=("<=", 2.0))
        b.metric("RSS peak", "MiB", "lower", abs_target=("<=", 16.0))
        child = [self.bin("pausechild"), self.fifo.path]

        def one(cmd):
            self.fifo.drain()
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                self.fifo.wait(n, p, timeout=120)
                up = time.perf_counter() - t0
                st = proc_status(p.pid)
                rss = kib(st.get("VmHWM") or st.get("VmRSS")) / 1024
                down = stop(p)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                kill_strays(self.fifo.path)
            return {"to all alive": up, "shutdown": down, "RSS peak": rss}

        b.subject("brood", lambda: one(self.brood_cmd("-n", str(n), "--", *child)))
        b.subject("C concloop", lambda: one([self.bin("concloop"), "-n", str(n), *child]), reference=True)
        return b

    # -- 5b. brood run with numprocs = N ----------------------------------

    def run_many(self, n, judged):
        """`brood run` of one program with `numprocs = N` pause children
        (`stdin = "null"`: the default stdin pipe would be a third fd per
        child): brood's memory, `ctl status --json` and the stop of all.
        Measured at two sizes, so the cost per instance shows; only the
        larger is held to the targets."""
        fit = (self.nofile - 64) // 2
        note = None
        if n > fit:
            note = f"numprocs lowered from {n} to {fit} by RLIMIT_NOFILE {self.nofile} (2 pipes per child)"
            n = fit
        b = self.add(Bench(f"run-{n}", f"brood run, numprocs = {n} pause children",
                           dict(children=n, nofile=self.nofile)))
        if note:
            b.notes.append(note)
        b.metric("to all alive", "s", "lower")
        b.metric("RSS", "MiB", "lower", abs_target=("<=", 16.0) if judged else None)
        b.metric("RSS peak", "MiB", "lower")
        b.metric("status --json", "ms", "lower", abs_target=("<=", 100.0) if judged else None)
        b.metric("stop all", "s", "lower", abs_target=("<=", 1.5) if judged else None)
        d = os.path.join(self.tmp, f"run-{n}")
        os.makedirs(d, exist_ok=True)
        cfg, sock = os.path.join(d, "brood.toml"), os.path.join(d, "s.sock")
        with open(cfg, "w") as f:
            f.write("[program.p]\n"
                    f"command = [{json.dumps(self.bin('pausechild'))}, {json.dumps(self.fifo.path)}, \"x\"]\n"
                    f"numprocs = {n}\n"
                    "stdin = \"null\"\n")

        def one(cmd, status):
            self.fifo.drain()
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL)
            try:
                self.fifo.wait(n, p, timeout=180)
                up = time.perf_counter() - t0
                time.sleep(0.3)
                st = proc_status(p.pid)
                out = {"to all alive": up, "RSS": kib(st.get("VmRSS")) / 1024,
                       "RSS peak": kib(st.get("VmHWM")) / 1024}
                if status:
                    out["status --json"] = 1000 * run_timed(
                        [self.brood, "ctl", "--socket", sock, "status", "--json"])
                out["stop all"] = stop(p)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                kill_strays(self.fifo.path)
            return out

        b.subject("brood", lambda: one([self.brood, "run", "-q", "--socket", sock, "-f", cfg], True))
        b.subject("C concloop", lambda: one([self.bin("concloop"), "-n", str(n),
                                             self.bin("pausechild"), self.fifo.path], False), reference=True)
        return b

    # -- 5c. readiness hand-off ----------------------------------------------

    def handoff(self):
        """`depends_on = { a = "ready" }`: from brood seeing a program ready
        (its `ready` event, here by s6's notification fd) to the dependent's
        spawn (its `spawn` event): the loop's own hand-off, 10 pairs per
        round, the median per round."""
        pairs = 10
        b = self.add(Bench("ready-handoff", "readiness -> dependent spawned", dict(pairs=pairs)))
        b.metric("median", "ms", "lower", abs_target=("<=", 2.0))
        b.metric("max", "ms", "lower")
        d = os.path.join(self.tmp, "handoff")
        os.makedirs(d, exist_ok=True)
        cfg, sock, ev = (os.path.join(d, x) for x in ("brood.toml", "s.sock", "events"))
        pause = f"{json.dumps(self.bin('pausechild'))}, {json.dumps(self.fifo.path)}, \"x\""
        with open(cfg, "w") as f:
            for i in range(pairs):
                f.write(f"[program.a{i}]\n"
                        f"command = [\"/bin/sh\", \"-c\", \"printf '\\\\n' >&3; exec \\\"$0\\\" \\\"$@\\\"\", {pause}]\n"
                        "ready = { fd = 3 }\n"
                        "stdin = \"null\"\n"
                        f"[program.b{i}]\n"
                        f"command = [{pause}]\n"
                        f"depends_on = {{ a{i} = \"ready\" }}\n"
                        "stdin = \"null\"\n")

        def one():
            if os.path.exists(ev):
                os.unlink(ev)
            self.fifo.drain()
            p = subprocess.Popen([self.brood, "run", "-q", "--socket", sock, "--events", ev, "-f", cfg], cwd=d,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                self.fifo.wait(2 * pairs, p, timeout=60)
                stop(p)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                kill_strays(self.fifo.path)
            ready, spawned = {}, {}
            with open(ev) as f:
                for line in f:
                    e = json.loads(line)
                    if e.get("event") == "ready":
                        ready[e["label"].split(".")[0][1:]] = e["ts"]
                    elif e.get("event") == "spawn" and e["label"].startswith("b"):
                        spawned[e["label"].split(".")[0][1:]] = e["ts"]
            lat = sorted((spawned[k] - t) * 1e3 for k, t in ready.items() if k in spawned)
            if len(lat) < pairs:
                raise BenchError(f"only {len(lat)} of {pairs} hand-offs seen in the events")
            return {"median": statistics.median(lat), "max": lat[-1]}

        b.subject("brood", one)
        return b

    def health100(self):
        """100 programs, each health-checked by TCP every 100 ms (1,000
        checks a second against a loopback listener): brood's CPU (user +
        system) over a window, as a share of one core."""
        n, secs = 100, self.p.get("health_s", 3.0)
        b = self.add(Bench("health-100", f"{n} programs with TCP health checks every 100 ms",
                           dict(programs=n, seconds=secs)))
        b.metric("CPU", "% of a core", "lower", abs_target=("<=", 2.0),
                 why="most of it is the kernel's loopback TCP handshake and reset, charged to brood's system time")
        b.metric("user CPU", "% of a core", "lower")
        d = os.path.join(self.tmp, "health")
        os.makedirs(d, exist_ok=True)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        port = listener.getsockname()[1]
        cfg, sock = os.path.join(d, "brood.toml"), os.path.join(d, "s.sock")
        with open(cfg, "w") as f:
            for i in range(n):
                f.write(f"[program.p{i}]\n"
                        f"command = [{json.dumps(self.bin('pausechild'))}, {json.dumps(self.fifo.path)}, \"x\"]\n"
                        f"health = {{ tcp = \"127.0.0.1:{port}\", interval = \"100ms\" }}\n"
                        "stdin = \"null\"\n")
        hz = os.sysconf("SC_CLK_TCK")

        def times(pid):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]), int(fields[12])

        def one():
            # The listener accepts from a thread of this script: the
            # connections complete in the kernel either way.
            import threading
            stop_flag = []

            def accept():
                listener.settimeout(0.2)
                while not stop_flag:
                    try:
                        c, _ = listener.accept()
                        c.close()
                    except OSError:
                        pass
            t = threading.Thread(target=accept, daemon=True)
            t.start()
            self.fifo.drain()
            p = subprocess.Popen([self.brood, "run", "-q", "--socket", sock, "-f", cfg], cwd=d,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            try:
                self.fifo.wait(n, p, timeout=60)
                time.sleep(0.5)
                u0, s0 = times(p.pid)
                w0 = time.monotonic()
                time.sleep(secs)
                u1, s1 = times(p.pid)
                w = time.monotonic() - w0
                stop(p)
            finally:
                stop_flag.append(1)
                t.join()
                if p.poll() is None:
                    p.kill()
                    p.wait()
                kill_strays(self.fifo.path)
            return {"CPU": 100 * ((u1 - u0) + (s1 - s0)) / hz / w, "user CPU": 100 * (u1 - u0) / hz / w}

        b.subject("brood", one)
        return b

    # -- 6. 100 sleeping children: memory -------------------------------------

    def rss100(self):
        n = 100
        b = self.add(Bench("rss-100", "memory with 100 sleeping children", dict(children=n)))
        b.metric("RSS", "MiB", "lower", abs_target=("<=", 4.0),
                 why="mostly the binary's own pages: it grew from 2.8 to 4.6 MB with the readiness probes"
                     " (RssFile 3.5 -> 4.3 MiB); brood's heap with 100 children is about 0.5 MiB (RssAnon)")
        b.metric("PSS", "MiB", "lower")
        b.metric("helper procs", "count", "lower", abs_target=("==", 0))
        b.metric("threads", "count", "lower", abs_target=("==", 1))
        child = [self.bin("pausechild"), self.fifo.path]

        def one(cmd, cwd=None, settle=0.3):
            self.fifo.drain()
            p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL)
            try:
                self.fifo.wait(n, p, timeout=60)
                time.sleep(settle)
                tree = descendants(p.pid)
                helpers = [pid for pid, comm in tree if comm != "pausechild"]
                rss = sum(kib(proc_status(pid).get("VmRSS")) for pid in [p.pid, *helpers]) / 1024
                pss = sum(pss_kib(pid) for pid in [p.pid, *helpers]) / 1024
                threads = sum(int(proc_status(pid).get("Threads", "0")) for pid in [p.pid, *helpers])
                stop(p)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                kill_strays(self.fifo.path)
            return {"RSS": rss, "PSS": pss, "helper procs": len(helpers), "threads": threads}

        b.subject("brood", lambda: one(self.brood_cmd("-n", str(n), "--", *child)))
        if self.supervisord:
            d = os.path.join(self.tmp, "supervisord")
            os.makedirs(d, exist_ok=True)
            conf = os.path.join(d, "supervisord.conf")
            with open(conf, "w") as f:
                f.write(f"[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\n"
                        f"pidfile={d}/supervisord.pid\nchildlogdir={d}\n\n"
                        f"[program:p]\ncommand={' '.join(child)} x\nnumprocs={n}\n"
                        "process_name=%(program_name)s_%(process_num)03d\n"
                        "startsecs=0\nautorestart=false\n"
                        "stdout_logfile=NONE\nstderr_logfile=NONE\n")
            b.subject("supervisord", lambda: one([*self.supervisord, "-c", conf], cwd=d, settle=1.0))
        else:
            b.skip("supervisord", "not installed")
        if self.horust:
            d = os.path.join(self.tmp, "horust-rss")
            os.makedirs(os.path.join(d, "services"), exist_ok=True)
            for i in range(n):
                # Horust has no numprocs: one service file per child.
                with open(os.path.join(d, "services", f"p{i:03d}.toml"), "w") as f:
                    f.write(f"command = \"{' '.join(child)} x\"\n[restart]\nstrategy = \"never\"\n")
            # d=d: the honcho block below reuses the name.
            b.subject("Horust", lambda d=d: one([self.horust, "--uds-folder-path", d, "--services-path",
                                                os.path.join(d, "services")], cwd=d, settle=1.0))
        else:
            b.skip("Horust", "not installed (cargo install horust)")
        if self.honcho:
            d = os.path.join(self.tmp, "honcho-rss")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "Procfile"), "w") as f:
                f.write(f"p: exec {' '.join(child)} x\n")
            b.subject("honcho", lambda: one([*self.honcho, "start", "-c", f"p={n}", "-f",
                                             os.path.join(d, "Procfile")], cwd=d, settle=1.0))
        else:
            b.skip("honcho", "not installed")
        b.notes.append("RSS/PSS: sum over the supervisor and every helper process it runs"
                       " (its whole tree but the pause children); RSS counts shared pages once per"
                       " process, PSS splits them")
        return b

    # -- 7. exit -> reaped latency --------------------------------------------

    def latency(self):
        n, j, delay = self.p["lat_n"], self.p["lat_j"], self.p["lat_delay_us"]
        b = self.add(Bench("reap-latency", "child exit -> reaped",
                           dict(children=n, jobs=j, child_delay_us=delay)))
        b.metric("p50", "us", "lower")
        b.metric("p99", "us", "lower", ratio_target=1.1,
                 why="an exit that lands while brood waits in its vfork-style clone for the next child's exec"
                     " (clone p50 71 us, p99 377 us here: the new child waits for a CPU); tried: a signalfd"
                     " (kept), plain fork (p99 280-340 us, p90 worse, spawn rate 0.88x); see benches/README.md,"
                     " reaping")

        def stamps(path):
            out = {}
            with open(path) as f:
                for line in f:
                    pid, ts = line.split()
                    out[int(pid)] = float(ts)
            return out

        def summarise(exits, reaps):
            lat = sorted((reaps[pid] - t) * 1e6 for pid, t in exits.items() if pid in reaps)
            if len(lat) < n * 0.95:
                raise BenchError(f"only {len(lat)} of {n} exits matched a reap")
            return {"p50": percentile(lat, 50), "p99": percentile(lat, 99)}

        def brood_run():
            st, ev = os.path.join(self.tmp, "stamps-b"), os.path.join(self.tmp, "events-b")
            for f in (st, ev):
                if os.path.exists(f):
                    os.unlink(f)
            run_timed(self.brood_cmd("-n", str(n), "-j", str(j), "--events", ev, "--",
                                     self.bin("exitstamp"), str(delay), st))
            reaps = {}
            with open(ev) as f:
                for line in f:
                    e = json.loads(line)
                    if e.get("event") == "exit":
                        reaps[e["pid"]] = e["ts"]
            return summarise(stamps(st), reaps)

        def ref_run():
            st, rp = os.path.join(self.tmp, "stamps-c"), os.path.join(self.tmp, "reaps-c")
            if os.path.exists(st):
                os.unlink(st)
            run_timed([self.bin("reaploop"), "-n", str(n), "-j", str(j), "-o", rp,
                       self.bin("exitstamp"), str(delay), st])
            return summarise(stamps(st), stamps(rp))

        b.subject("brood", brood_run)
        b.subject("C reaploop", ref_run, reference=True)
        return b

    # -- 7b. crash -> running again ---------------------------------------------

    def restart_latency(self):
        """One program that crashes over and over (`crashstamp`: stamps its
        start, runs RUN_US, stamps its end, exits 1), each supervisor told to
        restart it at once: from one run's end (its `E` stamp, just before
        `_exit`) to the next run's start (its `S` stamp, first thing in
        main: exec'd and running). K restarts per round, p50/p90/max of
        them per round. supervisord restarts once a second (its loop's tick),
        so it gets fewer restarts per round (restart_peer_k)."""
        k, pk, run_us = self.p["restart_k"], self.p["restart_peer_k"], self.p["restart_run_us"]
        # The smallest settings each accepts: brood takes a backoff of 0s;
        # max_restarts (restarts in a row, none up for restart_window) at its
        # largest accepted value, so that the program never goes fatal.
        settings = {
            "brood": 'restart = "always", backoff = { initial = "0s", max = "0s" }, max_restarts = 1000000',
            "supervisord": "autorestart=true, startsecs=0, startretries=1000000",
            "Horust": 'strategy = "always", backoff = "0s", attempts = 0',
        }
        b = self.add(Bench("restart-latency", "a crashing program: exit -> next run alive",
                           dict(restarts=k, peer_restarts=pk, run_us=run_us, **settings)))
        b.metric("p50", "ms", "lower", abs_target=("<=", 5.0),
                 why="with every core busy, each wake-up waits for the scheduler's next tick (4 ms at"
                     " 250 Hz); see benches/README.md, restart latency")
        b.metric("p90", "ms", "lower")
        b.metric("max", "ms", "lower")
        b.metric("exit->spawn event p50", "ms", "lower")
        crash = self.bin("crashstamp")
        root = os.path.join(self.tmp, "restart")

        def read_stamps(path):
            """[(time, 'S' or 'E', pid)], whole lines only, in time order."""
            out = []
            try:
                with open(path) as f:
                    for line in f:
                        parts = line.split()
                        if line.endswith("\n") and len(parts) == 3:
                            out.append((float(parts[2]), parts[0], int(parts[1])))
            except FileNotFoundError:
                pass
            return sorted(out)

        def kill_runs(stamps):
            """SIGKILL the runs that outlived their supervisor: by the pids in
            the stamps file, each checked to be still this run's crashstamp."""
            for _t, kind, pid in read_stamps(stamps):
                if kind != "S":
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if stamps.encode() not in f.read():
                            continue
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

        def one(cmd, d, want):
            """Run the supervisor in d until want restarts are stamped, stop it;
            the latencies of the first want restarts."""
            stamps = os.path.join(d, "stamps")
            if os.path.exists(stamps):
                os.unlink(stamps)
            errpath = os.path.join(d, "stderr")
            with open(errpath, "wb") as err:
                p = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=err,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                deadline = time.monotonic() + 20 + 3 * want
                while True:
                    starts = sum(kind == "S" for _t, kind, _pid in read_stamps(stamps))
                    if starts > want:
                        break
                    if p.poll() is not None:
                        with open(errpath, "rb") as f:
                            tail = f.read()[-300:].decode(errors="replace")
                        raise BenchError(f"supervisor exited ({p.returncode}) after {starts} of {want + 1}"
                                         f" runs: {tail}")
                    if time.monotonic() > deadline:
                        raise BenchError(f"only {starts} of {want + 1} runs started in {20 + 3 * want}s")
                    time.sleep(0.02)
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    raise BenchError("did not exit within 15s of SIGTERM")
            finally:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    p.wait()
                kill_runs(stamps)
            runs = read_stamps(stamps)
            lat = []
            for prev, cur in zip(runs, runs[1:]):
                if cur[1] == "S":
                    if prev[1] != "E":
                        raise BenchError(f"run {cur[2]} started before run {prev[2]} ended")
                    lat.append((cur[0] - prev[0]) * 1e3)
            lat = sorted(lat[:want])
            if len(lat) < want:
                raise BenchError(f"only {len(lat)} of {want} restarts in the stamps")
            return {"p50": percentile(lat, 50), "p90": percentile(lat, 90), "max": lat[-1]}

        d = os.path.join(root, "brood")
        os.makedirs(d, exist_ok=True)
        cfg, sock, ev = (os.path.join(d, x) for x in ("brood.toml", "s.sock", "events"))
        with open(cfg, "w") as f:
            f.write("[program.crash]\n"
                    f"command = [{json.dumps(crash)}, {json.dumps(os.path.join(d, 'stamps'))}, \"{run_us}\"]\n"
                    "restart = \"always\"\n"
                    "backoff = { initial = \"0s\", max = \"0s\" }\n"
                    "max_restarts = 1000000\n"
                    "stdin = \"null\"\n")

        def brood_run():
            if os.path.exists(ev):
                os.unlink(ev)
            out = one([self.brood, "run", "-q", "--socket", sock, "--events", ev, "-f", cfg], d, k)
            # brood's own part: its exit event (after waitpid) to the next spawn event.
            exits, own = None, []
            with open(ev) as f:
                for line in f:
                    e = json.loads(line)
                    if e.get("event") == "exit":
                        exits = e["ts"]
                    elif e.get("event") == "spawn" and exits is not None:
                        own.append((e["ts"] - exits) * 1e3)
                        exits = None
            if own:
                out["exit->spawn event p50"] = percentile(sorted(own[:k]), 50)
            return out

        b.subject("brood", brood_run)
        if self.supervisord:
            sd = os.path.join(root, "supervisord")
            os.makedirs(sd, exist_ok=True)
            conf = os.path.join(sd, "supervisord.conf")
            with open(conf, "w") as f:
                f.write(f"[supervisord]\nnodaemon=true\nlogfile={sd}/supervisord.log\n"
                        f"pidfile={sd}/supervisord.pid\nchildlogdir={sd}\n\n"
                        f"[program:crash]\ncommand={crash} {os.path.join(sd, 'stamps')} {run_us}\n"
                        "startsecs=0\nstartretries=1000000\nautorestart=true\n"
                        "stdout_logfile=NONE\nstderr_logfile=NONE\n")
            b.subject("supervisord", lambda: one([*self.supervisord, "-c", conf], sd, pk))
        else:
            b.skip("supervisord", "not installed")
        if self.horust:
            hd = os.path.join(root, "horust")
            os.makedirs(os.path.join(hd, "services"), exist_ok=True)
            with open(os.path.join(hd, "services", "crash.toml"), "w") as f:
                f.write(f"command = \"{crash} {os.path.join(hd, 'stamps')} {run_us}\"\n"
                        "[restart]\nstrategy = \"always\"\nbackoff = \"0s\"\nattempts = 0\n")
            b.subject("Horust", lambda: one([self.horust, "--uds-folder-path", hd, "--services-path",
                                             os.path.join(hd, "services")], hd, k))
        else:
            b.skip("Horust", "not installed (cargo install horust)")
        b.skip("honcho", "no restarts: a crashing process stops honcho and all others")
        return b

    # -- 8. idle ---------------------------------------------------------------

    def idle(self):
        n, secs = 100, self.p["idle_s"]
        b = self.add(Bench("idle-100", f"idle for {secs:g}s with {n} sleeping children",
                           dict(children=n, seconds=secs)))
        b.metric("CPU ticks", "ticks", "lower", abs_target=("==", 0))
        b.metric("voluntary ctxsw", "count", "lower", abs_target=("==", 0))
        b.metric("involuntary ctxsw", "count", "lower")
        child = [self.bin("pausechild"), self.fifo.path]
        state = {}

        def measure(p):
            st = proc_status(p.pid)
            return (cpu_ticks(p.pid), int(st["voluntary_ctxt_switches"]), int(st["nonvoluntary_ctxt_switches"]))

        def both():
            # brood and the C loop idle side by side over the same window
            self.fifo.drain()
            procs = {}
            try:
                for name, cmd in (("brood", self.brood_cmd("-n", str(n), "--", *child)),
                                  ("C concloop", [self.bin("concloop"), "-n", str(n), *child])):
                    procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                   stdin=subprocess.DEVNULL)
                    self.fifo.wait(n, procs[name], timeout=60)
                time.sleep(0.5)
                before = {k: measure(p) for k, p in procs.items()}
                time.sleep(secs)
                after = {k: measure(p) for k, p in procs.items()}
                for p in procs.values():
                    stop(p)
            finally:
                for p in procs.values():
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                kill_strays(self.fifo.path)
            for k in procs:
                d = [a - b_ for a, b_ in zip(after[k], before[k])]
                state[k] = {"CPU ticks": d[0], "voluntary ctxsw": d[1], "involuntary ctxsw": d[2]}
            return state["brood"]

        def ref():
            if "C concloop" not in state:
                raise BenchError("measured together with brood, which failed")
            return state.pop("C concloop")

        b.subject("brood", both)
        b.subject("C concloop", ref, reference=True)
        return b

    # -------------------------------------------------------------------------

    def run(self, only=None):
        p = self.p
        plan = [
            lambda: self.spawn(1),
            lambda: self.spawn(2),
            lambda: self.spawn_static(1),
            lambda: self.spawn_static(2),
            lambda: self.output("out-1x64k", "1 child, 64 KiB writes", 1, p["out_bytes"], 65536, peers=True),
            lambda: self.output(f"out-{p['out_multi_k']}x64k", f"{p['out_multi_k']} children at once, 64 KiB writes",
                                p["out_multi_k"], p["out_multi_bytes"], 65536),
            lambda: self.output("out-line", "1 child, one 80-byte line per write", 1, p["out_line_bytes"], 80),
            lambda: self.output("out-byte", "1 child, one byte per write", 1, p["out_byte_bytes"], 1),
            self.output_run,
            self.output_file,
            self.alive,
            lambda: self.run_many(p["run_many"][0], False),
            lambda: self.run_many(p["run_many"][1], True),
            self.handoff,
            self.health100,
            self.rss100,
            self.latency,
            self.restart_latency,
            self.idle,
        ]
        for make in plan:
            b = make()
            if only and not any(o in b.name for o in only):
                self.benches.pop()
                continue
            rounds = {"alive": p["alive_rounds"], "run-": p["alive_rounds"], "rss-1": p["rss_rounds"], "idle": 1}
            r = next((v for k, v in rounds.items() if b.name.startswith(k)), p["rounds"])
            self.log(f"{b.name}: {b.title} {json.dumps(b.params)}")
            t0 = time.monotonic()
            b.run(r, self.log)
            self.log(f"  ({time.monotonic() - t0:.1f}s)")
        shutil.rmtree(self.tmp, ignore_errors=True)


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_vals) - 1, int(round(q / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def machine_info(brood):
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return dict(cpus=os.cpu_count(), cpu=cpu, kernel=platform.release(),
                brood=out([brood, "--version"]), commit=out(["git", "rev-parse", "--short", "HEAD"]),
                date=time.strftime("%Y-%m-%d %H:%M:%S"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["full", "quick"], default="quick")
    ap.add_argument("--check", action="store_true",
                    help="one round at quick sizes; exit 1 unless every benchmark produced numbers"
                         " (never judges a timing)")
    ap.add_argument("--bin", default=os.path.join(OUT_DIR, "bin"), help="the built reference programs")
    ap.add_argument("--brood", default=os.path.join(ROOT, "target", "release", "brood"))
    ap.add_argument("--no-install", action="store_true", help="do not try to install missing peers")
    ap.add_argument("--only", action="append", help="run only benchmarks whose name contains this")
    args = ap.parse_args()
    mode = "check" if args.check else args.mode

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    for exe in [args.brood] + [os.path.join(args.bin, x) for x in
                               ("forkloop", "prefixer", "linegen", "pausechild", "concloop", "reaploop", "exitstamp",
                                "crashstamp", "nop")]:
        if not os.access(exe, os.X_OK):
            sys.exit(f"missing {exe}: run through make (make bench-quick)")
    if not args.no_install and not args.check:
        install_peers(log)

    t0 = time.monotonic()
    suite = Suite(mode, args.check, args.bin, os.path.abspath(args.brood), log)
    info = machine_info(args.brood)
    log(f"mode {mode}: {json.dumps(info)}")
    suite.run(args.only)
    elapsed = time.monotonic() - t0

    rows = [r for b in suite.benches for r in b.rows()]
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"\nbrood benchmarks, mode {mode}, {info['cpus']} CPUs, {info['kernel']}, {info['brood']}"
          f" ({info['commit']}), {elapsed:.0f}s")
    print_table(rows, sys.stdout)
    for b in suite.benches:
        for note in b.notes:
            print(f"note: {b.name}: {note}")
    missed = [r for r in rows if r["status"] == "MISSED"]
    print(f"\ntargets: {sum(r['status'] == 'ok' for r in rows)} met, {len(missed)} MISSED"
          + "".join(f"\n  MISSED {r['bench']} {r['subject']} {r['metric']}: {r['target']}"
                    + (f"\n    why: {r['why']}" if r.get("why") else "") for r in missed))

    base = os.path.join(OUT_DIR, f"results-{mode}")
    with open(base + ".json", "w") as f:
        json.dump(dict(mode=mode, machine=info, elapsed_s=elapsed,
                       benchmarks=[dict(name=b.name, title=b.title, params=b.params, reference=b.reference,
                                        samples=b.samples, errors=b.errors, skipped=b.skipped, notes=b.notes)
                                   for b in suite.benches],
                       rows=rows), f, indent=1)
    cols = ["bench", "subject", "metric", "unit", "n", "median", "min", "max", "ratio", "target", "status"]
    with open(base + ".tsv", "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            f.write("\t".join("" if r[c] is None else str(r[c]) for c in cols) + "\n")
    print(f"results: {os.path.relpath(base, ROOT)}.json, .tsv")

    if args.check:
        broken = [b.name for b in suite.benches if not b.produced_numbers()]
        if broken:
            print(f"bench-check: FAILED, no numbers from: {', '.join(broken)}")
            sys.exit(1)
        print(f"bench-check: ok, {len(suite.benches)} benchmarks produced numbers in {elapsed:.0f}s")


if __name__ == "__main__":
    main()
