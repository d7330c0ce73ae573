// Message schemas: the request bodies and answers against a fake API, then
// against real nodes (a LocalMesh, and a weather agent started with
// `agentmesh run --accept-schema`), the same cases as the Python SDK's tests.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import {
  Agent,
  BadResponse,
  Client,
  InvalidPayload,
  LocalMesh,
  Rejected,
  STANDARD_SCHEMAS,
  cardSchemas,
  schemaCatalogFromJson,
} from "@agentmesh/sdk";

import { WAIT_MS, checkBinaries, skipWithoutBinaries, waitMessage } from "./helpers.js";

const FORECAST = { type: "request", action: "forecast", params: { city: "Oslo" } };
const REQUEST_SCHEMA = { type: "object", required: ["type", "action"] };
const CATALOG = {
  schemas: [
    { id: "agentmesh/text@1", schema: { type: "object" } },
    { id: "agentmesh/request@1", schema: REQUEST_SCHEMA },
  ],
  accepted: { "weather/forecast": ["agentmesh/request@1"] },
};

describe("message schemas, against a fake API", () => {
  let server: http.Server;
  let url = "";
  const seen: { method: string; url: string; body: string }[] = [];
  let card: Record<string, unknown> = { amid: "am2", capabilities: ["weather/forecast"] };
  const body = (): unknown => JSON.parse(seen.at(-1)?.body ?? "null");

  before(async () => {
    server = http.createServer((req, res) => {
      let text = "";
      req.on("data", (c) => (text += c));
      req.on("end", () => {
        seen.push({ method: req.method ?? "", url: req.url ?? "", body: text });
        res.setHeader("Content-Type", "application/json");
        const sent = text ? (JSON.parse(text) as Record<string, unknown>) : {};
        const reply = {
          id: "3".repeat(32), from: "am2", session: "2".repeat(32), seq: 1, ts_ms: 1,
          payload: { type: "response", result: 1 }, path: "relayed", kind: "reply", reply_to: "1".repeat(32),
        };
        if (req.url === "/v1/send" && sent["schema"] === "x-acme/refused@1") {
          res.statusCode = 403;
          res.end(JSON.stringify({ error: { code: "rejected", message: "rejected by recipient: unsupported schema", reason: "unsupported_schema" } }));
        } else if (req.url === "/v1/send" && sent["wait"] === false) {
          res.end(JSON.stringify({ id: "1".repeat(32) }));
        } else if (req.url === "/v1/send") {
          res.end(JSON.stringify({ receipt: { id: "1".repeat(32), to: "am2", path: "relayed", knocked: true, session: "2".repeat(32) } }));
        } else if (req.url === "/v1/request" && (sent["payload"] as Record<string, unknown>)["action"] === undefined) {
          res.statusCode = 400;
          res.end(JSON.stringify({ error: { code: "invalid_payload", message: "the payload does not conform to agentmesh/request@1" } }));
        } else if (req.url === "/v1/request") {
          res.end(JSON.stringify({ reply }));
        } else if (req.url === "/v1/schemas") {
          res.end(JSON.stringify(CATALOG));
        } else if (req.url === "/v1/lookup/am2") {
          res.end(JSON.stringify({ card }));
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

  it("send and request name the schema; none when not given", async () => {
    const c = new Client(url, "t");
    await c.send("am2", FORECAST, { capability: "weather/forecast", schema: "agentmesh/request@1" });
    assert.deepEqual(body(), { to: "am2", payload: FORECAST, capability: "weather/forecast", schema: "agentmesh/request@1" });
    await c.send("am2", FORECAST, { capability: "weather/forecast" });
    assert.deepEqual(body(), { to: "am2", payload: FORECAST, capability: "weather/forecast" });
    assert.equal(await c.send("am2", "hi", { schema: "agentmesh/text@1", wait: false }), "1".repeat(32));
    assert.deepEqual(body(), { to: "am2", payload: { text: "hi" }, schema: "agentmesh/text@1", wait: false });
    const reply = await c.request("am2", FORECAST, { capability: "weather/forecast", schema: "x-acme/q@2", timeoutMs: 3000 });
    assert.equal(reply.kind, "reply");
    assert.deepEqual(body(), { to: "am2", payload: FORECAST, timeout_ms: 3000, capability: "weather/forecast", schema: "x-acme/q@2" });
    // The Agent passes them along.
    const agent = new Agent(c, { amid: "am1" });
    await agent.send({ amid: "am2" }, FORECAST, { capability: "weather/forecast", schema: "agentmesh/request@1" });
    assert.equal((body() as Record<string, unknown>)["schema"], "agentmesh/request@1");
    await agent.request("am2", FORECAST, { schema: "agentmesh/request@1", timeoutMs: 1000 });
    assert.equal((body() as Record<string, unknown>)["schema"], "agentmesh/request@1");
    c.close();
  });

  it("refusals carry their reason; a payload the sender's schema refuses is InvalidPayload", async () => {
    const c = new Client(url, "t");
    const refused = await c.send("am2", {}, { capability: "weather/forecast", schema: "x-acme/refused@1" }).catch((e: unknown) => e);
    assert.ok(refused instanceof Rejected);
    assert.equal(refused.reason, "unsupported_schema");
    await assert.rejects(c.request("am2", { type: "request" }, { schema: "agentmesh/request@1" }), (e: unknown) => {
      assert.ok(e instanceof InvalidPayload);
      assert.equal(e.status, 400);
      return true;
    });
    c.close();
  });

  it("reads the node's schemas and a peer's accepted ones", async () => {
    const c = new Client(url, "t");
    const known = await c.schemas();
    assert.equal(seen.at(-1)?.method, "GET");
    assert.deepEqual(known.ids, ["agentmesh/text@1", "agentmesh/request@1"]);
    assert.deepEqual(known.schemas["agentmesh/request@1"], REQUEST_SCHEMA);
    assert.deepEqual(known.accepted, { "weather/forecast": ["agentmesh/request@1"] });
    assert.deepEqual(known.raw, CATALOG);
    assert.ok(known.ids.every((id) => (STANDARD_SCHEMAS as readonly string[]).includes(id)));
    // No schemas in the card: any payload.
    assert.deepEqual(await c.schemasOf("am2"), {});
    card = { ...card, schemas: { "weather/forecast": ["agentmesh/request@1"] } };
    const agent = new Agent(c, { amid: "am1" });
    assert.deepEqual(await agent.schemasOf({ amid: "am2" }), { "weather/forecast": ["agentmesh/request@1"] });
    assert.deepEqual((await agent.schemas()).accepted, known.accepted);
    c.close();
  });

  it("refuses answers that are not what the contract says", () => {
    assert.deepEqual(schemaCatalogFromJson({ schemas: [], accepted: {} }), { ids: [], schemas: {}, accepted: {}, raw: { schemas: [], accepted: {} } });
    assert.throws(() => schemaCatalogFromJson({ accepted: {} }), BadResponse);
    assert.throws(() => schemaCatalogFromJson({ schemas: [{ id: "a/b@1" }], accepted: {} }), BadResponse);
    assert.throws(() => schemaCatalogFromJson({ schemas: [], accepted: { chat: "agentmesh/text@1" } }), BadResponse);
    assert.deepEqual(cardSchemas({ amid: "am2" }), {});
    assert.throws(() => cardSchemas({ schemas: { chat: [1] } }), BadResponse);
  });
});

describe("message schemas, against real nodes", { skip: skipWithoutBinaries() }, () => {
  let mesh: LocalMesh;
  let wes: Agent;
  const tmp = mkdtempSync(join(tmpdir(), "agentmesh-ts-schemas-"));

  before(async () => {
    checkBinaries();
    mesh = await LocalMesh.start({ n: 2 });
    // The mesh's agents take no schema flags: an `agentmesh run` of its own.
    const alertFile = join(tmp, "alert.json");
    writeFileSync(
      alertFile,
      JSON.stringify({
        $schema: "https://json-schema.org/draft/2020-12/schema",
        type: "object",
        required: ["type", "severity"],
        properties: { type: { const: "alert" }, severity: { enum: ["low", "high"] } },
      }),
    );
    wes = await Agent.start("wes", {
      dataDir: join(tmp, "wes"),
      bootstrap: mesh.bootstrapAddr,
      relays: [mesh.relayAddr],
      extraArgs: [
        "--capability", "weather/forecast",
        "--capability", "weather/alerts",
        "--accept-schema", "weather/forecast=agentmesh/request@1",
        "--schema-file", `x-acme/alert@1=${alertFile}`,
        "--accept-schema", "weather/alerts=x-acme/alert@1",
      ],
    });
  });

  after(async () => {
    await wes?.stop();
    await mesh?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it("says what it knows and takes, in its answer and its card", async () => {
    const [alice] = mesh.agents as [Agent, Agent];
    const known = await wes.schemas();
    for (const id of [...STANDARD_SCHEMAS, "x-acme/alert@1"]) assert.ok(known.ids.includes(id), id);
    assert.deepEqual(known.schemas["x-acme/alert@1"]?.["required"], ["type", "severity"]);
    assert.deepEqual(known.accepted, {
      "weather/alerts": ["x-acme/alert@1"],
      "weather/forecast": ["agentmesh/request@1"],
    });
    assert.deepEqual(await alice.schemasOf(wes), known.accepted);
    assert.deepEqual((await alice.schemas()).accepted, {});
    assert.deepEqual(await wes.schemasOf(alice), {});
  });

  it("refuses a KNOCK without the schema, takes a conforming payload, and stops a bad one at the sender", async () => {
    const [alice] = mesh.agents as [Agent, Agent];
    // No schema, one wes does not take for the capability, or one it does not know.
    const text = { type: "text", text: "Oslo?" };
    const cases: [unknown, string | undefined][] = [
      [FORECAST, undefined],
      [text, "agentmesh/text@1"],
      [FORECAST, "x-acme/unknown@1"],
    ];
    for (const [payload, schema] of cases) {
      const e = await alice
        .send(wes, payload, { capability: "weather/forecast", ...(schema ? { schema } : {}) })
        .catch((x: unknown) => x);
      assert.ok(e instanceof Rejected, String(e));
      assert.equal(e.reason, "unsupported_schema", JSON.stringify(e.body));
    }
    const r = await alice.send(wes, FORECAST, { capability: "weather/forecast", schema: "agentmesh/request@1" });
    assert.equal(r.to, wes.amid);
    assert.deepEqual((await waitMessage(wes, (m) => m.id === r.id)).payload, FORECAST);
    await assert.rejects(
      alice.send(wes, { type: "request", params: { city: "Oslo" } }, { capability: "weather/forecast", schema: "agentmesh/request@1" }),
      InvalidPayload,
    );
  });

  it("checks a custom schema only the receiver knows, at the receiver", async () => {
    const [, bob] = mesh.agents as [Agent, Agent];
    const e = await bob
      .send(wes, { type: "alert", severity: "dire" }, { capability: "weather/alerts", schema: "x-acme/alert@1" })
      .catch((x: unknown) => x);
    assert.ok(e instanceof Rejected, String(e));
    assert.equal(e.reason, "schema_invalid", JSON.stringify(e.body));
    const alert = { type: "alert", severity: "high" };
    const r = await bob.send(wes, alert, { capability: "weather/alerts", schema: "x-acme/alert@1" });
    assert.deepEqual((await waitMessage(wes, (m) => m.id === r.id)).payload, alert);
  });

  it("answers a request that names its schema", async () => {
    const [alice] = mesh.agents as [Agent, Agent];
    const sub = wes.onMessage(
      async (msg) => {
        if (msg.isRequest) await msg.reply({ type: "response", result: { city: "Oslo", temp_c: 3 } });
      },
      { pollMs: 1000 },
    );
    try {
      const reply = await alice.request(wes, FORECAST, {
        capability: "weather/forecast",
        schema: "agentmesh/request@1",
        timeoutMs: WAIT_MS,
      });
      assert.equal(reply.kind, "reply");
      assert.deepEqual(reply.payload, { type: "response", result: { city: "Oslo", temp_c: 3 } });
    } finally {
      await sub.stop();
    }
  });
});
