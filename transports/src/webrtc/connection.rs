//! A WebRTC peer connection as a libp2p [`StreamMuxer`]: every substream
//! is one data channel, framed as libp2p's WebRTC spec says (protobuf
//! messages with FIN / STOP_SENDING / RESET flags, see
//! [`libp2p_webrtc_utils::Stream`]).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use futures::{
    channel::{mpsc, oneshot},
    future::BoxFuture,
    lock::Mutex as FutMutex,
    ready,
    stream::FuturesUnordered,
    StreamExt,
};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p_webrtc_utils::MAX_MSG_LEN;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
use webrtc::{
    data::data_channel::{DataChannel as Detached, PollDataChannel},
    data_channel::RTCDataChannel,
    peer_connection::{peer_connection_state::RTCPeerConnectionState, RTCPeerConnection},
};

use super::WebRtcError;

/// Most data channels opened by the remote and not yet taken as streams.
const MAX_INBOUND_IN_FLIGHT: usize = 16;

/// Label of the spec's `init` data channel: it only makes the offer carry
/// an application section and is never a stream.
pub(crate) const INIT_LABEL: &str = "init";

/// A substream: one data channel.
pub type WebRtcStream = libp2p_webrtc_utils::Stream<OneFramePerMessage>;
type DropListener = libp2p_webrtc_utils::DropListener<OneFramePerMessage>;

/// Largest SCTP message read whole. Frames are at most
/// [`MAX_MSG_LEN`] (16 KiB), but a peer's writer may pack several frames
/// into one message (libp2p's framed writer buffers up to 16 KiB before it
/// writes, plus the frame that crossed the mark); a read buffer smaller
/// than the message fails the read with a short buffer error.
const READ_BUF: usize = 64 * 1024;

/// Wraps a detached data channel as a framed stream.
pub(crate) fn stream_of(dc: Arc<Detached>) -> (WebRtcStream, DropListener) {
    libp2p_webrtc_utils::Stream::new(OneFramePerMessage::new(PollDataChannel::new(dc)))
}

/// A data channel whose writes are cut at frame boundaries, so every SCTP
/// message carries exactly one length-prefixed frame, as the spec asks and
/// as peers that read message by message expect.
pub struct OneFramePerMessage {
    inner: Compat<PollDataChannel>,
}

impl OneFramePerMessage {
    fn new(mut channel: PollDataChannel) -> Self {
        channel.set_read_buf_capacity(READ_BUF);
        Self {
            inner: channel.compat(),
        }
    }
}

/// `PollDataChannel`'s own clone forgets the read buffer's capacity.
impl Clone for OneFramePerMessage {
    fn clone(&self) -> Self {
        Self::new(self.inner.get_ref().clone())
    }
}

impl std::fmt::Debug for OneFramePerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneFramePerMessage").finish_non_exhaustive()
    }
}

/// Length of the first frame of `buf` (prefix included), or all of `buf`
/// up to [`MAX_MSG_LEN`] when it does not start with a whole prefix.
fn first_frame_len(buf: &[u8]) -> usize {
    let mut rest = buf;
    match prost::encoding::decode_varint(&mut rest) {
        Ok(len) => {
            let prefix = buf.len() - rest.len();
            usize::try_from(len)
                .map_or(buf.len(), |l| l.saturating_add(prefix))
                .min(buf.len())
        }
        Err(_) => buf.len().min(MAX_MSG_LEN),
    }
}

impl futures::AsyncRead for OneFramePerMessage {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl futures::AsyncWrite for OneFramePerMessage {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = first_frame_len(buf);
        Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Registers the handler for data channels opened by the remote, before any
/// negotiation, so none is missed; returns the receiving end.
pub(crate) fn incoming_channels(pc: &RTCPeerConnection) -> mpsc::Receiver<Arc<Detached>> {
    let (tx, rx) = mpsc::channel(MAX_INBOUND_IN_FLIGHT);
    let tx = Arc::new(FutMutex::new(tx));
    pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
        let tx = tx.clone();
        Box::pin(async move {
            if dc.label() == INIT_LABEL {
                return;
            }
            let opened = dc.clone();
            dc.on_open(Box::new(move || {
                Box::pin(async move {
                    match opened.detach().await {
                        Ok(detached) => {
                            if tx.lock().await.try_send(detached.clone()).is_err() {
                                tracing::debug!("too many unaccepted data channels; closing one");
                                let _ = detached.close().await;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "data channel not detached"),
                    }
                })
            }));
        })
    }));
    rx
}

