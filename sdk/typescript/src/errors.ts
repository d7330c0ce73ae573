/**
 * Errors of the local API, one class per error code.
 *
 * Every error the node answers is JSON with a stable code:
 *
 * ```json
 * {"error": {"code": "rejected", "message": "...", "reason": "blocked"}}
 * ```
 *
 * {@link errorFromBody} turns it into an instance of the class of its code
 * ({@link Rejected} here), a subclass of {@link AgentMeshError}.
 *
 * @module
 */

import type { components } from "./generated/openapi.js";

/** The body of an error answer, as the OpenAPI document describes it. */
export type ErrorBody = components["schemas"]["Error"]["error"];

/** Every error code the local API answers with (from its OpenAPI document). */
export type ErrorCode = ErrorBody["code"];

/** Options of an error's constructor. */
export interface AgentMeshErrorOptions {
  /** The error code (default: the class's own). */
  code?: string;
  /** The HTTP status (default: the class's own). */
  status?: number | null;
  /** The whole `error` object as the node sent it. */
  body?: Record<string, unknown>;
  /** The error that caused this one. */
  cause?: unknown;
}

/**
 * Base of every error of this package.
 *
 * `code` is the API's stable error code (`"rejected"`, `"not_found"`, …),
 * `message` its human-readable text and `status` the HTTP status (`null`
 * when the node did not answer at all).
 */
export class AgentMeshError extends Error {
  /** The code this class stands for (the base class stands for any). */
  static readonly CODE: string = "";
  /** The HTTP status the API answers this code with. */
  static readonly STATUS: number | null = null;

  /** The error code. */
  readonly code: string;
  /** The HTTP status, `null` when there was no answer. */
  readonly status: number | null;
  /** The whole `error` object as the node sent it (empty if none). */
  readonly body: Readonly<Record<string, unknown>>;

  constructor(message: string, options: AgentMeshErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const cls = new.target as typeof AgentMeshError;
    this.name = new.target.name;
    this.code = options.code ?? (cls.CODE || "unknown");
    this.status = options.status !== undefined ? options.status : cls.STATUS;
    this.body = { ...(options.body ?? {}) };
  }

  override toString(): string {
    return `${this.name} (${this.code}): ${this.message}`;
  }
}

/** No node to talk to: `api.json` is missing, or the node does not answer. */
export class NodeNotRunning extends AgentMeshError {
  static override readonly CODE = "node_not_running";
}

/** An AgentMesh binary (`agentmesh` or `agentmesh-sim`) cannot be found. */
export class BinaryNotFound extends AgentMeshError {
  static override readonly CODE = "binary_not_found";
}

/** A node process this package started exited, or did not get ready in time. */
export class NodeStartFailed extends AgentMeshError {
  static override readonly CODE = "start_failed";
}

/** The node answered something this SDK cannot read. */
export class BadResponse extends AgentMeshError {
  static override readonly CODE = "bad_response";
}

/** 401: missing or wrong token. */
export class Unauthorized extends AgentMeshError {
  static override readonly CODE = "unauthorized";
  static override readonly STATUS = 401;
}

/** 403: the request carried an `Origin` or `Referer` header (a browser page). */
export class ForbiddenOrigin extends AgentMeshError {
  static override readonly CODE = "forbidden_origin";
  static override readonly STATUS = 403;
}

/** 403: the `Host` header is not loopback (DNS rebinding). */
export class BadHost extends AgentMeshError {
  static override readonly CODE = "bad_host";
  static override readonly STATUS = 403;
}

/** 400: malformed JSON, missing or wrong fields. */
export class BadRequest extends AgentMeshError {
  static override readonly CODE = "bad_request";
  static override readonly STATUS = 400;
}

/** 400: an AMID that does not parse. */
export class InvalidAmid extends AgentMeshError {
  static override readonly CODE = "invalid_amid";
  static override readonly STATUS = 400;
}

/** 400: a message or session id that is not 32 hex digits. */
export class InvalidId extends AgentMeshError {
  static override readonly CODE = "invalid_id";
  static override readonly STATUS = 400;
}

/** 413: the request body is over 1 MiB. */
export class PayloadTooLarge extends AgentMeshError {
  static override readonly CODE = "payload_too_large";
  static override readonly STATUS = 413;
}

/** 404: no such route, no card for the AMID, no such message. */
export class NotFound extends AgentMeshError {
  static override readonly CODE = "not_found";
  static override readonly STATUS = 404;
}

/** 405: wrong method for the route. */
export class MethodNotAllowed extends AgentMeshError {
  static override readonly CODE = "method_not_allowed";
  static override readonly STATUS = 405;
}

/**
 * 403: the recipient refused; `reason` is the KNOCK reject reason
 * (`"blocked"`, `"intent_denied"`, `"not_allowed"`, …; for message schemas
 * `"unsupported_schema"`: the KNOCK named no schema, or one the recipient
 * does not take for the capability, and `"schema_invalid"`: the recipient's
 * schema refused the payload).
 */
export class Rejected extends AgentMeshError {
  static override readonly CODE = "rejected";
  static override readonly STATUS = 403;
  /** Why the recipient refused, when it said. */
  readonly reason: string | null;

  constructor(message: string, options: AgentMeshErrorOptions = {}) {
    super(message, options);
    const r = this.body["reason"];
    this.reason = typeof r === "string" ? r : null;
  }
}

/**
 * 400: the payload is too large for one message (64 KiB), not encodable, or
 * does not conform to the message schema named (when this node knows it:
 * checked before anything is sent).
 */
export class InvalidPayload extends AgentMeshError {
  static override readonly CODE = "invalid_payload";
  static override readonly STATUS = 400;
}

