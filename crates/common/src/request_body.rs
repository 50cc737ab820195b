//! Limits on receiving a request: its size, announced in each gRPC message's
//! prefix and refused before the message is buffered, and deadlines, so that a
//! client which trickles its request a byte at a time, or stalls an upload, cannot
//! hold an in-flight slot for ever.
//!
//! A message longer than `max_message_bytes` ends the call in RESOURCE_EXHAUSTED
//! naming the limit, as soon as its 5-byte prefix arrives.
//!
//! A unary (or server-streaming) call's request is one message: it must arrive
//! whole within `request_body_timeout_ms` of the call starting. An upload
//! (ImportCatalog, PublishModel: the client-streaming methods) may take as long as
//! its size needs, but must keep moving: each `upload_idle_timeout_ms` window must
//! bring at least `upload_min_bytes_per_sec` times its length in bytes (at least
//! one byte), so an upload trickled a few bytes at a time cannot hold the import
//! (one runs at a time) for ever. Past either, the body ends in DEADLINE_EXCEEDED,
//! the handler sees the error (an upload rolls back whole), and the slot is freed.
//!
//! HTTP/2's own limits (streams per connection, keepalive pings) are set on the
//! server builder in [`crate::server`]; this covers what they cannot: a stream
//! that is alive but too slow.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// The paths of the client-streaming methods, from the API's descriptor set.
static UPLOADS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    rankmesh_proto::client_streaming_methods()
        .into_iter()
        .collect()
});

/// How large a request's messages may be and how long it may take to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A one-message request, whole, from the call's start.
    pub request: Duration,
    /// An upload: the window within which it must send `upload_min_rate`'s bytes.
    pub upload_idle: Duration,
    /// An upload's slowest average over each window, bytes a second (0: any byte
    /// will do).
    pub upload_min_rate: u64,
    /// The largest message, as its prefix announces it.
    pub max_message_bytes: usize,
}

/// Wraps every request body in a [`GuardedBody`] (see the module docs).
#[derive(Debug, Clone)]
pub struct RequestBodyLayer {
    limits: Arc<BodyLimits>,
}

impl RequestBodyLayer {
    pub fn new(limits: BodyLimits) -> Self {
        Self {
            limits: Arc::new(limits),
        }
    }
}

impl<S> Layer<S> for RequestBodyLayer {
    type Service = RequestBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBody {
            inner,
            limits: Arc::clone(&self.limits),
        }
    }
}

/// See [`RequestBodyLayer`].
#[derive(Debug, Clone)]
pub struct RequestBody<S> {
    inner: S,
    limits: Arc<BodyLimits>,
}

impl<S> Service<http::Request<tonic::body::Body>> for RequestBody<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path();
        let rule = if crate::rpc::is_health_or_reflection(path) {
            // A reflection session (grpcurl, grpcui) is a bidi stream that stays
            // open between lookups, and neither takes an in-flight slot.
            Rule::Untimed
        } else if UPLOADS.contains(path) {
            Rule::idle(self.limits.upload_idle, self.limits.upload_min_rate)
        } else {
            Rule::Whole(self.limits.request)
        };
        let (parts, body) = req.into_parts();
        let body = GuardedBody::new(body, rule, self.limits.max_message_bytes);
        let body = tonic::body::Body::new(body);
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// The body must end within this long of the call's start.
    Whole(Duration),
    /// At least this many bytes (>= 1) within each window of this long.
    Idle(Duration, usize),
    /// Health checks and reflection: sized, never timed.
    Untimed,
}

impl Rule {
    /// An upload's rule: `rate` bytes a second over each `window` (at least a byte).
    fn idle(window: Duration, rate: u64) -> Self {
        let bytes = u128::from(rate) * window.as_millis() / 1000;
        Rule::Idle(window, usize::try_from(bytes).unwrap_or(usize::MAX).max(1))
    }
}

/// Reads the gRPC length prefixes (1 flag byte, 4 length bytes, big-endian) out
/// of a body's bytes, however the frames cut them.
#[derive(Debug, Default)]
struct Prefixes {
    /// Bytes of the current message still to pass before the next prefix.
    skip: usize,
    prefix: [u8; 5],
    /// Bytes of the next prefix seen so far.
    have: usize,
}

impl Prefixes {
    /// The first announced length over `max` in `data`, if any.
    fn oversize(&mut self, mut data: &[u8], max: usize) -> Option<usize> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > max {
                    return Some(len);
                }
                self.skip = len;
            }
        }
        None
    }
}

