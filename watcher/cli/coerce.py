"""Typer's parameter coercion, without pydantic, for the plain types our commands take.

typer 0.29 coerces every parameter through a pydantic ``TypeAdapter`` (all but bool flags
that were given), so any command line imports pydantic: about 0.1 s, a third of
`cloudboot plan validate`'s start-up. For what our commands mostly take (``str``,
``int``, ``bool``, ``Path`` and lists of them, with no parser, bounds or choices), that
coercion is the identity, or ``Path(value)`` and then typer's own path checks (pydantic's
lax ``Path`` is exactly ``Path(str)``), so :func:`install` does it here and hands
anything else (another type, bounds, a value that is not already a str, bool or int) to
typer's own adapter, so its messages stay typer's. tests/test_cli_startup.py checks that
`plan validate` loads no pydantic, which also catches a typer upgrade that moves these
internals (then the patch is skipped and only start-up suffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

_MISS = object()


def _leaf(annotation: Any, info: Any, value: Any, param: Any, ctx: Any) -> Any:
    """``value`` coerced to ``annotation`` where that needs no pydantic, else ``_MISS``."""
    if (annotation is str and isinstance(value, str)) or (
        annotation is bool and isinstance(value, bool)
    ):
        return value
    if annotation is int and type(value) is int and info.min is None and info.max is None:
        return value
    if annotation is Path and info.path_type is None and isinstance(value, str):
        from typer._param_types import coerce_cli_path

        # typer's own checks (exists, readable, ...) on a Path, which skips its TypeAdapter
        return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
    return _MISS


def _plain(annotation: Any, info: Any) -> bool:
    """Whether typer's adapter would be no more than :func:`_leaf` for this parameter."""
    if info.parser is not None or getattr(info, "click_type", None) is not None:
        return False
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    return annotation in (str, int, bool, Path)


def install() -> None:
    """Route plain parameters around pydantic (a no-op if typer's internals moved)."""
    try:
        from typer import core
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:  # pragma: no cover - a typer without these internals
        return
    if not hasattr(core._TyperParameter, "get_runtime_param"):  # pragma: no cover
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):  # type: ignore[misc]
        """Coerces plain values itself; anything else goes to typer's adapter."""

        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            info = self.parameter_info
            annotation: Any = self.annotation
            if get_origin(annotation) is list:
                (item,) = get_args(annotation)
                items = value if isinstance(value, list | tuple) else [value]
                out = [_leaf(item, info, v, param, ctx) for v in items]
                if all(v is not _MISS for v in out):
                    return out
            else:
                out_one = _leaf(annotation, info, value, param, ctx)
                if out_one is not _MISS:
                    return out_one
            full = build_runtime_param(self.descriptor)
            return full._coerce_value(value, param=param, ctx=ctx)

    original = core._TyperParameter.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        descriptor = self.type_descriptor
        info = descriptor.parameter_info
        plain = descriptor.file_annotation is None and _plain(descriptor.annotation, info)
        if self._runtime_param is None and plain:
            self._runtime_param = PlainRuntimeParam(
                parameter_info=info, annotation=descriptor.annotation, descriptor=descriptor
            )
        return original(self)

    core._TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
