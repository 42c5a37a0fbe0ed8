"""The benchmark tables of the docs, generated from the result files in bench/results/.

Every benchmark that writes results writes one JSON file there, with its figures and the machine
they were measured on (bench/harness.py's `machine`: CPU model, vector extensions, cores, Python
and package versions, git commit and whether the tree was dirty, date). This script rewrites the
marked blocks of README.md, docs/benchmarks.md and bench/README.md from those files:

    <!-- bench:NAME -->
    (generated: edit the result file or this script, never the block)
    <!-- /bench:NAME -->

and nothing outside them: figures that come from no file stay outside the blocks, with their
source said. A value a file does not hold (older files lack parts of the machine record) is
shown as "—".

    .venv/bin/python bench/report.py            # rewrite every block
    .venv/bin/python bench/report.py --check    # exit 1 naming each stale block (hack/test.sh runs it)
    .venv/bin/python bench/report.py --list     # the blocks and the result files each reads

Blocks: headline (README.md: one row per goal); summary, machines, images, preparation, training,
grpc, server_lone_client, server_photos, search_algorithms, gpu, server_ceiling, soak
(docs/benchmarks.md). A new result file shows up in `summary` and `machines` by itself; to give it
a headline figure, a place under a goal or a table of its own, add it to `SUMMARIES`, `GOALS` or
`BLOCKS` here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: The files whose blocks are generated, relative to the repository root.
PAGES = ("README.md", "docs/benchmarks.md", "bench/README.md")
RESULTS = Path("bench/results")
DASH = "—"
#: A block: its markers each on a line of their own (a marker quoted in a sentence is not one).
BLOCK = re.compile(
    r"^(<!-- bench:(?P<name>[\w-]+)(?: [^>]*)? -->\n)(?P<body>.*?)^(<!-- /bench:(?P=name) -->)$", re.S | re.M
)
MARKER = re.compile(r"^<!-- (/?)bench:([\w-]+)", re.M)


class ReportError(Exception):
    """A result file or a page this script cannot use: said with the file and what to do."""


class Results:
    """The result files under `root`/bench/results, read once each."""

    def __init__(self, root: Path) -> None:
        self.dir = root / RESULTS
        self._cache: dict[str, dict[str, Any] | None] = {}

    def names(self) -> list[str]:
        """Every result file's name without `.json`, sorted."""
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def get(self, name: str) -> dict[str, Any] | None:
        """bench/results/<name>.json, or None when there is no such file."""
        if name not in self._cache:
            path = self.dir / f"{name}.json"
            try:
                doc = json.loads(path.read_text())
            except FileNotFoundError:
                doc = None
            except (OSError, ValueError) as exc:
                raise ReportError(f"{RESULTS / path.name}: not a readable JSON file ({exc})") from exc
            if doc is not None and not isinstance(doc, dict):
                raise ReportError(f"{RESULTS / path.name}: expected a JSON object, got {type(doc).__name__}")
            self._cache[name] = doc
        return self._cache[name]

    def need(self, name: str) -> dict[str, Any]:
        """bench/results/<name>.json, which the block cannot do without."""
        doc = self.get(name)
        if doc is None:
            raise ReportError(f"{RESULTS / name}.json is missing: rerun its benchmark (bench/README.md)")
        return doc


# --- reading values --------------------------------------------------------------------------


def at(doc: Any, *path: str | int) -> Any:
    """doc[path[0]][path[1]]..., or None where any step is missing."""
    for key in path:
        found = key in doc if isinstance(doc, dict) else isinstance(doc, list) and -len(doc) <= int(key) < len(doc)
        if not found:
            return None
        doc = doc[key]
    return doc


def num(value: Any, spec: str = "g", suffix: str = "") -> str:
    """A number formatted with `spec`, or "—" when there is none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DASH
    return format(value, spec) + suffix


def text(value: Any) -> str:
    """A value as a table cell ("—" for none; a pipe would end the cell)."""
    if value is None or value in ("", []):
        return DASH
    return str(value).replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]]


def lines(*parts: str) -> str:
    """A block's text: the lines, each ended."""
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class Machine:
    """A result file's machine record, whichever of its shapes the file has: the current one
    (bench/harness.py) or the older ones (`cpus`, a `gitCommit` or a `commit` with `-dirty`, the
    flags as a dict, the versions at the top level, the date beside the record)."""

    cpu: str | None
    flags: list[str] | None
    cores: int | None
    python: str | None
    versions: dict[str, str | None]
    commit: str | None
    date: str | None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Machine:
        record = doc.get("machine")
        m: dict[str, Any] = record if isinstance(record, dict) else {}
        flags = m.get("cpuFlags")
        if isinstance(flags, dict):
            flags = sorted(f for f, present in flags.items() if present)
        versions: dict[str, str | None] = {k: m[k] for k in ("torch", "torchvision", "onnxruntime") if k in m}
        versions.update(m.get("versions") or {})
        commit, dirty = m.get("commit") or m.get("gitCommit"), m.get("dirty")
        if isinstance(commit, str):
            sha, _, mark = commit.partition("-")
            commit = sha[:7] + ("-dirty" if dirty or mark == "dirty" else "")
        date = m.get("date") or doc.get("date")
        return cls(
            cpu=m.get("cpu"),
            flags=flags if isinstance(flags, list) else None,
            cores=m.get("cores") or m.get("cpus"),
            python=m.get("python"),
            versions=versions,
            commit=commit,
            date=date[:10] if isinstance(date, str) else None,
        )

    @property
    def recorded(self) -> bool:
        """Whether the file says anything of its machine."""
        return any(v is not None for v in (self.cpu, self.cores, self.commit, self.date))

    def short(self) -> str:
        """Where and when, in one cell: CPU, cores, commit, date."""
        if not self.recorded:
            return f"{DASH} (no machine record)"
        return f"{text(self.cpu)}, {num(self.cores)} cores; {text(self.commit)}, {text(self.date)}"


def source(name: str, doc: dict[str, Any], script: str) -> str:
    """The line above a generated table: its file, script and machine."""
    m = Machine.of(doc)
    if not m.recorded:
        return f"From `bench/results/{name}.json` (`{script}`, no machine record)"
    return (
        f"From `bench/results/{name}.json` (`{script}`, commit {text(m.commit)}, {text(m.date)}, "
        f"{text(m.cpu)}, {num(m.cores)} cores)"
    )


# --- one headline per result file (docs/benchmarks.md, every result file) ------------------------

Summary = Callable[[dict[str, Any]], tuple[str, str, str]]
"""A result file → (benchmark, its headline figures, the goal)."""


#: The inputs of `bench/prepare_throughput.py`, as the docs name them.
PREPARE_CASES = {"photos": "1920x1080 JPEG photos → 224 px JPEG", "digits": "1,797 digits, 32 px PNG → 32 px PNG"}


def ratio_range(r: Any) -> str:
    """A median ratio and its range over the rounds: `1.90× (1.62–2.11×)`."""
    return f"{num(at(r, 'median'), '.2f', '×')} ({num(at(r, 'min'), '.2f')}–{num(at(r, 'max'), '.2f', '×')})"


def rate_range(r: Any) -> str:
    """A median rate and its range over the rounds: `9,206 (8,953–9,428)`."""
    return f"{num(at(r, 'median'), ',.0f')} ({num(at(r, 'min'), ',.0f')}–{num(at(r, 'max'), ',.0f')})"


def summary_prepare(doc: dict[str, Any]) -> tuple[str, str, str]:
    s = doc.get("summary") or {}
    figure = "; ".join(
        f"{name} **{num(at(s, name, 'ratio', 'median'), '.2f', '×')}** "
        f"({num(at(s, name, 'ratio', 'min'), '.2f')}–{num(at(s, name, 'ratio', 'max'), '.2f', '×')}"
        f"{'' if at(s, name, 'met') else ', goal not met'})"
        for name in PREPARE_CASES
        if name in s
    )
    figure += f" the source document's loop; medians of {num(doc.get('rounds'))} alternating rounds"
    goals = "; ".join(f"{name} ≥ {num(at(s, name, 'goal'), 'g', '×')}" for name in PREPARE_CASES if name in s)
    return "data preparation (`modelops_trainer.prepare`)", figure, goals


