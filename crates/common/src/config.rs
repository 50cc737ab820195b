//! Layered configuration: compiled-in defaults, then a TOML file, then
//! `RANKMESH__SECTION__KEY` environment variables.
//!
//! Every service has one typed `Config` (serde, `deny_unknown_fields`, `Default`). The
//! layers are merged as TOML trees and deserialized once, so a misspelt key or a
//! value of the wrong type is reported with its dotted path, the offending value and
//! where it came from (file or environment variable). Binaries exit with
//! [`EXIT_CONFIG`] on such an error, before binding anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Exit code for a bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Prefix of environment overrides: `RANKMESH__SERVER__LISTEN=0.0.0.0:7000`.
pub const ENV_PREFIX: &str = "RANKMESH__";

/// A configuration that cannot be used; the message names the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` = {value} (from {origin}): {message}")]
    Invalid {
        key: String,
        value: String,
        origin: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// Where a key's value came from, for error messages.
type Origins = BTreeMap<String, String>;

/// Loads `C` from its defaults, the optional TOML file and the given environment
/// (pass `std::env::vars()` in binaries; tests pass their own).
pub fn load<C>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError>
where
    C: Serialize + DeserializeOwned + Default,
{
    let text = match file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
        ),
        None => None,
    };
    load_text(file.zip(text.as_deref()), env)
}

/// [`load`] with the file already read: `(path it came from, its text)`. Pure, so
/// the fuzz target `config` runs it on arbitrary files and environments.
pub fn load_text<C>(
    file: Option<(&Path, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<C, ConfigError>
where
    C: Serialize + DeserializeOwned + Default,
{
    let mut origins = Origins::new();
    let mut tree = match Value::try_from(C::default()) {
        Ok(Value::Table(t)) => t,
        // A config struct always serializes to a table; anything else is a bug in the
        // service's Config type, not in the user's input.
        other => panic!("Config::default() must serialize to a TOML table, got {other:?}"),
    };

    if let Some((path, text)) = file {
        let file_tree: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let origin = format!("file {}", path.display());
        merge(&mut tree, file_tree, "", &origin, &mut origins);
    }

    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic order, so the same environment always yields the same config.
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "expected RANKMESH__SECTION__KEY with non-empty parts".into(),
            });
        }
        set_path(&mut tree, &path, &raw).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        origins.insert(path.join("."), format!("environment variable {var}"));
    }

    let merged = Value::Table(tree.clone());
    serde_path_to_error::deserialize(merged).map_err(|err| {
        let key = err.path().to_string();
        let message = err.inner().to_string();
        let (key, value) = describe(&tree, &key, &message);
        let origin = origin_of(&origins, &key);
        ConfigError::Invalid {
            key,
            value,
            origin,
            message,
        }
    })
}

/// Deep-merges `src` into `dst`: tables merge key by key, anything else replaces.
fn merge(dst: &mut Table, src: Table, prefix: &str, origin: &str, origins: &mut Origins) {
    for (k, v) in src {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (dst.get_mut(&k), v) {
            (Some(Value::Table(d)), Value::Table(s)) => merge(d, s, &path, origin, origins),
            (_, v) => {
                origins.insert(path, origin.to_owned());
                dst.insert(k, v);
            }
        }
    }
}

/// Sets a dotted path from an environment string. The string is read as the type of
/// the value it replaces (so `RANKMESH__SERVER__LISTEN=8080` stays a string where a
/// string is expected); new keys are read as TOML when they parse, else as strings.
fn set_path(tree: &mut Table, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut node = tree;
    for p in parents {
        let entry = node
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        node = match entry {
            Value::Table(t) => t,
            _ => return Err(format!("`{p}` is not a section")),
        };
    }
    let value = match node.get(last) {
        Some(Value::String(_)) => Value::String(raw.to_owned()),
        Some(Value::Array(_)) if !raw.trim_start().starts_with('[') => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| parse_scalar(s).unwrap_or_else(|| Value::String(s.to_owned())))
                .collect(),
        ),
        _ => parse_scalar(raw).unwrap_or_else(|| Value::String(raw.to_owned())),
    };
    node.insert(last.clone(), value);
    Ok(())
}

