"""A CI job summary from ``cloudboot publish --json``: a markdown table of plans.

GitHub Actions renders ``$GITHUB_STEP_SUMMARY`` on the run's page and GitLab shows a
markdown artifact; either way a reviewer sees which plan went to which digest and whether
its canary booted, without reading logs. The summary is built from the JSON report alone
(pure: a document in, text out), so ``cloudboot publish --summary PATH`` and
``cloudboot publish --json | python -m publisher.summary`` write the same table.

A summary is public: any ``scheme://user:secret@host`` in it (a clone URL carried in an
error message, say) loses its user part, as annotations do.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from publisher.annotations import strip_userinfo

#: Bound on the report read from stdin (a thousand plans take ~0.5 MB).
MAX_REPORT_BYTES = 16 << 20
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>|)]+")
STATUS_MARK = {
    "published": "✅ published",
    "unchanged": "✔️ unchanged",
    "stale": "⚠️ stale (plan deleted)",
    "pruned": "🗑️ pruned",
    "invalid": "❌ invalid",
    "failed": "❌ failed",
    "skipped": "⏭️ skipped",
    "held": "⛔ held (canary failed)",
}


def scrub(text: str) -> str:
    """``text`` with URL credentials removed and table pipes and newlines escaped."""
    clean = URL.sub(lambda m: strip_userinfo(m.group(0)), text)
    return clean.replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def _canary(plan: Mapping[str, Any]) -> str:
    canary = plan.get("canary")
    if not isinstance(canary, Mapping):
        return "—"
    result = str(canary.get("result", "?"))
    seconds = canary.get("seconds")
    took = f" ({float(seconds):.0f} s)" if isinstance(seconds, int | float) else ""
    return scrub(f"{result}{took}")


def _digest(plan: Mapping[str, Any]) -> str:
    digest = plan.get("digest")
    return f"`{scrub(str(digest))[:19]}…`" if digest else "—"


def render(doc: Mapping[str, Any], title: str = "cloudboot publish") -> str:
    """The markdown for one publish report (``{"ok": ..., "plans": [...]}``)."""
    plans: Sequence[Mapping[str, Any]] = doc.get("plans") or []
    ok = bool(doc.get("ok"))
    counts: dict[str, int] = {}
    for plan in plans:
        counts[str(plan.get("status"))] = counts.get(str(plan.get("status")), 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [
        f"### {title}: {'ok' if ok else 'FAILED'}",
        "",
        f"{len(plans)} plan(s): {tally or 'none'}",
        "",
        "| Plan | Status | Ref | Digest | Canary |",
        "| --- | --- | --- | --- | --- |",
    ]
    problems = []
    for plan in plans:
        status = str(plan.get("status", "?"))
        name = scrub(str(plan.get("plan", "?")))
        mark = STATUS_MARK.get(status, scrub(status))
        ref = scrub(str(plan.get("ref", "")))
        lines.append(f"| `{name}` | {mark} | `{ref}` | {_digest(plan)} | {_canary(plan)} |")
        if plan.get("error") and status not in ("stale",):
            problems.append(f"- `{name}`: {scrub(str(plan['error']))}")
        canary = plan.get("canary")
        if isinstance(canary, Mapping) and canary.get("tail"):
            tail = "\n".join(str(canary["tail"]).splitlines()[-20:])
            tail = URL.sub(lambda m: strip_userinfo(m.group(0)), tail).replace("```", "'''")
            problems.append(
                f"<details><summary>{name}: serial log tail</summary>\n\n```\n{tail}\n"
                "```\n</details>"
            )
    if problems:
        lines += ["", "#### Problems", "", *problems]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m publisher.summary [REPORT.json]``: the markdown on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in ("-",):
        with open(args[0], "rb") as stream:
            data = stream.read(MAX_REPORT_BYTES + 1)
    else:
        data = sys.stdin.buffer.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        print(f"error: report larger than {MAX_REPORT_BYTES} bytes", file=sys.stderr)
        return 2
    try:
        doc = json.loads(data)
    except ValueError as exc:
        print(f"error: not a cloudboot publish --json report: {exc}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict) or not isinstance(doc.get("plans"), list):
        print("error: not a cloudboot publish --json report (no plans list)", file=sys.stderr)
        return 2
    sys.stdout.write(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
