//! The serving side of the gateway: A2A requests that arrived over the
//! mesh, handed to the upstream A2A server, and its answers carried back.
//!
//! A streaming answer (Server-Sent Events) is read event by event. When
//! the gateway that asked takes answers in batches (`"incremental": true`
//! in its request), the reply carries the events read so far and the id of
//! the open stream (`a2a_more`); the gateway then asks for each next batch
//! with a request naming that id (`a2a_next`), which is answered as soon as
//! the upstream sends an event (or, with none, after [`PULL_WAIT`] with an
//! empty batch). The stream is forgotten, and the upstream connection
//! closed, when it ended and its last events were handed over, when the
//! gateway says it is done, or when the gateway stopped asking for
//! [`STREAM_IDLE`].

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{codes, keys, rpc_error, sse, PROTOCOL_VERSION};
use crate::{api::Ctx, events::Message, identity::Amid, runtime::InboxKey};

/// How long the upstream has to start answering (and a non-streaming
/// answer to end).
const ANSWER_TIMEOUT: Duration = super::ANSWER_TIMEOUT;
/// How long a streaming upstream may stay silent (no byte, not even a
/// comment) before the stream is given up.
const UPSTREAM_QUIET: Duration = Duration::from_secs(300);
/// How long a request for the next batch waits for an event before it is
/// answered with none (well below the gateway's wait for an answer).
pub(super) const PULL_WAIT: Duration = Duration::from_secs(20);
/// How long an open stream is kept while nobody asks for its events.
const STREAM_IDLE: Duration = Duration::from_secs(90);
/// Largest event carried, in bytes of JSON: one event fits in one message.
const MAX_EVENT: usize = crate::crypto::envelope::MAX_PAYLOAD_SIZE - 4 * 1024;
/// Largest batch of events in one reply, in bytes of JSON.
const MAX_BATCH: usize = crate::crypto::envelope::MAX_PAYLOAD_SIZE - 2 * 1024;
/// Events read ahead from the upstream and not yet asked for.
const READ_AHEAD: usize = 64;
/// Most streams open at once (over all gateways asking).
const MAX_STREAMS: usize = 256;

/// Whether `m` is an A2A request carried by a gateway.
pub(in crate::api) fn is_a2a_request(m: &Message) -> bool {
    m.kind == crate::events::MessageKind::Request && m.payload.get(keys::RPC).is_some()
}

/// Hands an A2A request that arrived over the mesh to the upstream A2A
/// server (or, a request for the next batch of an open stream, takes it),
/// replies with the answer and acknowledges the request.
pub(in crate::api) async fn serve_upstream(
    ctx: Arc<Ctx>,
    upstream: url::Url,
    m: Message,
    key: InboxKey,
) {
    let rpc = m.payload.get(keys::RPC).cloned().unwrap_or(Value::Null);
    let id = rpc.get("id").cloned().unwrap_or(Value::Null);
    let answer = match m.payload.get(keys::NEXT) {
        Some(next) => next_batch(&ctx, &m.from, next, &id).await,
        None => first_answer(&ctx, &upstream, &m, &rpc, &id).await,
    };
    match ctx
        .node
        .reply_to(&m.from, m.id, Some(m.session), answer)
        .await
    {
        Ok(_) => {
            if let Err(e) = ctx.node.ack([key]).await {
                warn!(error = %e, "could not acknowledge an A2A request");
            }
        }
        Err(e) => debug!(error = %e, "A2A answer not delivered"),
    }
}

