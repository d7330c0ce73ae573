//! Real processes for the devnet and process tests: spawn a role of this
//! binary, read its JSON event lines, wait on events with timeouts, stop it
//! with SIGTERM or SIGKILL. Every process started here ends with the process
//! that started it, however that one ends (`PR_SET_PDEATHSIG`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// Passphrase the devnet gives its processes' keystores.
pub const DEVNET_PASSPHRASE: &str = "agentmesh-devnet";

/// What to run: a binary, optionally inside a network namespace (with
/// `ip netns exec`).
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The binary.
    pub exe: PathBuf,
    /// The namespace to run it in.
    pub netns: Option<String>,
}

impl From<&Path> for Launcher {
    fn from(exe: &Path) -> Self {
        Self {
            exe: exe.to_owned(),
            netns: None,
        }
    }
}

impl From<&PathBuf> for Launcher {
    fn from(exe: &PathBuf) -> Self {
        exe.as_path().into()
    }
}

impl From<&Launcher> for Launcher {
    fn from(l: &Launcher) -> Self {
        l.clone()
    }
}

impl Launcher {
    fn command(&self) -> Command {
        match &self.netns {
            None => Command::new(&self.exe),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.exe);
                c
            }
        }
    }
}

/// Member the harness adds to every JSON line: when it was read, in µs
/// since the harness's first read (see [`seen_at`]).
pub const SEEN_US: &str = "_seen_us";

fn seen_us() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

/// When the harness read a line, comparable between processes.
pub fn seen_at(v: &Value) -> Duration {
    Duration::from_micros(v[SEEN_US].as_u64().unwrap_or_default())
}

/// A child process that prints one JSON object per line.
#[derive(Debug)]
pub struct Proc {
    /// A name for messages.
    pub name: String,
    /// Its data directory.
    pub dir: PathBuf,
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Lines seen but not yet consumed by a wait.
    backlog: Vec<Value>,
    /// The last line read of each event, consumed or not.
    last: HashMap<String, Value>,
}

impl Proc {
    /// Starts `exe` with `args`, in data directory `dir`.
    pub fn spawn(
        name: &str,
        exe: impl Into<Launcher>,
        args: &[String],
        dir: &Path,
    ) -> Result<Self> {
        let exe = exe.into();
        let mut command = exe.command();
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (prctl, getppid, raise).
        unsafe {
            command.pre_exec(move || {
                // The child ends with us however we end (SIGKILL included):
                // the kernel sends it SIGTERM when the thread that started it
                // exits, and the runtime's threads live as long as we do.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // We may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
        let mut child = command
            .args(args)
            .env("AGENTMESH_PASSPHRASE", DEVNET_PASSPHRASE)
            .env_remove("AGENTMESH_PASSPHRASE_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} ({})", exe.exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut v) = serde_json::from_str::<Value>(&line) {
                    if let Some(o) = v.as_object_mut() {
                        o.insert(SEEN_US.into(), seen_us().into());
                    }
                    if tx.send(v).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            child,
            lines: rx,
            backlog: Vec::new(),
            last: HashMap::new(),
        })
    }

    /// Waits up to `timeout` for a line that satisfies `pred`; lines before
    /// it that do not match are kept for later waits.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Ok(self.backlog.remove(i));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv()).await;
            if let Ok(Some(v)) = &line {
                self.remember(v);
            }
            match line {
                Ok(Some(v)) if pred(&v) => return Ok(v),
                Ok(Some(v)) => self.backlog.push(v),
                Ok(None) => bail!("{} exited", self.name),
                Err(_) => bail!("{}: timed out after {timeout:?}", self.name),
            }
        }
    }

    /// Waits for an event named `event`.
    pub async fn wait_event(&mut self, timeout: Duration, event: &str) -> Result<Value> {
        self.wait_for(timeout, |v| v["event"] == event).await
    }

    /// Forgets the lines that earlier waits passed over, so the next wait
    /// sees only lines printed from now on (and any not yet read).
    pub fn clear_backlog(&mut self) {
        self.backlog.clear();
    }

    fn remember(&mut self, v: &Value) {
        if let Some(event) = v["event"].as_str() {
            self.last.insert(event.to_owned(), v.clone());
        }
    }

    /// The last line of `event` read so far, whether a wait consumed it
    /// or not.
    pub fn last_event(&self, event: &str) -> Option<&Value> {
        self.last.get(event)
    }

    /// Lines received so far that no wait consumed, and clears them.
    pub fn drain(&mut self) -> Vec<Value> {
        while let Ok(v) = self.lines.try_recv() {
            self.remember(&v);
            self.backlog.push(v);
        }
        std::mem::take(&mut self.backlog)
    }