/** 400: the AMID holds no usable key. */
export class InvalidRecipient extends AgentMeshError {
  static override readonly CODE = "invalid_recipient";
  static override readonly STATUS = 400;
}

/** 400: a card that does not verify: malformed, forged, or not a card. */
export class InvalidCard extends AgentMeshError {
  static override readonly CODE = "invalid_card";
  static override readonly STATUS = 400;
}

/** 400: a card whose signed expiry has passed (ask its agent for a fresh one). */
export class CardExpired extends AgentMeshError {
  static override readonly CODE = "card_expired";
  static override readonly STATUS = 400;
}

/** 400: a petname that is not valid, or could be read as an AMID. */
export class InvalidName extends AgentMeshError {
  static override readonly CODE = "invalid_name";
  static override readonly STATUS = 400;
}

/** 409: nothing to close or reply in. */
export class NoSession extends AgentMeshError {
  static override readonly CODE = "no_session";
  static override readonly STATUS = 409;
}

/** 504: not delivered (or deposited in a mailbox) in time. */
export class DeliveryTimeout extends AgentMeshError {
  static override readonly CODE = "delivery_timeout";
  static override readonly STATUS = 504;
}

/** 504: written, but not acknowledged in time. */
export class NotAcknowledged extends AgentMeshError {
  static override readonly CODE = "not_acknowledged";
  static override readonly STATUS = 504;
}

/** 504: a request's reply did not come in time. */
export class ReplyTimeout extends AgentMeshError {
  static override readonly CODE = "reply_timeout";
  static override readonly STATUS = 504;
}

/** 502: no path to the recipient, and no relay took the envelope. */
export class Unreachable extends AgentMeshError {
  static override readonly CODE = "unreachable";
  static override readonly STATUS = 502;
}

/** 503: too many recent failures with this peer; retry after `retryAfterMs`. */
export class CircuitOpen extends AgentMeshError {
  static override readonly CODE = "circuit_open";
  static override readonly STATUS = 503;
  /** How long to wait before trying this peer again, when the node said. */
  readonly retryAfterMs: number | null;

  constructor(message: string, options: AgentMeshErrorOptions = {}) {
    super(message, options);
    const v = this.body["retry_after_ms"];
    this.retryAfterMs = typeof v === "number" && Number.isInteger(v) ? v : null;
  }
}

/** 503: too many requests are waiting for replies. */
export class Busy extends AgentMeshError {
  static override readonly CODE = "busy";
  static override readonly STATUS = 503;
}

/** 503: the owner's kill switch is on. */
export class Killed extends AgentMeshError {
  static override readonly CODE = "killed";
  static override readonly STATUS = 503;
}

/** 503: the node is stopping. */
export class Stopped extends AgentMeshError {
  static override readonly CODE = "stopped";
  static override readonly STATUS = 503;
}

/** 500: the node's own storage failed (code `storage`). */
export class StorageError extends AgentMeshError {
  static override readonly CODE = "storage";
  static override readonly STATUS = 500;
}

/** 500: anything else (code `internal`). */
export class InternalError extends AgentMeshError {
  static override readonly CODE = "internal";
  static override readonly STATUS = 500;
}

/** The constructor of an error class. */
export type AgentMeshErrorClass = (new (
  message: string,
  options?: AgentMeshErrorOptions,
) => AgentMeshError) & { readonly CODE: string; readonly STATUS: number | null };

/**
 * The class of every code of the API. Typed by the OpenAPI document's list
 * of codes: a code the node gains fails the type check until it has a class.
 */
export const ERROR_CLASSES: Readonly<Record<ErrorCode, AgentMeshErrorClass>> = Object.freeze({
  unauthorized: Unauthorized,
  forbidden_origin: ForbiddenOrigin,
  bad_host: BadHost,
  bad_request: BadRequest,
  invalid_amid: InvalidAmid,
  invalid_id: InvalidId,
  payload_too_large: PayloadTooLarge,
  not_found: NotFound,
  method_not_allowed: MethodNotAllowed,
  rejected: Rejected,
  invalid_payload: InvalidPayload,
  invalid_recipient: InvalidRecipient,
  no_session: NoSession,
  delivery_timeout: DeliveryTimeout,
  not_acknowledged: NotAcknowledged,
  reply_timeout: ReplyTimeout,
  unreachable: Unreachable,
  circuit_open: CircuitOpen,
  busy: Busy,
  killed: Killed,
  stopped: Stopped,
  storage: StorageError,
  internal: InternalError,
  invalid_card: InvalidCard,
  card_expired: CardExpired,
  invalid_name: InvalidName,
});

/** The error class of a code ({@link AgentMeshError} when unknown). */
export function errorClass(code: string): AgentMeshErrorClass {
  return Object.hasOwn(ERROR_CLASSES, code)
    ? ERROR_CLASSES[code as ErrorCode]
    : (AgentMeshError as AgentMeshErrorClass);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * The error for an error answer: its HTTP `status` and its body (raw bytes
 * or text, or already decoded JSON).
 */
export function errorFromBody(status: number, body: Uint8Array | string | unknown): AgentMeshError {
  let data: unknown = body;
  let text = "";
  if (typeof body === "string" || body instanceof Uint8Array) {
    text = typeof body === "string" ? body : Buffer.from(body).toString("utf8");
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
  }
  const err = isRecord(data) ? data["error"] : undefined;
  if (!isRecord(err) || typeof err["code"] !== "string") {
    const shown = text.trim().slice(0, 200) || "no error body";
    return new AgentMeshError(`HTTP ${status}: ${shown}`, { code: `http_${status}`, status });
  }
  const code = err["code"];
  const message = typeof err["message"] === "string" ? err["message"] : code;
  const Cls = errorClass(code);
  return new Cls(message, { code, status, body: err });
}
