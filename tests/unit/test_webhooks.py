"""Webhooks without a network: signatures, the SSRF guard, intake on submit, the notifier."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from difflane import wiring
from difflane.api.app import create_app
from difflane.jobs import ErrorCode, Job, Webhook
from difflane.settings import Settings
from difflane.store.base import mutate
from difflane.testing import MemoryJobStore
from difflane.webhooks import events
from difflane.webhooks.guard import Guard, Refused, ResolveFailed
from difflane.webhooks.notifier import ORPHAN_GRACE_S, Notifier
from difflane.webhooks.outbox import Pending
from difflane.webhooks.outbox_sqlite import SqliteOutbox
from difflane.webhooks.sender import SendResult
from difflane.webhooks.signing import InvalidSignature, Secret
from tests.conftest import make_job

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TINY = {"model": "tiny", "prompt": "a red fox"}

# --- signing ----------------------------------------------------------------------------------


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    secret = Secret.parse(SECRET)
    body = b'{"test": 2432232314}'
    assert secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    headers = secret.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    secret.verify(headers, body, now=1614265330 + 10)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "webhook-id": "msg_other"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
    ],
)
def test_a_tampered_message_does_not_verify(tamper: Any) -> None:
    secret = Secret.parse(SECRET)
    headers, body = tamper(secret.headers("msg_1", 1000, b"{}"), b"{}")
    with pytest.raises(InvalidSignature):
        secret.verify(headers, body, now=1000)


def test_an_old_message_does_not_verify_and_rotation_signatures_do() -> None:
    secret = Secret.parse(SECRET)
    headers = secret.headers("msg_1", 1000, b"{}")
    with pytest.raises(InvalidSignature):
        secret.verify(headers, b"{}", now=1000 + 301)
    rotated = {**headers, "webhook-signature": "v1,b2xkc2lnbmF0dXJl " + headers["webhook-signature"]}
    secret.verify(rotated, b"{}", now=1000)


@pytest.mark.parametrize("text", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!", "whsec_c2hvcnQ=", ""])
def test_bad_secrets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Secret.parse(text)
    assert Secret.parse(Secret.generate())  # what the docs tell people to create


def test_a_bad_secret_setting_is_a_start_up_error() -> None:
    from difflane.errors import ConfigError

    with pytest.raises(ConfigError, match="DIFFLANE_WEBHOOK_SECRET"):
        create_app(Settings(store="memory", dispatch="memory", webhook_secret="nope"))  # type: ignore[arg-type]


# --- the SSRF guard ---------------------------------------------------------------------------


def fake_resolver(table: dict[str, Sequence[str]]) -> Any:
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise ResolveFailed(f"no such host {host}")
        return table[host]

    return resolve


GUARD = Guard(["hooks.example.com", "*.partner.example", "93.184.216.34", "[2606:2800:220:1::1]"])


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://hooks.example.com/x", "webhook_scheme_refused"),
        ("ftp://hooks.example.com/x", "webhook_scheme_refused"),
        ("javascript:alert(1)", "webhook_scheme_refused"),
        ("https://user:pw@hooks.example.com/x", "webhook_url_refused"),
        ("https://hooks.example.com/x#frag", "webhook_url_refused"),
        ("https:///x", "webhook_url_refused"),
        ("https://hooks.example.com:99999/x", "webhook_url_refused"),
        ("https://evil.example.com/x", "webhook_host_not_allowed"),
        ("https://partner.example/x", "webhook_host_not_allowed"),  # *.domain does not match the apex
        ("https://hooks.example.com.evil.net/x", "webhook_host_not_allowed"),
        ("https://hooks.example.com/" + "x" * 2100, "webhook_url_refused"),
    ],
)
def test_urls_are_checked_before_any_network(url: str, code: str) -> None:
    with pytest.raises(Refused) as info:
        GUARD.check_url(url)
    assert info.value.code == code


def test_allowed_urls_keep_their_path_and_query() -> None:
    target = GUARD.check_url("https://HOOKS.example.com./in/é?a=1&b=2")
    assert (target.host, target.port, target.path) == ("hooks.example.com", 443, "/in/%C3%A9?a=1&b=2")
    assert GUARD.check_url("https://a.b.partner.example:8443/").host_header == "a.b.partner.example:8443"
    assert GUARD.check_url("https://93.184.216.34/x").is_ip_literal


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "168.63.129.16",  # Azure platform endpoint
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "::127.0.0.1",  # IPv4-compatible (deprecated) loopback
        "::ffff:0:7f00:1",  # SIIT-translated loopback
        "64:ff9b:1::7f00:1",  # local-use NAT64 of loopback
        "fec0::1",  # deprecated site-local
        "192.0.0.8",  # IETF protocol assignments
    ],
)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(address: str) -> None:
    with pytest.raises(Refused):
        GUARD.check_address(ipaddress.ip_address(address))
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(Refused):
        Guard(["*"]).check_url(f"https://{literal}/hook")


def test_public_addresses_pass() -> None:
    for address in ("93.184.216.34", "8.8.8.8", "2606:2800:220:1::1", "64:ff9b::808:808"):
        GUARD.check_address(ipaddress.ip_address(address))


def test_localhost_names_are_refused_before_dns() -> None:
    for url in ("https://localhost/x", "https://api.localhost/x"):
        with pytest.raises(Refused):
            Guard(["*"]).check_url(url)


def test_a_name_that_resolves_to_a_refused_address_is_refused_at_send_time() -> None:
    guard = Guard(
        ["*"],
        resolver=fake_resolver(
            {
                "rebind.example.com": ["127.0.0.1"],
                "mixed.example.com": ["93.184.216.34", "10.0.0.7"],
                "meta.example.com": ["169.254.169.254"],
                "good.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
            }
        ),
    )
    for host in ("rebind", "mixed", "meta"):
        target = guard.check_url(f"https://{host}.example.com/x")  # the name itself is fine
        with pytest.raises(Refused):
            guard.resolve(target)
    assert [str(a) for a in guard.resolve(guard.check_url("https://good.example.com/"))] == [
        "93.184.216.34",
        "2606:2800:220:1::1",
    ]
    with pytest.raises(ResolveFailed):
        guard.resolve(guard.check_url("https://gone.example.com/"))


def test_development_mode_allows_loopback_and_private_but_never_metadata() -> None:
    dev = Guard(["*"], allow_http=True, allow_private=True)
    for url in ("http://127.0.0.1:9000/x", "http://localhost/x", "http://10.1.2.3/x", "http://[::1]/x"):
        dev.check_url(url)
    for url in ("http://169.254.169.254/latest/meta-data", "http://168.63.129.16/", "http://0.0.0.0:80/"):
        with pytest.raises(Refused):
            dev.check_url(url)


# --- intake on submit -------------------------------------------------------------------------


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[tuple[TestClient, wiring.Components]]:
    settings = Settings(
        store="memory",
        dispatch="memory",
        webhook_secret=SECRET,  # type: ignore[arg-type]
        webhook_allowed_hosts=["hooks.example.com"],
        webhook_state=tmp_path / "webhooks.db",
    )
    parts = wiring.build(settings)
    with TestClient(create_app(settings, components=parts)) as client:
        yield client, parts


def test_a_job_with_a_webhook_records_it(hooked: tuple[TestClient, wiring.Components]) -> None:
    client, parts = hooked
    hook = {"url": "https://hooks.example.com/difflane", "events": ["completed", "started", "started"]}
    r = client.post("/v1/jobs", json={**TINY, "webhook": hook})
    assert r.status_code == 202, r.text
    assert r.json()["webhook"] == {"url": hook["url"], "events": ["started", "completed"]}
    job = parts.store.get(r.json()["id"])
    assert job is not None and job.webhook == Webhook(hook["url"], ("started", "completed"))
    default = client.post("/v1/jobs", json={**TINY, "webhook": {"url": hook["url"]}}).json()
    assert default["webhook"]["events"] == ["completed"]


@pytest.mark.parametrize(
    ("hook", "code", "field"),
    [
        ({"url": "http://hooks.example.com/x"}, "webhook_scheme_refused", "webhook.url"),
        ({"url": "https://10.0.0.1/x"}, "webhook_host_not_allowed", "webhook.url"),
        ({"url": "https://evil.example.com/x"}, "webhook_host_not_allowed", "webhook.url"),
        ({"url": "https://hooks.example.com/x", "events": ["finished"]}, "invalid_input", "webhook.events.0"),
        ({"url": "https://hooks.example.com/x", "events": []}, "invalid_input", "webhook.events"),
        ({"url": "https://hooks.example.com/x", "extra": 1}, "invalid_input", "webhook.extra"),
        ({"events": ["completed"]}, "invalid_input", "webhook.url"),
    ],
)
def test_bad_webhooks_are_422_and_make_no_job(
    hooked: tuple[TestClient, wiring.Components], hook: dict[str, Any], code: str, field: str
) -> None:
    client, _ = hooked
    r = client.post("/v1/jobs", json={**TINY, "webhook": hook})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["field"] == field
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_metadata_and_private_addresses_are_refused_on_submit(tmp_path: Path) -> None:
    settings = Settings(
        store="memory",
        dispatch="memory",
        webhook_secret=SECRET,  # type: ignore[arg-type]
        webhook_allowed_hosts=["*"],
        webhook_state=tmp_path / "w.db",
    )
    with TestClient(create_app(settings)) as client:
        for url in ("https://169.254.169.254/latest", "https://127.0.0.1/x", "https://[::1]/x", "https://localhost/"):
            r = client.post("/v1/jobs", json={**TINY, "webhook": {"url": url}})
            assert r.status_code == 422 and r.json()["error"]["code"] == "webhook_address_refused", url


def test_webhooks_are_refused_when_no_secret_is_configured() -> None:
    with TestClient(create_app(Settings(store="memory", dispatch="memory"))) as client:
        r = client.post("/v1/jobs", json={**TINY, "webhook": {"url": "https://hooks.example.com/x"}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "webhooks_disabled"


def test_an_idempotent_replay_does_not_leave_a_second_watch(hooked: tuple[TestClient, wiring.Components]) -> None:
    client, _ = hooked
    body = {**TINY, "webhook": {"url": "https://hooks.example.com/x"}}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k"}).json()
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k"}).json()
    assert first["id"] == again["id"]
    outbox = client.app.state.ctx.webhooks.outbox  # type: ignore[attr-defined]
    assert [w.job_id for w in outbox.watches()] == [first["id"]]


def test_a_503_submit_keeps_its_watch_until_the_job_is_known_absent(
    hooked: tuple[TestClient, wiring.Components],
) -> None:
    # A 503 is ambiguous (the write may have committed): the watch stays, and the notifier drops
    # it once the store answers that the job does not exist (issue 9, item 7).
    client, parts = hooked
    parts.store.down = True  # type: ignore[attr-defined]
    r = client.post("/v1/jobs", json={**TINY, "webhook": {"url": "https://hooks.example.com/x"}})
    assert r.status_code == 503
    outbox = client.app.state.ctx.webhooks.outbox  # type: ignore[attr-defined]
    assert len(outbox.watches()) == 1
    parts.store.down = False  # type: ignore[attr-defined]
    notifier = Notifier(parts.store, outbox, FakeSender(), base_url="https://x", clock=lambda: 1e12)  # type: ignore[arg-type]
    notifier.tail()
    assert outbox.watches() == []


# --- the notifier -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class FakeSender:
    """Records attempts; ``script`` holds the outcomes to return, then success."""

    timeout: float = 5.0
    sent: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)
    script: list[SendResult] = dataclasses.field(default_factory=list)

    def send(self, msg_id: str, url: str, body: bytes) -> SendResult:
        self.sent.append((msg_id, url, body))
        return self.script.pop(0) if self.script else SendResult(True, False, "HTTP 204", 204)

    def types(self) -> list[str]:
        return [json.loads(b)["type"] for _, _, b in self.sent]


FAIL = SendResult(False, True, "HTTP 500 error", 500)
HOOK = "https://hooks.example.com/in"


@dataclasses.dataclass
class Rig:
    store: MemoryJobStore
    outbox: SqliteOutbox
    sender: FakeSender
    clock: Clock
    notifier: Notifier

    def job(self, events_: tuple[str, ...] = ("started", "progress", "completed"), steps: int = 4) -> Job:
        job, _ = self.store.create(dataclasses.replace(make_job(steps=steps), webhook=Webhook(HOOK, events_)), None)
        self.outbox.watch(job.id, self.clock())
        return job

    def run(self, job: Job, *changes: Any) -> None:
        for change in changes:
            mutate(self.store, job.id, change)


def make_rig(path: Path, **kw: Any) -> Rig:
    store, clock, sender = MemoryJobStore(), Clock(), FakeSender()
    outbox = SqliteOutbox(path)
    notifier = Notifier(
        store,
        outbox,
        sender,
        base_url="https://api.example.com",
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )
    return Rig(store, outbox, sender, clock, notifier)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path / "w.db", max_attempts=3, backoff_seconds=10, backoff_max_seconds=100)
    yield r
    r.outbox.close()


def advance_to(step: int, total: int) -> Any:
    return lambda j: j.advance("w", step, total)


def lifecycle(steps: int = 4) -> list[Any]:
    return [lambda j: j.start("w", 30)] + [advance_to(s, steps) for s in range(1, steps + 1)]


def test_a_job_lifecycle_becomes_started_progress_completed_in_order(rig: Rig) -> None:
    job = rig.job()
    rig.run(job, lambda j: j.start("w", 30), lambda j: j.advance("w", 1, 4))
    while rig.notifier.run_once():  # one delivery per job at a time, oldest first
        pass
    rig.run(job, lambda j: j.advance("w", 2, 4), lambda j: j.succeed("w", ()))
    while rig.notifier.run_once():
        pass
    assert rig.sender.types() == ["job.started", "job.progress", "job.progress", "job.completed"]
    ids = [msg_id for msg_id, _, _ in rig.sender.sent]
    assert len(set(ids)) == 4 and all(i.startswith("msg_") for i in ids)
    completed = json.loads(rig.sender.sent[-1][2])
    assert completed["data"]["id"] == job.id and completed["data"]["state"] == "succeeded"
    assert completed["data"]["links"]["self"] == f"https://api.example.com/v1/jobs/{job.id}"
    assert completed["timestamp"].endswith("Z")
    progress = json.loads(rig.sender.sent[1][2])
    assert progress["data"] == {"id": job.id, "state": "running", "step": 1, "total": 4}
    assert rig.outbox.watches() == [] and rig.outbox.deliveries() == []  # finished and delivered


def test_only_the_chosen_events_are_sent(rig: Rig) -> None:
    job = rig.job(("completed",))
    rig.run(job, *lifecycle(), lambda j: j.succeed("w", ()))
    while rig.notifier.run_once():
        pass
    assert rig.sender.types() == ["job.completed"]


def test_unsent_progress_is_coalesced_to_the_latest_step(rig: Rig) -> None:
    job = rig.job(("progress", "completed"), steps=20)
    rig.run(job, *lifecycle(20))
    rig.notifier.tail()
    assert [d["event"] for d in rig.outbox.deliveries(job.id)] == ["progress"]
    rig.notifier.run_once()
    assert json.loads(rig.sender.sent[0][2])["data"]["step"] == 20


def test_failures_retry_with_growing_backoff_then_give_up(rig: Rig) -> None:
    rig.sender.script = [FAIL, FAIL, FAIL]
    job = rig.job(("completed",))
    rig.run(job, lambda j: j.cancel())
    assert rig.notifier.run_once() == 1
    pending = rig.outbox.deliveries(job.id)[0]
    first_wait = float(pending["next_at"]) - rig.clock.now  # type: ignore[arg-type]
    assert 8 <= first_wait <= 12 and pending["attempts"] == 1 and pending["last_error"] == "HTTP 500 error"
    assert rig.notifier.run_once() == 0  # not due yet
    rig.clock.now += 12
    assert rig.notifier.run_once() == 1
    second_wait = float(rig.outbox.deliveries(job.id)[0]["next_at"]) - rig.clock.now  # type: ignore[arg-type]
    assert 32 <= second_wait <= 48  # 4x longer
    rig.clock.now += 48
    assert rig.notifier.run_once() == 1
    failed = rig.outbox.deliveries(job.id)[0]
    assert failed["state"] == "failed" and failed["attempts"] == 3
    rig.clock.now += 10_000
    assert rig.notifier.run_once() == 0
    assert len({msg_id for msg_id, _, _ in rig.sender.sent}) == 1  # one message id across attempts


@pytest.mark.parametrize(
    "outcome", [SendResult(False, False, "refused: 10.0.0.1 is not public"), SendResult(False, False, "HTTP 410", 410)]
)
def test_refusals_and_410_are_not_retried(rig: Rig, outcome: SendResult) -> None:
    rig.sender.script = [outcome]
    job = rig.job(("started", "completed"))
    rig.run(job, lambda j: j.start("w", 30), lambda j: j.fail(ErrorCode.OOM, "oom"))
    while rig.notifier.run_once():
        pass
    # The abandoned message no longer holds back the job's later ones.
    assert rig.sender.types() == ["job.started", "job.completed"]
    assert [d["state"] for d in rig.outbox.deliveries(job.id)] == ["failed"]


def test_later_events_wait_for_earlier_ones_of_the_same_job(rig: Rig) -> None:
    rig.sender.script = [FAIL]
    job = rig.job(("started", "completed"))
    other = rig.job(("completed",))
    rig.run(job, lambda j: j.start("w", 30), lambda j: j.succeed("w", ()))
    rig.run(other, lambda j: j.cancel())
    rig.notifier.run_once()
    assert sorted(rig.sender.types()) == ["job.completed", "job.started"]  # the other job is not held up
    rig.clock.now += 20
    while rig.notifier.run_once():
        pass
    assert [
        t for (m, _, _), t in zip(rig.sender.sent, rig.sender.types(), strict=True) if job.id.replace("-", "") in m
    ] == [
        "job.started",
        "job.started",
        "job.completed",
    ]


def test_a_retried_job_sends_started_for_each_attempt(rig: Rig) -> None:
    job = rig.job(("started",))
    rig.run(job, lambda j: j.start("w", 30), lambda j: j.requeue("w"), lambda j: j.start("w2", 30))
    while rig.notifier.run_once():
        pass
    assert rig.sender.types() == ["job.started", "job.started"]


def test_delivery_state_survives_a_restart_without_duplicates(tmp_path: Path) -> None:
    first = make_rig(tmp_path / "w.db")
    first.sender.script = [FAIL]
    job = first.job(("started", "completed"))
    first.run(job, lambda j: j.start("w", 30))
    first.notifier.run_once()  # started fails once
    first.run(job, lambda j: j.succeed("w", ()))
    first.notifier.tail()
    first.outbox.close()
    # A new process: same file, same store.
    second = make_rig(tmp_path / "w.db")
    second.store = first.store
    second.notifier.store = first.store
    second.clock.now = first.clock.now + 60
    while second.notifier.run_once():
        pass
    assert second.sender.types() == ["job.started", "job.completed"]
    second.notifier.tail()
    assert second.notifier.run_once() == 0
    second.outbox.close()


def test_two_notifiers_on_one_state_file_send_each_message_once(tmp_path: Path) -> None:
    a = make_rig(tmp_path / "w.db")
    b = make_rig(tmp_path / "w.db")
    b.store = b.notifier.store = a.store  # type: ignore[misc]
    job = a.job()
    a.run(job, *lifecycle(), lambda j: j.succeed("w", ()))
    for _ in range(10):
        b.notifier.tail()
        a.notifier.tail()
        a.notifier.run_once()
        b.notifier.run_once()
    ids = [m for m, _, _ in a.sender.sent + b.sender.sent]
    assert len(ids) == len(set(ids)) == 3  # started, progress (coalesced), completed
    a.outbox.close()
    b.outbox.close()


def test_a_watch_whose_job_never_appeared_is_dropped_after_a_grace(rig: Rig) -> None:
    rig.outbox.watch("01890a5d-ac96-7a3b-8c2e-4f1a2b3c4d5e", rig.clock())
    rig.notifier.tail()
    assert len(rig.outbox.watches()) == 1  # its submit may still be in flight
    rig.clock.now += ORPHAN_GRACE_S + 1
    rig.notifier.tail()
    assert rig.outbox.watches() == []


def test_message_ids_and_bodies_are_stable() -> None:
    job = dataclasses.replace(make_job().cancel(now=42.0), version=7)
    assert events.message_id(job) == f"msg_{job.id.replace('-', '')}_7"
    assert events.body("completed", job, "https://x", 5.0) == events.body("completed", job, "https://x", 9.0)


def test_the_sender_signs_each_attempt_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    from difflane.webhooks.sender import Sender

    captured: list[dict[str, str]] = []
    sender = Sender(Guard(["93.184.216.34"]), Secret.parse(SECRET))
    monkeypatch.setattr(sender, "_post", lambda target, address, headers, body: captured.append(headers) or FAIL)
    clock = iter([1000, 1005])
    monkeypatch.setattr("difflane.webhooks.sender.time.time", lambda: next(clock))
    sender.send("msg_1", "https://93.184.216.34/x", b"{}")
    sender.send("msg_1", "https://93.184.216.34/x", b"{}")
    assert [h["webhook-timestamp"] for h in captured] == ["1000", "1005"]
    assert captured[0]["webhook-signature"] != captured[1]["webhook-signature"]
    assert captured[0]["webhook-id"] == captured[1]["webhook-id"] == "msg_1"
    Secret.parse(SECRET).verify(captured[1], b"{}", now=1005)


def test_the_sender_gives_up_on_refused_targets_and_retries_dns_failures() -> None:
    from difflane.webhooks.sender import Sender

    sender = Sender(Guard(["*"], resolver=fake_resolver({"loop.example.com": ["127.0.0.1"]})), Secret.parse(SECRET))
    refused = sender.send("m", "https://loop.example.com/x", b"{}")
    assert not refused.delivered and not refused.retry and refused.detail.startswith("refused")
    missing = sender.send("m", "https://nowhere.example.com/x", b"{}")
    assert not missing.delivered and missing.retry


def test_pending_is_what_claim_returns(rig: Rig) -> None:
    job = rig.job(("completed",))
    rig.run(job, lambda j: j.cancel())
    rig.notifier.tail()
    claimed = rig.outbox.claim_due(rig.clock(), 10, 60)
    assert claimed and isinstance(claimed[0], Pending) and claimed[0].attempts == 0
    assert rig.outbox.claim_due(rig.clock(), 10, 60) == []  # claimed: nobody else takes it
    rig.clock.now += 61
    assert len(rig.outbox.claim_due(rig.clock(), 10, 60)) == 1  # the claim expired (a notifier died)


def test_an_outbox_file_from_before_the_fairness_columns_is_migrated(tmp_path: Path) -> None:
    from difflane.store.sqlite import Database
    from difflane.webhooks.outbox import NewDelivery
    from difflane.webhooks.outbox_sqlite import SCHEMA

    old = Database(tmp_path / "w.db", migrations=[SCHEMA], name="webhook state")
    with old.write() as conn:
        conn.execute(
            "INSERT INTO deliveries (id, job_id, version, event, url, body, next_at, updated_at) "
            "VALUES ('msg_old', 'job-old', 2, 'completed', ?, x'7b7d', 0, 0)",
            (HOOK,),
        )
    old.close()
    outbox = SqliteOutbox(tmp_path / "w.db")
    outbox.watch("job-new", 0)
    outbox.advance("job-new", 0, 2, [NewDelivery("msg_new", "job-new", 2, "completed", HOOK, b"{}", "t/a")], True, 0)
    assert sorted(p.id for p in outbox.claim_due(1.0, 10, 60)) == ["msg_new", "msg_old"]  # old rows still drain
    outbox.close()
