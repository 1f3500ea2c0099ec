"""Replay an Amazon employee access log against a jitgate cluster as access requests.

Input: a CSV with the header
`id,RESOURCE,MGR_ID,ROLE_ROLLUP_1,ROLE_ROLLUP_2,ROLE_DEPTNAME,ROLE_TITLE,ROLE_FAMILY_DESC,ROLE_FAMILY,ROLE_CODE`
(requests.csv), or the same columns with `ACTION` in place of `id` (train.csv, where the
1-based data row number serves as the row id). Every value must be a non-negative integer.

Mapping of one row to an access request:

- principal attributes: `mgr_id`, `role_rollup_1`, `role_rollup_2`, `role_deptname`,
  `role_title`, `role_family_desc`, `role_family`, `role_code`, the row's values as strings;
- principal: `emp-` followed by the first 12 hex digits of the SHA-256 of those eight values
  joined by `|` in that order, so rows with the same attributes name the same principal;
- resource: `amazon:<RESOURCE>`; role: `read`; reason: `replay of access log row <id>`;
- context: drawn from `random.Random(f"{seed}:{row id}")`, so a run is repeatable and a row
  gets the same context wherever it sits in the file.
  `device_posture` is managed 85%, unmanaged 10%, unknown 5%.
  `hour_utc` is weighted towards business hours: 08-17 UTC weight 10, 06-07 weight 3,
  18-20 weight 4, 21-23 weight 2, 00-05 weight 1.
  The requested duration is 15 min 20%, 30 min 25%, 1 h 30%, 2 h 15%, 4 h 10%.
  `source` is `replay`;
- `Idempotency-Key: replay-<seed>-<row id>`, so running again with the same seed returns the
  requests of the first run instead of creating new ones.

Requests go through `AsyncClient` with `principal=` and `principal_attributes=`, so the API key
needs the `submit_for_others` scope (the `replay` profile has it). A 409 `conflict` naming a
`grant_id` (the entitlement already has an active grant) counts as `already_active`, not as
an error. Without an input file, a synthetic stream of rows in the same format is replayed.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from jitgate._client import AsyncClient
from jitgate._config import Connection
from jitgate.errors import Conflict, InvalidInput, JitError, Unavailable
from jitgate.models import DevicePosture, Effect, RequestContext

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG_PATH = REPO_ROOT.parent / "shared" / "data" / "amazon-access" / "requests.csv"

ID_COLUMN = "id"
LABEL_COLUMN = "ACTION"
RESOURCE_COLUMN = "RESOURCE"
ATTRIBUTE_COLUMNS = (
    "MGR_ID",
    "ROLE_ROLLUP_1",
    "ROLE_ROLLUP_2",
    "ROLE_DEPTNAME",
    "ROLE_TITLE",
    "ROLE_FAMILY_DESC",
    "ROLE_FAMILY",
    "ROLE_CODE",
)
DATA_COLUMNS = (RESOURCE_COLUMN, *ATTRIBUTE_COLUMNS)

ROLE = "read"
SOURCE = "replay"
DEFAULT_SEED = 7
DEFAULT_CONCURRENCY = 32
DEFAULT_SYNTHETIC_LIMIT = 5000
DEFAULT_TIMEOUT_S = 60.0
# A request that gets a 503 or no response is sent up to this many times in all.
MAX_ATTEMPTS = 5
RETRY_MAX_WAIT_S = 5.0
EXIT_INTERRUPTED = 130
# Stop submitting after this many transport failures in a row: the server is gone.
MAX_CONSECUTIVE_TRANSPORT_ERRORS = 100

DEVICE_POSTURE_WEIGHTS = ((DevicePosture.MANAGED, 85), (DevicePosture.UNMANAGED, 10), (DevicePosture.UNKNOWN, 5))


def _hour_weight(hour: int) -> int:
    if 8 <= hour <= 17:
        return 10
    if 18 <= hour <= 20:
        return 4
    if hour in (6, 7):
        return 3
    if hour >= 21:
        return 2
    return 1


HOUR_WEIGHTS = tuple((hour, _hour_weight(hour)) for hour in range(24))
DURATION_WEIGHTS_S = ((15 * 60, 20), (30 * 60, 25), (3600, 30), (2 * 3600, 15), (4 * 3600, 10))


@dataclass(frozen=True, slots=True)
class LogRow:
    """One access log row: `line` is its 1-based line in the file, 0 for synthetic rows."""

    row_id: str
    resource: str
    attributes: tuple[str, ...]
    line: int = 0


@dataclass(frozen=True)
class PlannedRequest:
    """The `AsyncClient.request_access` arguments for one log row."""

    principal: str
    principal_attributes: dict[str, str]
    resource: str
    role: str
    duration_s: int
    reason: str
    context: RequestContext
    idempotency_key: str


# --- input -----------------------------------------------------------------------------------


def read_log(path: Path, limit: int | None = None) -> list[LogRow]:
    """Read up to `limit` rows; raise `InvalidInput` naming the file, line and column of bad input."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: access log file not found", field="file", value=str(path)) from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the access log: {exc.strerror}", field="file", value=str(path)) from None

    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise _input_error(path, 1, None, "empty file, expected a header line")
            first_column = _check_header(path, [name.strip() for name in header])
            return _read_rows(path, reader, first_column, limit)
        except csv.Error as exc:
            raise _input_error(path, reader.line_num, None, f"malformed CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise _input_error(path, reader.line_num + 1, None, f"not UTF-8 text: {exc.reason}") from None


def _check_header(path: Path, header: list[str]) -> str:
    for first_column in (ID_COLUMN, LABEL_COLUMN):
        if header == [first_column, *DATA_COLUMNS]:
            return first_column
    expected = ",".join((ID_COLUMN, *DATA_COLUMNS))
    raise _input_error(
        path, 1, None, f"unexpected header {','.join(header)!r}; expected {expected!r} or with {LABEL_COLUMN} first"
    )


def _read_rows(path: Path, reader: Any, first_column: str, limit: int | None) -> list[LogRow]:
    column_names = (first_column, *DATA_COLUMNS)
    rows: list[LogRow] = []
    for record in reader:
        if limit is not None and len(rows) >= limit:
            break
        if not record:
            continue
        line = reader.line_num
        if len(record) != len(column_names):
            raise _input_error(path, line, None, f"expected {len(column_names)} columns, got {len(record)}")
        values = [value.strip() for value in record]
        for column, value in zip(column_names, values):
            if not (value.isascii() and value.isdigit()):
                raise _input_error(path, line, column, f"expected a non-negative integer, got {value!r}")
        row_id = values[0] if first_column == ID_COLUMN else str(len(rows) + 1)
        rows.append(LogRow(row_id=row_id, resource=values[1], attributes=tuple(values[2:]), line=line))
    return rows


def _input_error(path: Path, line: int, column: str | None, message: str) -> InvalidInput:
    where = f"{path}, line {line}" + (f", column {column}" if column else "")
    details: dict[str, Any] = {"field": "file", "value": str(path), "line": line}
    if column:
        details["column"] = column
    return InvalidInput(f"{where}: {message}", **details)


def synthetic_log(count: int, seed: int = DEFAULT_SEED) -> list[LogRow]:
    """Generate `count` rows in the access log format: a few thousand resources with a long
    tail of rare ones, and a pool of employees so that principals repeat."""
    rng = random.Random(f"synthetic:{seed}")
    resource_ids = rng.sample(range(1, 320_000), 4000)
    # Weight 1/rank: a handful of popular resources and many rare ones, as in the real log.
    resource_weights = [1.0 / (rank + 1) for rank in range(len(resource_ids))]
    employees = [_synthetic_employee(rng) for _ in range(1500)]
    chosen_resources = rng.choices(resource_ids, weights=resource_weights, k=count)
    chosen_employees = rng.choices(employees, k=count)
    return [
        LogRow(row_id=str(index + 1), resource=str(resource), attributes=employee)
        for index, (resource, employee) in enumerate(zip(chosen_resources, chosen_employees))
    ]


def _synthetic_employee(rng: random.Random) -> tuple[str, ...]:
    department = rng.randrange(117_000, 125_000)
    title = rng.randrange(117_800, 312_000)
    return tuple(
        str(value)
        for value in (
            rng.randrange(1, 312_000),  # MGR_ID
            rng.choice((117_961, 117_902, 91_261, 118_315)),  # ROLE_ROLLUP_1
            rng.randrange(117_900, 119_000),  # ROLE_ROLLUP_2
            department,  # ROLE_DEPTNAME
            title,  # ROLE_TITLE
            rng.randrange(4_600, 312_000),  # ROLE_FAMILY_DESC
            rng.choice((290_919, 308_574, 118_424, 19_721, 118_398)),  # ROLE_FAMILY
            title + 2,  # ROLE_CODE follows ROLE_TITLE one to one in the real log
        )
    )


# --- mapping ---------------------------------------------------------------------------------


def principal_attributes(row: LogRow) -> dict[str, str]:
    return {column.lower(): value for column, value in zip(ATTRIBUTE_COLUMNS, row.attributes)}


def principal_id(attribute_values: Sequence[str]) -> str:
    """Return `emp-` + the first 12 hex digits of SHA-256 over the eight attribute values joined by `|`."""
    digest = hashlib.sha256("|".join(attribute_values).encode()).hexdigest()
    return f"emp-{digest[:12]}"


def plan_request(row: LogRow, seed: int = DEFAULT_SEED) -> PlannedRequest:
    # A string seed is hashed with SHA-512, so neighbouring seeds and rows give unrelated streams.
    rng = random.Random(f"{seed}:{row.row_id}")
    device_posture = _weighted_choice(rng, DEVICE_POSTURE_WEIGHTS)
    hour_utc = _weighted_choice(rng, HOUR_WEIGHTS)
    duration_s = _weighted_choice(rng, DURATION_WEIGHTS_S)
    return PlannedRequest(
        principal=principal_id(row.attributes),
        principal_attributes=principal_attributes(row),
        resource=f"amazon:{row.resource}",
        role=ROLE,
        duration_s=duration_s,
        reason=f"replay of access log row {row.row_id}",
        context=RequestContext(source=SOURCE, device_posture=device_posture, hour_utc=hour_utc),
        idempotency_key=f"replay-{seed}-{row.row_id}",
    )


def _weighted_choice(rng: random.Random, weighted: Sequence[tuple[Any, int]]) -> Any:
    values = [value for value, _ in weighted]
    weights = [weight for _, weight in weighted]
    return rng.choices(values, weights=weights, k=1)[0]


# --- summary ---------------------------------------------------------------------------------


@dataclass
class Summary:
    """Counters of one replay run. Latencies cover every request that got an HTTP response, of any status."""

    source: str
    seed: int
    synthetic: bool = False
    planned: int = 0
    submitted: int = 0
    effects: Counter[str] = field(default_factory=Counter)
    already_active: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    stopped_reason: str | None = None

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def completed(self) -> int:
        return sum(self.effects.values()) + self.already_active + self.failed

    @property
    def throughput_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_percentile_ms(self, percentile: float) -> float | None:
        return percentile_nearest_rank(self.latencies_ms, percentile)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "synthetic": self.synthetic,
            "seed": self.seed,
            "planned": self.planned,
            "submitted": self.submitted,
            "completed": self.completed,
            "allow": self.effects[Effect.ALLOW.value],
            "deny": self.effects[Effect.DENY.value],
            "review": self.effects[Effect.REVIEW.value],
            "already_active": self.already_active,
            "retries": self.retries,
            "errors": self.failed,
            "errors_by_kind": dict(sorted(self.errors.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_per_s": round(self.throughput_per_s, 1),
            "latency_p50_ms": _round_or_none(self.latency_percentile_ms(50)),
            "latency_p99_ms": _round_or_none(self.latency_percentile_ms(99)),
            "stopped_reason": self.stopped_reason,
        }

    def format_text(self) -> str:
        data = self.to_dict()
        label = "synthetic stream" if self.synthetic else self.source
        lines = [
            f"replay of {label} (seed {self.seed})",
            f"  requests        {data['completed']}",
            f"  allow           {data['allow']}{_share(data['allow'], data['completed'])}",
            f"  deny            {data['deny']}{_share(data['deny'], data['completed'])}",
            f"  review          {data['review']}{_share(data['review'], data['completed'])}",
            f"  already_active  {data['already_active']}",
            f"  retries         {data['retries']} (503 or no response, sent again with the same idempotency key)",
            f"  errors          {data['errors']}",
            f"  throughput      {data['throughput_per_s']:.1f} requests/s over {self.elapsed_s:.1f} s",
            f"  latency         p50 {_format_ms(data['latency_p50_ms'])}, p99 {_format_ms(data['latency_p99_ms'])}",
        ]
        if self.errors:
            lines.append("  errors by kind:")
            lines.extend(f"    {kind}: {count}" for kind, count in sorted(self.errors.items()))
        if self.stopped_reason:
            lines.append(f"  stopped early: {self.stopped_reason}")
        return "\n".join(lines)


def percentile_nearest_rank(values: Sequence[float], percentile: float) -> float | None:
    """Return the nearest-rank percentile (the smallest value with at least p% of values at or below it)."""
    if not values:
        return None
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    ordered = sorted(values)
    rank = -(-len(ordered) * percentile // 100)  # ceil without floats for whole percentiles
    return ordered[max(1, int(rank)) - 1]


def _round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _share(count: int, total: int) -> str:
    return f" ({100.0 * count / total:.1f}%)" if total else ""


def _format_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def error_kind(error: JitError) -> str:
    """Return the key of an error in `Summary.errors`: `<HTTP status> <code>`, or `no response (<cause>)`."""
    status = getattr(error, "status", None)
    if status is None:
        return f"no response ({error.details.get('cause', error.code)})"
    return f"{status} {error.code}"


# --- progress --------------------------------------------------------------------------------


class ProgressBar:
    """Plain-text progress on a stream: redrawn in place on a terminal, one line per interval otherwise."""

    WIDTH = 24

    def __init__(self, total: int, label: str, stream: TextIO, *, interval_s: float | None = None) -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.in_place = bool(getattr(stream, "isatty", lambda: False)())
        if interval_s is None:
            interval_s = 0.2 if self.in_place else 5.0
        self.interval_s = interval_s
        self.last_draw_s = 0.0

    def update(self, summary: Summary, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw_s < self.interval_s:
            return
        self.last_draw_s = now
        line = self.render(summary)
        if self.in_place:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, summary: Summary) -> None:
        self.update(summary, force=True)
        if self.in_place:
            self.stream.write("\n")
            self.stream.flush()

    def render(self, summary: Summary) -> str:
        done = summary.completed
        fraction = done / self.total if self.total else 1.0
        filled = int(self.WIDTH * min(1.0, fraction))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return (
            f"{self.label} [{bar}] {done}/{self.total} {100 * fraction:3.0f}% "
            f"{summary.throughput_per_s:.0f} req/s allow {summary.effects[Effect.ALLOW.value]} "
            f"deny {summary.effects[Effect.DENY.value]} review {summary.effects[Effect.REVIEW.value]} "
            f"active {summary.already_active} errors {summary.failed}"
        )


# --- running ---------------------------------------------------------------------------------


async def replay(
    rows: Sequence[LogRow],
    client: AsyncClient,
    summary: Summary,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate_per_s: float = 0.0,
    progress: ProgressBar | None = None,
) -> Summary:
    """Submit one request per row with at most `concurrency` in flight and, when `rate_per_s` > 0,
    at most that many started per second. Fills and returns `summary`."""
    if concurrency < 1:
        raise InvalidInput(f"concurrency must be at least 1, got {concurrency}", field="concurrency", value=concurrency, limit=1)
    if rate_per_s < 0:
        raise InvalidInput(f"rate must be 0 (unlimited) or positive, got {rate_per_s}", field="rate", value=rate_per_s)

    summary.planned = len(rows)
    pending = iter(enumerate(rows))
    started_s = time.perf_counter()
    consecutive_transport_errors = 0

    async def submit_with_retries(planned: Any) -> Any:
        """Send one request, and send it again after a 503 or a lost response.

        The retry reuses the idempotency key, so the server stores the request once. It waits for the
        server's Retry-After, or an exponential backoff when there is none.
        """
        for attempt in range(MAX_ATTEMPTS):
            try:
                return await client.request_access(
                    planned.resource,
                    planned.role,
                    planned.duration_s,
                    planned.reason,
                    principal=planned.principal,
                    principal_attributes=planned.principal_attributes,
                    context=planned.context,
                    idempotency_key=planned.idempotency_key,
                )
            except Unavailable as error:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
                summary.retries += 1
                await asyncio.sleep(min(RETRY_MAX_WAIT_S, max(error.retry_after_s or 0, 0.25 * 2**attempt)))
        raise AssertionError("unreachable")

    async def submit(row: LogRow) -> None:
        nonlocal consecutive_transport_errors
        planned = plan_request(row, summary.seed)
        request_started_s = time.perf_counter()
        try:
            result = await submit_with_retries(planned)
        except Conflict as error:
            summary.latencies_ms.append(1000 * (time.perf_counter() - request_started_s))
            consecutive_transport_errors = 0
            if "grant_id" in error.details:
                summary.already_active += 1
            else:
                summary.errors[error_kind(error)] += 1
        except JitError as error:
            if getattr(error, "status", None) is None:
                consecutive_transport_errors += 1
            else:
                consecutive_transport_errors = 0
                summary.latencies_ms.append(1000 * (time.perf_counter() - request_started_s))
            summary.errors[error_kind(error)] += 1
        else:
            consecutive_transport_errors = 0
            summary.latencies_ms.append(1000 * (time.perf_counter() - request_started_s))
            summary.effects[result.request.decision.effect.value] += 1

    async def worker() -> None:
        for index, row in pending:
            if consecutive_transport_errors >= MAX_CONSECUTIVE_TRANSPORT_ERRORS:
                summary.stopped_reason = (
                    f"{consecutive_transport_errors} requests in a row got no response from {client.base_url}"
                )
                return
            if rate_per_s > 0:
                delay_s = started_s + index / rate_per_s - time.perf_counter()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
            summary.submitted += 1
            await submit(row)
            summary.elapsed_s = time.perf_counter() - started_s
            if progress is not None:
                progress.update(summary)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(rows))))))
    summary.elapsed_s = time.perf_counter() - started_s
    if progress is not None:
        progress.finish(summary)
    return summary


