//! Harness for Strait's end-to-end tests.
//!
//! The tests run the real `strait-proxy` binary as a child process against a
//! temporary config directory (Kubernetes YAML: Services, EndpointSlices,
//! GRPCRoutes) and drive it with real tonic clients; the backends are the
//! in-process demo servers of `strait_demo`, which report who answered and
//! what they received.
//!
//! - [`ProxyProcess`]: start the binary on free loopback ports, wait for
//!   `/ready`, query the admin endpoint, SIGTERM it, wait for its exit.
//! - [`Mesh`]: a config directory plus the backends behind it, with atomic
//!   file rewrites for live configuration changes.
//! - [`Metrics`]: a small Prometheus text-format parser.
//! - [`kube_mode`]: Kubernetes mode — a real control plane (`strait-testenv`),
//!   backends on addresses of a test-owned veth, the status controller process.
//! - [`pods`]: meshed pods — a minimal kubelet and EndpointSlice controller
//!   against the real API server and injection webhook, pods in network namespaces.
//! - [`raw_h2`]: a gRPC transport without tonic's client-side deadline, so a
//!   test can see the status the *proxy* produces for an expired `grpc-timeout`.

#![forbid(unsafe_code)]

pub mod hostile;
pub mod injector;
pub mod kube_mode;
pub mod pods;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub use strait_demo::{Answer, BackendHandle, Probe, channel_via_proxy, endpoint_slice_yaml, spawn_backend};

/// Namespace of the example manifests in `deploy/examples`.
pub const NS: &str = "app";
/// Service port used by every example Service (port name `grpc`).
pub const PORT: u16 = 50051;
/// How long a proxy may take to report `/ready`. A deadline, not a delay: waits end
/// as soon as the proxy is ready, so it is generous for a machine busy with
/// something else.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for waiting on the proxy to pick up a config change (it polls
/// every 250 ms; a deadline that is met early, generous for a loaded machine).
pub const CONFIG_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`ProxyProcess::wait_exit`] waits for the process to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Backend Services of the example manifests; one demo backend each, named
/// like its Service.
pub const SEED_BACKENDS: &[&str] = &[
    "user-service-reader",
    "user-service-writer",
    "recommendation-v1",
    "recommendation-v2",
    "order-service-stable",
    "order-service-canary",
    "payment-service",
];

// ---------------------------------------------------------------------------
// Locating the proxy binary
// ---------------------------------------------------------------------------

/// Path of the `strait-proxy` binary: `$STRAIT_PROXY_BIN`, or
/// `target/<profile>/strait-proxy` next to the directory of the running test
/// executable (which lives in `target/<profile>/deps/`).
pub fn proxy_bin() -> Result<PathBuf> {
    target_bin("strait-proxy", "STRAIT_PROXY_BIN")
}

/// Path of workspace binary `name`: `$<env_var>`, or `target/<profile>/<name>`
/// next to the directory of the running test executable.
pub fn target_bin(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env_var}={} does not name a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!(
            "binary not found at {}: run `cargo build --workspace --bins` before the e2e tests \
             (or set {env_var} to the binary)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `n` distinct free loopback addresses. The listeners are held until all are
/// chosen so the ports differ; the usual bind-then-release race remains, which
/// [`ProxyProcess::start`] absorbs by retrying on a bind failure.
pub fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("reserving free loopback ports")?;
    listeners.iter().map(|l| l.local_addr().context("local_addr")).collect()
}

/// Loopback ports that refuse connections for as long as this value lives: each is
/// held by a bound socket that never listens (and without SO_REUSEADDR), so no other
/// process can listen there meanwhile — unlike a port bound and released, which a
/// concurrent test or demo may take and answer on.
pub struct DeadPorts {
    _held: Vec<tokio::net::TcpSocket>,
    pub addrs: Vec<SocketAddr>,
}

impl DeadPorts {
    pub fn reserve(n: usize) -> Result<DeadPorts> {
        let mut held = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let socket = tokio::net::TcpSocket::new_v4().context("socket for a dead port")?;
            socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).context("binding a dead port")?;
            addrs.push(socket.local_addr().context("local_addr")?);
            held.push(socket);
        }
        Ok(DeadPorts { _held: held, addrs })
    }
}