def summary_trainer(doc: dict[str, Any]) -> tuple[str, str, str]:
    s = doc.get("summary") or {}
    figure = (
        f"**{num(at(s, 'end-to-end', 'ratio'), '.2f', '×')}** the source document's loop end to end, "
        f"{num(at(s, 'loop', 'ratio'), '.2f', '×')} loop alone; end to end "
        f"{num(at(s, 'endToEndVsCompute', 'median'), '.2f')} of its own compute "
        f"({text(at(doc, 'programPrecision', 'name'))}, {text(at(doc, 'programPrecision', 'reason'))})"
    )
    what = f"training, {text(doc.get('arch'))}, batch {num(doc.get('batchSize'))}, {num(doc.get('imageSize'))} px"
    return what, figure, "≥ 2.5× end to end; ≥ 0.9 of compute"


def grpc_ratios(doc: dict[str, Any]) -> dict[str, list[float]]:
    """gRPC req/s over REST req/s of each point, binary payloads and JSON/typed ones apart."""
    out: dict[str, list[float]] = {"binary": [], "json": []}
    for p in doc.get("points") or []:
        rest, grpc = at(p, "rest", "rps"), at(p, "grpc", "rps")
        if isinstance(rest, int | float) and isinstance(grpc, int | float) and rest:
            out["json" if "json" in str(p.get("payload")) else "binary"].append(grpc / rest)
    return out


def span(values: list[float], spec: str = ".2f", suffix: str = "×") -> str:
    """min–max (or the one value)."""
    if not values:
        return DASH
    low, high = format(min(values), spec), format(max(values), spec)
    return f"{low}{suffix}" if low == high else f"{low}–{high}{suffix}"


def summary_grpc(doc: dict[str, Any]) -> tuple[str, str, str]:
    r = grpc_ratios(doc)
    figure = f"gRPC / REST req/s: binary **{span(r['binary'])}**, typed gRPC against JSON REST {span(r['json'])}"
    return "inference server, gRPC next to REST", figure, "binary gRPC no slower than binary REST"


def summary_images(doc: dict[str, Any]) -> tuple[str, str, str]:
    sizes = "/".join(num(at(doc, "images", n, "compressedMB"), ".0f") for n in ("operator", "trainer", "server"))
    figure = (
        f"rebuild of all three, no change: {num(doc.get('rebuildAllNoChangeSeconds'), '.1f', ' s')} "
        f"(**{num(doc.get('rebuildVsOperatorFromScratch'), '.2f', '×')}** the operator alone from scratch); "
        f"operator/trainer/server {sizes} MB compressed"
    )
    return "the three images", figure, DASH


def summary_search(doc: dict[str, Any]) -> tuple[str, str, str]:
    s = {k: v for k, v in (doc.get("summary") or {}).items() if k != "random"}
    ranked = sorted(s.items(), key=lambda kv: -(at(kv[1], "bestPerCpuSecondVsRandom") or 0))
    figure = "best per CPU-second against random search: " + ", ".join(
        f"{name} {num(at(v, 'bestPerCpuSecondVsRandom'), '.2f', '×')}" for name, v in ranked
    )
    return "search strategies (scikit-learn MLP on digits)", figure, DASH


def summary_gpu(doc: dict[str, Any]) -> tuple[str, str, str]:
    server = at(doc, "server", "goal", "ratioAt")
    figure = (
        f"{text(at(doc, 'machine', 'gpu'))}: training {text(at(doc, 'trainer', 'arch'))} "
        f"**{num(at(doc, 'trainer', 'imagesPerSecond'), ',.0f')} img/s**; batching "
        f"{num(at(doc, 'server', 'summary', server or '', 'ratio'), '.2f', '×')} batch-1 at {text(server)}; "
        f"parity (TF32 off) top-1 {num(at(doc, 'parity', 'cudaTf32Off', 'top1Agreement'))}, within the trainer's "
        f"tolerance: {text(at(doc, 'parity', 'cudaTf32Off', 'withinTrainerTolerance'))}; "
        f"failed parts: {text(doc.get('failedParts'))}"
    )
    return "GPU run (`bench/gpu.sh`)", figure, "≥ 3,500 img/s (H100/H200); batching ≥ 3×"


def summary_gpu_fallback(doc: dict[str, Any]) -> tuple[str, str, str]:
    failed = ", ".join(doc.get("failedParts") or [])
    ran = f"failed parts: {failed}" if failed else "every part ran end to end"
    figure = (
        f"device {text(doc.get('device'))}, {num(doc.get('seconds'), '.0f', ' s')}: {ran}; proof that the "
        "script works, not a figure"
    )
    return "`bench/gpu.sh` without CUDA", figure, DASH


def summary_soak(doc: dict[str, Any]) -> tuple[str, str, str]:
    s = doc.get("summary") or {}
    figure = (
        f"{num(at(s, 'seconds'), '.0f', ' s')} under traffic and rollouts: {num(s.get('requests'), ',')} requests, "
        f"**{num(s.get('errors'))} errors**, {num(s.get('rolloutsPromoted'))} rollouts promoted; operator RSS last "
        f"5 min / first **{num(at(s, 'figures', 'operator_rss_mib', 'ratio'), '.2f')}** "
        f"({num(at(s, 'slopePer10Min', 'operator_rss_mib'), '+.2f')} MiB per 10 min over the second half)"
    )
    return "soak (`bench/soak.py`)", figure, "flat curves, no errors"


def steady_applies_per_min(doc: dict[str, Any], size: dict[str, Any]) -> float | None:
    """Server-side applies (any resource) a minute at steady state, from `steady_writes_by_resource`
    (counts over `steadySeconds`); None for a file written before APPLY was counted as a write (its
    `writeVerbs` say so, or an APPLY of any run in it)."""
    runs = [*(doc.get("sizes") or []), *((doc.get("baseline") or {}).get("sizes") or [])]
    counted = "APPLY" in (doc.get("writeVerbs") or []) or any(
        k.endswith(" APPLY") for r in runs for k in r.get("steady_writes_by_resource") or {}
    )
    seconds = doc.get("steadySeconds")
    if not counted or not seconds:
        return None
    by_resource = size.get("steady_writes_by_resource") or {}
    return float(sum(v for k, v in by_resource.items() if k.endswith(" APPLY")) * 60 / seconds)


