"""``ainative monitor``: a live terminal view of the AI processes the daemon manages.

People who run inference on shared machines keep nvitop or htop open; this is the same
for what ainative does: which AI processes run, what class each got and why, whether
their latency is protected now (run-queue waits, inference p99 from spans), and what the
GPU and the pinned pools are doing. It only reads: every figure comes from the daemon's
``status``, ``latency`` and ``explain`` ops (open to any local user, who sees what
``ainative status`` shows them), plus /proc for a process's threads.

Two front ends share one data path (``fetch`` -> ``Frame`` -> row and panel text):

- the textual app (``MonitorApp``): refreshed every --interval in a worker thread, so a
  slow or vanished daemon never blocks the keys; it says so in a banner instead;
- ``--once``: one frame as plain text on stdout, for scripts and bug reports.

Nothing here picks colours or forces a terminal: textual honours NO_COLOR, and the
``--once`` text has no styles at all. The layout fits 80x24.
"""

from __future__ import annotations

import io
import math
import os
import pwd
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import click
from rich.console import Console
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Static

from ainative.cli.views import render_explain
from ainative.ipc.client import Client, DaemonError, default_socket_path
from ainative.telemetry.report import Bucket, histogram_lines

# Classes whose latency the merged histogram shows: the built-in serving class.
SERVING_CLASSES = frozenset({"inference"})
START_HINT = "start one with `sudo ainative daemon` (it runs in the foreground)"


@dataclass
class Frame:
    """One refresh: the daemon's replies, or why there are none."""

    status: dict[str, Any] | None = None
    latency: dict[int, dict[str, Any]] = field(default_factory=dict)
    latency_why: str = ""  # why there is no latency ("" when there is)
    error: str | None = None  # the daemon did not answer
    at: float = field(default_factory=time.time)


def fetch(client: Client) -> Frame:
    """status and latency from the daemon; never raises (an error is in the frame)."""
    try:
        st = client.status()
    except DaemonError as e:
        return Frame(error=str(e))
    frame = Frame(status=st)
    try:
        lat = client.latency()
        if lat.get("available"):
            frame.latency = {t["pid"]: t for t in lat.get("tasks", [])}
        else:
            frame.latency_why = str(lat.get("why", "not available"))
    except DaemonError as e:  # an older daemon: no latency op
        frame.latency_why = str(e)
    return frame


_users: dict[int, str] = {}


