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
/**
 * Base of every error of this package.
 *
 * `code` is the API's stable error code (`"rejected"`, `"not_found"`, …),
 * `message` its human-readable text and `status` the HTTP status (`null`
 * when the node did not answer at all).
 */
export class AgentMeshError extends Error {
    /** The code this class stands for (the base class stands for any). */
    static CODE = "";
    /** The HTTP status the API answers this code with. */
    static STATUS = null;
    /** The error code. */
    code;
    /** The HTTP status, `null` when there was no answer. */
    status;
    /** The whole `error` object as the node sent it (empty if none). */
    body;
    constructor(message, options = {}) {
        super(message, options.cause === undefined ? undefined : { cause: options.cause });
        const cls = new.target;
        this.name = new.target.name;
        this.code = options.code ?? (cls.CODE || "unknown");
        this.status = options.status !== undefined ? options.status : cls.STATUS;
        this.body = { ...(options.body ?? {}) };
    }
    toString() {
        return `${this.name} (${this.code}): ${this.message}`;
    }
}
/** No node to talk to: `api.json` is missing, or the node does not answer. */
export class NodeNotRunning extends AgentMeshError {
    static CODE = "node_not_running";
}
/** An AgentMesh binary (`agentmesh` or `agentmesh-sim`) cannot be found. */
export class BinaryNotFound extends AgentMeshError {
    static CODE = "binary_not_found";
}
/** A node process this package started exited, or did not get ready in time. */
export class NodeStartFailed extends AgentMeshError {
    static CODE = "start_failed";
}
/** The node answered something this SDK cannot read. */
export class BadResponse extends AgentMeshError {
    static CODE = "bad_response";
}
/** 401: missing or wrong token. */
export class Unauthorized extends AgentMeshError {
    static CODE = "unauthorized";
    static STATUS = 401;
}
/** 403: the request carried an `Origin` or `Referer` header (a browser page). */
export class ForbiddenOrigin extends AgentMeshError {
    static CODE = "forbidden_origin";
    static STATUS = 403;
}
/** 403: the `Host` header is not loopback (DNS rebinding). */
export class BadHost extends AgentMeshError {
    static CODE = "bad_host";
    static STATUS = 403;
}
/** 400: malformed JSON, missing or wrong fields. */
export class BadRequest extends AgentMeshError {
    static CODE = "bad_request";
    static STATUS = 400;
}
/** 400: an AMID that does not parse. */
export class InvalidAmid extends AgentMeshError {
    static CODE = "invalid_amid";
    static STATUS = 400;
}
/** 400: a message or session id that is not 32 hex digits. */
export class InvalidId extends AgentMeshError {
    static CODE = "invalid_id";
    static STATUS = 400;
}
/** 413: the request body is over 1 MiB. */
export class PayloadTooLarge extends AgentMeshError {
    static CODE = "payload_too_large";
    static STATUS = 413;
}
/** 404: no such route, no card for the AMID, no such message. */
export class NotFound extends AgentMeshError {
    static CODE = "not_found";
    static STATUS = 404;
}
/** 405: wrong method for the route. */
export class MethodNotAllowed extends AgentMeshError {
    static CODE = "method_not_allowed";
    static STATUS = 405;
}
/**
 * 403: the recipient refused; `reason` is the KNOCK reject reason
 * (`"blocked"`, `"intent_denied"`, `"not_allowed"`, …; for message schemas
 * `"unsupported_schema"`: the KNOCK named no schema, or one the recipient
 * does not take for the capability, and `"schema_invalid"`: the recipient's
 * schema refused the payload).
 */
export class Rejected extends AgentMeshError {
    static CODE = "rejected";
    static STATUS = 403;
    /** Why the recipient refused, when it said. */
    reason;
    constructor(message, options = {}) {
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
    static CODE = "invalid_payload";
    static STATUS = 400;
}
/** 400: the AMID holds no usable key. */
export class InvalidRecipient extends AgentMeshError {
    static CODE = "invalid_recipient";
    static STATUS = 400;
}
/** 400: a card that does not verify: malformed, forged, or not a card. */
export class InvalidCard extends AgentMeshError {
    static CODE = "invalid_card";
    static STATUS = 400;
}
/** 400: a card whose signed expiry has passed (ask its agent for a fresh one). */
export class CardExpired extends AgentMeshError {
    static CODE = "card_expired";
    static STATUS = 400;
}
/** 400: a petname that is not valid, or could be read as an AMID. */
export class InvalidName extends AgentMeshError {
    static CODE = "invalid_name";
    static STATUS = 400;
}
/** 409: nothing to close or reply in. */
export class NoSession extends AgentMeshError {
    static CODE = "no_session";
    static STATUS = 409;
}
/** 504: not delivered (or deposited in a mailbox) in time. */
export class DeliveryTimeout extends AgentMeshError {
    static CODE = "delivery_timeout";
    static STATUS = 504;
}
/** 504: written, but not acknowledged in time. */
export class NotAcknowledged extends AgentMeshError {
    static CODE = "not_acknowledged";
    static STATUS = 504;
}
/** 504: a request's reply did not come in time. */
export class ReplyTimeout extends AgentMeshError {
    static CODE = "reply_timeout";
    static STATUS = 504;
}
/** 502: no path to the recipient, and no relay took the envelope. */
export class Unreachable extends AgentMeshError {
    static CODE = "unreachable";
    static STATUS = 502;
}
/** 503: too many recent failures with this peer; retry after `retryAfterMs`. */
export class CircuitOpen extends AgentMeshError {
    static CODE = "circuit_open";
    static STATUS = 503;
    /** How long to wait before trying this peer again, when the node said. */
    retryAfterMs;
    constructor(message, options = {}) {
        super(message, options);
        const v = this.body["retry_after_ms"];
        this.retryAfterMs = typeof v === "number" && Number.isInteger(v) ? v : null;
    }
}
/** 503: too many requests are waiting for replies. */
export class Busy extends AgentMeshError {
    static CODE = "busy";
    static STATUS = 503;
}
/** 503: the owner's kill switch is on. */
export class Killed extends AgentMeshError {
    static CODE = "killed";
    static STATUS = 503;
}
/** 503: the node is stopping. */
export class Stopped extends AgentMeshError {
    static CODE = "stopped";
    static STATUS = 503;
}
/** 500: the node's own storage failed (code `storage`). */
export class StorageError extends AgentMeshError {
    static CODE = "storage";
    static STATUS = 500;
}
/** 500: anything else (code `internal`). */
export class InternalError extends AgentMeshError {
    static CODE = "internal";
    static STATUS = 500;
}
/**
 * The class of every code of the API. Typed by the OpenAPI document's list
 * of codes: a code the node gains fails the type check until it has a class.
 */
export const ERROR_CLASSES = Object.freeze({
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
export function errorClass(code) {
    return Object.hasOwn(ERROR_CLASSES, code)
        ? ERROR_CLASSES[code]
        : AgentMeshError;
}
function isRecord(v) {
    return typeof v === "object" && v !== null && !Array.isArray(v);
}
/**
 * The error for an error answer: its HTTP `status` and its body (raw bytes
 * or text, or already decoded JSON).
 */
export function errorFromBody(status, body) {
    let data = body;
    let text = "";
    if (typeof body === "string" || body instanceof Uint8Array) {
        text = typeof body === "string" ? body : Buffer.from(body).toString("utf8");
        try {
            data = text ? JSON.parse(text) : null;
        }
        catch {
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
//# sourceMappingURL=errors.js.map