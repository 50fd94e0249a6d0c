//! `strait-testenv`: a **real** Kubernetes control plane for Strait's tests.
//!
//! [`TestEnv::start`] runs an etcd and a kube-apiserver (v1.36.3, both built from the Go
//! modules in `tools/` by `scripts/build-kube-tools.sh`) on free loopback ports, with a
//! fresh rcgen PKI, RBAC on, and the Gateway API v1.5.1 standard-channel CRDs installed
//! (read from the Go module cache, never hand-written). No controller-manager, scheduler
//! or kubelet runs: objects are stored and served, nothing reconciles them (no
//! ServiceAccount/token controllers, no namespace deletion, no EndpointSlices from
//! Pods). Everything lives in one temp directory that is removed on drop.
//!
//! ```no_run
//! # async fn demo() -> Result<(), strait_testenv::TestEnvError> {
//! use strait_testenv::{TestEnv, TestEnvOptions};
//! let env = TestEnv::start(TestEnvOptions::default()).await?;
//! let client = env.client().await?; // admin (system:masters)
//! let status = env.kubectl().args(["get", "crd", "grpcroutes.gateway.networking.k8s.io"]).status().unwrap();
//! assert!(status.success());
//! // A ServiceAccount's view (RBAC applies):
//! let token = env.service_account_token("app", "strait-proxy").await?;
//! let kubeconfig = env.kubeconfig_for_token(&token)?;
//! # let _ = (client, kubeconfig); Ok(()) }
//! ```
//!
//! Environment:
//! - `STRAIT_KUBE_BIN_DIR`: use the `kube-apiserver` and `etcd` in this directory instead of
//!   running `scripts/build-kube-tools.sh --print-dir` (which builds them on first use,
//!   a few minutes, then caches them under `~/.cache/strait/bin/<key>/`).
//! - `STRAIT_GATEWAY_CRD_DIR`: install the CRD YAML files of this directory instead of
//!   `scripts/build-kube-tools.sh --print-crd-dir`.
//! - `STRAIT_TESTENV_KEEP=1`: keep the env directory (PKI, kubeconfigs, logs, etcd data)
//!   after drop; its path is printed.
//! - `STRAIT_KUBECTL`: the kubectl binary for [`TestEnv::kubectl`] (default: the kubectl
//!   built with kube-apiserver by `scripts/build-kube-tools.sh`, else `kubectl` in PATH).
//!
//! Processes are killed on drop, and also if the test process dies (they are spawned
//! with `PR_SET_PDEATHSIG`).

mod certs;
mod process;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use serde_json::Value;

use crate::certs::Pki;
use crate::process::Proc;

/// Options for [`TestEnv::start`].
#[derive(Debug, Clone)]
pub struct TestEnvOptions {
    /// Appended to kube-apiserver's command line, e.g. `--feature-gates=...` or
    /// `--enable-admission-plugins=...`. A repeated scalar flag overrides the earlier
    /// value; a repeated list flag (`--disable-admission-plugins`, ...) *appends* to it.
    pub extra_apiserver_args: Vec<String>,
    /// Install the Gateway API standard-channel CRDs (and the channel's
    /// ValidatingAdmissionPolicy) and wait until every CRD is Established and served.
    /// Default: true.
    pub install_gateway_crds: bool,
    /// Extra IP addresses for the kube-apiserver serving certificate's subject
    /// alternative names (besides 127.0.0.1 and 10.96.0.1), for clients that reach the
    /// API server through a forwarder on another address — e.g. pods in network
    /// namespaces dialling a bridge address. Default: none.
    pub extra_serving_ips: Vec<std::net::IpAddr>,
}

impl Default for TestEnvOptions {
    fn default() -> Self {
        TestEnvOptions { extra_apiserver_args: Vec::new(), install_gateway_crds: true, extra_serving_ips: Vec::new() }
    }
}

