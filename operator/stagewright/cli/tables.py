"""What the CLI shows about an ImageBuild: pure rows from the object, rendered with rich.

Status fields beyond the core ones (``cache``, the largest layers, ``checks``, ``sizeDelta``,
``history``) come from newer operators: each is shown when present, in whatever shape it has
(list or map), and skipped when absent, so one CLI reads old and new statuses alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from rich.table import Table

from stagewright.api.triggers import BuildCause
from stagewright.status import human_size
from stagewright.triggers.plan import describe_causes

#: Status keys a newer operator may use for the largest layers, first match wins.
LARGEST_LAYER_KEYS = ("layersTop", "largestLayers", "topLayers")
NONE = "-"


def status_of(build: Mapping[str, Any]) -> dict[str, Any]:
    """The status as a dict (an empty one before the operator wrote any)."""
    return dict(build.get("status") or {})


def target_of(build: Mapping[str, Any]) -> str:
    """The stage built: spec.target, or the Dockerfile's last stage."""
    return str((build.get("spec") or {}).get("target") or "(last stage)")


def cache_text(status: Mapping[str, Any]) -> str | None:
    """``3 hits, 1 miss`` from status.cache, when the operator reports it."""
    cache = status.get("cache")
    if not isinstance(cache, Mapping) or ("hits" not in cache and "misses" not in cache):
        return None
    hits, misses = int(cache.get("hits") or 0), int(cache.get("misses") or 0)
    return f"{hits} hit{'s' * (hits != 1)}, {misses} miss{'es' * (misses != 1)}"


def size_text(status: Mapping[str, Any]) -> str | None:
    """The image size for people, with the change since the last build when known."""
    size = status.get("sizeHuman") or (human_size(int(status["size"]))
                                       if isinstance(status.get("size"), int) else None)
    if size is None:
        return None
    delta = status.get("sizeDelta")
    if isinstance(delta, int) and not isinstance(delta, bool):
        sign = "+" if delta >= 0 else "-"
        return f"{size} ({sign}{human_size(abs(delta))})"
    if isinstance(delta, str) and delta:
        return f"{size} ({delta})"
    return str(size)


def largest_layers(status: Mapping[str, Any]) -> list[str]:
    """``12.0MiB  RUN make`` per layer, from whichever key the operator uses."""
    layers = next((status[k] for k in LARGEST_LAYER_KEYS if status.get(k)), None)
    if not isinstance(layers, Sequence) or isinstance(layers, str):
        return []
    return [_layer_line(layer) for layer in layers]


def _layer_line(layer: Any) -> str:
    if not isinstance(layer, Mapping):
        return str(layer)
    size = layer.get("sizeHuman") or (human_size(int(layer["size"]))
                                      if isinstance(layer.get("size"), int) else "?")
    made_by = (layer.get("instruction") or layer.get("createdBy") or layer.get("command")
               or layer.get("digest") or "")
    platform = f"{layer['platform']}  " if layer.get("platform") else ""
    return f"{platform}{size}  {made_by}".rstrip()


def platform_lines(status: Mapping[str, Any]) -> list[str]:
    """One line per platform of a multi-platform build: ``linux/arm64  Succeeded  1.0MiB
    sha256:0123456789ab  cache 2/2  pod web-1-linux-arm64-1``, and a failed one's reason
    and message."""
    platforms = status.get("platforms")
    if not isinstance(platforms, Sequence) or isinstance(platforms, str):
        return []
    lines = []
    for entry in platforms:
        if not isinstance(entry, Mapping):
            lines.append(str(entry))
            continue
        phase = str(entry.get("phase") or "?")
        if entry.get("reason") and entry.get("reason") not in (phase, "Building"):
            phase += f" ({entry['reason']})"
        size = human_size(int(entry["size"])) if isinstance(entry.get("size"), int) else None
        cache = entry.get("cache")
        summary = cache.get("summary") if isinstance(cache, Mapping) else None
        parts = [str(entry.get("platform") or "?"), phase, size,
                 str(entry["digest"])[:19] if entry.get("digest") else None,
                 f"cache {summary}" if summary else None,
                 f"pod {entry['pod']}" if entry.get("pod") else None]
        line = "  ".join(part for part in parts if part)
        if entry.get("message") and entry.get("phase") in ("Pending", "Failed"):
            line += f": {entry['message']}"
        lines.append(line)
    return lines


def platforms_text(build: Mapping[str, Any]) -> str | None:
    """The PLATFORMS column: built of asked, and each platform (``1/2 amd64,arm64``)."""
    asked = (build.get("spec") or {}).get("platforms")
    if not isinstance(asked, Sequence) or isinstance(asked, str) or not asked:
        return None
    names = ",".join(str(p).removeprefix("linux/") for p in asked)
    summary = status_of(build).get("platformSummary")
    return f"{summary} {names}" if summary else names


def check_lines(status: Mapping[str, Any]) -> list[str]:
    """``stage test: Passed (12s)`` per check stage, from a list or a map."""
    checks = status.get("checks")
    if isinstance(checks, Mapping):
        checks = [{"stage": stage, **(value if isinstance(value, Mapping) else
                                      {"result": value})} for stage, value in checks.items()]
    if not isinstance(checks, Sequence) or isinstance(checks, str):
        return []
    lines = []
    for check in checks:
        if not isinstance(check, Mapping):
            lines.append(str(check))
            continue
        result = check.get("result") or check.get("phase") or check.get("status") or "?"
        duration = check.get("duration") or (f"{check['durationSeconds']}s"
                                             if check.get("durationSeconds") is not None
                                             else None)
        lines.append(f"{check.get('stage') or check.get('name') or '?'}: {result}"
                     + (f" ({duration})" if duration else ""))
    return lines


