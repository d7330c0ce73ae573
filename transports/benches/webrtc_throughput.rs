//! Bulk throughput of one WebRTC data channel (SCTP over DTLS over ICE on
//! loopback) against one stream of a direct libp2p QUIC connection.
//!
//! `cargo bench -p agentmesh-transports --bench webrtc_throughput`
//! (environment: `BENCH_MIB`, default 64, the bytes sent per run).

use std::{
    net::Ipv4Addr,
    pin::Pin,
    time::{Duration, Instant},
};

use agentmesh_transports::webrtc::{handshake, Role, WebRtcConfig};
use futures::{future::poll_fn, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{
    core::{
        muxing::{StreamMuxer, StreamMuxerExt},
        transport::{DialOpts, ListenerId, PortUse, TransportEvent},
        Endpoint,
    },
    identity::Keypair,
    quic, Multiaddr, Transport,
};
use tokio_util::compat::TokioAsyncReadCompatExt;

const CHUNK: usize = 64 * 1024;
const RUNS: usize = 3;

async fn send(mut s: impl AsyncWrite + Unpin, bytes: usize) {
    let buf = vec![7u8; CHUNK];
    for _ in 0..bytes / CHUNK {
        s.write_all(&buf).await.expect("write");
    }
    s.close().await.expect("close");
}

async fn receive(mut r: impl AsyncRead + Unpin) -> usize {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0;
    loop {
        match r.read(&mut buf).await.expect("read") {
            0 => return n,
            k => n += k,
        }
    }
}

/// Time to move `bytes` over one new substream from `a` to `b`.
async fn transfer<M>(a: &mut M, b: &mut M, bytes: usize) -> Duration
where
    M: StreamMuxer + Unpin,
    M::Substream: AsyncRead + AsyncWrite + Unpin,
    M::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let out = poll_fn(|cx| a.poll_outbound_unpin(cx)).await.expect("out");
    let sending = send(out, bytes);
    let receiving = async {
        let inn = poll_fn(|cx| b.poll_inbound_unpin(cx)).await.expect("in");
        receive(inn).await
    };
    let ((), got) = futures::join!(sending, receiving);
    assert_eq!(got, bytes);
    start.elapsed()
}

fn report(name: &str, bytes: usize, times: &mut [Duration]) {
    times.sort();
    let median = times[times.len() / 2];
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{name:<28} {mib:>5.0} MiB  median {:>8.1} ms  {:>7.1} MiB/s",
        median.as_secs_f64() * 1e3,
        mib / median.as_secs_f64()
    );
}

async fn webrtc(bytes: usize) {
    let config = {
        let mut c = WebRtcConfig::default();
        c.local_ips = vec![Ipv4Addr::LOCALHOST.into()];
        c
    };
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let (x, y) = tokio::io::duplex(64 * 1024);
    let started = Instant::now();
    let (a, b) = tokio::join!(
        handshake(Role::Offerer, x.compat(), &config, &ka, pb),
        handshake(Role::Answerer, y.compat(), &config, &kb, pa),
    );
    let setup = started.elapsed();
    let (mut a, mut b) = (a.expect("offerer"), b.expect("answerer"));
    println!(
        "webrtc setup (signalling, ICE, DTLS, SCTP, Noise): {:.1} ms",
        setup.as_secs_f64() * 1e3
    );
    let mut times = Vec::new();
    for _ in 0..RUNS {
        times.push(transfer(&mut a.connection, &mut b.connection, bytes).await);
    }
    report("webrtc data channel", bytes, &mut times);
}

async fn quic(bytes: usize) {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut listener = quic::tokio::Transport::new(quic::Config::new(&kb));
    let mut dialer = quic::tokio::Transport::new(quic::Config::new(&ka));
    listener
        .listen_on(
            ListenerId::next(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr"),
        )
        .expect("listen");
    let addr: Multiaddr = loop {
        if let TransportEvent::NewAddress { listen_addr, .. } =
            poll_fn(|cx| Pin::new(&mut listener).poll(cx)).await
        {
            break listen_addr;
        }
    };
    let dial = dialer
        .dial(
            addr,
            DialOpts {
                role: Endpoint::Dialer,
                port_use: PortUse::New,
            },
        )
        .expect("dial");
    let accept = async {
        loop {
            if let TransportEvent::Incoming { upgrade, .. } =
                poll_fn(|cx| Pin::new(&mut listener).poll(cx)).await
            {
                return upgrade.await.expect("inbound");
            }
        }
    };
    let (a, b) = futures::join!(dial, accept);
    let (mut a, mut b) = (a.expect("outbound").1, b.1);
    let mut times = Vec::new();
    for _ in 0..RUNS {
        times.push(transfer(&mut a, &mut b, bytes).await);
    }
    report("libp2p quic stream", bytes, &mut times);
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let bytes = mib * 1024 * 1024;
    quic(bytes).await;
    webrtc(bytes).await;
}
