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
export declare class AgentMeshError extends Error {
    /** The code this class stands for (the base class stands for any). */
    static readonly CODE: string;
    /** The HTTP status the API answers this code with. */
    static readonly STATUS: number | null;
    /** The error code. */
    readonly code: string;
    /** The HTTP status, `null` when there was no answer. */
    readonly status: number | null;
    /** The whole `error` object as the node sent it (empty if none). */
    readonly body: Readonly<Record<string, unknown>>;
    constructor(message: string, options?: AgentMeshErrorOptions);
    toString(): string;
}
/** No node to talk to: `api.json` is missing, or the node does not answer. */
export declare class NodeNotRunning extends AgentMeshError {
    static readonly CODE = "node_not_running";
}
/** An AgentMesh binary (`agentmesh` or `agentmesh-sim`) cannot be found. */
export declare class BinaryNotFound extends AgentMeshError {
    static readonly CODE = "binary_not_found";
}
/** A node process this package started exited, or did not get ready in time. */
export declare class NodeStartFailed extends AgentMeshError {
    static readonly CODE = "start_failed";
}
/** The node answered something this SDK cannot read. */
export declare class BadResponse extends AgentMeshError {
    static readonly CODE = "bad_response";
}
/** 401: missing or wrong token. */
export declare class Unauthorized extends AgentMeshError {
    static readonly CODE = "unauthorized";
    static readonly STATUS = 401;
}
/** 403: the request carried an `Origin` or `Referer` header (a browser page). */
export declare class ForbiddenOrigin extends AgentMeshError {
    static readonly CODE = "forbidden_origin";
    static readonly STATUS = 403;
}
/** 403: the `Host` header is not loopback (DNS rebinding). */
export declare class BadHost extends AgentMeshError {
    static readonly CODE = "bad_host";
    static readonly STATUS = 403;
}
/** 400: malformed JSON, missing or wrong fields. */
export declare class BadRequest extends AgentMeshError {
    static readonly CODE = "bad_request";
    static readonly STATUS = 400;
}
/** 400: an AMID that does not parse. */
export declare class InvalidAmid extends AgentMeshError {
    static readonly CODE = "invalid_amid";
    static readonly STATUS = 400;
}
/** 400: a message or session id that is not 32 hex digits. */
export declare class InvalidId extends AgentMeshError {
    static readonly CODE = "invalid_id";
    static readonly STATUS = 400;
}
/** 413: the request body is over 1 MiB. */
export declare class PayloadTooLarge extends AgentMeshError {
    static readonly CODE = "payload_too_large";
    static readonly STATUS = 413;
}
/** 404: no such route, no card for the AMID, no such message. */
export declare class NotFound extends AgentMeshError {
    static readonly CODE = "not_found";
    static readonly STATUS = 404;
}
/** 405: wrong method for the route. */
export declare class MethodNotAllowed extends AgentMeshError {
    static readonly CODE = "method_not_allowed";
    static readonly STATUS = 405;
}
/**
 * 403: the recipient refused; `reason` is the KNOCK reject reason
 * (`"blocked"`, `"intent_denied"`, `"not_allowed"`, …; for message schemas
 * `"unsupported_schema"`: the KNOCK named no schema, or one the recipient
 * does not take for the capability, and `"schema_invalid"`: the recipient's
 * schema refused the payload).
 */
export declare class Rejected extends AgentMeshError {
    static readonly CODE = "rejected";
    static readonly STATUS = 403;
    /** Why the recipient refused, when it said. */
    readonly reason: string | null;
    constructor(message: string, options?: AgentMeshErrorOptions);
}
/**
 * 400: the payload is too large for one message (64 KiB), not encodable, or
 * does not conform to the message schema named (when this node knows it:
 * checked before anything is sent).
 */
