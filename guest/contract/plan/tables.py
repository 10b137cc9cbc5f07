"""python-hcl2's LALR parser as one ready-made pickle, for the guest.

Loading the parser from lark's own cache deserialises ~26,000 small objects in Python and
builds the lexers on the first parse: ~55 ms natively, ~0.5 s under TCG, on every boot.
A pickle of the parser as it stands after a parse (tables and lexers built) loads in C in
~20 ms. The image packer writes one next to the agent (``dump``) and checks that it
parses exactly like hcl2's own parser (``same_results``); the guest loads it if it is
there, and any problem with it falls back to hcl2's loading, which is only slower.

Two things stop a plain pickle: lark keeps a module (``re``) in its lexer configuration,
and its LALR actions ``Shift``/``Reduce`` are singletons compared with ``is``. Both are
pickled as references to what the loading interpreter already has.
"""

from __future__ import annotations

import functools
import importlib
import io
import pickle
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hcl2.parser
from lark import Lark
from lark.exceptions import UnexpectedInput
from lark.parsers import lalr_analysis

#: Where the packer puts the snapshot: the directory holding the ``guest`` package.
SNAPSHOT_PATH = Path(__file__).resolve().parents[3] / "hcl2-parser.pickle"
_SINGLETONS = {id(getattr(lalr_analysis, n)): n for n in ("Shift", "Reduce")}


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        name = _SINGLETONS.get(id(obj))
        if name is not None:
            return getattr, (lalr_analysis, name)
        return NotImplemented


def dump(parser: Lark, warm_up: str) -> bytes:
    """The parser, after parsing ``warm_up`` once so its lexers are built, as bytes."""
    parser.parse(warm_up + "\n")
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(parser)
    return out.getvalue()


def load(data: bytes) -> Lark:
    parser = pickle.loads(data)  # written by our packer, into the same signed image
    if not isinstance(parser, Lark):
        raise TypeError(f"snapshot holds a {type(parser).__name__}, not a Lark parser")
    return parser


@functools.cache
def parser() -> Lark:
    """The snapshot when the image has one (the guest), else hcl2's own parser."""
    try:
        return load(SNAPSHOT_PATH.read_bytes())
    except Exception:  # none (the host), or broken: hcl2's own loading is only slower
        return hcl2.parser.parser()


def _outcome(parser: Lark, text: str) -> object:
    try:
        return parser.parse(text + "\n")
    except UnexpectedInput as exc:
        return (type(exc).__name__, exc.line, exc.column)


def same_results(original: Lark, snapshot: Lark, texts: Iterable[str]) -> list[str]:
    """The texts on which the two parsers differ (trees, or error kind and position)."""
    return [t for t in texts if _outcome(original, t) != _outcome(snapshot, t)]
