//! Length-prefixed frames on a long-lived stream.
//!
//! Each frame is a 4-byte big-endian length followed by that many bytes. The
//! reader refuses a length over the configured maximum before reading the
//! body, so a peer cannot make us allocate more than one maximum frame.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use libp2p::Stream;
use tokio_util::{
    codec::{Framed, LengthDelimitedCodec},
    compat::{Compat, FuturesAsyncReadCompatExt},
};

/// Default maximum frame size: 256 KiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 256 * 1024;

/// Errors on a framed stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame larger than the maximum.
    #[error("frame exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The maximum frame size.
        max: usize,
    },
    /// The underlying stream failed.
    #[error("stream i/o: {0}")]
    Io(#[source] std::io::Error),
}

/// A libp2p stream carrying length-prefixed frames.
pub struct FramedStream {
    inner: Framed<Compat<Stream>, LengthDelimitedCodec>,
    max: usize,
}

impl std::fmt::Debug for FramedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedStream")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl FramedStream {
    /// Wraps `stream`, accepting frames of at most `max` bytes in either direction.
    pub fn new(stream: Stream, max: usize) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(max)
            .new_codec();
        Self {
            inner: Framed::new(stream.compat(), codec),
            max,
        }
    }

    /// Changes the largest frame accepted from here on (a server reads a
    /// small request, then sends a larger answer).
    pub fn set_max(&mut self, max: usize) {
        self.inner.codec_mut().set_max_frame_length(max);
        self.max = max;
    }

    /// Sends one frame and flushes it.
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<(), FrameError> {
        if frame.len() > self.max {
            return Err(FrameError::TooLarge { max: self.max });
        }
        self.inner
            .send(Bytes::from(frame))
            .await
            .map_err(|e| self.map_err(e))
    }

    /// Receives the next frame; `Ok(None)` when the peer closed the stream.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, FrameError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b.freeze())),
            Some(Err(e)) => Err(self.map_err(e)),
        }
    }

    /// Closes the write half.
    pub async fn close(&mut self) -> Result<(), FrameError> {
        SinkExt::<Bytes>::close(&mut self.inner)
            .await
            .map_err(|e| self.map_err(e))
    }

    fn map_err(&self, e: std::io::Error) -> FrameError {
        // LengthDelimitedCodec reports oversized frames as InvalidData.
        if e.kind() == std::io::ErrorKind::InvalidData {
            FrameError::TooLarge { max: self.max }
        } else {
            FrameError::Io(e)
        }
    }
}

/// The write half of a split [`FramedStream`].
pub struct FrameWriter {
    inner: futures::stream::SplitSink<Framed<Compat<Stream>, LengthDelimitedCodec>, Bytes>,
    max: usize,
}

/// The read half of a split [`FramedStream`].
pub struct FrameReader {
    inner: futures::stream::SplitStream<Framed<Compat<Stream>, LengthDelimitedCodec>>,
    max: usize,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader").finish_non_exhaustive()
    }
}

fn map_io(e: std::io::Error, max: usize) -> FrameError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        FrameError::TooLarge { max }
    } else {
        FrameError::Io(e)
    }
}

impl FramedStream {
    /// Splits into independent read and write halves.
    pub fn split(self) -> (FrameWriter, FrameReader) {
        let (w, r) = self.inner.split();
        (
            FrameWriter {
                inner: w,
                max: self.max,
            },
            FrameReader {
                inner: r,
                max: self.max,
            },
        )
    }
}

impl FrameWriter {
    /// Sends one frame and flushes it.
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<(), FrameError> {
        if frame.len() > self.max {
            return Err(FrameError::TooLarge { max: self.max });
        }
        let max = self.max;
        self.inner
            .send(Bytes::from(frame))
            .await
            .map_err(|e| map_io(e, max))
    }

    /// Queues one frame without flushing.
    pub async fn feed(&mut self, frame: Vec<u8>) -> Result<(), FrameError> {
        if frame.len() > self.max {
            return Err(FrameError::TooLarge { max: self.max });
        }
        let max = self.max;
        self.inner
            .feed(Bytes::from(frame))
            .await
            .map_err(|e| map_io(e, max))
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        let max = self.max;
        self.inner.flush().await.map_err(|e| map_io(e, max))
    }
}

impl FrameReader {
    /// Receives the next frame; `Ok(None)` when the peer closed the stream.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, FrameError> {
        let max = self.max;
        match self.inner.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b.freeze())),
            Some(Err(e)) => Err(map_io(e, max)),
        }
    }
}
