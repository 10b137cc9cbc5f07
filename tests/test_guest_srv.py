"""``_oci._tcp.<domain>`` registries: the guest's SRV lookup, RFC 2782 order and failover.

Real parts: dnsmasq serves the SRV records and the targets' A records; two docker-registry
instances share one storage directory (the same content, as replicas of a fleet do), each
behind a fault-injecting proxy that records which replica answered. The ordering and the
DNS codec are also checked on their own (pure), including hostile answers.
"""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guest.agent import srv
from guest.agent.fetch import SRV_ROUNDS, Credentials, FetchError, RegistryClient
from guest.agent.pulls import pull_plan
from guest.contract import dnswire, oci
from publisher.localregistry import RunningRegistry, local_registry
from tests.bearer_front import bearer_front
from tests.dns_server import DnsServer, SrvRecord, dns_server
from tests.faulty_proxy import DROP, FaultyProxy, faulty_proxy
from tests.helpers import push_plan

PLAN = b'default_target = "t"\ntarget "t" {\n  disk { device = "LABEL=root" }\n}\n'
NAME = "_oci._tcp.fleet.test"
DOWN = "_oci._tcp.down.test"


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ---- pure: RFC 2782 order and the DNS codec ---------------------------------------------


def test_priority_first_then_weight() -> None:
    records = [
        dnswire.Srv(30, 0, 1, "c"),
        dnswire.Srv(10, 0, 1, "a"),
        dnswire.Srv(20, 0, 1, "b"),
        dnswire.Srv(10, 0, 1, ""),  # "." : no service at this record, never tried
    ]
    order = srv.rfc2782_order(records, random.Random(1))
    assert [r.target for r in order] == ["a", "b", "c"]


def test_weights_share_the_first_slot_in_proportion() -> None:
    records = [dnswire.Srv(10, 90, 1, "heavy"), dnswire.Srv(10, 10, 1, "light")]
    rng = random.Random(42)
    firsts = [srv.rfc2782_order(records, rng)[0].target for _ in range(2000)]
    share = firsts.count("heavy") / len(firsts)
    assert 0.85 < share < 0.95  # 90 % expected; a broken draw gives 50 % or 100 %
    # every record is still in the list: a draw without replacement
    assert sorted(r.target for r in srv.rfc2782_order(records, rng)) == ["heavy", "light"]


def test_zero_weight_records_have_a_small_chance() -> None:
    """RFC 2782: weight 0 next to weighted records is drawn first only rarely (1 in 101)."""
    records = [dnswire.Srv(10, 100, 1, "weighted"), dnswire.Srv(10, 0, 1, "zero")]
    rng = random.Random(3)
    firsts = [srv.rfc2782_order(records, rng)[0].target for _ in range(5000)]
    assert 0 < firsts.count("zero") < 150


def test_srv_name_shape() -> None:
    assert srv.is_srv_name(NAME)
    assert not srv.is_srv_name("registry.example.com")
    assert not srv.is_srv_name("_oci.example.com")
    assert not srv.is_srv_name("127.0.0.1:5000")
    assert oci.parse_ref(f"{NAME}/plans/web").registry == NAME


def _answer_header(query_id: int, ancount: int) -> bytes:
    return struct.pack(">HHHHHH", query_id, 0x8180, 1, ancount, 0, 0)


def test_hostile_answers_are_format_errors() -> None:
    question = dnswire.encode_query(9, NAME, dnswire.TYPE_SRV)[12:]
    good_head = _answer_header(9, 1)
    forward = good_head + question + b"\xc0\xff" + b"\0" * 10  # pointer past itself
    loop = good_head + question + b"\xc0\x0c" + struct.pack(">HHIH", 33, 1, 60, 8)
    loop += struct.pack(">HHH", 1, 1, 80) + b"\xc0\x4a"  # SRV target points at itself
    cases = {
        "short": b"\0\x09",
        "other id": _answer_header(8, 0) + question,
        "forward pointer": forward,
        "self pointer": loop,
        "cut record": good_head + question + b"\xc0\x0c\x00\x21",
        "too many records": struct.pack(">HHHHHH", 9, 0x8180, 1, 60000, 0, 0) + question,
    }
    for why, data in cases.items():
        with pytest.raises(dnswire.DnsFormatError):
            dnswire.decode_answer(data, 9, NAME, dnswire.TYPE_SRV)
            pytest.fail(why)