def load_rows(file: Path | None, limit: int | None, seed: int, *, stderr: TextIO) -> tuple[list[LogRow], str, bool]:
    """Return (rows, source label, synthetic): the given file, else the default log, else synthetic rows."""
    if file is not None:
        return read_log(file, limit), str(file), False
    if DEFAULT_LOG_PATH.is_file():
        return read_log(DEFAULT_LOG_PATH, limit), str(DEFAULT_LOG_PATH), False
    count = DEFAULT_SYNTHETIC_LIMIT if limit is None else limit
    print(
        f"replay: access log {DEFAULT_LOG_PATH} not found and no --file given; "
        f"replaying {count} synthetic rows instead",
        file=stderr,
    )
    return synthetic_log(count, seed), "synthetic", True


def run(
    connection: Connection,
    *,
    file: Path | None = None,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate_per_s: float = 0.0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    json_output: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """Run `jitgate replay`: print progress on stderr and the summary on stdout; return the exit code.

    Returns 1 when any request failed or the run stopped early, 130 after Ctrl-C, else 0. Raises `InvalidInput` for a bad input file or
    option and `Unavailable` when the server cannot be reached before the first request.
    `transport` replaces the network, for tests.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if limit is not None and limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}", field="limit", value=limit, limit=1)
    rows, source, synthetic = load_rows(file, limit, seed, stderr=stderr)
    summary = Summary(source=source, seed=seed, synthetic=synthetic)
    label = "replay synthetic" if synthetic else f"replay {Path(source).name}"
    progress = ProgressBar(len(rows), label, stderr)
    interrupted = False
    try:
        asyncio.run(_run_async(connection, rows, summary, concurrency, rate_per_s, timeout_s, progress, transport))
    except KeyboardInterrupt:
        # Print what was measured so far; requests in flight at Ctrl-C are not counted.
        interrupted = True
        summary.stopped_reason = "interrupted"
        print(file=stderr)

    if json_output:
        print(json.dumps(summary.to_dict()), file=stdout)
    else:
        print(summary.format_text(), file=stdout)
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if summary.failed or summary.stopped_reason else 0


async def _run_async(
    connection: Connection,
    rows: Iterable[LogRow],
    summary: Summary,
    concurrency: int,
    rate_per_s: float,
    timeout_s: float,
    progress: ProgressBar,
    transport: httpx.AsyncBaseTransport | None,
) -> None:
    client = AsyncClient(
        connection.api_url,
        connection.api_key,
        timeout_s=timeout_s,
        transport=transport,
        max_connections=max(1, concurrency),
    )
    async with client:
        # Raise one clear Unavailable when nothing listens, instead of one error per row. A
        # non-2xx health status is ignored here because the per-request errors will show it.
        await client.healthz()
        await replay(list(rows), client, summary, concurrency=concurrency, rate_per_s=rate_per_s, progress=progress)
