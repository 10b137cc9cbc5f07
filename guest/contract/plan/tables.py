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

The bytes must not depend on the process that made them (boot.iso is reproducible):
lark numbers its LALR states in the iteration order of a set of objects hashed by
address, and which equal strings its cache pickle shares differs too.
``reproducible_lark`` renumbers the states breadth-first from the start states and
writes the cache with one object per string; the packer builds lark's cache inside it,
under a fixed ``PYTHONHASHSEED``, and the snapshot from the parser loaded from that cache.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import pickle
import sys
import types
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import hcl2.parser
from lark import Lark
from lark.exceptions import UnexpectedInput
from lark.parsers import lalr_analysis

#: Where the packer puts the snapshot: the directory holding the ``guest`` package.
SNAPSHOT_PATH = Path(__file__).resolve().parents[3] / "hcl2-parser.pickle"
_SINGLETONS = {id(getattr(lalr_analysis, n)): n for n in ("Shift", "Reduce")}
_SHIFT = lalr_analysis.Shift


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        name = _SINGLETONS.get(id(obj))
        if name is not None:
            return getattr, (lalr_analysis, name)
        return NotImplemented


def _canonical(table: lalr_analysis.ParseTable) -> lalr_analysis.IntParseTable:
    """``table`` with its states numbered breadth-first from the start states (by name),
    following shifts in token-name order, and every state's actions in token-name order."""
    order: dict[Any, int] = {}
    queue = deque(table.start_states[name] for name in sorted(table.start_states))
    while queue:
        state = queue.popleft()
        if state in order:
            continue
        order[state] = len(order)
        actions = table.states[state]
        queue.extend(actions[t][1] for t in sorted(actions) if actions[t][0] is _SHIFT)
    if len(order) != len(table.states):
        raise RuntimeError(f"{len(table.states) - len(order)} LALR state(s) unreachable")
    states = {
        order[state]: {
            token: (_SHIFT, order[arg]) if action is _SHIFT else (action, arg)
            for token, (action, arg) in sorted(table.states[state].items(), key=lambda i: i[0])
        }
        for state in sorted(order, key=order.__getitem__)
    }
    return lalr_analysis.IntParseTable(  # type: ignore[no-untyped-call]
        states,
        {name: order[s] for name, s in sorted(table.start_states.items())},
        {name: order[s] for name, s in sorted(table.end_states.items())},
    )


def _shared_strings(value: Any) -> Any:
    """``value`` (lark's serialised data: dicts, lists, tuples, scalars) rebuilt with one
    object per distinct string: pickle shares objects by identity, and which equal strings
    lark happens to share differs from run to run."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {_shared_strings(k): _shared_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_shared_strings(v) for v in value)
    return value


@contextlib.contextmanager
def reproducible_lark() -> Iterator[None]:
    """Inside this block, lark numbers LALR states canonically and writes its cache with
    shared strings: the same grammar gives the same cache bytes in any process."""
    table_cls = lalr_analysis.IntParseTable
    saved_table = table_cls.__dict__["from_ParseTable"]
    saved_save = Lark.save

    def save(self: Lark, f: Any, exclude_options: Iterable[str] = ()) -> None:
        raw = io.BytesIO()
        saved_save(self, raw, list(exclude_options))
        data = _shared_strings(pickle.loads(raw.getvalue()))  # what lark just wrote
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)

    canonical = classmethod(lambda cls, t: _canonical(t))
    table_cls.from_ParseTable = canonical  # type: ignore[method-assign,assignment]
    Lark.save = save  # type: ignore[method-assign]
    try:
        yield
    finally:
        table_cls.from_ParseTable = saved_table  # type: ignore[method-assign]
        Lark.save = saved_save  # type: ignore[method-assign]


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
