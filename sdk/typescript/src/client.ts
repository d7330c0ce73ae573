/**
 * {@link Client}: one method per route of a node's local API, over
 * loopback TCP (or the node's Unix socket), with the bearer token of its
 * `api.json`. Times are in milliseconds, as in the API.
 *
 * @module
 */

import http from "node:http";
import { resolve as resolvePath } from "node:path";

import type { ApiAnswer, ApiBody, ApiMethod, ApiPath, ApiPathParams, ApiQuery, MethodOf } from "./api.js";
import { AgentMeshError, BadResponse, NodeNotRunning, errorFromBody } from "./errors.js";
import {
  type ApiInfo,
  type Card,
  type Event,
  type EventBatch,
  type InboxCounts,
  type JsonObject,
  type Peer,
  type PolicyCheck,
  type Receipt,
  type SchemaCatalog,
  type Status,
  type StreamResult,
  Message,
  cardFromJson,
  cardSchemas,
  eventBatchFromJson,
  eventFromJson,
  isObject,
  loadApiInfo,
  object,
  peerFromJson,
  policyCheckFromJson,
  receiptFromJson,
  schemaCatalogFromJson,
} from "./models.js";
import { VERSION } from "./version.js";

/**
 * Milliseconds to wait for an answer that is not a long-poll (a send waits
 * for the recipient's acknowledgement, up to a minute on the node's side).
 */
export const DEFAULT_TIMEOUT_MS = 120_000;
/** Added to a long-poll's own wait for the HTTP timeout. */
const GRACE_MS = 30_000;

/** The presence states of an agent. */
export const PRESENCE_STATES = ["online", "away", "dnd", "offline"] as const;
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
export type ApiCallOptions<P extends ApiPath, M extends MethodOf<P>> = Omit<
  CallOptions,
  "query" | "body"
> & {
  /** Query parameters of the route. */
  query?: ApiQuery<P, M>;
  /** Path parameters of the route (`{amid}`). */
  params?: ApiPathParams<P, M>;
} & (undefined extends ApiBody<P, M> ? { body?: ApiBody<P, M> } : { body: ApiBody<P, M> });

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
export type Recipient = string | { readonly amid: string };

