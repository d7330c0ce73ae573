// The ten-line Node.js script of examples/polyglot.mjs sends to and
// receives from a Python agent (the Python SDK) and a Rust agent (a node
// whose received messages are its printed JSON lines, answered with the
// `agentmesh` command line), all on one LocalMesh. And the other examples run.
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { type Agent, type JsonObject, LocalMesh, NodeProcess, findBinary } from "@agentmesh/sdk";

import { REQUIRE, WAIT_MS, checkBinaries, scriptEnv, skipWithoutBinaries } from "./helpers.js";

const run = promisify(execFile);
const examples = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "examples");

/** The Python agent: answers requests, and says what it heard (one JSON line each). */
const PYTHON_AGENT = `
import json, sys
from agentmesh import Agent

agent = Agent.attach(sys.argv[1])

@agent.on_message
def handle(msg):
    if msg.is_request:
        msg.reply({"text": f"python got {msg.text}", "language": "python"})
    else:
        print(json.dumps({"event": "heard", "from": msg.from_, "payload": msg.payload}), flush=True)

print(json.dumps({"event": "ready", "amid": agent.amid}), flush=True)
agent.run_forever(poll=1)
`;

/** Why the Python agent cannot run, or `null`. */
function pythonMissing(): string | null {
  const py = process.env["AGENTMESH_PYTHON"];
  if (!py) return "AGENTMESH_PYTHON is not set (a Python with the agentmesh package: pip install ./sdk/python)";
  try {
    execFileSync(py, ["-c", "import agentmesh"], { stdio: "pipe" });
  } catch (e) {
    return `${py} cannot import agentmesh (${String(e).split("\n")[0]})`;
  }
  return null;
}

function skipReason(): string | false {
  const bins = skipWithoutBinaries();
  if (bins) return bins;
  const py = pythonMissing();
  if (py === null || REQUIRE) return false;
  return `needs the Python SDK: ${py}`;
}

describe("Node.js, Python and Rust on one mesh", { skip: skipReason() }, () => {
  let mesh: LocalMesh;
  let node: Agent;
  let python: Agent;
  let rust: Agent;
  let pyAgent: NodeProcess;

  before(async () => {
    checkBinaries();
    const missing = pythonMissing();
    if (missing !== null) throw new Error(`AGENTMESH_REQUIRE_SDK_TESTS=1 but ${missing}`);
    mesh = await LocalMesh.start({ names: ["node", "python", "rust"] });
    [node, python, rust] = mesh.agents as [Agent, Agent, Agent];
    pyAgent = new NodeProcess(
      "python agent",
      [process.env["AGENTMESH_PYTHON"] as string, "-c", PYTHON_AGENT, python.dataDir as string],
      join(mesh.root, "python-app"),
      { env: { PYTHONUNBUFFERED: "1" } },
    );
    await pyAgent.waitEvent("ready", WAIT_MS, { amid: python.amid });
  });

  after(async () => {
    await pyAgent?.terminate();
    await mesh?.stop();
  });

  it("the ten-line script sends to and receives from both", async () => {
    const script = join(examples, "polyglot.mjs");
    const lines = readFileSync(script, "utf8").trimEnd().split("\n");
    assert.ok(lines.length <= 10, `the script has ${lines.length} lines`);

    // The Rust agent: a node printing what it receives; its answers go
    // through the agentmesh command line, as its owner would type them.
    const cli = findBinary("agentmesh");
    const rustNode = mesh.process(rust);
    const rustAnswers = (async () => {
      const req = await rustNode.waitFor(
        (v) => v["event"] === "message" && v["kind"] === "request" && v["from"] === node.amid,
        WAIT_MS * 2,
        "a request from the Node.js agent",
      );
      const text = (req["payload"] as JsonObject)["text"];
      const answer = JSON.stringify({ text: `rust got ${String(text)}`, language: "rust" });
      await run(cli, ["--data-dir", rust.dataDir as string, "reply", node.amid, String(req["id"]), answer], {
        timeout: WAIT_MS,
      });
    })();

    const { stdout } = await run(process.execPath, [script, node.dataDir as string, python.amid, rust.amid], {
      timeout: WAIT_MS * 3,
      env: scriptEnv(),
    });
    await rustAnswers;
    const ok = stdout.trim().split("\n").filter((l) => l.startsWith("ok: "));
    assert.equal(ok.length, 2, stdout);
    const answer = (line: string | undefined, amid: string): unknown => {
      const m = /^ok: (\S+) (\S+) answered (.*)$/.exec(line ?? "");
      assert.ok(m, line);
      assert.equal(m[2], amid);
      return JSON.parse(m[3] ?? "");
    };
    assert.deepEqual(answer(ok[0], python.amid), { text: "python got who are you?", language: "python" });
    assert.deepEqual(answer(ok[1], rust.amid), { text: "rust got who are you?", language: "rust" });

    // Both got the plain message too.
    const heard = await pyAgent.waitEvent("heard", WAIT_MS, { from: node.amid });
    assert.deepEqual(heard["payload"], { text: "hello from Node.js" });
    const got = await rustNode.waitFor(
      (v) => v["event"] === "message" && v["kind"] !== "request" && v["from"] === node.amid,
      WAIT_MS,
      "the Node.js agent's message",
    );
    assert.deepEqual(got["payload"], { text: "hello from Node.js" });
  });
});

describe("the examples", { skip: skipWithoutBinaries() }, () => {
  before(checkBinaries);

  it("quickstart.mjs runs and ends well", async () => {
    const { stdout } = await run(process.execPath, [join(examples, "quickstart.mjs")], { timeout: 300_000, env: scriptEnv() });
    assert.match(stdout, /^ok: /m);
  });
});