/// Why the test control plane could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    /// `scripts/build-kube-tools.sh` failed or the binaries are missing.
    #[error("kube tools: {0}")]
    Tools(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Cert(#[from] rcgen::Error),
    /// A process exited or did not become ready; includes the tail of its log.
    #[error("{process} {reason} (log: {log})\n--- last lines of the log ---\n{tail}")]
    Startup { process: &'static str, reason: String, log: PathBuf, tail: String },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Other(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestEnvError {
    let context = context.into();
    move |source| TestEnvError::Io { context, source }
}

/// The `--service-account-issuer` (also the default token audience).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";
/// The `--service-cluster-ip-range`.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
/// Field manager used when installing CRDs.
const FIELD_MANAGER: &str = "strait-testenv";

const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
const CRD_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts to start a process when a just-released free port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// A running etcd + kube-apiserver. See the crate docs.
pub struct TestEnv {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    bin_dir: PathBuf,
    pki: Pki,
    etcd: Option<Proc>,
    etcd_client_url: String,
    apiserver: Option<Proc>,
    apiserver_args: Vec<String>,
    apiserver_port: u16,
    kubeconfig: PathBuf,
    token_kubeconfigs: AtomicUsize,
}

// Tests hold a TestEnv across awaits and share it between tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TestEnv>();
};

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("dir", &self.path)
            .field("server", &self.server_url())
            .field("etcd", &self.etcd_client_url)
            .finish()
    }
}

impl TestEnv {
    /// Starts etcd and kube-apiserver, waits for `/readyz`, creates the `default`
    /// namespace if missing and (by default) installs the Gateway API CRDs. On failure
    /// the env directory is kept (its path is printed) so the logs can be read.
    ///
    /// Builds the binaries first if needed (`scripts/build-kube-tools.sh`, found relative
    /// to this crate), unless `STRAIT_KUBE_BIN_DIR` names them.
    pub async fn start(opts: TestEnvOptions) -> Result<TestEnv, TestEnvError> {
        let started = Instant::now();
        let bin_dir = tokio::task::spawn_blocking(tools::kube_bin_dir)
            .await
            .map_err(|e| TestEnvError::Other(format!("build task: {e}")))??;
        let crd_dir = if opts.install_gateway_crds {
            Some(
                tokio::task::spawn_blocking(tools::gateway_crd_dir)
                    .await
                    .map_err(|e| TestEnvError::Other(format!("crd task: {e}")))??,
            )
        } else {
            None
        };

        let dir = tempfile::Builder::new()
            .prefix("strait-testenv-")
            .tempdir()
            .map_err(io_err("creating the env temp dir"))?;
        let path = dir.path().to_path_buf();
        let pki = certs::generate(&path.join("pki"), &opts.extra_serving_ips)?;

        let mut env = TestEnv {
            dir: Some(dir),
            path: path.clone(),
            bin_dir,
            pki,
            etcd: None,
            etcd_client_url: String::new(),
            apiserver: None,
            apiserver_args: Vec::new(),
            apiserver_port: 0,
            kubeconfig: path.join("kubeconfig"),
            token_kubeconfigs: AtomicUsize::new(0),
        };
        if let Err(e) = env.boot(&opts, crd_dir.as_deref()).await {
            // Keep the directory so the logs named in the error can be read.
            drop(env.apiserver.take());
            drop(env.etcd.take());
            if let Some(dir) = env.dir.take() {
                let kept = dir.keep();
                eprintln!("strait-testenv: start failed; kept {} for its logs", kept.display());
            }
            return Err(e);
        }
        tracing::info!(dir = %env.path.display(), server = %env.server_url(), elapsed = ?started.elapsed(), "test control plane ready");
        Ok(env)
    }

    /// The env's directory (PKI, kubeconfigs, `etcd.log`, `kube-apiserver.log`, etcd data).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The admin kubeconfig (client certificate CN=strait-admin, O=system:masters).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// The CA certificate (PEM file) that signed the serving and client certificates.
    pub fn ca_cert_path(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The etcd client URL (plain HTTP on loopback).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_client_url
    }

