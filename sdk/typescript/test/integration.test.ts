// Against real nodes: a LocalMesh of processes (bootstrap, relay, agents),
// the same cases as the Python SDK's tests.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";

import {
  Agent,
  BadHost,
  BadRequest,
  Client,
  type Event,
  ForbiddenOrigin,
  InvalidAmid,
  InvalidCard,
  InvalidId,
  InvalidName,
  InvalidPayload,
  Killed,
  LocalMesh,
  type Message,
  MethodNotAllowed,
  NoSession,
  NodeNotRunning,
  NotFound,
  PATH_KINDS,
  PayloadTooLarge,
  Rejected,
  ReplyTimeout,
  Unauthorized,
  errorFromBody,
  loadApiInfo,
  processGone,
} from "@agentmesh/sdk";

import { WAIT_MS, checkBinaries, deferred, drain, scriptEnv, skipWithoutBinaries, until, waitMessage } from "./helpers.js";

const run = promisify(execFile);
const PATHS = new Set<string>(PATH_KINDS);

/** A raw request with the headers given, for the checks the client never trips. */
function rawGet(url: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((ok, fail) => {
    const req = http.get(url, { headers }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => ok({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", fail);
  });
}

describe("against real nodes", { skip: skipWithoutBinaries() }, () => {
  let mesh: LocalMesh;
  let alice: Agent;
  let bob: Agent;
  let carol: Agent;
  let dave: Agent;
  const tmp = mkdtempSync(join(tmpdir(), "agentmesh-ts-test-"));

  before(async () => {
    checkBinaries();
    mesh = await LocalMesh.start({ n: 4 });
    [alice, bob, carol, dave] = mesh.agents as [Agent, Agent, Agent, Agent];
  });

  after(async () => {
    await mesh?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it("starts four agents with their api.json", async () => {
    assert.equal(mesh.agents.length, 4);
    assert.equal(new Set(mesh.agents.map((a) => a.amid)).size, 4);
    for (const a of mesh.agents) {
      const info = await loadApiInfo(a.dataDir ?? "");
      assert.equal(info.amid, a.amid);
      assert.equal(info.version, 1);
      assert.match(info.url ?? "", /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.equal((await a.status()).amid, a.amid);
    }
    assert.equal(mesh.get("bob"), mesh.agents[1]);
  });

  it("sends and receives", async () => {
    await drain(bob);
    const payload = { text: "hello bob", n: 1, nested: { list: [1, 2, 3] } };
    const r = await alice.send(bob, payload);
    assert.equal(r.to, bob.amid);
    assert.ok(PATHS.has(r.path), r.path);
    assert.equal(r.knocked, true, "the first message to bob opened the session");
    assert.equal(r.id.length, 32);
    assert.equal(r.session.length, 32);
    let got = await waitMessage(bob, (m) => m.id === r.id);
    assert.deepEqual(got.payload, payload);
    assert.equal(got.from, alice.amid);
    assert.equal(got.session, r.session);
    assert.equal(got.kind, "message");
    assert.equal(got.deliveries, 1);
    assert.ok(PATHS.has(got.path));
    // The session is cached now: no KNOCK.
    const r2 = await alice.send(bob.amid, "again");
    assert.equal(r2.knocked, false);
    assert.equal(r2.session, r.session);
    got = await waitMessage(bob, (m) => m.id === r2.id);
    assert.deepEqual(got.payload, { text: "again" });
    assert.equal(got.text, "again");
  });

  it("acknowledges a message once its handler resolved", async () => {
    await drain(bob);
    const seen = deferred<Message>();
    const release = deferred();
    let calls = 0;
    const sub = bob.onMessage(
      async (m) => {
        calls++;
        seen.resolve(m);
        await release.promise;
      },
      { pollMs: 1000 },
    );
    const r = await alice.send(bob, { text: "to the handler" });
    const m = await seen.promise;
    assert.equal(m.id, r.id);
    assert.deepEqual(m.payload, { text: "to the handler" });
    // The handler has not resolved: the message is leased, not acknowledged.
    assert.equal((await bob.client.inboxCounts()).leased, 1);
    release.resolve();
    await until(async () => (await bob.client.inboxCounts()).leased === 0, WAIT_MS, "the acknowledgement");
    await sub.stop();
    await sub.done;
    assert.equal(calls, 1);
    // Acknowledged: not handed out again.
    const again = await bob.messages({ waitMs: 1500, max: 256 });
    assert.ok(again.every((x) => x.id !== r.id));
  });

  it("hands out again a message whose handler threw", async () => {
    await drain(bob);
    const r = await alice.send(bob, { text: "fail once" });
    const calls: Message[] = [];
    const errors: unknown[] = [];
    const handler = (m: Message): void => {
      calls.push(m);
      if (m.id === r.id && m.deliveries === 1) throw new Error("not now");
    };
    const deadline = Date.now() + WAIT_MS;
    while (Date.now() < deadline && !calls.some((m) => m.id === r.id && m.deliveries === 2)) {
      await bob.processPending({ waitMs: 2000, handlers: [handler], onError: (e) => errors.push(e) });
    }
    assert.deepEqual(
      calls.filter((m) => m.id === r.id).map((m) => m.deliveries),
      [1, 2],
    );
    assert.equal(errors.length, 1);
  });

  it("answers a request with a reply", async () => {
    await drain(carol);
    const sub = carol.onMessage(
      async (m) => {
        if (m.isRequest) await m.reply({ echo: m.payload, by: "carol" });
      },
      { pollMs: 1000 },
    );
    try {
      const reply = await alice.request(carol, { q: "ping" }, { timeoutMs: 30_000 });
      assert.equal(reply.kind, "reply");
      assert.equal(reply.from, carol.amid);
      assert.deepEqual(reply.payload, { echo: { q: "ping" }, by: "carol" });
      assert.equal(reply.replyTo?.length, 32);
    } finally {
      await sub.stop();
    }
  });

  it("times a request without a reply out: ReplyTimeout", async () => {
    await assert.rejects(alice.request(carol, { q: "anyone?" }, { timeoutMs: 2000 }), (e) => {
      assert.ok(e instanceof ReplyTimeout);
      assert.equal(e.status, 504);
      assert.equal(e.code, "reply_timeout");
      return true;
    });
    await drain(carol);
  });

  it("ends a conversation", async () => {
    const r1 = await alice.send(dave, { text: "a short chat" });
    assert.equal(await alice.end(dave), r1.session);
    let closed = false;
    const deadline = Date.now() + WAIT_MS;
    while (!closed && Date.now() < deadline) {
      for await (const e of alice.events({ since: 0, waitMs: 1000, idleTimeoutMs: 1000 })) {
        if (e.kind === "session_closed" && e.event["session"] === r1.session) closed = true;
      }
    }
    assert.ok(closed, "no session_closed event for the ended session");
    const r2 = await alice.send(dave, { text: "hello again" });
    assert.equal(r2.knocked, true);
    assert.notEqual(r2.session, r1.session);
    await drain(dave);
  });

  it("refuses a reply in an ended session: NoSession", async () => {
    await drain(bob);
    const r = await alice.send(bob, { text: "answer me in this session" });
    const m = await waitMessage(bob, (x) => x.id === r.id);
    assert.equal(await alice.end(bob), r.session);
    await assert.rejects(m.reply({ text: "too late" }, { sameSession: true }), (e) => {
      assert.ok(e instanceof NoSession);
      assert.equal(e.status, 409);
      return true;
    });
    // Without the session, the reply opens a new conversation.
    const rep = await m.reply({ text: "here anyway" });
    assert.equal(rep.to, alice.amid);
    assert.notEqual(rep.session, r.session);
    await drain(alice);
  });

  it("streams bytes", async () => {
    const data = Buffer.concat([randomBytes(100_000), Buffer.from("end")]);
    const res = await alice.stream(bob, { data, chunkSize: 16 * 1024 });
    assert.equal(res.bytes, data.length);
    assert.equal(res.chunks, Math.ceil(data.length / (16 * 1024)));
    const digest = createHash("sha256").update(data).digest("hex");
    const line = await mesh
      .process(bob)
      .waitFor((v) => v["event"] === "stream_ended" && v["sha256"] === digest, WAIT_MS, "the stream's end");
    assert.equal(line["bytes"], data.length);
    assert.equal(line["from"], alice.amid);
  });

  it("resumes events after a disconnect, without losing or repeating one", async () => {
    const first = await Agent.attach(alice.dataDir ?? "");
    const seen: number[] = [];
    for await (const e of first.events({ waitMs: 500, idleTimeoutMs: 1000 })) seen.push(e.id);
    assert.ok(seen.length > 0, "a node that has run has events");
    assert.deepEqual(seen, seen.map((_, i) => (seen[0] as number) + i), "ids are contiguous");
    const last = first.lastEventId;
    assert.equal(last, seen.at(-1));
    first.client.close(); // the app goes away

    // Meanwhile, things happen.
    const sent = [];
    for (let i = 0; i < 3; i++) sent.push(await alice.send(bob, { text: `while away ${i}` }));

    // A new connection resumes after the last event it handled.
    const again = await Agent.attach(alice.dataDir ?? "");
    const resumed: Event[] = [];
    for await (const e of again.events({ since: last ?? 0, waitMs: 2000, idleTimeoutMs: 3000 })) resumed.push(e);
    const ids = resumed.map((e) => e.id);
    assert.equal(ids[0], (last ?? 0) + 1);
    assert.deepEqual(ids, ids.map((_, i) => (last ?? 0) + 1 + i), "no event lost");
    const delivered = new Set(resumed.filter((e) => e.kind === "delivered").map((e) => e.event["id"]));
    for (const r of sent) assert.ok(delivered.has(r.id), `delivered ${r.id}`);
    // The same agent resumes by itself where its last iteration stopped.
    const after = again.lastEventId ?? 0;
    const r = await alice.send(bob, { text: "one more" });
    const more: Event[] = [];
    for await (const e of again.events({ waitMs: 10_000 })) {
      more.push(e);
      break;
    }
    assert.equal(more[0]?.id, after + 1);
    for await (const e of again.events({ waitMs: 2000, idleTimeoutMs: 2000 })) more.push(e);
    assert.ok(more.some((e) => e.kind === "delivered" && e.event["id"] === r.id));
    assert.deepEqual(more.map((e) => e.id), more.map((_, i) => after + 1 + i));
    again.client.close();
    await drain(bob);
  });

  it("streams events over SSE", async () => {
    const start = (await alice.client.events({ waitMs: 0 })).lastId;
    const r = await alice.send(bob, { text: "seen over SSE" });
    const ids: number[] = [];
    for await (const e of alice.client.eventStream({ since: start })) {
      ids.push(e.id);
      if (e.kind === "delivered" && e.event["id"] === r.id) break;
    }
    assert.deepEqual(ids, ids.map((_, i) => start + 1 + i));
    await drain(bob);
  });

  it("reports a send without waiting by an event", async () => {
    const start = (await alice.client.events({ waitMs: 0 })).lastId;
    const mid = await alice.send(bob, { text: "fire and forget" }, { wait: false });
    assert.equal(typeof mid, "string");
    assert.equal(mid.length, 32);
    let found = false;
    for await (const e of alice.events({ since: start, waitMs: 5000, idleTimeoutMs: WAIT_MS })) {
      if (e.kind === "delivered" && e.event["id"] === mid) {
        found = true;
        break;
      }
    }
    assert.ok(found);
    await waitMessage(bob, (m) => m.id === mid);
  });

  it("hands a message again to the next reader when an app dies before acknowledging it", async () => {
    await drain(bob);
    const r = await alice.send(bob, { text: "handle me exactly once" });
    const script = `
      import { Client } from "@agentmesh/sdk";
      const c = await Client.fromDataDir(process.argv[2]);
      const msgs = await c.messages({ waitMs: 20000, max: 256, leaseMs: 1000 });
      console.log(JSON.stringify(msgs.map((m) => m.id)));
      process.exit(3); // dies before acknowledging anything
    `;
    const f = join(process.cwd(), "build", "crashing-reader.mjs");
    writeFileSync(f, script);
    const out = await run(process.execPath, [f, bob.dataDir ?? ""], { timeout: 60_000, env: scriptEnv() }).then(
      () => assert.fail("the reader should have exited with 3"),
      (e: { code?: number; stdout?: string }) => e,
    );
    assert.equal(out.code, 3);
    assert.ok((JSON.parse(out.stdout ?? "[]") as string[]).includes(r.id));
    // Its lease (1 s) ends; a second reader gets the message.
    const m = await waitMessage(bob, (x) => x.id === r.id, { timeoutMs: 30_000 });
    assert.equal(m.deliveries, 2);
    assert.deepEqual(m.payload, { text: "handle me exactly once" });
    // Acknowledged now: gone.
    await new Promise((ok) => setTimeout(ok, 1200));
    assert.ok((await bob.messages({ waitMs: 500, max: 256 })).every((x) => x.id !== r.id));
  });

  it("releases a message: handed out again at once", async () => {
    await drain(bob);
    const r = await alice.send(bob, { text: "released" });
    const m = await waitMessage(bob, (x) => x.id === r.id, { ack: false });
    assert.equal(await m.release(), 1);
    const again = await waitMessage(bob, (x) => x.id === r.id, { timeoutMs: 5000 });
    assert.equal(again.deliveries, 2);
  });

  it("reads peers, cards, status, presence, sessions and the OpenAPI document", async () => {
    await alice.send(bob, { text: "so we know each other" });
    const peers = new Map((await alice.peers()).map((p) => [p.amid, p]));
    assert.ok(peers.has(bob.amid));
    assert.ok((peers.get(bob.amid)?.sessions ?? 0) >= 1);
    const card = await alice.lookup(bob);
    assert.equal(card["amid"], bob.amid);
    await bob.presence("away");
    await bob.presence("online");
    const st = await alice.status();
    assert.equal(st.amid, alice.amid);
    assert.deepEqual(Object.keys(await alice.client.inboxCounts()).sort(), ["leased", "ready"]);
    assert.ok(Array.isArray(await alice.sessions()));
    assert.equal(typeof (await alice.client.openapi())["paths"], "object");
    await drain(bob);
  });

  it("exports and imports cards, names agents, and sends to a name", async () => {
    const card = await bob.exportCard();
    assert.equal(card.amid, bob.amid);
    assert.ok(card.card?.startsWith("u"));
    await assert.rejects(dave.client.importCard("unot-a-card"), InvalidCard);
    await assert.rejects(dave.client.setName("Bob", bob.amid), InvalidName);
    const imported = await dave.importCard(card, { name: "bob" });
    assert.equal(imported.amid, bob.amid);
    assert.equal((await dave.names())["bob"], bob.amid);
    const receipt = await dave.client.send("bob", { text: "to a name" });
    assert.equal(receipt.to, bob.amid);
    await waitMessage(bob, (m) => m.id === receipt.id);
    const peer = (await dave.peers()).find((p) => p.amid === bob.amid);
    assert.equal(peer?.name, "bob");
    assert.equal(peer?.cardImported, true);
    assert.equal(peer?.presence, "online");
    assert.equal(await dave.removeName("bob"), bob.amid);
    await assert.rejects(dave.client.removeName("bob"), NotFound);
  });

  it("searches the registry", async () => {
    const reg = await carol.register("carol", ["test/typescript"]);
    assert.equal(reg["amid"], carol.amid);
    const found = await alice.search("test/typescript");
    assert.ok(found.count >= 1);
    const entry = found.results.find((x) => x["amid"] === carol.amid);
    assert.ok(entry, "carol is found by her capability");
    assert.deepEqual(entry["capabilities"], ["test/typescript"]);
  });

  it("reads the timeseries, the registry standing and the doctor's checks", async () => {
    await alice.send(bob, { text: "counted in the timeseries" });
    const t = await alice.timeseries();
    assert.ok(t.minutes.length > 0);
    const sent = t.minutes.reduce((n, m) => n + m.sent["direct-quic"], 0);
    assert.ok(sent >= 1, JSON.stringify(t.minutes.at(-1)));
    assert.ok(t.latency.count >= 1, JSON.stringify(t.latency));

    // Dave registers; his node's cached standing follows.
    await dave.register("dave", ["test/standing"]);
    let standing = await dave.registryStanding();
    await until(
      async () => (standing = await dave.registryStanding()).state === "registered",
      WAIT_MS,
      "dave's standing: registered",
    );
    assert.ok(["anonymous", "verified", "organization"].includes(standing.tier ?? ""), JSON.stringify(standing));
    assert.equal(typeof standing.reputation, "number");

    // The doctor: the disk, and the clock against the mesh's registry (on
    // this machine's clock: within half the round trip).
    const d = await alice.diagnostics();
    const checks = new Map(d.checks.map((c) => [c.check, c]));
    assert.equal(checks.get("data dir")?.result, "ok", JSON.stringify(checks.get("data dir")));
    assert.equal(checks.get("clock vs registry")?.result, "ok", JSON.stringify(checks.get("clock vs registry")));
    const clock = d.registry_clock;
    assert.ok(clock, "a registry clock reading");
    assert.ok(Math.abs(clock.offset_ms) <= clock.uncertainty_ms + 2, JSON.stringify(clock));
    assert.equal(d.punch, null);
    assert.ok(!checks.has("punch probe"));
    // With a hole-punch probe to bob: on loopback, direct.
    const probed = await alice.diagnostics({ punch: bob });
    const probe = probed.checks.find((c) => c.check === "punch probe");
    assert.equal(probe?.result, "ok", JSON.stringify(probe));
    assert.equal(probed.punch?.peer, bob.amid);
    assert.equal(probed.punch?.outcome, "direct");
    await drain(bob);
  });

  it("calls any route typed by the OpenAPI document", async () => {
    const { receipt } = await alice.client.api("post", "/v1/send", { body: { to: bob.amid, payload: { raw: 1 } } });
    assert.deepEqual(Object.keys(receipt ?? {}).sort(), ["id", "knocked", "path", "session", "to"]);
    const got = await bob.client.api("get", "/v1/messages", { query: { wait_ms: 10_000, max: 256 } });
    const mine = got.messages.find((m) => m.id === receipt?.id);
    assert.ok(mine);
    assert.deepEqual(mine.payload, { raw: 1 });
    assert.equal(mine.deliveries, 1);
    await bob.ack(got.messages.map((m) => m.id));
    const card = await alice.client.api("get", "/v1/lookup/{amid}", { params: { amid: bob.amid } });
    assert.equal(card.card["amid"], bob.amid);
  });

  // Every error the node can be made to answer, each as its class.

  it("InvalidAmid", async () => {
    await assert.rejects(alice.send("not-an-amid", { text: "?" }), (e) => {
      assert.ok(e instanceof InvalidAmid);
      assert.equal(e.status, 400);
      assert.equal(e.code, "invalid_amid");
      return true;
    });
  });

  it("NotFound", async () => {
    await assert.rejects(alice.client.call("GET", "/v1/no-such-route"), (e) => e instanceof NotFound && e.status === 404);
  });

  it("MethodNotAllowed", async () => {
    await assert.rejects(alice.client.call("GET", "/v1/send"), (e) => e instanceof MethodNotAllowed && e.status === 405);
  });

  it("Unauthorized: a bad token", async () => {
    const c = new Client(alice.client.info.url, "0".repeat(64));
    await assert.rejects(c.status(), (e) => e instanceof Unauthorized && e.status === 401);
    await assert.rejects(Agent.fromInfo({ ...alice.client.info, token: "nope", amid: null }), Unauthorized);
    c.close();
  });

  it("ForbiddenOrigin: a request from a web page", async () => {
    const info = alice.client.info;
    for (const header of ["Origin", "Referer"]) {
      const r = await rawGet(`${info.url}/v1/status`, {
        Authorization: `Bearer ${info.token}`,
        [header]: "http://evil.example/",
      });
      assert.equal(r.status, 403);
      assert.ok(errorFromBody(r.status, r.body) instanceof ForbiddenOrigin);
    }
    await assert.rejects(
      alice.client.call("GET", "/v1/status", { headers: { Origin: "http://evil.example" } }),
      ForbiddenOrigin,
    );
  });

  it("BadHost: DNS rebinding", async () => {
    await assert.rejects(
      alice.client.call("GET", "/v1/status", { headers: { Host: "evil.example" } }),
      (e) => e instanceof BadHost && e.status === 403,
    );
  });

  it("BadRequest: malformed JSON, a missing field", async () => {
    await assert.rejects(
      alice.client.call("POST", "/v1/send", { rawBody: '{"to": "am", "payload": ' }),
      (e) => e instanceof BadRequest && e.status === 400,
    );
    await assert.rejects(alice.client.call("POST", "/v1/send", { body: { payload: {} } }), BadRequest);
  });

  it("InvalidId", async () => {
    await assert.rejects(alice.ack(["not-hex"]), InvalidId);
  });

  it("PayloadTooLarge: a body over 1 MiB", async () => {
    await assert.rejects(
      alice.send(bob, { text: "x".repeat(1024 * 1024 + 10) }),
      (e) => e instanceof PayloadTooLarge && e.status === 413,
    );
  });

  it("InvalidPayload: too large for a message, or to oneself", async () => {
    await assert.rejects(alice.send(bob, { text: "x".repeat(70_000) }), (e) => e instanceof InvalidPayload && e.status === 400);
    await assert.rejects(alice.send(alice, "to me"), InvalidPayload);
  });

  it("Rejected, with its reason: a blocked sender", async () => {
    // dave has never written to carol: his first message is a KNOCK.
    await carol.block(dave);
    await assert.rejects(dave.send(carol, { text: "let me in" }), (e) => {
      assert.ok(e instanceof Rejected);
      assert.equal(e.reason, "blocked");
      assert.equal(e.status, 403);
      assert.equal(e.code, "rejected");
      return true;
    });
  });

  it("Killed: the owner's kill switch", async () => {
    await dave.kill();
    try {
      await assert.rejects(dave.send(alice, "anyone?"), (e) => e instanceof Killed && e.status === 503);
    } finally {
      await dave.killClear();
    }
    await dave.send(alice, "back");
    await drain(alice);
  });

  it("talks over the Unix socket", async () => {
    const info = await loadApiInfo(alice.dataDir ?? "");
    assert.ok(info.socket && existsSync(info.socket));
    const c = Client.fromInfo(info, { useSocket: true });
    assert.equal((await c.status()).amid, alice.amid);
    c.close();
  });

  it("starts a node of its own, attaches to it, and stops it", async () => {
    const d = join(tmp, "zed");
    const zed = await Agent.start("zed", {
      dataDir: d,
      bootstrap: mesh.bootstrapAddr,
      relays: [mesh.relayAddr],
      passphrase: "correct horse battery staple",
    });
    let attached: Agent | null = null;
    try {
      assert.ok(zed.process !== null);
      assert.match(zed.amid, /^am/);
      // Starting it again attaches to the running node.
      const same = await Agent.start("zed", { dataDir: d });
      assert.equal(same.process, null);
      assert.equal(same.amid, zed.amid);
      attached = await Agent.attach(d);
      assert.equal(attached.amid, zed.amid);
      const r = await alice.send(zed, { text: "hi zed" });
      const m = await waitMessage(attached, (x) => x.id === r.id);
      assert.equal(m.from, alice.amid);
      const rep = await zed.send(alice, "hi alice");
      assert.equal(rep.to, alice.amid);
    } finally {
      await zed.stop();
    }
    assert.ok(!existsSync(join(d, "api.json")));
    await assert.rejects(Agent.attach(d), NodeNotRunning);
    await assert.rejects(attached.status(), NodeNotRunning);
    // Same identity on the next start.
    const again = await Agent.start("zed", { dataDir: d, passphrase: "correct horse battery staple" });
    try {
      assert.equal(again.amid, zed.amid);
    } finally {
      await again.stop();
    }
    await drain(alice);
  });

  it("stops an agent and starts it again: its mail waited in the relay's mailbox", async () => {
    await drain(dave);
    await mesh.stopAgent(dave);
    const r = await alice.send(dave, { text: "later" });
    assert.equal(r.path, "mailbox");
    await mesh.startAgent(dave);
    const m = await waitMessage(dave, (x) => x.id === r.id);
    assert.deepEqual(m.payload, { text: "later" });
  });

  for (const how of ["exit", "kill"] as const) {
    it(`stops the mesh's processes when Node.js ends (${how})`, async () => {
      const script = `
        import { LocalMesh } from "@agentmesh/sdk";
        const m = await LocalMesh.start({ n: 1 });
        const pids = ["bootstrap", "relay", "alice"].map((n) => m.process(n).pid);
        console.log(JSON.stringify({ pids, root: m.root }));
        if (process.argv[2] === "kill") process.kill(process.pid, "SIGKILL");
        // Otherwise: the script ends without stopping the mesh.
      `;
      const f = join(process.cwd(), "build", "mesh-script.mjs");
      writeFileSync(f, script);
      const out = await run(process.execPath, [f, how], { timeout: 180_000, env: scriptEnv() }).then(
        (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
        (e: { code?: number; signal?: string; stdout?: string; stderr?: string }) => ({
          code: e.code ?? e.signal,
          stdout: e.stdout ?? "",
          stderr: e.stderr ?? "",
        }),
      );
      const lines = out.stdout.trim().split("\n");
      const { pids, root } = JSON.parse(lines.at(-1) ?? "{}") as { pids: number[]; root: string };
      assert.equal(pids.length, 3, out.stderr);
      await until(() => pids.every(processGone), 15_000, "the mesh's processes to end");
      if (how === "exit") {
        assert.equal(out.code, 0, out.stderr);
        assert.ok(!existsSync(root), "the temporary data is removed");
      } else {
        // Killed, Node.js could not remove the data; its children stopped all the same.
        rmSync(root, { recursive: true, force: true });
      }
    });
  }
});
