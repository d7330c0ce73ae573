/**
 * What the local API answers, as typed objects. The wire shapes come from
 * the generated OpenAPI types (`src/generated/openapi.ts`).
 *
 * @module
 */
import type { components } from "./generated/openapi.js";
/** Any JSON value. */
export type JsonValue = null | boolean | number | string | JsonValue[] | {
    [key: string]: JsonValue;
};
/** A JSON object. */
export type JsonObject = {
    [key: string]: JsonValue;
};
/** The wire shapes of the OpenAPI document's schemas. */
export type Schemas = components["schemas"];
/** Name of the file a running node writes in its data directory. */
export declare const API_FILE = "api.json";
/** The path kinds a receipt or a message names, as the API spells them. */
export declare const PATH_KINDS: readonly ["direct_quic", "direct_tcp", "direct_web_rtc", "relayed", "mailbox", "other"];
/** How a message travelled: one of {@link PATH_KINDS}. */
export type PathKind = Schemas["Receipt"]["path"];
/** What a message is: `message`, `request` or `reply`. */
export type MessageKind = Schemas["Message"]["kind"];
/**
 * The data directory the `agentmesh` command uses: `$AGENTMESH_HOME`,
 * else `~/.agentmesh`.
 */
export declare function defaultDataDir(): string;
/** Expands a leading `~/`. */
export declare function expandHome(p: string): string;
/** Whether `v` is a JSON object (not an array, not `null`). */
export declare function isObject(v: unknown): v is Record<string, unknown>;
/** `v` checked to be a JSON object. */
export declare function object(v: unknown, what: string): Record<string, unknown>;
/**
 * The contents of `api.json`: where the node's local API listens and the
 * token it wants. `url` is `null` when the node serves its API on its Unix
 * socket only.
 */
export interface ApiInfo {
    /** Base URL of the API on loopback TCP (`http://127.0.0.1:PORT`). */
    readonly url: string | null;
    /** The bearer token; new at every start of the node. */
    readonly token: string;
    /** Path of the API's Unix socket. */
    readonly socket: string | null;
    /** The node's AMID. */
    readonly amid: string | null;
    /** Version of the API. */
    readonly version: number;
    /** Base URL of the node's A2A gateway, when it serves one (`--a2a`). */
    readonly a2a: string | null;
    /** The data directory the file was read from, if any. */
    readonly dataDir: string | null;
}
/** Reads an {@link ApiInfo} from the JSON of `api.json`. */
export declare function apiInfoFromJson(data: unknown, dataDir?: string | null): ApiInfo;
/**
 * Reads `api.json` from `dataDir` (default: {@link defaultDataDir}).
 * Rejects with {@link NodeNotRunning} when the file is missing (no node
 * runs there) and {@link BadResponse} when it does not parse.
 */
export declare function loadApiInfo(dataDir?: string): Promise<ApiInfo>;
/** Proof that a message reached its recipient (or a relay mailbox). */
export interface Receipt {
    /** The message id (32 hex digits). */
    readonly id: string;
    /** The recipient's AMID. */
    readonly to: string;
    /**
     * How it went: `direct_quic`, `direct_tcp`, `direct_web_rtc`, `relayed`,
     * `mailbox` (deposited at a relay for a recipient that is offline) or
     * `other`.
     */
    readonly path: PathKind;
    /** Whether the message rode in a KNOCK (opened the session). */
    readonly knocked: boolean;
    /** The session id (32 hex digits). */
    readonly session: string;
}
/** Reads a {@link Receipt}. */
export declare function receiptFromJson(v: unknown): Receipt;
/** What a {@link Message} needs to answer, acknowledge and release itself. */
export interface MessageActions {
    /** See {@link Client.reply}. */
    reply(to: string, id: string, payload: unknown, options?: {
        session?: string;
    }): Promise<Receipt>;
    /** See {@link Client.ack}. */
    ack(ids: Iterable<string | Message>): Promise<number>;
    /** See {@link Client.release}. */
    release(ids: Iterable<string | Message>): Promise<number>;
}
/** Options of {@link Message.reply}. */
export interface ReplyOptions {
    /**
     * Reply in this message's session only; fails with `NoSession` when the
     * conversation has ended. By default a reply opens a new session if need be.
     */
    sameSession?: boolean;
}
/**
 * A received message. `from` is the sender's AMID; `kind` is `message`,
 * `request` or `reply`; `replyTo` names the message a reply answers;
 * `deliveries` counts how many times the node handed the message out (more
 * than one when an earlier reader did not acknowledge it).
 */