/** The AMID of a {@link Recipient}. */
export function amidOf(to: Recipient): string {
  if (typeof to === "string") return to;
  if (isObject(to) && typeof to["amid"] === "string") return to["amid"];
  throw new TypeError("expected an AMID string or an Agent");
}

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
export type StreamOptions = (
  | { data: Uint8Array; path?: undefined }
  | { path: string; data?: undefined }
) & {
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

function clamp(v: number, lo: number, hi: number): number {
  return Math.max(lo, Math.min(hi, Math.round(v)));
}

/** A plain string is sent as `{"text": ...}`, as the command line does. */
function payloadOf(payload: unknown): unknown {
  return typeof payload === "string" ? { text: payload } : payload;
}

function idsOf(ids: Iterable<string | Message>): string[] {
  return Array.from(ids, (m) => (typeof m === "string" ? m : m.id));
}

function field(data: unknown, key: string): unknown {
  const d = object(data, "the node's answer");
  if (!(key in d)) throw new BadResponse(`the node's answer has no '${key}'`);
  return d[key];
}

function intField(data: unknown, key: string): number {
  const v = field(data, key);
  if (typeof v !== "number" || !Number.isInteger(v)) throw new BadResponse(`'${key}' is not an integer`);
  return v;
}

function queryString(query: Query | undefined): string {
  if (!query) return "";
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** An SSE parser: lines in, events out. */
export class SseParser {
  #data: string[] = [];
  #id: string | null = null;
  #name: string | null = null;

  /** Feeds one line (without its end); returns the event it completes, if any. */
  feed(line: string): Event | null {
    if (line === "") return this.#dispatch();
    if (line.startsWith(":")) return null; // a comment: keep-alive
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this.#data.push(value);
    else if (name === "id") this.#id = value;
    else if (name === "event") this.#name = value;
    return null;
  }

  #dispatch(): Event | null {
    const data = this.#data.join("\n");
    const id = this.#id;
    const name = this.#name;
    this.#data = [];
    this.#id = null;
    this.#name = null;
    if (!data) return null;
    let v: unknown;
    try {
      v = JSON.parse(data);
    } catch (e) {
      throw new BadResponse(`an SSE event that is not JSON: ${data.slice(0, 100)}`, { cause: e });
    }
    if (!isObject(v)) throw new BadResponse("an SSE event that is not a JSON object");
    if ("id" in v && isObject(v["event"])) return eventFromJson(v);
    // An event without an id of its own: the stream's opening "dropped".
    const inner = (name && !("event" in v) ? { event: name, ...v } : v) as Event["event"];
    return {
      id: id && /^\d+$/.test(id) ? Number(id) : 0,
      tsMs: 0,
      kind: typeof inner.event === "string" ? inner.event : "",
      event: inner,
    };
  }
}

interface RawAnswer {
  status: number;
  contentType: string;
  body: Buffer;
}

/**
 * A client of one node's local API.
 *
 * ```ts
 * const c = await Client.fromDataDir("~/.agentmesh");
 * const receipt = await c.send(bobAmid, { text: "hello" });
 * ```
 */
export class Client {
  /** Where the API is and the token it wants (the node's `api.json`). */
  readonly info: ApiInfo;
  /** Milliseconds to wait for an answer that is not a long-poll. */
  timeoutMs: number;
  readonly #agent: http.Agent;
  readonly #useSocket: boolean;
  readonly #base: URL;
  readonly #headers: Record<string, string>;

  /**
   * A client of the API at `url` (`http://127.0.0.1:PORT`; `null` for the
   * Unix socket only) with `token`.
   */
  constructor(url: string | null, token: string, options: ClientOptions = {}) {
    this.info = {
      url: url ? url.replace(/\/+$/, "") : null,
      token,
      socket: options.socket ?? null,
      amid: options.amid ?? null,
      version: 1,
      a2a: null,
      dataDir: null,
    };
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#useSocket = Boolean(options.useSocket) || !url;
    if (this.#useSocket && !this.info.socket) throw new TypeError("no URL and no socket to reach the node by");
    this.#base = new URL(this.#useSocket ? "http://localhost" : (this.info.url as string));
    this.#agent = new http.Agent({ keepAlive: true });
    this.#headers = {
      Authorization: `Bearer ${token}`,
      "User-Agent": `agentmesh-typescript/${VERSION}`,
      Accept: "application/json",
    };
  }

  /** A client for the API that `info` (an `api.json`) describes. */
  static fromInfo(info: ApiInfo, options: Omit<ClientOptions, "amid" | "socket"> = {}): Client {
    const c = new Client(info.url, info.token, { ...options, amid: info.amid, socket: info.socket });
    (c as { info: ApiInfo }).info = info;
    return c;
  }

  /**
   * A client for the node running in `dataDir` (default `$AGENTMESH_HOME`
   * or `~/.agentmesh`), from its `api.json`.
   */
  static async fromDataDir(dataDir?: string, options: Omit<ClientOptions, "amid" | "socket"> = {}): Promise<Client> {
    return Client.fromInfo(await loadApiInfo(dataDir), options);
  }

  /** The API's base URL (`http://localhost` over the Unix socket). */
  get url(): string {
    return this.#useSocket ? `http://localhost (unix socket ${this.info.socket})` : (this.info.url as string);
  }

  /** The node's AMID, as `api.json` gives it (`null` if not known). */
  get amid(): string | null {
    return this.info.amid;
  }

  /** Closes the idle connections (the node keeps running). */
  close(): void {
    this.#agent.destroy();
  }

  // The transport.

  #once(method: string, path: string, o: CallOptions, body: Buffer | null, timeoutMs: number): Promise<RawAnswer> {
    const headers: Record<string, string> = { ...this.#headers };
    if (body !== null) {
      headers["Content-Type"] = "application/json";
      headers["Content-Length"] = String(body.length);
    }
    Object.assign(headers, o.headers ?? {});
    const target = new URL(path + queryString(o.query), this.#base);
    return new Promise<RawAnswer>((resolve, reject) => {
      const req = http.request(
        {
          method,
          agent: this.#agent,
          headers,
          path: target.pathname + target.search,
          ...(this.#useSocket
            ? { socketPath: this.info.socket as string }
            : { hostname: target.hostname, port: target.port }),
          ...(o.signal ? { signal: o.signal } : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            clearTimeout(timer);
            resolve({
              status: res.statusCode ?? 0,
              contentType: String(res.headers["content-type"] ?? ""),
              body: Buffer.concat(chunks),
            });
          });
          res.on("error", (e) => {
            clearTimeout(timer);
            reject(e);
          });
        },
      );
      const timer = setTimeout(() => {
        req.destroy(Object.assign(new Error(`no answer in ${timeoutMs} ms`), { code: "ETIMEDOUT" }));
      }, timeoutMs);
      req.on("error", (e) => {
        clearTimeout(timer);
        reject(Object.assign(e, { reusedSocket: req.reusedSocket }));
      });
      req.end(body ?? undefined);
    });
  }

  async #raw(method: string, path: string, o: CallOptions): Promise<RawAnswer> {
    let body: Buffer | null = null;
    if (o.rawBody !== undefined) body = Buffer.from(o.rawBody);
    else if (o.body !== undefined) body = Buffer.from(JSON.stringify(o.body), "utf8");
    const timeoutMs = o.timeoutMs ?? this.timeoutMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#once(method, path, o, body, timeoutMs);
      } catch (e) {
        if (o.signal?.aborted) throw o.signal.reason ?? e;
        const err = e as NodeJS.ErrnoException & { reusedSocket?: boolean };
        // A kept-alive connection the node closed meanwhile: the request
        // never reached it, try once more on a new one.
        if (attempt === 0 && err.reusedSocket && err.code === "ECONNRESET") continue;
        throw new NodeNotRunning(`the node at ${this.url} does not answer (${err.code ?? err.name}: ${err.message})`, {
          cause: e,
        });
      }
    }
  }

  static #decode(a: RawAnswer): unknown {
    if (a.status >= 400) throw errorFromBody(a.status, a.body);
    if (a.body.length === 0) return {};
    const text = a.body.toString("utf8");
    if (!a.contentType.includes("json")) return text;
    try {
      return JSON.parse(text) as unknown;
    } catch (e) {
      throw new BadResponse(`the node answered HTTP ${a.status} that is not JSON`, { cause: e });
    }
  }

  /**
   * Any route, raw: resolves to the decoded JSON answer (or the text of a
   * non-JSON one), rejects with the {@link AgentMeshError} subclass of an
   * error answer, or {@link NodeNotRunning} when the node does not answer.
   */
  async call(method: string, path: string, options: CallOptions = {}): Promise<unknown> {
    return Client.#decode(await this.#raw(method.toUpperCase(), path, options));
  }

  /**
   * Any route, typed by the OpenAPI document: the body, query and answer
   * are those the document gives the route.
   *
   * ```ts
   * const { receipt } = await c.api("post", "/v1/send", { body: { to, payload: { text: "hi" } } });
   * ```
   */
  async api<P extends ApiPath, M extends MethodOf<P> & ApiMethod>(
    method: M,
    path: P,
    ...[options]: undefined extends ApiBody<P, M> ? [ApiCallOptions<P, M>?] : [ApiCallOptions<P, M>]
  ): Promise<ApiAnswer<P, M>> {
    const o = (options ?? {}) as CallOptions & { params?: Record<string, string> };
    let p: string = path;
    for (const [k, v] of Object.entries(o.params ?? {})) p = p.replace(`{${k}}`, encodeURIComponent(String(v)));
    return (await this.call(method, p, o)) as ApiAnswer<P, M>;
  }

  // Messages out.

  /**
   * Sends `payload` (any JSON value; a string is sent as `{"text": ...}`) to
   * `to`. Resolves to the {@link Receipt} once the recipient acknowledged it
   * (or a relay mailbox took it); with `wait: false`, to the message id at
   * once (the outcome comes as an event).
   */
  send(to: string, payload: unknown, options?: SendOptions & { wait?: true }): Promise<Receipt>;
  send(to: string, payload: unknown, options: SendOptions & { wait: false }): Promise<string>;
  send(to: string, payload: unknown, options?: SendOptions): Promise<Receipt | string>;
  async send(to: string, payload: unknown, options: SendOptions = {}): Promise<Receipt | string> {
    const body: ApiBody<"/v1/send", "post"> = { to, payload: payloadOf(payload) };
    if (options.capability !== undefined) body.capability = options.capability;
    if (options.schema !== undefined) body.schema = options.schema;
    if (options.wait === false) body.wait = false;
    const data = await this.api("post", "/v1/send", { body });
    if (options.wait === false) {
      const id = field(data, "id");
      if (typeof id !== "string") throw new BadResponse("the send answer's id is not a string");
      return id;
    }
    return receiptFromJson(field(data, "receipt"));
  }

  /**
   * Sends a request and resolves to the reply; rejects with `ReplyTimeout`
   * when none comes within `timeoutMs` (default 30 000).
   */
  async request(to: string, payload: unknown, options: RequestOptions = {}): Promise<Message> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    const body: ApiBody<"/v1/request", "post"> = {
      to,
      payload: payloadOf(payload),
      timeout_ms: Math.max(1, Math.round(timeoutMs)),
    };
    if (options.capability !== undefined) body.capability = options.capability;
    if (options.schema !== undefined) body.schema = options.schema;
    const data = await this.api("post", "/v1/request", { body, timeoutMs: timeoutMs + GRACE_MS });
    return Message.fromJson(field(data, "reply"), this);
  }

  /**
   * Answers message `id` from `to`. With `session`, in that session only
   * (`NoSession` when it ended).
   */
  async reply(to: string, id: string, payload: unknown, options: { session?: string } = {}): Promise<Receipt> {
    const body: ApiBody<"/v1/reply", "post"> = { to, id, payload: payloadOf(payload) };
    if (options.session !== undefined) body.session = options.session;
    return receiptFromJson(field(await this.api("post", "/v1/reply", { body }), "receipt"));
  }

  /**
   * Ends the conversation with `amid` (an end message after everything sent
   * before; both sides then forget the session); resolves to the id of the
   * session that ended.
   */
  async end(amid: string): Promise<string | null> {
    const v = object(await this.api("post", "/v1/end", { body: { amid } }), "end")["session"];
    return typeof v === "string" ? v : null;
  }

  /** Sends bytes (or the file at `path`, read by the node) as a stream of end-to-end encrypted chunks. */
  async stream(to: string, options: StreamOptions): Promise<StreamResult> {
    const body: ApiBody<"/v1/stream", "post"> = { to };
    if (options.data !== undefined) body.data_base64 = Buffer.from(options.data).toString("base64");
    else body.path = resolvePath(options.path);
    if (options.chunkSize !== undefined) body.chunk_size = options.chunkSize;
    if (options.capability !== undefined) body.capability = options.capability;
    const data = await this.api("post", "/v1/stream", { body });
    return { chunks: intField(data, "chunks"), bytes: intField(data, "bytes") };
  }

  // Messages in.

  /**
   * Messages waiting in the inbox, in arrival order, each leased to this
   * reader for `leaseMs`. Waits up to `waitMs` for the first one.
   * Acknowledge each after handling it ({@link ack}).
   */
  async messages(options: MessagesOptions = {}): Promise<Message[]> {
    const waitMs = clamp(options.waitMs ?? 0, 0, 60_000);
    const data = await this.api("get", "/v1/messages", {
      query: {
        wait_ms: waitMs,
        max: clamp(options.max ?? 32, 1, 256),
        lease_ms: clamp(options.leaseMs ?? 30_000, 1000, 600_000),
      },
      timeoutMs: waitMs + GRACE_MS,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const raw = field(data, "messages");
    if (!Array.isArray(raw)) throw new BadResponse("'messages' is not a list");
    return raw.map((m) => Message.fromJson(m, this));
  }

  /** Acknowledges messages: the node removes them from its inbox. */
  async ack(ids: Iterable<string | Message>): Promise<number> {
    return intField(await this.api("post", "/v1/messages/ack", { body: { ids: idsOf(ids) } }), "acked");
  }

  /** Ends the lease of messages: they are handed out again at once. */
  async release(ids: Iterable<string | Message>): Promise<number> {
    return intField(await this.api("post", "/v1/messages/release", { body: { ids: idsOf(ids) } }), "released");
  }

  /** Node events after id `since` (all kept ones when not given); waits up to `waitMs` for the first. */
  async events(options: EventsOptions = {}): Promise<EventBatch> {
    const waitMs = clamp(options.waitMs ?? 0, 0, 60_000);
    const query: ApiQuery<"/v1/events", "get"> = { wait_ms: waitMs };
    if (options.since !== undefined) query.since = options.since;
    if (options.limit !== undefined) query.limit = clamp(options.limit, 1, 1000);
    const data = await this.api("get", "/v1/events", {
      query,
      timeoutMs: waitMs + GRACE_MS,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return eventBatchFromJson(data);
  }

  /**
   * Node events after id `since` as they happen, over Server-Sent Events
   * (`GET /v1/events/stream`); runs until the caller stops iterating (or
   * `signal` aborts). When events after `since` are no longer kept, the
   * stream opens with an event `{"event": "dropped", "count": n}` (its `id`
   * is 0).
   */
  async *eventStream(options: { since?: number; signal?: AbortSignal } = {}): AsyncGenerator<Event, void, undefined> {
    const target = new URL("/v1/events/stream" + queryString({ since: options.since }), this.#base);
    const controller = new AbortController();
    const onAbort = (): void => controller.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let res: http.IncomingMessage;
    try {
      res = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const req = http.request(
          {
            method: "GET",
            agent: false,
            headers: { ...this.#headers, Accept: "text/event-stream" },
            path: target.pathname + target.search,
            ...(this.#useSocket
              ? { socketPath: this.info.socket as string }
              : { hostname: target.hostname, port: target.port }),
            signal: controller.signal,
          },
          resolve,
        );
        req.setTimeout(this.timeoutMs, () => req.destroy(new Error(`no answer in ${this.timeoutMs} ms`)));
        req.on("error", reject);
        req.end();
      });
    } catch (e) {
      options.signal?.removeEventListener("abort", onAbort);
      if (options.signal?.aborted) return;
      throw new NodeNotRunning(`the node at ${this.url} does not answer (${String(e)})`, { cause: e });
    }
    try {
      res.socket.setTimeout(0);
      if ((res.statusCode ?? 0) >= 400) {
        const chunks: Buffer[] = [];
        for await (const c of res) chunks.push(c as Buffer);
        throw errorFromBody(res.statusCode ?? 0, Buffer.concat(chunks));
      }
      const parser = new SseParser();
      let buf = "";
      res.setEncoding("utf8");
      for await (const chunk of res) {
        buf += chunk as string;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          const e = parser.feed(line);
          if (e !== null) yield e;
        }
      }
    } catch (e) {
      if (options.signal?.aborted || controller.signal.aborted) return;
      if (e instanceof AgentMeshError) throw e;
      throw new NodeNotRunning(`the event stream of ${this.url} broke (${String(e)})`, { cause: e });
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      controller.abort();
    }
  }

  // The node.

  /** The node's status (AMID, sessions, peers, network). */
  async status(): Promise<Status> {
    return object(field(await this.api("get", "/v1/status"), "status"), "status") as Status;
  }

  /** Messages in the API's inbox: waiting, and leased to readers. */
  async inboxCounts(): Promise<InboxCounts> {
    const inbox = object(field(await this.api("get", "/v1/status"), "inbox"), "inbox");
    const n = (k: string): number => (typeof inbox[k] === "number" ? (inbox[k] as number) : 0);
    return { ready: n("ready"), leased: n("leased") };
  }

  /**
   * Agents the node knows (sessions, imported cards, petnames, connections):
   * petname, presence, last seen, path, sessions (the seed's `list_peers`).
   */
  async peers(): Promise<Peer[]> {
    return (await this.api("get", "/v1/peers")).peers.map(peerFromJson);
  }

  /**
   * This agent's signed card; `card.card` is the string to hand out of band
   * (the seed's `public_bundle`).
   */
  async exportCard(): Promise<Card> {
    return cardFromJson(await this.api("get", "/v1/card"));
  }

  /**
   * Imports another agent's card string (the seed's `connect_with_bundle`):
   * verified (a forged one rejects with `InvalidCard`, an expired one with
   * `CardExpired`), kept by the node and used to reach that agent with no
   * DHT. `name` also gives it a petname.
   */
  async importCard(card: string | Card, options: { name?: string } = {}): Promise<Card> {
    const text = typeof card === "string" ? card.trim() : card.card;
    if (!text) throw new TypeError("a card string is needed");
    const body: { card: string; name?: string } = { card: text };
    if (options.name !== undefined) body.name = options.name;
    return cardFromJson(await this.api("post", "/v1/cards", { body }));
  }

  /** Names `amid` locally (never published); the name is then taken wherever an AMID is. */
  async setName(name: string, amid: string): Promise<void> {
    await this.api("post", "/v1/names", { body: { name, amid } });
  }

  /** Forgets a petname; resolves to the AMID it named. */
  async removeName(name: string): Promise<string> {
    const data = await this.api("delete", "/v1/names/{name}", { params: { name } });
    const amid = object(data, "name")["amid"];
    if (typeof amid !== "string") throw new BadResponse("name: 'amid' is missing");
    return amid;
  }

  /** Every petname and the AMID it names. */
  async names(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const n of (await this.api("get", "/v1/names")).names) out[n.name] = n.amid;
    return out;
  }

  /** The node's sessions. */
  async sessions(): Promise<JsonObject[]> {
    return (await this.api("get", "/v1/sessions")).sessions as JsonObject[];
  }

  /** An agent's signed card from the DHT (rejects with `NotFound` if none). */
  async lookup(amid: string): Promise<JsonObject> {
    const data = await this.api("get", "/v1/lookup/{amid}", { params: { amid } });
    return object(field(data, "card"), "card") as JsonObject;
  }

  /**
   * The message schemas this node knows (the standard ones and those given
   * with `--schema-file`) and those it takes per capability
   * (`--accept-schema`, listed in its card): `GET /v1/schemas`.
   */
  async schemas(): Promise<SchemaCatalog> {
    return schemaCatalogFromJson(await this.api("get", "/v1/schemas"));
  }

  /**
   * The message schemas another agent takes, per capability, from its card
   * ({@link lookup}): `{}` when it lists none (it takes any payload).
   */
  async schemasOf(amid: string): Promise<Record<string, string[]>> {
    return cardSchemas(await this.lookup(amid));
  }

  /** Ends every session with `amid`; resolves to how many. */
  async closeSessions(amid: string): Promise<number> {
    return intField(await this.api("post", "/v1/close", { body: { amid } }), "closed");
  }

  /** Closes every connection to `amid` (sessions stay). */
  async disconnect(amid: string): Promise<void> {
    await this.api("post", "/v1/disconnect", { body: { amid } });
  }

  /** Blocks `amid`: its KNOCKs are refused. */
  async block(amid: string): Promise<void> {
    await this.api("post", "/v1/block", { body: { amid } });
  }

  /** The kill switch: for `amid`, or for everyone when not given. */
  async kill(amid?: string): Promise<void> {
    await this.api("post", "/v1/kill", { body: amid === undefined ? {} : { amid } });
  }

  /** Turns the kill switch for everyone off. */
  async killClear(): Promise<void> {
    await this.api("post", "/v1/kill/clear");
  }

  /** Sets this agent's presence: `online`, `away`, `dnd` or `offline`. */
  async presence(state: Presence): Promise<void> {
    if (!(PRESENCE_STATES as readonly string[]).includes(state)) {
      throw new TypeError(`presence: one of ${PRESENCE_STATES.join(", ")}`);
    }
    await this.api("put", "/v1/presence", { body: { state } });
  }

  /** The KNOCK policy in force and its hash. */
  async policy(): Promise<{ policy: JsonObject; policyHash: string }> {
    const d = await this.api("get", "/v1/policy");
    return { policy: d.policy as JsonObject, policyHash: d.policy_hash };
  }

  /** Puts a policy (TOML text) in force now; resolves to its hash. The policy file is not changed. */
  async setPolicy(toml: string): Promise<string> {
    return (await this.api("put", "/v1/policy", { body: { policy: toml } })).policy_hash;
  }

  /** Makes the node read its policy file again; resolves to the new hash. */
  async reloadPolicy(): Promise<string> {
    return (await this.api("post", "/v1/policy/reload")).policy_hash;
  }

  /**
   * What the policy in force (or `options.policy`, TOML text) would decide
   * on a KNOCK with this intent. Nothing is sent or recorded.
   */
  async checkPolicy(capability: string, options: CheckPolicyOptions = {}): Promise<PolicyCheck> {
    const body: ApiBody<"/v1/policy/check", "post"> = { capability };
    if (options.from !== undefined) body.from = options.from;
    if (options.action !== undefined) body.action = options.action;
    if (options.tier !== undefined) body.tier = options.tier;
    if (options.reputation !== undefined) body.reputation = options.reputation;
    if (options.policy !== undefined) body.policy = options.policy;
    return policyCheckFromJson(await this.api("post", "/v1/policy/check", { body }));
  }

  /** The audit log: `{audit: [...], verified?}`. */
  async audit(options: AuditOptions = {}): Promise<{ audit: JsonObject[]; verified?: number }> {
    const query: ApiQuery<"/v1/audit", "get"> = {};
    if (options.peer !== undefined) query.peer = options.peer;
    if (options.kind !== undefined) query.kind = options.kind;
    if (options.limit !== undefined) query.limit = options.limit;
    if (options.verify) query.verify = true;
    const d = await this.api("get", "/v1/audit", { query });
    return d.verified === undefined
      ? { audit: d.audit as JsonObject[] }
      : { audit: d.audit as JsonObject[], verified: d.verified };
  }

  /** The session receipts the node holds. */
  async receipts(): Promise<JsonObject[]> {
    return (await this.api("get", "/v1/receipts")).receipts as JsonObject[];
  }

  /** The credentials the node shows in KNOCKs (fetched anew from the registry with `renew`). */
  async credentials(options: { renew?: boolean } = {}): Promise<JsonObject> {
    const d = await this.api("post", "/v1/credentials", { body: options.renew ? { renew: true } : {} });
    return d.credentials as JsonObject;
  }

  /**
   * Registers this agent with the node's registry (`--registry`), under
   * `name` and with `capabilities` (default: those of its card).
   */
  async register(name: string, capabilities?: string[]): Promise<JsonObject> {
    const body: ApiBody<"/v1/registry/register", "post"> = { name };
    if (capabilities !== undefined) body.capabilities = capabilities;
    return (await this.api("post", "/v1/registry/register", { body })).registration as JsonObject;
  }

  /**
   * Agents offering `capability` (or a category of capabilities), from the
   * node's registry (`--registry`): each entry has the agent's `amid`,
   * `display_name`, `capabilities`, `tier`, `reputation`, `presence`, ….
   */
  async search(capability: string, options: SearchOptions = {}): Promise<SearchResults> {
    const query: ApiQuery<"/v1/registry/search", "get"> = { capability };
    if (options.tierMin !== undefined) query.tier_min = options.tierMin;
    if (options.reputationMin !== undefined) query.reputation_min = options.reputationMin;
    if (options.limit !== undefined) query.limit = options.limit;
    const answer = object((await this.api("get", "/v1/registry/search", { query })).results, "search");
    const results = Array.isArray(answer["results"]) ? (answer["results"].filter(isObject) as JsonObject[]) : [];
    const count = typeof answer["count"] === "number" ? answer["count"] : results.length;
    return { count, results, raw: answer as JsonObject };
  }

  /** A one-time link that logs a browser into the node's dashboard. */
  async dashboardLink(): Promise<{ url: string; expiresInS: number | null }> {
    const d = await this.api("post", "/v1/dashboard/link");
    return { url: d.url, expiresInS: d.expires_in_s ?? null };
  }

  /** The last hour, minute by minute: messages by path, KNOCK decisions, delivery latency. */
  async timeseries(): Promise<Timeseries> {
    return await this.api("get", "/v1/stats/timeseries");
  }

  /** This agent's tier and reputation at its registry, from the node's cache (never waits on the registry). */
  async registryStanding(): Promise<RegistryStanding> {
    return await this.api("get", "/v1/registry/standing");
  }

  /**
   * The doctor's checks, each with a fix when it is not ok. With
   * `options.punch`, the answer waits for the hole-punch probe (up to about
   * 10 s once the peer is reached).
   */
  async diagnostics(options: DiagnosticsOptions = {}): Promise<Diagnostics> {
    const query: ApiQuery<"/v1/diagnostics", "get"> = {};
    if (options.punch !== undefined) query.punch = options.punch;
    return await this.api("get", "/v1/diagnostics", { query });
  }

  /** The OpenAPI document of the local API. */
  async openapi(): Promise<JsonObject> {
    return object(await this.api("get", "/v1/openapi.json"), "openapi") as JsonObject;
  }
}
