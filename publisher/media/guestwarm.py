"""What the guest agent's packer precomputes in a host interpreter, so the guest does not
spend boot time on it: lark's LALR tables for hcl2 (its cache file), the ready parser as
one pickle (``guest.contract.plan.tables``), and the code of the guest's dataclass
methods (``guest.agent.precompiled``).

Each runs in a fresh host interpreter that imports the packed app directory, under a
fixed ``PYTHONHASHSEED`` (``PACKER_ENV``): what it writes goes into boot.iso, whose bytes
must not depend on the process that built it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from publisher.run import run

#: Where the agent's app directory lives in the guest.
GUEST_APP_DIR = "/usr/lib/cloudboot"
#: Every host interpreter the packer starts: set and frozenset order (in bytecode
#: constants, lark's tables, pickles) must not change from one build to the next.
PACKER_ENV = {"PYTHONHASHSEED": "0"}
#: Every guest module a boot may import (lazily or not): their dataclasses are cached.
GUEST_MODULES = (
    *(f"guest.agent.{m}" for m in ("main", "sysguest", "fetch", "diskread", "menu", "metadata",
                                   "template", "lease", "reset", "httpclient", "machine",
                                   "trust", "floor", "secureboot", "lldp")),
    "guest.contract.cosign", "guest.contract.plan", "guest.contract.lldp",
)  # fmt: skip
#: Lark keys its parser cache on the options, and hcl2 passes the cache file's absolute
#: path as one of them: the cache must be built as if the package lived at its guest path.
#: Host-side runs import the packed pure-Python code, but the packed ``regex`` extension
#: is built for the guest's arch: the host's own ``regex`` is imported first instead.
_HOST_PRELUDE = """
import sys
sys.path.insert(0, {host_site!r})
import regex
sys.path[0] = {app!r}
"""
_WARM = """
import lark.lark as L
real_open = L.FS.open
L.FS.open = lambda name, mode="r", **kw: real_open(name.replace({guest!r}, {app!r}, 1), mode, **kw)
import pathlib, hcl2.parser as p
from guest.contract.plan import tables
p.PARSER_FILE = pathlib.Path({guest!r} + "/hcl2/.lark_cache.bin")
with tables.reproducible_lark():
    p.parser()
p.parser.cache_clear()  # the snapshot starts from the parser as the cache file loads

"""


#: Runs after ``_WARM`` (same interpreter): ``p.parser()`` is the cache-loaded parser.
_SNAPSHOT = """
original = p.parser()
texts = {samples!r} + [pathlib.Path(f).read_text() for f in {plans!r}]
snapshot = tables.load(tables.dump(p.parser(), texts[0]))
differ = tables.same_results(original, snapshot, texts)
if differ:
    raise SystemExit(f"the parser snapshot parses {{len(differ)}} text(s) differently")
pathlib.Path({out!r}).write_bytes(tables.dump(snapshot, texts[0]))
"""
#: Texts both parsers must agree on besides the repo's plans (which an installed package
#: may not have): a plan with the common constructs, then a bad token, an unterminated
#: string, a missing value and a stray character.
_SAMPLE_PLANS = [
    'locals { c = "ttyS0" }\ndefault_target = "a"\ntarget "a" {\n'
    '  kernel = "r/k:1"\n  cmdline = ["console=${local.c}", arch == "arm64" ? "x" : "y"]\n}\n',
    'x = "a" "b"\n', 'x = "open\n', "x =\n", 'target "a" { kernel = ? }\n',
]  # fmt: skip


def prepare_hcl2_parser(app: Path, plans: Iterable[Path]) -> None:
    """One host interpreter builds hcl2's LALR tables (lark's cache: the guest would spend
    ~30 s on them under TCG) and the ready parser as one pickle (``guest.contract.plan.tables``),
    checked against hcl2's own on sample texts and the repo's plans (~0.4 s per boot)."""
    from guest.contract.plan.tables import SNAPSHOT_PATH

    out = app / SNAPSHOT_PATH.name
    warm = _WARM.format(app=str(app), guest=GUEST_APP_DIR)
    code = _SNAPSHOT.format(samples=_SAMPLE_PLANS, plans=[str(p) for p in plans], out=str(out))
    _run_packed(app, warm + code)
    for made in (app / "hcl2/.lark_cache.bin", out):
        if not made.is_file():
            raise RuntimeError(f"{made.name} was not written")


_RECORD = """
from guest.agent import precompiled
data = precompiled.record({modules!r})
with open({out!r}, "wb") as out:
    out.write(data)
"""


def record_dataclass_code(app: Path) -> None:
    """Compile the guest's dataclass methods here (see ``guest.agent.precompiled``): a fresh
    host interpreter imports the packed modules and records. Only when the host's minor
    Python version is the guest's (the caller checks): other code objects would not load."""
    out = app / "dataclass-code.marshal"
    _run_packed(app, _RECORD.format(modules=GUEST_MODULES, out=str(out)))


def _run_packed(app: Path, code: str) -> None:
    """Run ``code`` in a fresh host interpreter that imports from the packed app dir."""
    import importlib.util

    spec = importlib.util.find_spec("regex")  # the host's, for its location
    if spec is None or spec.origin is None:
        raise RuntimeError("the host Python has no regex module (python-hcl2 needs it)")
    host_site = str(Path(spec.origin).parent.parent)
    prelude = _HOST_PRELUDE.format(host_site=host_site, app=str(app))
    run([sys.executable, "-S", "-B", "-c", prelude + code], env=PACKER_ENV)