def summary_scale(doc: dict[str, Any]) -> tuple[str, str, str]:
    sizes = doc.get("sizes") or []
    big = max(sizes, key=lambda r: r.get("objects") or 0) if sizes else {}
    figure = (
        f"{num(big.get('objects'), ',')} objects: converged in **{num(big.get('converge_s'), '.0f', ' s')}**, "
        f"operator RSS peak **{num(big.get('rss_peak_mib'), '.0f', ' MiB')}**; steady state "
        f"**{num(big.get('steady_modelops_writes_per_min'), '.1f')} writes/min** to modelops.dev objects, "
        f"{num(big.get('steady_reconciles_per_s'), '.1f')} reconciles/s, "
        f"{num(big.get('steady_cpu_percent'), '.0f', '%')} of a core"
    )
    if (applies := steady_applies_per_min(doc, big)) is not None:
        figure += f", **{num(applies, '.0f')} server-side applies/min** to the children"
    if big.get("api_connections_peak_converging") is not None:
        figure += f", at most {num(big['api_connections_peak_converging'], '.0f')} connections to the API server"
    if big.get("quiet_reached") is False:
        figure += " (not yet quiet when the steady window began: it holds the tail of convergence)"
    sar = "authorization.k8s.io/subjectaccessreviews/ POST"
    if (steady_sar := (big.get("steady_writes_by_resource") or {}).get(sar)) is not None and doc.get("steadySeconds"):
        converging_sar = (big.get("converging_writes_by_resource") or {}).get(sar)
        while_ = f"{num(converging_sar, ',')} while converging, " if converging_sar is not None else ""
        figure += (
            f"; SubjectAccessReviews {while_}{num(steady_sar * 60 / doc['steadySeconds'], ',.0f')}/min at steady state"
        )
    if big.get("operator_share_of_busy_converging") is not None:
        figure += (
            f"; while converging {num(big.get('machine_busy_cores_converging'), '.2f')} cores were busy, the "
            f"operator's share **{num(100 * big['operator_share_of_busy_converging'], '.0f', '%')}**"
        )
    # The API server's profile, when the run took one: its length, from go tool pprof's header.
    took = re.search(r"Duration: ([\d.]+)s", at(big, "apiServerProfile", "durationAndSamples") or "")
    if parts := at(big, "apiServerProfile", "cumulativePercentByPart"):
        top = sorted(parts.items(), key=lambda kv: -kv[1])[:5]
        top += [(part, share) for part, share in parts.items() if "modelops.dev" in part and (part, share) not in top]
        figure += (
            f"; kube-apiserver's CPU profile over the first {num(float(took[1]) if took else None, '.0f', ' s')}"
            f" of convergence, by part (cumulative, overlapping): "
            + ", ".join(f"{part} **{num(share, '.0f', '%')}**" for part, share in top)
        )
    base_run = doc.get("baseline") or {}
    base_env: dict[str, str] = base_run.get("env") or {}

    def assignments(env: dict[str, str], *, code: bool = True) -> str:
        """`VAR=VALUE …`; without PYTHONPATH (where the operator's code came from) unless `code`."""
        return " ".join(f"{k}={v}" for k, v in env.items() if code or k != "PYTHONPATH")

    same = [b for b in base_run.get("sizes") or [] if b.get("objects") == big.get("objects")]
    if same:
        b, setting = same[0], assignments(base_env)
        # PYTHONPATH: the baseline ran another checkout's operator code (the code before a change).
        with_ = f"the operator's code from `{setting}`" if "PYTHONPATH" in base_env else f"`{setting}`"
        figure += (
            f"; the same run with {with_}: RSS peak {num(b.get('rss_peak_mib'), '.0f', ' MiB')}, converged in "
            f"{num(b.get('converge_s'), '.0f', ' s')}, operator CPU {num(b.get('cpu_s_converging'), '.0f', ' s')} "
            f"(default: {num(big.get('cpu_s_converging'), '.0f', ' s')})"
        )
        if (applies := steady_applies_per_min(doc, b)) is not None:
            figure += f", {num(applies, '.0f')} server-side applies/min at steady state"
        if b.get("api_connections_peak_converging") is not None:
            figure += f", at most {num(b['api_connections_peak_converging'], '.0f')} connections to the API server"
    under, against = assignments(doc.get("env") or {}, code=False), assignments(base_env, code=False)
    command = f"bench/scale.py --baseline {against}" if against else "bench/scale.py"
    if took:
        command += f" --api-server-profile {float(took[1]):.0f}"
    what = f"operator at scale (`{command}`{', under ' + under if under else ''})"
    return what, figure, "< 60 s, < 250 MiB, 0 writes/min"


def summary_scale_memory(doc: dict[str, Any]) -> tuple[str, str, str]:
    profile = doc.get("profile") or {}
    owners = ", ".join(f"{k} {num(v, '.0f', ' MiB')}" for k, v in list((profile.get("by_owner_mib") or {}).items())[:5])
    line, mib = next(iter((profile.get("top_lines_mib") or {}).items()), (None, None))
    top = f"; the line allocating most: `{line.split('/')[-1]}` {num(mib, '.0f', ' MiB')}" if line else ""
    figure = (
        f"{num(doc.get('objects'), ',')} objects, under memray: heap at its peak "
        f"**{num(profile.get('heap_peak_mib'), '.0f', ' MiB')}**, by owner: {owners or DASH}{top}"
    )
    return "operator memory at scale (`bench/scale.py --memory-profile`)", figure, "where the RSS goes"


def summary_faults(doc: dict[str, Any]) -> tuple[str, str, str]:
    kills, secs, killed = doc.get("kills") or {}, doc.get("seconds") or {}, doc.get("killed") or {}
    stages = ", ".join(f"{n} {stage}" for stage, n in (kills.get("byStage") or {}).items() if n)
    equal = doc.get("endStateEqual")
    figure = (
        f"{num(kills.get('done'))} SIGKILLs of {num(kills.get('asked'))} asked ({stages or DASH}): end state "
        f"**{'equal' if equal else 'different' if equal is not None else DASH}** to the undisturbed run's; "
        f"**{num(killed.get('duplicates'))}** children created twice, **{num(killed.get('orphans'))}** orphans, "
        f"**{num(killed.get('leftAfterDelete'))}** left after deletion; {num(secs.get('killed'), '.0f', ' s')} against "
        f"{num(secs.get('undisturbed'), '.0f', ' s')} undisturbed (**{num(secs.get('ratio'), '.2f', '×')}**)"
    )
    return "operator kills (`bench/faults.py`)", figure, "equal end state; nothing twice, orphaned or left"


def summary_server_bench(doc: dict[str, Any]) -> tuple[str, str, str]:
    s = doc.get("summary") or {}
    parts = []
    for label in doc.get("limits") or {}:
        ratios = [
            v
            for k, v in s.items()
            if k.startswith(f"{label} c=") and k.endswith(" modelops/kserve") and "efficiency" not in k
        ]
        ratios = [v for v in ratios if isinstance(v, int | float)]
        if ratios:
            parts.append(f"{label} {min(ratios):.2f}–{max(ratios):.2f}×")
    figure = (
        f"224 px at 16 connections: **{num(s.get('224_vs_limit_c16'), '.2f')}** of the in-process limit; "
        f"images/s against KServe 0.21 over 1–64 connections: {'; '.join(parts) or DASH}; "
        f"p99 at 64 / at 4 connections {num(s.get('modelops p99 c64/c4'), '.2f')} (KServe's "
        f"{num(s.get('kserve p99 c64/c4'), '.2f')})"
    )
    return "inference server (`bench/server_bench.py`)", figure, "≥ 0.95 of the limit at 16; p99 64/4 ≤ 2"


def median_range(figure: Any, spec: str = ".1f", suffix: str = "") -> str:
    """A {median, min, max} figure as "median (min–max)"."""
    return f"{num(at(figure, 'median'), spec, suffix)} ({num(at(figure, 'min'), spec)}–{num(at(figure, 'max'), spec)})"


def summary_lone_client(doc: dict[str, Any]) -> tuple[str, str, str]:
    s = doc.get("summary") or {}
    ours, ks = at(s, "points", "modelops", "1") or {}, at(s, "points", "kserve", "1") or {}
    ratios = s.get("ratios") or {}
    figure = (
        f"1 connection: p50 **{num(at(ours, 'p50Ms', 'median'), '.1f')} ms** against KServe's "
        f"{num(at(ks, 'p50Ms', 'median'), '.1f')} ({num(at(ratios, 'c1P50VsKserve', 'median'), '.2f', '×')}), "
        f"p99 {num(at(ours, 'p99Ms', 'median'), '.1f')} against {num(at(ks, 'p99Ms', 'median'), '.1f')} ms; "
        f"16 connections **{num(at(ratios, 'c16VsLimit', 'median'), '.2f')}** of the in-process limit; "
        f"p99 at 64 / at 4 connections {num(at(ratios, 'overloadP99Ratio', 'median'), '.2f')} "
        f"(medians of {num(s.get('runs'))} runs)"
    )
    goal = "at 1 connection ≤ KServe (p50 and p99); ≥ 0.95 of the limit at 16; p99 64/4 ≤ 2"
    return "inference server, a lone client to 64 connections, against KServe 0.21", figure, goal