/// A request body that fails with DEADLINE_EXCEEDED when its [`Rule`] is broken,
/// and with RESOURCE_EXHAUSTED when a message announces more than the limit.
#[derive(Debug)]
pub struct GuardedBody<B> {
    inner: B,
    rule: Rule,
    /// None for [`Rule::Untimed`].
    timer: Option<Pin<Box<Sleep>>>,
    prefixes: Prefixes,
    max_message_bytes: usize,
    /// Bytes of an upload since its window last restarted.
    window_bytes: usize,
    /// Ended, or failed: the timer no longer applies.
    done: bool,
}

impl<B> GuardedBody<B> {
    fn new(inner: B, rule: Rule, max_message_bytes: usize) -> Self {
        let timer = match rule {
            Rule::Whole(d) | Rule::Idle(d, _) => Some(Box::pin(tokio::time::sleep(d))),
            Rule::Untimed => None,
        };
        Self {
            inner,
            rule,
            timer,
            prefixes: Prefixes::default(),
            max_message_bytes,
            window_bytes: 0,
            done: false,
        }
    }

    fn oversize(&self, len: usize) -> tonic::Status {
        metrics::counter!("rankmesh_request_oversize_total").increment(1);
        tonic::Status::resource_exhausted(format!(
            "a request message of {len} bytes; at most {} (server.max_message_bytes)",
            self.max_message_bytes
        ))
    }