// ---------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------

/// Where a proxy reads its configuration from.
#[derive(Clone, Copy)]
enum ConfigSource<'a> {
    /// File mode: `--config-dir`.
    Dir(&'a Path),
    /// Kubernetes mode: `KUBECONFIG`.
    Kube(&'a Path),
}

/// A running `strait-proxy` child process (killed when dropped).
pub struct ProxyProcess {
    child: Child,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts the proxy on free loopback ports for `config_dir`, with pod
    /// namespace `namespace`, and waits until `/ready` answers 200.
    ///
    /// `extra_args` are appended; a flag given there replaces the harness
    /// default for it (`--log-level info`, `--config-poll 250ms`).
    pub async fn start(config_dir: &Path, namespace: &str, extra_args: &[&str]) -> Result<Self> {
        Self::start_with(ConfigSource::Dir(config_dir), namespace, extra_args).await
    }

    /// Starts the proxy in **Kubernetes mode** (no `--config-dir`): it watches the API
    /// server named by `kubeconfig` (passed as `KUBECONFIG`) with that kubeconfig's
    /// identity, and waits until `/ready` answers 200 (initial sync done).
    pub async fn start_kube(kubeconfig: &Path, namespace: &str, extra_args: &[&str]) -> Result<Self> {
        Self::start_with(ConfigSource::Kube(kubeconfig), namespace, extra_args).await
    }

    /// Like [`ProxyProcess::start_kube`] but returns as soon as the process is
    /// spawned, without waiting for `/ready` (for readiness tests). A port clash
    /// shows up as an early exit.
    pub fn spawn_kube(kubeconfig: &Path, namespace: &str, extra_args: &[&str]) -> Result<Self> {
        Self::spawn(&proxy_bin()?, ConfigSource::Kube(kubeconfig), namespace, extra_args)
    }

    async fn start_with(source: ConfigSource<'_>, namespace: &str, extra_args: &[&str]) -> Result<Self> {
        let bin = proxy_bin()?;
        let mut last_err = None;
        // Free ports can be taken between reservation and the proxy's bind;
        // such a start is retried on fresh ports.
        for _attempt in 0..3 {
            let mut proxy = Self::spawn(&bin, source, namespace, extra_args)?;
            match proxy.wait_ready().await {
                Ok(()) => return Ok(proxy),
                Err(e) => {
                    let port_clash = proxy.log_tail(40).contains("Address already in use");
                    last_err = Some(e);
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("proxy did not start")))
    }

    fn spawn(bin: &Path, source: ConfigSource<'_>, namespace: &str, extra_args: &[&str]) -> Result<Self> {
        let addrs = free_addrs(3)?;
        let (outbound, inbound, admin) = (addrs[0], addrs[1], addrs[2]);
        let log_dir = tempfile::Builder::new().prefix("strait-e2e-proxy-").tempdir().context("creating log dir")?;
        let log_path = log_dir.path().join("proxy.stderr.log");
        let log = std::fs::File::create(&log_path).context("creating proxy log file")?;
        let mut cmd = Command::new(bin);
        match source {
            ConfigSource::Dir(dir) => {
                cmd.arg("--config-dir").arg(dir).env_remove("KUBECONFIG");
            }
            ConfigSource::Kube(kubeconfig) => {
                cmd.env("KUBECONFIG", kubeconfig)
                    // Never fall back to an in-cluster config of the machine running the tests.
                    .env_remove("KUBERNETES_SERVICE_HOST")
                    .env_remove("KUBERNETES_SERVICE_PORT");
            }
        }
        cmd.env_remove("STRAIT_CONFIG_DIR")
            .args(["--outbound-addr", &outbound.to_string()])
            .args(["--inbound-addr", &inbound.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--namespace", namespace]);
        for (flag, value) in [("--log-level", "info"), ("--config-poll", "250ms")] {
            if !extra_args.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(extra_args)
            // Environment equivalents of the flags must not leak in from the
            // developer's shell.
            .env_remove("POD_NAMESPACE")
            .env_remove("STRAIT_INBOUND_APP_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        Ok(ProxyProcess { child, outbound, inbound, admin, log_path, _log_dir: log_dir })
    }

    async fn wait_ready(&mut self) -> Result<()> {
        self.wait_ready_within(READY_TIMEOUT).await
    }

    /// Polls `/ready` every 50 ms until it answers 200; fails after `timeout`
    /// or when the process exits.
    pub async fn wait_ready_within(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt yet");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("proxy exited before becoming ready ({status}); stderr tail:\n{}", self.log_tail(30));
            }
            match self.admin_get("/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("proxy not ready after {:?} (last /ready: {last}); stderr tail:\n{}", timeout, self.log_tail(30))
    }

    /// The outbound (h2c, routed by `:authority`) listener.
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound
    }

    /// The inbound listener (forwards to `--inbound-app-addr`).
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound
    }

    /// The admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The child's process id (None once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// File receiving the proxy's stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the proxy's stderr, indented for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        if tail.is_empty() {
            return "  | (no output)\n".to_owned();
        }
        tail.iter().map(|l| format!("  | {l}\n")).collect()
    }

    /// `GET path` on the admin endpoint: (HTTP status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        http1_get(self.admin, path).await
    }

    /// `GET path` on the admin endpoint, expecting 200 and a JSON body.
    pub async fn admin_json(&self, path: &str) -> Result<serde_json::Value> {
        let (code, body) = self.admin_get(path).await?;
        if code != 200 {
            bail!("GET {path}: HTTP {code}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: body is not JSON: {body}"))
    }

    /// Parsed `/metrics`.
    pub async fn metrics(&self) -> Result<Metrics> {
        let (code, body) = self.admin_get("/metrics").await?;
        if code != 200 {
            bail!("GET /metrics: HTTP {code}: {body}");
        }
        Metrics::parse(&body)
    }

    /// A tonic channel to the outbound listener addressing `authority`.
    pub async fn channel(&self, authority: &str) -> Result<Channel> {
        channel_via_proxy(self.outbound, authority)
            .await
            .with_context(|| format!("connecting to proxy {} for {authority}", self.outbound))
    }

    /// Sends SIGTERM (via `kill -TERM <pid>`).
    pub fn sigterm(&self) -> Result<()> {
        let pid = self.child.id().ok_or_else(|| anyhow!("proxy already exited"))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        Ok(())
    }

    /// Whether the process has exited (without waiting).
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits (at most [`EXIT_TIMEOUT`]) for the process to exit.
    pub async fn wait_exit(&mut self) -> Result<ExitStatus> {
        match tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("proxy did not exit within {EXIT_TIMEOUT:?}; stderr tail:\n{}", self.log_tail(30)),
        }
    }
}