def summary_server_photos(doc: dict[str, Any]) -> tuple[str, str, str]:
    s = doc.get("summary") or {}
    connections = at(doc, "settings", "connections") or [1, 4, 16, 64]
    parts, unbounded = [], False
    for label in doc.get("payloads") or {}:
        cells = []
        for c in connections:
            ratio = at(s, "ratios", f"{label} c={c}") or {}
            unbounded |= "median" not in ratio
            cells.append(num(ratio.get("median"), ".2f", "×") if "median" in ratio else "unbounded")
        parts.append(f"{label} {' / '.join(cells)}")
    goals = [g for g in (s.get("goals") or {}).values() if isinstance(g, dict)]
    met = sum(1 for g in goals if g.get("met"))
    note = "; unbounded: KServe answered none within the point" if unbounded else ""
    figure = (
        f"images/s against KServe 0.21 at {' / '.join(map(str, connections))} connections: "
        f"{'; '.join(parts) or DASH} (medians of {num(s.get('runs'))} runs{note}); goal met at "
        f"**{met} of {len(goals)}** points"
    )
    return "inference server, 1920×1080 photographs, against KServe 0.21", figure, "≥ 2× at 4 connections and up"


def gpu_batch1_at_64(results_gpu: dict[str, Any] | None) -> float | None:
    """What the GPU run's batch-1 server answered at 64 connections (img/s), which the GPU goal's
    3× multiplies; None without a GPU run."""
    value = at(results_gpu or {}, "server", "summary", "c64", "batch1ImagesPerSecond")
    return float(value) if isinstance(value, int | float) else None


def summary_server_ceiling(doc: dict[str, Any]) -> tuple[str, str, str]:
    s = doc.get("summary") or {}
    top = at(s, "points", "batching", str(max(doc.get("connections") or [64]))) or {}
    figure = (
        "a model that costs nothing, 64 connections: batching "
        f"**{num(at(s, 'batchingOverBatch1', 'c=64', 'median'), '.2f', '×')}** batch 1 "
        f"({num(at(top, 'imagesPerSecond', 'median'), ',.0f')} img/s); per request the front end "
        f"{num(at(top, 'frontEndCpuMsPerRequest', 'median'), '.2f')} CPU-ms, the worker "
        f"{num(at(top, 'workerCpuMsPerRequest', 'median'), '.2f')} (its batcher "
        f"{num(at(top, 'batcherCpuMsPerRequest', 'median'), '.2f')}); one core carries "
        f"**{num(s.get('frontEndRequestsPerCoreSecond'), ',.0f')} requests/s** of the front end "
        f"(medians of {num(s.get('runs'))} runs)"
    )
    return "inference server without a model (`bench/server_ceiling.py`)", figure, "what batching can gain at most"


SUMMARIES: dict[str, Summary] = {
    "prepare_throughput": summary_prepare,
    "prepare_throughput_xeon": summary_prepare,
    "trainer_throughput": summary_trainer,
    "trainer_throughput_xeon": summary_trainer,
    "grpc": summary_grpc,
    "server_lone_client": summary_lone_client,
    "server_lone_client_xeon": summary_lone_client,
    "server_photos": summary_server_photos,
    "server_ceiling": summary_server_ceiling,
    "images": summary_images,
    "search_algorithms": summary_search,
    "gpu": summary_gpu,
    "gpu-cpu-fallback": summary_gpu_fallback,
    "soak": summary_soak,
    "scale": summary_scale,
    "scale_schedule": summary_scale,
    "scale_glibc_arenas": summary_scale,
    "scale_progress_10s": summary_scale,
    "scale_api_connections": summary_scale,
    "scale_apiserver_profile": summary_scale,
    "scale_writes": summary_scale,
    "scale_authz_cache": summary_scale,
    "scale_apply_create": summary_scale,
    "scale_stable_replicas": summary_scale,
    "scale_lazy_canary": summary_scale,
    "scale_grace_end": summary_scale,
    "scale_grace_end_rerun": summary_scale,
    "scale_track_services": summary_scale,
    "scale_track_services_rerun": summary_scale,
    "scale_memory": summary_scale_memory,
    "faults": summary_faults,
    "server_bench": summary_server_bench,
}


# --- one row per goal (the README's headline table) ----------------------------------------------

Verdict = bool | None
"""A goal met (True), missed (False), or with no figure to judge (None)."""
Headline = Callable[[dict[str, Any]], tuple[str, Verdict]]
"""A result file → (its figures in a few words, whether they meet the row's goal)."""


def cpu_name(doc: dict[str, Any]) -> str:
    """The machine in a word or two: `AMD EPYC`, `Xeon`, `NVIDIA H200` (a GPU run names its GPU)."""
    gpu = at(doc, "machine", "gpu")
    if isinstance(gpu, str) and doc.get("device") == "cuda":
        return gpu
    cpu = Machine.of(doc).cpu
    return "no machine record" if cpu is None else "Xeon" if "Xeon" in cpu else cpu


def headline_prepare(doc: dict[str, Any]) -> tuple[str, Verdict]:
    s = doc.get("summary") or {}
    cases = [name for name in PREPARE_CASES if name in s]
    figure = ", ".join(f"{name} {num(at(s, name, 'ratio', 'median'), '.2f', '×')}" for name in cases)
    return figure, all(at(s, name, "met") is True for name in cases) if cases else None


def headline_trainer(doc: dict[str, Any]) -> tuple[str, Verdict]:
    ratio, compute = at(doc, "summary", "end-to-end", "ratio"), at(doc, "summary", "endToEndVsCompute", "median")
    figure = f"{num(ratio, '.2f', '×')}, {num(compute, '.2f')} of compute"
    if not isinstance(ratio, int | float) or not isinstance(compute, int | float):
        return figure, None
    return figure, ratio >= 2.5 and compute >= 0.9


def goals_met(goals: Any) -> Verdict:
    """Every `{met}` of a summary's `goals`; None when it has none."""
    judged = [g.get("met") for g in (goals or {}).values() if isinstance(g, dict)]
    return all(m is True for m in judged) if judged else None


def headline_lone_client(doc: dict[str, Any]) -> tuple[str, Verdict]:
    r = at(doc, "summary", "ratios") or {}
    figure = (
        f"p50 {num(at(r, 'c1P50VsKserve', 'median'), '.2f', '×')} and p99 "
        f"{num(at(r, 'c1P99VsKserve', 'median'), '.2f', '×')} KServe's; "
        f"{num(at(r, 'c16VsLimit', 'median'), '.2f')} of the limit; "
        f"p99 64/4 {num(at(r, 'overloadP99Ratio', 'median'), '.2f')}"
    )
    return figure, goals_met(at(doc, "summary", "goals"))


def headline_photos(doc: dict[str, Any]) -> tuple[str, Verdict]:
    goals = {k: g for k, g in (at(doc, "summary", "goals") or {}).items() if isinstance(g, dict)}
    by_c: dict[str, list[float]] = {}
    for key, g in goals.items():
        if isinstance(g.get("median"), int | float):
            by_c.setdefault(key.rpartition(" ")[2], []).append(g["median"])
    met = sum(1 for g in goals.values() if g.get("met"))
    cells = ", ".join(
        f"{span(v)} at {c.removeprefix('c=')}{' connections' if i == 0 else ''}"
        for i, (c, v) in enumerate(by_c.items())
    )
    return f"{cells or DASH}; met at {met} of {len(goals)} points", goals_met(goals)


def headline_scale(doc: dict[str, Any]) -> tuple[str, Verdict]:
    sizes = doc.get("sizes") or []
    big = max(sizes, key=lambda r: r.get("objects") or 0) if sizes else {}
    figures = [big.get(k) for k in ("converge_s", "rss_peak_mib", "steady_modelops_writes_per_min")]
    secs, rss, writes = figures
    figure = f"converged in {num(secs, '.0f', ' s')}, RSS peak {num(rss, '.0f', ' MiB')}, "
    figure += f"{num(writes, '.0f')} writes/min"
    values = [float(v) for v in figures if isinstance(v, int | float)]
    if len(values) < 3:
        return figure, None
    return figure, values[0] < 60 and values[1] < 250 and values[2] == 0