# ---- against dnsmasq and two docker-registry replicas -----------------------------------


@dataclass
class Fleet:
    a: RunningRegistry
    pa: FaultyProxy
    pb: FaultyProxy
    dns: DnsServer
    stack: contextlib.ExitStack

    def client(self) -> tuple[RegistryClient, list[float]]:
        pauses: list[float] = []
        resolver = srv.Resolver(lambda: [(self.dns.host, self.dns.port)])
        return RegistryClient(insecure=True, srv=resolver, pause=pauses.append), pauses


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    storage = root / "storage"
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(local_registry(root / "a", storage=storage))
        b = stack.enter_context(local_registry(root / "b", storage=storage))
        pa = stack.enter_context(faulty_proxy(a))
        pb = stack.enter_context(faulty_proxy(b))
        records = [
            SrvRecord(NAME, "a.fleet.test", _port(pa.address), 10, 1),
            SrvRecord(NAME, "b.fleet.test", _port(pb.address), 20, 1),
            SrvRecord(DOWN, "gone.down.test", _port(a.address), 10, 1),
            SrvRecord(DOWN, "b.fleet.test", _port(pb.address), 20, 1),
        ]
        hosts = {"a.fleet.test": "127.0.0.1", "b.fleet.test": "127.0.0.1"}
        hosts["gone.down.test"] = "127.0.0.1"
        dns = stack.enter_context(dns_server(root / "dns", records, hosts))
        push_plan(a.url, "plans/web", "latest", PLAN)
        yield Fleet(a, pa, pb, dns, stack)


def _served(proxy: FaultyProxy) -> int:
    return len(proxy.seen("GET", r"^/v2/plans/web/"))


def test_the_preferred_replica_serves_and_the_lookup_is_cached(fleet: Fleet) -> None:
    client, _pauses = fleet.client()
    before_a, before_b, queries = _served(fleet.pa), _served(fleet.pb), fleet.dns.queries()
    ref = oci.parse_ref(f"{NAME}/plans/web")
    assert pull_plan(client, ref, "amd64")[1] == PLAN
    assert pull_plan(client, ref, "amd64")[1] == PLAN
    assert _served(fleet.pa) - before_a == 4 and _served(fleet.pb) == before_b
    assert fleet.dns.queries() - queries == 1  # one SRV query; the A records came along


@pytest.mark.parametrize("answer", [503, 500, 429, 408, DROP])
def test_a_failing_replica_fails_over_to_the_next(fleet: Fleet, answer: int | str) -> None:
    client, pauses = fleet.client()
    before_b = _served(fleet.pb)
    fleet.pa.fail("GET", r"/manifests/", answer, times=1)  # type: ignore[arg-type]
    try:
        assert pull_plan(client, oci.parse_ref(f"{NAME}/plans/web"), "amd64")[1] == PLAN
    finally:
        fleet.pa.clear()
    assert _served(fleet.pb) - before_b == 2  # the manifest and then the blob, from b
    assert pauses == []  # no pause needed: another replica answered in the first round


def test_a_client_error_is_final(fleet: Fleet) -> None:
    client, _pauses = fleet.client()
    before_b = _served(fleet.pb)
    with pytest.raises(FetchError, match="404"):
        pull_plan(client, oci.parse_ref(f"{NAME}/plans/missing"), "amd64")
    assert len(fleet.pb.seen("GET", r"/plans/missing/")) == 0 and _served(fleet.pb) == before_b