def user_name(uid: int | None) -> str:
    if uid is None:
        return "?"
    if uid not in _users:
        try:
            _users[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _users[uid] = str(uid)
    return _users[uid]


@dataclass(frozen=True)
class Row:
    """One AI task as the table shows it."""

    pid: int
    name: str
    user: str
    cls: str
    state: str  # "active" or "idle"
    cpu: float | None  # percent of one CPU
    rq_p99_s: float | None
    infer_p99_s: float | None
    knobs: str

    def cells(self) -> tuple[str, ...]:
        return (str(self.pid), self.name[:15], self.user[:8], self.cls, self.state,
                "-" if self.cpu is None else f"{self.cpu:.0f}",
                _dur(self.rq_p99_s), _dur(self.infer_p99_s), self.knobs)


COLUMNS = ("pid", "name", "user", "class", "state", "cpu%", "rq p99", "inf p99", "knobs")
# Sort keys per column; numbers sort largest first, the rest ascending.
_SORTS: tuple[Callable[[Row], Any], ...] = (
    lambda r: r.pid, lambda r: r.name, lambda r: r.user, lambda r: r.cls,
    lambda r: r.state, lambda r: -(r.cpu or 0.0), lambda r: -(r.rq_p99_s or 0.0),
    lambda r: -(r.infer_p99_s or 0.0), lambda r: r.knobs)


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1.0:
        return f"{s * 1e3:.1f}ms"
    return f"{s:.2f}s"


def rows(frame: Frame) -> list[Row]:
    """Every task of a frame, in the daemon's order (by pid)."""
    out: list[Row] = []
    for t in (frame.status or {}).get("tasks", []):
        act = t.get("activity") or {}
        lat = frame.latency.get(t["pid"], {})
        knobs = t.get("applied") or t.get("would_apply") or {}
        step = t.get("escalation")
        shown = ",".join(f"{k}={v}" for k, v in knobs.items()) or "-"
        if step:
            shown = f"step {step} {shown}"
        out.append(Row(
            pid=t["pid"], name=t["name"], user=user_name(t.get("uid")), cls=t["class"],
            state="active" if t.get("active") else "idle", cpu=act.get("cpu_percent"),
            rq_p99_s=(lat.get("runqueue") or {}).get("p99_s"),
            infer_p99_s=(lat.get("inference") or {}).get("p99_s"), knobs=shown))
    return out


def select(all_rows: Iterable[Row], sort: int, cls: str | None, user: str | None) -> list[Row]:
    """The rows a view shows: filtered by class and user, sorted by column ``sort``."""
    kept = [r for r in all_rows
            if (cls is None or r.cls == cls) and (user is None or r.user == user)]
    return sorted(kept, key=lambda r: (_SORTS[sort](r), r.pid))


# --- panels as text ---

def merged_log2(dists: Iterable[dict[str, Any]]) -> list[tuple[int | None, int]]:
    acc: dict[int | None, int] = {}
    for d in dists:
        for upper, n in d.get("log2_us") or []:
            acc[upper] = acc.get(upper, 0) + n
    return sorted(acc.items(), key=lambda kv: math.inf if kv[0] is None else kv[0])


def histogram_text(log2: list[tuple[int | None, int]], unit: str = "usecs",
                   stars: int | None = None) -> list[str]:
    """bcc-style log2 histogram of re-binned buckets (upper bound -> count); the daemon's
    buckets are fixed, so each row is the power of two at or above a bucket's bound.
    ``stars``: a narrow layout with this many columns of stars (for a side panel); None:
    bcc's own layout (report.histogram_lines)."""
    finite = [(u, n) for u, n in log2 if u is not None]
    over = sum(n for u, n in log2 if u is None)
    if not finite and not over:
        return ["  (no samples)"]
    buckets: list[Bucket] = []
    if finite:
        lo, hi = finite[0][0], finite[-1][0]
        counts = dict(finite)
        u = lo
        while u <= hi:
            buckets.append(Bucket(u // 2 if u > 1 else 0, u - 1 if u > 1 else 1,
                                  counts.get(u, 0)))
            u *= 2
    if stars is None:
        lines = histogram_lines(tuple(buckets), unit) if buckets else []
    else:
        peak = max((b.count for b in buckets), default=0) or 1
        lines = [f"{unit:>17s} : count  distribution"]
        lines += [f"{b.low_us:>7d} -> {b.high_us:<7d}: {b.count:<6d}|"
                  f"{'*' * (stars * b.count // peak):<{stars}s}|" for b in buckets]
    if over:
        top = buckets[-1].high_us if buckets else 0
        lines.append(f"  above the last bucket (> {top} us): {over}")
    return lines


def latency_lines(frame: Frame, pid: int | None, rows_by_pid: dict[int, Row],
                  stars: int | None = None) -> list[str]:
    """The histogram panel: the selected process's inference latency (or its run-queue
    waits when it sent no spans), or all serving processes' spans merged."""
    if frame.latency_why:
        return [f"latency: none ({frame.latency_why})"]
    if pid is not None and pid in frame.latency:
        lat = frame.latency[pid]
        row = rows_by_pid.get(pid)
        name = f"{pid} {row.name}" if row else str(pid)
        inf, rq = lat.get("inference") or {}, lat.get("runqueue") or {}
        if inf.get("count"):
            return [f"inference latency of {name} (n={inf['count']}, p99 "
                    f"{_dur(inf.get('p99_s'))}):", *histogram_text(inf["log2_us"], stars=stars)]
        if rq.get("count"):
            return [f"run-queue wait of {name} (n={rq['count']}, p99 "
                    f"{_dur(rq.get('p99_s'))}):", *histogram_text(rq["log2_us"], stars=stars)]
        ss = lat.get("schedstat_wait_s")
        extra = f"; run-queue wait {ss:.3f} s summed (schedstat)" if ss else ""
        return [f"{name}: no spans yet{extra}"]
    serving = [p for p, r in rows_by_pid.items() if r.cls in SERVING_CLASSES]
    dists = [frame.latency[p]["inference"] for p in serving if p in frame.latency]
    n = sum(d.get("count", 0) for d in dists)
    return [f"inference latency, all serving processes ({len(serving)}, n={n}):",
            *histogram_text(merged_log2(dists), stars=stars)]


def gpu_lines(st: dict[str, Any]) -> list[str]:
    gpu = st.get("gpu") or {}
    if not gpu.get("available"):
        return [f"no GPU: {gpu.get('reason') or 'unknown'}"]
    out = []
    for g in gpu.get("gpus", []):
        mem = f"{(g.get('memory_used') or 0) >> 20}/{(g.get('memory_total') or 0) >> 20} MiB"
        out.append(f"GPU {g.get('index')} {g.get('name')}: util {g.get('utilization_gpu')}% "
                   f"mem {mem} {g.get('temperature_c')} C {g.get('power_w')} W")
        for p in g.get("processes") or []:
            used = p.get("used_memory_bytes")
            out.append(f"  pid {p.get('pid')} {p.get('name') or '?'}: "
                       f"{'-' if used is None else used >> 20} MiB")
    return out or ["no GPU: none reported"]


def pool_lines(st: dict[str, Any]) -> list[str]:
    pools = st.get("pools") or []
    if not pools:
        return ["pinned pools: none reported"]
    out = ["pinned pools (MiB total/used/peak, frag, locked, cuda):"]
    for p in pools:
        def mib(k: str, p: dict[str, Any] = p) -> str:
            v = p.get(k)
            return "-" if v is None else f"{int(v) / (1 << 20):.0f}"
        out.append(f"  {p.get('pid')} {p.get('name', '')}: {mib('total')}/{mib('used')}/"
                   f"{mib('peak')} {float(p.get('fragmentation') or 0):.2f} "
                   f"{p.get('locked')} {p.get('cuda_registered')}")
    return out


def mechanism_lines(st: dict[str, Any]) -> list[str]:
    d = st.get("daemon") or {}
    out = [f"process events: {d.get('events', '?')}"]
    for m in st.get("mechanisms", []):
        out.append(f"{m['name']}: {'yes' if m['available'] else 'no'} {m.get('detail', '')}")
    rq = (d.get("telemetry") or {}).get("runqueue") or {}
    if rq:
        why = f" ({rq['why']})" if rq.get("why") else ""
        out.append(f"run-queue: {rq.get('kind')}{why}, watching {rq.get('watched', 0)}")
    return out


def header_line(frame: Frame, socket_path: str) -> str:
    st = frame.status or {}
    d = st.get("daemon") or {}
    mode = " DRY RUN" if d.get("dry_run") else ""
    mode += " PAUSED" if d.get("paused") else ""
    return (f"ainative {st.get('version', '?')} daemon {d.get('pid', '?')} at {socket_path},"
            f" AI tasks {st.get('task_count', 0)}{mode}")


def no_daemon_text(socket_path: str, error: str) -> str:
    return (f"no ainative daemon answers at {socket_path}\n({error})\n\n"
            f"{START_HINT}; or point --socket (or AINATIVE_SOCKET) at a running one.")


def render_frame(frame: Frame, socket_path: str) -> str:
    """One frame as plain text (``--once``)."""
    if frame.status is None:
        return no_daemon_text(socket_path, frame.error or "") + "\n"
    all_rows = rows(frame)
    shown = select(all_rows, 0, None, None)
    widths = [max(len(c), *(len(r.cells()[i]) for r in shown)) if shown else len(c)
              for i, c in enumerate(COLUMNS)]
    lines = [header_line(frame, socket_path), ""]
    lines.append("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    for r in shown:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r.cells(), widths, strict=True))
                     .rstrip())
    if not shown:
        lines.append("(no AI tasks)")
    lines += ["", *gpu_lines(frame.status), "",
              *latency_lines(frame, None, {r.pid: r for r in all_rows}), "",
              *pool_lines(frame.status), "", *mechanism_lines(frame.status)]
    return "\n".join(lines) + "\n"


def thread_lines(pid: int, limit: int = 64) -> list[str]:
    """A process's threads from /proc: tid, name, state, nice, scheduling policy."""
    policies = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError as e:
        return [f"threads: cannot read /proc/{pid}/task ({e.strerror})"]
    out = [f"threads: {len(tids)}", "    tid  name             state  nice  policy"]
    for tid in tids[:limit]:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        f = raw.rsplit(")", 1)[1].split()
        pol = policies.get(int(f[38]), f[38])
        out.append(f"{tid:>7}  {name[:15]:<15}  {f[0]:<5}  {f[16]:>4}  {pol}")
    if len(tids) > limit:
        out.append(f"... and {len(tids) - limit} more")
    return out


def explain_text(ex: dict[str, Any], width: int = 78) -> str:
    buf = io.StringIO()
    render_explain(ex, Console(file=buf, width=width, no_color=True, color_system=None,
                               force_terminal=False, highlight=False))
    return buf.getvalue()


# --- the textual app ---

PANEL_STARS = 14  # the histogram panel is 50 columns wide: fits 80 with the side panel

HELP = """ainative monitor keys

  up/down   select a process
  enter     details: why it got its class, its latency, its threads
  s         sort by the next column (numbers: largest first)
  c, f      filter by class (cycles through the classes, then all)
  u         filter by user (cycles through the users, then all)
  h         histogram: selected process / all serving processes
  p         pause or resume refreshing
  ?         this help
  escape    close a detail or help screen
  q         quit

Columns: rq p99 is the run-queue wait p99 (eBPF; '-' with schedstat or none),
inf p99 the inference p99 from spans; both approximate (bucket upper bound).
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "app.pop_screen", "close"),
        Binding("q", "app.quit", "quit")]

    def compose(self) -> ComposeResult:
        yield VerticalScroll(Static(HELP, id="help-text"))


class DetailScreen(Screen[None]):
    """One process: its explain, latency histograms and threads."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "back"),
        Binding("q", "app.quit", "quit")]

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def compose(self) -> ComposeResult:
        yield VerticalScroll(Static(f"pid {self.pid}: asking the daemon...", id="detail"))
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        app = self.app
        assert isinstance(app, MonitorApp)
        parts: list[str] = []
        try:
            parts.append(explain_text(app.client.explain(self.pid)))
        except DaemonError as e:
            parts.append(f"explain: {e}")
        lat = app.frame.latency.get(self.pid)
        if lat:
            for key, title in (("inference", "inference latency"),
                               ("runqueue", "run-queue wait")):
                d = lat.get(key) or {}
                if d.get("count"):
                    parts.append(f"{title} (n={d['count']}, p50 {_dur(d.get('p50_s'))}, "
                                 f"p99 {_dur(d.get('p99_s'))}):\n"
                                 + "\n".join(histogram_text(d["log2_us"])))
            if lat.get("schedstat_wait_s"):
                parts.append(f"run-queue wait summed (schedstat): "
                             f"{lat['schedstat_wait_s']:.3f} s")
        elif app.frame.latency_why:
            parts.append(f"latency: none ({app.frame.latency_why})")
        parts.append("\n".join(thread_lines(self.pid)))
        text = "\n\n".join(p.rstrip() for p in parts)
        app.call_from_thread(self.query_one("#detail", Static).update, text)


