"""Memory benchmark: the resident memory of ``prescreen serve`` under decompression bombs and large
ultrasound uploads to ``/v1/screen``.

Starts the real product (``prescreen serve``: the CLI, BentoML's arbiter ``circusd`` and its
worker, which screens) with a fresh ``PRESCREEN_HOME`` on free HTTP and DICOM ports, and samples
the resident set size (RSS) of every process of its tree every ``--interval`` seconds in a
background thread. Besides the samples, the kernel's own high-water mark of each process
(``VmHWM`` in ``/proc/PID/status``) is reset at the start of each phase (``clear_refs`` 5) and read
at its end, so that a spike shorter than the sampling interval is not missed. Phases:

a. warm-up: one ``/v1/screen`` of ``US1_UNCR.dcm`` (models loaded, first inference);
b. bombs: each hostile file (``/work/shared/acceptance/hostile``: two JPEG 2000 DICOMs and a PNG
   declaring huge images) sent by ``--concurrency`` concurrent requests, file after file; each must
   get 413 (the PNG with form field ``task=breast-us``);
c. large ultrasound: the ``--concurrency`` largest US DICOMs of ``/work/shared/data/dicom`` (by
   decoded working size, one per distinct image geometry), sent at once, ``--us-rounds`` times;
d. idle: the RSS after ``--idle`` seconds without requests (does memory come back down?).

Before each phase the RSS is let settle (tree total within 2 MiB over 1 s). Per phase: RSS before,
peak during, peak − before and RSS at the end, in MiB (2^20 bytes), for the worker and the whole
tree. A child of the worker still running the worker's program (a ``vfork`` before its ``exec``,
e.g. ``ctypes.util.find_library`` starting ``ldconfig``) reports the worker's own pages as its RSS;
such samples are left out of the sums and counted in the notes. The server is stopped with
SIGTERM to the CLI; every process seen in its tree must be gone.

Usage: ``python benchmarks/bench_memory.py [--concurrency 4] [--us-rounds 3] [--interval 0.05]
[--idle 5] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pydicom
from common import free_port, lab_env, machine_line

DICOM_DIR = Path("/work/shared/data/dicom")
HOSTILE_DIR = Path("/work/shared/acceptance/hostile")
WARMUP = DICOM_DIR / "US1_UNCR.dcm"
BOMBS = {  # file -> form fields
    "j2k_bomb_10000x10000_16bit.dcm": {},
    "j2k_bomb_7000x7000x2_rgb16.dcm": {},
    "png-10000x10000-1bit.png": {"task": "breast-us"},
}
MIB = 1 << 20
GOAL_BYTES = 10**9  # "no single request raises the service's resident memory by more than 1 GB"
GOAL_BOMB_SECONDS = 1.0
WORKER_MARK = "_bentoml_impl.worker"


# -- the process tree and its memory -------------------------------------------------------------
def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def is_worker(proc: psutil.Process) -> bool:
    try:
        return any(WORKER_MARK in part for part in proc.cmdline())
    except psutil.Error:
        return False


def is_unexeced_fork(proc: psutil.Process) -> bool:
    """A child still running its parent's program (a fork, or a vfork before ``exec``)."""
    parent = proc.parent()
    return parent is not None and proc.cmdline() == parent.cmdline() and proc.exe() == parent.exe()