/// The answer to a new A2A request.
async fn first_answer(
    ctx: &Ctx,
    upstream: &url::Url,
    m: &Message,
    rpc: &Value,
    id: &Value,
) -> Value {
    let flag = |k: &str| m.payload.get(k).and_then(Value::as_bool).unwrap_or(false);
    let (streaming, incremental) = (flag(keys::STREAM), flag(keys::INCREMENTAL));
    let version = m
        .payload
        .get(keys::VERSION)
        .and_then(Value::as_str)
        .unwrap_or(PROTOCOL_VERSION);
    let failed = |e: UpstreamError| {
        warn!(error = %e, "upstream A2A server failed");
        rpc_error(id, codes::INTERNAL, format!("upstream A2A server: {e}"))
    };
    let resp = match post(upstream, rpc, streaming, version).await {
        Ok(r) => r,
        Err(e) => return json!({ keys::RPC: failed(e) }),
    };
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|t| t.contains("text/event-stream"));
    if !(streaming && is_sse) {
        return match whole_answer(resp, is_sse).await {
            Ok(Whole::One(v)) if streaming => json!({ keys::STREAM_EVENTS: [v] }),
            Ok(Whole::One(v)) => json!({ keys::RPC: v }),
            Ok(Whole::Events(events)) => json!({ keys::STREAM_EVENTS: events }),
            Err(e) => json!({ keys::RPC: failed(e) }),
        };
    }
    let events = read_events(resp.into_body(), id.clone());
    if !incremental {
        // A gateway that takes the whole stream in one reply.
        return match collect(events).await {
            Ok(events) => json!({ keys::STREAM_EVENTS: events }),
            Err(e) => json!({ keys::RPC: failed(e) }),
        };
    }
    let stream = match OpenStream::register(m.from, events) {
        Ok(s) => s,
        Err(e) => return json!({ keys::RPC: failed(e) }),
    };
    stream.batch(&ctx.cancel, 0, id).await
}

/// The answer to a request for the next batch of an open stream.
async fn next_batch(ctx: &Ctx, from: &Amid, next: &Value, id: &Value) -> Value {
    let sid = next.get("stream").and_then(Value::as_str).unwrap_or("");
    let stream = open_streams().get(sid).filter(|s| s.peer == *from).cloned();
    let Some(stream) = stream else {
        let e = rpc_error(
            id,
            codes::INTERNAL,
            "the stream is over: the serving node forgot it (it restarted, or nobody asked for its events for too long)",
        );
        return json!({ keys::STREAM_EVENTS: [e] });
    };
    if next.get("close").and_then(Value::as_bool) == Some(true) {
        forget(sid);
        return json!({ keys::STREAM_EVENTS: [] });
    }
    let Some(batch) = next.get("batch").and_then(Value::as_u64) else {
        let e = rpc_error(id, codes::INTERNAL, "a request for events names no batch");
        return json!({ keys::STREAM_EVENTS: [e] });
    };
    stream.batch(&ctx.cancel, batch, id).await
}

/// The events of an upstream SSE answer, read by a task as they arrive; an
/// error of the upstream comes as a JSON-RPC error event (request `id`),
/// the last.
fn read_events(body: hyper::body::Incoming, id: Value) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        if let Err(e) = pump(body, &tx).await {
            warn!(error = %e, "upstream A2A stream failed");
            let e = rpc_error(&id, codes::INTERNAL, format!("upstream A2A server: {e}"));
            let _ = tx.send(e).await;
        }
    });
    rx
}

/// Reads `body` into `tx`, event by event; stops early when nobody reads
/// `tx` any more (closing the upstream connection).
async fn pump(
    mut body: hyper::body::Incoming,
    tx: &mpsc::Sender<Value>,
) -> Result<(), UpstreamError> {
    let mut parser = sse::SseParser::new(MAX_EVENT);
    let mut events = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = tx.closed() => return Ok(()),
            f = tokio::time::timeout(UPSTREAM_QUIET, body.frame()) => f,
        };
        let end = match frame {
            Err(_) => return Err(UpstreamError::Bad("the stream went quiet".into())),
            Ok(None) => {
                parser.finish(&mut events)?;
                true
            }
            Ok(Some(frame)) => {
                if let Ok(data) = frame?.into_data() {
                    parser.push(&data, &mut events)?;
                }
                false
            }
        };
        for v in events.drain(..) {
            if v.to_string().len() > MAX_EVENT {
                return Err(sse::SseError::TooLarge(MAX_EVENT).into());
            }
            if tx.send(v).await.is_err() {
                return Ok(());
            }
        }
        if end {
            return Ok(());
        }
    }
}

