// Shared by the tests: whether the binaries are there, and inbox helpers.
import { type Agent, type Message, missingBinaries } from "@agentmesh/sdk";

/** With AGENTMESH_REQUIRE_SDK_TESTS=1 a missing binary (or interpreter) fails the tests instead of skipping them. */
export const REQUIRE = process.env["AGENTMESH_REQUIRE_SDK_TESTS"] === "1";

/** How long to wait for things over the network (generous: CI machines are loaded). */
export const WAIT_MS = 60_000;

/**
 * The `skip` option of a suite that needs the binaries: the reason to skip
 * it, or `false` to run it (when they are there, or when they are required:
 * then {@link checkBinaries} fails it).
 */
export function skipWithoutBinaries(): string | false {
  const reason = missingBinaries();
  if (reason === null || REQUIRE) return false;
  return `needs the AgentMesh binaries: ${reason}`;
}

/** Throws when the binaries are required and missing. */
export function checkBinaries(): void {
  const reason = missingBinaries();
  if (reason !== null) throw new Error(`AGENTMESH_REQUIRE_SDK_TESTS=1 but ${reason}`);
}

/** Acknowledges everything waiting in an agent's inbox. */
export async function drain(agent: Agent): Promise<void> {
  for (;;) {
    const msgs = await agent.messages({ waitMs: 0, max: 256, leaseMs: 5000 });
    if (msgs.length === 0) return;
    await agent.ack(msgs);
  }
}

/** The first message that satisfies `pred`; others met meanwhile are acknowledged (dropped). */
export async function waitMessage(
  agent: Agent,
  pred: (m: Message) => boolean,
  options: { timeoutMs?: number; ack?: boolean } = {},
): Promise<Message> {
  const deadline = Date.now() + (options.timeoutMs ?? WAIT_MS);
  while (Date.now() < deadline) {
    const left = Math.max(0, deadline - Date.now());
    for (const m of await agent.messages({ waitMs: Math.min(5000, left), max: 256, leaseMs: 30_000 })) {
      if (pred(m)) {
        if (options.ack ?? true) await m.ack();
        return m;
      }
      await m.ack();
    }
  }
  throw new Error(`${agent.name} got no such message in ${options.timeoutMs ?? WAIT_MS} ms`);
}

/** A promise and its resolver. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((ok) => {
    resolve = ok;
  });
  return { promise, resolve };
}

/** Polls `f` until it returns true or `timeoutMs` passes. */
export async function until(f: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 50));
  }
}

/**
 * The environment of a Node.js script a test runs: without the test
 * runner's own variable, which would make the script report as a test file.
 */
export function scriptEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env["NODE_TEST_CONTEXT"];
  return env;
}