def headline_soak(doc: dict[str, Any]) -> tuple[str, Verdict]:
    s = doc.get("summary") or {}
    errors, ratio = s.get("errors"), at(s, "figures", "operator_rss_mib", "ratio")
    figure = f"{num(errors)} errors in {num(s.get('requests'), ',')} requests; operator RSS ×{num(ratio, '.2f')}"
    if not isinstance(errors, int) or not isinstance(ratio, int | float):
        return figure, None
    return figure, errors == 0 and ratio <= 1.1


def headline_faults(doc: dict[str, Any]) -> tuple[str, Verdict]:
    kills, killed, equal = doc.get("kills") or {}, doc.get("killed") or {}, doc.get("endStateEqual")
    wrong = [killed.get(k) for k in ("duplicates", "orphans", "leftAfterDelete")]
    figure = (
        f"{num(kills.get('done'))} kills: end state {'equal' if equal else 'different'}, "
        f"{sum(w for w in wrong if isinstance(w, int))} duplicates, orphans or leftovers"
    )
    if equal is None or not all(isinstance(w, int) for w in wrong):
        return figure, None
    return figure, bool(equal) and not any(wrong)


def headline_gpu(doc: dict[str, Any]) -> tuple[str, Verdict]:
    rate, at_c = at(doc, "trainer", "imagesPerSecond"), at(doc, "server", "goal", "ratioAt")
    ratio = at(doc, "server", "summary", at_c or "", "ratio")
    figure = f"training {num(rate, ',.0f')} img/s; batching {num(ratio, '.2f', '×')} batch-1"
    if not isinstance(rate, int | float) or not isinstance(ratio, int | float):
        return figure, None
    return figure, rate >= 3500 and ratio >= 3


@dataclass(frozen=True)
class Goal:
    """A row of the headline table: a goal and the result files that measure it."""

    what: str
    goal: str
    files: tuple[str, ...]
    figures: Headline
    anchor: str
    """The section of docs/benchmarks.md with the tables behind it."""


GOALS = (
    Goal(
        "data preparation",
        "≥ 5× the source document's loop on 1080p photos, ≥ 1.7× on small images",
        ("prepare_throughput", "prepare_throughput_xeon"),
        headline_prepare,
        "data-preparation",
    ),
    Goal(
        "training on a CPU (ResNet-18, batch 32)",
        "≥ 2.5× the source document's loop end to end, ≥ 0.9 of the model's own compute",
        ("trainer_throughput", "trainer_throughput_xeon"),
        headline_trainer,
        "training",
    ),
    Goal(
        "serving 224 px JPEGs, against KServe 0.21",
        "at 1 connection ≤ KServe's p50 and p99; ≥ 0.95 of the in-process limit at 16; p99 at 64 / at 4 ≤ 2",
        ("server_lone_client", "server_lone_client_xeon"),
        headline_lone_client,
        "a-lone-client-and-a-crowd",
    ),
    Goal(
        "serving 1920×1080 photographs, against KServe 0.21",
        "≥ 2× KServe's images/s at 4 connections and up",
        ("server_photos",),
        headline_photos,
        "large-photographs",
    ),
    Goal(
        "the operator at 1,000 objects",
        "converged < 60 s, RSS peak < 250 MiB, 0 writes/min at steady state",
        ("scale_lazy_canary", "scale_track_services"),
        headline_scale,
        "the-operator-at-1000-objects",
    ),
    Goal(
        "30 minutes of traffic and rollouts",
        "no errors; operator RSS in the last 5 minutes ≤ 1.1× the first 5",
        ("soak",),
        headline_soak,
        "soak",
    ),
    Goal(
        "the operator killed mid-lifecycle",
        "the undisturbed end state; nothing created twice, orphaned or left",
        ("faults",),
        headline_faults,
        "figures",
    ),
    Goal(
        "GPU (`bench/gpu.sh`)",
        "ResNet-50 training ≥ 3,500 img/s on an H100/H200; dynamic batching ≥ 3× batch-1 at 64 connections",
        ("gpu",),
        headline_gpu,
        "gpu",
    ),
)

VERDICT = {True: "met", False: "**missed**", None: DASH}


def block_headline(results: Results) -> str:
    """One row per goal: each result file's figures, with its machine, and whether all meet it."""
    rows = []
    for g in GOALS:
        what = f"[{g.what}](docs/benchmarks.md#{g.anchor})"
        measured = [(name, doc) for name in g.files if (doc := results.get(name)) is not None]
        if not measured:
            rows.append([what, g.goal, "not measured yet", DASH])
            continue
        judged = [(g.figures(doc), doc) for _, doc in measured]
        cells = [f"{figure} ({cpu_name(doc)})" for (figure, _), doc in judged]
        verdicts = [v for (_, v), _ in judged]
        # A file that misses decides; one without the figure leaves the rest unjudged.
        missed = [cpu_name(d) for (_, d), v in zip(measured, verdicts, strict=True) if v is False]
        if missed and any(verdicts):
            word = f"**missed** on {', '.join(missed)}"
        else:
            word = VERDICT[False if missed else None if None in verdicts else True]
        rows.append([what, g.goal, "; ".join(cells), word])
    return lines(*table(["what", "goal", "measured", "verdict"], rows))


def block_summary(results: Results) -> str:
    rows = []
    for name in [*SUMMARIES, *(n for n in results.names() if n not in SUMMARIES)]:
        doc = results.get(name)
        if doc is None:
            if name == "gpu":
                rows.append(["GPU run (`bench/gpu.sh`)", "no GPU machine has run it yet", DASH, DASH, DASH])
            continue
        what, figure, goal = SUMMARIES[name](doc) if name in SUMMARIES else (name, DASH, DASH)
        rows.append([what, figure, goal, Machine.of(doc).short(), f"`bench/results/{name}.json`"])
    return lines(*table(["benchmark", "figures", "goal", "measured on", "from"], rows))


def block_machines(results: Results) -> str:
    rows = []
    for name in results.names():
        m = Machine.of(results.need(name))
        versions = ", ".join(f"{k} {v}" for k, v in m.versions.items() if v) or DASH
        rows.append(
            [
                f"`{name}.json`",
                text(m.date),
                text(m.commit),
                text(m.cpu),
                num(m.cores),
                text(" ".join(m.flags)) if m.flags is not None else DASH,
                text(m.python),
                versions,
            ]
        )
    header = ["file", "date", "commit", "CPU", "cores", "CPU flags (avx2, avx512*, amx*)", "Python", "versions"]
    return lines(*table(header, rows))


# --- the tables of docs/benchmarks.md ----------------------------------------------------------


def block_images(results: Results) -> str:
    doc = results.need("images")
    rows = [
        [
            name,
            num(at(doc, "images", name, "compressedMB"), ".0f", " MB"),
            num(at(doc, "images", name, "unpackedMB"), ".0f", " MB"),
            num(at(doc, "images", name, "layers")),
        ]
        for name in doc.get("images") or {}
    ]
    return lines(
        source("images", doc, "bench/image_sizes.py") + ":",
        "",
        *table(["image", "compressed (gzip, as pulled)", "unpacked", "layers"], rows),
        "",
        f"A rebuild of all three with no change took {num(doc.get('rebuildAllNoChangeSeconds'), '.1f', ' s')}, "
        f"against {num(doc.get('operatorFromScratchSeconds'), '.1f', ' s')} to build the operator alone from "
        f"scratch (`--no-cache`) in the same run (ratio {num(doc.get('rebuildVsOperatorFromScratch'), '.2f')}).",
    )