    /// Stops with SIGTERM and waits (SIGKILL after 10 s).
    pub async fn terminate(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child's pid has no memory
            // effects.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(r) => {
                r?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                Err(anyhow!("{} did not stop on SIGTERM", self.name))
            }
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP` to freeze the process with its
    /// sockets open, `libc::SIGCONT` to let it go on).
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.child.id().context("the process has exited")?;
        // SAFETY: sending a signal to our own child's pid has no memory
        // effects.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            bail!(
                "signal {signal} to {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The process's resident memory in KiB (`VmRSS` in
    /// `/proc/<pid>/status`), while it runs.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("the process has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS line")
    }

    /// Kills with SIGKILL: no chance to flush anything.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Starts a bootstrap node; returns it and its first (QUIC) address.
pub async fn start_bootstrap(exe: impl Into<Launcher>, dir: &Path) -> Result<(Proc, String)> {
    let (p, addr, _) = start_bootstrap_with_registry(exe, dir, &[]).await?;
    Ok((p, addr))
}

/// Starts a bootstrap node with its registry, listening on `listen`
/// (defaults when empty); returns it, its first address and the
/// registry's base URL.
pub async fn start_bootstrap_with_registry(
    exe: impl Into<Launcher>,
    dir: &Path,
    listen: &[String],
) -> Result<(Proc, String, String)> {
    let mut args = vec![
        "bootstrap".into(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    for l in listen {
        args.push("--listen".into());
        args.push(l.clone());
    }
    let mut p = Proc::spawn("bootstrap", exe, &args, dir)?;
    let ready = p.wait_event(Duration::from_secs(60), "ready").await?;
    let addr = ready["addrs"][0]
        .as_str()
        .context("bootstrap printed no address")?
        .to_owned();
    let registry = ready["registry"]
        .as_str()
        .context("bootstrap printed no registry URL")?
        .to_owned();
    Ok((p, addr, registry))
}

/// Starts an agent joined through `bootstrap`; returns it and its AMID once
/// its card is published on another peer.
pub async fn start_agent(
    exe: impl Into<Launcher>,
    name: &str,
    dir: &Path,
    bootstrap: &str,
    extra: &[String],
) -> Result<(Proc, String)> {
    let mut args = vec![
        "agent".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--bootstrap".into(),
        bootstrap.to_owned(),
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(name, exe, &args, dir)?;
    let started = p.wait_event(Duration::from_secs(60), "started").await?;
    let amid = started["amid"].as_str().context("no amid")?.to_owned();
    p.wait_for(Duration::from_secs(60), |v| {
        v["event"] == "card_published" && v["stored_remotely"] == true
    })
    .await?;
    Ok((p, amid))
}

/// Starts a relay node joined through `bootstrap`, listening on `listen`
/// (defaults when empty); returns it and its addresses once it is ready.
pub async fn start_relay(
    exe: impl Into<Launcher>,
    dir: &Path,
    bootstrap: &str,
    listen: &[String],
    extra: &[String],
) -> Result<(Proc, Vec<String>)> {
    let mut args = vec![
        "relay".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--bootstrap".into(),
        bootstrap.to_owned(),
    ];
    for l in listen {
        args.push("--listen".into());
        args.push(l.clone());
    }
    args.extend_from_slice(extra);
    let mut p = Proc::spawn("relay", exe, &args, dir)?;
    let ready = p.wait_event(Duration::from_secs(60), "ready").await?;
    let addrs = ready["addrs"]
        .as_array()
        .context("relay printed no addresses")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        bail!("relay printed no addresses");
    }
    Ok((p, addrs))
}

/// Asks the agent whose data directory is `dir` to send `payload` to `to`,
/// through its control socket; the answer carries the receipt.
pub async fn control_send(
    dir: &Path,
    to: &str,
    payload: Value,
    timeout: Duration,
) -> Result<agentmesh_node::control::Response> {
    use agentmesh_node::control::{Client, Request};
    let mut c = Client::connect(dir).await.context("control socket")?;
    let request = Request::Send {
        to: to.into(),
        payload,
        capability: None,
        schema: None,
    };
    tokio::time::timeout(timeout, c.request(&request))
        .await
        .context("send did not answer in time")?
        .context("control request")
}

/// Asks the agent whose data directory is `dir` for its status, through its
/// control socket.
pub async fn control_status(dir: &Path) -> Result<agentmesh_node::NodeStatus> {
    use agentmesh_node::control::{Client, Request};
    let mut c = Client::connect(dir).await.context("control socket")?;
    let r = tokio::time::timeout(Duration::from_secs(30), c.request(&Request::Status))
        .await
        .context("status did not answer in time")?
        .context("control request")?;
    r.status.context("no status in the answer")
}
