/**
 * {@link Client}: one method per route of a node's local API, over
 * loopback TCP (or the node's Unix socket), with the bearer token of its
 * `api.json`. Times are in milliseconds, as in the API.
 *
 * @module
 */
import type { ApiAnswer, ApiBody, ApiMethod, ApiPath, ApiPathParams, ApiQuery, MethodOf } from "./api.js";
import { type ApiInfo, type Card, type Event, type EventBatch, type InboxCounts, type JsonObject, type Peer, type PolicyCheck, type Receipt, type SchemaCatalog, type Status, type StreamResult, Message } from "./models.js";
/**
 * Milliseconds to wait for an answer that is not a long-poll (a send waits
 * for the recipient's acknowledgement, up to a minute on the node's side).
 */
export declare const DEFAULT_TIMEOUT_MS = 120000;
/** The presence states of an agent. */
export declare const PRESENCE_STATES: readonly ["online", "away", "dnd", "offline"];
/** An agent's presence. */
export type Presence = (typeof PRESENCE_STATES)[number];
/** Query parameters: `undefined` ones are left out. */
export type Query = Record<string, string | number | boolean | undefined>;
/** Options of {@link Client.call}. */
export interface CallOptions {
    /** Query parameters. */
    query?: Query;
    /** A JSON body. */
    body?: unknown;
    /** A raw body, sent as is (with `Content-Type: application/json` unless given). */
    rawBody?: string | Uint8Array;
    /** More headers (they replace the client's own, `Authorization` and `Host` included). */
    headers?: Record<string, string>;
    /** Milliseconds to wait for the answer (default: the client's `timeoutMs`). */
    timeoutMs?: number;
    /** Cancels the request. */
    signal?: AbortSignal;
}
/** Options of {@link Client.api}: typed by the route. */
export type ApiCallOptions<P extends ApiPath, M extends MethodOf<P>> = Omit<CallOptions, "query" | "body"> & {
    /** Query parameters of the route. */
    query?: ApiQuery<P, M>;
    /** Path parameters of the route (`{amid}`). */
    params?: ApiPathParams<P, M>;
} & (undefined extends ApiBody<P, M> ? {
    body?: ApiBody<P, M>;
} : {
    body: ApiBody<P, M>;
});
/** Options of a {@link Client}. */
export interface ClientOptions {
    /** The node's AMID, when known. */
    amid?: string | null;
    /** Path of the node's Unix socket. */
    socket?: string | null;
    /** Talk over the Unix socket instead of loopback TCP. */
    useSocket?: boolean;
    /** Milliseconds to wait for an answer that is not a long-poll (default 120 000). */
    timeoutMs?: number;
}
/**
 * The last hour, minute by minute (`GET /v1/stats/timeseries`): `minutes`
 * (oldest first, each with `sent` and `received` by path and `knocks`
 * accepted and rejected) and `latency`, the delivery latency histogram.
 */
export type Timeseries = ApiAnswer<"/v1/stats/timeseries", "get">;
/**
 * This agent's tier and reputation at its registry, as the node last heard
 * them (`GET /v1/registry/standing`): `state` is `checking`,
 * `not_configured`, `registered` (with `tier` and `reputation`),
 * `not_registered` or `unknown`.
 */
export type RegistryStanding = ApiAnswer<"/v1/registry/standing", "get">;
/**
 * What `agentmesh doctor` checks, run by the node (`GET /v1/diagnostics`):
 * `checks` (each `{check, result, detail, fix}`), the NAT mapping and the
 * probes it was inferred from, the clock against peers and the registry,
 * and the hole-punch probe when one was asked for.
 */
