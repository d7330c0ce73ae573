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
import type { components } from "./generated/openapi.js";

/** Any JSON value. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A JSON object. */
export type JsonObject = { [key: string]: JsonValue };

/** The wire shapes of the OpenAPI document's schemas. */
export type Schemas = components["schemas"];

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
] as const satisfies readonly Schemas["Receipt"]["path"][];

/** How a message travelled: one of {@link PATH_KINDS}. */
export type PathKind = Schemas["Receipt"]["path"];

/** What a message is: `message`, `request` or `reply`. */
export type MessageKind = Schemas["Message"]["kind"];

/**
 * The data directory the `agentmesh` command uses: `$AGENTMESH_HOME`,
 * else `~/.agentmesh`.
 */
export function defaultDataDir(): string {
  return process.env["AGENTMESH_HOME"] || join(homedir(), ".agentmesh");
}

/** Expands a leading `~/`. */
export function expandHome(p: string): string {
  return p === "~" ? homedir() : p.startsWith("~/") ? join(homedir(), p.slice(2)) : p;
}

/** Whether `v` is a JSON object (not an array, not `null`). */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(d: Record<string, unknown>, key: string, what: string): string {
  const v = d[key];
  if (typeof v !== "string") throw new BadResponse(`${what}: '${key}' is missing or not a string`);
  return v;
}

function int(d: Record<string, unknown>, key: string, what: string, dflt?: number): number {
  const v = d[key] ?? dflt;
  if (typeof v !== "number" || !Number.isInteger(v)) {
    throw new BadResponse(`${what}: '${key}' is missing or not an integer`);
  }
  return v;
}

function optStr(d: Record<string, unknown>, key: string): string | null {
  const v = d[key];
  return typeof v === "string" ? v : null;
}

/** `v` checked to be a JSON object. */
export function object(v: unknown, what: string): Record<string, unknown> {
  if (!isObject(v)) throw new BadResponse(`${what}: expected a JSON object`);
  return v;
}

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
export function apiInfoFromJson(data: unknown, dataDir: string | null = null): ApiInfo {
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
export async function loadApiInfo(dataDir?: string): Promise<ApiInfo> {
  const d = dataDir !== undefined ? expandHome(dataDir) : defaultDataDir();
  const path = join(d, API_FILE);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") {
      throw new NodeNotRunning(`no ${API_FILE} in ${d}: no node is running with this data directory`);
    }
    throw new NodeNotRunning(`cannot read ${path}: ${String(e)}`, { cause: e });
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    // A file caught while being written reads as truncated JSON.
    throw new BadResponse(`${path} is not JSON: ${String(e)}`, { cause: e });
  }
  return apiInfoFromJson(data, d);
}

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
export function receiptFromJson(v: unknown): Receipt {
  const what = "receipt";
  const d = object(v, what);
  return {
    id: str(d, "id", what),
    to: str(d, "to", what),
    path: str(d, "path", what) as PathKind,
    knocked: d["knocked"] === true,
    session: str(d, "session", what),
  };
}

/** What a {@link Message} needs to answer, acknowledge and release itself. */
export interface MessageActions {
  /** See {@link Client.reply}. */
  reply(to: string, id: string, payload: unknown, options?: { session?: string }): Promise<Receipt>;
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
export class Message {
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
  readonly #client: MessageActions | null;