fn parse_scalar(raw: &str) -> Option<Value> {
    let doc: Table = format!("v = {raw}").parse().ok()?;
    doc.get("v").cloned()
}

/// Turns serde's path (which stops at the struct holding an unknown field) into the
/// full key, and renders the offending value.
fn describe(tree: &Table, path: &str, message: &str) -> (String, String) {
    let mut key = if path == "." {
        String::new()
    } else {
        path.to_owned()
    };
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        && !key.ends_with(field)
    {
        key = if key.is_empty() {
            field.to_owned()
        } else {
            format!("{key}.{field}")
        };
    }
    let mut node = Some(&Value::Table(tree.clone())).cloned();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        node = match node {
            Some(Value::Table(t)) => t.get(part).cloned(),
            Some(Value::Array(a)) => part.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
            _ => None,
        };
    }
    let value = node.map_or_else(|| "(missing)".to_owned(), |v| v.to_string());
    (key, value)
}

fn origin_of(origins: &Origins, key: &str) -> String {
    // The most specific layer that set this key or one of its parents.
    let mut probe = key.to_owned();
    loop {
        if let Some(o) = origins.get(&probe) {
            return o.clone();
        }
        match probe.rfind('.') {
            Some(i) => probe.truncate(i),
            None => return "defaults".to_owned(),
        }
    }
}

/// Command-line arguments shared by every service binary.
#[derive(Debug, Clone, clap::Parser)]
pub struct ServiceArgs {
    /// TOML config file; defaults, then this file, then RANKMESH__* env overrides.
    #[arg(long, short, env = "RANKMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Ask the admin port at ADDR (`host:port`) whether that replica is ready and
    /// exit 0 if it is, 1 if not: a container health check for images that have no
    /// shell or curl.
    #[arg(long, value_name = "ADDR")]
    pub probe_ready: Option<String>,
}