class MonitorApp(App[None]):
    """The live monitor. ``shown`` is the rows on screen (tests read it)."""

    TITLE = "ainative monitor"
    CSS = """
    #banner { height: auto; max-height: 3; }
    #tasks { height: 1fr; min-height: 5; }
    #panels { height: 11; }
    #hist { width: 50; }
    #side { width: 1fr; }
    #nodaemon { height: 1fr; padding: 1 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("s", "sort", "sort"),
        Binding("c", "filter_class", "class"),
        Binding("f", "filter_class", "class", show=False),
        Binding("u", "filter_user", "user"),
        Binding("h", "toggle_hist", "hist"),
        Binding("p", "pause", "pause"),
        Binding("enter", "details", "details"),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, socket_path: str | None = None, interval: float = 1.0) -> None:
        super().__init__()
        self.socket_path = socket_path or default_socket_path()
        self.client = Client(self.socket_path, timeout=max(0.5, min(5.0, interval * 2)))
        self.interval = interval
        self.frame = Frame()
        self.good: Frame | None = None  # the last frame the daemon answered
        self.shown: list[Row] = []
        self.sort = 0
        self.cls_filter: str | None = None
        self.user_filter: str | None = None
        self.paused = False
        self.hist_all = False
        self.refreshes = 0

    def compose(self) -> ComposeResult:
        yield Static("connecting...", id="banner")
        yield Static("", id="nodaemon")
        table: DataTable[str] = DataTable(id="tasks", cursor_type="row", zebra_stripes=False)
        yield table
        with Horizontal(id="panels"):
            yield VerticalScroll(Static("", id="hist-text"), id="hist")
            yield VerticalScroll(Static("", id="side-text"), id="side")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#tasks", DataTable)
        for c in COLUMNS:
            table.add_column(c, key=c)
        self._show_tables(False)
        self.poll()
        self.set_interval(self.interval, self.poll)

    def _show_tables(self, ok: bool) -> None:
        self.query_one("#tasks").display = ok
        self.query_one("#panels").display = ok
        self.query_one("#nodaemon").display = not ok

    def poll(self) -> None:
        if not self.paused:
            self.fetch_frame()

    @work(thread=True, exclusive=True, group="fetch")
    def fetch_frame(self) -> None:
        frame = fetch(self.client)
        self.call_from_thread(self.apply_frame, frame)

    def apply_frame(self, frame: Frame) -> None:
        self.frame = frame
        self.refreshes += 1
        if frame.status is not None:
            self.good = frame
        self._banner()
        if self.good is None:
            self.query_one("#nodaemon", Static).update(
                no_daemon_text(self.socket_path, frame.error or ""))
            self._show_tables(False)
            return
        self._show_tables(True)
        self.redraw()

    def _banner(self) -> None:
        banner = self.query_one("#banner", Static)
        if self.good is None:
            banner.update("ainative monitor: no daemon")
            return
        paused = " [paused]" if self.paused else ""
        filt = "".join([f" class={self.cls_filter}" if self.cls_filter else "",
                        f" user={self.user_filter}" if self.user_filter else ""])
        st = self.good.status or {}
        d = st.get("daemon") or {}
        mode = " DRY RUN" if d.get("dry_run") else ""
        mode += " PAUSED" if d.get("paused") else ""
        text = (f"daemon {d.get('pid', '?')}{mode} | {st.get('task_count', 0)} AI tasks | "
                f"sort {COLUMNS[self.sort]}{filt}{paused} | ? help")
        if self.frame.status is None:
            text = (f"DAEMON GONE: {self.frame.error}; showing data from "
                    f"{time.strftime('%H:%M:%S', time.localtime(self.good.at))}\n{text}")
        banner.update(text)

    def redraw(self) -> None:
        frame = self.good
        if frame is None or frame.status is None:
            return
        table = self.query_one("#tasks", DataTable)
        selected = self.selected_pid()
        all_rows = rows(frame)
        self.shown = select(all_rows, self.sort, self.cls_filter, self.user_filter)
        table.clear()
        for r in self.shown:
            table.add_row(*r.cells(), key=str(r.pid))
        if selected is not None:
            for i, r in enumerate(self.shown):
                if r.pid == selected:
                    table.move_cursor(row=i)
                    break
        pid = None if self.hist_all else self.selected_pid()
        by_pid = {r.pid: r for r in all_rows}
        self.query_one("#hist-text", Static).update(
            "\n".join(latency_lines(frame, pid, by_pid, PANEL_STARS)))
        st = frame.status
        self.query_one("#side-text", Static).update(
            "\n".join([*gpu_lines(st), "", *pool_lines(st), "", *mechanism_lines(st)]))

    def selected_pid(self) -> int | None:
        table = self.query_one("#tasks", DataTable)
        if not self.shown or table.row_count == 0:
            return None
        i = table.cursor_row
        return self.shown[i].pid if 0 <= i < len(self.shown) else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.good is not None and not self.hist_all:
            by_pid = {r.pid: r for r in rows(self.good)}
            self.query_one("#hist-text", Static).update(
                "\n".join(latency_lines(self.good, self.selected_pid(), by_pid, PANEL_STARS)))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_details()

    # --- keys ---

    def _reapply(self) -> None:
        self._banner()
        self.redraw()

    def action_sort(self) -> None:
        self.sort = (self.sort + 1) % len(COLUMNS)
        self._reapply()

    def _cycle(self, current: str | None, values: Iterable[str]) -> str | None:
        opts: list[str | None] = [None, *sorted(set(values))]
        i = opts.index(current) if current in opts else 0
        return opts[(i + 1) % len(opts)]

    def action_filter_class(self) -> None:
        # the classes of the tasks there are now (and the one filtered by, if it has gone)
        classes = {r.cls for r in rows(self.good or Frame())}
        classes |= {self.cls_filter} if self.cls_filter else set()
        self.cls_filter = self._cycle(self.cls_filter, classes)
        self._reapply()

    def action_filter_user(self) -> None:
        users = {r.user for r in rows(self.good or Frame())}
        users |= {self.user_filter} if self.user_filter else set()
        self.user_filter = self._cycle(self.user_filter, users)
        self._reapply()

    def action_toggle_hist(self) -> None:
        self.hist_all = not self.hist_all
        self._reapply()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._reapply()
        if not self.paused:
            self.poll()

    def action_details(self) -> None:
        pid = self.selected_pid()
        if pid is not None and isinstance(self.screen, Screen) and not isinstance(
                self.screen, DetailScreen | HelpScreen):
            self.push_screen(DetailScreen(pid))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def run_monitor(path: str, interval: float, once: bool) -> None:
    """What `ainative monitor` runs (cli/monitor_cmd.py imports this module lazily, so
    that no other command, the daemon above all, loads textual)."""
    if once:
        frame = fetch(Client(path))
        click.echo(render_frame(frame, path), nl=False)
        if frame.status is None:
            raise SystemExit(1)
        return
    MonitorApp(path, interval).run()
