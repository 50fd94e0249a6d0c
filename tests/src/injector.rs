//! Harness for the injector's end-to-end tests (`tests/tests/injector.rs`): a real
//! control plane (`strait-testenv`) with `deploy/` applied by kubectl, and the real
//! `strait-injector serve --bootstrap-certs` binary as the webhook the API server calls.
//!
//! - [`start_env`]: etcd + kube-apiserver, without the Gateway API CRDs (nothing here
//!   needs them, and installing them is most of the start-up time).
//! - [`kubectl`], [`kubectl_ok`], [`kubectl_json`]: kubectl with the admin kubeconfig
//!   (or any other, see [`kubectl_as`]), with optional standard input.
//! - [`InjectorProcess`]: the webhook on a free loopback port. The
//!   MutatingWebhookConfiguration of `deploy/` names the in-cluster Service; no pods
//!   run here, so [`InjectorProcess::start`] re-points both webhooks at
//!   `https://127.0.0.1:<port>/mutate` (the API server then calls the process
//!   directly) and runs it with the `strait-system/strait-injector` ServiceAccount's
//!   token, so its bootstrap (Secret + caBundle) runs under the RBAC of `deploy/`.
//! - [`InjectorProcess::request`]: HTTP/1.1 over TLS to the webhook, trusting only the
//!   bootstrap CA from the Secret.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use strait_testenv::{TestEnv, TestEnvOptions};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::{free_addrs, target_bin};

/// Strait's namespace in `deploy/`.
pub const SYSTEM_NS: &str = "strait-system";
/// The MutatingWebhookConfiguration (and ServiceAccount, Secret prefix) of the injector.
pub const WEBHOOK_CONFIG: &str = "strait-injector";
/// The Secret `--bootstrap-certs` keeps the CA and serving pair in.
pub const TLS_SECRET: &str = "strait-injector-tls";
/// The injector's ServiceAccount as an RBAC user name.
pub const INJECTOR_USER: &str = "system:serviceaccount:strait-system:strait-injector";
/// How long the injector may take to bootstrap and serve.
pub const INJECTOR_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `strait-injector` binary: `$STRAIT_INJECTOR_BIN` or `target/<profile>/strait-injector`.
pub fn injector_bin() -> Result<PathBuf> {
    target_bin("strait-injector", "STRAIT_INJECTOR_BIN")
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy")
}

