//! Network namespaces for NAT tests: a "public" segment (a bridge in its own
//! namespace, addresses in 198.51.100.0/24, a documentation range) with
//! hosts on it, and hosts on private LANs (10.N.0.0/24) behind NAT routers
//! made with nftables. Nothing is routed outside the namespaces.
//!
//! Every namespace is named `amnat-<pid>-<lab>-<role>`, so parallel tests
//! and processes do not clash; a [`Lab`] deletes its namespaces when dropped
//! (also while unwinding from a panic), and [`Lab::new`] first deletes
//! namespaces left by processes that no longer run. Creating one needs root
//! (or `CAP_NET_ADMIN`), `ip` (iproute2) and `nft` (nftables).
//!
//! The four NAT kinds, by mapping and filtering (RFC 4787 terms):
//!
//! | kind | mapping | filtering |
//! |---|---|---|
//! | [`NatKind::FullCone`] | endpoint-independent | endpoint-independent |
//! | [`NatKind::AddressRestricted`] | endpoint-independent | address-dependent |
//! | [`NatKind::PortRestricted`] | endpoint-independent | address-and-port-dependent |
//! | [`NatKind::Symmetric`] | address-and-port-dependent | address-and-port-dependent |
//!
//! [`Lab::probe`] checks a router's actual behaviour with UDP sockets inside
//! the namespaces, so the labels can be verified rather than trusted.

use std::{
    fmt,
    io::Write,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    str::FromStr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

/// Prefix of every namespace this module creates.
pub const PREFIX: &str = "amnat";
/// The public segment's network.
pub const PUBLIC_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
/// How long a NAT keeps an idle endpoint-independent mapping open to
/// unsolicited senders.
const MAPPING_TIMEOUT_S: u32 = 300;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// How a NAT router maps and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering: once a host behind it
    /// sent from a port, anyone can reach that port.
    FullCone,
    /// Endpoint-independent mapping; inbound allowed from addresses the
    /// host sent to (any port).
    AddressRestricted,
    /// Endpoint-independent mapping; inbound allowed only from the exact
    /// address and port the host sent to. Linux's plain masquerade.
    PortRestricted,
    /// A new random external port per destination; inbound only from that
    /// destination.
    Symmetric,
}

impl NatKind {
    /// All four, from the most open to the most closed.
    pub const ALL: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// The behaviour this kind should show to [`Lab::probe`].
    pub fn expected(self) -> NatBehaviour {
        let (independent_mapping, filtering) = match self {
            NatKind::FullCone => (true, Filtering::EndpointIndependent),
            NatKind::AddressRestricted => (true, Filtering::AddressDependent),
            NatKind::PortRestricted => (true, Filtering::AddressAndPortDependent),
            NatKind::Symmetric => (false, Filtering::AddressAndPortDependent),
        };
        NatBehaviour {
            independent_mapping,
            filtering,
        }
    }

    fn ruleset(self, host: Ipv4Addr) -> String {
        let (sets, track, inbound, masquerade) = match self {
            NatKind::FullCone => (
                format!(
                    "set mapped {{ type inet_service; flags dynamic,timeout; timeout {MAPPING_TIMEOUT_S}s; }}"
                ),
                r#"oifname "wan" meta l4proto udp update @mapped { udp sport }"#.to_owned(),
                format!(r#"iifname "wan" udp dport @mapped dnat to {host}"#),
                "masquerade",
            ),
            NatKind::AddressRestricted => (
                format!(
                    "set contacted {{ type ipv4_addr . inet_service; flags dynamic,timeout; timeout {MAPPING_TIMEOUT_S}s; }}"
                ),
                r#"oifname "wan" meta l4proto udp update @contacted { ip daddr . udp sport }"#
                    .to_owned(),
                format!(r#"iifname "wan" ip saddr . udp dport @contacted dnat to {host}"#),
                "masquerade",
            ),
            NatKind::PortRestricted => (String::new(), String::new(), String::new(), "masquerade"),
            NatKind::Symmetric => (
                String::new(),
                String::new(),
                String::new(),
                "masquerade fully-random",
            ),
        };
        format!(
            r#"
table ip amnat {{
    {sets}
    chain track {{
        type filter hook postrouting priority filter; policy accept;
        {track}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masquerade}
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        {inbound}
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" ct status dnat accept
        iifname "wan" drop
    }}
}}
"#
        )
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::FullCone => "full-cone",
            NatKind::AddressRestricted => "address-restricted",
            NatKind::PortRestricted => "port-restricted",
            NatKind::Symmetric => "symmetric",
        })
    }
}

impl FromStr for NatKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        NatKind::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| anyhow!("unknown NAT kind {s:?} (full-cone, address-restricted, port-restricted, symmetric)"))
    }
}

