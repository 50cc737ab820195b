//! Test kit for rankmesh's cross-service tests: a real etcd (one node or a cluster)
//! on free loopback ports in a temp dir, service binaries as real processes, and
//! polling helpers. Everything started here is killed on drop.
//!
//! Service binaries are found next to the test executable's target directory, so
//! build them first: `cargo build --workspace --bins` (`scripts/test` does).

pub mod catalog;
pub mod drill;
pub mod etcd;
pub mod mesh;
pub mod process;
pub mod redis;
pub mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago, for one listener of a process a
/// test starts. Taken from [`free_port_block`]'s allocator, so it is below the
/// ephemeral range and never handed out twice in one test binary (tests run in
/// parallel; a port the OS hands out for `:0` can be taken by any outgoing
/// connection before the service binds it, which failed CI once).
pub fn free_port() -> u16 {
    free_port_block(1)
}

/// The first of `n` consecutive loopback ports that are free now, for a process
/// tree that is handed a port range (`meshctl up --base-port`). Chosen below the
/// ephemeral range (32768+), where outgoing connections cannot take them before the
/// services bind, from a cursor that only moves forward, so no two callers in this
/// binary get overlapping ports; the random start keeps test binaries run side by
/// side apart.
pub fn free_port_block(n: u16) -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static SEED: OnceLock<u32> = OnceLock::new();
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    let seed = *SEED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761)
    });
    let n32 = u32::from(n);
    for _ in 0..1_000u32 {
        let offset = CURSOR.fetch_add(n32, Ordering::Relaxed);
        let start = LOW + seed.wrapping_add(offset) % (SPAN - n32);
        let start = start as u16;
        if (start..start + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return start;
        }
    }
    panic!("no block of {n} free loopback ports between 10000 and 32767");
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics after `timeout` naming
/// `what`. Use instead of sleeps: waits only as long as needed.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 GET for admin endpoints: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = addr.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