/// All the events of a stream, for one reply.
async fn collect(mut events: mpsc::Receiver<Value>) -> Result<Vec<Value>, UpstreamError> {
    let (mut all, mut size) = (Vec::new(), 0usize);
    while let Some(v) = events.recv().await {
        size += v.to_string().len() + 1;
        if size > MAX_BATCH {
            return Err(UpstreamError::Bad(
                "answer too large for one message".into(),
            ));
        }
        all.push(v);
    }
    Ok(all)
}

/// A streaming answer being handed over in batches.
struct OpenStream {
    /// Its id in [`open_streams`].
    id: String,
    /// The gateway that asked; only it gets the events.
    peer: Amid,
    /// One batch is taken at a time.
    state: tokio::sync::Mutex<StreamState>,
    /// When a batch was last asked for or handed over.
    touched: Mutex<Instant>,
    /// Cancelled once the stream is forgotten: a batch being taken ends.
    closed: CancellationToken,
}

struct StreamState {
    events: mpsc::Receiver<Value>,
    /// An event read that did not fit in the last batch.
    held: Option<Value>,
    /// The number of the batch to hand over next.
    next: u64,
}

type Streams = Mutex<HashMap<String, Arc<OpenStream>>>;

fn open_streams() -> std::sync::MutexGuard<'static, HashMap<String, Arc<OpenStream>>> {
    static STREAMS: LazyLock<Streams> = LazyLock::new(Streams::default);
    STREAMS.lock().unwrap_or_else(|e| e.into_inner())
}

fn forget(id: &str) {
    let stream = open_streams().remove(id);
    if let Some(s) = stream {
        s.closed.cancel();
    }
}

impl OpenStream {
    /// Keeps `events` for `peer` under a new id, forgotten once nobody
    /// asks for them for [`STREAM_IDLE`].
    fn register(peer: Amid, events: mpsc::Receiver<Value>) -> Result<Arc<Self>, UpstreamError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| UpstreamError::Bad(e.to_string()))?;
        let stream = Arc::new(Self {
            id: hex::encode(bytes),
            peer,
            state: tokio::sync::Mutex::new(StreamState {
                events,
                held: None,
                next: 0,
            }),
            touched: Mutex::new(Instant::now()),
            closed: CancellationToken::new(),
        });
        {
            let mut open = open_streams();
            if open.len() >= MAX_STREAMS {
                return Err(UpstreamError::Bad("too many streams open".into()));
            }
            open.insert(stream.id.clone(), stream.clone());
        }
        let weak = Arc::downgrade(&stream);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(STREAM_IDLE / 3).await;
                let Some(s) = weak.upgrade() else { return };
                let idle = s.touched.lock().map(|t| t.elapsed()).unwrap_or_default();
                // A batch being taken is not idle.
                if idle > STREAM_IDLE && s.state.try_lock().is_ok() {
                    debug!(stream = %s.id, "nobody asks for an A2A stream's events; closing it");
                    forget(&s.id);
                    return;
                }
            }
        });
        Ok(stream)
    }

    fn touch(&self) {
        if let Ok(mut t) = self.touched.lock() {
            *t = Instant::now();
        }
    }

    /// Batch number `number`: the events ready, waiting up to
    /// [`PULL_WAIT`] for the first (or until `stop`, or until the stream
    /// is closed); the reply carrying
    /// them (an error names request `id`).
    async fn batch(&self, stop: &CancellationToken, number: u64, id: &Value) -> Value {
        self.touch();
        let mut st = self.state.lock().await;
        if st.next != number {
            let e = rpc_error(
                id,
                codes::INTERNAL,
                format!("batch {number} asked for where {} was due", st.next),
            );
            drop(st);
            forget(&self.id);
            return json!({ keys::STREAM_EVENTS: [e] });
        }
        let (mut events, mut size, mut ended) = (Vec::new(), 0usize, false);
        let first = match st.held.take() {
            Some(v) => Some(v),
            None => tokio::select! {
                _ = stop.cancelled() => None,
                _ = self.closed.cancelled() => None,
                r = tokio::time::timeout(PULL_WAIT, st.events.recv()) => match r {
                    Ok(Some(v)) => Some(v),
                    Ok(None) => {
                        ended = true;
                        None
                    }
                    Err(_) => None,
                },
            },
        };
        if let Some(v) = first {
            size += v.to_string().len() + 1;
            events.push(v);
        }
        while !ended {
            match st.events.try_recv() {
                Ok(v) => {
                    let n = v.to_string().len() + 1;
                    if size + n > MAX_BATCH {
                        st.held = Some(v);
                        break;
                    }
                    size += n;
                    events.push(v);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => ended = true,
            }
        }
        st.next += 1;
        drop(st);
        self.touch();
        if ended || self.closed.is_cancelled() {
            forget(&self.id);
            json!({ keys::STREAM_EVENTS: events })
        } else {
            json!({ keys::STREAM_EVENTS: events, keys::MORE: self.id })
        }
    }
}

