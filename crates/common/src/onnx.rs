//! ONNX Runtime for the services that run models: loading the shared library once,
//! building sessions on the best available execution provider (CUDA behind the `cuda`
//! feature, CPU otherwise, and always saying which one actually runs), and a pool of
//! sessions for blocking threads (`Session::run` takes `&mut self`).
//!
//! `ort` is built with `load-dynamic`: nothing is downloaded at build time, and
//! `libonnxruntime.so` comes from the `onnxruntime` wheel that `scripts/setup`
//! installs, found through `onnx.library` or `ORT_DYLIB_PATH`. A missing library is an
//! error at startup, never a panic.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use serde::{Deserialize, Serialize};

/// Where and how models run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxConfig {
    /// Path of `libonnxruntime.so`; empty uses `ORT_DYLIB_PATH`.
    pub library: String,
    /// `auto` (CUDA when built with it and a GPU is usable, else CPU), `cpu` or `cuda`
    /// (fail when CUDA cannot be used).
    pub device: Device,
    /// Sessions kept per model: model calls that can run at once.
    pub sessions: usize,
    /// Threads each session uses inside one operator. 0 (the default): the CPUs
    /// this process may use, divided among its sessions ([`Self::threads`]), so a
    /// container limited to `--cpus 2` runs 2 threads however many cores the host
    /// has. Keep sessions x threads at or below the cores available, or sessions
    /// fight over them.
    pub intra_threads: usize,
    /// Whether ONNX Runtime's pool threads busy-wait for work between runs. Off by
    /// default: a spinning thread holds a core while the model is idle, and the
    /// services share their cores (with each other, with the feature store, with
    /// the caller). Measured with `perf` in a drill on 2 cores: 77% of the ranking
    /// replicas' CPU was ONNX Runtime's spin loop (`pause`) around a 3 KB ranker.
    /// Turn it on for a host that gives a model its cores to itself, where it saves
    /// the wake-up latency of a blocked thread.
    pub spin: bool,
}

impl Default for OnnxConfig {
    fn default() -> Self {
        Self {
            library: String::new(),
            device: Device::Auto,
            sessions: 1,
            intra_threads: 0,
            spin: false,
        }
    }
}

/// The CPUs this process may run on: the scheduler affinity mask and the cgroup's
/// CPU quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), as the standard library
/// reads them; 1 when they cannot be read.
pub fn cpu_budget() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl OnnxConfig {
    pub fn validate(&self, section: &str) -> Result<(), crate::config::ConfigError> {
        if self.sessions == 0 {
            return Err(crate::config::invalid(
                &format!("{section}.sessions"),
                0,
                "must be >= 1",
            ));
        }
        Ok(())
    }

    /// Intra-op threads per session: `intra_threads`, or when 0 the CPU budget
    /// ([`cpu_budget`]) shared among the sessions, at least 1.
    pub fn threads(&self) -> usize {
        match self.intra_threads {
            0 => (cpu_budget() / self.sessions.max(1)).max(1),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

/// The execution provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error(
        "ONNX Runtime library not configured: set onnx.library or ORT_DYLIB_PATH (scripts/setup writes it to .rankmesh/env)"
    )]
    LibraryNotConfigured,
    #[error("ONNX Runtime library {path} cannot be loaded: {message}")]
    Library { path: PathBuf, message: String },
    #[error("CUDA was required (onnx.device = \"cuda\") but cannot be used: {0}")]
    CudaUnavailable(String),
    #[error("cannot load model: {0}")]
    Session(String),
}

static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment. Later calls
/// return the first outcome.
pub fn init_runtime(config: &OnnxConfig) -> Result<&'static Environment, OnnxError> {
    let path = if config.library.is_empty() {
        std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)
    } else {
        Some(PathBuf::from(&config.library))
    };
    let Some(path) = path else {
        return Err(OnnxError::LibraryNotConfigured);
    };
    let outcome = RUNTIME.get_or_init(|| load(&path));
    match outcome {
        Ok(env) => Ok(env),
        Err(message) => Err(OnnxError::Library {
            path,
            message: message.clone(),
        }),
    }
}

fn load(path: &Path) -> Result<Environment, String> {
    if !path.exists() {
        return Err("no such file".into());
    }
    let env = ort::init_from(path)
        .map_err(|e| e.to_string())?
        .with_name("rankmesh")
        .build()
        .map_err(|e| e.to_string())?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(env)
}

/// Whether sessions built with `config` will run on a GPU ([`resolve_device`]
/// chose CUDA). Used to pick a model variant (INT8 on CPU, FP32 on GPU) before
/// the model's own session exists: a replica that fell back to CPU fetches INT8.
pub fn expects_gpu(config: &OnnxConfig) -> bool {
    matches!(resolve_device(config), Ok(Provider::Cuda))
}