def hwm_bytes(pid: int) -> int:
    """The process's peak RSS since start or since its last ``clear_refs`` 5 (kernel-kept)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Sample:
    t: float
    worker: int
    total: int


@dataclass
class Sampler:
    """Samples the RSS of the server's tree in a background thread; remembers every pid seen."""

    root: int
    interval: float
    samples: list[Sample] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)
    workers: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    forks: set[int] = field(default_factory=set)  # fork children caught before their exec
    fork_max: int = 0
    base: set[int] = field(default_factory=set)  # the tree when sampling started
    # the known tree, refreshed every few samples (listing children reads all of /proc)
    procs: list[psutil.Process] = field(default_factory=list)

    def refresh(self) -> None:
        try:
            procs = tree(self.root)
        except psutil.Error:
            return
        for p in procs:
            if p.pid not in self.seen:
                try:
                    self.seen[p.pid] = " ".join(p.cmdline())[:120]
                except psutil.Error:
                    self.seen[p.pid] = "?"
                if is_worker(p) and p.ppid() not in self.workers:  # not a fork of the worker
                    self.workers.add(p.pid)
        self.procs = procs

    def start(self) -> None:
        self.refresh()
        self.base = {p.pid for p in self.procs}
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            if n % 10 == 0:
                self.refresh()
            n += 1
            worker = total = 0
            for p in self.procs:
                try:
                    rss = p.memory_info().rss
                    if p.pid not in self.workers and p.pid != self.root and is_unexeced_fork(p):
                        # a (v)fork child before its exec: its RSS is its parent's pages, not new memory
                        self.forks.add(p.pid)
                        self.fork_max = max(self.fork_max, rss)
                        continue
                except psutil.Error:
                    continue
                total += rss
                if p.pid in self.workers:
                    worker += rss
            with self.lock:
                self.samples.append(Sample(time.monotonic(), worker, total))
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def between(self, t0: float, t1: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if t0 <= s.t <= t1]

    def latest(self) -> Sample:
        with self.lock:
            return self.samples[-1]

    def settle(self, window: float = 1.0, tolerance: int = 2 * MIB, limit: float = 8.0) -> tuple[Sample, bool]:
        """Wait until the tree total stays within ``tolerance`` over ``window`` s; the median sample."""
        start = time.monotonic()
        time.sleep(window)
        while True:
            now = time.monotonic()
            recent = self.between(now - window, now)
            totals = [s.total for s in recent]
            settled = len(recent) >= 3 and max(totals) - min(totals) <= tolerance
            if settled or now - start > limit:
                mid = sorted(recent, key=lambda s: s.total)[len(recent) // 2]
                return mid, settled
            time.sleep(self.interval)


# -- the server ----------------------------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path


def start(home: Path, log: Path, timeout: float = 180) -> Server:
    http_port, dicom_port = free_port(), free_port()
    env = lab_env(
        {
            **os.environ,
            "PRESCREEN_HOME": str(home),
            "PRESCREEN_DICOM_PORT": str(dicom_port),
            "BENTOML_DO_NOT_TRACK": "true",
        }
    )
    prescreen = Path(sys.executable).with_name("prescreen")
    cmd = [str(prescreen), "serve", "--host", "127.0.0.1", "--port", str(http_port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{http_port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prescreen serve exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{server.base}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prescreen serve not ready in {timeout:.0f} s")


def kill_pids(pids: list[int]) -> list[int]:
    """SIGKILL those of ``pids`` still alive (by pid, each checked first); the ones killed."""
    killed = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                killed.append(pid)
        except psutil.Error:
            pass
    return killed


def stop(server: Server, seen: list[int], graceful: bool) -> tuple[float, int | None, list[int]]:
    """SIGTERM to the CLI (or SIGKILL to the tree); seconds to exit, its exit code, pids left over."""
    known = list(dict.fromkeys([*seen, *(p.pid for p in _tree_or_empty(server.proc.pid))]))
    t0 = time.monotonic()
    code: int | None = None
    if graceful and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.monotonic() - t0
    if code is None:  # error path, or SIGTERM was not enough: deepest first, so that each parent reaps
        kill_pids(known[::-1])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    left = known
    while time.monotonic() < deadline:
        left = [pid for pid in known if _alive(pid)]
        if not left:
            break
        time.sleep(0.2)
    return seconds, code, kill_pids(left)


def _tree_or_empty(pid: int) -> list[psutil.Process]:
    try:
        return tree(pid)
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- requests ------------------------------------------------------------------------------------
@dataclass
class Answer:
    name: str
    status: int
    seconds: float
    detail: str


def post_at_once(base: str, uploads: list[tuple[str, bytes, dict[str, str]]]) -> list[Answer]:
    """POST each upload to /v1/screen from its own thread and client, all released together."""
    barrier = threading.Barrier(len(uploads))
    answers: list[Answer | None] = [None] * len(uploads)

    def one(i: int) -> None:
        name, data, form = uploads[i]
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            t = time.perf_counter()
            try:
                r = client.post(f"{base}/v1/screen", files=[("file", (name, data))], data=form)
                answers[i] = Answer(name, r.status_code, time.perf_counter() - t, r.text[:200])
            except httpx.HTTPError as exc:
                answers[i] = Answer(name, 0, time.perf_counter() - t, repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(uploads))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return [a for a in answers if a is not None]


def largest_us(n: int) -> list[tuple[Path, str, int]]:
    """The ``n`` US DICOMs with the largest decoded working size, one per geometry: (path, shape, bytes)."""
    best: dict[tuple[int, ...], tuple[Path, str, int]] = {}
    for path in sorted(DICOM_DIR.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.get("Modality") != "US":
            continue
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames, spp, bits = int(ds.get("NumberOfFrames", 1) or 1), int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        key = (rows, cols, frames, spp, bits)
        work = rows * cols * frames * spp * 4  # as the service counts it: 32-bit floats
        shape = f"{rows}×{cols}×{frames} fr×{spp} spp, {bits}-bit, {ds.file_meta.TransferSyntaxUID.name}"
        if key not in best or path.stat().st_size > best[key][0].stat().st_size:
            best[key] = (path, shape, work)
    return sorted(best.values(), key=lambda b: -b[2])[:n]


# -- phases --------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    before_worker: int = 0
    before_total: int = 0
    settled: bool = True
    peak_worker: int = 0
    peak_total: int = 0
    hwm_worker: int | None = None
    hwm_total: int | None = None
    end_worker: int = 0
    end_total: int = 0
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def delta_worker(self) -> int:
        return max(self.peak_worker, self.hwm_worker or 0) - self.before_worker

    @property
    def delta_total(self) -> int:
        return self.peak_total - self.before_total


def run_phase(sampler: Sampler, name: str, action: Callable[[], list[Answer]], settle: bool = True) -> Phase:
    phase = Phase(name)
    if settle:
        base, phase.settled = sampler.settle()
    else:
        base = sampler.latest()
    phase.before_worker, phase.before_total = base.worker, base.total
    pids = [p.pid for p in sampler.procs]
    reset = {pid: reset_hwm(pid) for pid in pids}
    t0 = time.monotonic()
    phase.answers = action()
    t1 = time.monotonic()
    phase.seconds = t1 - t0
    time.sleep(max(0.25, 3 * sampler.interval))  # let the sampler see the end
    window = sampler.between(t0, time.monotonic())
    phase.peak_worker = max(s.worker for s in window)
    phase.peak_total = max(s.total for s in window)
    if all(reset.values()):
        hwms = {}
        for pid in pids:
            try:
                hwms[pid] = hwm_bytes(pid)
            except (OSError, RuntimeError):
                hwms[pid] = 0
        phase.hwm_worker = sum(v for pid, v in hwms.items() if pid in sampler.workers)
        phase.hwm_total = sum(hwms.values())
    end = sampler.latest()
    phase.end_worker, phase.end_total = end.worker, end.total
    return phase


def idle(seconds: float) -> list[Answer]:
    time.sleep(seconds)
    return []


def bombs(base: str, concurrency: int) -> list[Answer]:
    answers = []
    for name, form in BOMBS.items():
        data = (HOSTILE_DIR / name).read_bytes()
        answers += post_at_once(base, [(name, data, form)] * concurrency)
    return answers


def large(base: str, files: list[Path], rounds: int) -> list[Answer]:
    uploads = [(p.name, p.read_bytes(), {}) for p in files]
    answers = []
    for _ in range(rounds):
        answers += post_at_once(base, uploads)
    return answers


# -- report --------------------------------------------------------------------------------------
def mib(v: int | None) -> str:
    return "—" if v is None else f"{v / MIB:.0f}"


def codes(answers: list[Answer]) -> str:
    return ", ".join(f"{n}× {code}" for code, n in sorted(Counter(a.status for a in answers).items())) or "—"


def report(
    phases: list[Phase], us: list[tuple[Path, str, int]], args: argparse.Namespace, extra: dict[str, str]
) -> str:
    by = {p.name[0]: p for p in phases}
    memory = [
        "| phase | worker before | worker peak (samples) | worker peak (VmHWM) | worker Δ | worker end "
        "| tree before | tree peak (samples) | tree ΣVmHWM | tree Δ | tree end |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        memory.append(
            f"| {p.name}{'' if p.settled else ' (not settled)'} | {mib(p.before_worker)} | {mib(p.peak_worker)} "
            f"| {mib(p.hwm_worker)} | {p.delta_worker / MIB:+.0f} | {mib(p.end_worker)} | {mib(p.before_total)} "
            f"| {mib(p.peak_total)} | {mib(p.hwm_total)} | {p.delta_total / MIB:+.0f} | {mib(p.end_total)} |"
        )
    requests = [
        "| phase | requests | status codes | p50 latency s | max latency s | phase wall s |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for p in phases:
        if not p.answers:
            continue
        lat = [a.seconds for a in p.answers]
        requests.append(
            f"| {p.name} | {len(p.answers)} | {codes(p.answers)} | {statistics.median(lat):.3f} | {max(lat):.3f} "
            f"| {p.seconds:.2f} |"
        )

    # the reading
    bomb, big, idle, warm = by["b"], by["c"], by["d"], by["a"]
    goal_mib = GOAL_BYTES / MIB
    worst = max(bomb.delta_worker, bomb.delta_total, big.delta_worker, big.delta_total)
    mem_met = worst <= GOAL_BYTES
    bomb_413 = all(a.status == 413 for a in bomb.answers)
    bomb_max = max(a.seconds for a in bomb.answers)
    bomb_met = bomb_413 and bomb_max < GOAL_BOMB_SECONDS
    large_ok = all(a.status == 200 for a in big.answers)
    back = idle.end_total - warm.end_total
    reading = (
        f"**Reading.** Goal 1 (no single request raises resident memory by more than 1 GB = {goal_mib:.0f} MiB): "
        + (
            f"**met** by these figures — the largest rise in any phase is {worst / MIB:+.0f} MiB (worker or tree), "
            f"and a phase's rise bounds that of each of its {args.concurrency} concurrent requests. "
            if mem_met
            else f"**not met** — a phase rose by {worst / MIB:+.0f} MiB ({args.concurrency} concurrent requests "
            "together; one request alone may rise less). "
        )
        + "Goal 2 (the bombs get 413 in < 1 s): "
        + (
            f"**met** — all {len(bomb.answers)} bomb requests got 413, the slowest in {bomb_max:.3f} s "
            f"({args.concurrency} at once per file, so that includes waiting for one of the screening slots). "
            if bomb_met
            else f"**not met** — status codes {codes(bomb.answers)}, slowest {bomb_max:.3f} s. "
        )
        + (
            "The large ultrasound studies were all screened (200). "
            if large_ok
            else f"The large ultrasound studies got {codes(big.answers)}. "
        )
        + f"After {args.idle:g} s idle the tree holds {idle.end_total / MIB:.0f} MiB, {back / MIB:+.0f} MiB against "
        f"the end of the warm-up (worker {(idle.end_worker - warm.end_worker) / MIB:+.0f} MiB). "
        "What the figures could hide: this is one run on a shared 2-core machine (other processes' load changes "
        "timing, not RSS, but a slower run can overlap requests differently); the samples are "
        f"{args.interval * 1000:.0f} ms apart, so a spike shorter than that shows only in the VmHWM column "
        "(worker; ΣVmHWM adds per-process peaks that need not coincide, an upper bound); RSS counts pages "
        "shared between processes once per process (the tree total overstates), leaves out swapped-out pages, "
        "and keeps counting memory a process freed but its allocator did not return (the *end* figures); the "
        "inputs are the few shipped samples (the largest US is ~1 MB decoded), "
        "not real multi-hundred-frame cine loops, so the large-study figure says little about a 512-frame study."
    )
    us_list = "; ".join(f"`{p.name}` ({shape}, {work / MIB:.1f} MiB working)" for p, shape, work in us)
    notes = [
        "- Method: `prescreen serve` (fresh `PRESCREEN_HOME` in a temp dir, free HTTP and DICOM ports, default "
        "settings: `PRESCREEN_MAX_CONCURRENT_SCREENS=2`, `PRESCREEN_MAX_DECODED_BYTES=256 MiB`) started as a "
        "process; a thread sums `psutil` RSS over `Process(pid).children(recursive=True)` every "
        f"{args.interval * 1000:.0f} ms. Tree (RSS after the last phase): {extra['tree']}. "
        f"Worker = the `{WORKER_MARK}` process (it screens).",
        "- Per phase: *before* = median sample once the tree total stayed within 2 MiB for 1 s; *peak* = largest "
        "sample from the first request to 0.25 s after the last answer; *VmHWM* = the kernel's peak RSS of each "
        "process, reset (`/proc/PID/clear_refs` 5) when the phase starts; *Δ* = peak − before (worker: the larger "
        "of sampled and VmHWM peak); *end* = the last sample of the phase. MiB = 2^20 bytes.",
        f"- (a) one `/v1/screen` of `{WARMUP.name}`. (b) each of {', '.join(f'`{n}`' for n in BOMBS)} by "
        f"{args.concurrency} concurrent requests (own client each, released by a barrier), file after file; the PNG "
        "with `task=breast-us`. (c) the "
        f"{len(us)} largest US DICOMs by decoded working size (rows × columns × frames × samples × 4 B, one per "
        f"geometry): {us_list}; sent at once, {args.us_rounds} rounds. (d) no requests for {args.idle:g} s.",
        f"- Shutdown: SIGTERM to the CLI; {extra['shutdown']}.",
        f"- Whole benchmark: {extra['wall']}.",
    ]
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    text = [
        f"## Memory under hostile and large uploads — {stamp}",
        "",
        f"{machine_line()} `prescreen serve` (BentoML + DICOM listener) as a real process; RSS in MiB.",
        "",
        *memory,
        "",
        *requests,
        "",
        *notes,
        "",
        reading,
        "",
    ]
    return "\n".join(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent requests per bomb file / large studies")
    ap.add_argument("--us-rounds", type=int, default=3, help="rounds of the concurrent large US studies")
    ap.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval, seconds")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds idle before the last reading")
    ap.add_argument("--out", type=Path, default=None, help="append a Markdown section to this file")
    args = ap.parse_args()

    started = time.monotonic()
    us = largest_us(args.concurrency)
    if len(us) < args.concurrency:
        raise SystemExit(f"only {len(us)} distinct US DICOMs in {DICOM_DIR}")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as name:
        tmp = Path(name)
        home = tmp / "home"
        home.mkdir()
        server = start(home, tmp / "serve.log")
        sampler = Sampler(server.proc.pid, args.interval)
        ok = False
        try:
            startup = time.monotonic() - started
            sampler.start()
            if not sampler.workers:
                raise RuntimeError(f"no {WORKER_MARK} process in the tree: {sampler.seen}")
            phases = [
                run_phase(
                    sampler, "a. warm-up", lambda: post_at_once(server.base, [(WARMUP.name, WARMUP.read_bytes(), {})])
                ),
                run_phase(sampler, "b. bombs", lambda: bombs(server.base, args.concurrency)),
                run_phase(sampler, "c. large US", lambda: large(server.base, [p for p, _, _ in us], args.us_rounds)),
            ]
            phases.append(run_phase(sampler, f"d. idle {args.idle:g} s", lambda: idle(args.idle), settle=False))
            tree_desc = describe_tree(sampler)
            ok = True
        except BaseException:
            print(f"benchmark failed; server log tail:\n{_tail(server.log)}", file=sys.stderr)
            raise
        finally:
            sampler.stop()
            seconds, code, leftover = stop(server, list(sampler.seen), graceful=ok)
        if leftover:
            raise SystemExit(f"processes left after stopping the server, killed: {leftover}")
        if code != 0:
            print(f"note: prescreen serve exited with {code}; log tail:\n{_tail(server.log)}", file=sys.stderr)
    shutdown = f"exited with {code} in {seconds:.1f} s, no process of its tree left"
    extra = {
        "tree": tree_desc,
        "shutdown": shutdown,
        "wall": f"{time.monotonic() - started:.0f} s (server ready after {startup:.0f} s)",
    }
    text = report(phases, us, args, extra)
    print(text)
    bad = [a for p in phases for a in p.answers if a.status not in (200, 413)]
    for a in bad[:5]:
        print(f"unexpected answer: {a.name} {a.status}: {a.detail}", file=sys.stderr)
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n" + text)


def describe_tree(sampler: Sampler) -> str:
    def short(pid: int) -> str:
        cmd = sampler.seen[pid].split()
        return cmd[0].rsplit("/", 1)[-1] if cmd else "?"

    def rss(pid: int) -> str:
        try:
            return f" {psutil.Process(pid).memory_info().rss / MIB:.0f} MiB"
        except psutil.Error:
            return " gone"

    base = ", ".join(
        f"`{short(pid)}`{' (worker)' if pid in sampler.workers else ''}{rss(pid)}"
        for pid in sampler.seen
        if pid in sampler.base
    )
    others = Counter(short(pid) for pid in sampler.seen if pid not in sampler.base and pid not in sampler.forks)
    text = base
    if others:
        text += "; short-lived children seen: " + ", ".join(f"{n}× `{name}`" for name, n in others.items())
    if sampler.forks:
        text += (
            f"; {len(sampler.forks)} fork(s) of the worker caught before their `exec` (RSS up to "
            f"{sampler.fork_max / MIB:.0f} MiB: the worker's own pages, shared) were left out of the sums"
        )
    return text


def _tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


if __name__ == "__main__":
    main()