export type Diagnostics = ApiAnswer<"/v1/diagnostics", "get">;
/** Options of {@link Client.diagnostics}. */
export interface DiagnosticsOptions {
    /**
     * Also probe hole punching to this agent: the node reaches it (through a
     * relay if need be) and waits up to 10 s for a direct connection; the
     * `punch probe` check and the `punch` field say how it went.
     */
    punch?: string;
}
/** Something with an AMID: an AMID string, or an {@link Agent}. */
export type Recipient = string | {
    readonly amid: string;
};
/** The AMID of a {@link Recipient}. */
export declare function amidOf(to: Recipient): string;
/** Options of {@link Client.send}. */
export interface SendOptions {
    /** The capability declared in the KNOCK (default `communication/messaging`). */
    capability?: string;
    /**
     * The message schema the payload follows (`agentmesh/request@1`, or a
     * custom `x-<ns>/<name>@<major>`). A recipient that lists schemas for the
     * capability ({@link Client.schemasOf}) refuses a KNOCK naming none or
     * another (`Rejected`, `reason` `unsupported_schema`) and a payload its
     * schema refuses (`reason` `schema_invalid`); a payload that fails a
     * schema this node knows rejects with `InvalidPayload` before anything is
     * sent.
     */
    schema?: string;
    /**
     * Wait for the receipt (default). With `false`, {@link Client.send}
     * returns the message id at once; the outcome comes as an event.
     */
    wait?: boolean;
}
/** Options of {@link Client.request}. */
export interface RequestOptions {
    /** The capability declared in the KNOCK. */
    capability?: string;
    /** The message schema the payload follows (see {@link SendOptions.schema}). */
    schema?: string;
    /** Milliseconds to wait for the reply (default 30 000). */
    timeoutMs?: number;
}
/** Options of {@link Client.stream}: the bytes, or a file the node reads. */
export type StreamOptions = ({
    data: Uint8Array;
    path?: undefined;
} | {
    path: string;
    data?: undefined;
}) & {
    /** Bytes per chunk. */
    chunkSize?: number;
    /** The capability declared in the KNOCK. */
    capability?: string;
};
/** Options of {@link Client.messages}. */
export interface MessagesOptions {
    /** Wait up to this long for a first message (0 to 60 000; default 0). */
    waitMs?: number;
    /** At most this many messages (1 to 256; default 32). */
    max?: number;
    /** Each message is leased to this reader this long (1000 to 600 000; default 30 000). */
    leaseMs?: number;
    /** Cancels the wait. */
    signal?: AbortSignal;
}
/** Options of {@link Client.events}. */
export interface EventsOptions {
    /** Events after this id (all kept ones when not given). */
    since?: number;
    /** Wait up to this long for a first event (0 to 60 000; default 0). */
    waitMs?: number;
    /** At most this many events (1 to 1000). */
    limit?: number;
    /** Cancels the wait. */
    signal?: AbortSignal;
}
/** Options of {@link Client.checkPolicy}. */
export interface CheckPolicyOptions {
    /** The sender (default: a fresh anonymous AMID). */
    from?: string;
    /** The intent's action. */
    action?: string;
    /** `anonymous`, `verified` or `organization`. */
    tier?: "anonymous" | "verified" | "organization";
    /** 0 to 1. */
    reputation?: number;
    /** TOML text to judge with instead of the policy in force. */
    policy?: string;
}
/** Options of {@link Client.audit}. */
export interface AuditOptions {
    /** Only entries about this AMID. */
    peer?: string;
    /** Only entries of this kind. */
    kind?: string;
    /** Only the most recent N. */
    limit?: number;
    /** Verify the whole hash chain. */
    verify?: boolean;
}
/** Options of {@link Client.search}. */
export interface SearchOptions {
    /** Lowest tier: `anonymous`, `verified`, `organization`. */
    tierMin?: "anonymous" | "verified" | "organization";
    /** Lowest reputation, 0 to 1. */
    reputationMin?: number;
    /** At most this many results. */
    limit?: number;
}
/** What {@link Client.search} found. */
export interface SearchResults {
    /** How many agents matched. */
    readonly count: number;
    /** The agents: `amid`, `display_name`, `capabilities`, `tier`, `reputation`, `presence`, …. */
    readonly results: JsonObject[];
    /** The registry's answer as it came. */
    readonly raw: JsonObject;
}
/** An SSE parser: lines in, events out. */
export declare class SseParser {
    #private;
    /** Feeds one line (without its end); returns the event it completes, if any. */
    feed(line: string): Event | null;
}
/**
 * A client of one node's local API.
 *
 * ```ts
 * const c = await Client.fromDataDir("~/.agentmesh");
 * const receipt = await c.send(bobAmid, { text: "hello" });
 * ```
 */