def cause_text(causes: Any) -> str | None:
    """Why a build ran, for people (``new commit a1b2… (was 0f9e…)``), from status.causes or
    a history entry's; None when absent or in a shape this CLI does not know."""
    if not isinstance(causes, Sequence) or isinstance(causes, str) or not causes:
        return None
    try:
        return describe_causes([BuildCause.model_validate(cause) for cause in causes])
    except ValidationError:
        return None


def cause_type(status: Mapping[str, Any]) -> str | None:
    """The first cause's type (Spec, Rebuild, Commit, BaseImage), for the CAUSE column."""
    causes = status.get("causes")
    if isinstance(causes, Sequence) and causes and isinstance(causes[0], Mapping):
        return str(causes[0].get("type") or "") or None
    return None


def input_lines(status: Mapping[str, Any]) -> list[str]:
    """What the build was built from: ``commit a1b2… (refs/heads/main)``, each base image."""
    inputs = status.get("inputs")
    if not isinstance(inputs, Mapping):
        return []
    lines = []
    if inputs.get("commit"):
        lines.append(f"commit {inputs['commit']}"
                     + (f" ({inputs['ref']})" if inputs.get("ref") else ""))
    for image in inputs.get("baseImages") or []:
        if isinstance(image, Mapping):
            lines.append(f"{image.get('image')}@{image.get('digest') or '(digest unknown)'}")
    return lines


def status_rows(build: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The end-of-build table: what a person (or a CI log reader) wants to know."""
    status = status_of(build)
    phase = status.get("phase") or "Unknown"
    rows: list[tuple[str, str]] = [
        ("ImageBuild", f"{build['metadata'].get('namespace', '')}/{build['metadata']['name']}"),
        ("Phase", phase if phase in ("Succeeded", "Unknown")
         else f"{phase} ({status.get('reason') or 'no reason given'})"),
        ("Target", target_of(build)),
    ]
    optional = [
        ("Image", status.get("image")),
        ("Digest", status.get("digest")),
        ("Size", size_text(status)),
        ("Layers", str(status["layers"]) if status.get("layers") is not None else None),
        ("Cache", cache_text(status)),
        ("Duration", duration_text(status)),
        ("Attempt", str(status["attempt"]) if (status.get("attempt") or 1) > 1 else None),
        ("Cause", cause_text(status.get("causes"))),
    ]
    rows += [(label, value) for label, value in optional if value]
    rows += _listed("Platforms", platform_lines(status))
    rows += _listed("Built from", input_lines(status))
    rows += _listed("Largest layers", largest_layers(status))
    rows += _listed("Checks", check_lines(status))
    if phase == "Failed" and status.get("message"):
        rows.append(("Message", str(status["message"]).splitlines()[0]))
    return rows


def _listed(label: str, lines: list[str]) -> list[tuple[str, str]]:
    return [(label if i == 0 else "", line) for i, line in enumerate(lines)]


def duration_text(status: Mapping[str, Any]) -> str | None:
    """How long the build ran, from its start and completion times."""
    start, end = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    if start is None or end is None:
        return None
    return age_text((end - start).total_seconds())


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as the API writes it, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age_text(seconds: float) -> str:
    """Durations as kubectl prints ages: 42s, 3m12s, 5h10m, 4d."""
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 1:
        return f"{minutes}m{seconds % 60}s" if minutes < 10 else f"{minutes}m"
    if days < 1:
        return f"{hours}h{minutes % 60}m" if hours < 8 else f"{hours}h"
    return f"{days}d"


def get_columns(*, all_namespaces: bool) -> list[str]:
    """The header of ``stagewright get`` (NAMESPACE first with -A, as kubectl does)."""
    columns = ["NAME", "PHASE", "REASON", "TARGET", "PLATFORMS", "SIZE", "DIGEST", "CACHE",
               "CAUSE", "AGE"]
    return ["NAMESPACE", *columns] if all_namespaces else columns


def get_rows(builds: Iterable[Mapping[str, Any]], *, all_namespaces: bool,
             now: datetime | None = None) -> list[list[str]]:
    """One row per ImageBuild, like ``kubectl get ib -o wide`` plus the cache."""
    now = now or datetime.now(UTC)
    rows = []
    for build in builds:
        status = status_of(build)
        created = parse_time(build["metadata"].get("creationTimestamp"))
        row = [
            build["metadata"]["name"],
            status.get("phase") or NONE,
            status.get("reason") or NONE,
            target_of(build) if (build.get("spec") or {}).get("target") else NONE,
            platforms_text(build) or NONE,
            size_text(status) or NONE,
            status.get("shortDigest") or _short(status.get("digest")) or NONE,
            cache_text(status) or NONE,
            cause_type(status) or NONE,
            age_text((now - created).total_seconds()) if created else NONE,
        ]
        rows.append([build["metadata"].get("namespace", ""), *row] if all_namespaces else row)
    return rows


def _short(digest: Any) -> str | None:
    if not isinstance(digest, str) or ":" not in digest:
        return None
    return digest.split(":", 1)[1][:12]


def key_value_table(rows: Iterable[tuple[str, str]]) -> Table:
    """Rows of label and value without borders: reads well on a terminal and in a CI log."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    return table


def columns_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A kubectl-style table: capital headers, no borders, columns two spaces apart."""
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    for column in header:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table