    fn expired(&self) -> tonic::Status {
        metrics::counter!("rankmesh_request_body_timeouts_total").increment(1);
        let message = match self.rule {
            Rule::Whole(d) => format!(
                "the request did not arrive within {} ms (server.request_body_timeout_ms)",
                d.as_millis()
            ),
            Rule::Idle(d, _) if self.window_bytes == 0 => format!(
                "the upload sent nothing for {} ms (server.upload_idle_timeout_ms); nothing was stored",
                d.as_millis()
            ),
            Rule::Idle(d, min) => format!(
                "the upload sent {} bytes in {} ms, under its minimum of {min} (server.upload_min_bytes_per_sec over server.upload_idle_timeout_ms); nothing was stored",
                self.window_bytes,
                d.as_millis()
            ),
            Rule::Untimed => "the request's deadline passed".to_owned(),
        };
        tonic::Status::deadline_exceeded(message)
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes, Error = tonic::Status> + Unpin,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.done {
            return polled;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(len) = this.prefixes.oversize(data, this.max_message_bytes)
                {
                    this.done = true;
                    return Poll::Ready(Some(Err(this.oversize(len))));
                }
                if let (Rule::Idle(window, min), Some(timer)) = (this.rule, this.timer.as_mut()) {
                    this.window_bytes += frame.data_ref().map_or(0, Bytes::len);
                    // A window that ran out while the handler was busy (not reading)
                    // is the server's delay, not the client's: a new one starts.
                    if this.window_bytes >= min || timer.is_elapsed() {
                        this.window_bytes = 0;
                        timer.as_mut().reset(Instant::now() + window);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.done = true;
                Poll::Ready(other)
            }
            Poll::Pending => match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.done = true;
                    Poll::Ready(Some(Err(this.expired())))
                }
                Some(Poll::Pending) | None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit the trickled bodies (of b"x" bytes, announcing 0x78787878) exceed
    /// only where a test means them to: no prefix parsing in the timing tests.
    const MAX: usize = usize::MAX;

    /// A 5-byte prefix announcing `len` bytes.
    fn prefix(len: u32) -> Vec<u8> {
        let mut p = vec![0];
        p.extend(len.to_be_bytes());
        p
    }

    #[test]
    fn prefixes_are_read_however_the_frames_cut_them() {
        // Two messages of 3 and 2 bytes, then one announcing 1000.
        let mut body = prefix(3);
        body.extend(b"abc");
        body.extend(prefix(2));
        body.extend(b"de");
        body.extend(prefix(1000));
        for cut in 1..=body.len() {
            let mut p = Prefixes::default();
            let found: Vec<usize> = body
                .chunks(cut)
                .filter_map(|c| p.oversize(c, 999))
                .collect();
            assert_eq!(found, [1000], "frames of {cut} bytes");
            let mut p = Prefixes::default();
            assert!(body.chunks(cut).all(|c| p.oversize(c, 1000).is_none()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversize_message_is_refused_at_its_prefix() {
        let mut data = prefix(2);
        data.extend(b"ok");
        data.extend(prefix(17));
        let frames: Vec<Result<Frame<Bytes>, tonic::Status>> = vec![
            Ok(Frame::data(Bytes::from(data))),
            // Never sent: refused before.
            Ok(Frame::data(Bytes::from(vec![0; 17]))),
        ];
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let guarded = GuardedBody::new(body, Rule::Whole(Duration::from_secs(1)), 16);
        let e = read(guarded).await.expect_err("17 bytes > 16");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message()
                .contains("17 bytes; at most 16 (server.max_message_bytes)"),
            "{e:?}"
        );
    }

    /// A body that yields `frames` one `gap` apart, then ends.
    fn trickle(frames: usize, gap: Duration) -> tonic::body::Body {
        let stream = futures::stream::unfold(0, move |i| async move {
            if i == frames {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((
                Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"x"))),
                i + 1,
            ))
        });
        tonic::body::Body::new(http_body_util::StreamBody::new(stream))
    }

    /// Reads a body to its end: the bytes, or the error it ended with.
    async fn read(body: GuardedBody<tonic::body::Body>) -> Result<usize, tonic::Status> {
        use http_body_util::BodyExt;
        let mut body = std::pin::pin!(body);
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            n += frame?.into_data().map_or(0, |d| d.len());
        }
        Ok(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_must_arrive_whole_in_time() {
        let ms = Duration::from_millis;
        // 5 frames 10 ms apart: whole in 50 ms, within 100.
        let ok = GuardedBody::new(trickle(5, ms(10)), Rule::Whole(ms(100)), MAX);
        assert_eq!(read(ok).await.expect("in time"), 5);
        // 20 frames 10 ms apart: each gap is short, but the whole takes 200 ms.
        let slow = GuardedBody::new(trickle(20, ms(10)), Rule::Whole(ms(100)), MAX);
        let e = read(slow).await.expect_err("trickled");
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("request_body_timeout_ms"), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn health_and_reflection_are_never_timed() {
        let ms = Duration::from_millis;
        let session = GuardedBody::new(trickle(3, ms(60_000)), Rule::Untimed, MAX);
        assert_eq!(read(session).await.expect("untimed"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_may_be_long_but_not_idle() {
        let ms = Duration::from_millis;
        // 50 frames 10 ms apart (500 ms in all) with an idle limit of 30 ms.
        let long = GuardedBody::new(trickle(50, ms(10)), Rule::idle(ms(30), 0), MAX);
        assert_eq!(read(long).await.expect("never idle"), 50);
        // A gap of 100 ms.
        let stalled = GuardedBody::new(trickle(3, ms(100)), Rule::idle(ms(30), 0), MAX);
        let e = read(stalled).await.expect_err("stalled");
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("upload_idle_timeout_ms"), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_must_keep_its_minimum_rate() {
        let ms = Duration::from_millis;
        // 1 byte every 10 ms: 3 or 4 bytes in each 35 ms window. 60 bytes a second
        // asks for 2 a window.
        let brisk = GuardedBody::new(trickle(50, ms(10)), Rule::idle(ms(35), 60), MAX);
        assert_eq!(read(brisk).await.expect("fast enough"), 50);
        // 200 a second asks for 7 a window: never met.
        let slow = GuardedBody::new(trickle(50, ms(10)), Rule::idle(ms(35), 200), MAX);
        let e = read(slow).await.expect_err("too slow");
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("upload_min_bytes_per_sec"), "{e:?}");
        assert!(e.message().contains("under its minimum of 7"), "{e:?}");
        // However low the rate, a window needs a byte.
        assert_eq!(Rule::idle(ms(30), 0), Rule::Idle(ms(30), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_handler_is_not_the_clients_delay() {
        use http_body_util::BodyExt;
        let ms = Duration::from_millis;
        // The client sends 10 bytes every 10 ms, held back by flow control (a
        // channel of one frame) while the handler does not read.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..20 {
                let frame = Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(&[b'x'; 10])));
                if tx.send(frame).await.is_err() {
                    return;
                }
                tokio::time::sleep(ms(10)).await;
            }
        });
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        // 625 bytes a second over 40 ms windows: 25 a window, under the client's 40.
        let mut body = std::pin::pin!(GuardedBody::new(body, Rule::idle(ms(40), 625), MAX));
        let first = body.frame().await.expect("a frame").expect("data");
        let mut n = first.into_data().map_or(0, |d| d.len());
        // The handler works for 100 ms before it reads on: the window ran out
        // meanwhile, with one frame waiting. That is not the client's delay.
        tokio::time::sleep(ms(100)).await;
        while let Some(frame) = body.frame().await {
            n += frame.expect("read on").into_data().map_or(0, |d| d.len());
        }
        assert_eq!(n, 200);
    }
}