export declare class InvalidPayload extends AgentMeshError {
    static readonly CODE = "invalid_payload";
    static readonly STATUS = 400;
}
/** 400: the AMID holds no usable key. */
export declare class InvalidRecipient extends AgentMeshError {
    static readonly CODE = "invalid_recipient";
    static readonly STATUS = 400;
}
/** 400: a card that does not verify: malformed, forged, or not a card. */
export declare class InvalidCard extends AgentMeshError {
    static readonly CODE = "invalid_card";
    static readonly STATUS = 400;
}
/** 400: a card whose signed expiry has passed (ask its agent for a fresh one). */
export declare class CardExpired extends AgentMeshError {
    static readonly CODE = "card_expired";
    static readonly STATUS = 400;
}
/** 400: a petname that is not valid, or could be read as an AMID. */
export declare class InvalidName extends AgentMeshError {
    static readonly CODE = "invalid_name";
    static readonly STATUS = 400;
}
/** 409: nothing to close or reply in. */
export declare class NoSession extends AgentMeshError {
    static readonly CODE = "no_session";
    static readonly STATUS = 409;
}
/** 504: not delivered (or deposited in a mailbox) in time. */
export declare class DeliveryTimeout extends AgentMeshError {
    static readonly CODE = "delivery_timeout";
    static readonly STATUS = 504;
}
/** 504: written, but not acknowledged in time. */
export declare class NotAcknowledged extends AgentMeshError {
    static readonly CODE = "not_acknowledged";
    static readonly STATUS = 504;
}
/** 504: a request's reply did not come in time. */
export declare class ReplyTimeout extends AgentMeshError {
    static readonly CODE = "reply_timeout";
    static readonly STATUS = 504;
}
/** 502: no path to the recipient, and no relay took the envelope. */
export declare class Unreachable extends AgentMeshError {
    static readonly CODE = "unreachable";
    static readonly STATUS = 502;
}
/** 503: too many recent failures with this peer; retry after `retryAfterMs`. */
export declare class CircuitOpen extends AgentMeshError {
    static readonly CODE = "circuit_open";
    static readonly STATUS = 503;
    /** How long to wait before trying this peer again, when the node said. */
    readonly retryAfterMs: number | null;
    constructor(message: string, options?: AgentMeshErrorOptions);
}
/** 503: too many requests are waiting for replies. */
export declare class Busy extends AgentMeshError {
    static readonly CODE = "busy";
    static readonly STATUS = 503;
}
/** 503: the owner's kill switch is on. */
export declare class Killed extends AgentMeshError {
    static readonly CODE = "killed";
    static readonly STATUS = 503;
}
/** 503: the node is stopping. */
export declare class Stopped extends AgentMeshError {
    static readonly CODE = "stopped";
    static readonly STATUS = 503;
}
/** 500: the node's own storage failed (code `storage`). */
export declare class StorageError extends AgentMeshError {
    static readonly CODE = "storage";
    static readonly STATUS = 500;
}
/** 500: anything else (code `internal`). */
export declare class InternalError extends AgentMeshError {
    static readonly CODE = "internal";
    static readonly STATUS = 500;
}
/** The constructor of an error class. */
export type AgentMeshErrorClass = (new (message: string, options?: AgentMeshErrorOptions) => AgentMeshError) & {
    readonly CODE: string;
    readonly STATUS: number | null;
};
/**
 * The class of every code of the API. Typed by the OpenAPI document's list
 * of codes: a code the node gains fails the type check until it has a class.
 */
export declare const ERROR_CLASSES: Readonly<Record<ErrorCode, AgentMeshErrorClass>>;
/** The error class of a code ({@link AgentMeshError} when unknown). */
export declare function errorClass(code: string): AgentMeshErrorClass;
/**
 * The error for an error answer: its HTTP `status` and its body (raw bytes
 * or text, or already decoded JSON).
 */
export declare function errorFromBody(status: number, body: Uint8Array | string | unknown): AgentMeshError;
//# sourceMappingURL=errors.d.ts.map