/// Which unsolicited senders reach a mapped port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone.
    EndpointIndependent,
    /// Any port of an address the host sent to.
    AddressDependent,
    /// Only the address and port the host sent to.
    AddressAndPortDependent,
}

/// What [`Lab::probe`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatBehaviour {
    /// The same external address and port for every destination.
    pub independent_mapping: bool,
    /// Who can send to the mapping.
    pub filtering: Filtering,
}

/// A namespace with one interface on a network.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl Host {
    /// A UDP socket bound inside this host's namespace on `port` (0: any).
    pub fn udp_socket(&self, port: u16) -> Result<UdpSocket> {
        let addr = SocketAddrV4::new(self.ip, port);
        in_netns(&self.ns, move || {
            UdpSocket::bind(addr).map_err(anyhow::Error::from)
        })
    }

    /// A QUIC listen address on this host's address with an OS-chosen port.
    pub fn quic_listen(&self) -> String {
        format!("/ip4/{}/udp/0/quic-v1", self.ip)
    }

    /// Runs `exe` inside this host's namespace.
    pub fn launcher(&self, exe: &std::path::Path) -> crate::process::Launcher {
        crate::process::Launcher {
            exe: exe.to_owned(),
            netns: Some(self.ns.clone()),
        }
    }
}

/// A host on a private LAN behind a NAT router.
#[derive(Debug, Clone)]
pub struct NatHost {
    /// The host (its LAN address).
    pub host: Host,
    /// The router's namespace.
    pub router_ns: String,
    /// The router's address on the public segment.
    pub public_ip: Ipv4Addr,
    /// How the router translates.
    pub kind: NatKind,
}

/// A set of namespaces: one public segment and any number of hosts.
/// Dropping it deletes them all.
#[derive(Debug)]
pub struct Lab {
    name: String,
    bridge_ns: String,
    namespaces: Vec<String>,
    next_public: u8,
    next_lan: u8,
}

impl Lab {
    /// Creates the public segment. Fails with a clear message when not run
    /// as root or when `ip` / `nft` are missing.
    pub fn new() -> Result<Self> {
        check_tools()?;
        sweep_stale();
        let name = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            bridge_ns: format!("{name}-net"),
            name,
            namespaces: Vec::new(),
            next_public: 10,
            next_lan: 1,
        };
        let ns = lab.bridge_ns.clone();
        lab.add_ns(&ns)?;
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Plugs namespace `ns` into the public segment as interface `ifname`
    /// with the next public address.
    fn plug_public(&mut self, ns: &str, ifname: &str) -> Result<Ipv4Addr> {
        let n = self.next_public;
        self.next_public = n
            .checked_add(1)
            .filter(|n| *n < 255)
            .context("public segment full")?;
        let o = PUBLIC_NET.octets();
        let addr = Ipv4Addr::new(o[0], o[1], o[2], n);
        let port = format!("p{n}");
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns,
        ])?;
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            ifname,
        ])?;
        ip(&["-n", ns, "link", "set", ifname, "up"])?;
        Ok(addr)
    }

    /// A host on the public segment.
    pub fn public_host(&mut self, role: &str) -> Result<Host> {
        let ns = format!("{}-{role}", self.name);
        self.add_ns(&ns)?;
        let ip = self.plug_public(&ns, "eth0")?;
        Ok(Host { ns, ip })
    }

    /// A host on its own LAN behind a NAT router of `kind`.
    pub fn nat_host(&mut self, role: &str, kind: NatKind) -> Result<NatHost> {
        let lan = self.next_lan;
        self.next_lan = lan.checked_add(1).context("too many LANs")?;
        let router_ns = format!("{}-{role}-nat", self.name);
        let ns = format!("{}-{role}", self.name);
        self.add_ns(&router_ns)?;
        self.add_ns(&ns)?;
        let public_ip = self.plug_public(&router_ns, "wan")?;
        let gw = Ipv4Addr::new(10, lan, 0, 1);
        let host_ip = Ipv4Addr::new(10, lan, 0, 2);
        ip(&[
            "-n", &router_ns, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        ip(&[
            "-n",
            &router_ns,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            "lan",
        ])?;
        ip(&["-n", &router_ns, "link", "set", "lan", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()])?;
        run(
            Command::new("ip").args([
                "netns",
                "exec",
                &router_ns,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward",
            ]),
            None,
        )?;
        run(
            Command::new("ip").args(["netns", "exec", &router_ns, "nft", "-f", "-"]),
            Some(&kind.ruleset(host_ip)),
        )
        .with_context(|| format!("loading the {kind} NAT rules"))?;
        Ok(NatHost {
            host: Host { ns, ip: host_ip },
            router_ns,
            public_ip,
            kind,
        })
    }

    /// Observes how `nat` maps and filters, with UDP from its host to two
    /// probe hosts on the public segment (created on first use).
    pub fn probe(&mut self, nat: &NatHost) -> Result<NatBehaviour> {
        let s1 = self.public_host(&format!("probe{}", self.next_public))?;
        let s2 = self.public_host(&format!("probe{}", self.next_public))?;
        let h = nat.host.udp_socket(0)?;
        let s1a = s1.udp_socket(0)?;
        let s1b = s1.udp_socket(0)?;
        let s2a = s2.udp_socket(0)?;
        for s in [&h, &s1a, &s1b, &s2a] {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
        }
        // Mapping seen by the first destination.
        h.send_to(b"m1", s1a.local_addr()?)?;
        let m1 = recv_token(&s1a, b"m1")?;
        // Filtering: an address never contacted, then another port of the
        // contacted address. Each is followed by a packet that must pass,
        // so its absence is known without waiting out a timeout.
        let from_other_address = delivered(&h, &s2a, m1, &s1a)?;
        let from_other_port = delivered(&h, &s1b, m1, &s1a)?;
        // Mapping seen by a second destination.
        h.send_to(b"m2", s2a.local_addr()?)?;
        let m2 = recv_token(&s2a, b"m2")?;
        let filtering = match (from_other_address, from_other_port) {
            (true, _) => Filtering::EndpointIndependent,
            (false, true) => Filtering::AddressDependent,
            (false, false) => Filtering::AddressAndPortDependent,
        };
        Ok(NatBehaviour {
            independent_mapping: m1 == m2,
            filtering,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "delete", &ns]) {
                tracing::warn!(%ns, error = %e, "namespace not deleted");
            }
        }
    }
}

