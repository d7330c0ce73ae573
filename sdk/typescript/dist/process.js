/**
 * Node processes: finding the binaries, starting them, reading the JSON
 * event lines they print, waiting for `api.json`, stopping them. Processes
 * started here die with this Node.js process (unless detached): on Linux
 * the kernel sends them SIGTERM when it dies, however it dies (`setpriv
 * --pdeathsig`), and on exit they are stopped and waited for.
 *
 * @module
 */
import { spawn } from "node:child_process";
import { accessSync, closeSync, constants as fsConstants, existsSync, mkdirSync, openSync, readFileSync, readSync, realpathSync, statSync, } from "node:fs";
import { unlink } from "node:fs/promises";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "./client.js";
import { AgentMeshError, BadResponse, BinaryNotFound, NodeNotRunning, NodeStartFailed } from "./errors.js";
import { API_FILE, isObject, loadApiInfo } from "./models.js";
/** Environment variable naming the directory of the AgentMesh binaries. */
export const BIN_DIR_ENV = "AGENTMESH_BIN_DIR";
/**
 * The AgentMesh source tree this package sits in, if any (a directory with
 * `Cargo.toml` and `sdk/`), looked up from this file and from the working
 * directory.
 */
export function repoRoot() {
    const starts = [dirname(fileURLToPath(import.meta.url)), process.cwd()];
    for (const start of starts) {
        let d = resolve(start);
        for (;;) {
            if (existsSync(join(d, "Cargo.toml")) && existsSync(join(d, "sdk")))
                return d;
            const up = dirname(d);
            if (up === d)
                break;
            d = up;
        }
    }
    return null;
}
function which(name) {
    for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
        if (!dir)
            continue;
        const p = join(dir, name);
        if (isExecutable(p))
            return p;
    }
    return null;
}
function isExecutable(p) {
    try {
        accessSync(p, fsConstants.X_OK);
        return statSync(p).isFile();
    }
    catch {
        return false;
    }
}
function candidates(name) {
    const out = [];
    const env = process.env[BIN_DIR_ENV];
    if (env)
        out.push(join(env, name));
    const sim = which("agentmesh-sim");
    if (sim)
        out.push(join(dirname(realpathSync(sim)), name));
    const root = repoRoot();
    if (root)
        out.push(join(root, "target", "debug", name));
    return out;
}
/**
 * The path of AgentMesh binary `name`: in `$AGENTMESH_BIN_DIR`, else next
 * to `agentmesh-sim` on the `PATH`, else in the source tree's
 * `target/debug`. Throws {@link BinaryNotFound}.
 */
export function findBinary(name) {
    const tried = candidates(name);
    for (const p of tried)
        if (isExecutable(p))
            return p;
    const where = tried.join(", ") || "nowhere (no PATH entry, no source tree)";
    throw new BinaryNotFound(`cannot find the ${name} binary (looked in ${where}); build it with ` +
        `\`cargo build --bins\` or set ${BIN_DIR_ENV} to the directory holding it`);
}
/** Why the binaries cannot be used, or `null` when all are there. */
export function missingBinaries(names = ["agentmesh-sim", "agentmesh"]) {
    for (const n of names) {
        try {
            findBinary(n);
        }
        catch (e) {
            if (e instanceof BinaryNotFound)
                return e.message;
            throw e;
        }
    }
    return null;
}
// Stopping everything when this process ends.
const live = new Set();
const exitCleanups = new Set();
let hooksInstalled = false;
function sleepSync(ms) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
/** Whether process `pid` is gone (a zombie waiting for its reaper is gone too). */
export function processGone(pid) {
    try {
        process.kill(pid, 0);
    }
    catch {
        return true;
    }
    try {
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
        return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
    }
    catch {
        return true;
    }
}
/** Stops every live process we own, synchronously: SIGTERM, a wait, SIGKILL. */
function stopAllSync() {
    const procs = [...live].filter((p) => p.stopAtExit && p.alive);
    for (const p of procs)
        p.signal("SIGTERM");
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline && procs.some((p) => !processGone(p.pid)))
        sleepSync(20);
    for (const p of procs)
        if (!processGone(p.pid))
            p.signal("SIGKILL");
    for (const f of [...exitCleanups]) {
        try {
            f();
        }
        catch {
            // Best effort at exit.
        }
    }
}
function installHooks() {
    if (hooksInstalled)
        return;
    hooksInstalled = true;
    process.on("exit", stopAllSync);
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
        const handler = () => {
            // Someone else handles this signal: they decide when to exit (and the
            // exit hook stops the processes then).
            if (process.listenerCount(sig) > 1)
                return;
            stopAllSync();
            process.removeListener(sig, handler);
            process.kill(process.pid, sig);
        };
        process.on(sig, handler);
    }
}
/** Runs `f` (synchronously) when this process exits; returns a function that cancels it. */
export function atExit(f) {
    installHooks();
    exitCleanups.add(f);
    return () => exitCleanups.delete(f);
}
let setprivPath;
function setpriv() {
    if (setprivPath === undefined)
        setprivPath = process.platform === "linux" ? which("setpriv") : null;
    return setprivPath;
}
/**
 * A node process that prints one JSON object per line. Its lines are
 * collected as they come; {@link waitFor} waits for one that matches.
 */
