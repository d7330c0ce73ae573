//! `agentmesh` processes for the CLI tests: `agentmesh run --json` agents
//! with their output lines, and one-shot commands against them.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// How long any one wait lasts.
pub const WAIT: Duration = Duration::from_secs(90);
const PASSPHRASE: &str = "cli tests";

/// `agentmesh --data-dir <dir>` with the test passphrase, and none of the
/// caller's own settings.
pub fn agentmesh(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agentmesh"));
    c.env("AGENTMESH_PASSPHRASE", PASSPHRASE)
        .env_remove("AGENTMESH_PASSPHRASE_FILE")
        .env_remove("AGENTMESH_HOME")
        .env_remove("AGENTMESH_BOOTSTRAP")
        .arg("--data-dir")
        .arg(dir)
        .kill_on_drop(true);
    c
}

/// An `agentmesh run --json` process and its output lines.
pub struct Agent {
    pub dir: PathBuf,
    pub amid: String,
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Agent {
    /// Starts an agent in `dir` (joining through `bootstrap`, if any) and
    /// waits until it listens.
    pub async fn start(dir: PathBuf, bootstrap: Option<&str>) -> Agent {
        let mut cmd = agentmesh(&dir);
        cmd.args(["--json", "run"]);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("agentmesh run starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut a = Agent {
            dir,
            amid: String::new(),
            child,
            lines,
            seen: Vec::new(),
        };
        let started = a.wait(|v| v["event"] == "started").await;
        a.amid = started["amid"].as_str().expect("amid").to_owned();
        listen_addr(&a.dir, |_| true).await;
        a
    }

    /// The next output line that passes `pred` (lines passed over are kept
    /// for later waits).
    pub async fn wait(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("expected output in time; saw {:?}", self.seen))
                .expect("agent still running");
            if pred(&v) {
                return v;
            }
            self.seen.push(v);
        }
    }

    /// Waits until a peer stored the agent's card.
    pub async fn published(&mut self) {
        self.wait(|v| v["event"] == "card_published" && v["stored_remotely"] == true)
            .await;
    }

    /// Stops the agent cleanly (SIGTERM: it republishes its card as
    /// offline) and waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// The first listen address of the agent in `dir` that passes `pred`, from
/// `agentmesh status` once it listens (the `listening` events may be out
/// before `run` subscribes to events).
pub async fn listen_addr(dir: &Path, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = agentmesh(dir)
            .args(["--json", "status"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("agentmesh status runs");
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let found = status["listen_addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|a| pred(a));
        if let Some(a) = found {
            return a.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never listened",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one command against the agent in `dir`; returns (success, stdout,
/// stderr).
pub async fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        agentmesh(dir).args(args).stdin(Stdio::null()).output(),
    )
    .await
    .expect("the command ends in time")
    .expect("cli runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs one command that must succeed; returns its stdout.
pub async fn cli(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = run(dir, args).await;
    assert!(ok, "agentmesh {args:?}: {err}");
    out
}

/// `agentmesh <args>` on a terminal (a pseudo-terminal from util-linux
/// `script`, which copies what the command wrote to stdout and stderr to
/// its own stdout): what the terminal showed.
pub async fn cli_on_terminal(dir: &Path, args: &[&str]) -> String {
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let cmd = [env!("CARGO_BIN_EXE_agentmesh"), "--data-dir"]
        .into_iter()
        .map(quote)
        .chain([quote(dir.to_str().expect("utf-8 path"))])
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ");
    let out = tokio::time::timeout(
        WAIT,
        Command::new("script")
            .args(["-qefc", &cmd, "/dev/null"])
            .env("TERM", "xterm")
            .env("AGENTMESH_PASSPHRASE", PASSPHRASE)
            .env_remove("AGENTMESH_PASSPHRASE_FILE")
            .env_remove("AGENTMESH_HOME")
            .env_remove("AGENTMESH_BOOTSTRAP")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ends in time")
    .expect("util-linux `script` runs");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "agentmesh {args:?}: {shown}");
    shown
}
