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
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, openSync, writeSync, closeSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import { Client, amidOf, } from "./client.js";
import { AgentMeshError, NodeNotRunning } from "./errors.js";
import { API_FILE, defaultDataDir, expandHome, loadApiInfo, } from "./models.js";
import { NodeProcess, findBinary, probe, removeApiFile, waitForApi } from "./process.js";
/** The passphrase file {@link Agent.start} creates when none is given. */
export const PASSPHRASE_FILE = "passphrase";
const KEYSTORE = "identity.keystore";
function asList(v) {
    if (v === undefined)
        return [];
    if (typeof v === "string")
        return v.split(",").filter(Boolean);
    return [...v];
}
function defaultOnError(error, msg) {
    const where = msg ? `handling message ${msg.id} from ${msg.from} (released)` : "in the message loop";
    console.error(`agentmesh: error ${where}:`, error);
}
/**
 * An AgentMesh agent: a running node and a client of its local API.
 *
 * Get one with {@link Agent.start} (start a node, or attach to the one
 * already running in that data directory), {@link Agent.attach}, or from a
 * {@link LocalMesh}.
 */
export class Agent {
    /** The client of the node's local API (every route). */
    client;
    /** A name for messages. */
    name;
    /** The node's data directory, when known. */
    dataDir;
    /** The node's process, when this agent started it. */
    process;
    /** Id of the last event {@link events} yielded (a new iteration resumes after it). */
    lastEventId = null;
    /** Events the node no longer kept when {@link events} asked for them. */
    eventsDropped = 0;
    #amid;
    #onStop;
    #handlers = [];
    #loop = null;
    #loopOptions = {};
    /** An agent for the node `client` talks to (its AMID must be known). */
    constructor(client, options) {
        this.client = client;
        this.#amid = options.amid;
        this.dataDir = options.dataDir ?? null;
        this.name = options.name ?? (this.dataDir !== null ? basename(this.dataDir) : "agent");
        this.process = options.process ?? null;
        this.#onStop = options.onStop ?? null;
    }
    /** An agent for the API `info` describes. */
    static async fromInfo(info, options = {}) {
        const client = Client.fromInfo(info, { useSocket: Boolean(options.useSocket) });
        let amid = info.amid;
        if (amid === null) {
            const st = await client.status();
            amid = st.amid;
        }
        return new Agent(client, {
            amid,
            dataDir: info.dataDir,
            ...(options.name !== undefined ? { name: options.name } : {}),
            ...(options.process !== undefined ? { process: options.process } : {}),
            ...(options.onStop !== undefined ? { onStop: options.onStop } : {}),
        });
    }
    /**
     * The agent whose node runs with data directory `dataDir` (default
     * `$AGENTMESH_HOME` or `~/.agentmesh`), from its `api.json`. Waits up to
     * `waitMs` for the node to come up; rejects with {@link NodeNotRunning}
     * when it does not answer.
     */
    static async attach(dataDir, options = {}) {
        const d = resolve(dataDir !== undefined ? expandHome(dataDir) : defaultDataDir());
        let info;
        if ((options.waitMs ?? 0) > 0) {
            info = await waitForApi(d, options.waitMs ?? 0);
        }
        else {
            info = await loadApiInfo(d);
            if (!(await probe(info))) {
                throw new NodeNotRunning(`the node of ${d} does not answer at ${info.url ?? info.socket} (a ${API_FILE} left by a node that crashed?)`);
            }
        }
        return Agent.fromInfo(info, {
            ...(options.name !== undefined ? { name: options.name } : {}),
            useSocket: Boolean(options.useSocket),
        });
    }
    /**
     * Starts a node (`agentmesh run`) with its own data directory, or
     * attaches to the node already running there.
     *
     * The node stops with {@link stop} or when this process exits, unless
     * `detach`. Waits up to `timeoutMs` for the API and, when
     * `waitPublished` (default: when there is a bootstrap), for the agent's
     * card to be stored in the DHT.
     */
    static async start(name, options = {}) {
        let d;
        if (options.dataDir !== undefined)
            d = resolve(expandHome(options.dataDir));
        else if (name !== undefined)
            d = join(homedir(), ".agentmesh", name);
        else
            d = resolve(defaultDataDir());
        const agentName = name ?? basename(d);
        // Attach when a node already runs there.
        let stale = null;
        try {
            const info = await loadApiInfo(d);
            if (await probe(info))
                return Agent.fromInfo(info, { name: agentName });
            stale = info;
        }
        catch (e) {
            if (!(e instanceof AgentMeshError))
                throw e;
        }
        if (stale !== null)
            await removeApiFile(d);
        mkdirSync(d, { recursive: true });
        try {
            chmodSync(d, 0o700);
        }
        catch {
            // Not ours to change.
        }
        const env = Agent.#passphraseEnv(d, options.passphrase);
        const exe = options.binary ?? findBinary("agentmesh");
        const bootstraps = asList(options.bootstrap);
        const argv = [exe, "--data-dir", d, "--json", "run"];
        for (const b of bootstraps)
            argv.push("--bootstrap", b);
        for (const r of asList(options.relays))
            argv.push("--relay", r);
        if (options.registry)
            argv.push("--registry", options.registry);
        for (const a of asList(options.listen))
            argv.push("--listen", a);
        if (options.policy !== undefined)
            argv.push("--policy", resolve(options.policy));
        if (options.api !== undefined)
            argv.push("--api", options.api);
        argv.push(...(options.extraArgs ?? []));
        const detach = Boolean(options.detach);
        const proc = new NodeProcess(agentName, argv, d, {
            env,
            stdoutFile: join(d, "node.log"),
            stderrFile: join(d, "node.err.log"),
            detach,
        });
        const timeoutMs = options.timeoutMs ?? 90_000;
        let info;
        try {
            const deadline = Date.now() + timeoutMs;
            info = await waitForApi(d, timeoutMs, proc);
            if (options.waitPublished ?? bootstraps.length > 0) {
                await proc.waitEvent("card_published", Math.max(1000, deadline - Date.now()), { stored_remotely: true });
            }
        }
        catch (e) {
            await proc.terminate();
            throw e;
        }
        // Detached, the node outlives this process: agent.stop() leaves it
        // running (agent.process.terminate() stops it).
        return Agent.fromInfo(info, {
            name: agentName,
            process: proc,
            ...(detach ? {} : { onStop: async () => void (await proc.terminate()) }),
        });
    }
    static #passphraseEnv(d, passphrase) {
        if (passphrase !== undefined)
            return { AGENTMESH_PASSPHRASE: passphrase };
        if (process.env["AGENTMESH_PASSPHRASE"] || process.env["AGENTMESH_PASSPHRASE_FILE"])
            return {};
        const f = join(d, PASSPHRASE_FILE);
        if (!existsSync(f)) {
            if (existsSync(join(d, KEYSTORE))) {
                throw new AgentMeshError(`${d} holds an identity but no passphrase was given: pass { passphrase } or set AGENTMESH_PASSPHRASE`, { code: "no_passphrase" });
            }
            const fd = openSync(f, "wx", 0o600);
            try {
                writeSync(fd, randomBytes(32).toString("base64url") + "\n");
            }
            finally {
                closeSync(fd);
            }
        }
        return { AGENTMESH_PASSPHRASE_FILE: f };
    }
    /** @internal Points this agent at a restarted node (new address and token). */
    _reattach(info, proc, onStop) {
        const old = this.client;
        this.client = Client.fromInfo(info, { timeoutMs: old.timeoutMs });
        old.close();
        if (proc !== null)
            this.process = proc;
        if (info.amid !== null)
            this.#amid = info.amid;
        this.#onStop = onStop;
    }
    /** @internal Stops the message loop without stopping the node. */
    async _stopLoop() {
        const loop = this.#loop;
        if (loop === null)
            return;
        loop.controller.abort();
        await loop.done;
    }
    // Who.
    /** This agent's AMID (its address in the network). */
    get amid() {
        return this.#amid;
    }
    /** Base URL of the node's A2A gateway (`a2a` in `api.json`), if any. */
    get a2aUrl() {
        return this.client.info.a2a;
    }
    /** For `console.log`. */
    toString() {
        return `Agent(${this.name} ${this.#amid})`;
    }
    send(to, payload, options = {}) {
        return this.client.send(amidOf(to), payload, options);
    }
    /** Sends a request and resolves to the reply {@link Message}. */
    request(to, payload, options = {}) {
        return this.client.request(amidOf(to), payload, options);
    }
    /** Answers `msg` (same as `msg.reply(payload)`). */
    reply(msg, payload, options = {}) {
        return this.client.reply(msg.from, msg.id, payload, options.sameSession ? { session: msg.session } : {});
    }
    /** Ends the conversation with `to`; resolves to the session that ended. */
    end(to) {
        return this.client.end(amidOf(to));
    }
    /** Sends bytes (or the file at `path`) as a stream of encrypted chunks. */
    stream(to, options) {
        return this.client.stream(amidOf(to), options);
    }
    // Messages in.
    /** One read of the inbox; acknowledge what you handled with {@link ack} or `msg.ack()`. */
    messages(options = {}) {
        return this.client.messages(options);
    }
    /** Acknowledges messages (the node forgets them). */
    ack(msgs) {
        return this.client.ack(msgs);
    }
    /** Hands messages out again at once. */
    release(msgs) {
        return this.client.release(msgs);
    }
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
    onMessage(handler, options = {}) {
        this.#handlers.push(handler);
        if (this.#loop === null) {
            this.#loopOptions = options;
            const controller = new AbortController();
            const done = this.#run(controller.signal).finally(() => {
                if (this.#loop?.controller === controller)
                    this.#loop = null;
            });
            this.#loop = { controller, done };
        }
        const loop = this.#loop;
        return {
            done: loop.done,
            stop: async () => {
                const i = this.#handlers.indexOf(handler);
                if (i >= 0)
                    this.#handlers.splice(i, 1);
                if (this.#handlers.length === 0) {
                    loop.controller.abort();
                    await loop.done;
                }
            },
        };
    }
    async #run(signal) {
        const o = this.#loopOptions;
        const onError = o.onError ?? defaultOnError;
        while (!signal.aborted && this.#handlers.length > 0) {
            let msgs;
            try {
                msgs = await this.client.messages({
                    waitMs: o.pollMs ?? 30_000,
                    leaseMs: o.leaseMs ?? 30_000,
                    max: o.max ?? 32,
                    signal,
                });
            }
            catch (e) {
                if (signal.aborted)
                    return;
                onError(e, null);
                if (e instanceof NodeNotRunning)
                    return;
                await new Promise((ok) => setTimeout(ok, 1000));
                continue;
            }
            try {
                await this.#dispatch(msgs, onError);
            }
            catch (e) {
                if (!signal.aborted)
                    onError(e, null);
                return;
            }
        }
    }
    async #dispatch(msgs, onError) {
        let handled = 0;
        for (const m of msgs) {
            try {
                for (const h of [...this.#handlers])
                    await h(m);
            }
            catch (e) {
                onError(e, m);
                await this.#quietly(() => this.client.release([m.id]), onError);
                continue;
            }
            await this.#quietly(() => this.client.ack([m.id]), onError);
            handled++;
        }
        return handled;
    }
    /** Acknowledges or releases; a refusal is reported (the lease may have ended meanwhile), a node that is gone is thrown. */
    async #quietly(f, onError) {
        try {
            await f();
        }
        catch (e) {
            if (e instanceof NodeNotRunning)
                throw e;
            onError(e, null);
        }
    }
    /**
     * Reads the inbox once (waiting up to `waitMs`) and runs the handlers on
     * what came, acknowledging each message handled; resolves to how many
     * were handled. For use without the loop (handlers registered with
     * {@link onMessage} and stopped, or passed here).
     */
    async processPending(options = {}) {
        const handlers = options.handlers ?? this.#handlers;
        if (handlers.length === 0)
            throw new Error("no handler: register one with agent.onMessage or pass { handlers }");
        const msgs = await this.messages(options);
        const saved = this.#handlers.splice(0, this.#handlers.length, ...handlers);
        try {
            return await this.#dispatch(msgs, options.onError ?? defaultOnError);
        }
        finally {
            this.#handlers.splice(0, this.#handlers.length, ...saved);
        }
    }
    // Events.
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
    async *events(options = {}) {
        let cursor = options.since ?? this.lastEventId ?? undefined;
        const waitMs = options.waitMs ?? 30_000;
        let idleSince = Date.now();
        for (;;) {
            let w = waitMs;
            if (options.idleTimeoutMs !== undefined) {
                const left = options.idleTimeoutMs - (Date.now() - idleSince);
                if (left <= 0)
                    return;
                w = Math.min(w, left);
            }
            const q = { waitMs: w };
            if (cursor !== undefined)
                q.since = cursor;
            if (options.limit !== undefined)
                q.limit = options.limit;
            if (options.signal !== undefined)
                q.signal = options.signal;
            let batch;
            try {
                batch = await this.client.events(q);
            }
            catch (e) {
                if (options.signal?.aborted)
                    return;
                throw e;
            }
            if (batch.dropped) {
                this.eventsDropped += batch.dropped;
                if (batch.events.length === 0) {
                    // Only a gap (an id of an earlier run of the node, say): go on
                    // past it, so that it is counted once.
                    cursor = batch.lastId;
                    this.lastEventId = batch.lastId;
                }
            }
            if (batch.events.length === 0)
                continue;
            idleSince = Date.now();
            for (const e of batch.events) {
                cursor = e.id;
                this.lastEventId = e.id;
                yield e;
            }
        }
    }
    // The node.
    /** The node's status. */
    status() {
        return this.client.status();
    }
    /** Agents the node knows (the seed's `list_peers`): petname, presence, last seen, path, sessions. */
    peers() {
        return this.client.peers();
    }
    /** This agent's signed card; `card.card` is the string to hand out of band (the seed's `public_bundle`). */
    exportCard() {
        return this.client.exportCard();
    }
    /** Imports another agent's card (the seed's `connect_with_bundle`): it is then reached with no DHT. */
    importCard(card, options = {}) {
        return this.client.importCard(card, options);
    }
    /** Names an agent locally (never published); the name is then taken wherever an AMID is. */
    setName(name, amid) {
        return this.client.setName(name, amidOf(amid));
    }
    /** Forgets a petname; resolves to the AMID it named. */
    removeName(name) {
        return this.client.removeName(name);
    }
    /** Every petname and the AMID it names. */
    names() {
        return this.client.names();
    }
    /** The node's sessions. */
    sessions() {
        return this.client.sessions();
    }
    /** An agent's signed card, from the DHT (`NotFound` if none). */
    lookup(amid) {
        return this.client.lookup(amidOf(amid));
    }
    /** The message schemas this agent's node knows, and those it takes per capability. */
    schemas() {
        return this.client.schemas();
    }
    /** The message schemas another agent takes, per capability, from its card: `{}` when none. */
    schemasOf(amid) {
        return this.client.schemasOf(amidOf(amid));
    }
    /** Agents offering `capability`, from the node's registry. */
    search(capability, options = {}) {
        return this.client.search(capability, options);
    }
    /** Registers this agent with the node's registry. */
    register(name, capabilities) {
        return this.client.register(name, capabilities);
    }
    /** Refuses this agent from now on. */
    block(amid) {
        return this.client.block(amidOf(amid));
    }
    /** Ends every session with `amid`; resolves to how many. */
    close(amid) {
        return this.client.closeSessions(amidOf(amid));
    }
    /** Closes the connections to `amid` (sessions stay). */
    disconnect(amid) {
        return this.client.disconnect(amidOf(amid));
    }
    /** What this agent's KNOCK policy (or `options.policy`) would decide on a KNOCK with this intent; nothing is sent. */
    checkPolicy(capability, options = {}) {
        const { from, ...rest } = options;
        return this.client.checkPolicy(capability, from === undefined ? rest : { ...rest, from: amidOf(from) });
    }
    /** Sets presence: `online`, `away`, `dnd` or `offline`. */
    presence(state) {
        return this.client.presence(state);
    }
    /** The kill switch, for one agent or (no argument) everyone. */
    kill(amid) {
        return this.client.kill(amid === undefined ? undefined : amidOf(amid));
    }
    /** Turns the kill switch for everyone off. */
    killClear() {
        return this.client.killClear();
    }
    /** The last hour by minute: messages by path, KNOCK decisions, delivery latency (see {@link Client.timeseries}). */
    timeseries() {
        return this.client.timeseries();
    }
    /** This agent's tier and reputation at its registry, as the node last saw them (see {@link Client.registryStanding}). */
    registryStanding() {
        return this.client.registryStanding();
    }
    /**
     * What `agentmesh doctor` checks, with a fix for each failure; with
     * `punch`, a hole-punch probe of that agent (see {@link Client.diagnostics}).
     */
    diagnostics(options = {}) {
        return this.client.diagnostics(options.punch === undefined ? {} : { punch: amidOf(options.punch) });
    }
    /** The audit log. */
    audit(options = {}) {
        return this.client.audit(options);
    }
    /**
     * Stops the message loop and, when this agent started its node
     * ({@link start}, {@link LocalMesh}), the node.
     */
    async stop() {
        this.#handlers.length = 0;
        await this._stopLoop();
        const onStop = this.#onStop;
        this.#onStop = null;
        if (onStop !== null)
            await onStop();
        this.client.close();
    }
    /** `await using agent = await Agent.start(...)` stops it at the end of the block. */
    async [Symbol.asyncDispose]() {
        await this.stop();
    }
}
//# sourceMappingURL=agent.js.map