/// A 75-byte ONNX model (one `Relu` over a float[1]) that [`cuda_usable`] builds a
/// session of: registering the CUDA provider is lazy in ONNX Runtime, so only a
/// session proves that the provider library, its CUDA libraries, the driver and a
/// device are all there. Made with `onnx.helper` (opset 13, IR 8).
const PROBE_MODEL: &[u8] = &[
    8, 8, 18, 8, 114, 97, 110, 107, 109, 101, 115, 104, 58, 55, 10, 12, 10, 1, 120, 18, 1, 121, 34,
    4, 82, 101, 108, 117, 18, 5, 112, 114, 111, 98, 101, 90, 15, 10, 1, 120, 18, 10, 10, 8, 8, 1,
    18, 4, 10, 2, 8, 1, 98, 15, 10, 1, 121, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 66, 4, 10, 0,
    16, 13,
];

/// Whether this process can run models on CUDA: `Ok` or why not. Asked once per
/// process (the answer is a property of the build, the ONNX Runtime library and the
/// machine, not of a model), so a replica that falls back says so once, not once
/// per session or per model version.
fn cuda_usable(env: &Environment, config: &OnnxConfig) -> Result<(), String> {
    static USABLE: OnceLock<Result<(), String>> = OnceLock::new();
    USABLE
        .get_or_init(|| build_cuda(env, PROBE_MODEL, config).map(drop))
        .clone()
}

/// Why this process runs on CPU although its device allowed CUDA (`auto`), once
/// [`resolve_device`] found CUDA unusable; `None` when it runs on CUDA or was
/// configured for CPU.
pub fn gpu_fallback() -> Option<String> {
    FALLBACK.get().cloned()
}

static FALLBACK: OnceLock<String> = OnceLock::new();

/// The provider sessions built with `config` run on, decided once at start:
///
/// - `cpu`: CPU.
/// - `auto`: CUDA when the build has it and a session can be made on it (an ONNX
///   Runtime GPU library, the CUDA libraries, a driver and a device); otherwise CPU.
///   A CUDA build, which was meant for a GPU, logs the reason once as a warning and
///   keeps it for [`gpu_fallback`]; a CPU build is a CPU replica and says nothing.
/// - `cuda`: CUDA, or [`OnnxError::CudaUnavailable`] with the reason: a replica
///   told to require the GPU refuses to start rather than serve at CPU speed.
///
/// Services call it before serving, so the refusal comes at start, not at the
/// first model load (which for a registry-managed model happens in the background).
pub fn resolve_device(config: &OnnxConfig) -> Result<Provider, OnnxError> {
    let env = init_runtime(config)?;
    if config.device == Device::Cpu {
        return Ok(Provider::Cpu);
    }
    match cuda_usable(env, config) {
        Ok(()) => Ok(Provider::Cuda),
        Err(reason) if config.device == Device::Cuda => Err(OnnxError::CudaUnavailable(reason)),
        // A CPU build on `auto` is simply a CPU replica: nothing fell back.
        Err(_) if !cfg!(feature = "cuda") => Ok(Provider::Cpu),
        Err(reason) => {
            if FALLBACK.set(reason.clone()).is_ok() {
                tracing::warn!(%reason, "CUDA cannot be used; serving on CPU (onnx.device = \"cuda\" would refuse to start instead)");
            }
            Ok(Provider::Cpu)
        }
    }
}

/// Builds a session from model bytes held in memory (models are decrypted in memory
/// and never written to disk in plaintext), on the provider [`resolve_device`]
/// chose. Should CUDA refuse this one model (an operator it cannot place, memory)
/// where it took the probe, `auto` runs the model on CPU and says so, and `cuda`
/// fails.
pub fn build_session(model: &[u8], config: &OnnxConfig) -> Result<(Session, Provider), OnnxError> {
    let env = init_runtime(config)?;
    if resolve_device(config)? == Provider::Cuda {
        match build_cuda(env, model, config) {
            Ok(s) => return Ok((s, Provider::Cuda)),
            Err(e) if config.device == Device::Cuda => return Err(OnnxError::CudaUnavailable(e)),
            Err(e) => {
                tracing::warn!(reason = %e, "this model cannot run on CUDA; running it on CPU")
            }
        }
    }
    let session = builder(env, config)
        .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
        .and_then(|mut b| b.commit_from_memory(model))
        .map_err(|e| OnnxError::Session(e.to_string()))?;
    Ok((session, Provider::Cpu))
}

/// Sets `rankmesh_model_provider{model, provider}` to 1 for the provider `model`
/// now runs on and 0 for the other, so a dashboard sums replicas per provider and
/// a replica that moved (a new version loaded on CPU) stops counting as CUDA.
pub fn report_provider(model: &'static str, provider: Provider) {
    for p in [Provider::Cpu, Provider::Cuda] {
        metrics::gauge!("rankmesh_model_provider", "model" => model, "provider" => p.as_str())
            .set(if p == provider { 1.0 } else { 0.0 });
    }
}

