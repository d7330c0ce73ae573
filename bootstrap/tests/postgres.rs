//! Several `agentmesh-bootstrap` processes on one real PostgreSQL server:
//! one registry, one transparency log, one replay store; a server restart
//! and a bootstrap killed while requests flow.
//!
//! Each test starts its own PostgreSQL cluster (`initdb` + `pg_ctl`, from
//! the Debian package `postgresql`) in a temporary directory on a free
//! loopback port, as the user `postgres` when run as root. Where PostgreSQL
//! is not installed the tests say so and pass; `.ci/run` sets
//! `AGENTMESH_REQUIRE_POSTGRES=1`, which turns that into a failure.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use futures::{future::join_all, StreamExt};
use serde_json::Value;

use agentmesh_node::{
    registry::{Operation, ReceiptBody, Registration, SessionReceipt, SignedRequest},
    trust::transparency::{ConsistencyProof, SignedTreeHead},
    Amid, Identity,
};

mod support;

use support::{now_ms, start, Http, Server, WAIT};

const PASS: &str = "shared registry passphrase";

/// A PostgreSQL cluster of this test's own.
struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as, when this process is root.
    user: Option<&'static str>,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The directory holding `initdb` and `pg_ctl`.
fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("AGENTMESH_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// Starts a cluster, or says why it cannot and returns `None` (a
    /// failure when `AGENTMESH_REQUIRE_POSTGRES` is set).
    fn start() -> Option<Self> {
        let skip = |why: &str| {
            if std::env::var_os("AGENTMESH_REQUIRE_POSTGRES").is_some() {
                panic!("PostgreSQL is required here: {why}");
            }
            eprintln!("skipped: {why} (apt-get install postgresql to run this test)");
            None
        };
        let Some(bin) = pg_bin() else {
            return skip("no PostgreSQL server binaries under /usr/lib/postgresql");
        };
        let user = if is_root() {
            // The server refuses to run as root.
            let exists = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !exists {
                return skip("running as root and there is no `postgres` user to run the server");
            }
            Some("postgres")
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        if let Some(u) = user {
            let ok = Command::new("chown")
                .args(["-R", u])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the cluster directory");
        }
        let pg = Self {
            data: dir.path().join("data"),
            _dir: dir,
            bin,
            port: free_port(),
            user,
        };
        let data = pg.data.to_str().unwrap().to_owned();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "agentmesh",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.pg_ctl_start();
        Some(pg)
    }

    /// `tool` of the server's binaries, run as the server's user.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .expect("PostgreSQL tool runs");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let data = self.data.to_str().unwrap();
        let log = self.data.join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port, data
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "120",
                "-o",
                &opts,
                "start",
            ],
        );
    }

    /// Stops the server (fast shutdown: sessions are cut, commits kept).
    fn stop(&self) {
        let data = self.data.to_str().unwrap();
        self.run(
            "pg_ctl",
            &["-D", data, "-w", "-t", "120", "-m", "fast", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://agentmesh@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap().to_owned();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

async fn bootstrap(dir: &Path, pg: &Postgres, join: Option<&Server>) -> Server {
    let url = pg.url();
    let mut args = vec!["--http", "127.0.0.1:0", "--database", url.as_str()];
    if let Some(j) = join {
        args.extend(["--bootstrap", j.addr.as_str()]);
    }
    start(dir, PASS, &args).await
}

fn register(who: &Identity, name: &str, caps: &[&str]) -> SignedRequest {
    let op = Operation::Register(Registration::new(
        name,
        caps.iter().map(|c| (*c).to_owned()).collect(),
    ));
    SignedRequest::sign(who, op, now_ms()).unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn head(http: &Http, root: &Amid) -> SignedTreeHead {
    let (s, v) = http.get("/v1/log/head").await;
    assert_eq!(s, 200, "{v}");
    let head: SignedTreeHead = serde_json::from_value(v).unwrap();
    head.verify(&root.verifying_key().unwrap())
        .expect("a head signed by the registry root");
    head
}

/// Checks, on `http`, that `older` and `newer` are heads of one log.
async fn consistent(http: &Http, older: &SignedTreeHead, newer: &SignedTreeHead) {
    let (s, v) = http
        .get(&format!(
            "/v1/log/consistency?first={}&second={}",
            older.size, newer.size
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let proof: ConsistencyProof = serde_json::from_value(v["proof"].clone()).unwrap();
    proof
        .verify(older, newer)
        .expect("every head is consistent with every later one");
}

async fn sessions_of(http: &Http, amid: &Amid) -> u64 {
    let (s, v) = http
        .get(&format!("/v1/registry/reputation/score?amid={amid}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["sessions"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bootstraps_on_one_postgres_serve_one_registry() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = bootstrap(&dir.path().join("a"), &pg, None).await;
    // The second node adopts the registry root the first put in the
    // database, and joins the first's DHT.
    let b = bootstrap(&dir.path().join("b"), &pg, Some(&a)).await;
    assert_eq!(a.root, b.root, "one registry, one root key");
    let root: Amid = a.root.parse().unwrap();
    let (ha, hb) = (Http::new(&a.url), Http::new(&b.url));

    // Register on A; look up and search on B.
    let alice = Identity::generate();
    let req = register(&alice, "Alice", &["weather/forecast"]);
    let (s, v) = ha.post("/v1/registry/register", &req).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = hb
        .get(&format!("/v1/registry/lookup?amid={}", alice.amid()))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["display_name"], "Alice");
    let (s, v) = hb.get("/v1/registry/search?capability=weather").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["results"][0]["amid"], alice.amid().to_string());

    // The same signed request, replayed to the other node: refused.
    let (s, v) = hb.post("/v1/registry/register", &req).await;
    assert_eq!((s, code(&v)), (409, "replayed"), "{v}");
    let (s, v) = ha.post("/v1/registry/register", &req).await;
    assert_eq!((s, code(&v)), (409, "replayed"), "{v}");

    // Registrations through both nodes at once: one log, one sequence.
    let first = head(&ha, &root).await;
    assert_eq!(first.size, 1, "alice's key binding");
    let agents: Vec<Identity> = (0..16).map(|_| Identity::generate()).collect();
    let answers = join_all(agents.iter().enumerate().map(|(i, who)| {
        let (http, req) = (
            if i % 2 == 0 { &ha } else { &hb },
            register(who, "Agent", &["chat"]),
        );
        async move { http.post("/v1/registry/register", &req).await }
    }))
    .await;
    for (s, v) in &answers {
        assert_eq!(*s, 200, "{v}");
    }
    let (ha_head, hb_head) = (head(&ha, &root).await, head(&hb, &root).await);
    assert_eq!(ha_head.size, 17, "one leaf per registration, none lost");
    assert_eq!((ha_head.size, ha_head.root), (hb_head.size, hb_head.root));
    consistent(&hb, &first, &ha_head).await;
    consistent(&ha, &first, &hb_head).await;
    let (_, v) = ha.get("/v1/registry/search?capability=chat").await;
    assert_eq!(v["count"], 16, "{v}");

    // B's cached score inputs follow A's writes.
    let (x, y) = (&agents[0], &agents[1]);
    assert_eq!(sessions_of(&hb, &y.amid()).await, 0);
    let receipt = SessionReceipt::sign(
        &ReceiptBody::new([3; 16], x.amid(), y.amid(), true, now_ms()),
        x,
        y,
    )
    .unwrap();
    let (s, v) = ha
        .signed(
            "/v1/registry/reputation/session",
            x,
            Operation::Session { receipt },
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(sessions_of(&hb, &y.amid()).await, 1, "B sees A's receipt");
}

/// Registers `who` through `http` until it is acknowledged or `deadline`;
/// the refusals before must be clean (an error status with a JSON error).
async fn register_until_ok(http: &Http, who: &Identity, deadline: tokio::time::Instant) -> u32 {
    let mut refused = 0;
    loop {
        match http
            .try_call(
                "POST",
                "/v1/registry/register",
                Some(serde_json::to_vec(&register(who, "Agent", &["chat"])).unwrap()),
            )
            .await
        {
            Some((200, _)) => return refused,
            Some((s, v)) => {
                assert!(s >= 500, "only the database's absence may refuse: {s} {v}");
                assert!(!code(&v).is_empty(), "a typed error: {v}");
                refused += 1;
            }
            None => refused += 1,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registry never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_and_a_killed_bootstrap_lose_nothing_acknowledged() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("a");
    let mut a = bootstrap(&a_dir, &pg, None).await;
    let b = bootstrap(&dir.path().join("b"), &pg, Some(&a)).await;
    let root: Amid = a.root.parse().unwrap();
    let (ha, hb) = (Http::new(&a.url), Http::new(&b.url));
    let before = head(&hb, &root).await;

    // The server goes away while requests arrive: they are refused
    // cleanly, and succeed once it is back.
    let mut acknowledged = Vec::new();
    let first = Identity::generate();
    assert_eq!(
        ha.post(
            "/v1/registry/register",
            &register(&first, "Agent", &["chat"])
        )
        .await
        .0,
        200
    );
    acknowledged.push(first.amid());
    pg.stop();
    let during = Identity::generate();
    let (s, v) = ha
        .post(
            "/v1/registry/register",
            &register(&during, "Agent", &["chat"]),
        )
        .await;
    assert!(s >= 500, "refused while the database is away: {s} {v}");
    assert!(!code(&v).is_empty(), "{v}");
    pg.pg_ctl_start();
    let deadline = tokio::time::Instant::now() + WAIT;
    register_until_ok(&ha, &during, deadline).await;
    acknowledged.push(during.amid());
    let after = Identity::generate();
    register_until_ok(&hb, &after, deadline).await;
    acknowledged.push(after.amid());

    // A is killed while registrations flow through it.
    let flowing: Vec<Identity> = (0..24).map(|_| Identity::generate()).collect();
    let kill_after = 8;
    let mut answered: Vec<(usize, u16)> = Vec::new();
    let mut sends = Vec::new();
    let ha_ref = &ha;
    for (i, who) in flowing.iter().enumerate() {
        let body = serde_json::to_vec(&register(who, "Agent", &["chat"])).unwrap();
        sends.push(async move {
            (
                i,
                ha_ref
                    .try_call("POST", "/v1/registry/register", Some(body))
                    .await,
            )
        });
    }
    let mut sends = futures::stream::FuturesUnordered::from_iter(sends);
    let mut killed = false;
    let mut acked_in_flow = 0;
    while let Some((i, r)) = sends.next().await {
        let status = r.map(|(s, _)| s).unwrap_or(0);
        answered.push((i, status));
        acked_in_flow += usize::from(status == 200);
        if !killed && acked_in_flow >= kill_after {
            a.child.start_kill().unwrap();
            killed = true;
        }
    }
    let _ = a.child.wait().await;
    for (i, status) in &answered {
        assert!(
            matches!(status, 0 | 200) || *status >= 500,
            "a clean answer or none: {status}"
        );
        if *status == 200 {
            acknowledged.push(flowing[*i].amid());
        }
    }
    assert!(killed, "A was killed while registrations flowed");
    assert!(acknowledged.len() >= 3 + kill_after);

    // Everything acknowledged is there, read through B; the log is
    // consistent with its head from before.
    for amid in &acknowledged {
        let (s, v) = hb.get(&format!("/v1/registry/lookup?amid={amid}")).await;
        assert_eq!(s, 200, "acknowledged, so stored: {v}");
    }
    let now = head(&hb, &root).await;
    assert!(now.size >= before.size + acknowledged.len() as u64);
    consistent(&hb, &before, &now).await;

    // An agent given both bootstrap nodes joins through B while A is down,
    // and finds another such agent's card.
    let agents = tempfile::tempdir().unwrap();
    let join = |name: &'static str| {
        let boots: Vec<agentmesh_node::Multiaddr> = [&a.addr, &b.addr]
            .iter()
            .map(|m| m.parse().unwrap())
            .collect();
        let dir = agents.path().join(name);
        async move {
            agentmesh_node::Node::builder(support::fast_config())
                .data_dir(dir)
                .passphrase(agentmesh_node::Passphrase::new(name))
                .bootstraps(boots)
                .spawn()
                .await
                .expect("joins through the bootstrap node that answers")
        }
    };
    let (carol, dave) = (join("carol").await, join("dave").await);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if carol.lookup(&dave.amid()).await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol never found dave's card"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A comes back on the same data directory: same root, same log.
    let a2 = bootstrap(&a_dir, &pg, Some(&b)).await;
    assert_eq!(a2.root, a.root);
    let ha2 = Http::new(&a2.url);
    let again = head(&ha2, &root).await;
    assert!(again.size >= now.size);
    consistent(&ha2, &now, &again).await;
}