  constructor(
    fields: {
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
    },
    client: MessageActions | null = null,
  ) {
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
  static fromJson(v: unknown, client: MessageActions | null = null): Message {
    const what = "message";
    const d = object(v, what);
    const kind = optStr(d, "kind") ?? "message";
    return new Message(
      {
        id: str(d, "id", what),
        from: str(d, "from", what),
        session: str(d, "session", what),
        seq: int(d, "seq", what, 0),
        tsMs: int(d, "ts_ms", what, 0),
        payload: (d["payload"] ?? null) as JsonValue,
        path: optStr(d, "path") ?? "other",
        kind: kind as MessageKind,
        replyTo: optStr(d, "reply_to"),
        deliveries: int(d, "deliveries", what, 1),
      },
      client,
    );
  }

  /** The message as the API writes it (`from`, `ts_ms`, `reply_to`). */
  toJSON(): Schemas["Message"] {
    const out: Schemas["Message"] = {
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
    if (this.replyTo !== null) out.reply_to = this.replyTo;
    return out;
  }

  /** `payload.text` when the payload is an object with a text. */
  get text(): string | null {
    const p = this.payload;
    return isObject(p) && typeof p["text"] === "string" ? p["text"] : null;
  }

  /** Whether the sender waits for a reply (`kind === "request"`). */
  get isRequest(): boolean {
    return this.kind === "request";
  }

  #actions(): MessageActions {
    if (this.#client === null) throw new Error("this message is not tied to a client");
    return this.#client;
  }

  /**
   * Answers this message (`POST /v1/reply`). A plain string is sent as
   * `{"text": ...}`.
   */
  reply(payload: unknown, options: ReplyOptions = {}): Promise<Receipt> {
    const session = options.sameSession ? { session: this.session } : {};
    return this.#actions().reply(this.from, this.id, payload, session);
  }

  /** Acknowledges this message: the node forgets it. */
  ack(): Promise<number> {
    return this.#actions().ack([this.id]);
  }

  /** Hands this message out again at once (to the next reader). */
  release(): Promise<number> {
    return this.#actions().release([this.id]);
  }
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
  readonly event: { readonly event: string } & Readonly<Record<string, JsonValue>>;
}

/** Reads an {@link Event}. */
export function eventFromJson(v: unknown): Event {
  const what = "event";
  const d = object(v, what);
  const inner = d["event"];
  const event = (isObject(inner) ? inner : { event: inner }) as Event["event"];
  const kind = typeof event.event === "string" ? event.event : "";
  return { id: int(d, "id", what), tsMs: int(d, "ts_ms", what, 0), kind, event };
}

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
export function eventBatchFromJson(v: unknown): EventBatch {
  const d = object(v, "events");
  const raw = d["events"];
  if (!Array.isArray(raw)) throw new BadResponse("events: 'events' is missing");
  const events = raw.map(eventFromJson);
  const last = d["last_id"];
  const dropped = d["dropped"];
  return {
    events,
    lastId: typeof last === "number" ? last : (events.at(-1)?.id ?? 0),
    dropped: typeof dropped === "number" ? dropped : 0,
  };
}

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

function optInt(d: Record<string, unknown>, key: string): number | null {
  const v = d[key];
  return typeof v === "number" && Number.isInteger(v) ? v : null;
}

/** Reads a {@link Peer}. */
export function peerFromJson(v: unknown): Peer {
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
export function cardFromJson(v: unknown): Card {
  const d = object(v, "card");
  return {
    amid: str(d, "amid", "card"),
    seq: int(d, "seq", "card", 0),
    expiresMs: int(d, "expires_ms", "card", 0),
    card: optStr(d, "card"),
    name: optStr(d, "name"),
  };
}

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
export function policyCheckFromJson(v: unknown): PolicyCheck {
  const d = object(v, "policy check");
  const decision = (d["decision"] ?? null) as JsonValue;
  let accepted = false;
  let reason: string | null = null;
  if (isObject(decision)) {
    accepted = "accept" in decision;
    const rej = decision["reject"];
    if (isObject(rej) && typeof rej["reason"] === "string") reason = rej["reason"];
  } else if (typeof decision === "string") {
    accepted = decision === "accept";
  }
  return { accepted, reason, policyHash: str(d, "policy_hash", "policy check"), decision };
}

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
export const STANDARD_SCHEMAS = [
  "agentmesh/text@1",
  "agentmesh/request@1",
  "agentmesh/response@1",
  "agentmesh/error@1",
  "agentmesh/task-update@1",
  "agentmesh/file-offer@1",
] as const;

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

function accepted(v: unknown, what: string): Record<string, string[]> {
  if (v === undefined || v === null) return {};
  const d = object(v, what);
  const out: Record<string, string[]> = {};
  for (const [capability, ids] of Object.entries(d)) {
    if (!Array.isArray(ids) || !ids.every((i) => typeof i === "string")) {
      throw new BadResponse(`${what}: the schemas of '${capability}' are not a list of ids`);
    }
    out[capability] = [...(ids as string[])];
  }
  return out;
}

/**
 * The message schemas an agent's card (`Client.lookup`) says it takes, per
 * capability: `{}` when the card lists none.
 */
export function cardSchemas(card: unknown): Record<string, string[]> {
  return accepted(object(card, "card")["schemas"], "card schemas");
}

/** Reads a {@link SchemaCatalog}. */
export function schemaCatalogFromJson(v: unknown): SchemaCatalog {
  const what = "schemas";
  const d = object(v, what);
  const list = d["schemas"];
  if (!Array.isArray(list)) throw new BadResponse(`${what}: 'schemas' is missing or not a list`);
  const schemas: Record<string, JsonObject> = {};
  const ids: string[] = [];
  for (const item of list) {
    const entry = object(item, what);
    const id = str(entry, "id", what);
    const schema = entry["schema"];
    if (!isObject(schema)) throw new BadResponse(`${what}: the schema of '${id}' is not an object`);
    schemas[id] = schema as JsonObject;
    ids.push(id);
  }
  return { ids, schemas, accepted: accepted(d["accepted"], what), raw: d as JsonObject };
}
