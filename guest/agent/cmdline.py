"""The kernel command line as the guest agent reads it (docs/wire-formats.md §5.1).

Upstream splits ``/proc/cmdline`` on blanks outside double quotes, splits ``k=v`` at the
first ``=``, treats a bare word as ``1`` and lets a later duplicate win. The knobs we act on
live under ``cloudboot.``; ``Options`` gives them typed names so the agent never re-parses
strings, and so a typo in a policy value is an error that names the key instead of a
silently ignored word.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from guest.agent.ipconfig import Dhcp, StaticIp, parse_ip
from guest.contract.errors import CloudbootError

PREFIX = "cloudboot."


class CmdlineError(CloudbootError):
    pass


def split_words(text: str) -> list[str]:
    """Split on blanks outside double quotes; the quotes themselves are dropped."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for char in text:
        if char == '"':
            quoted = not quoted
            started = True
        elif char.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
    if started:
        words.append("".join(current))
    return words


def parse_cmdline(text: str) -> dict[str, str]:
    """``k=v`` pairs (split at the first ``=``); a bare word means ``1``; later wins."""
    params: dict[str, str] = {}
    for word in split_words(text):
        key, sep, value = word.partition("=")
        params[key] = value if sep else "1"
    return params


class CosignPolicy(enum.Enum):
    """What a missing or bad plan signature does: stop, warn and go on, or nothing."""

    ENFORCE = "enforce"
    WARN = "warn"
    OFF = "off"


_TRUE = {"1", "y", "yes", "true", "on"}
_FALSE = {"0", "n", "no", "false", "off", ""}


def _flag(params: Mapping[str, str], key: str, default: bool = False) -> bool:
    value = params.get(key)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise CmdlineError(f"{key}={value!r}: expected 1/0, yes/no, true/false", where="/proc/cmdline")


#: ``cloudboot.exit``'s modes: upstream's guest kexecs by default or reboots (Path C);
#: anything else is an error there and here. ``kexec,reboot`` is ours: kexec, and the
#: reboot path when the kernel refuses it (guest/agent/kexec.py, docs/knobs.md).
EXIT_MODES = ("kexec", "reboot")
#: How long LLDP is listened for when ``cloudboot.lldp.wait`` is not given (upstream's).
LLDP_WAIT_DEFAULT = 10.0


def parse_exit(value: str) -> tuple[str, ...]:
    """``cloudboot.exit``'s modes in the order tried: ``reboot``, ``kexec``, ``kexec,reboot``."""
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    if not modes or len(set(modes)) != len(modes) or any(m not in EXIT_MODES for m in modes):
        raise CmdlineError(
            f"cloudboot.exit={value!r}: expected reboot, kexec or kexec,reboot",
            where="/proc/cmdline",
        )
    return modes


def _seconds(params: Mapping[str, str], key: str, default: float) -> float:
    """A Go duration (``10s``, ``1m30s``) or bare seconds; zero or negative: 0."""
    from guest.contract.plan import parse_timeout

    if key not in params:
        return default
    try:
        return parse_timeout(params[key]) or 0.0
    except ValueError:
        raise CmdlineError(
            f"{key}={params[key]!r}: expected a duration such as 10s or 1m30s",
            where="/proc/cmdline",
        ) from None


@dataclass(frozen=True)
class Options:
    """The ``cloudboot.*`` knobs of one boot, typed; ``raw`` keeps every ``cloudboot.*`` key."""

    exit: str = "reboot"
    plan: str = ""
    target: str = ""
    insecure: bool = False
    cosign: CosignPolicy = CosignPolicy.ENFORCE
    menu: bool | None = None
    menu_timeout: str | None = None
    menu_prompt: str | None = None
    cmdline: str | None = None
    dns: tuple[str, ...] = ()
    debug: bool = False
    quiet: bool = False
    rollback: bool = False  # accept a plan older than the freshness floor (logged)
    metadata_url: str = ""
    image: str = ""  # legacy single-image mode: a one-target plan (docs/knobs.md)
    keymap: str = ""
    lldp: bool = True
    lldp_wait: float = LLDP_WAIT_DEFAULT  # seconds; 0: do not listen
    lldp_tx: bool = True
    lldp_name: str = ""
    ip: StaticIp | Dhcp | None = None  # ``ip=`` (klibc syntax), not under cloudboot.
    raw: Mapping[str, str] = field(default_factory=dict)
    #: ``rd.cloudboot.user`` / ``rd.cloudboot.pass`` (upstream's names, outside ``raw``):
    #: registry credentials from the baked command line, never shown
    registry_user: str = field(default="", repr=False)
    registry_password: str = field(default="", repr=False)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Options:
        raw = {k: v for k, v in params.items() if k.startswith(PREFIX)}
        policy_text = raw.get("cloudboot.cosign", "enforce").lower()
        try:
            policy = CosignPolicy(policy_text)
        except ValueError:
            raise CmdlineError(
                f"cloudboot.cosign={policy_text!r}: expected enforce, warn or off",
                where="/proc/cmdline",
            ) from None
        menu = _flag(raw, "cloudboot.menu") if "cloudboot.menu" in raw else None
        dns = tuple(d for d in raw.get("cloudboot.dns", "").replace(";", ",").split(",") if d)
        return cls(
            exit=",".join(parse_exit(raw.get("cloudboot.exit", "reboot"))),
            plan=raw.get("cloudboot.plan", ""),
            target=raw.get("cloudboot.target", ""),
            insecure=_flag(raw, "cloudboot.insecure"),
            cosign=policy,
            menu=menu,
            menu_timeout=raw.get("cloudboot.menu.timeout"),
            menu_prompt=raw.get("cloudboot.menu.prompt"),
            cmdline=raw.get("cloudboot.cmdline"),
            dns=dns,
            debug=_flag(raw, "cloudboot.debug"),
            rollback=_flag(raw, "cloudboot.rollback"),
            quiet=_flag(raw, "cloudboot.quiet"),
            metadata_url=raw.get("cloudboot.metadata.url", ""),
            image=raw.get("cloudboot.image", ""),
            keymap=raw.get("cloudboot.keymap", ""),
            lldp=_flag(raw, "cloudboot.lldp", default=True),
            lldp_wait=_seconds(raw, "cloudboot.lldp.wait", LLDP_WAIT_DEFAULT),
            lldp_tx=_flag(raw, "cloudboot.lldp.tx", default=True),
            lldp_name=raw.get("cloudboot.lldp.name", ""),
            ip=parse_ip(params.get("ip")),
            raw=raw,
            registry_user=params.get("rd.cloudboot.user", ""),
            registry_password=params.get("rd.cloudboot.pass", ""),
        )

    @classmethod
    def from_text(cls, text: str) -> Options:
        return cls.from_params(parse_cmdline(text))


def knob_warnings(options: Options) -> list[str]:
    """Knobs upstream acts on that this guest reads but does not act on (docs/knobs.md)."""
    warnings = []
    if options.keymap:
        warnings.append(
            f"cloudboot.keymap={options.keymap}: keymaps are not loaded by this guest; "
            "the menu takes target numbers and names on the kernel's default layout"
        )
    return warnings
