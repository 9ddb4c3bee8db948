//! The `/metrics` body as the renderer produces it: chunks over a bounded channel, so a
//! large exposition (10,000 devices is about 90 MB) is neither held whole in memory nor
//! rendered before its first byte is sent; rendering and sending overlap.
//!
//! A client that stops reading would hold the renderer (a blocking-pool thread) forever:
//! a chunk not taken within `SEND_TIMEOUT` ends the rendering, and the body then fails
//! rather than ends, so the client cannot take a cut-off exposition for a whole one.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::body::Bytes;
use http_body::Frame;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Chunks in flight between the renderer and the connection.
const DEPTH: usize = 4;
/// How long one chunk may wait for the client to take the ones before it.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("the client took no /metrics data for {SEND_TIMEOUT:?}: exposition abandoned")]
pub struct Abandoned;

/// The receiving end, as an HTTP body.
pub struct Chunks {
    rx: mpsc::Receiver<Bytes>,
    abandoned: Arc<AtomicBool>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Abandoned;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Abandoned>>> {
        self.rx.poll_recv(cx).map(|c| match c {
            Some(b) => Some(Ok(Frame::data(b))),
            None if self.abandoned.load(Ordering::Acquire) => Some(Err(Abandoned)),
            None => None,
        })
    }
}

/// The renderer's end.
pub struct Sender {
    tx: mpsc::Sender<Bytes>,
    abandoned: Arc<AtomicBool>,
}

impl Sender {
    /// Hands on a chunk, waiting up to `SEND_TIMEOUT` for room. False: stop rendering (the
    /// client is gone, or stalled and abandoned).
    pub fn send(&mut self, chunk: String) -> bool {
        let deadline = Instant::now() + SEND_TIMEOUT;
        let mut item = Bytes::from(chunk);
        let mut pause = Duration::from_micros(50);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Closed(_)) => return false,
                Err(TrySendError::Full(back)) => item = back,
            }
            if Instant::now() >= deadline {
                // Set before the sender drops, so the body sees it when the channel ends.
                self.abandoned.store(true, Ordering::Release);
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

pub fn channel() -> (Chunks, Sender) {
    let (tx, rx) = mpsc::channel(DEPTH);
    let abandoned = Arc::new(AtomicBool::new(false));
    (Chunks { rx, abandoned: abandoned.clone() }, Sender { tx, abandoned })
}
