//! A real redis-server (Debian's package) on a free loopback port, with an
//! append-only file fsync'd on every write, in a temp dir; killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> Self {
        let bin = std::env::var("REDIS_BIN").unwrap_or_else(|_| "/usr/bin/redis-server".into());
        assert!(
            std::path::Path::new(&bin).exists(),
            "redis-server not found at {bin}; run scripts/setup (installs redis-server)"
        );
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let port = crate::free_port();
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.spawn(&bin);
        server
    }

    fn spawn(&mut self, bin: &str) {
        let child = Command::new(bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL), keeping its data directory.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data (after [`Self::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let bin = std::env::var("REDIS_BIN").unwrap_or_else(|_| "/usr/bin/redis-server".into());
        self.spawn(&bin);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
