"""The console menu: rendering, every input form, and the countdown over real fds."""

from __future__ import annotations

import os
import time

from guest.agent.menu import Entry, ask, choose, render

ENTRIES = [Entry("debian", "Debian 13", "6.12"), Entry("rescue", "rescue"),
           Entry("ubuntu", "Ubuntu", "24.04")]  # fmt: skip


def test_render_marks_the_default() -> None:
    text = render(ENTRIES, "rescue", "Boot which?")
    assert text.splitlines() == [
        "   1) Debian 13 [debian] (6.12)",
        " * 2) rescue",
        "   3) Ubuntu [ubuntu] (24.04)",
        "Boot which? ",
    ]


def test_choose_forms() -> None:
    assert choose(ENTRIES, "rescue", "") == "rescue"
    assert choose(ENTRIES, "rescue", " 3 ") == "ubuntu"
    assert choose(ENTRIES, "rescue", "4") is None
    assert choose(ENTRIES, "rescue", "debian") == "debian"
    assert choose(ENTRIES, "rescue", "ub") == "ubuntu"
    assert choose(ENTRIES, "rescue", "x") is None
    both = [*ENTRIES, Entry("ubuntu-old", "old")]
    assert choose(both, "rescue", "ub") is None  # ambiguous prefix
    assert choose(both, "rescue", "ubuntu") == "ubuntu"  # exact name wins


def test_ask_reads_whichever_console_answers() -> None:
    serial_r, serial_w = os.pipe()
    tty_r, tty_w = os.pipe()
    os.write(tty_w, b"2\r")
    assert ask([serial_r, tty_r], 5.0) == "2"
    for fd in (serial_r, serial_w, tty_r, tty_w):
        os.close(fd)


def test_ask_countdown_expires() -> None:
    r, w = os.pipe()
    start = time.monotonic()
    assert ask([r], 0.3) is None
    assert time.monotonic() - start >= 0.3
    os.close(r)
    os.close(w)
