/**
 * The {@link Agent}: one AgentMesh node seen from TypeScript.
 *
 * ```ts
 * const alice = await Agent.start("alice", { bootstrap: "/ip4/…/p2p/…" });
 * alice.onMessage(async (msg) => { await msg.reply({ text: "got it" }); });
 * await alice.send(bobAmid, { text: "hello" });
 * ```
 *
 * @module
 */
import { Client, type AuditOptions, type CheckPolicyOptions, type Diagnostics, type MessagesOptions, type Presence, type Recipient, type RegistryStanding, type RequestOptions, type SearchOptions, type SearchResults, type SendOptions, type StreamOptions, type Timeseries } from "./client.js";
import { type ApiInfo, type Card, type Event, type JsonObject, type Message, type Peer, type PolicyCheck, type Receipt, type ReplyOptions, type SchemaCatalog, type Status, type StreamResult } from "./models.js";
import { NodeProcess } from "./process.js";
/** The passphrase file {@link Agent.start} creates when none is given. */
export declare const PASSPHRASE_FILE = "passphrase";
/** A message handler: called with each message; the message is acknowledged when it resolves, released when it throws. */
export type MessageHandler = (msg: Message) => unknown;
/** What to do with an error of a message loop (`msg` is the message being handled, if any). */
export type ErrorHandler = (error: unknown, msg: Message | null) => void;
/** Options of {@link Agent.onMessage}: those of the agent's message loop, taken from the first call. */
export interface OnMessageOptions {
    /** Long-poll the inbox this long at a time (default 30 000 ms). */
    pollMs?: number;
    /** Each message is leased this long (default 30 000 ms): a handler that takes longer may see it again. */
    leaseMs?: number;
    /** At most this many messages per read (default 32). */
    max?: number;
    /** Called with a handler's error (the message is then released) or the loop's (default: `console.error`). */
    onError?: ErrorHandler;
}
/** A handler registered with {@link Agent.onMessage}. */
export interface MessageSubscription {
    /** Removes the handler; the loop stops (and this resolves) when no handler is left. */
    stop(): Promise<void>;
    /** Resolves when the agent's message loop has ended. */
    readonly done: Promise<void>;
}
/** Options of {@link Agent.attach}. */
export interface AttachOptions {
    /** A name for messages (default: the data directory's name). */
    name?: string;
    /** Wait up to this long for the node to come up (default 0: it must be up). */
    waitMs?: number;
    /** Talk over the Unix socket instead of loopback TCP. */
    useSocket?: boolean;
}
/** Options of {@link Agent.start}. */
export interface StartOptions {
    /** Bootstrap multiaddrs (a list, or comma-separated). */
    bootstrap?: string | readonly string[];
    /** Mailbox relay multiaddrs. */
    relays?: string | readonly string[];
    /** The registry's node (multiaddr). */
    registry?: string;
    /** The data directory (default `~/.agentmesh/<name>`). */
    dataDir?: string;
    /**
     * The keystore's passphrase; else `$AGENTMESH_PASSPHRASE` /
     * `$AGENTMESH_PASSPHRASE_FILE`; else a random one kept in the file
     * `passphrase` of the data directory (mode 0600).
     */
    passphrase?: string;
    /** Addresses to listen on. */
    listen?: string | readonly string[];
    /** A KNOCK policy file. */
    policy?: string;
    /** The API's address (`127.0.0.1:PORT`). */
    api?: string;
    /** More `agentmesh run` arguments. */
    extraArgs?: readonly string[];
    /** Let the node outlive this process (a later `start` attaches to it). */
    detach?: boolean;
    /** Wait for the card to be stored in the DHT (default: when there is a bootstrap). */
    waitPublished?: boolean;
    /** How long to wait for the node (default 90 000 ms). */
    timeoutMs?: number;
    /** The `agentmesh` binary (default: found like {@link findBinary}). */
    binary?: string;
}
/** Options of {@link Agent.events}. */
export interface AgentEventsOptions {
    /** Start after this event id (default: after the last one yielded, else the oldest kept). */
    since?: number;
    /** Long-poll this long at a time (default 30 000 ms). */
    waitMs?: number;
    /** End after this long without an event (default: never). */
    idleTimeoutMs?: number;
    /** At most this many events per poll. */
    limit?: number;
    /** Ends the iteration. */
    signal?: AbortSignal;
}
/**
 * An AgentMesh agent: a running node and a client of its local API.
 *
 * Get one with {@link Agent.start} (start a node, or attach to the one
 * already running in that data directory), {@link Agent.attach}, or from a
 * {@link LocalMesh}.
 */
