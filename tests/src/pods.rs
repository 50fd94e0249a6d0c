//! Meshed pods for real: a minimal **kubelet** and **EndpointSlice controller** against
//! the real kube-apiserver (`strait-testenv`) and the real injection webhook
//! (`strait-injector serve`, as [`crate::injector`] runs it).
//!
//! [`MeshCluster::start`]:
//! 1. creates a test bridge (`stb<pid>-<n>`, `10.252.<k>.1/24`, a /24 nobody on the
//!    machine uses) in the root network namespace;
//! 2. starts the control plane with that bridge address as an extra IP SAN of the API
//!    server's certificate, and a TCP forwarder `10.252.<k>.1:<port>` →
//!    `127.0.0.1:<apiserver port>` so sidecars in pod network namespaces reach it;
//! 3. `kubectl apply -k deploy/`, starts the webhook on a loopback URL, labels the
//!    namespaces `app` and `client-ns` with `strait.io/inject=enabled`, binds the
//!    sidecar ClusterRole to the ServiceAccounts of `client-ns` too, applies
//!    `deploy/examples/{services,grpcroutes}.yaml` into `app`.
//!
//! [`MeshCluster::start_pod`] then does what a kubelet does with a Pod manifest:
//! `kubectl apply` (the webhook mutates it), read the stored spec back, give the pod a
//! network namespace (`strait-pod-<pid>-<n>`: a veth into the bridge, `10.252.<k>.<i>/24`,
//! `lo` up, default route via the bridge), write `status.podIP`, run every init
//! container's `command`+`args` **as written in the spec** (exit 0 required), start
//! native sidecars (`restartPolicy: Always`) with their env resolved from the spec
//! (values and `fieldRef`s) under the spec's UID/capabilities, wait for their
//! startupProbe (HTTP GET `<podIP>:<port><path>` from the root namespace, as the
//! kubelet probes), then start the app containers (as root, so their traffic is
//! redirected) and mark the pod Ready. Images map to workspace binaries
//! (`*strait-init*`, `*strait-proxy*`, `strait-demo-server`, `strait-demo-client`);
//! containers of image `strait-demo-client` are not started but run on demand by
//! [`MeshPod::run_client`], which parses the client's JSON lines.
//!
//! [`MeshCluster::sync_endpoints`] is the EndpointSlice controller: for every Service
//! with a selector, slices labelled `kubernetes.io/service-name` listing the matching
//! pods with a pod IP (ready = Ready condition and not terminating; terminating pods as
//! `ready: false, serving: <Ready>, terminating: true`), ports resolved by the Service
//! ports' `targetPort` through the pod's named container ports. The harness calls it
//! after every pod start, termination and removal.
//!
//! IPv6: the bridge also has `fd52:5452:<k>::1/64` (a unique-local prefix of the
//! harness's own); [`MeshCluster::start_pod_on`] gives a pod IPv4 only (the default),
//! both families ([`PodNetwork::DualStack`]: `podIPs` = [v4, v6], the kubelet probes
//! the IPv4 one) or IPv6 only ([`PodNetwork::Ipv6Only`]: `podIP` is the IPv6 address,
//! the kubelet probes `[podIP]:port`, and the sidecar reaches the API server through a
//! second forwarder on `[fd52:5452:<k>::1]`). Addresses are added with `nodad`: duplicate
//! address detection would leave them `tentative` (unusable, and skipped by ip6tables'
//! REDIRECT) for a second or more. The test Services are IPv4 single-stack, so the
//! EndpointSlice controller lists only pods with an IPv4 podIP; IPv6-only pods are
//! called by pod IP.
//!
//! Everything the harness creates (bridge, veths, namespaces, processes) is removed on
//! drop, also on panic; namespaces and links of test processes that no longer exist are
//! removed on the next start. Test traffic only ever goes to addresses of namespaces and
//! links the test created. Needs root ([`crate::kube_mode::skip_unless_root`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use strait_testenv::{TestEnv, TestEnvOptions};
use tokio::process::{Child, Command};

use crate::injector::{InjectorProcess, apply_deploy, kubectl_json, kubectl_ok, namespace};
use crate::kube_mode::deploy_dir;
use crate::{http1_get, target_bin};

/// The meshed namespaces.
pub const APP_NS: &str = "app";
pub const CLIENT_NS: &str = "client-ns";
/// Node name written into every pod (a pod without one is deleted at once, never
/// "terminating").
pub const NODE_NAME: &str = "strait-e2e-node";
/// `managed-by` label of the EndpointSlices [`MeshCluster::sync_endpoints`] writes.
pub const SLICE_MANAGER: &str = "strait-e2e-pods";
/// PATH inside "containers" (strait-init needs iptables-restore there).
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Upper bound for a sidecar's startup probe to succeed.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Serialises choosing and creating bridge subnets within this process.
static SUBNET_LOCK: Mutex<()> = Mutex::new(());
const NETNS_PREFIX: &str = "strait-pod-";
const BRIDGE_PREFIX: &str = "stb";
const VETH_PREFIX: &str = "stv";

// ---------------------------------------------------------------------------
// Small process helpers
// ---------------------------------------------------------------------------