def block_preparation(results: Results) -> str:
    doc = results.need("prepare_throughput")
    s = doc.get("summary") or {}
    rows = [
        [
            f"{PREPARE_CASES[name]} ({num(at(s, name, 'images'), ',')} images)",
            rate_range(at(s, name, "naiveImagesPerSecond")),
            rate_range(at(s, name, "programImagesPerSecond")),
            f"**{ratio_range(at(s, name, 'ratio'))}**",
            ratio_range(at(s, name, "ratioPerCpuSecond")),
            f"≥ {num(at(s, name, 'goal'), 'g', '×')}: " + ("met" if at(s, name, "met") else "**not met**"),
        ]
        for name in PREPARE_CASES
        if name in s
    ]
    load = [", ".join(num(x, ".2f") for x in doc.get(k) or []) or DASH for k in ("loadAverageStart", "loadAverageEnd")]
    codecs = ", ".join(f"{k} {v}" for k, v in (doc.get("codecs") or {}).items() if v) or DASH
    header = ["input", "naive loop, img/s (range)", "program, img/s (range)", "ratio (range)", "per CPU-second", "goal"]
    return lines(
        source("prepare_throughput", doc, "bench/prepare_throughput.py")
        + f": {num(doc.get('rounds'))} alternating rounds per input after a warm-up pair, the program with "
        f"{num(doc.get('workers'))} worker processes and fsynced shards; images/s are the medians over the rounds, "
        "the ratios the medians of the per-round ratios; ranges are over the rounds. Every run gave the same version.",
        "",
        *table(header, rows),
        "",
        f"Codecs: {codecs}. Load average (1, 5, 15 min) at the start {load[0]}, at the end {load[1]}.",
    )


def block_training(results: Results) -> str:
    doc = results.need("trainer_throughput")
    s, p = doc.get("summary") or {}, doc.get("programPrecision") or {}
    rates = p.get("imagesPerSecond") or {}
    rows = [
        [
            label,
            num(at(s, key, "baselineImagesPerSecond"), ".1f"),
            num(at(s, key, "programImagesPerSecond"), ".1f"),
            f"**{num(at(s, key, 'ratio'), '.2f', '×')}**",
        ]
        for label, key in (("end to end (decode, augment, train)", "end-to-end"), ("training loop alone", "loop"))
    ]
    e2e = s.get("endToEndVsCompute") or {}
    load = [", ".join(num(x, ".2f") for x in doc.get(k) or []) or DASH for k in ("loadAverageStart", "loadAverageEnd")]
    return lines(
        source("trainer_throughput", doc, "bench/trainer_throughput.py")
        + f": {text(doc.get('arch'))}, batch {num(doc.get('batchSize'))}, {num(doc.get('imageSize'))} px, "
        f"{num(doc.get('rounds'))} rounds of {num(doc.get('batchesPerMeasurement'))} batches per side; "
        "images/s are the medians over the rounds, the ratios the medians of the per-round ratios.",
        "",
        *table(["measured", "source document's loop, img/s", "program, img/s", "ratio"], rows),
        "",
        f"The program's precision: {text(p.get('name'))} (asked: {text(p.get('requested'))}, "
        f"reason: {text(p.get('reason'))}; its probe measured "
        + (", ".join(f"{k} {num(v, '.1f')} img/s" for k, v in rates.items()) or DASH)
        + f"). End to end over its own compute rate in that precision: median {num(e2e.get('median'), '.2f')} "
        f"(range {num(e2e.get('min'), '.2f')}–{num(e2e.get('max'), '.2f')}; goal ≥ 0.9). "
        f"Load average (1, 5, 15 min) at the start {load[0]}, at the end {load[1]}.",
    )


def block_grpc(results: Results) -> str:
    doc = results.need("grpc")
    rows = []
    for p in doc.get("points") or []:
        rest, grpc = p.get("rest") or {}, p.get("grpc") or {}
        ratio = grpc["rps"] / rest["rps"] if isinstance(grpc.get("rps"), int | float) and rest.get("rps") else None
        cells = [f"`{text(p.get('payload'))}`", num(p.get("clients"))]
        for side in (rest, grpc):
            cells += [
                num(side.get("rps"), ".0f"),
                f"{num(side.get('p50_ms'), '.1f')} / {num(side.get('p99_ms'), '.1f')}",
                num(side.get("server_cpu_ms_per_request"), ".2f"),
            ]
        rows.append([*cells, num(ratio, ".2f")])
    header = ["payload", "clients", "REST req/s", "REST p50 / p99 ms", "REST CPU ms", "gRPC req/s"]
    header += ["gRPC p50 / p99 ms", "gRPC CPU ms", "gRPC / REST req/s"]
    return lines(
        source("grpc", doc, "bench/grpc_vs_rest.py")
        + f": {text(doc.get('model'))}, {num(doc.get('seconds_per_point'), 'g')} s per point.",
        "",
        *table(header, rows),
    )


LONE_CLIENT_GOALS = {
    "c1P50VsKserve": "p50 at 1 connection, modelops / KServe",
    "c1P99VsKserve": "p99 at 1 connection, modelops / KServe",
    "c16VsLimit": "img/s at 16 connections, modelops / in-process limit",
    "overloadP99Ratio": "modelops p99 at 64 connections / at 4 (admitted requests)",
}


def point_cells(point: dict[str, Any], *keys: str) -> list[str]:
    """A load point's figures as "median (range)" cells, in the order of `keys`, then its server cores."""
    cells = [median_range(point.get(key), ".0f" if key == "rejected" else ".1f") for key in keys]
    return [*cells, median_range(point.get("serverCores"), ".2f")]


def block_lone_client(results: Results) -> str:
    doc = results.need("server_lone_client")
    s, settings = doc.get("summary") or {}, doc.get("settings") or {}
    rows = []
    for name, per_c in (s.get("points") or {}).items():
        for c, p in per_c.items():
            rows.append([f"`{name}`", text(c), *point_cells(p, "imagesPerSecond", "p50Ms", "p99Ms", "rejected")])
    header = ["server", "connections", "img/s", "p50 ms", "p99 ms", "503s", "server cores"]
    goals = []
    for key, what in LONE_CLIENT_GOALS.items():
        goal = at(s, "goals", key) or {}
        met = goal.get("met")
        verdict = DASH if met is None else ("**met**" if met else "**not met**")
        goals.append([what, median_range(at(s, "ratios", key), ".2f"), text(goal.get("target")), verdict])
    window = at(s, "ratios", "c1P50WindowVsAdaptive")
    return lines(
        source("server_lone_client", doc, "bench/server_lone_client.py")
        + f": {text(doc.get('model'))}; {text(doc.get('payload'))}; KServe {text(doc.get('kserve'))}; "
        f"{num(s.get('runs'))} runs of {num(settings.get('secondsPerPoint'))} s per point after "
        f"{num(settings.get('warmupSeconds'))} s of warm-up; each cell is the median over the runs and "
        "(in brackets) their range.",
        "",
        *table(header, rows),
        "",
        f"In-process limit (Pillow decode, preprocessing and ONNX Runtime in a tight loop, one image per run): "
        f"{median_range(s.get('limit'))} img/s. `modelops`: `{text(settings.get('modelops'))}`; "
        f"`modelops-window`: {text(settings.get('modelopsWindow'))}, whose p50 at 1 connection was "
        f"{median_range(window, '.2f', '×')} `modelops`'s.",
        "",
        *table(["figure", "median (range) over the runs", "target", "on the median"], goals),
    )