/// `GET /ready` on `addr` within 2 s: true on HTTP 200.
fn probe_ready(addr: &str) -> bool {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let timeout = std::time::Duration::from_secs(2);
    let ask = || -> std::io::Result<bool> {
        let target = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&target, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(
            format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(&head[9..12] == b"200")
    };
    ask().unwrap_or(false)
}

/// Loads a service config for a binary: parses [`ServiceArgs`], runs `validate`,
/// and on any error prints it and exits with [`EXIT_CONFIG`] (`--print-config`
/// included, so it is the check a start would make).
pub fn load_or_exit<C>(validate: impl Fn(&C) -> Result<(), ConfigError>) -> C
where
    C: Serialize + DeserializeOwned + Default,
{
    let args = <ServiceArgs as clap::Parser>::parse();
    if let Some(addr) = &args.probe_ready {
        std::process::exit(if probe_ready(addr) { 0 } else { 1 });
    }
    match load::<C>(args.config.as_deref(), std::env::vars()).and_then(|c| validate(&c).map(|()| c))
    {
        Ok(config) => {
            if args.print_config {
                // No config value is a secret (keys and tokens are files named
                // by path), so the whole config can be printed and shared.
                let rendered =
                    toml::Value::try_from(&config).and_then(|v| toml::to_string_pretty(&v));
                match rendered {
                    Ok(s) => print!("{s}"),
                    Err(e) => eprintln!("cannot render config: {e}"),
                }
                std::process::exit(0);
            }
            config
        }
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

/// The gRPC and admin listeners of a service and how it serves and drains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC listen address; port 0 picks a free port.
    pub listen: String,
    /// Admin HTTP listen address (`/metrics`, `/live`, `/ready`).
    pub admin_listen: String,
    /// Plaintext gRPC listen address serving only `grpc.health.v1`, for
    /// orchestrators' gRPC probes (Kubernetes' cannot speak TLS): service `""` is
    /// SERVING exactly when `/ready` answers 200, `liveness` while the process
    /// runs. Empty: not served. Like the admin port, it tells nothing secret.
    pub probe_listen: String,
    /// Host registered in discovery; empty uses the bound IP.
    pub advertise_host: String,
    /// gRPC port registered in discovery; 0 uses the bound port. Set when callers
    /// reach this instance through something in between (a NAT, or a drill's fault
    /// proxy).
    pub advertise_port: u16,
    /// Requests served at once; beyond it the service answers RESOURCE_EXHAUSTED
    /// immediately instead of queueing.
    pub max_concurrency: usize,
    /// Largest decoded request message, bytes.
    pub max_message_bytes: usize,
    /// HTTP/2 streams one client connection may have open at once (the
    /// SETTINGS_MAX_CONCURRENT_STREAMS the server advertises).
    pub max_concurrent_streams: u32,
    /// A one-message request must arrive whole within this long of its call's
    /// start, or the call ends in DEADLINE_EXCEEDED (a client trickling a request
    /// holds an in-flight slot no longer).
    pub request_body_timeout_ms: u64,
    /// An upload (ImportCatalog, PublishModel) may take as long as its size needs,
    /// but fails with DEADLINE_EXCEEDED after this long without a byte, or without
    /// `upload_min_bytes_per_sec` times this long in bytes.
    pub upload_idle_timeout_ms: u64,
    /// An upload's slowest average rate over each `upload_idle_timeout_ms` window,
    /// bytes a second; 0 asks only for a byte a window. Stops an upload trickled a
    /// few bytes at a time from holding the import for ever.
    pub upload_min_bytes_per_sec: u64,
    /// After deregistering, how long to keep accepting so that clients watching
    /// discovery stop sending here before connections close.
    pub shutdown_grace_ms: u64,
    /// Longest wait for in-flight calls to finish on shutdown.
    pub drain_timeout_ms: u64,
    /// Instance id in discovery; empty derives one from host name, pid and port.
    pub instance_id: String,
    /// Mutual TLS: this instance's identity (to serve, and to call other
    /// services) and the mesh CA.
    pub tls: TlsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            probe_listen: String::new(),
            advertise_host: String::new(),
            advertise_port: 0,
            max_concurrency: 256,
            max_message_bytes: rankmesh_proto::limits::MAX_MESSAGE_BYTES,
            max_concurrent_streams: 128,
            request_body_timeout_ms: 10_000,
            upload_idle_timeout_ms: 30_000,
            upload_min_bytes_per_sec: 1024,
            shutdown_grace_ms: 200,
            drain_timeout_ms: 10_000,
            instance_id: String::new(),
            tls: TlsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Checks values the type system cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent_streams == 0 {
            return Err(invalid("server.max_concurrent_streams", 0, "must be >= 1"));
        }
        for (field, ms) in [
            (
                "server.request_body_timeout_ms",
                self.request_body_timeout_ms,
            ),
            ("server.upload_idle_timeout_ms", self.upload_idle_timeout_ms),
        ] {
            if ms == 0 {
                return Err(invalid(field, 0, "must be >= 1"));
            }
        }
        self.tls.validate()
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// This workload's TLS identity: the mesh CA it trusts, its certificate and key
/// (`meshctl certs issue`), used to serve (clients must present a certificate from
/// the same CA) and to call other services. Re-read when the files change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The mesh CA certificate (PEM).
    pub ca: PathBuf,
    /// This workload's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM; keep it 0600).
    pub key: PathBuf,
    /// Serve and call in plaintext. Only for a mesh on a network nobody else
    /// reaches; logged as a warning at start.
    pub insecure: bool,
    /// Bearer tokens for storefronts that cannot hold a client certificate: name
    /// -> owner-only file holding the token. A call over TLS without a client
    /// certificate that presents `authorization: Bearer <token>` is the caller
    /// `spiffe://rankmesh/storefront/<name>` (the storefront role, no other).
    /// With any set, client certificates become optional on this server.
    pub storefront_token_files: std::collections::BTreeMap<String, PathBuf>,
}

impl TlsConfig {
    /// The files to use; None for plaintext (`insecure`, or none configured).
    pub fn files(&self) -> Option<rankmesh_tls::TlsFiles> {
        let set = [&self.ca, &self.cert, &self.key]
            .iter()
            .all(|p| !p.as_os_str().is_empty());
        (!self.insecure && set).then(|| rankmesh_tls::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        })
    }

    /// All three files, or none with `insecure`: a service without an identity
    /// refuses to start rather than serve plaintext by accident (fail closed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        all_or_none("server.tls", [&self.ca, &self.cert, &self.key])?;
        // The same reading serve() does, so a bad name or file stops the
        // service before it binds anything.
        crate::authz::StorefrontTokens::load(&self.storefront_token_files)
            .map_err(|e| invalid("server.tls.storefront_token_files", "(not shown)", &e))?;
        if self.insecure && !self.storefront_token_files.is_empty() {
            return Err(invalid(
                "server.tls.storefront_token_files",
                "(set)",
                "bearer tokens travel over TLS only, and server.tls.insecure is set",
            ));
        }
        match (self.ca.as_os_str().is_empty(), self.insecure) {
            (true, false) => Err(invalid("server.tls", "(not set)", NO_IDENTITY)),
            (false, true) => Err(invalid(
                "server.tls.insecure",
                "true",
                "TLS files are set too: choose mutual TLS or plaintext",
            )),
            _ => Ok(()),
        }
    }
}