/// Sends a probe from `from` to `mapping`, then a packet from `control`
/// that must arrive; true when the probe arrived too.
fn delivered(
    h: &UdpSocket,
    from: &UdpSocket,
    mapping: SocketAddr,
    control: &UdpSocket,
) -> Result<bool> {
    from.send_to(b"probe", mapping)?;
    control.send_to(b"control", mapping)?;
    let mut probe = false;
    let mut buf = [0u8; 64];
    loop {
        let (n, _) = h
            .recv_from(&mut buf)
            .context("the reply from the contacted address and port did not pass the NAT")?;
        match &buf[..n] {
            b"probe" => probe = true,
            b"control" => break,
            _ => {}
        }
    }
    // Veth delivery keeps the order of packets sent from one thread: the
    // probe, when it passes, is in before the control packet. Look again,
    // without blocking, in case it was queued behind.
    h.set_nonblocking(true)?;
    while let Ok((n, _)) = h.recv_from(&mut buf) {
        probe |= &buf[..n] == b"probe";
    }
    h.set_nonblocking(false)?;
    Ok(probe)
}

fn recv_token(s: &UdpSocket, token: &[u8]) -> Result<SocketAddr> {
    let mut buf = [0u8; 64];
    loop {
        let (n, from) = s.recv_from(&mut buf).with_context(|| {
            format!("probe {:?} did not arrive", String::from_utf8_lossy(token))
        })?;
        if &buf[..n] == token {
            return Ok(from);
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets
/// it creates stay in that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = PathBuf::from("/var/run/netns").join(ns);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd affects only this thread,
        // which exits when `f` returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// Environment variable that makes namespace tests fail, rather than skip,
/// when they cannot run (CI, which runs as root, sets it).
pub const REQUIRE_ENV: &str = "AGENTMESH_REQUIRE_NETNS";

/// Why network namespace tests cannot run here (not root, or `ip`/`nft`
/// missing), unless [`REQUIRE_ENV`] is set: then `None`, and the test goes
/// on to fail with the reason. A test returns early, saying why, when this
/// is `Some`.
pub fn skip_reason() -> Option<String> {
    if std::env::var_os(REQUIRE_ENV).is_some() {
        return None;
    }
    check_tools()
        .err()
        .map(|e| format!("{e} (set {REQUIRE_ENV}=1 to make this a failure)"))
}

/// Prints why a namespace test is skipped and returns `true`, or returns
/// `false` when it can (or must) run.
pub fn skip_test(name: &str) -> bool {
    match skip_reason() {
        Some(why) => {
            eprintln!("skipped {name}: {why}");
            true
        }
        None => false,
    }
}

fn check_tools() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "network namespace tests need root (CAP_NET_ADMIN): run them as root, e.g. \
             `sudo -E cargo test -p agentmesh-sim --test nat`"
        );
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!("`{tool}` not found: install {package} (apt-get install -y {package})");
        }
    }
    Ok(())
}

/// Deletes namespaces with our prefix whose creating process is gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(ns = name, "deleting a stale namespace");
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args), None)
}

/// Runs a shell script inside namespace `ns`.
pub(crate) fn sh(ns: &str, script: &str) -> Result<()> {
    run(
        Command::new("ip").args(["netns", "exec", ns, "sh", "-c", script]),
        None,
    )
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<()> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {shown}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