export declare class Message {
    #private;
    /** The message id (32 hex digits). */
    readonly id: string;
    /** The sender's AMID. */
    readonly from: string;
    /** The session it came in. */
    readonly session: string;
    /** Its sequence number in the session. */
    readonly seq: number;
    /** When it was sent, in milliseconds since the epoch. */
    readonly tsMs: number;
    /** The payload: any JSON value. */
    readonly payload: JsonValue;
    /** How it travelled. */
    readonly path: string;
    /** `message`, `request` or `reply`. */
    readonly kind: MessageKind;
    /** For a reply, the id of the request it answers. */
    readonly replyTo: string | null;
    /** How many times the node handed it out. */
    readonly deliveries: number;
    constructor(fields: {
        id: string;
        from: string;
        session: string;
        seq: number;
        tsMs: number;
        payload: JsonValue;
        path: string;
        kind: MessageKind;
        replyTo?: string | null;
        deliveries?: number;
    }, client?: MessageActions | null);
    /** Reads a message as the API writes it. */
    static fromJson(v: unknown, client?: MessageActions | null): Message;
    /** The message as the API writes it (`from`, `ts_ms`, `reply_to`). */
    toJSON(): Schemas["Message"];
    /** `payload.text` when the payload is an object with a text. */
    get text(): string | null;
    /** Whether the sender waits for a reply (`kind === "request"`). */
    get isRequest(): boolean;
    /**
     * Answers this message (`POST /v1/reply`). A plain string is sent as
     * `{"text": ...}`.
     */
    reply(payload: unknown, options?: ReplyOptions): Promise<Receipt>;
    /** Acknowledges this message: the node forgets it. */
    ack(): Promise<number>;
    /** Hands this message out again at once (to the next reader). */
    release(): Promise<number>;
}
/**
 * A node event with its id: `event` is the object `agentmesh run --json`
 * prints (`{"event": "delivered", ...}`).
 */
export interface Event {
    /**
     * Monotonic id, for the life of the node's data directory: ids go on
     * across restarts of the node (each run continues after the ids the
     * last one handed out), so a `since` from an earlier run resumes after
     * it, the events no longer kept reported as dropped. 0 for a stream's
     * opening `dropped`.
     */
    readonly id: number;
    /** When it happened, in milliseconds since the epoch. */
    readonly tsMs: number;
    /** The event's name (`delivered`, `knock_decided`, …). */
    readonly kind: string;
    /** The event itself. */
    readonly event: {
        readonly event: string;
    } & Readonly<Record<string, JsonValue>>;
}
/** Reads an {@link Event}. */
export declare function eventFromJson(v: unknown): Event;
/**
 * One answer of `GET /v1/events`. `dropped` counts events after `since`
 * that the node no longer keeps (a gap).
 */
export interface EventBatch {
    /** The events, oldest first. */
    readonly events: Event[];
    /**
     * The id of the last event the node has (before the first event of a
     * run: the highest id of earlier runs, 0 for a new data directory).
     */
    readonly lastId: number;
    /** Events after `since` no longer kept. */
    readonly dropped: number;
}
/** Reads an {@link EventBatch}. */
export declare function eventBatchFromJson(v: unknown): EventBatch;
/**
 * A peer the node knows: the path of the open connection to it (or `null`)
 * and how many sessions it has with it.
 */