    /// A new admin client (system:masters).
    pub async fn client(&self) -> Result<Client, TestEnvError> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Writes a kubeconfig authenticating with `token` (e.g. from
    /// [`service_account_token`](Self::service_account_token)) and returns its path.
    pub fn kubeconfig_for_token(&self, token: &str) -> Result<PathBuf, TestEnvError> {
        let n = self.token_kubeconfigs.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(format!("kubeconfig-token-{n}"));
        let user = format!("    token: {}\n", yaml_str(token));
        std::fs::write(&path, self.kubeconfig_yaml("token-user", &user))
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(path)
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API (audience:
    /// the API server, valid one hour). Creates the namespace and ServiceAccount if
    /// missing (no controller does that here). The token carries only the RBAC
    /// permissions granted to the ServiceAccount.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String, TestEnvError> {
        let client = self.client().await?;
        ensure_namespace(&client, namespace).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
            ..Default::default()
        };
        ignore_already_exists(sas.create(&PostParams::default(), &sa).await)?;
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() },
            ..Default::default()
        };
        let response = sas.create_token_request(name, &PostParams::default(), &request).await?;
        response
            .status
            .map(|s| s.token)
            .ok_or_else(|| TestEnvError::Other(format!("TokenRequest for {namespace}/{name} returned no status")))
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`; add arguments and run it.
    pub fn kubectl(&self) -> std::process::Command {
        // The kubectl built with the API server (same release), unless overridden.
        let kubectl = std::env::var_os("STRAIT_KUBECTL").unwrap_or_else(|| {
            let built = self.bin_dir.join("kubectl");
            if built.is_file() { built.into_os_string() } else { "kubectl".into() }
        });
        let mut cmd = std::process::Command::new(kubectl);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Kills kube-apiserver (SIGKILL); etcd and its data stay.
    pub async fn stop_apiserver(&mut self) -> Result<(), TestEnvError> {
        if let Some(mut apiserver) = self.apiserver.take() {
            tokio::task::spawn_blocking(move || apiserver.kill())
                .await
                .map_err(|e| TestEnvError::Other(format!("stopping kube-apiserver: {e}")))?;
        }
        Ok(())
    }

    /// (Re)starts kube-apiserver with the same port, certificates and flags, and waits
    /// for `/readyz`. A no-op if it is running.
    pub async fn start_apiserver(&mut self) -> Result<(), TestEnvError> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let log = self.path.join("kube-apiserver.log");
        process::append_marker(&log, &format!("starting kube-apiserver on port {}", self.apiserver_port));
        let proc = Proc::spawn("kube-apiserver", &self.bin_dir.join("kube-apiserver"), &self.apiserver_args, &log)
            .map_err(io_err("starting kube-apiserver"))?;
        let client = self.client().await?;
        let ready = wait_apiserver_ready(&proc, &client).await;
        if ready.is_ok() {
            self.apiserver = Some(proc);
        }
        ready
    }

    /// Starts an **additional** kube-apiserver on another free loopback port, serving
    /// the same etcd with the same certificates and flags, and waits for its `/readyz`
    /// and for the Gateway API resources to be served by it.
    ///
    /// Meant for outage tests: stop the primary one ([`stop_apiserver`](Self::stop_apiserver)),
    /// which every other client's kubeconfig points at, and keep changing objects through
    /// this one; whatever it writes is in etcd when the primary one comes back. Its log
    /// is `kube-apiserver-<port>.log` in the env directory; it is killed when the returned
    /// handle is dropped (drop it before the `TestEnv`).
    pub async fn start_extra_apiserver(&self) -> Result<ExtraApiServer, TestEnvError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_ports(1)?[0];
            let mut args: Vec<String> =
                self.apiserver_args.iter().filter(|a| !a.starts_with("--secure-port=")).cloned().collect();
            args.push(format!("--secure-port={port}"));
            let log = self.path.join(format!("kube-apiserver-{port}.log"));
            process::append_marker(&log, &format!("starting an extra kube-apiserver on port {port}"));
            let proc = Proc::spawn("kube-apiserver (extra)", &self.bin_dir.join("kube-apiserver"), &args, &log)
                .map_err(io_err("starting an extra kube-apiserver"))?;
            let kubeconfig = self.path.join(format!("kubeconfig-extra-{port}"));
            let user = format!(
                "    client-certificate: {}\n    client-key: {}\n",
                yaml_str(&self.pki.admin_cert.display().to_string()),
                yaml_str(&self.pki.admin_key.display().to_string()),
            );
            let server = format!("https://127.0.0.1:{port}");
            std::fs::write(&kubeconfig, self.kubeconfig_yaml_for(&server, "strait-admin", &user))
                .map_err(io_err(format!("writing {}", kubeconfig.display())))?;
            let client = client_from_kubeconfig(&kubeconfig).await?;
            match wait_apiserver_ready(&proc, &client).await {
                Ok(()) => {}
                Err(TestEnvError::Startup { ref tail, .. }) if attempt < PORT_ATTEMPTS && port_in_use(tail) => continue,
                Err(e) => return Err(e),
            }
            // CRD-backed resources are served once this server has read the CRDs.
            let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GRPCRoute");
            let routes: Api<DynamicObject> =
                Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "grpcroutes"));
            let deadline = Instant::now() + CRD_READY_TIMEOUT;
            loop {
                match routes.list(&ListParams::default().limit(1)).await {
                    Ok(_) => break,
                    // Without the CRDs installed there is nothing to wait for.
                    Err(kube::Error::Api(s)) if s.code == 404 && Instant::now() > deadline => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(TestEnvError::Other(format!(
                            "extra kube-apiserver does not serve grpcroutes: {e}"
                        )));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            return Ok(ExtraApiServer { _proc: proc, port, kubeconfig });
        }
    }

    async fn boot(&mut self, opts: &TestEnvOptions, crd_dir: Option<&Path>) -> Result<(), TestEnvError> {
        self.start_etcd().await?;
        // kube-apiserver on a free port; retried with another port if it was taken.
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.apiserver_port = free_ports(1)?[0];
            self.apiserver_args = self.apiserver_base_args();
            self.apiserver_args.extend(opts.extra_apiserver_args.iter().cloned());
            self.write_admin_kubeconfig()?;
            match self.start_apiserver().await {
                Ok(()) => break,
                Err(TestEnvError::Startup { ref tail, .. }) if attempt < PORT_ATTEMPTS && port_in_use(tail) => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        let client = self.client().await?;
        ensure_namespace(&client, "default").await?;
        if let Some(crd_dir) = crd_dir {
            install_manifests(&client, crd_dir).await?;
        }
        Ok(())
    }

    async fn start_etcd(&mut self) -> Result<(), TestEnvError> {
        let data_dir = self.path.join("etcd-data");
        let log = self.path.join("etcd.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports(2)?;
            let client_url = format!("http://127.0.0.1:{}", ports[0]);
            let peer_url = format!("http://127.0.0.1:{}", ports[1]);
            let args = vec![
                "--name=strait-testenv".to_string(),
                format!("--data-dir={}", data_dir.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=strait-testenv={peer_url}"),
                "--initial-cluster-state=new".to_string(),
                "--unsafe-no-fsync=true".to_string(),
                "--log-level=warn".to_string(),
                "--listen-metrics-urls=".to_string(),
            ];
            process::append_marker(&log, &format!("starting etcd on {client_url}"));
            let proc = Proc::spawn("etcd", &self.bin_dir.join("etcd"), &args, &log).map_err(io_err("starting etcd"))?;
            match wait_etcd_healthy(&proc, ports[0]).await {
                Ok(()) => {
                    self.etcd = Some(proc);
                    self.etcd_client_url = client_url;
                    return Ok(());
                }
                Err(TestEnvError::Startup { ref tail, .. }) if attempt < PORT_ATTEMPTS && port_in_use(tail) => {
                    let _ = std::fs::remove_dir_all(&data_dir);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn apiserver_base_args(&self) -> Vec<String> {
        let pki = &self.pki;
        let p = |path: &Path| path.display().to_string();
        vec![
            format!("--etcd-servers={}", self.etcd_client_url),
            format!("--secure-port={}", self.apiserver_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--cert-dir={}", self.path.join("apiserver-certs").display()),
            "--authorization-mode=Node,RBAC".into(),
            format!("--client-ca-file={}", p(&pki.ca_cert)),
            format!("--tls-cert-file={}", p(&pki.serving_cert)),
            format!("--tls-private-key-file={}", p(&pki.serving_key)),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", p(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
            format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"),
            // No controller-manager creates the `default` ServiceAccount of a namespace, so
            // the ServiceAccount admission plugin would reject every Pod.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--enable-priority-and-fairness=false".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ]
    }

    fn write_admin_kubeconfig(&self) -> Result<(), TestEnvError> {
        let user = format!(
            "    client-certificate: {}\n    client-key: {}\n",
            yaml_str(&self.pki.admin_cert.display().to_string()),
            yaml_str(&self.pki.admin_key.display().to_string()),
        );
        std::fs::write(&self.kubeconfig, self.kubeconfig_yaml("strait-admin", &user))
            .map_err(io_err(format!("writing {}", self.kubeconfig.display())))
    }

    fn kubeconfig_yaml(&self, user: &str, user_fields: &str) -> String {
        self.kubeconfig_yaml_for(&self.server_url(), user, user_fields)
    }

    fn kubeconfig_yaml_for(&self, server: &str, user: &str, user_fields: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: strait-testenv\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n{user_fields}contexts:\n- name: strait-testenv\n  context:\n    cluster: strait-testenv\n    user: {user}\n    namespace: default\ncurrent-context: strait-testenv\n",
            ca = yaml_str(&self.pki.ca_cert.display().to_string()),
        )
    }
}

/// A second kube-apiserver on the env's etcd, from
/// [`TestEnv::start_extra_apiserver`]. Killed (SIGKILL) when dropped.
pub struct ExtraApiServer {
    _proc: Proc,
    port: u16,
    kubeconfig: PathBuf,
}

impl ExtraApiServer {
    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// An admin (system:masters) kubeconfig for this server.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new admin client of this server.
    pub async fn client(&self) -> Result<Client, TestEnvError> {
        client_from_kubeconfig(&self.kubeconfig).await
    }
}

/// Polls `/readyz` through `client` until it answers `ok` (or `proc` exits / times out).
async fn wait_apiserver_ready(proc: &Proc, client: &Client) -> Result<(), TestEnvError> {
    let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            return Err(startup_error(proc, format!("exited ({status}) before becoming ready")));
        }
        let request = http::Request::get("/readyz").body(Vec::new()).expect("static request");
        let last_error = match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => body,
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(startup_error(
                proc,
                format!("not ready after {APISERVER_READY_TIMEOUT:?}; last /readyz: {last_error}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // kube-apiserver first, so it does not log etcd connection errors while dying.
        drop(self.apiserver.take());
        drop(self.etcd.take());
        // Unless kept, TempDir's drop removes the directory.
        if let Some(dir) = self.dir.take()
            && std::env::var("STRAIT_TESTENV_KEEP").is_ok_and(|v| v == "1")
        {
            let kept = dir.keep();
            eprintln!("strait-testenv: kept {}", kept.display());
        }
    }
}

/// An admin or token client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, TestEnvError> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Picks `n` distinct free loopback TCP ports (bound, then released).
fn free_ports(n: usize) -> Result<Vec<u16>, TestEnvError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("binding 127.0.0.1:0"))?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(io_err("local_addr"))).collect()
}

fn port_in_use(log_tail: &str) -> bool {
    log_tail.contains("address already in use")
}

fn startup_error(proc: &Proc, reason: String) -> TestEnvError {
    TestEnvError::Startup { process: proc.name, reason, log: proc.log.clone(), tail: proc.log_tail(40) }
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

async fn wait_etcd_healthy(proc: &Proc, port: u16) -> Result<(), TestEnvError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            return Err(startup_error(proc, format!("exited ({status}) before becoming healthy")));
        }
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        let last = match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(response)) if response.contains("\"health\":\"true\"") => return Ok(()),
            Ok(Ok(response)) => response,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "GET /health timed out".into(),
        };
        if Instant::now() > deadline {
            return Err(startup_error(proc, format!("not healthy after {ETCD_READY_TIMEOUT:?}; last: {last}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ignore_already_exists<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(e) => Err(e),
    }
}

async fn ensure_namespace(client: &Client, name: &str) -> Result<(), TestEnvError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() }, ..Default::default() };
    ignore_already_exists(namespaces.create(&PostParams::default(), &ns).await)?;
    Ok(())
}

/// Server-side applies every document of every `*.yaml` file in `dir` (sorted by name),
/// CustomResourceDefinitions first; waits until each CRD is Established and its
/// resources can be listed. Returns the names of the CRDs.
pub async fn install_manifests(client: &Client, dir: &Path) -> Result<Vec<String>, TestEnvError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TestEnvError::Manifest { path: dir.to_path_buf(), reason: "no *.yaml files".into() });
    }
    let mut crds = Vec::new();
    let mut others = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| TestEnvError::Manifest { path: path.clone(), reason: e.to_string() })?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
            let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
            let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            if kind.is_empty() || api_version.is_empty() || name.is_empty() {
                return Err(TestEnvError::Manifest {
                    path: path.clone(),
                    reason: "document without apiVersion, kind or metadata.name".into(),
                });
            }
            if kind == "CustomResourceDefinition" {
                crds.push((name, doc));
            } else {
                others.push((path.clone(), api_version, kind, name, doc));
            }
        }
    }

    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (name, doc) in &crds {
        crd_api.patch(name, &apply, &Patch::Apply(doc)).await?;
    }
    for (path, api_version, kind, name, doc) in &others {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await.map_err(|e| {
            TestEnvError::Manifest { path: path.clone(), reason: format!("{api_version} {kind} not served: {e}") }
        })?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
                Api::namespaced_with(client.clone(), ns, &resource)
            }
        };
        api.patch(name, &apply, &Patch::Apply(doc)).await?;
    }

    let deadline = Instant::now() + CRD_READY_TIMEOUT;
    for (name, doc) in &crds {
        let established = await_condition(crd_api.clone(), name, conditions::is_crd_established());
        tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), established)
            .await
            .map_err(|_| TestEnvError::Timeout { what: format!("CRD {name} Established"), after: CRD_READY_TIMEOUT })?
            .map_err(|e| TestEnvError::Other(format!("watching CRD {name}: {e}")))?;
        // Established can precede the resource being served (discovery, storage); list
        // every served version once.
        let group = doc.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default();
        let kind = doc.pointer("/spec/names/kind").and_then(Value::as_str).unwrap_or_default();
        let plural = doc.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default();
        let versions = doc.pointer("/spec/versions").and_then(Value::as_array).cloned().unwrap_or_default();
        for version in versions.iter().filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false)) {
            let version = version.get("name").and_then(Value::as_str).unwrap_or_default();
            let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            loop {
                match api.list(&ListParams::default().limit(1)).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(TestEnvError::Other(format!("{plural}.{group}/{version} not served: {e}")));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
    Ok(crds.into_iter().map(|(name, _)| name).collect())
}