export declare class Agent {
    #private;
    /** The client of the node's local API (every route). */
    client: Client;
    /** A name for messages. */
    readonly name: string;
    /** The node's data directory, when known. */
    readonly dataDir: string | null;
    /** The node's process, when this agent started it. */
    process: NodeProcess | null;
    /** Id of the last event {@link events} yielded (a new iteration resumes after it). */
    lastEventId: number | null;
    /** Events the node no longer kept when {@link events} asked for them. */
    eventsDropped: number;
    /** An agent for the node `client` talks to (its AMID must be known). */
    constructor(client: Client, options: {
        amid: string;
        name?: string;
        dataDir?: string | null;
        process?: NodeProcess | null;
        onStop?: () => Promise<void>;
    });
    /** An agent for the API `info` describes. */
    static fromInfo(info: ApiInfo, options?: {
        name?: string;
        process?: NodeProcess | null;
        useSocket?: boolean;
        onStop?: () => Promise<void>;
    }): Promise<Agent>;
    /**
     * The agent whose node runs with data directory `dataDir` (default
     * `$AGENTMESH_HOME` or `~/.agentmesh`), from its `api.json`. Waits up to
     * `waitMs` for the node to come up; rejects with {@link NodeNotRunning}
     * when it does not answer.
     */
    static attach(dataDir?: string, options?: AttachOptions): Promise<Agent>;
    /**
     * Starts a node (`agentmesh run`) with its own data directory, or
     * attaches to the node already running there.
     *
     * The node stops with {@link stop} or when this process exits, unless
     * `detach`. Waits up to `timeoutMs` for the API and, when
     * `waitPublished` (default: when there is a bootstrap), for the agent's
     * card to be stored in the DHT.
     */
    static start(name?: string, options?: StartOptions): Promise<Agent>;
    /** This agent's AMID (its address in the network). */
    get amid(): string;
    /** Base URL of the node's A2A gateway (`a2a` in `api.json`), if any. */
    get a2aUrl(): string | null;
    /** For `console.log`. */
    toString(): string;
    /**
     * Sends `payload` (any JSON value; a string is sent as `{"text": ...}`)
     * to an AMID or an agent. Resolves to the {@link Receipt} once delivered
     * or deposited in a relay mailbox; with `wait: false`, to the message id
     * at once.
     */
    send(to: Recipient, payload: unknown, options?: SendOptions & {
        wait?: true;
    }): Promise<Receipt>;
    send(to: Recipient, payload: unknown, options: SendOptions & {
        wait: false;
    }): Promise<string>;
    /** Sends a request and resolves to the reply {@link Message}. */
    request(to: Recipient, payload: unknown, options?: RequestOptions): Promise<Message>;
    /** Answers `msg` (same as `msg.reply(payload)`). */
    reply(msg: Message, payload: unknown, options?: ReplyOptions): Promise<Receipt>;
    /** Ends the conversation with `to`; resolves to the session that ended. */
    end(to: Recipient): Promise<string | null>;
    /** Sends bytes (or the file at `path`) as a stream of encrypted chunks. */
    stream(to: Recipient, options: StreamOptions): Promise<StreamResult>;
    /** One read of the inbox; acknowledge what you handled with {@link ack} or `msg.ack()`. */
    messages(options?: MessagesOptions): Promise<Message[]>;
    /** Acknowledges messages (the node forgets them). */
    ack(msgs: Iterable<string | Message>): Promise<number>;
    /** Hands messages out again at once. */
    release(msgs: Iterable<string | Message>): Promise<number>;
    /**
     * Registers a message handler and runs the agent's message loop (one per
     * agent, started by the first handler). Handlers run in registration
     * order on every message, one message at a time, in arrival order; the
     * message is acknowledged once they all resolved, and released for
     * another try when one throws (the error goes to `onError`). A message
     * whose handler never ends is handed out again when its lease ends.
     *
     * The loop keeps this process running until {@link stop}, or until the
     * returned subscription's `stop()` removed the last handler.
     */
    onMessage(handler: MessageHandler, options?: OnMessageOptions): MessageSubscription;
    /**
     * Reads the inbox once (waiting up to `waitMs`) and runs the handlers on
     * what came, acknowledging each message handled; resolves to how many
     * were handled. For use without the loop (handlers registered with
     * {@link onMessage} and stopped, or passed here).
     */
    processPending(options?: MessagesOptions & {
        handlers?: MessageHandler[];
        onError?: ErrorHandler;
    }): Promise<number>;
    /**
     * Node events, as they happen (long-polls `GET /v1/events`).
     *
     * Starts after event id `since`; without it, after the last event a
     * previous iteration yielded ({@link lastEventId}), or with the oldest
     * event the node keeps. A new iteration therefore resumes where the last
     * one stopped, without losing or repeating an event. Ends when
     * `idleTimeoutMs` passes without an event (never, by default) or
     * `signal` aborts. Events the node no longer had are counted in
     * {@link eventsDropped}, once: after a gap with no event (a `since` from
     * an earlier run of the node), the next poll goes on past it.
     */
    events(options?: AgentEventsOptions): AsyncGenerator<Event, void, undefined>;
    /** The node's status. */
    status(): Promise<Status>;
    /** Agents the node knows (the seed's `list_peers`): petname, presence, last seen, path, sessions. */
    peers(): Promise<Peer[]>;
    /** This agent's signed card; `card.card` is the string to hand out of band (the seed's `public_bundle`). */
    exportCard(): Promise<Card>;
    /** Imports another agent's card (the seed's `connect_with_bundle`): it is then reached with no DHT. */
    importCard(card: string | Card, options?: {
        name?: string;
    }): Promise<Card>;
    /** Names an agent locally (never published); the name is then taken wherever an AMID is. */
    setName(name: string, amid: Recipient): Promise<void>;
    /** Forgets a petname; resolves to the AMID it named. */
    removeName(name: string): Promise<string>;
    /** Every petname and the AMID it names. */
    names(): Promise<Record<string, string>>;
    /** The node's sessions. */
    sessions(): Promise<JsonObject[]>;
    /** An agent's signed card, from the DHT (`NotFound` if none). */
    lookup(amid: Recipient): Promise<JsonObject>;
    /** The message schemas this agent's node knows, and those it takes per capability. */
    schemas(): Promise<SchemaCatalog>;
    /** The message schemas another agent takes, per capability, from its card: `{}` when none. */
    schemasOf(amid: Recipient): Promise<Record<string, string[]>>;
    /** Agents offering `capability`, from the node's registry. */
    search(capability: string, options?: SearchOptions): Promise<SearchResults>;
    /** Registers this agent with the node's registry. */
    register(name: string, capabilities?: string[]): Promise<JsonObject>;
    /** Refuses this agent from now on. */
    block(amid: Recipient): Promise<void>;
    /** Ends every session with `amid`; resolves to how many. */
    close(amid: Recipient): Promise<number>;
    /** Closes the connections to `amid` (sessions stay). */
    disconnect(amid: Recipient): Promise<void>;
    /** What this agent's KNOCK policy (or `options.policy`) would decide on a KNOCK with this intent; nothing is sent. */
    checkPolicy(capability: string, options?: Omit<CheckPolicyOptions, "from"> & {
        from?: Recipient;
    }): Promise<PolicyCheck>;
    /** Sets presence: `online`, `away`, `dnd` or `offline`. */
    presence(state: Presence): Promise<void>;
    /** The kill switch, for one agent or (no argument) everyone. */
    kill(amid?: Recipient): Promise<void>;
    /** Turns the kill switch for everyone off. */
    killClear(): Promise<void>;
    /** The last hour by minute: messages by path, KNOCK decisions, delivery latency (see {@link Client.timeseries}). */
    timeseries(): Promise<Timeseries>;
    /** This agent's tier and reputation at its registry, as the node last saw them (see {@link Client.registryStanding}). */
    registryStanding(): Promise<RegistryStanding>;
    /**
     * What `agentmesh doctor` checks, with a fix for each failure; with
     * `punch`, a hole-punch probe of that agent (see {@link Client.diagnostics}).
     */
    diagnostics(options?: {
        punch?: Recipient;
    }): Promise<Diagnostics>;
    /** The audit log. */
    audit(options?: AuditOptions): Promise<{
        audit: JsonObject[];
        verified?: number;
    }>;
    /**
     * Stops the message loop and, when this agent started its node
     * ({@link start}, {@link LocalMesh}), the node.
     */
    stop(): Promise<void>;
    /** `await using agent = await Agent.start(...)` stops it at the end of the block. */
    [Symbol.asyncDispose](): Promise<void>;
}
//# sourceMappingURL=agent.d.ts.map