export declare class Client {
    #private;
    /** Where the API is and the token it wants (the node's `api.json`). */
    readonly info: ApiInfo;
    /** Milliseconds to wait for an answer that is not a long-poll. */
    timeoutMs: number;
    /**
     * A client of the API at `url` (`http://127.0.0.1:PORT`; `null` for the
     * Unix socket only) with `token`.
     */
    constructor(url: string | null, token: string, options?: ClientOptions);
    /** A client for the API that `info` (an `api.json`) describes. */
    static fromInfo(info: ApiInfo, options?: Omit<ClientOptions, "amid" | "socket">): Client;
    /**
     * A client for the node running in `dataDir` (default `$AGENTMESH_HOME`
     * or `~/.agentmesh`), from its `api.json`.
     */
    static fromDataDir(dataDir?: string, options?: Omit<ClientOptions, "amid" | "socket">): Promise<Client>;
    /** The API's base URL (`http://localhost` over the Unix socket). */
    get url(): string;
    /** The node's AMID, as `api.json` gives it (`null` if not known). */
    get amid(): string | null;
    /** Closes the idle connections (the node keeps running). */
    close(): void;
    /**
     * Any route, raw: resolves to the decoded JSON answer (or the text of a
     * non-JSON one), rejects with the {@link AgentMeshError} subclass of an
     * error answer, or {@link NodeNotRunning} when the node does not answer.
     */
    call(method: string, path: string, options?: CallOptions): Promise<unknown>;
    /**
     * Any route, typed by the OpenAPI document: the body, query and answer
     * are those the document gives the route.
     *
     * ```ts
     * const { receipt } = await c.api("post", "/v1/send", { body: { to, payload: { text: "hi" } } });
     * ```
     */
    api<P extends ApiPath, M extends MethodOf<P> & ApiMethod>(method: M, path: P, ...[options]: undefined extends ApiBody<P, M> ? [ApiCallOptions<P, M>?] : [ApiCallOptions<P, M>]): Promise<ApiAnswer<P, M>>;
    /**
     * Sends `payload` (any JSON value; a string is sent as `{"text": ...}`) to
     * `to`. Resolves to the {@link Receipt} once the recipient acknowledged it
     * (or a relay mailbox took it); with `wait: false`, to the message id at
     * once (the outcome comes as an event).
     */
    send(to: string, payload: unknown, options?: SendOptions & {
        wait?: true;
    }): Promise<Receipt>;
    send(to: string, payload: unknown, options: SendOptions & {
        wait: false;
    }): Promise<string>;
    send(to: string, payload: unknown, options?: SendOptions): Promise<Receipt | string>;
    /**
     * Sends a request and resolves to the reply; rejects with `ReplyTimeout`
     * when none comes within `timeoutMs` (default 30 000).
     */
    request(to: string, payload: unknown, options?: RequestOptions): Promise<Message>;
    /**
     * Answers message `id` from `to`. With `session`, in that session only
     * (`NoSession` when it ended).
     */
    reply(to: string, id: string, payload: unknown, options?: {
        session?: string;
    }): Promise<Receipt>;
    /**
     * Ends the conversation with `amid` (an end message after everything sent
     * before; both sides then forget the session); resolves to the id of the
     * session that ended.
     */
    end(amid: string): Promise<string | null>;
    /** Sends bytes (or the file at `path`, read by the node) as a stream of end-to-end encrypted chunks. */
    stream(to: string, options: StreamOptions): Promise<StreamResult>;
    /**
     * Messages waiting in the inbox, in arrival order, each leased to this
     * reader for `leaseMs`. Waits up to `waitMs` for the first one.
     * Acknowledge each after handling it ({@link ack}).
     */
    messages(options?: MessagesOptions): Promise<Message[]>;
    /** Acknowledges messages: the node removes them from its inbox. */
    ack(ids: Iterable<string | Message>): Promise<number>;
    /** Ends the lease of messages: they are handed out again at once. */
    release(ids: Iterable<string | Message>): Promise<number>;
    /** Node events after id `since` (all kept ones when not given); waits up to `waitMs` for the first. */
    events(options?: EventsOptions): Promise<EventBatch>;
    /**
     * Node events after id `since` as they happen, over Server-Sent Events
     * (`GET /v1/events/stream`); runs until the caller stops iterating (or
     * `signal` aborts). When events after `since` are no longer kept, the
     * stream opens with an event `{"event": "dropped", "count": n}` (its `id`
     * is 0).
     */
    eventStream(options?: {
        since?: number;
        signal?: AbortSignal;
    }): AsyncGenerator<Event, void, undefined>;
    /** The node's status (AMID, sessions, peers, network). */
    status(): Promise<Status>;
    /** Messages in the API's inbox: waiting, and leased to readers. */
    inboxCounts(): Promise<InboxCounts>;
    /**
     * Agents the node knows (sessions, imported cards, petnames, connections):
     * petname, presence, last seen, path, sessions (the seed's `list_peers`).
     */
    peers(): Promise<Peer[]>;
    /**
     * This agent's signed card; `card.card` is the string to hand out of band
     * (the seed's `public_bundle`).
     */
    exportCard(): Promise<Card>;
    /**
     * Imports another agent's card string (the seed's `connect_with_bundle`):
     * verified (a forged one rejects with `InvalidCard`, an expired one with
     * `CardExpired`), kept by the node and used to reach that agent with no
     * DHT. `name` also gives it a petname.
     */
    importCard(card: string | Card, options?: {
        name?: string;
    }): Promise<Card>;
    /** Names `amid` locally (never published); the name is then taken wherever an AMID is. */
    setName(name: string, amid: string): Promise<void>;
    /** Forgets a petname; resolves to the AMID it named. */
    removeName(name: string): Promise<string>;
    /** Every petname and the AMID it names. */
    names(): Promise<Record<string, string>>;
    /** The node's sessions. */
    sessions(): Promise<JsonObject[]>;
    /** An agent's signed card from the DHT (rejects with `NotFound` if none). */
    lookup(amid: string): Promise<JsonObject>;
    /**
     * The message schemas this node knows (the standard ones and those given
     * with `--schema-file`) and those it takes per capability
     * (`--accept-schema`, listed in its card): `GET /v1/schemas`.
     */
    schemas(): Promise<SchemaCatalog>;
    /**
     * The message schemas another agent takes, per capability, from its card
     * ({@link lookup}): `{}` when it lists none (it takes any payload).
     */
    schemasOf(amid: string): Promise<Record<string, string[]>>;
    /** Ends every session with `amid`; resolves to how many. */
    closeSessions(amid: string): Promise<number>;
    /** Closes every connection to `amid` (sessions stay). */
    disconnect(amid: string): Promise<void>;
    /** Blocks `amid`: its KNOCKs are refused. */
    block(amid: string): Promise<void>;
    /** The kill switch: for `amid`, or for everyone when not given. */
    kill(amid?: string): Promise<void>;
    /** Turns the kill switch for everyone off. */
    killClear(): Promise<void>;
    /** Sets this agent's presence: `online`, `away`, `dnd` or `offline`. */
    presence(state: Presence): Promise<void>;
    /** The KNOCK policy in force and its hash. */
    policy(): Promise<{
        policy: JsonObject;
        policyHash: string;
    }>;
    /** Puts a policy (TOML text) in force now; resolves to its hash. The policy file is not changed. */
    setPolicy(toml: string): Promise<string>;
    /** Makes the node read its policy file again; resolves to the new hash. */
    reloadPolicy(): Promise<string>;
    /**
     * What the policy in force (or `options.policy`, TOML text) would decide
     * on a KNOCK with this intent. Nothing is sent or recorded.
     */
    checkPolicy(capability: string, options?: CheckPolicyOptions): Promise<PolicyCheck>;
    /** The audit log: `{audit: [...], verified?}`. */
    audit(options?: AuditOptions): Promise<{
        audit: JsonObject[];
        verified?: number;
    }>;
    /** The session receipts the node holds. */
    receipts(): Promise<JsonObject[]>;
    /** The credentials the node shows in KNOCKs (fetched anew from the registry with `renew`). */
    credentials(options?: {
        renew?: boolean;
    }): Promise<JsonObject>;
    /**
     * Registers this agent with the node's registry (`--registry`), under
     * `name` and with `capabilities` (default: those of its card).
     */
    register(name: string, capabilities?: string[]): Promise<JsonObject>;
    /**
     * Agents offering `capability` (or a category of capabilities), from the
     * node's registry (`--registry`): each entry has the agent's `amid`,
     * `display_name`, `capabilities`, `tier`, `reputation`, `presence`, ….
     */
    search(capability: string, options?: SearchOptions): Promise<SearchResults>;
    /** A one-time link that logs a browser into the node's dashboard. */
    dashboardLink(): Promise<{
        url: string;
        expiresInS: number | null;
    }>;
    /** The last hour, minute by minute: messages by path, KNOCK decisions, delivery latency. */
    timeseries(): Promise<Timeseries>;
    /** This agent's tier and reputation at its registry, from the node's cache (never waits on the registry). */
    registryStanding(): Promise<RegistryStanding>;
    /**
     * The doctor's checks, each with a fix when it is not ok. With
     * `options.punch`, the answer waits for the hole-punch probe (up to about
     * 10 s once the peer is reached).
     */
    diagnostics(options?: DiagnosticsOptions): Promise<Diagnostics>;
    /** The OpenAPI document of the local API. */
    openapi(): Promise<JsonObject>;
}
//# sourceMappingURL=client.d.ts.map