/// A whole (not streamed) answer of the upstream.
enum Whole {
    One(Value),
    Events(Vec<Value>),
}

/// Errors talking to the upstream A2A server.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Sse(#[from] sse::SseError),
    #[error("{0}")]
    Bad(String),
}

/// Posts `rpc` to the upstream; its answer, once its head arrived.
async fn post(
    url: &url::Url,
    rpc: &Value,
    streaming: bool,
    version: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
    let host = url
        .host_str()
        .ok_or_else(|| UpstreamError::Bad("upstream URL has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let req = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(path)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::ACCEPT,
            if streaming {
                "text/event-stream"
            } else {
                "application/json"
            },
        )
        .header("A2A-Version", version)
        .body(Full::new(Bytes::from(rpc.to_string())))
        .map_err(|e| UpstreamError::Bad(e.to_string()))?;
    tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| UpstreamError::Bad("no answer in time".into()))?
        .map_err(Into::into)
}

/// Reads a whole answer (at most one message's worth).
async fn whole_answer(
    resp: hyper::Response<hyper::body::Incoming>,
    is_sse: bool,
) -> Result<Whole, UpstreamError> {
    let limit = crate::crypto::envelope::MAX_PAYLOAD_SIZE;
    let body = tokio::time::timeout(
        ANSWER_TIMEOUT,
        Limited::new(resp.into_body(), limit).collect(),
    )
    .await
    .map_err(|_| UpstreamError::Bad("answer not finished in time".into()))?
    .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
        Ok(_) => UpstreamError::Bad("answer too large for one message".into()),
        Err(e) => UpstreamError::Bad(e.to_string()),
    })?
    .to_bytes();
    if is_sse {
        return Ok(Whole::Events(sse::events(&body, limit)?));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| UpstreamError::Bad(format!("bad JSON answer: {e}")))?;
    Ok(Whole::One(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Amid {
        crate::identity::Identity::from_seed(&[7; 32]).amid()
    }

    #[tokio::test]
    async fn batches_hand_over_every_event_in_order_within_the_size_limit() {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let stream = OpenStream::register(peer(), rx).unwrap();
        let stop = CancellationToken::new();
        let id = json!("r1");
        // Nothing yet: the batch waits, then the first event goes at once.
        let pending = stream.batch(&stop, 0, &id);
        let send = async {
            tx.send(json!({"n": 0})).await.unwrap();
        };
        let (first, ()) = tokio::join!(pending, send);
        assert_eq!(first[keys::STREAM_EVENTS], json!([{"n": 0}]));
        assert_eq!(first[keys::MORE], json!(stream.id));
        // Events larger together than one message: split over batches.
        let big = "x".repeat(MAX_BATCH / 3);
        for n in 1..=7 {
            tx.send(json!({"n": n, "pad": big})).await.unwrap();
        }
        drop(tx);
        let mut seen = Vec::new();
        let mut number = 1;
        loop {
            let b = stream.batch(&stop, number, &id).await;
            assert!(b.to_string().len() <= crate::crypto::envelope::MAX_PAYLOAD_SIZE);
            let events = b[keys::STREAM_EVENTS].as_array().unwrap();
            assert!(events.len() <= 2, "{}", events.len());
            seen.extend(events.iter().map(|e| e["n"].as_u64().unwrap()));
            number += 1;
            if b.get(keys::MORE).is_none() {
                break;
            }
        }
        assert_eq!(seen, (1..=7).collect::<Vec<_>>());
        // Handed over to its end: forgotten.
        assert!(!open_streams().contains_key(&stream.id));
    }

    #[tokio::test]
    async fn closing_a_stream_answers_its_pending_batch_at_once() {
        let (_tx, rx) = mpsc::channel(READ_AHEAD);
        let stream = OpenStream::register(peer(), rx).unwrap();
        let (stop, id) = (CancellationToken::new(), json!(1));
        let pending = stream.batch(&stop, 0, &id);
        let close = async {
            // Once the batch waits for an event.
            while stream.state.try_lock().is_ok() {
                tokio::task::yield_now().await;
            }
            forget(&stream.id);
        };
        let (b, ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(pending, close)
        })
        .await
        .expect("answered before the batch's own wait is over");
        assert_eq!(b[keys::STREAM_EVENTS], json!([]));
        assert!(b.get(keys::MORE).is_none());
    }

    #[tokio::test]
    async fn a_batch_out_of_turn_ends_the_stream() {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let stream = OpenStream::register(peer(), rx).unwrap();
        tx.send(json!(1)).await.unwrap();
        let b = stream.batch(&CancellationToken::new(), 3, &json!(9)).await;
        assert_eq!(b[keys::STREAM_EVENTS][0]["error"]["code"], codes::INTERNAL);
        assert_eq!(b[keys::STREAM_EVENTS][0]["id"], 9);
        assert!(b.get(keys::MORE).is_none());
        assert!(!open_streams().contains_key(&stream.id));
    }

    #[tokio::test]
    async fn an_upstream_sse_body_is_read_event_by_event() {
        use std::convert::Infallible;
        // An upstream that sends one event, then waits for the test.
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let gate = Arc::new(Mutex::new(Some(gate_rx)));
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move || {
                use futures::StreamExt as _;
                let gate = gate.lock().unwrap().take();
                let first = futures::stream::once(async { "data: {\"a\":1}\r\n\r\n" });
                let second = futures::stream::once(async move {
                    if let Some(g) = gate {
                        let _ = g.await;
                    }
                    "data: {\"b\":2}\r\n\r\n"
                });
                let body = first.chain(second).map(Ok::<_, Infallible>);
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/event-stream")],
                        axum::body::Body::from_stream(body),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: url::Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let resp = post(&url, &json!({}), true, PROTOCOL_VERSION)
            .await
            .unwrap();
        let mut events = read_events(resp.into_body(), json!(1));
        // The first event, while the upstream still holds the second back.
        let first = tokio::time::timeout(Duration::from_secs(30), events.recv()).await;
        assert_eq!(
            first.expect("the first event in time"),
            Some(json!({"a": 1}))
        );
        gate_tx.send(()).unwrap();
        assert_eq!(events.recv().await, Some(json!({"b": 2})));
        assert_eq!(events.recv().await, None);
    }
}