fn ip(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv` inside network namespace `netns` (as root) and waits for it.
pub fn netns_exec(netns: &str, argv: &[&str]) -> Result<Output> {
    std::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("ip netns exec {netns} {argv:?}"))
}

/// Removes namespaces and links of earlier test processes that no longer run.
fn remove_stale() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(rest) = name.strip_prefix(NETNS_PREFIX)
                && dead(rest.split('-').next().unwrap_or_default())
            {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            let Some(name) = line.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or_default()) else {
                continue;
            };
            for prefix in [BRIDGE_PREFIX, VETH_PREFIX] {
                if let Some(rest) = name.strip_prefix(prefix)
                    && dead(rest.split('-').next().unwrap_or_default())
                {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The bridge and the API server forwarder
// ---------------------------------------------------------------------------

/// A Linux bridge with `10.252.<k>.1/24`; deleted on drop.
pub struct Bridge {
    name: String,
    subnet: u8,
}

impl Bridge {
    fn create() -> Result<Self> {
        let _guard = SUBNET_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        remove_stale();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{BRIDGE_PREFIX}{pid}-{n}");
        ensure!(name.len() <= 15, "bridge name {name} longer than 15 characters");
        let used = ip(&["-o", "-4", "addr", "show"])?;
        let routes = ip(&["-4", "route", "show"])?;
        let start = (pid as usize + n as usize * 37) % 256;
        let subnet = (0..256)
            .map(|i| ((start + i) % 256) as u8)
            .find(|k| {
                let prefix = format!("10.252.{k}.");
                !used.contains(&prefix) && !routes.contains(&prefix)
            })
            .context("no free /24 in 10.252.0.0/16")?;
        let bridge = Bridge { name: name.clone(), subnet };
        ip(&["link", "add", &name, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", bridge.gateway()), "dev", &name])?;
        ip(&["addr", "add", &format!("{}/64", bridge.gateway6()), "dev", &name, "nodad"])?;
        ip(&["link", "set", &name, "up"])?;
        Ok(bridge)
    }

    /// The bridge's own address: the pods' default gateway and the forwarder's address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 252, self.subnet, 1)
    }

    /// The bridge's IPv6 address: the IPv6 gateway and second forwarder's address.
    pub fn gateway6(&self) -> Ipv6Addr {
        self.ipv6(1)
    }

    /// `fd52:5452:<k>::<host>`: the harness's own unique-local /64 for this bridge.
    fn ipv6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd52, 0x5452, u16::from(self.subnet), 0, 0, 0, 0, host)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Which addresses a pod gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetwork {
    Ipv4Only,
    /// IPv4 primary (the probed `podIP`), IPv6 second.
    DualStack,
    Ipv6Only,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// Accepts on `listen` and splices each connection to `upstream`; stopped on drop.
struct Forwarder {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(listen: IpAddr, upstream: SocketAddr) -> Result<Self> {
        let listener =
            tokio::net::TcpListener::bind((listen, 0)).await.with_context(|| format!("binding {listen}:0"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Dropping the set (task aborted) aborts every connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        conns.spawn(async move {
                            if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Forwarder { addr, task })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// Control plane + webhook + bridge + forwarder. Drop pods before it.
pub struct MeshCluster {
    // Dropped in this order: forwarders, webhook, control plane, files, bridge.
    forwarder: Forwarder,
    forwarder6: Forwarder,
    injector: InjectorProcess,
    client: Client,
    env: TestEnv,
    dir: tempfile::TempDir,
    bridge: Bridge,
    next_host: AtomicU32,
    /// By (namespace, ServiceAccount, API server over IPv6).
    kubeconfigs: tokio::sync::Mutex<HashMap<(String, String, bool), PathBuf>>,
}

impl MeshCluster {
    /// See the module docs. Takes about 10 s (control plane, CRDs, webhook).
    pub async fn start() -> Result<Self> {
        let started = Instant::now();
        check_bridge_filtering()?;
        let bridge = Bridge::create()?;
        let gateway = bridge.gateway();
        let env = TestEnv::start(TestEnvOptions {
            extra_serving_ips: vec![IpAddr::V4(gateway), IpAddr::V6(bridge.gateway6())],
            ..TestEnvOptions::default()
        })
        .await
        .context("starting the test control plane")?;
        let client = env.client().await?;
        let api_port: u16 = env
            .server_url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("API server URL without a port")?;
        let api = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port));
        let forwarder = Forwarder::start(gateway.into(), api).await?;
        let forwarder6 = Forwarder::start(bridge.gateway6().into(), api).await?;
        apply_deploy(&env)?;
        let injector = InjectorProcess::start(&env).await.context("starting the injection webhook")?;
        for ns in [APP_NS, CLIENT_NS] {
            namespace(&env, ns, &[("strait.io/inject", "enabled")])?;
        }
        // strait-controller (not run here) would bind the labelled namespaces'
        // ServiceAccounts to ClusterRole strait-proxy; a binding of the test's own does.
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "strait-proxy-client-ns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "strait-proxy"},
            "subjects": ([APP_NS, CLIENT_NS].map(|ns| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": format!("system:serviceaccounts:{ns}")}))),
        });
        kubectl_ok(&env, &["apply", "-f", "-"], Some(&binding.to_string()))?;
        let examples = deploy_dir().join("examples");
        kubectl_ok(
            &env,
            &[
                "apply",
                "-n",
                APP_NS,
                "-f",
                &examples.join("services.yaml").display().to_string(),
                "-f",
                &examples.join("grpcroutes.yaml").display().to_string(),
            ],
            None,
        )?;
        let dir = tempfile::Builder::new().prefix("strait-e2e-pods-").tempdir()?;
        // The sidecar runs as UID 1337 and reads its kubeconfig from here.
        set_mode(dir.path(), 0o755)?;
        eprintln!(
            "mesh cluster up in {:.1?}: bridge {} ({gateway}/24), API server via {}",
            started.elapsed(),
            bridge.name,
            forwarder.addr
        );
        Ok(MeshCluster {
            forwarder,
            forwarder6,
            injector,
            client,
            env,
            dir,
            bridge,
            next_host: AtomicU32::new(2),
            kubeconfigs: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn env(&self) -> &TestEnv {
        &self.env
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// The webhook's log (for failure messages).
    pub fn injector_log(&self) -> String {
        self.injector.log_tail(30)
    }

    /// `kubectl apply -f -` of `yaml` (any number of documents).
    pub fn apply(&self, yaml: &str) -> Result<()> {
        kubectl_ok(&self.env, &["apply", "-f", "-"], Some(yaml))?;
        Ok(())
    }

    /// The ClusterIP the API server allocated to Service `ns/name`.
    pub async fn cluster_ip(&self, ns: &str, name: &str) -> Result<Ipv4Addr> {
        let svc = Api::<Service>::namespaced(self.client.clone(), ns).get(name).await?;
        svc.spec
            .and_then(|s| s.cluster_ip)
            .and_then(|ip| ip.parse().ok())
            .with_context(|| format!("Service {ns}/{name} has no IPv4 ClusterIP"))
    }

    /// A kubeconfig (server: the forwarder on the bridge, CA and token inline, readable
    /// by the sidecar's UID) for ServiceAccount `ns/sa`.
    /// `over_ipv6`: through the IPv6 forwarder (for IPv6-only pods).
    async fn pod_kubeconfig(&self, ns: &str, sa: &str, over_ipv6: bool) -> Result<PathBuf> {
        use base64::Engine;
        let mut cache = self.kubeconfigs.lock().await;
        let key = (ns.to_owned(), sa.to_owned(), over_ipv6);
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let token = self.env.service_account_token(ns, sa).await?;
        let ca = std::fs::read(self.env.ca_cert_path()).context("reading the CA certificate")?;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{server}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {ns}}}\ncurrent-context: c\n",
            server = if over_ipv6 { self.forwarder6.addr } else { self.forwarder.addr },
        );
        let path = self.dir.path().join(format!("kubeconfig-{ns}-{sa}{}", if over_ipv6 { "-v6" } else { "" }));
        std::fs::write(&path, text)?;
        set_mode(&path, 0o644)?;
        cache.insert(key, path.clone());
        Ok(path)
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates the Pod `manifest` (a JSON Pod; `nodeName` and `serviceAccountName`
    /// default to [`NODE_NAME`] / `default`) through the API server — so through the
    /// webhook — and runs it like a kubelet (see the module docs). Returns once the app
    /// containers listen on their declared ports and the EndpointSlices list the pod.
    pub async fn start_pod(&self, manifest: Value) -> Result<MeshPod> {
        self.start_pod_on(manifest, PodNetwork::Ipv4Only).await
    }

    /// [`Self::start_pod`] with the pod's addresses chosen by `network`.
    pub async fn start_pod_on(&self, mut manifest: Value, network: PodNetwork) -> Result<MeshPod> {
        let started = Instant::now();
        let spec = manifest.get_mut("spec").context("pod manifest without spec")?;
        if spec.get("nodeName").is_none() {
            spec["nodeName"] = json!(NODE_NAME);
        }
        if spec.get("serviceAccountName").is_none() {
            spec["serviceAccountName"] = json!("default");
        }
        let ns = manifest.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned();
        let name = manifest.pointer("/metadata/name").and_then(Value::as_str).context("pod without name")?.to_owned();
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        ensure!(host < 255, "more than 253 pods on one bridge");
        let v4 = Ipv4Addr::new(10, 252, self.bridge.subnet, host as u8);
        let v6 = self.bridge.ipv6(host as u16);
        let (v4, v6) = match network {
            PodNetwork::Ipv4Only => (Some(v4), None),
            PodNetwork::DualStack => (Some(v4), Some(v6)),
            PodNetwork::Ipv6Only => (None, Some(v6)),
        };
        let mut pod = MeshPod::create_netns(&ns, &name, v4, v6, &self.bridge)?;
        let pod_ips = pod.pod_ips();
        pod.log_dir = self.dir.path().join(format!("{ns}-{name}"));
        std::fs::create_dir_all(&pod.log_dir)?;

        kubectl_ok(&self.env, &["apply", "-f", "-"], Some(&manifest.to_string()))
            .with_context(|| format!("creating pod {ns}/{name}"))?;
        self.set_status(&ns, &name, &pod_ips, false).await?;
        pod.spec = kubectl_json(&self.env, &["get", "pod", "-n", &ns, &name])?;

        let sa = pod.spec.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default").to_owned();
        let kubeconfig = self.pod_kubeconfig(&ns, &sa, network == PodNetwork::Ipv6Only).await?;
        let inits = pod.spec.pointer("/spec/initContainers").and_then(Value::as_array).cloned().unwrap_or_default();
        for c in &inits {
            let cname = c["name"].as_str().unwrap_or_default().to_owned();
            if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
                let proc = pod.spawn_container(c, Some(&kubeconfig))?;
                pod.containers.push(proc);
                pod.wait_startup(c).await.with_context(|| format!("native sidecar {cname} of {ns}/{name}"))?;
            } else {
                let (status, log) = pod.run_to_completion(c).await?;
                ensure!(status.success(), "init container {cname} of {ns}/{name} failed ({status}):\n{log}");
            }
        }
        let apps = pod.spec.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
        for c in &apps {
            if image_of(c) == "strait-demo-client" {
                // Run on demand (MeshPod::run_client).
                pod.client_container = Some(c.clone());
                continue;
            }
            let proc = pod.spawn_container(c, None)?;
            pod.containers.push(proc);
        }
        for c in &apps {
            if image_of(c) != "strait-demo-client" {
                pod.wait_listening(c).await?;
            }
        }
        self.set_status(&ns, &name, &pod_ips, true).await?;
        self.sync_endpoints(&ns).await?;
        eprintln!("pod {ns}/{name} ({pod_ips:?}) running in {:.1?}", started.elapsed());
        Ok(pod)
    }

    /// What the kubelet reports: phase Running, the pod IP, the Ready condition.
    /// `pod_ips`: primary first.
    async fn set_status(&self, ns: &str, name: &str, pod_ips: &[IpAddr], ready: bool) -> Result<()> {
        let pod_ip = pod_ips.first().context("a pod without an address")?;
        let ready = if ready { "True" } else { "False" };
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": self.bridge.gateway().to_string(),
            "hostIPs": [{"ip": self.bridge.gateway().to_string()}],
            "podIP": pod_ip.to_string(),
            "podIPs": pod_ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
        }});
        self.pods(ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("patching the status of pod {ns}/{name}"))?;
        Ok(())
    }

    /// Deletes the pod gracefully (it gets a deletionTimestamp and stays, terminating,
    /// as with a kubelet that has not confirmed yet) and updates the EndpointSlices.
    pub async fn begin_termination(&self, pod: &MeshPod) -> Result<()> {
        self.pods(&pod.namespace)
            .delete(&pod.name, &DeleteParams { grace_period_seconds: Some(30), ..DeleteParams::default() })
            .await?;
        let p = self.pods(&pod.namespace).get(&pod.name).await?;
        ensure!(p.metadata.deletion_timestamp.is_some(), "pod {} was deleted at once, not terminating", pod.name);
        self.sync_endpoints(&pod.namespace).await
    }

    /// Stops the pod's processes, removes it from the API (grace period 0, as the
    /// kubelet confirms) and updates the EndpointSlices.
    pub async fn remove_pod(&self, pod: MeshPod) -> Result<()> {
        let (ns, name) = (pod.namespace.clone(), pod.name.clone());
        drop(pod);
        let _ = self
            .pods(&ns)
            .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
            .await;
        self.sync_endpoints(&ns).await
    }

    /// The EndpointSlice controller, once, for namespace `ns` (see the module docs).
    pub async fn sync_endpoints(&self, ns: &str) -> Result<()> {
        let services = Api::<Service>::namespaced(self.client.clone(), ns).list(&ListParams::default()).await?;
        let pods = self.pods(ns).list(&ListParams::default()).await?;
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        for svc in services {
            let svc_name = svc.metadata.name.clone().unwrap_or_default();
            let Some(spec) = svc.spec else { continue };
            let Some(selector) = spec.selector.filter(|s| !s.is_empty()) else { continue };
            let ports = spec.ports.unwrap_or_default();
            // Resolved port list -> endpoints with that list.
            let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Value>> = BTreeMap::new();
            for pod in &pods {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    continue;
                }
                let Some(status) = &pod.status else { continue };
                let Some(pod_ip) = status.pod_ip.clone() else { continue };
                // The slices are IPv4 (the Services are single-stack IPv4).
                if pod_ip.parse::<Ipv4Addr>().is_err() {
                    continue;
                }
                let ready_cond = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
                let terminating = pod.metadata.deletion_timestamp.is_some();
                let mut resolved = Vec::new();
                for p in &ports {
                    let number = match &p.target_port {
                        None => Some(p.port),
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => Some(*n),
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => pod
                            .spec
                            .iter()
                            .flat_map(|s| s.containers.iter())
                            .flat_map(|c| c.ports.iter().flatten())
                            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                            .map(|cp| cp.container_port),
                    };
                    // Like the real controller: a port the pod does not have is left out.
                    if let Some(n) = number {
                        resolved.push((
                            p.name.clone().unwrap_or_default(),
                            n,
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ));
                    }
                }
                groups.entry(resolved).or_default().push(json!({
                    "addresses": [pod_ip],
                    "conditions": {"ready": ready_cond && !terminating, "serving": ready_cond, "terminating": terminating},
                    "nodeName": NODE_NAME,
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": pod.metadata.name, "uid": pod.metadata.uid},
                }));
            }
            if groups.is_empty() {
                // No pods: one slice without endpoints, as the controller keeps.
                groups.insert(Vec::new(), Vec::new());
            }
            let mut names = Vec::new();
            for (i, (ports, endpoints)) in groups.into_iter().enumerate() {
                let name = format!("{svc_name}-pods-{i}");
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": ns, "labels": {
                        "kubernetes.io/service-name": svc_name,
                        "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                    }},
                    "addressType": "IPv4",
                    "ports": ports.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto})).collect::<Vec<_>>(),
                    "endpoints": endpoints,
                });
                slices
                    .patch(&name, &PatchParams::apply(SLICE_MANAGER).force(), &Patch::Apply(&slice))
                    .await
                    .with_context(|| format!("applying EndpointSlice {ns}/{name}"))?;
                names.push(name);
            }
            let selector =
                format!("kubernetes.io/service-name={svc_name},endpointslice.kubernetes.io/managed-by={SLICE_MANAGER}");
            for old in slices.list(&ListParams::default().labels(&selector)).await? {
                let old_name = old.metadata.name.unwrap_or_default();
                if !names.contains(&old_name) {
                    slices.delete(&old_name, &DeleteParams::default()).await?;
                }
            }
        }
        Ok(())
    }
}

/// With `br_netfilter` loaded and `bridge-nf-call-iptables=1`, frames between two
/// pods on the bridge traverse the root namespace's FORWARD chain; a DROP policy there
/// (Docker sets one) would silently black-hole pod-to-pod traffic. Fail clearly instead.
fn check_bridge_filtering() -> Result<()> {
    let Ok(v) = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables") else { return Ok(()) };
    if v.trim() != "1" {
        return Ok(());
    }
    let mut rules = String::new();
    for (tool, switch) in [("iptables", "bridge-nf-call-iptables"), ("ip6tables", "bridge-nf-call-ip6tables")] {
        let on = std::fs::read_to_string(format!("/proc/sys/net/bridge/{switch}")).is_ok_and(|v| v.trim() == "1");
        if let (true, Ok(out)) = (on, std::process::Command::new(tool).args(["-S", "FORWARD"]).output()) {
            rules.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    ensure!(
        !rules.lines().any(|l| l.trim() == "-P FORWARD DROP"),
        "bridged traffic is filtered by the root namespace's FORWARD chain (bridge-nf-call-iptables=1, \
         policy DROP): pods on the test bridge could not reach each other. Run on a host without that \
         policy, or set net.bridge.bridge-nf-call-iptables=0."
    );
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// The last path segment of a container's image without tag or digest.
pub fn image_of(container: &Value) -> String {
    let image = container["image"].as_str().unwrap_or_default();
    let base = image.split('@').next().unwrap_or_default();
    let last = base.rsplit('/').next().unwrap_or_default();
    last.split(':').next().unwrap_or_default().to_owned()
}

/// The workspace binary standing in for `image`'s entrypoint.
pub fn binary_for_image(image: &str) -> Result<PathBuf> {
    let name = if image.contains("strait-init") {
        "strait-init"
    } else if image.contains("strait-proxy") {
        "strait-proxy"
    } else if image == "strait-demo-server" || image == "strait-demo-client" {
        image
    } else {
        bail!("no workspace binary for image {image:?}")
    };
    target_bin(name, &format!("STRAIT_{}_BIN", name.trim_start_matches("strait-").replace('-', "_").to_uppercase()))
}

/// `command`+`args` of a container, with `command[0]` (or the image entrypoint when
/// there is no command) mapped to the workspace binary of the image.
pub fn container_argv(container: &Value) -> Result<(PathBuf, Vec<String>)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    let image = image_of(container);
    let bin = binary_for_image(&image)?;
    let command = strings(&container["command"]);
    let mut argv = Vec::new();
    if let Some(first) = command.first() {
        // The image's PATH holds exactly its binary: the command must name it.
        let want = bin.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        ensure!(
            Path::new(first).file_name().and_then(|n| n.to_str()) == Some(want),
            "container {} runs {first:?}, which image {image} does not have ({want} only)",
            container["name"]
        );
        argv.extend(command[1..].iter().cloned());
    }
    argv.extend(strings(&container["args"]));
    Ok((bin, argv))
}

// ---------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------

/// A running container process (killed on drop).
pub struct ContainerProc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

/// One JSON line of `strait-demo-client`.
#[derive(Debug, Clone)]
pub struct ClientLine {
    pub ok: bool,
    pub backend: String,
    pub code: String,
    pub message: String,
    pub headers: Value,
}

/// A pod run by the harness: its network namespace, processes and stored spec.
pub struct MeshPod {
    pub namespace: String,
    pub name: String,
    /// The primary pod IP (`status.podIP`; what the kubelet probes).
    pub ip: IpAddr,
    /// The IPv4 and IPv6 addresses, when the pod has them.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The Pod as stored by the API server (after the webhook), with the status the
    /// harness wrote when it was read back (podIP set, not yet Ready).
    pub spec: Value,
    pub netns: String,
    host_link: String,
    containers: Vec<ContainerProc>,
    client_container: Option<Value>,
    log_dir: PathBuf,
}

impl MeshPod {
    fn create_netns(
        ns: &str,
        name: &str,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
        bridge: &Bridge,
    ) -> Result<Self> {
        let primary: IpAddr = match (ipv4, ipv6) {
            (Some(v4), _) => v4.into(),
            (None, Some(v6)) => v6.into(),
            (None, None) => bail!("a pod needs an address"),
        };
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let netns = format!("{NETNS_PREFIX}{pid}-{n}");
        let host_link = format!("{VETH_PREFIX}{pid}-{n}");
        ensure!(host_link.len() <= 15, "interface name {host_link} longer than 15 characters");
        let pod = MeshPod {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            ip: primary,
            ipv4,
            ipv6,
            spec: Value::Null,
            netns: netns.clone(),
            host_link: host_link.clone(),
            containers: Vec::new(),
            client_container: None,
            log_dir: PathBuf::new(),
        };
        // From here on Drop removes whatever exists.
        ip(&["netns", "add", &netns])?;
        ip(&["link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        ip(&["link", "set", &host_link, "master", bridge.name()])?;
        ip(&["link", "set", &host_link, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        if let Some(v4) = ipv4 {
            ip(&["-n", &netns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        }
        if let Some(v6) = ipv6 {
            // nodad: usable at once (see the module docs).
            ip(&["-n", &netns, "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        }
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        // ClusterIPs are routed nowhere; a default route lets connect() get as far as
        // the OUTPUT chain, where strait-init's rules redirect it.
        if ipv4.is_some() {
            ip(&["-n", &netns, "route", "add", "default", "via", &bridge.gateway().to_string()])?;
        }
        if ipv6.is_some() {
            ip(&["-n", &netns, "-6", "route", "add", "default", "via", &bridge.gateway6().to_string()])?;
        }
        Ok(pod)
    }

    /// `status.podIPs`: the primary first.
    fn pod_ips(&self) -> Vec<IpAddr> {
        let v4 = self.ipv4.map(IpAddr::from);
        let v6 = self.ipv6.map(IpAddr::from);
        [v4, v6].into_iter().flatten().collect()
    }

    /// Environment of a container: PATH, then its `env` with `value`s and `fieldRef`s
    /// resolved against the stored pod.
    fn container_env(&self, container: &Value) -> Result<Vec<(String, String)>> {
        let mut env = vec![("PATH".to_owned(), CONTAINER_PATH.to_owned())];
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().context("env without name")?.to_owned();
            let value = if let Some(v) = e.get("value") {
                v.as_str().unwrap_or_default().to_owned()
            } else if let Some(path) = e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str) {
                self.field(path).with_context(|| format!("env {name}: fieldRef {path}"))?
            } else if e.get("valueFrom").is_some() {
                bail!("env {name}: only value and fieldRef are supported by this kubelet: {e}");
            } else {
                String::new()
            };
            env.push((name, value));
        }
        Ok(env)
    }

    /// A downward-API field of the stored pod.
    fn field(&self, path: &str) -> Result<String> {
        let value = if let Some(rest) =
            path.strip_prefix("metadata.labels['").or_else(|| path.strip_prefix("metadata.annotations['"))
        {
            let key = rest.trim_end_matches("']");
            let map = if path.starts_with("metadata.labels") { "labels" } else { "annotations" };
            self.spec["metadata"][map][key].clone()
        } else {
            self.spec.pointer(&format!("/{}", path.replace('.', "/"))).cloned().unwrap_or(Value::Null)
        };
        match value {
            Value::String(s) if !s.is_empty() => Ok(s),
            other => bail!("no value ({other}) in the pod"),
        }
    }

    /// The command line that runs `container` in the pod's network namespace with its
    /// securityContext applied (UID/GID, capabilities, no_new_privs) via setpriv.
    fn command_for(&self, container: &Value) -> Result<(Command, String)> {
        let (bin, args) = container_argv(container)?;
        let cname = container["name"].as_str().unwrap_or_default().to_owned();
        let sc = &container["securityContext"];
        let pod_sc = &self.spec["spec"]["securityContext"];
        let uid = sc["runAsUser"].as_i64().or_else(|| pod_sc["runAsUser"].as_i64()).unwrap_or(0);
        let gid = sc["runAsGroup"].as_i64().or_else(|| pod_sc["runAsGroup"].as_i64()).unwrap_or(uid);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "setpriv", "--pdeathsig", "KILL"]);
        if uid != 0 || gid != 0 {
            cmd.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups"]);
        }
        if let Some(caps) = sc.get("capabilities") {
            // The runtime's bounding set: drop ALL then add, as a container runtime does.
            let drop_all = caps["drop"].as_array().is_some_and(|d| d.iter().any(|c| c == "ALL"));
            if drop_all {
                let mut set = vec!["-all".to_owned()];
                for add in caps["add"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    set.push(format!("+{}", add.to_lowercase()));
                }
                cmd.args(["--inh-caps", "-all", "--bounding-set", &set.join(",")]);
            }
        }
        if sc["allowPrivilegeEscalation"] == json!(false) {
            cmd.arg("--no-new-privs");
        }
        cmd.arg("--").arg(&bin).args(&args);
        cmd.env_clear();
        for (k, v) in self.container_env(container)? {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        let line = format!("uid {uid}: {} {}", bin.display(), args.join(" "));
        Ok((cmd, format!("{cname} ({line})")))
    }

    fn spawn_container(&self, container: &Value, kubeconfig: Option<&Path>) -> Result<ContainerProc> {
        let (mut cmd, what) = self.command_for(container)?;
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let name = container["name"].as_str().unwrap_or_default().to_owned();
        let log = self.log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        cmd.stdout(Stdio::from(file.try_clone()?)).stderr(Stdio::from(file));
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(ContainerProc { name, child, log })
    }

    async fn run_to_completion(&self, container: &Value) -> Result<(ExitStatus, String)> {
        let (mut cmd, what) = self.command_for(container)?;
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .with_context(|| format!("{what} did not exit within 30 s"))?
            .with_context(|| format!("running {what}"))?;
        let log = format!("{what}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status, log))
    }

    /// The kubelet's startupProbe (else readinessProbe): HTTP GET on the pod IP.
    async fn wait_startup(&mut self, container: &Value) -> Result<()> {
        let probe = container.get("startupProbe").or_else(|| container.get("readinessProbe"));
        let Some(get) = probe.and_then(|p| p.get("httpGet")) else { return Ok(()) };
        let port = get["port"].as_u64().context("probe port must be a number here")? as u16;
        let path = get["path"].as_str().unwrap_or("/").to_owned();
        let name = container["name"].as_str().unwrap_or_default().to_owned();
        let addr = SocketAddr::from((self.ip, port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last;
        loop {
            if let Some(c) = self.containers.iter_mut().find(|c| c.name == name)
                && let Some(status) = c.child.try_wait()?
            {
                bail!("{name} exited ({status}) before its startup probe passed:\n{}", self.logs(&name));
            }
            match http1_get(addr, &path).await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "startup probe GET {addr}{path} failing after {STARTUP_TIMEOUT:?} ({last}):\n{}",
                    self.logs(&name)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every declared TCP containerPort of `container` is listening in the
    /// pod's namespace (`ss -ltn` there).
    async fn wait_listening(&mut self, container: &Value) -> Result<()> {
        let ports: Vec<u64> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
            .filter_map(|p| p["containerPort"].as_u64())
            .collect();
        let name = container["name"].as_str().unwrap_or_default().to_owned();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(c) = self.containers.iter_mut().find(|c| c.name == name)
                && let Some(status) = c.child.try_wait()?
            {
                bail!("container {name} exited ({status}):\n{}", self.logs(&name));
            }
            let out = netns_exec(&self.netns, &["ss", "-Hltn"])?;
            let text = String::from_utf8_lossy(&out.stdout);
            let listening = |port: u64| {
                text.lines().any(|l| l.split_whitespace().nth(3).is_some_and(|a| a.ends_with(&format!(":{port}"))))
            };
            if ports.iter().all(|p| listening(*p)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("container {name} not listening on {ports:?} after 15 s:\n{text}\n{}", self.logs(&name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The output of container `name` so far.
    pub fn logs(&self, name: &str) -> String {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .map(|c| std::fs::read_to_string(&c.log).unwrap_or_default())
            .unwrap_or_else(|| format!("(no container {name})"))
    }

    /// The init container `name` of the stored spec.
    pub fn init_container(&self, name: &str) -> Result<Value> {
        self.spec
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .with_context(|| format!("pod {} has no init container {name}", self.name))
    }

    /// Runs init container `name` again, exactly as the spec says: (exit status, output).
    pub async fn rerun_init_container(&self, name: &str) -> Result<(ExitStatus, String)> {
        self.run_to_completion(&self.init_container(name)?).await
    }

    /// Sends SIGTERM to container `name`.
    pub fn sigterm(&self, name: &str) -> Result<()> {
        let c = self.containers.iter().find(|c| c.name == name).with_context(|| format!("no container {name}"))?;
        let pid = c.child.id().ok_or_else(|| anyhow!("{name} already exited"))?;
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Waits up to `timeout` for container `name` to exit.
    pub async fn wait_exit(&mut self, name: &str, timeout: Duration) -> Result<ExitStatus> {
        let c = self.containers.iter_mut().find(|c| c.name == name).with_context(|| format!("no container {name}"))?;
        match tokio::time::timeout(timeout, c.child.wait()).await {
            Ok(s) => Ok(s?),
            Err(_) => bail!("{name} did not exit within {timeout:?}:\n{}", self.logs(name)),
        }
    }

    /// Runs the pod's `strait-demo-client` container on demand with `args` (as root,
    /// so redirected): its `command`/`args` from the spec, then `args`. Returns one
    /// parsed line per call; fails if it exits non-zero.
    pub async fn run_client(&self, args: &[&str]) -> Result<Vec<ClientLine>> {
        let mut container = self.client_container.clone().context("pod has no strait-demo-client container")?;
        let mut all: Vec<Value> = container["args"].as_array().cloned().unwrap_or_default();
        all.extend(args.iter().map(|a| json!(a)));
        container["args"] = Value::Array(all);
        let (mut cmd, what) = self.command_for(&container)?;
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .with_context(|| format!("{what} did not finish within 60 s"))??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "{what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).with_context(|| format!("client printed non-JSON: {l}"))?;
                Ok(ClientLine {
                    ok: v["ok"].as_bool().unwrap_or(false),
                    backend: v["backend"].as_str().unwrap_or_default().to_owned(),
                    code: v["code"].as_str().unwrap_or_default().to_owned(),
                    message: v["message"].as_str().unwrap_or_default().to_owned(),
                    headers: v["headers"].clone(),
                })
            })
            .collect()
    }

    /// `iptables-save -t nat` of the pod (with `-c`: packet/byte counters), with the
    /// backend that holds Strait's chains (nft, else legacy).
    pub fn nat_table(&self, counters: bool) -> Result<String> {
        self.nat_table_of("iptables", counters)
    }

    /// [`Self::nat_table`] of ip6tables.
    pub fn ip6_nat_table(&self, counters: bool) -> Result<String> {
        self.nat_table_of("ip6tables", counters)
    }

    fn nat_table_of(&self, tool: &str, counters: bool) -> Result<String> {
        let mut last = String::new();
        for save in [format!("{tool}-nft-save"), format!("{tool}-legacy-save")] {
            let save = save.as_str();
            let mut argv = vec![save, "-t", "nat"];
            if counters {
                argv.push("-c");
            }
            let out = netns_exec(&self.netns, &argv)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("STRAIT_OUTPUT") {
                return Ok(text);
            }
            last = format!("{save}: {}{}", text, String::from_utf8_lossy(&out.stderr));
        }
        bail!("no Strait rules in the nat table of {}: {last}", self.netns)
    }
}

impl Drop for MeshPod {
    fn drop(&mut self) {
        for c in &mut self.containers {
            let _ = c.child.start_kill();
        }
        for c in &mut self.containers {
            let _ = c.child.try_wait();
        }
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

/// A `strait-demo-server` pod: gRPC on 8080 (`grpc`), HTTP/1.1 on 8081 (`http`), TCP
/// echo on 7000 (`tcp-echo`), server-first TCP on 7001 (`greeting`); it answers with
/// its pod name.
pub fn server_pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels_map(labels)},
        "spec": {"containers": [server_container("app", name, &[
            ("--grpc", "0.0.0.0:8080", "grpc", 8080),
            ("--http1", "0.0.0.0:8081", "http", 8081),
            ("--tcp-echo", "0.0.0.0:7000", "tcp-echo", 7000),
            ("--tcp-greeting", "0.0.0.0:7001", "greeting", 7001),
        ])]},
    })
}

/// A `strait-demo-server` container named `container` answering as `backend`:
/// (flag, listen address, port name, port).
pub fn server_container(container: &str, backend: &str, listeners: &[(&str, &str, &str, u16)]) -> Value {
    let mut args = vec![json!("--name"), json!(backend)];
    let mut ports = Vec::new();
    for (flag, addr, port_name, port) in listeners {
        args.push(json!(flag));
        args.push(json!(addr));
        ports.push(json!({"name": port_name, "containerPort": port, "protocol": "TCP"}));
    }
    json!({"name": container, "image": "strait-demo-server", "args": args, "ports": ports})
}

/// A pod whose app is `strait-demo-client` (run on demand by [`MeshPod::run_client`]).
pub fn client_pod(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "client", "image": "strait-demo-client"}]},
    })
}

fn labels_map(labels: &[(&str, &str)]) -> Value {
    Value::Object(labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

/// Counts lines by backend (failed calls under `"<code>: <message>"`).
pub fn tally(lines: &[ClientLine]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        let key = if l.ok { l.backend.clone() } else { format!("{}: {}", l.code, l.message) };
        *m.entry(key).or_default() += 1;
    }
    m
}

/// `[pkts:bytes]` counters of the `iptables-save -c` rule line containing `needle`.
pub fn rule_packets(save: &str, needle: &str) -> Result<u64> {
    let line =
        save.lines().find(|l| l.contains(needle)).with_context(|| format!("no rule with {needle:?}:\n{save}"))?;
    let counters = line.strip_prefix('[').and_then(|l| l.split(']').next()).context("no counters (-c)")?;
    counters.split(':').next().and_then(|p| p.parse().ok()).with_context(|| format!("bad counters in {line}"))
}

/// A save without comments (timestamps) and with every `[pkts:bytes]` zeroed.
pub fn normalize_save(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let mut out = String::new();
            let mut rest = l;
            while let Some(start) = rest.find('[') {
                out.push_str(&rest[..start]);
                match rest[start..].find(']') {
                    Some(end)
                        if rest[start + 1..start + end]
                            .split(':')
                            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
                    {
                        out.push_str("[0:0]");
                        rest = &rest[start + end + 1..];
                    }
                    _ => {
                        out.push('[');
                        rest = &rest[start + 1..];
                    }
                }
            }
            out.push_str(rest);
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A network namespace with only `lo` up (for running an init container alone);
/// deleted on drop.
pub struct BareNetns {
    pub name: String,
}

impl BareNetns {
    pub fn create() -> Result<Self> {
        remove_stale();
        let name = format!("{NETNS_PREFIX}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        let ns = BareNetns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for BareNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
