//! Kubernetes mode: the real `strait-proxy` (no `--config-dir`) and `strait-controller`
//! against a **real** etcd + kube-apiserver from `strait-testenv` — never a fake.
//!
//! - [`Cluster`]: the control plane plus helpers for `kubectl` (examples, RBAC,
//!   `auth can-i`, status as JSON) and kube-rs (EndpointSlices, GRPCRoutes), and
//!   ServiceAccount kubeconfigs for the sidecar and the controller bound by the
//!   least-privilege RBAC of `deploy/base`.
//! - [`TestNet`]: the API server rejects loopback addresses in EndpointSlices, so
//!   backends listen on the root-side address of a veth pair whose peer lives in a
//!   network namespace the test creates (and deletes on drop, also on panic). Needs
//!   root; [`skip_unless_root`] prints a loud `SKIPPED:` otherwise (a failure with
//!   `STRAIT_REQUIRE_ROOT=1`).
//! - [`NetBackend`]: a demo gRPC backend on such an address.
//! - [`ControllerProcess`]: the `strait-controller` binary as a child process.
//! - [`Traffic`]: paced, bounded OrderService calls through the proxy from a few
//!   workers, every result reported with its completion time.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use strait_demo::pb::order_v1::order_service_client::OrderServiceClient;
use strait_testenv::{TestEnv, TestEnvOptions};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::{free_addrs, http1_get, probe, target_bin};

/// Field manager of everything the tests apply with kube-rs.
pub const FIELD_MANAGER: &str = "strait-e2e";
/// Label marking EndpointSlices written by [`Cluster::put_endpoints`].
pub const E2E_LABEL: &str = "strait.io/e2e";
/// controllerName Strait's status controller writes.
pub const CONTROLLER_NAME: &str = "strait.io/gamma-controller";

// ---------------------------------------------------------------------------
// Root check
// ---------------------------------------------------------------------------

/// Environment variable that turns a root-only test's skip into a failure. `.ci/run`
/// sets it to `1`: there a skipped root-only test must not count as passed.
pub const REQUIRE_ROOT_ENV: &str = "STRAIT_REQUIRE_ROOT";

/// The effective user id of this process (the `Uid:` line of `/proc/self/status`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether the tests run as root (effective uid 0).
pub fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// Whether [`REQUIRE_ROOT_ENV`] is set to `1`.
pub fn root_required() -> bool {
    std::env::var(REQUIRE_ROOT_ENV).is_ok_and(|v| v.trim() == "1")
}

/// What a root-only test does: run, skip with a banner, or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootCheck {
    Run,
    Skip,
    Fail,
}

impl RootCheck {
    pub fn decide(root: bool, required: bool) -> Self {
        match (root, required) {
            (true, _) => RootCheck::Run,
            (false, false) => RootCheck::Skip,
            (false, true) => RootCheck::Fail,
        }
    }
}

/// True when the test may run; otherwise prints a loud `SKIPPED:` line naming
/// `test` (creating network namespaces and veths needs root). With
/// `STRAIT_REQUIRE_ROOT=1` (CI) a non-root run fails the test instead.
pub fn skip_unless_root(test: &str) -> bool {
    skip_unless_root_because(
        test,
        "ip netns / veth for non-loopback backend\naddresses, which the API server requires in EndpointSlices",
    )
}