export class NodeProcess {
    /** A name for messages (`alice`, `bootstrap`, …). */
    name;
    /** The command line. */
    argv;
    /** The data directory (also the working directory). */
    dataDir;
    /** Where its stderr goes. */
    stderrFile;
    /** Whether it is stopped when this process exits (not detached). */
    stopAtExit;
    /** Resolves with the exit code (or the signal's name) once it exited. */
    exited;
    #child;
    #lines = [];
    #waiters = new Set();
    #eof = false;
    #partial = "";
    constructor(name, argv, dataDir, options = {}) {
        if (argv.length === 0)
            throw new TypeError("empty command line");
        this.name = name;
        this.argv = [...argv];
        this.dataDir = dataDir;
        const detach = Boolean(options.detach);
        this.stopAtExit = !detach;
        mkdirSync(dataDir, { recursive: true });
        this.stderrFile = options.stderrFile ?? join(dataDir, "stderr.log");
        const stdoutFile = options.stdoutFile ?? (detach ? join(dataDir, "node.log") : undefined);
        const err = openSync(this.stderrFile, "a");
        const out = stdoutFile !== undefined ? openSync(stdoutFile, "w") : null;
        const [exe, ...args] = this.argv;
        // The kernel stops the child when we die (SIGTERM), however we die.
        const tie = !detach ? setpriv() : null;
        try {
            this.#child = spawn(tie ?? exe, tie ? ["--pdeathsig", "TERM", "--", exe, ...args] : args, {
                cwd: dataDir,
                env: { ...process.env, ...(options.env ?? {}) },
                stdio: ["ignore", out ?? "pipe", err],
                detached: detach,
            });
        }
        finally {
            closeSync(err);
            if (out !== null)
                closeSync(out);
        }
        this.exited = new Promise((ok) => {
            this.#child.once("exit", (code, signal) => ok(code ?? signal ?? -1));
        });
        this.#child.once("error", () => {
            // Reported as an early exit by the waits.
        });
        if (stdoutFile === undefined) {
            const stdout = this.#child.stdout;
            if (stdout === null)
                throw new Error("no stdout pipe");
            stdout.setEncoding("utf8");
            stdout.on("data", (chunk) => this.#feed(chunk));
            this.#child.once("close", () => this.#end());
            // A process we started must not keep this one running by itself.
            stdout.unref?.();
        }
        else {
            this.#follow(stdoutFile);
        }
        this.#child.unref();
        if (!detach) {
            live.add(this);
            installHooks();
            void this.exited.then(() => live.delete(this));
        }
    }
    #follow(file) {
        const fd = openSync(file, "r");
        const buf = Buffer.alloc(64 * 1024);
        const readMore = () => {
            for (;;) {
                const n = readSync(fd, buf, 0, buf.length, null);
                if (n <= 0)
                    break;
                this.#feed(buf.subarray(0, n).toString("utf8"));
            }
        };
        const timer = setInterval(readMore, 100);
        timer.unref();
        void this.exited.then(() => {
            clearInterval(timer);
            readMore();
            closeSync(fd);
            this.#end();
        });
    }
    #feed(chunk) {
        this.#partial += chunk;
        let nl;
        while ((nl = this.#partial.indexOf("\n")) >= 0) {
            this.#add(this.#partial.slice(0, nl));
            this.#partial = this.#partial.slice(nl + 1);
        }
    }
    #end() {
        if (this.#eof)
            return;
        if (this.#partial)
            this.#add(this.#partial);
        this.#partial = "";
        this.#eof = true;
        this.#notify();
    }
    #add(raw) {
        const line = raw.trim();
        if (!line)
            return;
        let v;
        try {
            v = JSON.parse(line);
        }
        catch {
            v = { event: null, text: line };
        }
        if (!isObject(v))
            return;
        this.#lines.push(v);
        this.#notify();
    }
    #notify() {
        for (const w of [...this.#waiters])
            w();
    }
    /** The process id. */
    get pid() {
        return this.#child.pid ?? -1;
    }
    /** The exit code, `null` while it runs (or when a signal ended it). */
    get returnCode() {
        return this.#child.exitCode;
    }
    /** Whether it still runs. */
    get alive() {
        return this.#child.exitCode === null && this.#child.signalCode === null && this.#child.pid !== undefined;
    }
    /** Every JSON line read so far. */
    lines() {
        return [...this.#lines];
    }
    /**
     * The first line (read so far or from now on) that satisfies `pred`;
     * rejects with {@link NodeStartFailed} when the process exits first or
     * `timeoutMs` passes.
     */
    waitFor(pred, timeoutMs, what = "a line") {
        return new Promise((resolve, reject) => {
            let seen = 0;
            const done = () => {
                clearTimeout(timer);
                this.#waiters.delete(check);
            };
            const check = () => {
                for (; seen < this.#lines.length; seen++) {
                    const v = this.#lines[seen];
                    if (pred(v)) {
                        done();
                        resolve(v);
                        return;
                    }
                }
                if (this.#eof) {
                    done();
                    reject(new NodeStartFailed(`${this.name} exited (status ${this.#child.exitCode ?? this.#child.signalCode}) before ${what}${this.stderrTail()}`));
                }
            };
            const timer = setTimeout(() => {
                done();
                reject(new NodeStartFailed(`${this.name}: no ${what} after ${Math.round(timeoutMs / 1000)} s${this.stderrTail()}`));
            }, timeoutMs);
            this.#waiters.add(check);
            check();
        });
    }
    /** The first line `{"event": event, ...match}`. */
    waitEvent(event, timeoutMs, match = {}) {
        return this.waitFor((v) => v["event"] === event && Object.entries(match).every(([k, m]) => v[k] === m), timeoutMs, `event '${event}'`);
    }
    /** The last `n` lines of the process's stderr, for error messages. */
    stderrTail(n = 15) {
        let text;
        try {
            text = readFileSync(this.stderrFile, "utf8");
        }
        catch {
            return "";
        }
        const tail = text.trim().split("\n").slice(-n).filter(Boolean);
        return tail.length ? `\n--- stderr of ${this.name} ---\n${tail.join("\n")}` : "";
    }
    /** Sends a signal (nothing when it has exited). */
    signal(sig) {
        if (this.alive) {
            try {
                this.#child.kill(sig);
            }
            catch {
                // Gone meanwhile.
            }
        }
    }
    /** SIGTERM, then SIGKILL after `timeoutMs`; resolves with the exit code (or signal). */
    async terminate(timeoutMs = 10_000) {
        // The child is unref'd: while we wait for it, something must keep the
        // event loop alive, or the wait ends with the loop, unresolved.
        const keepAlive = setInterval(() => undefined, 1_000);
        try {
            if (this.alive) {
                this.signal("SIGTERM");
                let timer;
                const late = new Promise((ok) => {
                    timer = setTimeout(() => ok("late"), timeoutMs);
                });
                const r = await Promise.race([this.exited, late]);
                clearTimeout(timer);
                if (r === "late")
                    this.signal("SIGKILL");
            }
            return await this.exited;
        }
        finally {
            clearInterval(keepAlive);
        }
    }
    /** SIGKILL: no chance to clean anything up. */
    async kill() {
        const keepAlive = setInterval(() => undefined, 1_000);
        try {
            this.signal("SIGKILL");
            return await this.exited;
        }
        finally {
            clearInterval(keepAlive);
        }
    }
    /** For `console.log`. */
    toString() {
        return `NodeProcess(${this.name} pid=${this.pid} ${this.alive ? "running" : `exited ${this.returnCode}`})`;
    }
}
/** Whether the API `info` describes answers `GET /v1/status` with its token. */
export async function probe(info, timeoutMs = 5000) {
    const c = Client.fromInfo(info, { timeoutMs });
    try {
        await c.status();
        return true;
    }
    catch {
        return false;
    }
    finally {
        c.close();
    }
}
function delay(ms) {
    return new Promise((ok) => setTimeout(ok, ms));
}
/**
 * Waits until `dataDir/api.json` exists (and is not `stale`) and its API
 * answers; rejects with {@link NodeStartFailed} when `proc` exits first or
 * the time is up ({@link NodeNotRunning} without `proc`).
 */
export async function waitForApi(dataDir, timeoutMs, proc, stale) {
    const deadline = Date.now() + timeoutMs;
    let last = null;
    for (;;) {
        if (proc && !proc.alive) {
            throw new NodeStartFailed(`${proc.name} exited (status ${proc.returnCode}) before writing ${join(dataDir, API_FILE)}${proc.stderrTail()}`);
        }
        try {
            const info = await loadApiInfo(dataDir);
            if (!stale || info.token !== stale.token) {
                if (await probe(info))
                    return info;
                last = new NodeNotRunning(`the API of ${dataDir} does not answer yet`);
            }
        }
        catch (e) {
            if (!(e instanceof NodeNotRunning || e instanceof BadResponse))
                throw e;
            last = e;
        }
        if (Date.now() >= deadline) {
            const why = last instanceof AgentMeshError ? last.message : String(last);
            const msg = `no working ${API_FILE} in ${dataDir} after ${Math.round(timeoutMs / 1000)} s (${why})`;
            if (proc)
                throw new NodeStartFailed(msg + proc.stderrTail());
            throw new NodeNotRunning(msg);
        }
        await delay(100);
    }
}
/** Removes a stale `api.json` (left by a node that was killed). */
export async function removeApiFile(dataDir) {
    await unlink(join(dataDir, API_FILE)).catch(() => undefined);
}
//# sourceMappingURL=process.js.map