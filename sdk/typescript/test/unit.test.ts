// Without nodes: errors, parsing, and the client against a fake API.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import {
  Agent,
  AgentMeshError,
  BadHost,
  BadRequest,
  Busy,
  CircuitOpen,
  Client,
  DeliveryTimeout,
  ERROR_CLASSES,
  ForbiddenOrigin,
  InternalError,
  InvalidCard,
  CardExpired,
  InvalidName,
  InvalidAmid,
  InvalidId,
  InvalidPayload,
  InvalidRecipient,
  Killed,
  Message,
  MethodNotAllowed,
  NoSession,
  NodeNotRunning,
  NotAcknowledged,
  NotFound,
  PayloadTooLarge,
  Rejected,
  ReplyTimeout,
  SseParser,
  StorageError,
  Stopped,
  Unauthorized,
  Unreachable,
  apiInfoFromJson,
  errorClass,
  errorFromBody,
} from "@agentmesh/sdk";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, "..", "..");

/** Every code, its class and its status, as docs/local-api.md lists them. */
const EXPECTED: [string, typeof AgentMeshError, number][] = [
  ["unauthorized", Unauthorized, 401],
  ["forbidden_origin", ForbiddenOrigin, 403],
  ["bad_host", BadHost, 403],
  ["bad_request", BadRequest, 400],
  ["invalid_amid", InvalidAmid, 400],
  ["invalid_id", InvalidId, 400],
  ["payload_too_large", PayloadTooLarge, 413],
  ["not_found", NotFound, 404],
  ["method_not_allowed", MethodNotAllowed, 405],
  ["rejected", Rejected, 403],
  ["invalid_payload", InvalidPayload, 400],
  ["invalid_recipient", InvalidRecipient, 400],
  ["no_session", NoSession, 409],
  ["delivery_timeout", DeliveryTimeout, 504],
  ["not_acknowledged", NotAcknowledged, 504],
  ["reply_timeout", ReplyTimeout, 504],
  ["unreachable", Unreachable, 502],
  ["circuit_open", CircuitOpen, 503],
  ["busy", Busy, 503],
  ["killed", Killed, 503],
  ["stopped", Stopped, 503],
  ["storage", StorageError, 500],
  ["internal", InternalError, 500],
  ["invalid_card", InvalidCard, 400],
  ["card_expired", CardExpired, 400],
  ["invalid_name", InvalidName, 400],
];

describe("errors", () => {
  it("have a class for every code of the OpenAPI document", () => {
    const doc = JSON.parse(readFileSync(join(pkg, "src", "generated", "openapi.json"), "utf8"));
    const codes: string[] = doc.components.schemas.Error.properties.error.properties.code.enum;
    assert.deepEqual([...codes].sort(), Object.keys(ERROR_CLASSES).sort());
    assert.deepEqual([...codes].sort(), EXPECTED.map(([c]) => c).sort());
  });

  it("and the docs' table names the same codes with the same statuses", () => {
    const doc = readFileSync(join(pkg, "..", "..", "docs", "local-api.md"), "utf8");
    for (const [code, , status] of EXPECTED) {
      assert.match(doc, new RegExp("\\| `" + code + "` \\| " + status + " \\|"), code);
    }
  });

  for (const [code, cls, status] of EXPECTED) {
    it(`${code} is ${cls.name} (${status})`, () => {
      assert.equal(errorClass(code), cls);
      const body = JSON.stringify({ error: { code, message: `the ${code} message` } });
      const e = errorFromBody(status, body);
      assert.ok(e instanceof cls && e instanceof AgentMeshError && e instanceof Error);
      assert.equal(e.code, code);
      assert.equal(e.status, status);
      assert.equal(e.message, `the ${code} message`);
      assert.equal(e.name, cls.name);
      assert.equal(new cls("x").status, status);
      assert.equal(new cls("x").code, code);
    });
  }

  it("carry a rejection's reason and a circuit's retry time", () => {
    const r = errorFromBody(403, { error: { code: "rejected", message: "no", reason: "blocked" } });
    assert.ok(r instanceof Rejected);
    assert.equal(r.reason, "blocked");
    assert.equal(r.body["reason"], "blocked");
    const c = errorFromBody(503, Buffer.from(JSON.stringify({ error: { code: "circuit_open", message: "wait", retry_after_ms: 1500 } })));
    assert.ok(c instanceof CircuitOpen);
    assert.equal(c.retryAfterMs, 1500);
  });

  it("of unknown codes and bodies are the base class", () => {
    const e = errorFromBody(418, { error: { code: "teapot", message: "short and stout" } });
    assert.equal(e.constructor, AgentMeshError);
    assert.equal(e.code, "teapot");
    const raw = errorFromBody(502, "<html>bad gateway</html>");
    assert.equal(raw.code, "http_502");
    assert.match(raw.message, /bad gateway/);
    assert.equal(errorFromBody(500, "").message, "HTTP 500: no error body");
  });
});

