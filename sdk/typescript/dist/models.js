/**
 * What the local API answers, as typed objects. The wire shapes come from
 * the generated OpenAPI types (`src/generated/openapi.ts`).
 *
 * @module
 */
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { BadResponse, NodeNotRunning } from "./errors.js";
/** Name of the file a running node writes in its data directory. */
export const API_FILE = "api.json";
/** The path kinds a receipt or a message names, as the API spells them. */
export const PATH_KINDS = [
    "direct_quic",
    "direct_tcp",
    "direct_web_rtc",
    "relayed",
    "mailbox",
    "other",
];
/**
 * The data directory the `agentmesh` command uses: `$AGENTMESH_HOME`,
 * else `~/.agentmesh`.
 */
export function defaultDataDir() {
    return process.env["AGENTMESH_HOME"] || join(homedir(), ".agentmesh");
}
/** Expands a leading `~/`. */
export function expandHome(p) {
    return p === "~" ? homedir() : p.startsWith("~/") ? join(homedir(), p.slice(2)) : p;
}
/** Whether `v` is a JSON object (not an array, not `null`). */
export function isObject(v) {
    return typeof v === "object" && v !== null && !Array.isArray(v);
}
function str(d, key, what) {
    const v = d[key];
    if (typeof v !== "string")
        throw new BadResponse(`${what}: '${key}' is missing or not a string`);
    return v;
}
function int(d, key, what, dflt) {
    const v = d[key] ?? dflt;
    if (typeof v !== "number" || !Number.isInteger(v)) {
        throw new BadResponse(`${what}: '${key}' is missing or not an integer`);
    }
    return v;
}
function optStr(d, key) {
    const v = d[key];
    return typeof v === "string" ? v : null;
}
/** `v` checked to be a JSON object. */
export function object(v, what) {
    if (!isObject(v))
        throw new BadResponse(`${what}: expected a JSON object`);
    return v;
}
/** Reads an {@link ApiInfo} from the JSON of `api.json`. */
export function apiInfoFromJson(data, dataDir = null) {
    const what = API_FILE;
    const d = object(data, what);
    const url = d["url"];
    if (typeof url !== "string" && typeof d["socket"] !== "string") {
        throw new BadResponse(`${what}: neither 'url' nor 'socket'`);
    }
    const a2a = d["a2a"];
    return {
        url: typeof url === "string" ? url.replace(/\/+$/, "") : null,
        token: str(d, "token", what),
        socket: optStr(d, "socket"),
        amid: optStr(d, "amid"),
        version: int(d, "version", what, 1),
        a2a: typeof a2a === "string" ? a2a.replace(/\/+$/, "") : null,
        dataDir,
    };
}
/**
 * Reads `api.json` from `dataDir` (default: {@link defaultDataDir}).
 * Rejects with {@link NodeNotRunning} when the file is missing (no node
 * runs there) and {@link BadResponse} when it does not parse.
 */
export async function loadApiInfo(dataDir) {
    const d = dataDir !== undefined ? expandHome(dataDir) : defaultDataDir();
    const path = join(d, API_FILE);
    let text;
    try {
        text = await readFile(path, "utf8");
    }
    catch (e) {
        if (e.code === "ENOENT") {
            throw new NodeNotRunning(`no ${API_FILE} in ${d}: no node is running with this data directory`);
        }
        throw new NodeNotRunning(`cannot read ${path}: ${String(e)}`, { cause: e });
    }
    let data;
    try {
        data = JSON.parse(text);
    }
    catch (e) {
        // A file caught while being written reads as truncated JSON.
        throw new BadResponse(`${path} is not JSON: ${String(e)}`, { cause: e });
    }
    return apiInfoFromJson(data, d);
}
/** Reads a {@link Receipt}. */
export function receiptFromJson(v) {
    const what = "receipt";
    const d = object(v, what);
    return {
        id: str(d, "id", what),
        to: str(d, "to", what),
        path: str(d, "path", what),
        knocked: d["knocked"] === true,
        session: str(d, "session", what),
    };
}
/**
 * A received message. `from` is the sender's AMID; `kind` is `message`,
 * `request` or `reply`; `replyTo` names the message a reply answers;
 * `deliveries` counts how many times the node handed the message out (more
 * than one when an earlier reader did not acknowledge it).
 */