/// Minimal HTTP/1.1 GET: (status, body). Bounded by a 5 s timeout.
pub async fn http1_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    Ok(strait_demo::http1_get(addr, path, Duration::from_secs(5)).await?)
}

// ---------------------------------------------------------------------------
// The mesh: config directory + backends
// ---------------------------------------------------------------------------

struct MeshBackend {
    namespace: String,
    service: String,
    handle: BackendHandle,
}

/// A temporary config directory and the demo backends its EndpointSlices
/// point at.
pub struct Mesh {
    dir: tempfile::TempDir,
    backends: Vec<MeshBackend>,
}

impl Mesh {
    /// An empty config directory.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("strait-e2e-config-").tempdir().context("creating config dir")?;
        Ok(Mesh { dir, backends: Vec::new() })
    }

    /// The example manifests of `deploy/examples` plus one backend per
    /// example backend Service ([`SEED_BACKENDS`]) and their EndpointSlices.
    pub async fn seeded() -> Result<Self> {
        let mut mesh = Mesh::new()?;
        mesh.copy_examples()?;
        for svc in SEED_BACKENDS {
            mesh.spawn(NS, svc, svc).await?;
        }
        mesh.write_endpoints()?;
        Ok(mesh)
    }

    /// The config directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `deploy/examples/*.yaml` into the config directory.
    pub fn copy_examples(&self) -> Result<()> {
        let examples = examples_dir();
        let mut copied = 0;
        for entry in std::fs::read_dir(&examples).with_context(|| format!("reading {}", examples.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && let Some(name) = path.file_name()
            {
                std::fs::copy(&path, self.path().join(name)).with_context(|| format!("copying {}", path.display()))?;
                copied += 1;
            }
        }
        if copied == 0 {
            bail!("no example manifests in {}", examples.display());
        }
        Ok(())
    }

    /// Spawns a demo backend named `name` as an endpoint of Service
    /// `namespace/service`. Call [`Mesh::write_endpoints`] to publish it.
    pub async fn spawn(&mut self, namespace: &str, service: &str, name: &str) -> Result<SocketAddr> {
        let handle = spawn_backend(name).await.with_context(|| format!("spawning backend {name}"))?;
        let addr = handle.addr();
        self.backends.push(MeshBackend { namespace: namespace.to_owned(), service: service.to_owned(), handle });
        Ok(addr)
    }

    /// Address of the backend named `name`.
    pub fn backend_addr(&self, name: &str) -> Option<SocketAddr> {
        self.backends.iter().find(|b| b.handle.name() == name).map(|b| b.handle.addr())
    }

    /// (Re)writes `endpoints.yaml`: EndpointSlices for every spawned backend.
    pub fn write_endpoints(&self) -> Result<()> {
        let mut groups: BTreeMap<(&str, &str), Vec<SocketAddr>> = BTreeMap::new();
        for b in &self.backends {
            groups.entry((&b.namespace, &b.service)).or_default().push(b.handle.addr());
        }
        let mut yaml = String::from("# Generated by strait-e2e: in-process demo backends.\n");
        for ((ns, svc), addrs) in groups {
            yaml.push_str(&endpoint_slice_yaml(ns, svc, "grpc", &addrs));
        }
        self.write("endpoints.yaml", &yaml)
    }

    /// Atomically replaces config file `name`: writes a dotfile (ignored by
    /// the proxy) and renames it over the target, so the proxy never sees a
    /// half-written file.
    pub fn write(&self, name: &str, contents: &str) -> Result<()> {
        let tmp = self.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.path().join(name)).with_context(|| format!("renaming into {name}"))
    }

    /// Removes config file `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.path().join(name)).with_context(|| format!("removing {name}"))
    }

    /// Starts a proxy on this config directory.
    pub async fn start_proxy(&self, namespace: &str, extra_args: &[&str]) -> Result<ProxyProcess> {
        ProxyProcess::start(self.path(), namespace, extra_args).await
    }
}

