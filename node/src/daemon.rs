//! Running a node as a long-lived process: the local API, printing of
//! events and messages (text, or one JSON object per line), and a clean stop
//! on Ctrl-C or SIGTERM.

use std::path::Path;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use sha2::{Digest, Sha256};

use crate::{
    api::{ApiOptions, LocalApi},
    events::{Message, MessageKind, NodeEvent},
    runtime::{Node, Streams},
    trust::receipts::Filing,
};

/// Sets up a process that runs nodes: installs the TLS crypto provider (QUIC
/// and WebRTC would otherwise disagree on one) and logs to stderr through
/// `tracing`, filtered by `AGENTMESH_LOG` (else `RUST_LOG`, else `warn`), as JSON when
/// `json` is set.
pub fn init_process(json: bool) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTMESH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Default address of the local API on TCP: loopback, any free port.
pub const DEFAULT_API_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Serves `node` from data directory `dir` until Ctrl-C or SIGTERM, with its
/// local API on the Unix socket and on [`DEFAULT_API_ADDR`], printing what
/// happens to stdout, then shuts the node down.
pub async fn serve(node: Node, dir: &Path, json: bool) -> std::io::Result<()> {
    serve_with_api(node, dir, json, ApiOptions::new(Some(DEFAULT_API_ADDR))).await
}

/// As [`serve`], with the local API (and the A2A gateway) as `api` says.
pub async fn serve_with_api(
    node: Node,
    dir: &Path,
    json: bool,
    api: ApiOptions,
) -> std::io::Result<()> {
    let amid = node.amid();
    // Subscribed first: events of the start (credentials from the
    // registry, say) are printed too.
    let mut events = node.events();
    // The API is up before `started` is printed: whoever waits for that
    // line can use it at once.
    let api = LocalApi::start(node.clone(), dir, api)
        .await
        .map_err(std::io::Error::other)?;
    let mut arrivals = api.arrivals();
    if json {
        println!(
            "{}",
            json!({"event": "started", "amid": amid, "fingerprint": node.fingerprint(), "api": api.info().url, "a2a": api.info().a2a})
        );
    } else {
        println!("agent {amid}\nfingerprint {}", node.fingerprint());
        if let Some(url) = &api.info().url {
            println!(
                "local API at {url} (token in {})",
                dir.join(crate::api::INFO_FILE).display()
            );
        }
    }
    if let Some(streams) = node.streams() {
        tokio::spawn(receive_streams(streams, json));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match node.reload_policy() {
                Ok(h) => {
                    if json {
                        println!("{}", json!({"event": "policy_reloaded", "policy_hash": hex::encode(h)}));
                    } else {
                        println!("policy reloaded ({})", hex::encode(h));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "policy reload failed; keeping the old policy"),
            },
            m = arrivals.recv() => match m {
                Ok(m) => print_message(json, &m),
                Err(RecvError::Lagged(n)) => tracing::warn!(n, "messages not printed"),
                Err(RecvError::Closed) => break,
            },
            e = events.recv() => match e {
                Ok(e) => print_event(json, &e),
                Err(RecvError::Lagged(n)) => tracing::warn!(n, "events dropped"),
                Err(RecvError::Closed) => break,
            },
        }
    }
    api.stop().await;
    node.shutdown().await;
    if json {
        println!("{}", json!({"event": "stopped"}));
    }
    Ok(())
}

/// Prints one received message as text or as a JSON line.
fn print_message(json: bool, m: &Message) {
    if json {
        println!(
            "{}",
            json!({
                "event": "message", "id": m.id, "from": m.from, "payload": m.payload,
                "path": m.path, "seq": m.seq, "kind": m.kind, "session": m.session,
                "reply_to": m.reply_to,
            })
        );
    } else {
        let what = match m.kind {
            MessageKind::Request => "request",
            MessageKind::Reply => "reply",
            _ => "message",
        };
        println!(
            "{what} {} from {} via {}: {}",
            m.id, m.from, m.path, m.payload
        );
    }
}