/// Calls `tx` with the detached channel once `dc` is open.
pub(crate) fn on_open_detached(dc: Arc<RTCDataChannel>, tx: oneshot::Sender<Arc<Detached>>) {
    let opened = dc.clone();
    let mut tx = Some(tx);
    dc.on_open(Box::new(move || {
        let opened = opened.clone();
        let tx = tx.take();
        Box::pin(async move {
            match opened.detach().await {
                Ok(d) => {
                    if let Some(tx) = tx {
                        let _ = tx.send(d);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "data channel not detached"),
            }
        })
    }));
}

/// Registers a state observer; states are dropped when nobody reads them.
pub(crate) fn states(pc: &RTCPeerConnection) -> mpsc::Receiver<RTCPeerConnectionState> {
    let (mut tx, rx) = mpsc::channel(8);
    pc.on_peer_connection_state_change(Box::new(move |s| {
        let _ = tx.try_send(s);
        Box::pin(async {})
    }));
    rx
}

/// An established, authenticated WebRTC connection.
pub struct Connection {
    pc: Arc<RTCPeerConnection>,
    incoming: mpsc::Receiver<Arc<Detached>>,
    states: mpsc::Receiver<RTCPeerConnectionState>,
    outbound: Option<BoxFuture<'static, Result<Arc<Detached>, WebRtcError>>>,
    closing: Option<BoxFuture<'static, Result<(), WebRtcError>>>,
    drop_listeners: FuturesUnordered<DropListener>,
    idle_waker: Option<Waker>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.pc.connection_state())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(
        pc: Arc<RTCPeerConnection>,
        incoming: mpsc::Receiver<Arc<Detached>>,
        states: mpsc::Receiver<RTCPeerConnectionState>,
    ) -> Self {
        Self {
            pc,
            incoming,
            states,
            outbound: None,
            closing: None,
            drop_listeners: FuturesUnordered::new(),
            idle_waker: None,
        }
    }

    fn track(&mut self, listener: DropListener) {
        self.drop_listeners.push(listener);
        if let Some(w) = self.idle_waker.take() {
            w.wake();
        }
    }
}

impl StreamMuxer for Connection {
    type Substream = WebRtcStream;
    type Error = WebRtcError;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        match ready!(self.incoming.poll_next_unpin(cx)) {
            Some(dc) => {
                let (stream, listener) = stream_of(dc);
                self.track(listener);
                Poll::Ready(Ok(stream))
            }
            None => Poll::Ready(Err(WebRtcError::Closed)),
        }
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let pc = self.pc.clone();
        let fut = self.outbound.get_or_insert_with(|| {
            Box::pin(async move {
                let dc = pc.create_data_channel("", None).await?;
                let (tx, rx) = oneshot::channel();
                on_open_detached(dc, tx);
                rx.await.map_err(|_| WebRtcError::Closed)
            })
        });
        let result = ready!(fut.as_mut().poll(cx));
        self.outbound = None;
        let dc = result?;
        let (stream, listener) = stream_of(dc);
        self.track(listener);
        Poll::Ready(Ok(stream))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let pc = self.pc.clone();
        let fut = self.closing.get_or_insert_with(|| {
            Box::pin(async move {
                pc.close().await?;
                Ok(())
            })
        });
        let result = ready!(fut.as_mut().poll(cx));
        self.closing = None;
        self.incoming.close();
        Poll::Ready(result)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        while let Poll::Ready(state) = self.states.poll_next_unpin(cx) {
            match state {
                Some(RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) => {
                    return Poll::Ready(Err(WebRtcError::Closed))
                }
                Some(_) => {}
                None => break,
            }
        }
        loop {
            match ready!(self.drop_listeners.poll_next_unpin(cx)) {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "stream drop listener failed"),
                None => {
                    self.idle_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let pc = self.pc.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: usize) -> Vec<u8> {
        let mut b = Vec::new();
        prost::encoding::encode_varint(len as u64, &mut b);
        b.extend(std::iter::repeat_n(7u8, len));
        b
    }

    #[test]
    fn writes_are_cut_at_frame_boundaries() {
        let mut two = framed(16_000);
        let first = two.len();
        two.extend(framed(300));
        assert_eq!(first_frame_len(&two), first);
        assert_eq!(first_frame_len(&two[first..]), two.len() - first);
        // A frame cut short by the caller: what there is.
        assert_eq!(first_frame_len(&two[..100]), 100);
        // No whole prefix: at most one frame's worth.
        assert_eq!(first_frame_len(&[0x80; 3]), 3);
        assert_eq!(first_frame_len(&vec![0xff; 40_000]), MAX_MSG_LEN);
        assert_eq!(first_frame_len(&[]), 0);
    }
}
