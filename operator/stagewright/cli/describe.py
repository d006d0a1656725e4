"""``stagewright describe``: one ImageBuild in full, as ``kubectl describe`` lays it out.

Pure text from the objects (the ImageBuild, its pods, recent Events), so the layout is
unit-tested; sections a status does not have yet (history, checks, layers) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from stagewright.cli.tables import (
    age_text,
    check_lines,
    largest_layers,
    parse_time,
    platform_lines,
    size_text,
    status_of,
    status_rows,
)

_INDENT = "  "


def describe(build: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
             events: Sequence[Mapping[str, Any]], now: datetime | None = None) -> str:
    """The whole description: summary, spec, conditions, history, pods, events."""
    now = now or datetime.now(UTC)
    status = status_of(build)
    sections = [
        _section("Status", [f"{label}:\t{value}" if label else f"\t{value}"
                            for label, value in status_rows(build)]),
        _section("Source", _source_lines(build.get("spec") or {})),
        _section("Message", str(status.get("message") or "").splitlines()),
        _section("Conditions", _condition_lines(status, now)),
        _section("Triggers", _trigger_lines(build.get("spec") or {}, status)),
        _section("Platforms", platform_lines(status)),
        _section("Checks", check_lines(status)),
        _section("Largest layers", largest_layers(status)),
        _section("History", _history_lines(status)),
        _section("Pods", _pod_lines(pods, now)),
        _section("Events", _event_lines(events, now) or ["<none>"]),
    ]
    meta = build["metadata"]
    header = [f"Name:\t{meta['name']}", f"Namespace:\t{meta.get('namespace', '')}",
              f"Generation:\t{meta.get('generation', '?')}"]
    rebuild = (meta.get("annotations") or {}).get("stagewright.dev/rebuild")
    if rebuild:
        header.append(f"Rebuild:\t{rebuild}")
    return _align("\n".join([*header, *[s for s in sections if s]])) + "\n"


def _section(title: str, lines: list[str]) -> str:
    if not lines:
        return ""
    return "\n".join([f"{title}:", *[_INDENT + line for line in lines]])


def _align(text: str) -> str:
    """Tabs to columns, per block of lines sharing an indent (as kubectl's tabwriter)."""
    lines = text.splitlines()
    width = max((len(line.split("\t", 1)[0]) for line in lines if "\t" in line), default=0)
    return "\n".join(f"{line.split(chr(9), 1)[0]:<{width}}  {line.split(chr(9), 1)[1]}"
                     if "\t" in line else line for line in lines)


def _source_lines(spec: Mapping[str, Any]) -> list[str]:
    source = spec.get("source") or {}
    lines = []
    if git := source.get("git"):
        lines.append(f"Git:\t{git.get('url')}" + (f" @ {git['revision']}"
                                                  if git.get("revision") else ""))
    if config_map := source.get("configMap"):
        lines.append(f"ConfigMap:\t{config_map.get('name')}")
    if url := source.get("url"):
        lines.append(f"URL:\t{url}")
    if source.get("contextDir"):
        lines.append(f"Context dir:\t{source['contextDir']}")
    lines.append(f"Dockerfile:\t{spec.get('dockerfile') or 'Dockerfile'}")
    output = spec.get("output") or {}
    tags = ", ".join(output.get("tags") or ["latest"])
    lines.append(f"Output:\t{output.get('image')} ({tags})")
    return lines


def _condition_lines(status: Mapping[str, Any], now: datetime) -> list[str]:
    lines = []
    for condition in status.get("conditions") or []:
        since = parse_time(condition.get("lastTransitionTime"))
        age = f" {age_text((now - since).total_seconds())} ago" if since else ""
        lines.append(f"{condition.get('type')}:\t{condition.get('status')} "
                     f"{condition.get('reason') or ''}{age}".rstrip())
    return lines


def _trigger_lines(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    """What the triggers watch, and whether their look-ups work."""
    triggers = spec.get("triggers")
    if not isinstance(triggers, Mapping):
        return []
    lines = []
    if isinstance(source := triggers.get("source"), Mapping):
        lines.append(f"Source:\tthe git ref, every {source.get('pollInterval') or '5m'}")
    if isinstance(bases := triggers.get("baseImages"), Mapping):
        excluded = ", ".join(bases.get("exclude") or [])
        lines.append(f"Base images:\tevery {bases.get('pollInterval') or '15m'}"
                     + (f", except {excluded}" if excluded else ""))
    if triggers.get("webhook"):
        path = (status.get("triggers") or {}).get("webhookPath") or "(not shown yet)"
        lines.append(f"Webhook:\t{path}")
    lines.append(f"Debounce:\t{triggers.get('debounce') or '30s'}, at most "
                 f"{triggers.get('maxBuildsPerHour') or 6} triggered builds an hour")
    health = next((c for c in status.get("conditions") or []
                   if c.get("type") == "TriggersHealthy" and c.get("status") == "False"), None)
    if health is not None:
        lines.append(f"Failing:\t{health.get('message') or health.get('reason')}")
    return lines


def _history_lines(status: Mapping[str, Any]) -> list[str]:
    history = status.get("history")
    if not isinstance(history, Sequence) or isinstance(history, str):
        return []
    lines = []
    for entry in history:
        if not isinstance(entry, Mapping):
            lines.append(str(entry))
            continue
        when = entry.get("completionTime") or entry.get("startTime") or ""
        digest = str(entry.get("digest") or "")
        causes = [str(c.get("type")) for c in entry.get("causes") or [] if isinstance(c, Mapping)]
        parts = [str(entry.get("phase") or "?"), str(entry.get("reason") or ""),
                 f"gen {entry['generation']}" if entry.get("generation") else "",
                 "+".join(causes), size_text(entry) or "", digest[:19], str(when)]
        lines.append("  ".join(part for part in parts if part))
    return lines


def _pod_lines(pods: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    lines = []
    for pod in sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or "")):
        status = pod.get("status") or {}
        created = parse_time(pod["metadata"].get("creationTimestamp"))
        age = age_text((now - created).total_seconds()) if created else "?"
        labels = pod["metadata"].get("labels") or {}
        attempt = labels.get("stagewright.dev/attempt", "?")
        platform = (pod["metadata"].get("annotations") or {}).get("stagewright.dev/platform")
        lines.append(f"{pod['metadata']['name']}:\t{status.get('phase') or '?'}"
                     + (f" ({status['reason']})" if status.get("reason") else "")
                     + (f", {platform}" if platform else "")
                     + f", attempt {attempt}, {age} old")
    return lines


def _event_lines(events: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    lines = []
    for event in events[-15:]:
        when = parse_time(event.get("lastTimestamp") or event.get("eventTime")
                          or (event.get("metadata") or {}).get("creationTimestamp"))
        age = age_text((now - when).total_seconds()) if when else "?"
        count = int(event.get("count") or 1)
        lines.append(f"{event.get('type') or 'Normal'}\t{event.get('reason') or ''} "
                     f"({age} ago{f', x{count}' if count > 1 else ''}): "
                     f"{str(event.get('message') or '').strip()}")
    return lines
