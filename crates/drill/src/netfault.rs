//! Network faults for drills: a TCP proxy on one link of one instance (its callers
//! to it, or it to etcd) that impairs what passes through it, on command. Latency
//! (a delay with jitter), loss (as TCP shows it to the application) and a
//! partition (nothing passes either way; connections stay open and hang, as they
//! do when packets vanish).
//!
//! Why a proxy and not `tc netem`: the kernels this runs on (here and in CI) lack
//! sch_netem ("Specified qdisc kind is unknown") and cannot create dummy or veth
//! links, so there is no qdisc to impair. The instance advertises the proxy's port
//! in discovery (`server.advertise_port`), so every caller that finds it through
//! etcd goes through the proxy, and its etcd endpoints can point at proxies too.
//!
//! What each impairment does to the byte stream, and why that is faithful:
//! - delay: every chunk read is delivered `delay ± jitter` later, never before the
//!   chunk ahead of it (TCP delivers in order).
//! - loss: a chunk is lost with probability p and arrives after a retransmission
//!   timeout (200 ms, Linux's minimum RTO), doubled for each further loss of the
//!   same chunk; everything behind it waits (head-of-line blocking). TCP never shows
//!   a gap, so this is what loss looks like above it: stalls.
//! - partition: nothing is read or written. The senders' kernel buffers fill and
//!   their writes block; connections opened meanwhile are accepted by the kernel
//!   but see no bytes. When it heals, what was held flows on, as after a partition
//!   shorter than TCP's retransmission give-up.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Linux's minimum retransmission timeout: a lost segment arrives this late.
const MIN_RTO: Duration = Duration::from_millis(200);
/// Largest chunk forwarded at once (one "segment" for the loss model).
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction before the proxy stops reading (backpressure).
const IN_FLIGHT: usize = 64;

/// What the link does to the bytes through it now. The default passes them as
/// they come.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    pub delay: Duration,
    /// Each chunk's delay is `delay` plus or minus up to this much.
    pub jitter: Duration,
    /// Probability (0..=1) that a chunk is lost and retransmitted.
    pub loss: f64,
    /// A partition: nothing passes.
    pub cut: bool,
}

impl Impairment {
    /// When a chunk read at `now` is delivered, given the one before it.
    fn deliver_at(&self, now: Instant, previous: Instant) -> Instant {
        let mut delay = self.delay;
        if !self.jitter.is_zero() {
            let j = self.jitter.as_secs_f64() * (2.0 * rand::random::<f64>() - 1.0);
            delay = Duration::from_secs_f64((delay.as_secs_f64() + j).max(0.0));
        }
        let mut rto = MIN_RTO;
        // Bounded: at loss 1.0 a chunk would never arrive; 6 retransmissions is
        // TCP's behaviour for ~13 s, longer than any drill's deadline.
        for _ in 0..6 {
            if self.loss <= 0.0 || rand::random::<f64>() >= self.loss {
                break;
            }
            delay += rto;
            rto *= 2;
        }
        (now + delay).max(previous)
    }
}

