"""The packed guest runtime works on its own: the staged Debian python3.11, started through
the staged ld.so with only the staged libraries, imports the agent, parses and evaluates a
plan with our own HCL parser, reads ext4 with our own reader, verifies an ECDSA signature,
and runs cloudboot-reset, with no PyPI package in it at all; and the whole payload stays
under 20 MB."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from guest.contract.arch import Arch
from guest.contract.efi import GLOBAL_VARIABLE_GUID, bootorder
from guest.contract.efi.efivarfs import EfiVarStore
from publisher.media import cpio, guestpack
from publisher.media.guestpack import build_tree, measure
from publisher.media.guestwarm import record_dataclass_code
from publisher.run import run
from tests.helpers import new_key

pytestmark = pytest.mark.skipif(Arch.host() is not Arch.X86_64, reason="runs the amd64 runtime")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("pack") / "root", Arch.X86_64)


def _python(tree: Path, code: str, *args: str) -> str:
    libs = f"{tree}/lib/x86_64-linux-gnu:{tree}/usr/lib/x86_64-linux-gnu"
    proc = subprocess.run(
        [f"{tree}/lib64/ld-linux-x86-64.so.2", "--library-path", libs,
         f"{tree}/usr/bin/python3.11", "-S", "-B", "-c",
         f"import sys; sys.path.insert(0, {str(tree / 'usr/lib/cloudboot')!r})\n{code}", *args],
        env={"PYTHONHOME": f"{tree}/usr"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_runtime_is_self_contained_and_sourceless(tree: Path) -> None:
    out = _python(
        tree,
        "import os, sys, ssl, hashlib, json, ctypes, zlib\n"
        "print(json.__file__, sys.prefix, ssl.OPENSSL_VERSION)",
    )
    assert out.startswith(f"{tree}/usr/lib/python3.11/json/__init__.pyc")
    assert not list((tree / "usr/lib/python3.11").glob("*.py"))
    assert not (tree / "usr/lib/python3.11/test").exists()
    assert not (tree / "usr/lib/python3.11/tkinter").exists()
    app = tree / "usr/lib/cloudboot"
    # the agent, its two entry scripts (and their bytecode), the pack-time code cache and
    # kexec(8); nothing from PyPI
    assert sorted(p.name for p in app.iterdir()) == [
        "__pycache__", "cloud-boot-init.py", "cloudboot-reset.py", "dataclass-code.marshal",
        "guest", "kexec",
    ]  # fmt: skip
    assert not (tree / "usr/lib/python3").exists()  # no dist-packages left behind
    assert os.access(tree / "init", os.X_OK)
    assert (tree / "init").read_text().startswith("#!/bin/busybox sh")


def test_agent_imports_and_plan_evaluates(tree: Path) -> None:
    out = _python(
        tree,
        (
            "import guest.agent.main, guest.agent.sysguest\n"
            "from guest.contract.plan import parse_plan, evaluate, select_target\n"
            "p = parse_plan(open(sys.argv[1]).read(), 'p.hcl')\n"
            "print(select_target(evaluate(p, 'amd64'), None).name)"
        ),
        str(_plan_file(tree)),
    )
    assert out.strip() == "web"


def test_guest_reports_plan_errors_like_the_host(tree: Path) -> None:
    """The packed parser reports a syntax error at the same place and in the same words as
    the host's (both are guest.contract.plan)."""
    out = _python(
        tree,
        (
            "from guest.contract.plan import parse_plan, PlanError\n"
            "try:\n"
            "    parse_plan('default_target = \"a\"\\nx = = 1\\n', 'bad.hcl')\n"
            "except PlanError as exc:\n"
            "    print(exc)\n"
        ),
    )
    from guest.contract.plan import PlanError, parse_plan

    with pytest.raises(PlanError) as host:
        parse_plan('default_target = "a"\nx = = 1\n', "bad.hcl")
    assert out.strip() == str(host.value) and out.startswith("bad.hcl:2:")


def _plan_file(tree: Path) -> Path:
    path = tree.parent / "p.hcl"
    path.write_text(
        'default_target = "web"\ntarget "web" {\n  cmdline = ["a", "b"]\n'
        '  disk { device = "LABEL=x" }\n}\n'
    )
    return path


