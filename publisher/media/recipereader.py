"""Typed access to the recipe's TOML tables (publisher.media.recipe), every error naming
the key path and, where the text shows it, the line: what ``parse_recipe`` reads with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guest.contract.oci import RefError, parse_ref
from publisher.media.recipe import (
    KERNEL_ONLY_KINDS,
    SOURCE_OPTIONS,
    FileSpec,
    RecipeError,
    Source,
    SourceKind,
)
from publisher.settings import TomlSource, did_you_mean

_KIND_NAMES = frozenset(k.value for k in SourceKind)


class Reader:
    """Typed access to the TOML tables with the key path in every error."""

    def __init__(self, path: Path, text: str = "") -> None:
        self.path = path
        self.base = path.parent
        self.toml = TomlSource(str(path), text)

    def fail(self, key: str, message: str) -> RecipeError:
        return RecipeError(f"{key}: {message}", where=self.toml.where_key(key))

    def known(self, table: dict[str, Any], key: str, allowed: set[str]) -> None:
        """Refuse a key of ``table`` (at ``key``; "" for the top) that is not ``allowed``."""
        if unknown := sorted(set(table) - allowed):
            hint = did_you_mean(unknown[0], allowed)
            raise self.fail(f"{key}.{unknown[0]}".lstrip("."),
                            f"unknown key{hint}; known: {', '.join(sorted(allowed))}")  # fmt: skip

    def table(self, data: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
        value = data.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {type(value).__name__}")
        self.known(value, key, allowed)
        return value

    def string(self, data: dict[str, Any], key: str, default: str) -> str:
        value = data.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {type(value).__name__}")
        return value

    def opt_path(self, data: dict[str, Any], key: str, *, must_exist: bool = True) -> Path | None:
        value = self.string(data, key, "")
        if not value:
            return None
        path = (self.base / Path(value).expanduser()).resolve()
        if must_exist and not path.exists():
            raise self.fail(key, f"file not found: {path}")
        return path

    def source(
        self, data: dict[str, Any], key: str, default_deb: str, *, kernel: bool = False
    ) -> Source:
        raw = data.get(key.rsplit(".", 1)[-1], {"deb": default_deb})
        if isinstance(raw, str):  # shorthand: a package name
            raw = {"deb": raw}
        if isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) not in _KIND_NAMES:
            raise self.fail(f"{key}.{next(iter(raw))}",
                            "unknown source kind; use deb, file, oci or build")  # fmt: skip
        kinds = [k for k in (raw if isinstance(raw, dict) else {}) if k in _KIND_NAMES]
        if not isinstance(raw, dict) or len(kinds) != 1:
            raise self.fail(key, 'expected one of { deb = "pkg" }, { file = "path" }, '
                                 '{ oci = "ref" [, verify = false] }, '
                                 '{ build = "src dir" [, config = "file"] }')  # fmt: skip
        kind = SourceKind(kinds[0])
        value = raw[kind.value]
        if kind in KERNEL_ONLY_KINDS and not kernel:
            raise self.fail(f"{key}.{kind.value}", "only a kernel can come from "
                                                   f"{kind.value}; use deb or file")  # fmt: skip
        unknown = sorted(set(raw) - {kind.value} - SOURCE_OPTIONS.get(kind, set()))
        if unknown:
            known = ", ".join(sorted(SOURCE_OPTIONS.get(kind, set()))) or "none"
            raise self.fail(f"{key}.{unknown[0]}", f"unknown key for a {kind.value} source; "
                                                   f"known: {known}")  # fmt: skip
        if not isinstance(value, str) or not value:
            raise self.fail(f"{key}.{kind.value}", "expected a non-empty string")
        verify = raw.get("verify", True)
        if not isinstance(verify, bool):
            raise self.fail(f"{key}.verify", "expected true or false")
        config = None
        if kind is SourceKind.FILE:
            path = (self.base / Path(value).expanduser()).resolve()
            if not path.is_file():
                raise self.fail(f"{key}.file", f"file not found: {path}")
            value = str(path)
        elif kind is SourceKind.BUILD:
            path = (self.base / Path(value).expanduser()).resolve()
            if not path.is_dir():
                raise self.fail(f"{key}.build", f"kernel source directory not found: {path}")
            value = str(path)
            config = self.opt_path(raw, f"{key}.config")
        elif kind is SourceKind.OCI:
            try:
                parse_ref(value)
            except RefError as exc:
                raise self.fail(f"{key}.oci", exc.message) from None
        return Source(kind, value, key, verify=verify, config=config)

    def file_specs(self, data: dict[str, Any], key: str) -> tuple[FileSpec, ...]:
        items = data.get(key.rsplit(".", 1)[-1], [])
        if not isinstance(items, list):
            raise self.fail(key, "expected an array of tables")
        specs = []
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            if not isinstance(item, dict) or not {"src", "dest"} <= set(item):
                raise self.fail(where, 'expected { src = "...", dest = "/..." [, mode = "0644"] }')
            src = self.opt_path(item, f"{where}.src")
            dest = self.string(item, f"{where}.dest", "")
            if src is None or not dest.startswith("/"):
                raise self.fail(where, "src must be set and dest must be absolute")
            mode_text = self.string(item, f"{where}.mode", "0644")
            try:
                mode = int(mode_text, 8)
            except ValueError:
                raise self.fail(
                    f"{where}.mode", f"expected an octal string, got {mode_text!r}"
                ) from None
            specs.append(FileSpec(src, dest, mode))
        return tuple(specs)