/// A real control plane without the Gateway API CRDs.
pub async fn start_env() -> Result<TestEnv> {
    let started = Instant::now();
    let env = TestEnv::start(TestEnvOptions { install_gateway_crds: false, ..TestEnvOptions::default() })
        .await
        .context("starting the test control plane")?;
    eprintln!("testenv: ready in {:.1?} at {}", started.elapsed(), env.server_url());
    Ok(env)
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for KubectlOutput {
    fn from(o: Output) -> Self {
        KubectlOutput {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs kubectl with the admin kubeconfig; does not fail on a non-zero exit.
pub fn kubectl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
    run_kubectl(env.kubectl(), args, stdin)
}

/// The kubectl `TestEnv::kubectl` runs: `$STRAIT_KUBECTL`, else the one built with the
/// API server (same release) when there is one, else `kubectl` from `PATH`.
pub fn kubectl_bin() -> std::ffi::OsString {
    std::env::var_os("STRAIT_KUBECTL").unwrap_or_else(|| {
        match strait_testenv::tools::kube_bin_dir().map(|d| d.join("kubectl")) {
            Ok(built) if built.is_file() => built.into_os_string(),
            _ => "kubectl".into(),
        }
    })
}

/// Runs kubectl with `kubeconfig` (e.g. a ServiceAccount token's); does not fail on a
/// non-zero exit.
pub fn kubectl_as(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
    let mut cmd = std::process::Command::new(kubectl_bin());
    cmd.arg("--kubeconfig").arg(kubeconfig);
    run_kubectl(cmd, args, stdin)
}

fn run_kubectl(mut cmd: std::process::Command, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
    use std::io::Write;
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().with_context(|| format!("running kubectl {args:?}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("kubectl stdin")?;
        pipe.write_all(input.as_bytes()).context("writing kubectl stdin")?;
    }
    Ok(child.wait_with_output().with_context(|| format!("waiting for kubectl {args:?}"))?.into())
}

/// Runs kubectl with the admin kubeconfig and fails unless it exits 0.
pub fn kubectl_ok(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
    let out = kubectl(env, args, stdin)?;
    ensure!(out.success, "kubectl {args:?} failed:\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    Ok(out)
}

/// `kubectl <args> -o json`, parsed.
pub fn kubectl_json(env: &TestEnv, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl_ok(env, &all, None)?;
    serde_json::from_str(&out.stdout).with_context(|| format!("kubectl {args:?} printed no JSON: {}", out.stdout))
}

/// `kubectl apply -k deploy/`.
pub fn apply_deploy(env: &TestEnv) -> Result<KubectlOutput> {
    let dir = deploy_dir();
    kubectl_ok(env, &["apply", "-k", &dir.display().to_string()], None)
}

/// `kubectl kustomize deploy/<relative>` (no server needed), every document parsed.
pub fn kustomize(relative: &str) -> Result<Vec<Value>> {
    let dir = deploy_dir().join(relative);
    let out =
        std::process::Command::new(kubectl_bin()).arg("kustomize").arg(&dir).output().context("running kubectl")?;
    let out = KubectlOutput::from(out);
    ensure!(out.success, "kubectl kustomize {}: {}", dir.display(), out.stderr);
    serde_saphyr::from_multiple(&out.stdout).map_err(|e| anyhow!("kustomize output of {relative} is not YAML: {e}"))
}

/// Creates (or relabels) namespace `name` with `labels`.
pub fn namespace(env: &TestEnv, name: &str, labels: &[(&str, &str)]) -> Result<()> {
    let ns = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
    });
    kubectl_ok(env, &["apply", "-f", "-"], Some(&ns.to_string()))?;
    Ok(())
}

/// Re-points every webhook of the injector's configuration at `url` (instead of the
/// in-cluster Service). The caBundle, if any, stays.
pub fn point_webhooks_at(env: &TestEnv, url: &str) -> Result<()> {
    let mwc = kubectl_json(env, &["get", "mutatingwebhookconfiguration", WEBHOOK_CONFIG])?;
    let webhooks = mwc["webhooks"].as_array().context("no webhooks")?;
    let mut ops = Vec::new();
    for (i, w) in webhooks.iter().enumerate() {
        if w.pointer("/clientConfig/service").is_some() {
            ops.push(json!({"op": "remove", "path": format!("/webhooks/{i}/clientConfig/service")}));
        }
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/url"), "value": url}));
    }
    kubectl_ok(
        env,
        &["patch", "mutatingwebhookconfiguration", WEBHOOK_CONFIG, "--type=json", "-p", &Value::Array(ops).to_string()],
        None,
    )?;
    Ok(())
}

/// A running `strait-injector serve --bootstrap-certs` (killed when dropped).
pub struct InjectorProcess {
    child: Child,
    addr: SocketAddr,
    ca_pem: String,
    tls: Arc<rustls::ClientConfig>,
    log_path: PathBuf,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl InjectorProcess {
    /// Points the webhooks at a free loopback port, starts the injector there with the
    /// injector ServiceAccount's token and waits until it has written the Secret and the
    /// caBundle, answers `/healthz` over TLS with the bootstrap CA, and the API server
    /// admits pod creations through it (a server-side dry run of a pod the webhooks
    /// match succeeds).
    ///
    /// `deploy/` must have been applied.
    pub async fn start(env: &TestEnv) -> Result<Self> {
        let bin = injector_bin()?;
        let token = env.service_account_token(SYSTEM_NS, WEBHOOK_CONFIG).await?;
        let kubeconfig = env.kubeconfig_for_token(&token)?;
        let admin = env.client().await?;
        let mut last_err = None;
        // The free port may be taken between reservation and the injector's bind.
        for _attempt in 0..3 {
            let mut injector = Self::spawn(env, &bin, &kubeconfig)?;
            match injector.wait_ready(&admin).await {
                Ok(()) => return Ok(injector),
                Err(e) => {
                    let clash = injector.log_tail(40).contains("Address already in use");
                    last_err = Some(e);
                    if !clash {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("injector did not start")))
    }

    fn spawn(env: &TestEnv, bin: &Path, kubeconfig: &Path) -> Result<Self> {
        let addr = free_addrs(1)?[0];
        point_webhooks_at(env, &format!("https://{addr}/mutate"))?;
        let dir = tempfile::Builder::new().prefix("strait-e2e-injector-").tempdir().context("temp dir")?;
        let log_path = dir.path().join("injector.stderr.log");
        let log = std::fs::File::create(&log_path).context("creating the injector log")?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--bootstrap-certs")
            .args(["--listen", &addr.to_string()])
            .arg("--cert-file")
            .arg(dir.path().join("tls").join("tls.crt"))
            .arg("--key-file")
            .arg(dir.path().join("tls").join("tls.key"))
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", SYSTEM_NS)
            .env("STRAIT_LOG_LEVEL", "info,strait_injector=debug")
            .env("NO_COLOR", "1")
            // An error exit should end with the error, not a backtrace.
            .env("RUST_LIB_BACKTRACE", "0")
            .env_remove("RUST_BACKTRACE")
            // Nothing from the developer's shell or an in-cluster config.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("STRAIT_PROXY_IMAGE")
            .env_remove("STRAIT_INIT_IMAGE")
            .env_remove("STRAIT_NATIVE_SIDECARS")
            .env_remove("STRAIT_TLS_SECRET")
            .env_remove("STRAIT_WEBHOOK_CONFIG")
            .env_remove("STRAIT_SERVICE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let tls = Arc::new(client_config(None)?);
        Ok(InjectorProcess {
            child,
            addr,
            ca_pem: String::new(),
            tls,
            log_path,
            kubeconfig: kubeconfig.to_path_buf(),
            _dir: dir,
        })
    }

    async fn wait_ready(&mut self, admin: &Client) -> Result<()> {
        let deadline = Instant::now() + INJECTOR_READY_TIMEOUT;
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), SYSTEM_NS);
        let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
        let mut last = String::from("no attempt yet");
        let mut step = "bootstrap";
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("strait-injector exited ({status}) during {step}; stderr tail:\n{}", self.log_tail(30));
            }
            match self.ready_step(&secrets, &configs, admin).await {
                Ok(None) => return Ok(()),
                Ok(Some((s, why))) => (step, last) = (s, why),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "strait-injector not ready after {INJECTOR_READY_TIMEOUT:?} (step {step}: {last}); stderr tail:\n{}",
            self.log_tail(30)
        )
    }

    /// `None` when ready, else the step it waits for and why.
    async fn ready_step(
        &mut self,
        secrets: &Api<Secret>,
        configs: &Api<MutatingWebhookConfiguration>,
        admin: &Client,
    ) -> Result<Option<(&'static str, String)>> {
        let Some(secret) = secrets.get_opt(TLS_SECRET).await? else {
            return Ok(Some(("bootstrap", format!("no Secret {SYSTEM_NS}/{TLS_SECRET} yet"))));
        };
        let ca = secret
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .context("Secret without ca.crt")?;
        let mwc = configs.get(WEBHOOK_CONFIG).await?;
        let webhooks = mwc.webhooks.unwrap_or_default();
        let unset =
            webhooks.iter().filter(|w| w.client_config.ca_bundle.as_ref().is_none_or(|b| b.0.is_empty())).count();
        if webhooks.is_empty() || unset > 0 {
            return Ok(Some(("caBundle", format!("{unset} of {} webhooks without caBundle", webhooks.len()))));
        }
        for w in &webhooks {
            let bundle = w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()).unwrap_or_default();
            ensure!(bundle == ca.as_bytes(), "webhook {} has a caBundle other than the Secret's ca.crt", w.name);
        }
        if self.ca_pem != ca {
            self.tls = Arc::new(client_config(Some(&ca))?);
            self.ca_pem = ca;
        }
        match self.request("GET", "/healthz", Vec::new()).await {
            Ok((200, _)) => {}
            Ok((code, body)) => {
                return Ok(Some(("healthz", format!("HTTP {code}: {}", String::from_utf8_lossy(&body)))));
            }
            Err(e) => return Ok(Some(("healthz", format!("{e:#}")))),
        }
        // The API server reads webhook configurations from an informer: wait until its
        // copy has the URL and the caBundle. Before, a pod creation the webhooks match
        // fails (failurePolicy Fail): no endpoints for the Service, or an unknown CA.
        // Whether the pod comes back injected is for the tests to check.
        let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
        let probe: Pod = serde_json::from_value(json!({
            "metadata": {"name": "strait-readiness-probe", "labels": {"strait.io/inject": "enabled"}},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        }))?;
        match pods.create(&PostParams { dry_run: true, ..PostParams::default() }, &probe).await {
            Ok(_) => Ok(None),
            Err(e) => Ok(Some(("admission", e.to_string()))),
        }
    }

    /// The webhook's address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bootstrap CA (PEM) the injector wrote into the Secret and the caBundle.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The kubeconfig of the injector's ServiceAccount token.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// One HTTP/1.1 request over a fresh TLS connection that trusts only the bootstrap
    /// CA and verifies the certificate for 127.0.0.1. Returns status and body.
    pub async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> Result<(u16, Bytes)> {
        let tcp = TcpStream::connect(self.addr).await.with_context(|| format!("connecting to {}", self.addr))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .context("no response within 10 s")?
            .context("sending the request")?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.context("reading the response body")?.to_bytes();
        Ok((status, body))
    }
}

/// A rustls client config trusting only `ca_pem` (with no CA: trusting nothing, a
/// placeholder until the bootstrap CA is known), HTTP/1.1 by ALPN.
fn client_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.context("parsing the CA PEM")?).context("adding the CA")?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Writes a self-signed serving pair for `127.0.0.1` into `dir` (`tls.crt`, `tls.key`)
/// and returns the two paths: enough for `strait-injector serve` without a cluster.
pub fn self_signed_pair(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).context("generating a pair")?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).context("writing tls.crt")?;
    std::fs::write(&key, certified.signing_key.serialize_pem()).context("writing tls.key")?;
    Ok((cert, key))
}

/// `strait-injector serve` on `listen` with the given serving pair, extra arguments,
/// no cluster access, stdout discarded and stderr piped (not a terminal); no
/// `STRAIT_*`/`NO_COLOR` setting leaks in from the caller's environment.
pub fn injector_serve_command(
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
    extra: &[&str],
) -> Result<std::process::Command> {
    let mut cmd = std::process::Command::new(injector_bin()?);
    cmd.arg("serve")
        .args(["--listen", &listen.to_string()])
        .arg("--cert-file")
        .arg(cert)
        .arg("--key-file")
        .arg(key)
        .args(extra)
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("RUST_BACKTRACE")
        .env_remove("NO_COLOR")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("STRAIT_LOG_LEVEL")
        .env_remove("STRAIT_PROXY_IMAGE")
        .env_remove("STRAIT_INIT_IMAGE")
        .env_remove("STRAIT_NATIVE_SIDECARS")
        .env_remove("STRAIT_BOOTSTRAP_CERTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(cmd)
}