/// Why a service without TLS files does not start.
pub const NO_IDENTITY: &str = "no TLS identity: set server.tls.ca, .cert and .key \
     (meshctl certs issue), or server.tls.insecure = true to serve plaintext \
     (anyone who reaches the port can then call any RPC)";

impl TlsConfig {
    /// Plaintext on purpose: what in-process test servers and a trusted network
    /// use.
    pub fn insecure() -> Self {
        Self {
            insecure: true,
            ..Self::default()
        }
    }
}

/// A CA, a certificate and a key: all three set, or none.
fn all_or_none(section: &str, files: [&PathBuf; 3]) -> Result<(), ConfigError> {
    let set: Vec<bool> = files.iter().map(|p| !p.as_os_str().is_empty()).collect();
    if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
        let [ca, cert, key] = files;
        return Err(ConfigError::Invalid {
            key: section.into(),
            value: format!("ca = {ca:?}, cert = {cert:?}, key = {key:?}"),
            origin: "config".into(),
            message: format!("set all of {section}.ca, .cert and .key, or none"),
        });
    }
    Ok(())
}

/// TLS towards etcd, for `https://` endpoints: the CA that signed the members'
/// certificates and this workload's client certificate (etcd runs with
/// `--client-cert-auth`). A mesh uses its workload identity for both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// The CA certificate the members' certificates chain to (PEM).
    pub ca: PathBuf,
    /// This workload's client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM; keep it 0600).
    pub key: PathBuf,
    /// The name the members' certificates must carry, whatever address is
    /// dialled; empty: `etcd.rankmesh`, the name of the mesh CA's members.
    pub server_name: String,
}

impl EtcdTlsConfig {
    /// A workload's identity files as its etcd client certificate, the members
    /// checked under the default name (`etcd.rankmesh`).
    pub fn with_identity(files: rankmesh_tls::TlsFiles) -> Self {
        Self {
            ca: files.ca,
            cert: files.cert,
            key: files.key,
            server_name: String::new(),
        }
    }

    /// The files; None when TLS is not configured.
    pub fn files(&self) -> Option<rankmesh_tls::TlsFiles> {
        (!self.ca.as_os_str().is_empty()).then(|| rankmesh_tls::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        })
    }
}

/// How a service reaches etcd, the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// `http://host:port` of each member; empty runs without etcd (static discovery,
    /// no election).
    pub endpoints: Vec<String>,
    /// Lease TTL of registrations and leadership, seconds (etcd's minimum is 2).
    pub lease_ttl_s: u64,
    /// How often each member's health is probed, milliseconds.
    pub health_check_interval_ms: u64,
    /// Timeout of one unary etcd request, milliseconds.
    pub request_timeout_ms: u64,
    /// TLS and the client certificate for `https://` endpoints.
    pub tls: EtcdTlsConfig,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            lease_ttl_s: 5,
            health_check_interval_ms: 1_000,
            request_timeout_ms: 2_000,
            tls: EtcdTlsConfig::default(),
        }
    }
}

