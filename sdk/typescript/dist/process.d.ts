/**
 * Node processes: finding the binaries, starting them, reading the JSON
 * event lines they print, waiting for `api.json`, stopping them. Processes
 * started here die with this Node.js process (unless detached): on Linux
 * the kernel sends them SIGTERM when it dies, however it dies (`setpriv
 * --pdeathsig`), and on exit they are stopped and waited for.
 *
 * @module
 */
import { type ApiInfo, type JsonObject } from "./models.js";
/** Environment variable naming the directory of the AgentMesh binaries. */
export declare const BIN_DIR_ENV = "AGENTMESH_BIN_DIR";
/** The AgentMesh binaries this package runs. */
export type BinaryName = "agentmesh" | "agentmesh-sim";
/**
 * The AgentMesh source tree this package sits in, if any (a directory with
 * `Cargo.toml` and `sdk/`), looked up from this file and from the working
 * directory.
 */
export declare function repoRoot(): string | null;
/**
 * The path of AgentMesh binary `name`: in `$AGENTMESH_BIN_DIR`, else next
 * to `agentmesh-sim` on the `PATH`, else in the source tree's
 * `target/debug`. Throws {@link BinaryNotFound}.
 */
export declare function findBinary(name: BinaryName): string;
/** Why the binaries cannot be used, or `null` when all are there. */
export declare function missingBinaries(names?: readonly BinaryName[]): string | null;
/** Whether process `pid` is gone (a zombie waiting for its reaper is gone too). */
export declare function processGone(pid: number): boolean;
/** Runs `f` (synchronously) when this process exits; returns a function that cancels it. */
export declare function atExit(f: () => void): () => void;
/** Options of a {@link NodeProcess}. */
export interface NodeProcessOptions {
    /** More environment variables. */
    env?: Record<string, string>;
    /** Write stdout to this file (and follow it) instead of a pipe. */
    stdoutFile?: string;
    /** Write stderr to this file (default `<dataDir>/stderr.log`). */
    stderrFile?: string;
    /** Let the process outlive this one (its own session, no parent-death signal, stdout to a file). */
    detach?: boolean;
}
/**
 * A node process that prints one JSON object per line. Its lines are
 * collected as they come; {@link waitFor} waits for one that matches.
 */
export declare class NodeProcess {
    #private;
    /** A name for messages (`alice`, `bootstrap`, …). */
    readonly name: string;
    /** The command line. */
    readonly argv: readonly string[];
    /** The data directory (also the working directory). */
    readonly dataDir: string;
    /** Where its stderr goes. */
    readonly stderrFile: string;
    /** Whether it is stopped when this process exits (not detached). */
    readonly stopAtExit: boolean;
    /** Resolves with the exit code (or the signal's name) once it exited. */
    readonly exited: Promise<number | string>;
    constructor(name: string, argv: readonly string[], dataDir: string, options?: NodeProcessOptions);
    /** The process id. */
    get pid(): number;
    /** The exit code, `null` while it runs (or when a signal ended it). */
    get returnCode(): number | null;
    /** Whether it still runs. */
    get alive(): boolean;
    /** Every JSON line read so far. */
    lines(): JsonObject[];
    /**
     * The first line (read so far or from now on) that satisfies `pred`;
     * rejects with {@link NodeStartFailed} when the process exits first or
     * `timeoutMs` passes.
     */
    waitFor(pred: (line: JsonObject) => boolean, timeoutMs: number, what?: string): Promise<JsonObject>;
    /** The first line `{"event": event, ...match}`. */
    waitEvent(event: string, timeoutMs: number, match?: Record<string, unknown>): Promise<JsonObject>;
    /** The last `n` lines of the process's stderr, for error messages. */
    stderrTail(n?: number): string;
    /** Sends a signal (nothing when it has exited). */
    signal(sig: NodeJS.Signals): void;
    /** SIGTERM, then SIGKILL after `timeoutMs`; resolves with the exit code (or signal). */
    terminate(timeoutMs?: number): Promise<number | string>;
    /** SIGKILL: no chance to clean anything up. */
    kill(): Promise<number | string>;
    /** For `console.log`. */
    toString(): string;
}
/** Whether the API `info` describes answers `GET /v1/status` with its token. */
export declare function probe(info: ApiInfo, timeoutMs?: number): Promise<boolean>;
/**
 * Waits until `dataDir/api.json` exists (and is not `stale`) and its API
 * answers; rejects with {@link NodeStartFailed} when `proc` exits first or
 * the time is up ({@link NodeNotRunning} without `proc`).
 */
export declare function waitForApi(dataDir: string, timeoutMs: number, proc?: NodeProcess, stale?: ApiInfo): Promise<ApiInfo>;
/** Removes a stale `api.json` (left by a node that was killed). */
export declare function removeApiFile(dataDir: string): Promise<void>;
//# sourceMappingURL=process.d.ts.map