describe("parsing", () => {
  it("api.json", () => {
    const info = apiInfoFromJson({ url: "http://127.0.0.1:1234/", token: "t", socket: "/s", amid: "am1", version: 1 }, "/d");
    assert.deepEqual(info, { url: "http://127.0.0.1:1234", token: "t", socket: "/s", amid: "am1", version: 1, a2a: null, dataDir: "/d" });
    assert.throws(() => apiInfoFromJson({ token: "t" }), /neither 'url' nor 'socket'/);
    assert.throws(() => apiInfoFromJson({ url: "http://x" }), /'token'/);
  });

  it("messages, with their JSON form", () => {
    const wire = {
      id: "a".repeat(32), from: "am1", session: "b".repeat(32), seq: 3, ts_ms: 5,
      payload: { text: "hi" }, path: "direct_quic", kind: "request", deliveries: 2,
    };
    const m = Message.fromJson(wire);
    assert.equal(m.text, "hi");
    assert.ok(m.isRequest);
    assert.equal(m.deliveries, 2);
    assert.equal(m.replyTo, null);
    assert.deepEqual(JSON.parse(JSON.stringify(m)), wire);
    assert.throws(() => m.ack(), /not tied to a client/);
  });

  it("server-sent events", () => {
    const p = new SseParser();
    const lines = [": keep-alive", "id: 7", 'data: {"id":7,"ts_ms":1,"event":{"event":"delivered","id":"x"}}', ""];
    const out = lines.map((l) => p.feed(l)).filter((e) => e !== null);
    assert.equal(out.length, 1);
    assert.equal(out[0]?.id, 7);
    assert.equal(out[0]?.kind, "delivered");
    const dropped = ["event: dropped", 'data: {"count":3}', ""].map((l) => p.feed(l)).filter((e) => e !== null);
    assert.equal(dropped[0]?.kind, "dropped");
    assert.equal(dropped[0]?.event["count"], 3);
    assert.equal(dropped[0]?.id, 0);
  });
});

describe("the client, against a fake API", () => {
  let server: http.Server;
  let url = "";
  const seen: { method: string; url: string; headers: http.IncomingHttpHeaders; body: string }[] = [];

  before(async () => {
    server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body });
        res.setHeader("Content-Type", "application/json");
        if (req.url?.startsWith("/v1/send")) {
          res.end(JSON.stringify({ receipt: { id: "1".repeat(32), to: "am2", path: "relayed", knocked: true, session: "2".repeat(32) } }));
        } else if (req.url?.startsWith("/v1/messages?")) {
          res.end(JSON.stringify({ messages: [] }));
        } else {
          res.statusCode = 404;
          res.end(JSON.stringify({ error: { code: "not_found", message: "no such route" } }));
        }
      });
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(() => {
    server.close();
    server.closeAllConnections();
  });

  it("sends the token, JSON bodies, strings as texts, and queries", async () => {
    const c = new Client(url, "secret");
    const r = await c.send("am2", "hello", { capability: "test/x" });
    assert.equal(r.path, "relayed");
    const last = seen.at(-1);
    assert.equal(last?.headers.authorization, "Bearer secret");
    assert.equal(last?.headers.origin, undefined);
    assert.deepEqual(JSON.parse(last?.body ?? ""), { to: "am2", payload: { text: "hello" }, capability: "test/x" });
    await c.messages({ waitMs: 1500, max: 1000, leaseMs: 1 });
    assert.equal(seen.at(-1)?.url, "/v1/messages?wait_ms=1500&max=256&lease_ms=1000");
    await assert.rejects(c.call("GET", "/v1/nothing"), NotFound);
    c.close();
  });

  it("says the node is not running when nobody answers", async () => {
    const probe = http.createServer();
    await new Promise<void>((ok) => probe.listen(0, "127.0.0.1", ok));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((ok) => probe.close(() => ok()));
    const c = new Client(`http://127.0.0.1:${port}`, "t");
    await assert.rejects(c.status(), NodeNotRunning);
  });

  it("needs a URL or a socket", () => {
    assert.throws(() => new Client(null, "t"), /no URL and no socket/);
  });
});

describe("an agent's events, against a fake API", () => {
  let server: http.Server;
  let url = "";
  /** The `since` of each poll. */
  const asked: (string | null)[] = [];

  before(async () => {
    // An id from an earlier run of the node: the node answers the gap
    // before any event of its own run (ids 4 to 9 are gone).
    server = http.createServer((req, res) => {
      const since = new URL(req.url ?? "/", "http://x").searchParams.get("since");
      asked.push(since);
      res.setHeader("Content-Type", "application/json");
      res.end(JSON.stringify({ events: [], last_id: 9, dropped: since === "3" ? 6 : 0 }));
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(() => {
    server.close();
    server.closeAllConnections();
  });

  it("count a gap without events once, and poll past it", async () => {
    const agent = new Agent(new Client(url, "t"), { amid: "am1" });
    const seen = [];
    for await (const e of agent.events({ since: 3, waitMs: 0, idleTimeoutMs: 200 })) seen.push(e);
    assert.deepEqual(seen, []);
    assert.equal(agent.eventsDropped, 6);
    assert.equal(agent.lastEventId, 9);
    assert.equal(asked[0], "3");
    assert.ok(asked.length > 1, `polled ${asked.length} times`);
    assert.deepEqual(new Set(asked.slice(1)), new Set(["9"]));
    agent.client.close();
  });
});