export interface Peer {
    /** The agent's AMID. */
    readonly amid: string;
    /** The path of the open connection (`direct_quic`, `relayed`, …), if any. */
    readonly path: string | null;
    /** Sessions with it. */
    readonly sessions: number;
    /** Our local petname for it. */
    readonly name: string | null;
    /** Its presence, from the freshest card the node holds of it. */
    readonly presence: string | null;
    /** When it last connected, wrote or acknowledged (ms since the epoch). */
    readonly lastSeenMs: number | null;
    /** Whether a card of it was imported out of band. */
    readonly cardImported: boolean;
}
/** Reads a {@link Peer}. */
export declare function peerFromJson(v: unknown): Peer;
/**
 * An agent's signed card (`GET /v1/card`, `POST /v1/cards`). `card` is the
 * string to hand out of band: whoever imports it reaches the agent with no
 * DHT until `expiresMs`.
 */
export interface Card {
    /** The agent. */
    readonly amid: string;
    /** The record's sequence number. */
    readonly seq: number;
    /** Its expiry, ms since the epoch. */
    readonly expiresMs: number;
    /** The exported string (multibase base64url, `u…`), when exported. */
    readonly card: string | null;
    /** The petname given on import. */
    readonly name: string | null;
}
/** Reads a {@link Card}. */
export declare function cardFromJson(v: unknown): Card;
/** What a KNOCK policy would decide on a KNOCK (`POST /v1/policy/check`). */
export interface PolicyCheck {
    /** Whether the KNOCK would be accepted. */
    readonly accepted: boolean;
    /** The reject reason (`blocked`, `intent_denied`, …) when refused. */
    readonly reason: string | null;
    /** The hash of the policy judged by. */
    readonly policyHash: string;
    /** The decision as the node wrote it (`{"accept": {...}}` or `{"reject": {"reason": ...}}`). */
    readonly decision: JsonValue;
}
/** Reads a {@link PolicyCheck}. */
export declare function policyCheckFromJson(v: unknown): PolicyCheck;
/** What `POST /v1/stream` sent. */
export interface StreamResult {
    /** Chunks sent. */
    readonly chunks: number;
    /** Bytes sent. */
    readonly bytes: number;
}
/** The node's status (`GET /v1/status`): its AMID, sessions, peers, network. */
export type Status = Schemas["Status"] & Readonly<Record<string, JsonValue>>;
/** Messages in the API's inbox: waiting, and leased to a reader. */
export interface InboxCounts {
    /** Waiting to be handed out. */
    readonly ready: number;
    /** Handed out and not yet acknowledged. */
    readonly leased: number;
}
/** The ids of the standard message schemas every node knows. */
export declare const STANDARD_SCHEMAS: readonly ["agentmesh/text@1", "agentmesh/request@1", "agentmesh/response@1", "agentmesh/error@1", "agentmesh/task-update@1", "agentmesh/file-offer@1"];
/**
 * The message schemas a node knows and those it takes (`GET /v1/schemas`).
 * A capability not in `accepted` takes any payload.
 */
export interface SchemaCatalog {
    /** The ids of the schemas the node knows, in the node's order. */
    readonly ids: string[];
    /**
     * Each schema the node knows ({@link STANDARD_SCHEMAS} and custom
     * `x-<ns>/<name>@<major>` ones), by id: its JSON Schema.
     */
    readonly schemas: Record<string, JsonObject>;
    /** Per capability that takes schemas, their ids (what its card lists). */
    readonly accepted: Record<string, string[]>;
    /** The answer as it came. */
    readonly raw: JsonObject;
}
/**
 * The message schemas an agent's card (`Client.lookup`) says it takes, per
 * capability: `{}` when the card lists none.
 */
export declare function cardSchemas(card: unknown): Record<string, string[]>;
/** Reads a {@link SchemaCatalog}. */
export declare function schemaCatalogFromJson(v: unknown): SchemaCatalog;
//# sourceMappingURL=models.d.ts.map