//! The test kit's mesh CA: one per test binary, so the processes a test starts
//! ([`ServiceProcess`](crate::process::ServiceProcess), [`LocalMesh`](crate::mesh::LocalMesh))
//! and the clients it makes trust each other, every hop on mutual TLS as in a
//! deployed mesh. Its operator identity (`admin/tests`) is installed as this
//! process's SDK identity on first use, so SDK clients and
//! [`channel`] dial with it.
//!
//! The CA lives in a temp dir held for the life of the test binary (a static is
//! never dropped, so that dir is left behind in the temp folder: a few small files).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use rankmesh_tls::{Ca, Identity, TlsFiles, Validity};

/// The CA and the operator identity the test binary calls with.
pub struct KitCa {
    dir: tempfile::TempDir,
    ca: Ca,
    operator: TlsFiles,
}

impl std::fmt::Debug for KitCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KitCa")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Long enough for any test; short like a real workload's.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The test binary's CA, made (and its operator identity installed) on first use.
pub fn kit() -> &'static KitCa {
    static KIT: OnceLock<KitCa> = OnceLock::new();
    KIT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("kit CA dir");
        let ca = Ca::init(&dir.path().join("ca")).expect("kit CA");
        let id = Identity::new("admin", "tests").expect("identity");
        let operator = ca
            .issue_to(&id, Validity::from_now(LIFETIME), &[], dir.path())
            .expect("operator certificate");
        let tls = rankmesh_tls::client::ClientTls::new(&operator).expect("operator identity");
        rankmesh_tls::client::install(tls);
        KitCa { dir, ca, operator }
    })
}

impl KitCa {
    /// A certificate for `role`/`name` (and `hosts`) written into `dir`.
    pub fn issue(&self, role: &str, name: &str, hosts: &[String], dir: &Path) -> TlsFiles {
        let id = Identity::new(role, name).expect("identity");
        self.ca
            .issue_to(&id, Validity::from_now(LIFETIME), hosts, dir)
            .expect("issue a certificate")
    }

    /// The operator's files (`admin/tests`): what meshctl is pointed at.
    pub fn operator(&self) -> &TlsFiles {
        &self.operator
    }

    /// Puts this CA where `meshctl up --state-dir STATE` looks for its CA
    /// (`STATE/tls/ca`), so the mesh it starts trusts the test binary's clients.
    pub fn seed(&self, state_dir: &Path) {
        let to = state_dir.join("tls/ca");
        std::fs::create_dir_all(&to).expect("state CA dir");
        for name in [rankmesh_tls::ca::CA_CERT, rankmesh_tls::ca::CA_KEY] {
            let bytes = std::fs::read(self.dir.path().join("ca").join(name)).expect("kit CA file");
            rankmesh_tls::ca::write_private(&to.join(name), &bytes).expect("seed the CA");
        }
    }
}

/// A channel to the gRPC server at `addr` (`host:port` or a URL) with the kit's
/// operator identity: what a test uses where it would dial a raw tonic channel.
pub async fn channel(addr: &str) -> Option<tonic::transport::Channel> {
    kit();
    // Long enough for a throttled model fetch; calls carry their own deadlines.
    rankmesh_client::connect(addr, Duration::from_secs(600))
        .await
        .ok()
}