/// [`skip_unless_root`] with the reason the test needs root.
pub fn skip_unless_root_because(test: &str, needs: &str) -> bool {
    match RootCheck::decide(is_root(), root_required()) {
        RootCheck::Run => true,
        RootCheck::Fail => panic!(
            "{test}: needs root ({}) but runs as uid {}, and {REQUIRE_ROOT_ENV}=1 forbids skipping it: run the \
             end-to-end tests as root, or unset {REQUIRE_ROOT_ENV} to let root-only tests skip",
            needs.replace('\n', " "),
            effective_uid().map_or_else(|| "unknown".to_owned(), |u| u.to_string()),
        ),
        RootCheck::Skip => {
            // Straight to the stderr handle: libtest captures `eprintln!`, and a skip
            // must be seen even when the test "passes".
            let msg = format!(
                "\n************************************************************************\n\
                 SKIPPED: {test}: needs root ({needs}); run as root.\n\
                 (Set {REQUIRE_ROOT_ENV}=1 to make this skip a failure, as CI does.)\n\
                 ************************************************************************\n"
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            false
        }
    }
}

#[cfg(test)]
mod root_check_tests {
    use super::*;

    #[test]
    fn skip_becomes_failure_only_when_required() {
        assert_eq!(RootCheck::decide(true, false), RootCheck::Run);
        assert_eq!(RootCheck::decide(true, true), RootCheck::Run);
        assert_eq!(RootCheck::decide(false, false), RootCheck::Skip);
        assert_eq!(RootCheck::decide(false, true), RootCheck::Fail);
    }

    #[test]
    fn effective_uid_is_read() {
        assert!(effective_uid().is_some(), "no Uid line in /proc/self/status");
    }
}

// ---------------------------------------------------------------------------
// Network namespace + veth owned by the test
// ---------------------------------------------------------------------------

static NET_COUNTER: AtomicU32 = AtomicU32::new(0);
const NETNS_PREFIX: &str = "strait-e2e-";

/// A network namespace and a veth pair: the root-side end carries a
/// `10.251.x.y/30` address that backends bind to. Removed on drop.
pub struct TestNet {
    netns: String,
    link: String,
    addr: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl TestNet {
    /// Creates `strait-e2e-<pid>-<n>` with veth `se<pid>a<n>` (root side, up,
    /// `10.251.x.y/30`) and its peer `se<pid>b<n>` inside the namespace. Namespaces
    /// of earlier test processes that no longer exist are removed first.
    pub fn create() -> Result<Self> {
        remove_stale_netns();
        let pid = std::process::id();
        let n = NET_COUNTER.fetch_add(1, Ordering::Relaxed);
        let netns = format!("{NETNS_PREFIX}{pid}-{n}");
        let link = format!("se{pid}a{n}");
        let peer = format!("se{pid}b{n}");
        if link.len() > 15 {
            bail!("interface name {link} longer than 15 characters");
        }
        // A /30 block not in use on this machine: 16384 blocks in 10.251.0.0/16.
        let used = ip(&["-o", "-4", "addr", "show"])?;
        let mut block = (pid.wrapping_mul(64) + n * 7) % 16384;
        let addr = loop {
            let a = Ipv4Addr::new(10, 251, (block / 64) as u8, ((block % 64) * 4 + 1) as u8);
            let taken = (0..4).any(|i| {
                let host = format!("10.251.{}.{}/", block / 64, (block % 64) * 4 + i);
                used.contains(&host)
            });
            if !taken {
                break a;
            }
            block = (block + 1) % 16384;
        };
        let net = TestNet { netns: netns.clone(), link: link.clone(), addr };
        // From here on, Drop cleans up whatever was created.
        ip(&["netns", "add", &netns])?;
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer, "netns", &netns])?;
        ip(&["addr", "add", &format!("{addr}/30"), "dev", &link])?;
        ip(&["link", "set", &link, "up"])?;
        let peer_addr = Ipv4Addr::from(u32::from(addr) + 1);
        ip(&["-n", &netns, "addr", "add", &format!("{peer_addr}/30"), "dev", &peer])?;
        ip(&["-n", &netns, "link", "set", &peer, "up"])?;
        Ok(net)
    }

    /// The root-side address backends listen on (not loopback).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting either end removes the pair; deleting the namespace removes the peer.
        let _ = ip(&["link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// Removes `strait-e2e-<pid>-<n>` namespaces whose test process is gone (left
/// behind by a test process that was killed).
fn remove_stale_netns() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

// ---------------------------------------------------------------------------
// Backends on the test network
// ---------------------------------------------------------------------------

/// A demo backend (all demo services; answers with its name) listening on a
/// [`TestNet`] address. Stopped (gracefully) when dropped.
pub struct NetBackend {
    name: String,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl NetBackend {
    /// Spawns backend `name` on `ip:<ephemeral port>`.
    pub async fn spawn(ip: Ipv4Addr, name: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.with_context(|| format!("binding {ip}:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let backend_name = name.to_owned();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = strait_demo::serve_backend(backend_name.clone(), listener, shutdown).await {
                eprintln!("backend {backend_name} failed: {e}");
            }
        });
        Ok(NetBackend { name: name.to_owned(), addr, stop: Some(stop) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------
// The control plane
// ---------------------------------------------------------------------------

/// `deploy/` of this workspace.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy")
}

/// GRPCRoute (`gateway.networking.k8s.io/v1`).
pub fn grpcroute_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GRPCRoute"),
        "grpcroutes",
    )
}

/// A real etcd + kube-apiserver (with the Gateway API CRDs) and an admin client.
pub struct Cluster {
    env: TestEnv,
    client: Client,
}

impl Cluster {
    pub async fn start() -> Result<Self> {
        let started = Instant::now();
        let env = TestEnv::start(TestEnvOptions::default()).await.context("starting the test control plane")?;
        let client = env.client().await?;
        eprintln!("control plane up in {:.1?} at {}", started.elapsed(), env.server_url());
        Ok(Cluster { env, client })
    }

    pub fn env(&self) -> &TestEnv {
        &self.env
    }

    pub fn env_mut(&mut self) -> &mut TestEnv {
        &mut self.env
    }

    /// The admin (system:masters) client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// GRPCRoutes of `namespace` through the admin client.
    pub fn grpcroutes(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &grpcroute_resource())
    }

    /// `kubectl <args>` as admin; fails unless it exits 0; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// `kubectl <args>` as admin with `stdin` piped in (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        use std::io::Write;
        let mut cmd = self.env.kubectl();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().context("running kubectl (is it installed?)")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).context("writing kubectl stdin")?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl create namespace <name>` unless it exists.
    pub fn ensure_namespace(&self, name: &str) -> Result<()> {
        if self.kubectl(&["get", "namespace", name, "-o", "name"]).is_err() {
            self.kubectl(&["create", "namespace", name])?;
        }
        Ok(())
    }

    /// Namespace `app` plus `deploy/examples/services.yaml` and `grpcroutes.yaml`,
    /// applied with kubectl.
    pub fn apply_examples(&self) -> Result<()> {
        self.ensure_namespace(crate::NS)?;
        let examples = deploy_dir().join("examples");
        let services = examples.join("services.yaml");
        let routes = examples.join("grpcroutes.yaml");
        self.kubectl(&["apply", "-f", &services.display().to_string(), "-f", &routes.display().to_string()])?;
        Ok(())
    }

    /// `kubectl apply -f deploy/base/<file>`.
    pub fn apply_base(&self, file: &str) -> Result<()> {
        self.kubectl(&["apply", "-f", &deploy_dir().join("base").join(file).display().to_string()])?;
        Ok(())
    }

    /// Applies `deploy/base/proxy-rbac.yaml` and sets its binding's subjects to the
    /// `system:serviceaccounts:<namespace>` group — what strait-controller does for a
    /// namespace labelled `strait.io/inject=enabled` (no controller runs here).
    pub fn grant_sidecar_rbac(&self, namespace: &str) -> Result<()> {
        self.apply_base("proxy-rbac.yaml")?;
        let subjects = json!({"subjects": [{
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
            "name": format!("system:serviceaccounts:{namespace}"),
        }]});
        self.kubectl(&["patch", "clusterrolebinding", "strait-proxy", "--type=merge", "-p", &subjects.to_string()])?;
        Ok(())
    }

    /// A kubeconfig with a token of ServiceAccount `<namespace>/default` — the
    /// sidecar's pod identity — after [`Cluster::grant_sidecar_rbac`].
    pub async fn sidecar_kubeconfig(&self, namespace: &str) -> Result<PathBuf> {
        self.grant_sidecar_rbac(namespace)?;
        self.token_kubeconfig(namespace, "default").await
    }

    /// A kubeconfig with a token of ServiceAccount `<namespace>/<name>` (no RBAC applied).
    pub async fn token_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.env.service_account_token(namespace, name).await?;
        Ok(self.env.kubeconfig_for_token(&token)?)
    }

    /// A kubeconfig for ServiceAccount `strait-system/strait-controller` after creating
    /// the namespace and applying `deploy/base/controller-rbac.yaml`.
    pub async fn controller_kubeconfig(&self) -> Result<PathBuf> {
        self.ensure_namespace("strait-system")?;
        self.apply_base("controller-rbac.yaml")?;
        self.token_kubeconfig("strait-system", "strait-controller").await
    }

    /// `kubectl auth can-i <args> --as=<user>` as admin (impersonating): yes or no.
    pub fn can_i(&self, user: &str, args: &[&str]) -> Result<bool> {
        let as_flag = format!("--as={user}");
        let mut cmd = self.env.kubectl();
        cmd.args(["auth", "can-i"]).args(args).arg(&as_flag);
        let out = cmd.output().context("running kubectl auth can-i")?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match answer.as_str() {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => bail!("kubectl auth can-i {args:?} {as_flag}: {answer:?} {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// Publishes the endpoints of Service `namespace/service` (port name `grpc`) with
    /// kube-rs: one EndpointSlice `<service>-e2e-<i>` per distinct port (a slice has
    /// one port list), server-side applied; stale e2e slices of the Service are deleted.
    pub async fn put_endpoints(&self, namespace: &str, service: &str, addrs: &[SocketAddr]) -> Result<()> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for a in addrs {
            by_port.entry(a.port()).or_default().push(a.ip().to_string());
        }
        let mut names = Vec::new();
        for (i, (port, ips)) in by_port.into_iter().enumerate() {
            let name = format!("{service}-e2e-{i}");
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": service, E2E_LABEL: "true"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
                "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            });
            api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&slice))
                .await
                .with_context(|| format!("applying EndpointSlice {namespace}/{name}"))?;
            names.push(name);
        }
        let selector = format!("kubernetes.io/service-name={service},{E2E_LABEL}=true");
        for old in api.list(&ListParams::default().labels(&selector)).await? {
            let old_name = old.metadata.name.unwrap_or_default();
            if !names.contains(&old_name) {
                api.delete(&old_name, &DeleteParams::default()).await?;
            }
        }
        Ok(())
    }

    /// `kubectl get grpcroute <name> -n <namespace> -o json`.
    pub fn grpcroute_json(&self, namespace: &str, name: &str) -> Result<Value> {
        let text = self.kubectl(&["get", "grpcroute", name, "-n", namespace, "-o", "json"])?;
        serde_json::from_str(&text).context("kubectl output is not JSON")
    }
}

/// The `status.parents` entry of `route` written by `controller` for parent `parent_name`.
pub fn status_entry<'a>(route: &'a Value, controller: &str, parent_name: &str) -> Option<&'a Value> {
    route.pointer("/status/parents")?.as_array()?.iter().find(|p| {
        p.get("controllerName").and_then(Value::as_str) == Some(controller)
            && p.pointer("/parentRef/name").and_then(Value::as_str) == Some(parent_name)
    })
}

/// Condition `type_` of a status.parents entry: (status, reason, observedGeneration).
pub fn condition(entry: &Value, type_: &str) -> Option<(String, String, i64)> {
    let c =
        entry.get("conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?;
    Some((
        c.get("status")?.as_str()?.to_owned(),
        c.get("reason")?.as_str()?.to_owned(),
        c.get("observedGeneration").and_then(Value::as_i64).unwrap_or(-1),
    ))
}

// ---------------------------------------------------------------------------
// The controller process
// ---------------------------------------------------------------------------

/// A running `strait-controller` child process (killed when dropped).
pub struct ControllerProcess {
    child: Child,
    health: SocketAddr,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ControllerProcess {
    /// Starts `strait-controller` with `KUBECONFIG=kubeconfig`, Lease in
    /// `strait-system`, and waits until `/ready` (watches synced) answers 200.
    pub async fn start(kubeconfig: &Path, extra_args: &[&str]) -> Result<Self> {
        let bin = target_bin("strait-controller", "STRAIT_CONTROLLER_BIN")?;
        let health = free_addrs(1)?[0];
        let log_dir = tempfile::Builder::new().prefix("strait-e2e-controller-").tempdir()?;
        let log_path = log_dir.path().join("controller.stderr.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&bin)
            .args(["--namespace", "strait-system", "--identity", "strait-e2e-controller"])
            .args(["--health-addr", &health.to_string(), "--resync-seconds", "60", "--log-level", "info"])
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("STRAIT_REQUIRE_REFERENCE_GRANTS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut controller = ControllerProcess { child, health, log_path, _log_dir: log_dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = controller.child.try_wait()? {
                bail!("controller exited ({status}); log:\n{}", controller.log_tail(30));
            }
            match http1_get(controller.health, "/ready").await {
                Ok((200, _)) => return Ok(controller),
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("controller not ready after 20s (last /ready: {last}); log:\n{}", controller.log_tail(30))
    }

    /// The last `lines` lines of the controller's stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].iter().map(|l| format!("  | {l}\n")).collect()
    }
}

// ---------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------

/// One call's outcome: when it completed, and the answering backend or the gRPC code.
#[derive(Debug, Clone)]
pub struct CallEvent {
    pub at: Instant,
    pub result: Result<String, tonic::Code>,
}

/// Paced OrderService/GetOrder calls from `workers` tasks over one channel, until
/// stopped or `max_calls` were made. Each call carries a 5 s deadline.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Every result, in completion order (per worker).
    pub events: mpsc::UnboundedReceiver<CallEvent>,
}

impl Traffic {
    /// Starts the workers; each waits `pace` between its calls.
    pub fn start(channel: Channel, workers: usize, pace: Duration, max_calls: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, events) = mpsc::unbounded_channel();
        let tasks = (0..workers)
            .map(|w| {
                let (stop, calls, tx) = (stop.clone(), calls.clone(), tx.clone());
                let mut client = OrderServiceClient::new(channel.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(pace.max(Duration::from_micros(100)));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let n = calls.fetch_add(1, Ordering::Relaxed);
                        if n >= max_calls {
                            break;
                        }
                        let mut req = tonic::Request::new(probe(&format!("traffic-{w}-{n}")));
                        req.set_timeout(Duration::from_secs(5));
                        let result = client.get_order(req).await.map(|r| r.into_inner().backend).map_err(|s| s.code());
                        if tx.send(CallEvent { at: Instant::now(), result }).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Traffic { stop, calls, tasks, events }
    }

    /// Calls started so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Receives the next event, failing after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<CallEvent> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(anyhow!("traffic stopped (call budget exhausted?)")),
            Err(_) => Err(anyhow!("no call completed within {timeout:?}")),
        }
    }

    /// Stops the workers, waits for their last calls and returns the events not yet received.
    pub async fn stop(mut self) -> Vec<CallEvent> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let mut rest = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            rest.push(e);
        }
        rest
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil().max(1.0) as usize;
    samples[rank.min(samples.len()) - 1]
}