/// `deploy/examples` of this workspace.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join("examples")
}

/// A Service `namespace/name` with port `grpc` 50051.
pub fn service_yaml(namespace: &str, name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  ports:\n    \
         - name: grpc\n      port: {PORT}\n      targetPort: grpc\n      appProtocol: kubernetes.io/grpc\n"
    )
}

/// Several Services in one namespace (multi-document YAML).
pub fn services_yaml(namespace: &str, names: &[&str]) -> String {
    names.iter().map(|n| service_yaml(namespace, n)).collect()
}

/// The fully qualified authority of Service `namespace/service` on port 50051.
pub fn authority(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.cluster.local:{PORT}")
}

/// A probe that just echoes `payload`.
pub fn probe(payload: &str) -> Probe {
    Probe { payload: payload.to_owned(), ..Probe::default() }
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `check` every 25 ms until it yields `Some`, failing after `timeout`
/// with `what` and the last error seen.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition false");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// Tallies of answers
// ---------------------------------------------------------------------------

/// Which backend answered how often, plus errors by gRPC code.
#[derive(Default, Debug, Clone)]
pub struct Tally {
    pub backends: BTreeMap<String, usize>,
    pub errors: BTreeMap<String, usize>,
}

impl Tally {
    /// Counts one result; returns the answer when it was one.
    pub fn record(&mut self, result: Result<Answer, tonic::Status>) -> Option<Answer> {
        match result {
            Ok(a) => {
                *self.backends.entry(a.backend.clone()).or_default() += 1;
                Some(a)
            }
            Err(s) => {
                *self.errors.entry(format!("{:?}", s.code())).or_default() += 1;
                None
            }
        }
    }

    pub fn total(&self) -> usize {
        self.backends.values().sum::<usize>() + self.errors.values().sum::<usize>()
    }

    pub fn answered_by(&self, backend: &str) -> usize {
        self.backends.get(backend).copied().unwrap_or(0)
    }

    pub fn errors_of(&self, code: tonic::Code) -> usize {
        self.errors.get(&format!("{code:?}")).copied().unwrap_or(0)
    }

    /// True when every call was answered by `backend`.
    pub fn only_from(&self, backend: &str) -> bool {
        self.errors.is_empty() && self.backends.len() == 1 && self.backends.contains_key(backend)
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .backends
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(self.errors.iter().map(|(k, v)| format!("ERROR {k}={v}")))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

// ---------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// True when every `(label, value)` pair matches exactly.
    pub fn matches(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Result<Self> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line).with_context(|| format!("metrics line {}: {line:?}", n + 1))?);
        }
        Ok(Metrics { samples })
    }

    /// Samples of metric `name` whose labels include `labels`.
    pub fn find<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name && s.matches(labels))
    }

    /// Sum of the matching samples (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }

    /// `sum(name{filter}) by (label)`.
    pub fn sum_by(&self, name: &str, label: &str, filter: impl Fn(&Sample) -> bool) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name && filter(s)) {
            *out.entry(s.labels.get(label).cloned().unwrap_or_default()).or_insert(0.0) += s.value;
        }
        out
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => bail!("no value"),
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || *c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = *i;
                    break;
                }
                None => bail!("unterminated label set"),
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key} value is not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("dangling escape"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            }
            labels.insert(key.trim().to_owned(), value);
        }
        &body[end + 1..]
    } else {
        rest
    };
    let value_text = rest.split_whitespace().next().ok_or_else(|| anyhow!("no value"))?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample { name: name.to_owned(), labels, value })
}