def test_ext4_and_cosign_in_the_packed_runtime(tree: Path, tmp_path: Path) -> None:
    src = tmp_path / "t"
    (src / "boot").mkdir(parents=True)
    (src / "boot/vmlinuz-1").write_bytes(b"K" * 100_000)
    image = tmp_path / "fs.img"
    run(["mkfs.ext4", "-q", "-F", "-d", src, image, "8M"])
    key, pem = new_key()
    payload = b'{"hello":1}'
    sig = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    (tmp_path / "key.pem").write_bytes(pem)
    out = _python(
        tree,
        (
            "from pathlib import Path\n"
            "from guest.agent.diskread import Ext4Reader\n"
            "from guest.agent.disks.bootfiles import read_boot_files\n"
            "from guest.agent.stage import data_size\n"
            "from guest.contract.cosign import load_public_key, verify_signature\n"
            "with Ext4Reader.open(Path(sys.argv[1])) as fs:\n"
            "    b = read_boot_files(fs)\n"
            "k = load_public_key(Path(sys.argv[2]).read_bytes())\n"
            "ok = verify_signature(k, b'{\"hello\":1}', sys.argv[3])\n"
            "print(b.kernel_path, data_size(b.kernel), ok)"
        ),
        str(image),
        str(tmp_path / "key.pem"),
        sig,
    )
    assert out.split() == ["/boot/vmlinuz-1", "100000", "True"]


def test_cloudboot_reset_in_the_packed_runtime(tree: Path, tmp_path: Path) -> None:
    store = EfiVarStore(tmp_path)
    store.write("Boot0001", GLOBAL_VARIABLE_GUID, 7, b"entry")
    store.write("BootOrder", GLOBAL_VARIABLE_GUID, 7, bootorder.serialise([1, 0]))
    entry = tree / "usr/lib/cloudboot/cloudboot-reset.py"  # the script the command runs
    out = _python(
        tree,
        f"import runpy\nsys.path[0] = {str(entry.parent)!r}\n"
        f"sys.argv = [{str(entry)!r}, sys.argv[1]]\nrunpy.run_path({str(entry)!r})",
        str(tmp_path),
    )
    assert "Boot0001 removed" in out
    assert store.read("Boot0001", GLOBAL_VARIABLE_GUID) is None
    order = store.read("BootOrder", GLOBAL_VARIABLE_GUID)
    assert order is not None and bootorder.parse(order.data) == [0]


