"""The owner's dashboard in a real browser: headless Chromium (Playwright,
pointed at the system's chromium) against a node of a LocalMesh.

Skipped, with the reason, when Playwright or Chromium is missing; with
``AGENTMESH_REQUIRE_SDK_TESTS=1`` that is a failure instead."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentmesh import LocalMesh, Rejected

REQUIRE = os.environ.get("AGENTMESH_REQUIRE_SDK_TESTS") == "1"
CHROMIUM = os.environ.get("AGENTMESH_CHROMIUM") or shutil.which("chromium")
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.integration


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install './sdk/python[browser]')"
    if CHROMIUM is None:
        return "no chromium on the PATH (apt-get install chromium, or set AGENTMESH_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    reason = _browser_missing()
    if reason is not None:
        if REQUIRE:
            pytest.fail(f"AGENTMESH_REQUIRE_SDK_TESTS=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        yield context.new_page()
        browser.close()


def shoot(page: Any, name: str) -> None:
    """A screenshot, when ``AGENTMESH_SCREENSHOTS`` names a directory."""
    where = os.environ.get("AGENTMESH_SCREENSHOTS")
    if where:
        page.screenshot(path=os.path.join(where, f"dashboard-{name}.png"), full_page=True)


def test_the_owner_sees_peers_knocks_audit_and_edits_the_policy(page: Any) -> None:
    from playwright.sync_api import expect

    with LocalMesh(n=3) as mesh:
        alice, bob, carol = mesh.agents
        receipt = alice.send(bob, {"text": "hello bob"})
        assert receipt.knocked
        carol.send(bob, {"text": "hello from carol"})

        # The one-time link logs the browser in; the page shows bob.
        link = bob.dashboard_link().url
        page.goto(link)
        expect(page.get_by_test_id("amid")).to_have_text(bob.amid)
        expect(page.get_by_test_id("inbox")).to_contain_text("waiting")

        # Used up: a second visit is refused.
        second = page.context.new_page()
        response = second.goto(link)
        assert response is not None and response.status == 401
        second.close()

        # Peers and sessions: alice, with her session (its type, since
        # when), the message each way, and buttons.
        page.get_by_role("button", name="Peers and sessions").click()
        row = page.locator(f'tr[data-amid="{alice.amid}"]')
        expect(row).to_be_visible()
        expect(cell(row, "path")).to_have_text("direct-quic")
        expect(cell(row, "sessions")).to_have_text("1")
        expect(cell(row, "session-type")).to_have_text("conversation")
        expect(cell(row, "since")).not_to_have_text("")
        [alice_peer] = [p for p in bob.peers() if p.amid == alice.amid]
        assert alice_peer.session_type == "conversation"
        assert alice_peer.session_since_ms is not None
        assert alice_peer.session_since_ms <= int(time.time() * 1000)
        assert (alice_peer.messages_received, alice_peer.blocked) == (1, False)
        expect(cell(row, "received")).to_have_text("1")
        expect(cell(row, "sent")).to_have_text("0")
        # Bob answers: the page (refreshed every few seconds) counts it.
        bob.send(alice, {"text": "hello alice"})
        expect(cell(row, "sent")).to_have_text("1")
        expect(cell(row, "state")).to_have_text("allowed")
        expect(page.get_by_test_id("kill-switch")).to_have_text("kill switch: off")

        # The kill switch for carol: bob's node refuses her from then on,
        # and her row says so at once.
        carol_row = page.locator(f'tr[data-amid="{carol.amid}"]')
        hash_before_kill = bob.client.policy()["policy_hash"]
        carol_row.locator('button[data-do="kill"]').click()
        expect(page.get_by_test_id("error")).to_have_text("")
        expect(carol_row).to_have_attribute("data-state", "blocked")
        expect(cell(carol_row, "state")).to_have_text("blocked")
        expect(carol_row.locator('button[data-do="kill"]')).to_be_disabled()
        expect(cell(row, "state")).to_have_text("allowed")
        with pytest.raises(Rejected):
            carol.send(bob, {"text": "after the kill"})
        shoot(page, "peers")

        # KNOCKs, live (from the event stream): the accepted ones, and
        # carol's refused one after the kill, each with the sender's tier
        # and reputation (none shown: no registry credentials here) and
        # the hash of the policy that decided: the kill put carol on the
        # blocklist, so hers is the new policy's.
        hash_after_kill = bob.client.policy()["policy_hash"]
        assert hash_after_kill != hash_before_kill
        page.get_by_role("button", name="KNOCKs").click()
        knocks = page.get_by_test_id("knock")
        expect(knocks.filter(has_text="accepted").first).to_be_visible()
        expect(knocks.first).to_contain_text("rejected")
        expect(knocks.first).to_contain_text("blocked")
        expect(knocks.nth(2)).to_be_visible()
        for i in range(knocks.count()):
            knock = knocks.nth(i)
            expect(cell(knock, "tier")).to_have_text("anonymous")
            expect(cell(knock, "reputation")).to_have_text("none shown")
            accepted = "accepted" in knock.inner_text()
            decided_by = hash_before_kill if accepted else hash_after_kill
            expect(cell(knock, "policy")).to_have_attribute("data-hash", decided_by)
            expect(cell(knock, "policy")).to_have_text(decided_by[:12])
        shoot(page, "knocks")

        # Messages: metadata of what arrived, never its content.
        page.get_by_role("button", name="Messages").click()
        expect(page.get_by_test_id("message").first).to_be_visible()
        expect(page.get_by_test_id("messages")).to_contain_text("received")
        expect(page.get_by_test_id("messages")).not_to_contain_text("hello bob")

        # Audit log: the chain verifies.
        page.get_by_role("button", name="Audit log").click()
        page.get_by_test_id("verify").click()
        expect(page.get_by_test_id("verify-result")).to_contain_text("chain verified")
        shoot(page, "audit")

        # Policy: dry-run an edit that blocks alice, then apply it.
        page.get_by_role("button", name="Policy").click()
        text = page.get_by_test_id("policy-text")
        expect(text).not_to_have_value("")
        old_hash = page.get_by_test_id("policy-hash").inner_text()
        page.fill("#p-from", alice.amid)
        page.get_by_test_id("policy-check").click()
        expect(page.get_by_test_id("policy-result")).to_have_text("ACCEPT")
        edited = f'block = ["{alice.amid}"]\n' + "\n".join(
            line for line in text.input_value().splitlines() if not line.startswith("block =")
        )
        text.fill(edited)
        page.get_by_test_id("policy-check").click()
        expect(page.get_by_test_id("policy-result")).to_have_text("REJECT: blocked")
        page.get_by_test_id("policy-apply").click()
        expect(page.get_by_test_id("policy-result")).to_contain_text("applied")
        expect(page.get_by_test_id("policy-hash")).not_to_have_text(old_hash)
        shoot(page, "policy")
        with pytest.raises(Rejected) as refused:
            alice.send(bob, {"text": "still there?"})
        assert refused.value.reason == "blocked"

        # The page's session works only from its own origin.
        api = page.context.request
        own = api.get(link.split("/login")[0] + "/v1/status")
        assert own.status == 200
        foreign = api.get(
            link.split("/login")[0] + "/v1/status", headers={"Origin": "http://evil.example"}
        )
        assert foreign.status == 403


def test_the_overview_shows_the_did_the_registry_standing_and_plots(page: Any) -> None:
    from playwright.sync_api import expect

    with LocalMesh(n=2) as mesh:
        alice, bob = mesh.agents
        registered = bob.register("bob")
        # A message each way: bob's node receives one (after a KNOCK it
        # accepts) and sends one (whose delivery latency it measures).
        assert alice.send(bob, {"text": "hello bob"}).path == "direct_quic"
        assert bob.send(alice, {"text": "hello alice"}).path == "direct_quic"

        page.goto(bob.dashboard_link().url)
        expect(page.get_by_test_id("amid")).to_have_text(bob.amid)

        # Identity: the did:key the node reports, and the registry's word on
        # bob (fetched by the node in the background, then shown).
        did = bob.status()["did"]
        assert isinstance(did, str) and did.startswith("did:key:z6Mk")
        expect(page.get_by_test_id("did")).to_have_text(did)
        expect(page.get_by_test_id("tier")).to_have_text(str(registered["tier"]))
        expect(page.get_by_test_id("reputation")).to_have_text(re.compile(r"^[01]\.\d\d$"))

        # The plots: drawn, with the message each way, the delivery and the
        # accepted KNOCK in them.
        some = re.compile(r"^[1-9]\d*$")
        messages = page.locator("#plot-messages")
        expect(messages).to_have_attribute("data-total", re.compile(r"^([2-9]|\d{2,})$"))
        expect(messages.locator('rect[data-series="direct-quic"]').first).to_be_visible()
        expect(page.locator("#legend-messages")).to_contain_text("relayed")
        latency = page.locator("#plot-latency")
        expect(latency).to_have_attribute("data-total", some)
        expect(latency.locator("rect.bar").first).to_be_visible()
        expect(page.locator("#latency-summary")).to_contain_text("delivered, mean")
        knocks = page.locator("#plot-knocks")
        expect(knocks).to_have_attribute("data-total", some)
        expect(knocks.locator('rect[data-series="accepted"]').first).to_be_visible()
        assert knocks.locator('rect[data-series="rejected"]').count() == 0

        # A message after the page opened reaches the plot through the
        # event stream.
        before = int(messages.get_attribute("data-total") or "0")
        alice.send(bob, {"text": "once more"})
        expect(messages).to_have_attribute("data-total", str(before + 1))
        expect(page.get_by_test_id("error")).to_have_text("")
        shoot(page, "overview")


def test_the_doctor_panel_shows_the_findings_and_runs_again(page: Any) -> None:
    from playwright.sync_api import expect

    with LocalMesh(n=2) as mesh:
        alice, bob = mesh.agents
        page.goto(alice.dashboard_link().url)
        expect(page.get_by_test_id("amid")).to_have_text(alice.amid)

        # The Doctor tab runs the checks: one row each, with the result.
        page.get_by_role("button", name="Doctor").click()
        state = page.get_by_test_id("doctor-state")
        expect(state).to_contain_text("run 1 at ")
        finding = page.locator('tr[data-testid="finding"]')
        data_dir = page.locator('tr[data-check="data dir"]')
        expect(data_dir).to_have_attribute("data-result", "ok")
        expect(data_dir.locator("td").nth(1)).to_have_text("ok")
        expect(data_dir.locator("td").nth(2)).to_contain_text("writable, write+fsync")
        expect(data_dir.locator("td").nth(3)).to_have_text("")
        # The LocalMesh's bootstrap is the agents' registry, on this
        # machine's clock.
        registry = page.locator('tr[data-check="clock vs registry"]')
        expect(registry).to_have_attribute("data-result", "ok")
        expect(registry.locator("td").nth(2)).to_contain_text("the registry's")
        # The same checks the API answers, in its order.
        checks = [c["check"] for c in alice.diagnostics()["checks"]]
        expect(finding).to_have_count(len(checks))
        assert finding.evaluate_all("rows => rows.map(r => r.dataset.check)") == checks
        # Every row that is not ok shows what to do; an ok one nothing.
        for row in finding.all():
            fix = row.locator("td").nth(3).inner_text()
            assert (fix == "") == (row.get_attribute("data-result") == "ok"), row.inner_text()

        # Run again, with a hole-punch probe to bob: on loopback, direct
        # (dialled now, or already connected through the DHT's traffic).
        page.get_by_test_id("doctor-punch").fill(bob.amid)
        page.get_by_test_id("doctor-run").click()
        expect(state).to_contain_text("run 2 at ")
        probe = page.locator('tr[data-check="punch probe"]')
        expect(probe).to_have_attribute("data-result", "ok")
        expect(probe.locator("td").nth(2)).to_have_text(
            re.compile(rf"^{bob.amid[:12]}: (direct|already connected directly) \(direct-quic\)")
        )
        expect(page.get_by_test_id("error")).to_have_text("")
        shoot(page, "doctor")

        # A bad AMID: the run says why, and the table stays.
        page.get_by_test_id("doctor-punch").fill("nope")
        page.get_by_test_id("doctor-run").click()
        expect(state).to_contain_text("run 3 failed: invalid_amid")
        expect(data_dir).to_be_visible()


def cell(row: Any, col: str) -> Any:
    """The cell of a dashboard table row that holds column ``col``."""
    return row.locator(f'td[data-col="{col}"]')


def test_the_kill_switch_for_everyone_shows_its_state_and_clears(page: Any) -> None:
    from playwright.sync_api import expect

    with LocalMesh(n=2) as mesh:
        alice, bob = mesh.agents
        alice.send(bob, {"text": "hello bob"})
        page.goto(bob.dashboard_link().url)
        badge = page.get_by_test_id("kill-switch")
        expect(badge).to_have_text("kill switch: off")
        expect(page.get_by_test_id("kill-state")).to_have_text("off")

        # On: the header, the Peers tab and alice's row say so at once, and
        # bob's node refuses her.
        page.get_by_role("button", name="Peers and sessions").click()
        row = page.locator(f'tr[data-amid="{alice.amid}"]')
        expect(row).to_have_attribute("data-state", "allowed")
        page.get_by_test_id("kill-all").click()
        expect(badge).to_have_text("KILL SWITCH ON")
        expect(badge).to_have_attribute("data-state", "on")
        expect(page.get_by_test_id("peers-kill-state")).to_have_attribute("data-state", "on")
        expect(row).to_have_attribute("data-state", "killed")
        expect(cell(row, "state")).to_have_text("refused (kill switch)")
        expect(page.get_by_test_id("error")).to_have_text("")
        with pytest.raises(Rejected):
            alice.send(bob, {"text": "while killed"})
        assert "agentmesh_kill_switch 1" in bob.metrics().splitlines()
        page.get_by_role("button", name="Overview").click()
        expect(page.get_by_test_id("kill-state")).to_contain_text("on")

        # Cleared: everything says off again, and alice gets through.
        page.get_by_role("button", name="Peers and sessions").click()
        page.get_by_test_id("clear-kill").click()
        expect(badge).to_have_text("kill switch: off")
        expect(page.get_by_test_id("peers-kill-state")).to_have_attribute("data-state", "off")
        expect(row).to_have_attribute("data-state", "allowed")
        alice.send(bob, {"text": "after the clear"})
        expect(page.get_by_test_id("error")).to_have_text("")


def test_messages_show_earlier_runs_from_the_audit_log_and_mail_at_the_relays(
    page: Any,
) -> None:
    from playwright.sync_api import expect

    with LocalMesh(n=2) as mesh:
        alice, bob = mesh.agents
        first = alice.send(bob, {"text": "before the restart"})
        answer = bob.send(alice, {"text": "an answer"})
        # A new run of bob's node: its event log starts empty, the audit
        # log is on disk.
        mesh.restart_agent(bob)

        page.goto(bob.dashboard_link().url)
        expect(page.get_by_test_id("amid")).to_have_text(bob.amid)
        page.get_by_role("button", name="Messages").click()
        messages = page.get_by_test_id("messages")
        received = page.locator(f'tr[data-testid="message"][data-id="{first.id}"]')
        expect(received).to_have_attribute("data-from", "history")
        expect(received).to_contain_text("received")
        sent = page.locator(f'tr[data-testid="message"][data-id="{answer.id}"]')
        expect(sent).to_have_attribute("data-from", "history")
        expect(sent).to_contain_text("sent")
        expect(sent).to_contain_text("direct-quic")
        expect(page.get_by_test_id("message-history")).to_contain_text("from the audit log")
        expect(messages).not_to_contain_text("before the restart")

        # A message now comes through the event stream, next to the history.
        now = alice.send(bob, {"text": "after the restart"})
        live = page.locator(f'tr[data-testid="message"][data-id="{now.id}"]')
        expect(live).to_have_attribute("data-from", "live")
        expect(live).to_contain_text("received")
        expect(live).to_contain_text("direct-quic")
        expect(messages).not_to_contain_text("after the restart")
        # Filtered by peer: alice's three, then nobody's.
        page.get_by_test_id("message-filter").fill(alice.amid)
        expect(page.get_by_test_id("message")).to_have_count(3)
        page.get_by_test_id("message-filter").fill("am1nobody")
        expect(page.get_by_test_id("message")).to_have_count(0)
        page.get_by_test_id("message-filter").fill("")

        # Mail waiting at bob's relay, asked when the tab opened: his node
        # drained it as it came back, so none.
        relay = page.locator('tr[data-testid="mailbox-relay"]')
        expect(relay).to_have_count(1)
        expect(relay).to_have_attribute("data-relay", mesh.relay_addr)
        expect(relay).to_have_attribute("data-envelopes", "0")
        expect(page.get_by_test_id("mailbox-state")).to_contain_text("0 envelopes waiting")
        page.get_by_test_id("mailbox-check").click()
        expect(page.get_by_test_id("mailbox-state")).to_contain_text("0 envelopes waiting")
        expect(page.get_by_test_id("error")).to_have_text("")
        shoot(page, "messages")


def test_the_overview_shows_the_relays_holding_a_reservation(page: Any) -> None:
    from playwright.sync_api import expect

    # Alice is reachable only through the relay: she holds a circuit relay
    # reservation there, besides keeping her mailbox at it.
    with LocalMesh(n=1, private=["alice"]) as mesh:
        [alice] = mesh.agents
        relay_id = mesh.relay_addr.rsplit("/p2p/", 1)[1]
        page.goto(alice.dashboard_link().url)
        expect(page.get_by_test_id("amid")).to_have_text(alice.amid)
        reserved = page.get_by_test_id("reservations")
        expect(reserved).to_have_text(re.compile(rf"^/ip[46]/\S+/p2p/{relay_id}$"))
        assert "agentmesh_relay_reservations 1" in alice.metrics().splitlines()
        expect(page.get_by_test_id("kill-state")).to_have_text("off")
        expect(page.get_by_test_id("error")).to_have_text("")