// ---------------------------------------------------------------------------
// A gRPC transport without client-side deadline enforcement
// ---------------------------------------------------------------------------

/// A bare HTTP/2 connection usable as a tonic transport
/// (`EchoClient::new(raw_h2(..).await?)`).
///
/// tonic's `Channel` enforces `grpc-timeout` itself and reports an expired
/// deadline as `Cancelled`; this transport does not, so the caller sees the
/// status the proxy sends.
#[derive(Clone)]
pub struct RawH2 {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    authority: http::uri::Authority,
}

/// Connects to `addr` with prior-knowledge HTTP/2; requests carry `authority`.
pub async fn raw_h2(addr: SocketAddr, authority: &str) -> Result<RawH2> {
    let authority: http::uri::Authority = authority.parse().with_context(|| format!("authority {authority:?}"))?;
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(RawH2 { sender, authority })
}

type RawFuture = Pin<Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for RawH2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = RawFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        Box::pin(self.sender.send_request(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_samples() {
        let text = "# HELP x y\n# TYPE grpc_client_handled_total counter\n\
            grpc_client_handled_total{grpc_type=\"unary\",grpc_service=\"a.B\",grpc_method=\"M\",grpc_code=\"OK\"} 3\n\
            weird{msg=\"a \\\"q\\\", b\",le=\"+Inf\"} 1.5e0\n\
            plain 7\n";
        let m = Metrics::parse(text).unwrap();
        assert_eq!(m.samples.len(), 3);
        assert_eq!(m.sum("grpc_client_handled_total", &[("grpc_code", "OK"), ("grpc_service", "a.B")]), 3.0);
        assert_eq!(m.samples[1].labels["msg"], "a \"q\", b");
        assert_eq!(m.samples[1].value, 1.5);
        assert_eq!(m.sum("plain", &[]), 7.0);
        assert_eq!(m.sum("grpc_client_handled_total", &[("grpc_code", "Unknown")]), 0.0);
    }
}
