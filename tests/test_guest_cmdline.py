"""Kernel command line parsing as docs/wire-formats.md §5.1 states it."""

from __future__ import annotations

import pytest

from guest.agent.cmdline import CmdlineError, CosignPolicy, Options, parse_cmdline, split_words


def test_split_on_blanks_outside_quotes() -> None:
    text = 'console=ttyS0  cloudboot.menu.prompt="Pick one:  now" quiet\n'
    assert split_words(text) == ["console=ttyS0", "cloudboot.menu.prompt=Pick one:  now", "quiet"]


def test_key_value_at_first_equals_bare_word_is_one_later_wins() -> None:
    params = parse_cmdline("a=b=c quiet cloudboot.target=x cloudboot.target=y")
    assert params == {"a": "b=c", "quiet": "1", "cloudboot.target": "y"}


def test_empty_quoted_value_is_kept_as_empty() -> None:
    assert parse_cmdline('cloudboot.cmdline=""') == {"cloudboot.cmdline": ""}


def test_options_are_typed() -> None:
    opts = Options.from_text(
        "root=/dev/vda cloudboot.exit=reboot cloudboot.plan=oci://10.0.2.2:5000/p:latest "
        "cloudboot.cosign=warn cloudboot.insecure cloudboot.menu=0 cloudboot.dns=1.1.1.1,9.9.9.9 "
        "cloudboot.metadata.url=http://169.254.169.254/meta cloudboot.debug=1"
    )
    assert opts.plan == "oci://10.0.2.2:5000/p:latest"
    assert opts.cosign is CosignPolicy.WARN
    assert opts.insecure and opts.debug and not opts.quiet
    assert opts.menu is False
    assert opts.dns == ("1.1.1.1", "9.9.9.9")
    assert opts.metadata_url == "http://169.254.169.254/meta"
    assert "root" not in opts.raw and opts.raw["cloudboot.exit"] == "reboot"


def test_defaults_enforce_and_no_menu_preference() -> None:
    opts = Options.from_text("console=ttyS0")
    assert opts.cosign is CosignPolicy.ENFORCE
    assert opts.menu is None and opts.target == "" and opts.plan == ""


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("cloudboot.cosign=maybe", "cloudboot.cosign"),
        ("cloudboot.debug=perhaps", "cloudboot.debug"),
    ],
)
def test_bad_values_name_the_key(text: str, key: str) -> None:
    with pytest.raises(CmdlineError, match=key):
        Options.from_text(text)
