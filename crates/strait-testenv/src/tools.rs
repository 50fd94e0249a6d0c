//! Finding the kube-apiserver/etcd binaries and the Gateway API CRDs.
//!
//! Both come from `scripts/build-kube-tools.sh` unless overridden by environment:
//! `STRAIT_KUBE_BIN_DIR` (a directory holding `kube-apiserver` and `etcd`) and
//! `STRAIT_GATEWAY_CRD_DIR` (a directory of CRD YAML files). Results are memoised per
//! process, so parallel tests run the script once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::TestEnvError;

/// Env var naming the directory holding `kube-apiserver` and `etcd`.
pub const BIN_DIR_ENV: &str = "STRAIT_KUBE_BIN_DIR";
/// Env var naming the directory of Gateway API CRD YAML files to install.
pub const CRD_DIR_ENV: &str = "STRAIT_GATEWAY_CRD_DIR";

/// `scripts/build-kube-tools.sh` of this workspace.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-kube-tools.sh")
}

/// The directory holding `kube-apiserver` and `etcd`: `$STRAIT_KUBE_BIN_DIR`, or built
/// (if needed) by `scripts/build-kube-tools.sh --print-dir`. Blocks while building.
pub fn kube_bin_dir() -> Result<PathBuf, TestEnvError> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| from_env_or_script(BIN_DIR_ENV, "--print-dir")).clone().map_err(TestEnvError::Tools).and_then(
        |dir| {
            for bin in ["kube-apiserver", "etcd"] {
                if !dir.join(bin).is_file() {
                    return Err(TestEnvError::Tools(format!("{} has no {bin}", dir.display())));
                }
            }
            Ok(dir)
        },
    )
}

/// The Gateway API standard-channel CRD directory: `$STRAIT_GATEWAY_CRD_DIR`, or
/// `scripts/build-kube-tools.sh --print-crd-dir` (the Go module cache's copy of
/// `sigs.k8s.io/gateway-api@v1.5.1/config/crd/standard`).
pub fn gateway_crd_dir() -> Result<PathBuf, TestEnvError> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| from_env_or_script(CRD_DIR_ENV, "--print-crd-dir")).clone().map_err(TestEnvError::Tools)
}

fn from_env_or_script(var: &str, mode: &str) -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let script = build_script();
    // stderr (build progress) goes to the test's stderr.
    let out = Command::new("bash")
        .arg(&script)
        .arg(mode)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} {mode} failed ({}); set {var} to skip it", script.display(), out.status));
    }
    let dir = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
    if dir.is_empty() {
        return Err(format!("{} {mode} printed nothing", script.display()));
    }
    Ok(PathBuf::from(dir))
}
