//! Latency in user space: `tc netem` is not available everywhere, so a host
//! of a [`crate::netns::Lab`] can route everything it sends through a TUN
//! device whose packets a thread holds for a set time before handing them
//! back to the kernel, which then forwards them as usual.
//!
//! In the host's namespace, a policy rule sends locally generated packets
//! (`iif lo`) to table 100, whose default route is the TUN device; packets
//! written back into the device arrive with `iif tun0`, skip the rule and
//! follow the main table out of the host's real interface. Local
//! destinations are matched first by the `local` table, so they are not
//! delayed. A one-way delay `D` on both ends of a path gives it an RTT of
//! `2D`; through a relay that also delays, `4D`.

use std::{
    collections::VecDeque,
    fs::File,
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::{in_netns, ip, sh, Host};

/// The TUN device's name inside the host's namespace.
const DEVICE: &str = "amdelay0";
/// The routing table the rule points at.
const TABLE: &str = "100";
/// Packets held at most; later ones are dropped, as a router queue would.
const MAX_QUEUED: usize = 8192;
/// How often the reader looks at the stop flag.
const POLL_MS: i32 = 100;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A running delay line; dropping it stops it and removes its routes.
#[derive(Debug)]
pub struct DelayLine {
    ns: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    delayed: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl DelayLine {
    /// Packets delayed so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Packets dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = ip(&["-n", &self.ns, "rule", "del", "iif", "lo", "lookup", TABLE]);
    }
}

impl Host {
    /// Holds every packet this host sends for `delay` before it leaves.
    pub fn delay_egress(&self, delay: Duration) -> Result<DelayLine> {
        let tun = in_netns(&self.ns, open_tun)?;
        ip(&["-n", &self.ns, "link", "set", DEVICE, "up"])?;
        ip(&[
            "-n", &self.ns, "route", "add", "default", "dev", DEVICE, "table", TABLE,
        ])?;
        ip(&[
            "-n", &self.ns, "rule", "add", "iif", "lo", "lookup", TABLE, "pref", "100",
        ])?;
        // Packets coming back from the device carry our own source address
        // and are forwarded: allow both.
        sh(
            &self.ns,
            &format!(
                "echo 1 > /proc/sys/net/ipv4/ip_forward; \
                 echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter; \
                 echo 0 > /proc/sys/net/ipv4/conf/{DEVICE}/rp_filter; \
                 echo 1 > /proc/sys/net/ipv4/conf/{DEVICE}/accept_local"
            ),
        )?;
        let writer = tun.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let delayed = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let queue = Arc::new((
            Mutex::new(VecDeque::<(Instant, Vec<u8>)>::new()),
            Condvar::new(),
        ));
        let reader = {
            let (stop, queue, delayed, dropped) = (
                stop.clone(),
                queue.clone(),
                delayed.clone(),
                dropped.clone(),
            );
            std::thread::Builder::new()
                .name("delay-in".into())
                .spawn(move || read_loop(tun, delay, &stop, &queue, &delayed, &dropped))?
        };
        let sender = {
            let (stop, queue) = (stop.clone(), queue.clone());
            std::thread::Builder::new()
                .name("delay-out".into())
                .spawn(move || write_loop(writer, &stop, &queue))?
        };
        Ok(DelayLine {
            ns: self.ns.clone(),
            stop,
            threads: vec![reader, sender],
            delayed,
            dropped,
        })
    }
}

type Queue = (Mutex<VecDeque<(Instant, Vec<u8>)>>, Condvar);

fn read_loop(
    mut tun: File,
    delay: Duration,
    stop: &AtomicBool,
    queue: &Queue,
    delayed: &AtomicU64,
    dropped: &AtomicU64,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if ready <= 0 {
            continue;
        }
        let Ok(n) = tun.read(&mut buf) else {
            continue;
        };
        let (lock, cv) = queue;
        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_QUEUED {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        q.push_back((Instant::now() + delay, buf[..n].to_vec()));
        delayed.fetch_add(1, Ordering::Relaxed);
        cv.notify_one();
    }
    queue.1.notify_all();
}

fn write_loop(mut tun: File, stop: &AtomicBool, queue: &Queue) {
    let (lock, cv) = queue;
    loop {
        let next = {
            let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
            while q.is_empty() && !stop.load(Ordering::Relaxed) {
                q = cv
                    .wait_timeout(q, Duration::from_millis(POLL_MS as u64))
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            match q.pop_front() {
                Some(p) => p,
                None => return,
            }
        };
        let (at, packet) = next;
        let wait = at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        // A packet the kernel refuses is lost, as on a real link.
        let _ = tun.write(&packet);
    }
}

/// Creates the TUN device in the calling thread's namespace.
fn open_tun() -> Result<File> {
    let path = c"/dev/net/tun";
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!("open /dev/net/tun: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..DEVICE.len()].copy_from_slice(DEVICE.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is laid out as.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    Ok(file)
}
