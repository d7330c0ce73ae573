/**
 * A whole AgentMesh network on this machine, for tests, notebooks and demos.
 *
 * @module
 */

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { Agent } from "./agent.js";
import { NodeStartFailed } from "./errors.js";
import { type ApiInfo, type JsonObject, expandHome } from "./models.js";
import { NodeProcess, atExit, findBinary, removeApiFile, waitForApi } from "./process.js";

const NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"];
/** The passphrase the mesh gives its throwaway identities. */
export const MESH_PASSPHRASE = "agentmesh-devnet";

/** The name of agent `i`: alice, bob, carol, …, then `agent8` on. */
export function agentName(i: number): string {
  return NAMES[i] ?? `agent${i}`;
}

/** Options of {@link LocalMesh.start}. */
export interface LocalMeshOptions {
  /** How many agents (default 3), when `names` is not given. */
  n?: number;
  /** The agents' names (default alice, bob, carol, …). */
  names?: readonly string[];
  /** An agent's KNOCK policy (TOML text), by name. */
  policies?: Readonly<Record<string, string>>;
  /** Agents reachable only through the relay. */
  private?: readonly string[];
  /** More `agentmesh-sim agent` arguments, by name (e.g. `["--a2a", "127.0.0.1:0"]`). */
  extraArgs?: Readonly<Record<string, readonly string[]>>;
  /** Where the data goes (default: a new temporary directory, removed by {@link LocalMesh.stop}). */
  root?: string;
  /** Keep the temporary directory. */
  keep?: boolean;
  /** How long to wait for each process (default 120 000 ms). */
  timeoutMs?: number;
  /** The `agentmesh-sim` binary (default: found like {@link findBinary}). */
  binary?: string;
}

/** Options of {@link LocalMesh.addAgent}. */
export interface AddAgentOptions {
  /** Its KNOCK policy (TOML text). */
  policy?: string;
  /** Reachable only through the relay. */
  private?: boolean;
  /** More `agentmesh-sim agent` arguments. */
  extraArgs?: readonly string[];
}

function firstAddr(line: JsonObject, what: string): string {
  const addrs = line["addrs"];
  if (!Array.isArray(addrs) || typeof addrs[0] !== "string") throw new NodeStartFailed(`the ${what} printed no address`);
  return addrs[0];
}

/**
 * A local AgentMesh network of real processes: one bootstrap node (with
 * its registry), one mailbox relay and `n` agents, each in its own
 * temporary data directory, all on loopback.
 *
 * ```ts
 * const mesh = await LocalMesh.start({ n: 2 });
 * const [alice, bob] = mesh.agents;
 * await alice.send(bob, { text: "hello" });
 * await mesh.stop();
 * ```
 *
 * Every process stops with {@link stop}, at the end of an `await using`
 * block, and when this Node.js process exits (however it ends, on Linux).
 */
export class LocalMesh {
  /** The agents, in order. */
  readonly agents: Agent[] = [];
  /** Where the data lives. */
  readonly root: string;
  /** The `agentmesh-sim` binary. */
  readonly exe: string;
  /** How long to wait for each process. */
  readonly timeoutMs: number;
  /** The bootstrap node's multiaddr. */
  bootstrapAddr = "";
  /** The registry's HTTP URL (served by the bootstrap). */
  registryUrl = "";
  /** The relay's multiaddr. */
  relayAddr = "";
  readonly #ownRoot: boolean;
  readonly #keep: boolean;
  readonly #policies: Record<string, string>;
  readonly #private: Set<string>;
  readonly #extra: Record<string, readonly string[]>;
  readonly #procs = new Map<string, NodeProcess>();
  #stopped = false;
  #cancelCleanup: (() => void) | null = null;