/// A session builder with what every provider shares: full graph optimisation,
/// [`OnnxConfig::threads`], and whether pool threads spin.
fn builder(
    env: &Environment,
    config: &OnnxConfig,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    Session::builder(env)
        .and_then(|b| {
            b.with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(Into::into)
        })
        .and_then(|b| b.with_intra_threads(config.threads()).map_err(Into::into))
        .and_then(|b| b.with_intra_op_spinning(config.spin).map_err(Into::into))
        .and_then(|b| b.with_inter_op_spinning(config.spin).map_err(Into::into))
}

#[cfg(feature = "cuda")]
fn build_cuda(env: &Environment, model: &[u8], config: &OnnxConfig) -> Result<Session, String> {
    use ort::ep::ExecutionProvider as _;
    let cuda = ort::ep::CUDA::default();
    match ort::ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            return Err(
                "this ONNX Runtime library has no CUDA execution provider (the CPU wheel; scripts/setup --gpu installs the GPU one)"
                    .into(),
            );
        }
        Err(e) => return Err(e.to_string()),
    }
    builder(env, config)
        // error_on_failure: a silent fallback would report CUDA while running on CPU.
        .and_then(|b| {
            b.with_execution_providers([cuda.build().error_on_failure()])
                .map_err(Into::into)
        })
        .and_then(|mut b| b.commit_from_memory(model))
        // ONNX Runtime's messages end in a newline.
        .map_err(|e| e.to_string().trim_end().to_owned())
}

#[cfg(not(feature = "cuda"))]
fn build_cuda(_env: &Environment, _model: &[u8], _config: &OnnxConfig) -> Result<Session, String> {
    Err("this binary was built without the `cuda` feature".into())
}

/// How `/ready` reports a model that runs on `provider`: with [`gpu_fallback`]'s
/// reason when that is CPU for want of a usable GPU.
pub fn served_model(
    name: &str,
    version: u64,
    variant: &str,
    provider: Provider,
) -> crate::server::ServedModel {
    crate::server::ServedModel {
        name: name.to_owned(),
        version,
        variant: variant.to_owned(),
        provider: provider.as_str().to_owned(),
        gpu_fallback: (provider == Provider::Cpu).then(gpu_fallback).flatten(),
    }
}

/// Sessions of one model, lent to blocking threads one call at a time.
pub struct SessionPool {
    free: Mutex<Vec<Session>>,
    returned: Condvar,
    provider: Provider,
    size: usize,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("provider", &self.provider)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl SessionPool {
    /// Builds `config.sessions` sessions of `model`.
    pub fn new(model: &[u8], config: &OnnxConfig) -> Result<Self, OnnxError> {
        let mut sessions = Vec::with_capacity(config.sessions);
        let mut provider = Provider::Cpu;
        for _ in 0..config.sessions.max(1) {
            let (s, p) = build_session(model, config)?;
            provider = p;
            sessions.push(s);
        }
        Ok(Self {
            size: sessions.len(),
            free: Mutex::new(sessions),
            returned: Condvar::new(),
            provider,
        })
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` with an exclusive session, waiting for one to be free. Call from a
    /// blocking thread, never from an async worker.
    pub fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        let session = {
            let mut free = self
                .free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            loop {
                if let Some(s) = free.pop() {
                    break s;
                }
                free = self
                    .returned
                    .wait(free)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        // Return the session even if `f` panics, so the pool never shrinks.
        struct Return<'a> {
            pool: &'a SessionPool,
            session: Option<Session>,
        }
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                if let Some(s) = self.session.take() {
                    self.pool
                        .free
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(s);
                    self.pool.returned.notify_one();
                }
            }
        }
        let mut guard = Return {
            pool: self,
            session: Some(session),
        };
        match guard.session.as_mut() {
            Some(s) => f(s),
            None => unreachable!("the session was put in the guard just above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_threads_do_not_spin_unless_asked() {
        assert!(!OnnxConfig::default().spin);
        let c: OnnxConfig = toml::from_str("spin = true\nintra_threads = 1").expect("parse");
        assert!(c.spin);
        assert_eq!(c.intra_threads, 1);
        assert!(toml::from_str::<OnnxConfig>("spinning = true").is_err());
    }

    /// Threads follow the CPU budget unless set: shared among sessions, never 0.
    #[test]
    fn intra_threads_default_to_the_cpu_budget_per_session() {
        let budget = cpu_budget();
        assert_eq!(OnnxConfig::default().threads(), budget);
        let two = OnnxConfig {
            sessions: 2,
            ..OnnxConfig::default()
        };
        assert_eq!(two.threads(), (budget / 2).max(1));
        let many = OnnxConfig {
            sessions: budget + 1,
            ..OnnxConfig::default()
        };
        assert_eq!(many.threads(), 1);
        let set = OnnxConfig {
            intra_threads: 3,
            ..OnnxConfig::default()
        };
        assert_eq!(set.threads(), 3);
    }
}