def block_server_photos(results: Results) -> str:
    doc = results.need("server_photos")
    s, settings = doc.get("summary") or {}, doc.get("settings") or {}
    rows = []
    for label, per_name in (s.get("points") or {}).items():
        for name, per_c in per_name.items():
            for c, p in per_c.items():
                rows.append([text(label), f"`{name}`", text(c), *point_cells(p, "imagesPerSecond", "p50Ms", "p99Ms")])
    payloads = [
        f"{label}: {text(p.get('source'))}, {num(p.get('jpegBytes'))} bytes ({num(p.get('bitsPerPixel'), '.2f')} bits "
        "per pixel)"
        for label, p in (doc.get("payloads") or {}).items()
    ]
    limits = [
        f"{label} {median_range(at(lim, 'pillow'))} with Pillow's full decode, {median_range(at(lim, 'ours'))} "
        "with our preprocessor"
        for label, lim in (s.get("limits") or {}).items()
    ]
    goals = []
    for key, goal in (s.get("goals") or {}).items():
        ratio = at(s, "ratios", key) or {}
        per_core = at(s, "ratios", f"{key} per core") or {}
        figure = median_range(ratio, ".2f", "×") if "median" in ratio else "unbounded"
        verdict = "**met**" if goal.get("met") else "**not met**"
        goals.append([key, figure, median_range(per_core, ".2f", "×") if "median" in per_core else DASH, verdict])
    return lines(
        source("server_photos", doc, "bench/server_photos.py")
        + f": {text(doc.get('model'))}; one 1920×1080 JPEG per request as base64 in an OIP JSON body; KServe "
        f"{text(doc.get('kserve'))}; {num(s.get('runs'))} runs of {num(settings.get('secondsPerPoint'))} s per "
        f"point after {num(settings.get('warmupSeconds'))} s of warm-up; each cell is the median over the runs "
        "and (in brackets) their range. Payloads: " + "; ".join(payloads) + ".",
        "",
        *table(["photo", "server", "connections", "img/s", "p50 ms", "p99 ms", "server cores"], rows),
        "",
        "In-process limits (decode, preprocessing and ONNX Runtime in a tight loop, one image per run), img/s: "
        + "; ".join(limits)
        + ".",
        "",
        *table(["photo, connections", "img/s, modelops / KServe", "img per core-second", "≥ 2× on the median"], goals),
    )


def block_search(results: Results) -> str:
    doc = results.need("search_algorithms")
    cfg = doc.get("config") or {}
    rows = []
    for name, s in (doc.get("summary") or {}).items():
        to_best = num(s.get("cpuSecondsToRandomsBestMedian"), ".1f")
        rows.append(
            [
                name,
                num(s.get("bestObjectiveMedian"), ".4f"),
                num(s.get("bestTestAccuracyMedian"), ".4f"),
                num(s.get("trainCpuSecondsMedian"), ".1f"),
                num(s.get("epochsTrainedMedian")),
                num(s.get("stoppedMedian")),
                f"**{num(s.get('bestPerCpuSecondVsRandom'), '.2f', 'x')}**",
                f"{to_best} ({text(s.get('reachedRandomsBest'))})",
                num(s.get("searchCpuSecondsMedian"), ".1f"),
            ]
        )
    header = ["strategy", "best (val)", "test acc. of it", "CPU-s", "epochs trained", "trials stopped"]
    header += ["best per CPU-s vs random", "to random's best (CPU-s, seeds)", "search's own CPU-s"]
    return lines(
        source("search_algorithms", doc, "bench/search_algorithms.py")
        + f": {num(cfg.get('seeds'))} seeds x {num(cfg.get('trials'))} trials x up to {num(cfg.get('epochs'))} "
        "epochs each, scikit-learn's `MLPClassifier` on digits (not the project's trainer: see the script); "
        "medians over the seeds. *best* is the validation accuracy of the best trial that ran to the end "
        "(what the operator would register); *CPU-s* is training CPU time; *best per CPU-s vs random* is the "
        "median per seed of (best / CPU-s) over random search's; *to random's best* is the training CPU-s "
        "until a finished trial matched random search's final best of the same seed.",
        "",
        *table(header, rows),
    )


def block_soak(results: Results) -> str:
    doc = results.need("soak")
    s = doc.get("summary") or {}
    rows = [
        [
            f"`{name}`",
            num(f.get("first5min"), ".1f"),
            num(f.get("last5min"), ".1f"),
            f"**{num(f.get('ratio'), '.2f')}**",
            f"{num(f.get('min'))}–{num(f.get('max'))}",
        ]
        for name, f in (s.get("figures") or {}).items()
    ]
    end = s.get("atEnd") or {}
    slopes = s.get("slopePer10Min") or {}
    return lines(
        source("soak", doc, "bench/soak.py")
        + f": {num(s.get('samples'))} samples over {num(s.get('seconds'), '.0f', ' s')}"
        + (f"; {doc['note']}" if doc.get("note") else "")
        + ". First and last 5 minutes are means over their samples.",
        "",
        *table(["sampled", "first 5 min", "last 5 min", "last / first", "range over the run"], rows),
        "",
        f"Requests {num(s.get('requests'), ',')}, errors {num(s.get('errors'))} (first 5 minutes "
        f"{num(s.get('firstRequests'), ',')} and {num(s.get('firstErrors'))}, last 5 minutes "
        f"{num(s.get('lastRequests'), ',')} and {num(s.get('lastErrors'))}); client p99 per 10-s window: median "
        f"{num(at(s, 'p99Ms', 'medianWindow'), '.0f', ' ms')}, "
        f"worst {num(at(s, 'p99Ms', 'worstWindow'), '.0f', ' ms')}. "
        f"Over the second half the operator's RSS grew {num(slopes.get('operator_rss_mib'), '+.2f', ' MiB')} and "
        f"its open files {num(slopes.get('operator_fds'), '+.2f')} per 10 minutes. Rollouts promoted: "
        f"{num(s.get('rolloutsPromoted'))}. At the end: {num(end.get('servers'))} server process "
        f"({num(end.get('servers_rss_mib'), '.0f', ' MiB')}, {num(end.get('servers_fds'))} fds), "
        f"{num(end.get('processes'))} processes on the machine.",
    )