def test_payload_size_target(tree: Path) -> None:
    report = measure(cpio.tree(tree))
    print(f"guest payload: {report}")
    assert report.lz4 < 20 * 1024 * 1024  # the recipe's compression


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_guest_plan_path_needs_no_third_party_parser(tmp_path: Path) -> None:
    """Run inside the tree (chroot) so every path is the guest's. The plan parser is our
    own (docs/plan-language.md §1): a plan parses there, and neither python-hcl2, lark nor
    regex can even be found by the guest interpreter."""
    tree = build_tree(tmp_path / "root", Arch.X86_64)
    code = (
        "import sys; sys.path.insert(0, '/usr/lib/cloudboot')\n"
        "import importlib.util\n"
        "from guest.contract.plan import parse_plan\n"
        "parse_plan('target \"a\" {\\n  subplan = \"h/r\"\\n}\\n', 'p.hcl')\n"
        "print([m for m in ('hcl2', 'lark', 'regex') if importlib.util.find_spec(m)])\n"
    )
    proc = subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", tree,
         "/usr/bin/python3.11", "-S", "-B", "-c", code],
        env={"PYTHONHOME": "/usr",
             "LD_LIBRARY_PATH": "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"


def test_dataclass_code_is_the_same_from_another_process_and_path(
    tree: Path, tmp_path: Path
) -> None:
    """The one file the packer still precomputes in a host interpreter comes out byte for
    byte the same when another interpreter makes it in another directory."""
    made = []
    for where in (tmp_path / "a", tmp_path / "bb" / "deeper"):
        shutil.copytree(tree / "usr/lib/cloudboot", where,
                        ignore=shutil.ignore_patterns("dataclass-code.marshal"))  # fmt: skip
        record_dataclass_code(where)
        made.append((where / "dataclass-code.marshal").read_bytes())
    assert made[0] == made[1]
    assert made[0] == (tree / "usr/lib/cloudboot/dataclass-code.marshal").read_bytes()


def test_agent_bytecode_is_precompiled(tree: Path) -> None:
    """The agent's own modules (kept as sources) load from __pycache__, and every
    dataclass method the agent defines comes out of the pack-time code cache: nothing is
    compiled on the guest's boot path (each compile costs ~10x more under TCG). With the
    entry script's prelude, the deferred stdlib modules (inspect and what it imports,
    locale) are not loaded by the imports of an OCI target's boot."""
    app = tree / "usr/lib/cloudboot"
    assert (app / "guest/agent/__pycache__/main.cpython-311.pyc").is_file()
    assert not (app / "guest/agent/main.pyc").exists()
    entry = guestpack._ENTRY.replace("precompiled.install(", "cache = precompiled.install(")
    out = _python(
        tree,
        entry
        + (
            "import guest.agent.main, guest.agent.sysguest, guest.agent.fetch\n"
            "import guest.agent.stage, guest.contract.cosign\n"
            "import guest.agent.menu, guest.agent.metadata, guest.agent.template\n"
            "import guest.agent.reset\n"
            "real = [m for m in ('inspect', 'locale', 'ast', 'dis', 'tokenize', 'secrets')\n"
            "        if type(sys.modules.get(m)).__name__ == 'module']\n"
            # a disk target's reader (guest/contract/extfs.py) imports none of them either
            "import guest.agent.diskread\n"
            "print(cache.hits, cache.misses, guest.agent.main.__cached__, real)"
        ),
    )
    hits, misses, cached, real = out.split(maxsplit=3)
    assert int(hits) > 200 and int(misses) == 0, out
    assert cached.endswith("guest/agent/__pycache__/main.cpython-311.pyc")
    assert real.strip() == "[]", out


def test_modules_the_guest_cannot_have_are_not_searched_for(tree: Path) -> None:
    """The entry prelude marks Windows' and Jython's modules, and ``_uuid``, as absent: the
    agent's imports then never search the path for them, and what the agent uses of
    ``uuid`` (GUIDs: parse, format, bytes_le) works without ``_uuid``."""
    out = _python(
        tree,
        guestpack._ENTRY
        + (
            "import guest.agent.main, guest.agent.sysguest, guest.agent.fetch, uuid, copy\n"
            "guid = uuid.UUID('c12a7328-f81f-11d2-ba4b-00a0c93ec93b')\n"
            "assert uuid.UUID(bytes_le=guid.bytes_le) == guid and uuid.uuid4().version == 4\n"
            "print([sys.modules[m] for m in precompiled.ABSENT], copy.deepcopy([guid]))"
        ),
    )
    assert out.startswith("[None, None, None, None, None] [UUID('c12a7328"), out


def test_a_deferred_module_loads_when_used(tree: Path) -> None:
    """A dataclass without a docstring still gets one: the real inspect is imported then,
    and takes the stand-in's place for every later import."""
    out = _python(
        tree,
        "from guest.agent import precompiled\nprecompiled.defer()\n"
        "import dataclasses\n@dataclasses.dataclass\nclass Plain:\n    x: int\n"
        "import inspect\nprint(Plain.__doc__, type(inspect).__name__, inspect.isclass(Plain))",
    )
    assert out.split() == ["Plain(x:", "int)", "module", "True"], out


def test_every_guest_dataclass_has_a_docstring() -> None:
    """Else ``dataclasses`` asks ``inspect`` for one at class creation, and the guest's
    boot pays for importing inspect after all (guest.agent.precompiled)."""
    import ast

    undocumented = []
    for path in sorted((Path(__file__).parent.parent / "guest").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and ast.get_docstring(node) is None:
                names = [ast.unparse(d) for d in node.decorator_list]
                if any(n.startswith(("dataclass", "dataclasses.dataclass")) for n in names):
                    undocumented.append(f"{path.name}:{node.lineno} {node.name}")
    assert undocumented == []


def test_aarch64_tree_packs_with_arm64_runtime_and_caches(tmp_path: Path) -> None:
    """Packing for arm64 on an amd64 host: the runtime and its extension modules are arm64
    ELF files (e_machine 0xB7), yet the pack-time step that imports the packed code on
    the host (the dataclass code cache) ran, and it stays small."""
    tree = build_tree(tmp_path / "root", Arch.AARCH64)
    app = tree / "usr/lib/cloudboot"
    dynload = tree / "usr/lib/python3.11/lib-dynload"
    for binary in (tree / "usr/bin/python3.11", *dynload.glob("_ssl*.so")):
        assert binary.read_bytes()[18:20] == b"\xb7\x00", binary
    assert (app / "dataclass-code.marshal").stat().st_size > 100_000
    report = measure(cpio.tree(tree))
    print(f"aarch64 guest payload: {report}")
    assert report.lz4 < 20 * 1024 * 1024  # the recipe's compression
