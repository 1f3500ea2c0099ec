"""The failover section of loadtests/RESULTS.md: table, targets and throughput chart.

The section lives between `<!-- failover:begin -->` and `<!-- failover:end -->`, so another
script can write the benchmark section of the same file. Only the text between the markers is
replaced, and the markers are appended when the file lacks them.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BEGIN_MARKER = "<!-- failover:begin -->"
END_MARKER = "<!-- failover:end -->"
ACTOR_SCENARIOS = ("risk", "policy", "ledger")
REVOKE_SCENARIOS = ("risk", "policy", "ledger", "replica")
OUTAGE_SCENARIOS = ("redis", "node")
MAX_ACTOR_RECOVERY_S = 2.0
MAX_REVOKE_P99_MS = 100.0
MAX_REVOKE_MS = 1000.0


@dataclass
class ScenarioReport:
    figures: dict[str, Any]
    series: dict[str, dict[int, int]]
    recovery_s: float | None


@dataclass(frozen=True)
class Target:
    scenario: str
    statement: str
    met: bool
    observed: str


def evaluate_targets(reports: Sequence[ScenarioReport]) -> list[Target]:
    """Check each scenario's figures against the failover targets; one entry per target and scenario."""
    targets: list[Target] = []
    for report in reports:
        f = report.figures
        name = f["scenario"]
        targets.append(Target(name, "no acknowledged request or grant lost", f["lost"] == 0, f"lost {f['lost']}"))
        targets.append(Target(name, "check never true after expires_at", f["check_true_after_expiry"] == 0,
                              f"{f['check_true_after_expiry']} of {f['checks_after_expiry']} responses received after expiry, "
                              f"{f['check_true_sent_after_expiry']} of them sent after it"))
        ends_ok = f["terminal_missing"] == 0 and f["terminal_duplicated"] == 0
        targets.append(Target(name, "one expired/revoked event per ended grant", ends_ok,
                              f"missing {f['terminal_missing']}, duplicated {f['terminal_duplicated']} "
                              f"of {f['grants_expired_checked']}"))
        if name in ACTOR_SCENARIOS:
            recovery = f["recovery_s"]
            targets.append(Target(name, f"recovery at most {MAX_ACTOR_RECOVERY_S:.0f} s",
                                  recovery is not None and recovery <= MAX_ACTOR_RECOVERY_S, f"{recovery} s"))
        if name == "replica":
            targets.append(Target(name, "a replica kill fails only requests in flight at the kill",
                                  f["failed_after_kill"] == 0,
                                  f"{f['failed_in_flight']} of {f['in_flight_at_kill']} in flight failed "
                                  f"(process gone {f.get('process_gone_after_ms')} ms after the signal), "
                                  f"{f['failed_after_kill']} sent later failed"))
            targets.append(Target(name, "replica count back to 2", f.get("replicas_restored_s") is not None,
                                  f"after {f.get('replicas_restored_s')} s"))
        if name == "redis":
            targets.append(Target(name, "no 5xx other than 503 with Retry-After", f["errors_5xx"] == 0,
                                  f"{f['errors_5xx']} other 5xx, {f['unavailable_503']} 503"))
        if name in REVOKE_SCENARIOS:
            p99, peak = f["revoke_late_p99_ms"], f["revoke_late_max_ms"]
            removed = f["acl_user_not_removed"] == 0
            targets.append(Target(name, f"revoke lateness p99 at most {MAX_REVOKE_P99_MS:.0f} ms",
                                  removed and p99 is not None and p99 <= MAX_REVOKE_P99_MS, f"{p99} ms"))
            targets.append(Target(name, f"revoke lateness max at most {MAX_REVOKE_MS:.0f} ms",
                                  removed and peak is not None and peak <= MAX_REVOKE_MS, f"{peak} ms"))
        if name in OUTAGE_SCENARIOS:
            after = f.get("revoke_after_recovery_max_ms")
            within = f["acl_user_not_removed"] == 0 and (after is None or after <= MAX_REVOKE_MS)
            if after is not None and after < 0:
                removal = f"all removed before recovery, the last {-after} ms before it"
            else:
                removal = f"{after} ms after recovery"
            targets.append(Target(name, f"access removed at most {MAX_REVOKE_MS:.0f} ms after recovery", within,
                                  f"{removal}, outage {f.get('outage_s')} s, "
                                  f"{f.get('revoke_deadlines_in_outage', 0)} deadlines in the outage"))
    return targets


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def render_table(reports: Sequence[ScenarioReport]) -> list[str]:
    lines = [
        "| scenario | killed | sent | acked | lost | 503 | other 5xx | no response | recovery s | "
        "true after expiry (sent after) | revoke p50 / p99 / max ms | outage s / after recovery ms | load avg 1 min |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for report in reports:
        f = report.figures
        outage = "-"
        if f.get("outage_s") is not None:
            outage = f"{f['outage_s']} / {_cell(f.get('revoke_after_recovery_max_ms'))}"
        lines.append(
            f"| {f['scenario']} | {f['killed']} | {f['sent']} | {f['acknowledged']} | {f['lost']} | {f['unavailable_503']} | "
            f"{f['errors_5xx']} | {f['transport_errors']} | {_cell(f['recovery_s'])} | "
            f"{f['check_true_after_expiry']} ({f['check_true_sent_after_expiry']}) | "
            f"{_cell(f['revoke_late_p50_ms'])} / {_cell(f['revoke_late_p99_ms'])} / {_cell(f['revoke_late_max_ms'])} | "
            f"{outage} | {' to '.join(str(v) for v in f['load_average_1m'])} |"
        )
    return lines


def render_chart(path: Path, reports: Sequence[ScenarioReport], bin_s: float = 1.0) -> None:
    """Plot responses per second around each kill, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = (len(reports) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(11, 2.8 * rows), squeeze=False, sharex=True)
    styles = (("ok", "requests answered (2xx-4xx)", "tab:green", "-"), ("unavailable", "requests 503 with Retry-After", "tab:orange", "-"),
              ("failed", "requests other 5xx or no response", "tab:red", "-"), ("checks", "checks answered", "tab:gray", ":"))
    for axis, report in zip(axes.flat, reports):
        bins = sorted({b for counts in report.series.values() for b in counts})
        if bins:
            x = list(range(bins[0], bins[-1] + 1))
            for key, label, color, line_style in styles:
                counts = report.series.get(key, {})
                axis.plot([b * bin_s for b in x], [counts.get(b, 0) / bin_s for b in x], label=label, color=color,
                          linestyle=line_style, linewidth=1.2)
        axis.axvline(0, color="black", linestyle="--", linewidth=1)
        if report.recovery_s is not None:
            axis.axvline(report.recovery_s, color="tab:blue", linestyle=":", linewidth=1)
        axis.set_title(f"{report.figures['scenario']}: {report.figures['killed']}", fontsize=9)
        axis.set_ylabel("responses/s")
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(reports):]:
        axis.set_visible(False)
    for axis in axes[-1]:
        axis.set_xlabel("seconds from the kill (dashed); dotted: first success on the affected shard")
    axes.flat[0].legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render_section(reports: Sequence[ScenarioReport], *, failed: dict[str, str], chart_name: str, run_options: dict[str, Any],
                   load_average: tuple[Sequence[float], Sequence[float]], elapsed_s: float, acl_poll_ms: float,
                   check_offsets_ms: Sequence[int], api_url: str, finished_at: datetime) -> str:
    targets = evaluate_targets(reports)
    start, end = load_average
    lines = [
        "## Failover under load",
        "",
        f"`python -m loadtests.failover`, run {finished_at:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({platform.machine()}, Python {platform.python_version()}), {elapsed_s:.0f} s in all. The cluster was "
        f"started with `cluster.bootstrap.up` (API at {api_url}) and shared the machine with Locust, which ran pinned "
        f"to CPU 1. Load average (1, 5, 15 min): {start[0]:.2f} / {start[1]:.2f} / {start[2]:.2f} at the start, "
        f"{end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f} at the end; other work on the machine was not stopped, so the "
        "times below are rough.",
        "",
        f"Per scenario: {run_options['submit_rate_per_s']:.0f} access requests/s for {run_options['submit_window_s']:.0f} s "
        f"(rows of requests.csv mapped as `jitgate replay` maps them, durations 3-8 s, "
        f"{100 * run_options['target_share']:.0f}% on unique `redis://target/` prefixes), checks of every grant at "
        f"{', '.join(f'{o:+d}' for o in check_offsets_ms)} ms from its deadline, and the kill "
        f"{run_options['kill_at_s']:.0f} s into the load. The state Redis stayed down for "
        f"{run_options['redis_outage_s']:.0f} s.",
        "",
        *render_table(reports),
        "",
        *[f"Scenario {name} failed to run: {error}\n" for name, error in failed.items()],
        "Targets:",
        "",
    ]
    for target in targets:
        lines.append(f"- {'met' if target.met else '**not met**'}: {target.scenario}, {target.statement} ({target.observed})")
    lines += [
        "",
        f"![responses per second around each kill]({chart_name})",
        "",
        "How each figure is measured:",
        "",
        "- `lost`: every acknowledged request (201 or 200 to `POST /v1/requests`) is read back with "
        "`GET /v1/requests/{id}` and its grant with `GET /v1/grants/{id}`; a missing record, another state or "
        "another grant id counts.",
        "- `503`: responses 503 with `Retry-After`; `other 5xx`: every other 5xx; `no response`: connection "
        "errors and timeouts (20 s). Both count access requests and checks.",
        "- `recovery s`: from the kill to the first 2xx response of a request sent after the kill to the affected "
        "shard (policy shard 0, ledger shard 0, the shards whose primary ran on the killed node, or any request).",
        "- replica kill, in flight: a request not answered before the SIGKILL and sent before the killed process "
        "was gone (exited or a zombie, polled every 1 ms; the gap is printed with the target). The process keeps "
        "its sockets until the kernel has torn it down, so such a request still reached it.",
        "- `true after expiry`: `POST /v1/check` responses `allowed: true` received after the grant's `expires_at`, "
        "compared with the time the response arrived. In brackets: those whose request was sent after `expires_at`. "
        "The API states no evaluation time, so a response counted only in the first number was sent before the "
        "deadline and may have been correct when the server evaluated it.",
        f"- `revoke`: a thread polls `ACL USERS` on the target Redis every {acl_poll_ms:.0f} ms; lateness is "
        "the first reply without the grant's ACL user minus the deadline, so it is an upper bound with the poll "
        "period as error. `after recovery`: the same, minus the time the Redis or the ledger shard was back; a "
        "negative value means the access was gone before that, removed by the shard's replica.",
        "- `load avg 1 min`: the machine's 1-minute load average before and after the scenario.",
        "- Ended grants: in `GET /v1/audit`, each grant of the run whose deadline passed has exactly one "
        "`expired` or `revoked` event.",
    ]
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    """Replace the text between the failover markers, or append the markers and the section."""
    block = f"{BEGIN_MARKER}\n{section.rstrip()}\n{END_MARKER}"
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begin != -1 and end > begin:
        return text[:begin] + block + text[end + len(END_MARKER):]
    if not text or text.endswith("\n\n"):
        separator = ""
    elif text.endswith("\n"):
        separator = "\n"
    else:
        separator = "\n\n"
    return f"{text}{separator}{block}\n"


def write_results(results_path: Path, chart_path: Path, reports: Sequence[ScenarioReport], **context: Any) -> None:
    render_chart(chart_path, reports)
    section = render_section(reports, chart_name=os.path.relpath(chart_path, results_path.parent),
                             finished_at=datetime.now(UTC), **context)
    # Read just before writing, so a section the benchmark script wrote meanwhile is kept.
    text = results_path.read_text() if results_path.exists() else ""
    temporary = results_path.with_suffix(".failover.tmp")
    temporary.write_text(replace_section(text, section))
    temporary.replace(results_path)