/// A running proxy: listens on `addr`, forwards to its upstream, impaired as set.
/// Dropping it closes the listener and every connection through it.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: watch::Sender<Impairment>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0: any free port) and forwards each connection to
    /// `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(Impairment::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, state.clone()));
        Ok(Self {
            addr,
            state,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `impairment` to every connection, open or new, at once.
    pub fn set(&self, impairment: Impairment) {
        self.state.send_replace(impairment);
    }

    /// Back to passing bytes as they come.
    pub fn heal(&self) {
        self.set(Impairment::default());
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Sender<Impairment>,
) {
    // Owned here, so aborting this task drops (and aborts) every connection.
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((inbound, _)) => {
                connections.spawn(connection(inbound, upstream, state.subscribe()));
            }
            // Out of file descriptors and the like: back off, keep serving.
            Err(e) => {
                eprintln!("fault proxy {upstream}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

/// One proxied connection. When either direction ends (EOF, a reset), both close:
/// gRPC over HTTP/2 has no use for a half-closed connection.
async fn connection(
    inbound: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<Impairment>,
) {
    // A partitioned link lets no new connection through until it heals.
    if wait_uncut(&mut state).await.is_err() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        // Upstream refused: close the caller's side too, as the refusal would.
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        _ = pump(in_read, out_write, state.clone()) => {}
        _ = pump(out_read, in_write, state) => {}
    }
}

/// Copies one direction, each chunk delivered when the impairment says.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    state: watch::Receiver<Impairment>,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT);
    let mut read_state = state.clone();
    let read = async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let mut previous = Instant::now();
        loop {
            // A cut link reads nothing: the sender's buffers fill, as without acks.
            wait_uncut(&mut read_state).await?;
            buf.reserve(CHUNK);
            if from.read_buf(&mut buf).await? == 0 {
                return Ok::<_, io::Error>(());
            }
            let at = read_state.borrow().deliver_at(Instant::now(), previous);
            previous = at;
            if tx.send((at, buf.split().freeze())).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut write_state = state;
    let write = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            // Cut while this chunk was in flight: it waits for the heal.
            wait_uncut(&mut write_state).await?;
            to.write_all(&bytes).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

async fn wait_uncut(state: &mut watch::Receiver<Impairment>) -> io::Result<()> {
    state
        .wait_for(|i| !i.cut)
        .await
        .map(|_| ())
        .map_err(|_| io::Error::other("fault proxy stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).await.expect("write");
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).await.expect("read");
        back
    }

    async fn proxy() -> (FaultProxy, TcpStream) {
        let p = FaultProxy::start(([127, 0, 0, 1], 0).into(), echo().await)
            .await
            .expect("proxy");
        let s = TcpStream::connect(p.addr()).await.expect("connect");
        (p, s)
    }

    #[tokio::test]
    async fn passes_bytes_unchanged_when_healthy() {
        let (_p, mut s) = proxy().await;
        let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&mut s, &msg).await, msg);
    }

    #[tokio::test]
    async fn delay_holds_each_direction_back_at_least_that_long() {
        let (p, mut s) = proxy().await;
        round_trip(&mut s, b"warm").await;
        p.set(Impairment {
            delay: Duration::from_millis(100),
            ..Default::default()
        });
        let t = std::time::Instant::now();
        assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
        // Both directions pass the proxy: at least twice the delay.
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn deliveries_never_overtake_and_loss_adds_backed_off_timeouts() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let fast = Impairment::default();
        assert_eq!(fast.deliver_at(now, later), later, "in order");
        let lost = Impairment {
            loss: 1.0,
            ..Default::default()
        };
        // 200 + 400 + ... + 6400 ms: six retransmissions, then it gets through.
        assert_eq!(
            lost.deliver_at(now, now) - now,
            Duration::from_millis(12_600)
        );
        let jittery = Impairment {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            ..Default::default()
        };
        for _ in 0..100 {
            let d = jittery.deliver_at(now, now) - now;
            assert!(
                d >= Duration::from_millis(30) && d <= Duration::from_millis(70),
                "{d:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_partition_passes_nothing_until_it_heals_and_then_everything() {
        let (p, mut s) = proxy().await;
        round_trip(&mut s, b"before").await;
        p.set(Impairment {
            cut: true,
            ..Default::default()
        });
        s.write_all(b"held").await.expect("write");
        let mut buf = [0u8; 4];
        let held = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
        assert!(held.is_err(), "nothing may cross a partition");
        // A connection opened during the partition hangs too.
        let mut late = TcpStream::connect(p.addr())
            .await
            .expect("the kernel accepts");
        late.write_all(b"late").await.expect("write");
        let mut lbuf = [0u8; 4];
        let hung =
            tokio::time::timeout(Duration::from_millis(200), late.read_exact(&mut lbuf)).await;
        assert!(hung.is_err());
        p.heal();
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("delivered after the heal")
            .expect("read");
        assert_eq!(&buf, b"held");
        tokio::time::timeout(Duration::from_secs(5), late.read_exact(&mut lbuf))
            .await
            .expect("the late connection goes through")
            .expect("read");
        assert_eq!(&lbuf, b"late");
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let (p, mut s) = proxy().await;
        round_trip(&mut s, b"x").await;
        drop(p);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed, not hung");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
}
