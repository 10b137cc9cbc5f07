"""The recipe's ``[registry] ca``: the private CA the guest trusts is baked into the
initramfs where the guest reads it, watched by the build fingerprint, and a missing file
is an error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest.agent.registryconf import REGISTRY_CA
from guest.contract.arch import Arch
from publisher.media.initramfs import KernelInputs, initramfs_entries
from publisher.media.recipe import RecipeError, parse_recipe

RECIPE = '[registry]\nca = "ca.pem"\n[initramfs]\nmodules = []\n[arch.x86_64]\n'


def test_the_ca_lands_where_the_guest_reads_it(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nfake\n")
    recipe = parse_recipe(RECIPE, tmp_path / "recipe.toml")
    assert recipe.registry_ca == (tmp_path / "ca.pem").resolve()
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF")
    kernel = KernelInputs(tmp_path / "vmlinuz", "6.1.0", None)
    entries = initramfs_entries(recipe, Arch.X86_64, kernel, busybox, None)
    found = [e for e in entries if e.path == REGISTRY_CA]
    assert [e.data for e in found] == [b"-----BEGIN CERTIFICATE-----\nfake\n"]
    without = parse_recipe(RECIPE.replace('ca = "ca.pem"\n', ""), tmp_path / "recipe.toml")
    entries = initramfs_entries(without, Arch.X86_64, kernel, busybox, None)
    assert not [e for e in entries if e.path == REGISTRY_CA]


def test_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    with pytest.raises(RecipeError, match=r"recipe.toml:2: registry.ca: file not found"):
        parse_recipe(RECIPE, path)
    with pytest.raises(RecipeError, match=r"registry.cert"):
        parse_recipe(RECIPE.replace("ca =", "cert ="), path)