export class Message {
    /** The message id (32 hex digits). */
    id;
    /** The sender's AMID. */
    from;
    /** The session it came in. */
    session;
    /** Its sequence number in the session. */
    seq;
    /** When it was sent, in milliseconds since the epoch. */
    tsMs;
    /** The payload: any JSON value. */
    payload;
    /** How it travelled. */
    path;
    /** `message`, `request` or `reply`. */
    kind;
    /** For a reply, the id of the request it answers. */
    replyTo;
    /** How many times the node handed it out. */
    deliveries;
    #client;
    constructor(fields, client = null) {
        this.id = fields.id;
        this.from = fields.from;
        this.session = fields.session;
        this.seq = fields.seq;
        this.tsMs = fields.tsMs;
        this.payload = fields.payload;
        this.path = fields.path;
        this.kind = fields.kind;
        this.replyTo = fields.replyTo ?? null;
        this.deliveries = fields.deliveries ?? 1;
        this.#client = client;
    }
    /** Reads a message as the API writes it. */
    static fromJson(v, client = null) {
        const what = "message";
        const d = object(v, what);
        const kind = optStr(d, "kind") ?? "message";
        return new Message({
            id: str(d, "id", what),
            from: str(d, "from", what),
            session: str(d, "session", what),
            seq: int(d, "seq", what, 0),
            tsMs: int(d, "ts_ms", what, 0),
            payload: (d["payload"] ?? null),
            path: optStr(d, "path") ?? "other",
            kind: kind,
            replyTo: optStr(d, "reply_to"),
            deliveries: int(d, "deliveries", what, 1),
        }, client);
    }
    /** The message as the API writes it (`from`, `ts_ms`, `reply_to`). */
    toJSON() {
        const out = {
            id: this.id,
            from: this.from,
            session: this.session,
            seq: this.seq,
            ts_ms: this.tsMs,
            payload: this.payload,
            path: this.path,
            kind: this.kind,
            deliveries: this.deliveries,
        };
        if (this.replyTo !== null)
            out.reply_to = this.replyTo;
        return out;
    }
    /** `payload.text` when the payload is an object with a text. */
    get text() {
        const p = this.payload;
        return isObject(p) && typeof p["text"] === "string" ? p["text"] : null;
    }
    /** Whether the sender waits for a reply (`kind === "request"`). */
    get isRequest() {
        return this.kind === "request";
    }
    #actions() {
        if (this.#client === null)
            throw new Error("this message is not tied to a client");
        return this.#client;
    }
    /**
     * Answers this message (`POST /v1/reply`). A plain string is sent as
     * `{"text": ...}`.
     */
    reply(payload, options = {}) {
        const session = options.sameSession ? { session: this.session } : {};
        return this.#actions().reply(this.from, this.id, payload, session);
    }
    /** Acknowledges this message: the node forgets it. */
    ack() {
        return this.#actions().ack([this.id]);
    }
    /** Hands this message out again at once (to the next reader). */
    release() {
        return this.#actions().release([this.id]);
    }
}
/** Reads an {@link Event}. */
export function eventFromJson(v) {
    const what = "event";
    const d = object(v, what);
    const inner = d["event"];
    const event = (isObject(inner) ? inner : { event: inner });
    const kind = typeof event.event === "string" ? event.event : "";
    return { id: int(d, "id", what), tsMs: int(d, "ts_ms", what, 0), kind, event };
}
/** Reads an {@link EventBatch}. */
export function eventBatchFromJson(v) {
    const d = object(v, "events");
    const raw = d["events"];
    if (!Array.isArray(raw))
        throw new BadResponse("events: 'events' is missing");
    const events = raw.map(eventFromJson);
    const last = d["last_id"];
    const dropped = d["dropped"];
    return {
        events,
        lastId: typeof last === "number" ? last : (events.at(-1)?.id ?? 0),
        dropped: typeof dropped === "number" ? dropped : 0,
    };
}
function optInt(d, key) {
    const v = d[key];
    return typeof v === "number" && Number.isInteger(v) ? v : null;
}
/** Reads a {@link Peer}. */
export function peerFromJson(v) {
    const d = object(v, "peer");
    const s = d["sessions"];
    return {
        amid: str(d, "amid", "peer"),
        path: optStr(d, "path"),
        sessions: typeof s === "number" ? s : Array.isArray(s) ? s.length : 0,
        name: optStr(d, "name"),
        presence: optStr(d, "presence"),
        lastSeenMs: optInt(d, "last_seen_ms"),
        cardImported: d["card_imported"] === true,
    };
}
/** Reads a {@link Card}. */
export function cardFromJson(v) {
    const d = object(v, "card");
    return {
        amid: str(d, "amid", "card"),
        seq: int(d, "seq", "card", 0),
        expiresMs: int(d, "expires_ms", "card", 0),
        card: optStr(d, "card"),
        name: optStr(d, "name"),
    };
}
/** Reads a {@link PolicyCheck}. */
export function policyCheckFromJson(v) {
    const d = object(v, "policy check");
    const decision = (d["decision"] ?? null);
    let accepted = false;
    let reason = null;
    if (isObject(decision)) {
        accepted = "accept" in decision;
        const rej = decision["reject"];
        if (isObject(rej) && typeof rej["reason"] === "string")
            reason = rej["reason"];
    }
    else if (typeof decision === "string") {
        accepted = decision === "accept";
    }
    return { accepted, reason, policyHash: str(d, "policy_hash", "policy check"), decision };
}
/** The ids of the standard message schemas every node knows. */
export const STANDARD_SCHEMAS = [
    "agentmesh/text@1",
    "agentmesh/request@1",
    "agentmesh/response@1",
    "agentmesh/error@1",
    "agentmesh/task-update@1",
    "agentmesh/file-offer@1",
];
function accepted(v, what) {
    if (v === undefined || v === null)
        return {};
    const d = object(v, what);
    const out = {};
    for (const [capability, ids] of Object.entries(d)) {
        if (!Array.isArray(ids) || !ids.every((i) => typeof i === "string")) {
            throw new BadResponse(`${what}: the schemas of '${capability}' are not a list of ids`);
        }
        out[capability] = [...ids];
    }
    return out;
}
/**
 * The message schemas an agent's card (`Client.lookup`) says it takes, per
 * capability: `{}` when the card lists none.
 */
export function cardSchemas(card) {
    return accepted(object(card, "card")["schemas"], "card schemas");
}
/** Reads a {@link SchemaCatalog}. */
export function schemaCatalogFromJson(v) {
    const what = "schemas";
    const d = object(v, what);
    const list = d["schemas"];
    if (!Array.isArray(list))
        throw new BadResponse(`${what}: 'schemas' is missing or not a list`);
    const schemas = {};
    const ids = [];
    for (const item of list) {
        const entry = object(item, what);
        const id = str(entry, "id", what);
        const schema = entry["schema"];
        if (!isObject(schema))
            throw new BadResponse(`${what}: the schema of '${id}' is not an object`);
        schemas[id] = schema;
        ids.push(id);
    }
    return { ids, schemas, accepted: accepted(d["accepted"], what), raw: d };
}
//# sourceMappingURL=models.js.map