"""Upstream's verdict on a plan, from HashiCorp's own hclsyntax (tests/oracle/main.go).

Our plan parser is a reimplementation of HCL native syntax; upstream's guest parses with
hclsyntax and decodes with gohcl. The oracle is a small Go program of ours that reads a
plan the way upstream's decoder does (its schema, scopes and type rules) with Debian's
hclsyntax 2.14.1 and prints the verdict as JSON, so a disagreement is found by running
both, not by reading code. It is built once into a cache dir keyed by its source and the
Go version, offline from Debian's packages (GOPATH=/usr/share/gocode, no module proxy).
Many plans go through one process (JSON lines in and out), which keeps it fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest.contract.arch import BOOTABLE_PLAN_ARCHES
from publisher.media.debs import user_cache_dir
from publisher.run import run

SOURCE = Path(__file__).parent / "oracle" / "main.go"
#: Where Debian's golang-github-hashicorp-hcl-v2-dev and go-cty put their sources.
GOPATH = "/usr/share/gocode"
#: The Debian packages the oracle needs (./bootstrap installs them).
PACKAGES = "golang-go golang-github-hashicorp-hcl-v2-dev golang-github-zclconf-go-cty-dev"
ARCHES = tuple(str(a) for a in BOOTABLE_PLAN_ARCHES)


def go_missing() -> str | None:
    """Why the oracle cannot be built here, or None when it can."""
    if shutil.which("go") is None:
        return f"no go toolchain (apt-get install {PACKAGES}; ./bootstrap does)"
    if not (Path(GOPATH) / "src/github.com/hashicorp/hcl/v2/hclsyntax").is_dir():
        return f"hclsyntax sources missing under {GOPATH} (apt-get install {PACKAGES})"
    return None


def build_oracle() -> Path:
    """The oracle binary, built unless the cache already holds this source's build."""
    env = {"GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": "", "GOTOOLCHAIN": "local"}
    version = run(["go", "version"], env=env).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version).hexdigest()[:16]
    cache = user_cache_dir("plan-oracle")
    binary = cache / key / "plan-oracle"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}.part")
    env["GOCACHE"] = str(cache / "gocache")
    run(["go", "build", "-o", partial, SOURCE], env=env, cwd=SOURCE.parent)
    partial.replace(binary)
    return binary


@dataclass(frozen=True)
class Verdict:
    """What upstream's guest does with one plan.

    ``parse_error`` is hclsyntax's first syntax error ((line, column), summary), if any.
    Otherwise ``arches`` maps each arch to either the decoded plan (``ok``) or the first
    decode error; ``rendering`` says it in verdicts.json's shape.
    """

    parse_error: tuple[tuple[int, int], str] | None
    arches: dict[str, dict[str, Any]]

    @property
    def accepted(self) -> bool:
        return self.parse_error is None and all(a["ok"] for a in self.arches.values())

    def first_error(self) -> tuple[tuple[int, int], str] | None:
        """The earliest error (parse, else decode on any arch), by position."""
        if self.parse_error is not None:
            return self.parse_error
        found = [_first(a["diagnostics"]) for a in self.arches.values() if not a["ok"]]
        return min(found) if found else None

    def rendering(self) -> dict[str, dict[str, dict[str, str]]]:
        return {arch: _render(answer["plan"]) for arch, answer in self.arches.items()}

    def as_json(self) -> dict[str, Any]:
        """The verdict as verdicts.json writes it.

        ``fragment``: upstream decodes it but could not pick a target without being told
        which (no target, or several and no default_target); we refuse that by our rule
        (docs/wire-formats.md §1.5), so only the syntax is compared.
        """
        if self.accepted:
            plans = [answer["plan"] for answer in self.arches.values()]
            if any(
                not p["targets"] or (len(p["targets"]) > 1 and not p["default_target"])
                for p in plans
            ):
                return {"upstream": "fragment"}
            return {"upstream": "accepts", "rendering": self.rendering()}
        error = self.first_error()
        assert error is not None
        return {"upstream": "rejects", "line": error[0][0], "why": error[1]}


def _first(diagnostics: list[dict[str, Any]]) -> tuple[tuple[int, int], str]:
    d = diagnostics[0]
    return ((d["line"], d["column"]), d["summary"])


def _render(plan: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each target as our corpus test renders ours: cmdline, its source, and its arch."""
    out: dict[str, dict[str, str]] = {}
    for target in plan["targets"]:
        values = target["values"]
        doc = {"cmdline": values.get("cmdline", "")}
        if target["disk"] is not None:
            disk = target["disk"]
            doc |= {"device": disk["Device"], "fs": disk["FS"] or "ext4"}
            doc |= {k: disk[k.capitalize()] for k in ("kernel", "initrd") if disk[k.capitalize()]}
        elif values.get("subplan"):
            doc["ref"] = values["subplan"]
        else:
            doc |= {k: values[k] for k in ("index", "kernel", "initrd", "modules") if values.get(k)}
        if target["arch"]:
            doc["arch"] = target["arch"]
        out[target["name"]] = doc
    return out


def ask(binary: Path, plans: Sequence[tuple[str, str]]) -> list[Verdict]:
    """Upstream's verdict on each (name, text), from one oracle process."""
    lines = [
        json.dumps({"id": i, "name": name, "text": text, "arches": list(ARCHES)})
        for i, (name, text) in enumerate(plans)
    ]
    out = run([binary], input=("\n".join(lines) + "\n").encode()).stdout.decode()
    verdicts = []
    for i, line in enumerate(out.splitlines()):
        answer = json.loads(line)
        assert answer["id"] == i
        parse = answer["parse"]
        error = None if parse["ok"] else _first(parse["diagnostics"])
        verdicts.append(Verdict(error, answer.get("arches", {})))
    assert len(verdicts) == len(plans)
    return verdicts


def refresh_verdicts(corpus: Path) -> None:
    """Rewrite the verdicts in ``corpus``/verdicts.json from the oracle.

    Where each example came from (repository, commit, where) is kept; a hand-written
    ``why`` is kept when it still names hclsyntax's diagnostic.
    """
    path = corpus / "verdicts.json"
    verdicts: dict[str, dict[str, Any]] = json.loads(path.read_text())
    names = sorted(verdicts)
    answers = ask(build_oracle(), [(name, (corpus / name).read_text()) for name in names])
    for name, verdict in zip(names, answers, strict=True):
        source = {k: verdicts[name][k] for k in ("repository", "commit", "where")}
        fresh = verdict.as_json()
        why = verdicts[name].get("why", "")
        if "why" in fresh and fresh["why"] in why:
            fresh["why"] = why
        verdicts[name] = {**source, **fresh}
    path.write_text(json.dumps(verdicts, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    refresh_verdicts(Path(__file__).parent / "data" / "upstream-plans")