def test_all_replicas_failing_retries_in_rounds_then_names_them(fleet: Fleet) -> None:
    client, pauses = fleet.client()
    fleet.pa.fail("GET", r"/manifests/", 503, times=-1)
    fleet.pb.fail("GET", r"/manifests/", 503, times=-1)
    try:
        with pytest.raises(FetchError) as err:
            pull_plan(client, oci.parse_ref(f"{NAME}/plans/web"), "amd64")
    finally:
        fleet.pa.clear()
        fleet.pb.clear()
    message = str(err.value)
    assert NAME in message and "a.fleet.test" in message and "b.fleet.test" in message
    assert len(pauses) == SRV_ROUNDS - 1 and pauses == sorted(pauses)


def test_stopped_preferred_replica(tmp_path: Path, fleet: Fleet) -> None:
    """The DOWN name's preferred target is a registry that is not running (its port
    closed): the pull comes from the other replica, and the next request goes there first."""
    with local_registry(tmp_path / "gone") as gone:
        port = gone.port
    records = [
        SrvRecord(DOWN, "gone.down.test", port, 10, 1),
        SrvRecord(DOWN, "b.fleet.test", _port(fleet.pb.address), 20, 1),
    ]
    hosts = {"gone.down.test": "127.0.0.1", "b.fleet.test": "127.0.0.1"}
    with dns_server(tmp_path / "dns", records, hosts) as dns:
        resolver = srv.Resolver(lambda: [(dns.host, dns.port)])
        client = RegistryClient(insecure=True, srv=resolver, pause=lambda _s: None)
        assert pull_plan(client, oci.parse_ref(f"{DOWN}/plans/web"), "amd64")[1] == PLAN
        assert [e.host for e in resolver.endpoints(DOWN)] == [
            f"b.fleet.test:{_port(fleet.pb.address)}",
            f"gone.down.test:{port}",
        ]


def test_no_records_is_an_error_naming_the_name(fleet: Fleet) -> None:
    client, _pauses = fleet.client()
    with pytest.raises(FetchError, match=r"_oci\._tcp\.nowhere\.test"):
        pull_plan(client, oci.parse_ref("_oci._tcp.nowhere.test/plans/web"), "amd64")


def test_a_silent_resolver_times_out(tmp_path: Path) -> None:
    """A resolver that never answers (a bound UDP socket nobody reads) costs bounded time
    and ends in an error naming the name and the server."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server = silent.getsockname()
        resolver = srv.Resolver(lambda: [server], timeout=0.2)
        with pytest.raises(srv.SrvError, match=r"no DNS answer for _oci\._tcp\.x\.test"):
            resolver.endpoints("_oci._tcp.x.test")
        assert resolver.lookups == srv.TRIES


def test_a_token_per_srv_target(tmp_path: Path, fleet: Fleet) -> None:
    """Each replica runs its own token service: a token one issued is kept for it, and
    never sent to the other (which would make every switch cost a new token)."""
    settings = {"user": "bob:pw"}
    with (
        bearer_front(fleet.a.url, token="tok-a", **settings) as (front_a, handler_a),
        bearer_front(fleet.a.url, token="tok-b", **settings) as (front_b, handler_b),
    ):
        records = [
            SrvRecord("_oci._tcp.tokens.test", "a.tokens.test", _port(front_a), 10, 1),
            SrvRecord("_oci._tcp.tokens.test", "b.tokens.test", _port(front_b), 20, 1),
        ]
        hosts = {"a.tokens.test": "127.0.0.1", "b.tokens.test": "127.0.0.1"}
        with dns_server(tmp_path / "dns", records, hosts) as dns:
            resolver = srv.Resolver(lambda: [(dns.host, dns.port)])
            client = RegistryClient(
                insecure=True, srv=resolver, default_credentials=Credentials("bob", "pw")
            )
            ref = oci.parse_ref("_oci._tcp.tokens.test/plans/web")
            first, second = resolver.endpoints(ref.registry)
            for turn in range(4):  # a, b, a, b: the order moved by hand between pulls
                assert pull_plan(client, ref, "amd64")[1] == PLAN
                resolver.demote(ref.registry, first if turn % 2 == 0 else second)
    assert (handler_a.issued, handler_b.issued) == (1, 1)