def gpu_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One bench/gpu.sh result: a row per part (parity: per comparison; the server: per concurrency)."""
    trainer, libs, server = doc.get("trainer") or {}, doc.get("libraries") or {}, doc.get("server") or {}
    rates = at(trainer, "precision", "imagesPerSecond") or {}
    probe = ", ".join(f"{k} {num(v, ',.1f')} img/s" for k, v in rates.items())
    rows = [
        [
            "trainer",
            f"{text(trainer.get('arch'))}, {num(trainer.get('imageSize'))} px, "
            f"batch {num(trainer.get('batchSize'))}, {text(at(trainer, 'precision', 'name'))} "
            f"(probe: {probe or DASH})",
            f"{num(trainer.get('imagesPerSecond'), ',.1f')} img/s "
            f"(range {span(trainer.get('spread') or [], ',.1f', '')})",
        ]
    ]
    comparisons = {
        "torchVsOnnxRuntimeCpu": "PyTorch against ONNX Runtime's CPU provider",
        "cudaTf32On": "ONNX Runtime CUDA (TF32 on) against CPU",
        "cudaTf32Off": "ONNX Runtime CUDA (TF32 off) against CPU",
    }
    for key, what in comparisons.items():
        c = at(doc, "parity", key)
        if isinstance(c, dict):
            result = (
                text(c.get("error"))
                if "error" in c
                else (
                    f"max \\|diff\\| {num(c.get('maxAbsDiff'), '.2g')}, top-1 agreement {num(c.get('top1Agreement'))}"
                    + (f"; ran on {', '.join(c['providers'])}" if c.get("providers") else "")
                )
            )
            rows.append(["parity", f"{what}, {num(at(doc, 'parity', 'images'))} images", result])
    agreement = libs.get("agreement") or {}
    loaded = "; ".join(
        f"{k} {text(at(v, 'onnxruntime'))} / {text(at(v, 'torch'))}" for k, v in agreement.items()
    ) or text(at(libs, "loaded", "skipped"))
    rows.append(
        [
            "libraries",
            f"onnxruntime {text(libs.get('onnxruntime'))} built for CUDA {text(libs.get('onnxruntimeBuiltForCuda'))}; "
            f"torch {text(libs.get('torch'))} for CUDA {text(libs.get('torchVersionCuda'))}, "
            f"cuDNN {text(libs.get('torchCudnnVersion'))}",
            f"loaded by ONNX Runtime / PyTorch: {loaded}; agree: {text(libs.get('agree'))}",
        ]
    )
    if "error" in server:
        rows.append(["server", "batching against `--max-batch-size 1`", f"not run: {text(server['error'])}"])
    for point, s in (server.get("summary") or {}).items():
        connections = point.lstrip("c")
        rows.append(
            [
                f"server, {connections} connection{'' if connections == '1' else 's'}",
                f"batching (max {num(at(server, 'maxBatchSize', 'batching'))}) against `--max-batch-size 1`",
                f"{num(s.get('batchingImagesPerSecond'), '.1f')} against {num(s.get('batch1ImagesPerSecond'), '.1f')} "
                f"img/s (**{num(s.get('ratio'), '.2f', '×')}**); p99 {num(s.get('batchingP99Ms'), '.0f')} against "
                f"{num(s.get('batch1P99Ms'), '.0f')} ms",
            ]
        )
        if "batchingExactImagesPerSecond" in s:
            rows.append(
                [
                    f"server, {connections} connection{'' if connections == '1' else 's'}",
                    "batching with `--batch-shapes exact` (every batch size its own shape)",
                    f"{num(s.get('batchingExactImagesPerSecond'), '.1f')} img/s; p99 "
                    f"{num(s.get('batchingExactP99Ms'), '.0f')} ms",
                ]
            )
    return rows


def block_gpu(results: Results) -> str:
    out: list[str] = []
    for name in ("gpu", "gpu-cpu-fallback"):
        doc = results.get(name)
        if doc is None:
            out += [f"`bench/results/{name}.json`: none yet — no GPU machine has run `bench/gpu.sh`.", ""]
            continue
        failed = ", ".join(doc.get("failedParts") or []) or "none"
        out += [
            source(name, doc, "bench/gpu.sh") + f", device {text(doc.get('device'))}, GPU "
            f"{text(at(doc, 'machine', 'gpu'))}; {num(doc.get('seconds'), '.0f', ' s')}, failed parts: {failed}:",
            "",
            *table(["part", "what", "result"], gpu_rows(doc)),
            "",
            *([f"Note: {doc['note']}", ""] if doc.get("note") else []),
        ]
    return lines(*out[:-1])


def block_server_ceiling(results: Results) -> str:
    name = "server_ceiling"
    doc = results.need(name)
    s = doc.get("summary") or {}
    rows = []
    for server in ("batching", "batch1"):
        for c, p in (at(s, "points", server) or {}).items():
            per_request = ("frontEndCpuMsPerRequest", "workerCpuMsPerRequest", "batcherCpuMsPerRequest")
            rows.append(
                [f"`{server}`", c, median_range(p.get("imagesPerSecond"), ",.0f"), median_range(p.get("p99Ms"))]
                + [num(at(p, key, "median"), ".2f") for key in per_request]
            )
    header = ["server", "connections", "img/s", "p99 ms", "front end CPU-ms/req", "worker CPU-ms/req", "its batcher"]
    front, batcher = s.get("frontEndRequestsPerCoreSecond"), s.get("batcherRequestsPerCoreSecond")
    batch1 = gpu_batch1_at_64(results.get("gpu"))
    need = (
        f" The GPU goal, 3× the H200's batch 1 at 64 connections ({num(batch1, ',.0f')} img/s in "
        f"`bench/results/gpu.json`), is {num(3 * batch1, ',.0f')} requests a second: "
        f"{num(3 * batch1 / front, '.2f') if front else DASH}× what one core of this front end carries."
        if batch1
        else ""
    )
    return lines(
        source(name, doc, "bench/server_ceiling.py") + f"; medians (and ranges) of {num(s.get('runs'))} runs:",
        "",
        *table(header, rows),
        "",
        "Batching over batch 1: "
        + ", ".join(f"{c} {median_range(r, '.2f', '×')}" for c, r in (s.get("batchingOverBatch1") or {}).items())
        + f". One core carries {num(front, ',.0f')} requests a second of the front end's event loop and "
        f"{num(batcher, ',.0f')} of the worker's batcher thread.{need}{ceiling_baseline(doc)}",
    )


def ceiling_baseline(doc: dict[str, Any]) -> str:
    """A sentence on the baseline servers measured in the same runs (`--baseline`), if any."""
    base = doc.get("baseline") or {}
    s, b = doc.get("summary") or {}, base.get("summary") or {}
    if not b:
        return ""
    env = " ".join(f"{k}={v}" for k, v in (base.get("env") or {}).items())
    parts = []
    for c in at(s, "points", "batching") or {}:
        now, then = at(s, "points", "batching", c) or {}, at(b, "points", "batching", c) or {}
        parts.append(
            f"{c} connection{'s' if c != '1' else ''}: {num(at(now, 'frontEndCpuMsPerRequest', 'median'), '.2f')} "
            f"CPU-ms against {num(at(then, 'frontEndCpuMsPerRequest', 'median'), '.2f')}, p50 "
            f"{num(at(now, 'p50Ms', 'median'), '.2f')} ms against {num(at(then, 'p50Ms', 'median'), '.2f')}"
        )
    return (
        f" In the same runs, the servers with `{env}` (the baseline), `batching`'s front end per request at "
        + "; ".join(parts)
        + f"; one core of the baseline's front end carries {num(b.get('frontEndRequestsPerCoreSecond'), ',.0f')} "
        "requests a second."
    )


@dataclass(frozen=True)
class Block:
    """A generated block: the result files it reads (for --list) and how it is made."""

    reads: str
    render: Callable[[Results], str]


BLOCKS = {
    "headline": Block("the files of GOALS", block_headline),
    "summary": Block("every *.json", block_summary),
    "machines": Block("every *.json", block_machines),
    "images": Block("images.json", block_images),
    "preparation": Block("prepare_throughput.json", block_preparation),
    "training": Block("trainer_throughput.json", block_training),
    "grpc": Block("grpc.json", block_grpc),
    "server_lone_client": Block("server_lone_client.json", block_lone_client),
    "server_photos": Block("server_photos.json", block_server_photos),
    "search_algorithms": Block("search_algorithms.json", block_search),
    "gpu": Block("gpu.json, gpu-cpu-fallback.json", block_gpu),
    "server_ceiling": Block("server_ceiling.json, gpu.json", block_server_ceiling),
    "soak": Block("soak.json", block_soak),
}


# --- pages -----------------------------------------------------------------------------------


def check_markers(page: str, original: str) -> None:
    """Every block opened and closed in turn, none inside another."""
    inside: str | None = None
    for m in MARKER.finditer(original):
        closing, name = m.group(1) == "/", m.group(2)
        where = f"{page}:{original.count(chr(10), 0, m.start()) + 1}: bench:{name}"
        if closing and name != inside:
            raise ReportError(f"{where} closes a block that is not open")
        if not closing and inside is not None:
            raise ReportError(f"{where} opens inside bench:{inside}, which is not closed")
        inside = None if closing else name
    if inside is not None:
        raise ReportError(f"{page}: bench:{inside} is never closed (<!-- /bench:{inside} --> on a line of its own)")


def regenerate(page: str, original: str, results: Results) -> tuple[str, list[str]]:
    """The page with every block rendered, and the names of the blocks that changed."""
    check_markers(page, original)
    stale: list[str] = []

    def fill(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise ReportError(f"{page}: unknown block bench:{name}; known: {', '.join(BLOCKS)}")
        body = BLOCKS[name].render(results)
        if body != m.group("body"):
            stale.append(name)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, original), stale


def run(root: Path, check: bool) -> int:
    """Rewrite (or with `check`, compare) every page's blocks; the exit status."""
    results, stale = Results(root), []
    for page in PAGES:
        path = root / page
        if not path.exists():
            continue
        original = path.read_text()
        wanted, changed = regenerate(page, original, results)
        for name in changed:
            stale.append(f"{page}: bench:{name}")
        if not check and wanted != original:
            path.write_text(wanted)
            print(f"wrote {page} ({', '.join(f'bench:{n}' for n in changed)})")
    if check and stale:
        for block in stale:
            print(f"stale: {block} differs from what bench/results/ gives", file=sys.stderr)
        print("run: .venv/bin/python bench/report.py (and commit the pages)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each stale block")
    parser.add_argument("--list", action="store_true", help="print the blocks and the result files each reads")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository to work on (default: this one)")
    args = parser.parse_args(argv)
    if args.list:
        for name, block in BLOCKS.items():
            print(f"bench:{name:20} reads bench/results/{block.reads}")
        return 0
    try:
        return run(args.root, args.check)
    except ReportError as exc:
        print(f"bench/report.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
