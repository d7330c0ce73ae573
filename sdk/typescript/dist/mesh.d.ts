/**
 * A whole AgentMesh network on this machine, for tests, notebooks and demos.
 *
 * @module
 */
import { Agent } from "./agent.js";
import { type JsonObject } from "./models.js";
import { NodeProcess } from "./process.js";
/** The passphrase the mesh gives its throwaway identities. */
export declare const MESH_PASSPHRASE = "agentmesh-devnet";
/** The name of agent `i`: alice, bob, carol, …, then `agent8` on. */
export declare function agentName(i: number): string;
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
export declare class LocalMesh {
    #private;
    /** The agents, in order. */
    readonly agents: Agent[];
    /** Where the data lives. */
    readonly root: string;
    /** The `agentmesh-sim` binary. */
    readonly exe: string;
    /** How long to wait for each process. */
    readonly timeoutMs: number;
    /** The bootstrap node's multiaddr. */
    bootstrapAddr: string;
    /** The registry's HTTP URL (served by the bootstrap). */
    registryUrl: string;
    /** The relay's multiaddr. */
    relayAddr: string;
    private constructor();
    /** Starts a mesh and resolves once every agent is up and its card stored in the DHT. */
    static start(options?: LocalMeshOptions): Promise<LocalMesh>;
    /** An agent by index or by name (throws when there is none). */
    get(key: number | string): Agent;
    /** The agents, for `for...of`. */
    [Symbol.iterator](): Iterator<Agent>;
    /**
     * The process of an agent (or of `"bootstrap"`, `"relay"`): its JSON
     * event lines are in `.lines()` and `.waitEvent(...)`.
     */
    process(agent: Agent | string): NodeProcess;
    /** The JSON lines an agent's process printed so far. */
    lines(agent: Agent | string): JsonObject[];
    /** Starts one more agent in the mesh (with a KNOCK policy, reachable only through the relay, or with more flags). */
    addAgent(name?: string, options?: AddAgentOptions): Promise<Agent>;
    /**
     * Stops an agent's node (SIGTERM): it goes offline. Mail sent to it
     * meanwhile waits in its relay mailbox; {@link startAgent} brings it back
     * with the same identity and data.
     */
    stopAgent(agent: Agent | string): Promise<void>;
    /**
     * Starts a stopped agent again (same data directory, same AMID); the same
     * {@link Agent} object then talks to the new node.
     */
    startAgent(agent: Agent | string): Promise<Agent>;
    /** {@link stopAgent}, then {@link startAgent}. */
    restartAgent(agent: Agent | string): Promise<Agent>;
    /** Stops every process (agents first) and removes the temporary data. */
    stop(): Promise<void>;
    /** `await using mesh = await LocalMesh.start()` stops it at the end of the block. */
    [Symbol.asyncDispose](): Promise<void>;
    /** For `console.log`. */
    toString(): string;
}
//# sourceMappingURL=mesh.d.ts.map