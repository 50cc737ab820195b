//! The disk-full fault: a small tmpfs mounted under the target's data before the
//! mesh starts, filled during the load, freed after the fault's duration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rankmesh_launcher as launcher;

use super::env::Env;
use crate::faults::undo_after;
use crate::report::Injected;
use crate::scenario::{Fault, FaultKind, Scenario};

/// Fills every target's disk; frees it after the fault's duration.
pub(super) fn disk_full(env: &Env, f: &Fault, injected: &mut Injected) -> anyhow::Result<()> {
    let mut filled = Vec::new();
    for t in &f.targets {
        let filler = data_dir(&env.state_dir, t).join(FILLER);
        let bytes = fill(&filler).with_context(|| format!("fill {}", filler.display()))?;
        injected.detail.push_str(&format!(
            "{t}'s {} MiB disk filled ({:.1} MiB of filler) for {} s; ",
            f.disk_mb,
            bytes as f64 / (1 << 20) as f64,
            f.duration_s
        ));
        filled.push(filler);
    }
    let hold = Duration::from_secs_f64(f.duration_s);
    undo_after(hold, filled, |filler| async move {
        std::fs::remove_file(&filler).with_context(|| format!("free {}", filler.display()))
    });
    Ok(())
}

/// The file a disk-full fault fills the disk with.
const FILLER: &str = "drill-disk-filler";

/// Where an instance (`feature-0`, `registry-0`) keeps its data.
fn data_dir(state_dir: &Path, instance: &str) -> PathBuf {
    let service = instance.rsplit_once('-').map_or(instance, |(s, _)| s);
    launcher::data_dir(state_dir, service)
}

/// Small disks a drill mounted; unmounted when dropped (after the mesh stopped).
#[derive(Debug, Default)]
pub(crate) struct Disks(Vec<PathBuf>);

impl Drop for Disks {
    fn drop(&mut self) {
        for d in &self.0 {
            match std::process::Command::new("umount").arg(d).status() {
                Ok(s) if s.success() => {}
                other => eprintln!("drill: umount {}: {other:?}", d.display()),
            }
        }
    }
}

/// Mounts a tmpfs of the fault's size under the data of every disk-full target, so
/// filling it fills nothing else. Keep the guard until the mesh has stopped.
pub(super) fn mount_disks(scenario: &Scenario, state_dir: &Path) -> anyhow::Result<Disks> {
    let mut mounted = Disks::default();
    for f in scenario
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::DiskFull)
    {
        for t in &f.targets {
            let dir = data_dir(state_dir, t);
            if mounted.0.contains(&dir) {
                continue;
            }
            std::fs::create_dir_all(&dir)?;
            let out = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={}m", f.disk_mb),
                    "tmpfs",
                ])
                .arg(&dir)
                .output()
                .context("run mount")?;
            if !out.status.success() {
                anyhow::bail!(
                    "disk-full mounts a {} MiB tmpfs at {} (root with CAP_SYS_ADMIN): {}",
                    f.disk_mb,
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            mounted.0.push(dir);
        }
    }
    Ok(mounted)
}

/// Writes zeros to `path` until the disk refuses more; the bytes written.
fn fill(path: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => return Ok(written),
            Err(e) => return Err(e),
        }
    }
}