  private constructor(options: LocalMeshOptions) {
    this.exe = options.binary ?? findBinary("agentmesh-sim");
    this.timeoutMs = options.timeoutMs ?? 120_000;
    this.#ownRoot = options.root === undefined;
    this.#keep = Boolean(options.keep);
    this.root =
      options.root === undefined ? mkdtempSync(join(tmpdir(), "agentmesh-mesh-")) : resolve(expandHome(options.root));
    mkdirSync(this.root, { recursive: true });
    this.#policies = { ...(options.policies ?? {}) };
    this.#private = new Set(options.private ?? []);
    this.#extra = { ...(options.extraArgs ?? {}) };
    if (this.#ownRoot && !this.#keep) {
      const root = this.root;
      this.#cancelCleanup = atExit(() => rmSync(root, { recursive: true, force: true }));
    }
  }

  /** Starts a mesh and resolves once every agent is up and its card stored in the DHT. */
  static async start(options: LocalMeshOptions = {}): Promise<LocalMesh> {
    const names = options.names ?? Array.from({ length: options.n ?? 3 }, (_, i) => agentName(i));
    if (new Set(names).size !== names.length) throw new TypeError("agent names must differ");
    const mesh = new LocalMesh(options);
    try {
      await mesh.#startInfra();
      const spawned = names.map((name) => [name, mesh.#spawnAgent(name)] as const);
      const agents = await Promise.all(spawned.map(([name, p]) => mesh.#readyAgent(name, p)));
      mesh.agents.push(...agents);
    } catch (e) {
      await mesh.stop();
      throw e;
    }
    return mesh;
  }

  // Processes.

  #spawn(name: string, args: readonly string[], dataDir: string): NodeProcess {
    const old = this.#procs.get(name);
    if (old?.alive) old.signal("SIGKILL");
    const p = new NodeProcess(name, [this.exe, ...args], dataDir, { env: { AGENTMESH_PASSPHRASE: MESH_PASSPHRASE } });
    this.#procs.set(name, p);
    return p;
  }

  async #startInfra(): Promise<void> {
    let d = join(this.root, "bootstrap");
    const boot = this.#spawn("bootstrap", ["bootstrap", "--data-dir", d], d);
    let ready = await boot.waitEvent("ready", this.timeoutMs);
    this.bootstrapAddr = firstAddr(ready, "bootstrap");
    const registry = ready["registry"];
    this.registryUrl = typeof registry === "string" ? registry : "";
    d = join(this.root, "relay");
    const relay = this.#spawn("relay", ["relay", "--data-dir", d, "--bootstrap", this.bootstrapAddr], d);
    ready = await relay.waitEvent("ready", this.timeoutMs);
    this.relayAddr = firstAddr(ready, "relay");
  }

  #agentArgs(name: string, d: string): string[] {
    const args = [
      "agent",
      "--data-dir",
      d,
      "--bootstrap",
      this.bootstrapAddr,
      "--relay",
      this.relayAddr,
      "--registry",
      this.bootstrapAddr,
    ];
    if (this.#private.has(name)) args.push("--private");
    const policy = this.#policies[name];
    if (policy !== undefined) {
      const f = join(this.root, `${name}.policy.toml`);
      writeFileSync(f, policy, "utf8");
      args.push("--policy", f);
    }
    args.push(...(this.#extra[name] ?? []));
    return args;
  }

  #spawnAgent(name: string): { proc: NodeProcess; cleared: Promise<void> } {
    const d = join(this.root, name);
    // A killed node leaves its api.json: never take that one for the new one.
    const cleared = removeApiFile(d);
    return { proc: this.#spawn(name, this.#agentArgs(name, d), d), cleared };
  }

  async #waitReady(p: NodeProcess): Promise<ApiInfo> {
    const deadline = Date.now() + this.timeoutMs;
    await p.waitEvent("started", this.timeoutMs);
    await p.waitEvent("card_published", Math.max(1000, deadline - Date.now()), { stored_remotely: true });
    return waitForApi(p.dataDir, Math.max(1000, deadline - Date.now()), p);
  }

  async #readyAgent(name: string, s: { proc: NodeProcess; cleared: Promise<void> }): Promise<Agent> {
    await s.cleared;
    const info = await this.#waitReady(s.proc);
    return Agent.fromInfo(info, { name, process: s.proc, onStop: () => this.#terminate(name) });
  }

  async #terminate(name: string): Promise<void> {
    await this.#procs.get(name)?.terminate();
  }

  // Using the mesh.

  /** An agent by index or by name (throws when there is none). */
  get(key: number | string): Agent {
    const a = typeof key === "number" ? this.agents[key] : this.agents.find((x) => x.name === key);
    if (a === undefined) throw new RangeError(`no agent ${key} in the mesh`);
    return a;
  }

  /** The agents, for `for...of`. */
  [Symbol.iterator](): Iterator<Agent> {
    return this.agents[Symbol.iterator]();
  }

  /**
   * The process of an agent (or of `"bootstrap"`, `"relay"`): its JSON
   * event lines are in `.lines()` and `.waitEvent(...)`.
   */
  process(agent: Agent | string): NodeProcess {
    const name = typeof agent === "string" ? agent : agent.name;
    const p = this.#procs.get(name);
    if (p === undefined) throw new RangeError(`no process ${name} in the mesh`);
    return p;
  }

  /** The JSON lines an agent's process printed so far. */
  lines(agent: Agent | string): JsonObject[] {
    return this.process(agent).lines();
  }

  /** Starts one more agent in the mesh (with a KNOCK policy, reachable only through the relay, or with more flags). */
  async addAgent(name?: string, options: AddAgentOptions = {}): Promise<Agent> {
    const n = name ?? agentName(this.agents.length);
    if (this.agents.some((a) => a.name === n)) throw new TypeError(`there is already an agent ${n}`);
    if (options.policy !== undefined) this.#policies[n] = options.policy;
    if (options.private) this.#private.add(n);
    if (options.extraArgs?.length) this.#extra[n] = [...options.extraArgs];
    const agent = await this.#readyAgent(n, this.#spawnAgent(n));
    this.agents.push(agent);
    return agent;
  }

  #agent(agent: Agent | string): Agent {
    return typeof agent === "string" ? this.get(agent) : agent;
  }

  /**
   * Stops an agent's node (SIGTERM): it goes offline. Mail sent to it
   * meanwhile waits in its relay mailbox; {@link startAgent} brings it back
   * with the same identity and data.
   */
  async stopAgent(agent: Agent | string): Promise<void> {
    const a = this.#agent(agent);
    await a._stopLoop();
    await this.#terminate(a.name);
  }

  /**
   * Starts a stopped agent again (same data directory, same AMID); the same
   * {@link Agent} object then talks to the new node.
   */
  async startAgent(agent: Agent | string): Promise<Agent> {
    const a = this.#agent(agent);
    const s = this.#spawnAgent(a.name);
    await s.cleared;
    a._reattach(await this.#waitReady(s.proc), s.proc, () => this.#terminate(a.name));
    return a;
  }

  /** {@link stopAgent}, then {@link startAgent}. */
  async restartAgent(agent: Agent | string): Promise<Agent> {
    await this.stopAgent(agent);
    return this.startAgent(agent);
  }

  /** Stops every process (agents first) and removes the temporary data. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await Promise.all(this.agents.map((a) => a._stopLoop()));
    const procs = [...this.#procs.entries()];
    const order = [
      ...procs.filter(([n]) => n !== "relay" && n !== "bootstrap"),
      ...procs.filter(([n]) => n === "relay"),
      ...procs.filter(([n]) => n === "bootstrap"),
    ].map(([, p]) => p);
    for (const p of order) p.signal("SIGTERM");
    await Promise.all(order.map((p) => p.terminate(10_000)));
    for (const a of this.agents) a.client.close();
    if (this.#ownRoot && !this.#keep) rmSync(this.root, { recursive: true, force: true });
    this.#cancelCleanup?.();
  }

  /** `await using mesh = await LocalMesh.start()` stops it at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  /** For `console.log`. */
  toString(): string {
    return `LocalMesh(${this.root} [${this.agents.map((a) => a.name).join(", ")}])`;
  }
}