impl EtcdConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }

    /// Checks values the type system cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled() && self.lease_ttl_s < 2 {
            return Err(invalid(
                "etcd.lease_ttl_s",
                self.lease_ttl_s,
                "must be >= 2",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    &format!("etcd.endpoints.{i}"),
                    format!("{e:?}"),
                    "must start with http:// or https://",
                ));
            }
        }
        let t = &self.tls;
        all_or_none("etcd.tls", [&t.ca, &t.cert, &t.key])?;
        let https = self.endpoints.iter().filter(|e| e.starts_with("https://"));
        match (https.count(), t.files().is_some()) {
            (0, true) => {
                return Err(invalid(
                    "etcd.tls",
                    "(set)",
                    "TLS towards etcd needs https:// endpoints",
                ));
            }
            (n, false) if n > 0 => {
                return Err(invalid(
                    "etcd.tls",
                    "(not set)",
                    "https:// endpoints need etcd.tls.ca, .cert and .key",
                ));
            }
            (n, true) if n < self.endpoints.len() => {
                return Err(invalid(
                    "etcd.endpoints",
                    self.endpoints.join(","),
                    "all https:// or all http://",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Builds a [`ConfigError::Invalid`] for a value that parsed but is out of range.
pub fn invalid(key: &str, value: impl ToString, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        origin: "validation".to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct TestConfig {
        server: ServerConfig,
        etcd: EtcdConfig,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:7000\"\nmax_concurrency = 8\n",
        )
        .expect("write");
        let c: TestConfig = load(
            Some(&path),
            env(&[
                ("RANKMESH__SERVER__MAX_CONCURRENCY", "16"),
                ("RANKMESH__ETCD__ENDPOINTS", "http://a:1, http://b:2"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.server.listen, "127.0.0.1:7000");
        assert_eq!(c.server.max_concurrency, 16);
        assert_eq!(c.server.drain_timeout_ms, 10_000);
        assert_eq!(c.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn env_string_stays_string() {
        let c: TestConfig =
            load(None, env(&[("RANKMESH__SERVER__INSTANCE_ID", "42")])).expect("valid");
        assert_eq!(c.server.instance_id, "42");
    }

    /// Loading must fail with a message that mentions each of `parts`.
    fn refused(path: Option<&Path>, vars: &[(&str, &str)], parts: &[&str]) {
        let msg = load::<TestConfig>(path, env(vars))
            .expect_err("must be refused")
            .to_string();
        for part in parts {
            assert!(msg.contains(part), "{part:?} missing from {msg}");
        }
    }

    #[test]
    fn bad_env_names_key_value_and_origin() {
        // An unknown key, and a number that is not one.
        let vars = [("RANKMESH__SERVER__LISTN", "x")];
        refused(None, &vars, &["server.listn", "RANKMESH__SERVER__LISTN"]);
        let vars = [("RANKMESH__ETCD__LEASE_TTL_S", "soon")];
        refused(None, &vars, &["etcd.lease_ttl_s", "soon"]);
    }

    #[test]
    fn bad_value_names_key_value_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nmax_concurrency = \"lots\"\n").expect("write");
        let parts = ["server.max_concurrency", "\"lots\"", "c.toml"];
        refused(Some(&path), &[], &parts);
    }

    #[test]
    fn validation_rejects_short_ttl_and_bare_endpoints() {
        let mut e = EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            lease_ttl_s: 1,
            ..EtcdConfig::default()
        };
        assert!(e.validate().is_err());
        e.lease_ttl_s = 2;
        assert!(e.validate().is_ok());
        e.endpoints = vec!["127.0.0.1:2379".into()];
        assert!(
            e.validate()
                .expect_err("bare")
                .to_string()
                .contains("etcd.endpoints.0")
        );
    }
}