/// Receives every incoming stream and reports it: its chunks are counted
/// and hashed (SHA-256), and its end is printed.
async fn receive_streams(mut streams: Streams, json: bool) {
    while let Some(mut s) = streams.next().await {
        tokio::spawn(async move {
            let (from, id) = (s.from(), s.id());
            if json {
                println!(
                    "{}",
                    json!({"event": "stream_opened", "from": from, "stream": id})
                );
            } else {
                println!("stream {id} from {from} opened");
            }
            let (mut chunks, mut bytes, mut hash) = (0u64, 0u64, Sha256::new());
            let end = loop {
                match s.recv().await {
                    Ok(Some(chunk)) => {
                        chunks += 1;
                        bytes += chunk.len() as u64;
                        hash.update(&chunk);
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e.to_string()),
                }
            };
            let sha256 = hex::encode(hash.finalize());
            match (json, end) {
                (true, None) => println!(
                    "{}",
                    json!({"event": "stream_ended", "from": from, "stream": id, "chunks": chunks, "bytes": bytes, "sha256": sha256})
                ),
                (true, Some(error)) => println!(
                    "{}",
                    json!({"event": "stream_failed", "from": from, "stream": id, "chunks": chunks, "error": error})
                ),
                (false, None) => println!(
                    "stream {id} from {from} ended: {chunks} chunks, {bytes} bytes, sha256 {sha256}"
                ),
                (false, Some(error)) => {
                    println!("stream {id} from {from} failed after {chunks} chunks: {error}")
                }
            }
        });
    }
}

/// Prints one event as text or as a JSON line.
pub fn print_event(json: bool, e: &NodeEvent) {
    if json {
        if let Ok(s) = serde_json::to_string(e) {
            println!("{s}");
        }
        return;
    }
    match e {
        NodeEvent::Listening { addr } => println!("listening on {addr}"),
        NodeEvent::CardPublished {
            seq,
            stored_remotely,
        } => println!(
            "card published (seq {seq}){}",
            if *stored_remotely {
                ""
            } else {
                " locally only, retrying"
            }
        ),
        NodeEvent::Delivered {
            id,
            to,
            path,
            knocked,
            ..
        } => println!(
            "delivered {id} to {to} via {path}{}",
            if *knocked { " (KNOCK accepted)" } else { "" }
        ),
        NodeEvent::Deposited { id, to, relays } => {
            println!("deposited {id} for {to} in {relays} relay mailbox(es)")
        }
        NodeEvent::Rejected { id, to, reason } => println!("rejected {id} by {to}: {reason}"),
        NodeEvent::Failed { id, to, error } => println!("failed {id} to {to}: {error}"),
        NodeEvent::KnockDecided {
            from,
            accepted,
            reason,
            ..
        } => {
            if *accepted {
                println!("accepted KNOCK from {from}");
            } else {
                println!(
                    "rejected KNOCK from {from}: {}",
                    reason.map(|r| r.to_string()).unwrap_or_default()
                );
            }
        }
        NodeEvent::Refused {
            from,
            reason,
            detail,
        } => println!(
            "refused input from {}: {reason} ({detail})",
            from.as_deref().unwrap_or("?")
        ),
        NodeEvent::Throttled {
            from,
            retry_after_ms,
        } => println!("rate limited {from}: to send again in {retry_after_ms} ms"),
        NodeEvent::Connected { peer, path } => println!("connected to {peer} via {path}"),
        NodeEvent::Disconnected { peer } => println!("disconnected from {peer}"),
        NodeEvent::PathUpgraded { peer, path, addr } => {
            println!("direct path to {peer}: {path} at {addr}")
        }
        NodeEvent::HolePunch { peer, ok, error } => match (ok, error) {
            (true, _) => println!("hole punch to {peer} succeeded"),
            (false, e) => println!(
                "hole punch to {peer} failed: {}",
                e.as_deref().unwrap_or("unknown")
            ),
        },
        NodeEvent::Reachability { status, addr } => match addr {
            Some(a) => println!("reachability: {status} at {a}"),
            None => println!("reachability: {status}"),
        },
        NodeEvent::SessionClosed {
            peer,
            session,
            by_peer,
        } => println!(
            "session {session} with {peer} closed{}",
            if *by_peer { " by the peer" } else { "" }
        ),
        NodeEvent::ReceiptSigned { peer, session } => {
            println!("session {session} with {peer}: receipt signed by both sides")
        }
        NodeEvent::ReceiptFiled {
            session, filing, ..
        } => match filing {
            Filing::Filed => println!("session {session}: receipt filed with the registry"),
            Filing::Refused { code } => {
                println!("session {session}: the registry refused the receipt ({code})")
            }
            Filing::Pending => println!(
                "session {session}: the registry does not know an agent of the receipt yet; filing it again later"
            ),
        },
        NodeEvent::CredentialsUpdated(state) => println!("credentials: {state}"),
        NodeEvent::RevocationsSynced(s) => {
            if s.added > 0 || s.refused > 0 {
                println!(
                    "revocations: {} new, {} refused (not signed by the pinned root)",
                    s.added, s.refused
                );
            }
        }
        NodeEvent::RegistryRootRefused { pinned, offered } => println!(
            "the registry names root {offered}, but {pinned} is pinned: refused"
        ),
        NodeEvent::MessageReceived { .. } => {}
    }
}
