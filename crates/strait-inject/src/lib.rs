//! The Pod mutation that meshes a workload.
//!
//! The mutating admission webhook (`strait-injector`) and the manual `inject` CLI both
//! call into this crate; it performs no I/O. Given a Pod, the namespace it is created in
//! and the cluster-wide [`InjectConfig`], it decides whether the Pod is injected and, if
//! so, produces an RFC 6902 JSON Patch against the Pod's JSON that adds:
//!
//! * the `strait-init` init container, **first** among init containers: it installs the
//!   iptables rules that redirect the pod's traffic to the proxy, so it must run before
//!   anything else in the pod sends or receives a packet;
//! * the `strait-proxy` sidecar, either as a native sidecar (an init container with
//!   `restartPolicy: Always`, right after `strait-init`, so the app's own init containers
//!   already run meshed) or, in classic mode, as the first regular container with a
//!   `postStart` hook that holds the app containers until the proxy is ready;
//! * the `strait.io/status` annotation, a compact JSON summary of what was injected
//!   (also returned as [`Injection::summary`]); its presence makes injection idempotent.
//!
//! # Windows pods
//!
//! The proxy and `strait-init` (iptables) are Linux programs, and the API server forbids
//! the injected containers' Linux security settings (`runAsUser`, capabilities,
//! seccomp, `readOnlyRootFilesystem`, …) in a pod with `spec.os.name: windows`. Such a
//! pod — and one that can only be scheduled on Windows nodes, by a `nodeSelector` of
//! `kubernetes.io/os: windows` or a required node affinity admitting only that — is
//! admitted **unmeshed**, and the reason is recorded on the pod as
//! `strait.io/status: {"version": …, "skipped": "<reason>"}`.
//!
//! Opt-in itself is the API server's job (the webhook's namespace and object selectors
//! match `strait.io/inject=enabled`); this crate only implements the opt-outs and the
//! safety skips, see [`skip_reason`].
//!
//! # API
//!
//! * [`skip_reason`] — the cheap decision: `Some(reason)` when the pod is left alone.
//! * [`mutate`] — the decision plus the patch: [`Decision::Skip`] or
//!   [`Decision::Inject`] with the patch, warnings for the admission response and the
//!   summary.
//! * [`inject_into`] — [`mutate`], then the patch applied to the pod in place (the CLI
//!   and the tests use it; the webhook sends the patch instead).
//!
//! # Per-pod annotations
//!
//! All optional; an invalid value produces a warning naming the annotation and the value,
//! and the default is used (the pod is still injected: refusing a pod over a typo in an
//! optional tuning knob would be worse than ignoring the knob).
//!
//! | annotation | value |
//! |---|---|
//! | `strait.io/proxy-image` | image reference |
//! | `strait.io/proxy-cpu-request`, `strait.io/proxy-memory-request`, `strait.io/proxy-memory-limit` | Kubernetes quantities |
//! | `strait.io/log-level` | `trace`, `debug`, `info`, `warn`, `error` |
//! | `strait.io/skip-inbound-ports`, `strait.io/skip-outbound-ports` | comma-separated ports 1..65535 |
//! | `strait.io/skip-outbound-cidrs` | comma-separated IPv4/IPv6 CIDRs (a bare address is one host) |
//! | `strait.io/native-sidecar` | `true` / `false` |
//!
//! # Pod Security Standards
//!
//! The `strait-proxy` sidecar satisfies the **restricted** profile: non-root UID
//! ([`InjectConfig::proxy_uid`]), `runAsNonRoot`, all capabilities dropped, no privilege
//! escalation, seccomp `RuntimeDefault`, read-only root filesystem. The `strait-init`
//! container deviates in exactly two ways, because programming iptables needs them: it
//! runs as root (UID 0) and adds `NET_ADMIN` and `NET_RAW`. Neither capability is on the
//! **baseline** profile's allow-list, so a meshed namespace that enforces Pod Security
//! must be `privileged` (or exempt these pods) until redirection moves to a CNI plugin.
#![forbid(unsafe_code)]

mod containers;
mod overrides;
mod quantity;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::Value;

/// Keys of the per-pod annotations (see the crate docs for their values).
pub mod annotation {
    pub const PROXY_IMAGE: &str = "strait.io/proxy-image";
    pub const PROXY_CPU_REQUEST: &str = "strait.io/proxy-cpu-request";
    pub const PROXY_MEMORY_REQUEST: &str = "strait.io/proxy-memory-request";
    pub const PROXY_MEMORY_LIMIT: &str = "strait.io/proxy-memory-limit";
    pub const LOG_LEVEL: &str = "strait.io/log-level";
    pub const SKIP_INBOUND_PORTS: &str = "strait.io/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "strait.io/skip-outbound-ports";
    pub const SKIP_OUTBOUND_CIDRS: &str = "strait.io/skip-outbound-cidrs";
    pub const NATIVE_SIDECAR: &str = "strait.io/native-sidecar";
}

/// The label / annotation that opts a namespace or pod in (`enabled`, matched by the
/// webhook's selectors) or a pod out (`disabled`, checked here).
pub const INJECT_KEY: &str = "strait.io/inject";
/// Pod annotation carrying the injection summary; its presence means "already injected".
pub const STATUS_ANNOTATION: &str = "strait.io/status";
/// Name of the injected sidecar container.
pub const PROXY_CONTAINER: &str = "strait-proxy";
/// Name of the injected init container that programs iptables.
pub const INIT_CONTAINER: &str = "strait-init";
/// Name of the proxy's only declared port (probe / metrics on the pod IP).
pub const PROBE_PORT_NAME: &str = "strait-probe";
/// kubectl's annotation for the container `logs`/`exec` use by default. Set in classic
/// mode, where the proxy becomes the first container and would otherwise be the default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Namespaces of Kubernetes itself: their pods (DNS, kube-proxy, CNI, …) are what the
/// mesh runs on, so meshing them would make the mesh depend on itself.
const KUBERNETES_SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// The version recorded in the status annotation: the injector that did the injection.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Resources of the proxy container, as Kubernetes quantity strings. `None` leaves that
/// request or limit unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    /// requests cpu 10m, memory 20Mi; limits memory 128Mi and no CPU limit: a CPU limit
    /// throttles the proxy under CFS quotas exactly when the app is busiest, adding tail
    /// latency to every call, while a memory limit bounds a leak to the sidecar.
    fn default() -> Self {
        Resources {
            cpu_request: Some("10m".into()),
            cpu_limit: None,
            memory_request: Some("20Mi".into()),
            memory_limit: Some("128Mi".into()),
        }
    }
}

/// Cluster-wide injection settings (the injector's flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of the `strait-proxy` sidecar.
    pub proxy_image: String,
    /// Image of the `strait-init` init container.
    pub init_image: String,
    /// UID the proxy runs as; `strait-init` exempts its traffic from redirection.
    pub proxy_uid: i64,
    /// Outbound listener (bound on 127.0.0.1, where iptables `REDIRECT` on OUTPUT
    /// delivers locally generated traffic).
    pub outbound_port: u16,
    /// Inbound listener (bound on 0.0.0.0: redirected inbound traffic keeps arriving on
    /// the pod's own address).
    pub inbound_port: u16,
    /// Admin listener, loopback only.
    pub admin_port: u16,
    /// `/ready`, `/live`, `/metrics` on the pod IP, for the kubelet and scrapers.
    pub probe_port: u16,
    /// Strait's own namespace, never injected (the injector must not depend on itself).
    pub system_namespace: String,
    /// The cluster supports native sidecars (init containers with `restartPolicy:
    /// Always`, Kubernetes ≥ 1.29 by default).
    pub native_sidecars: bool,
    /// Default proxy resources; per-pod annotations override them.
    pub proxy_resources: Resources,
    /// Default proxy log level (any tracing filter the proxy accepts).
    pub log_level: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        // The images default to this crate's version so an injector never injects a
        // proxy from another release unless told to.
        InjectConfig {
            proxy_image: format!("ghcr.io/strait-mesh/strait-proxy:{VERSION}"),
            init_image: format!("ghcr.io/strait-mesh/strait-init:{VERSION}"),
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            admin_port: 15000,
            probe_port: 15020,
            system_namespace: "strait-system".into(),
            native_sidecars: true,
            proxy_resources: Resources::default(),
            log_level: "info".into(),
        }
    }
}

impl InjectConfig {
    /// Checks the settings an injector would otherwise turn into broken pods: ports that
    /// are zero or shared, UID 0 for the proxy (`runAsNonRoot` would refuse it, and root's
    /// traffic would bypass redirection), empty images, malformed resource quantities.
    pub fn validate(&self) -> Result<(), InjectError> {
        let bad = |msg: String| Err(InjectError::InvalidConfig(msg));
        if self.proxy_uid <= 0 {
            return bad(format!("proxy UID must be a positive non-root UID, got {}", self.proxy_uid));
        }
        let ports = self.strait_ports();
        for (i, (port, what)) in ports.iter().enumerate() {
            if *port == 0 {
                return bad(format!("{what} port must not be 0"));
            }
            if let Some((_, other)) = ports[..i].iter().find(|(p, _)| p == port) {
                return bad(format!("{what} port {port} is also the {other} port"));
            }
        }
        for (image, what) in [(&self.proxy_image, "proxy image"), (&self.init_image, "init image")] {
            if !overrides::valid_image(image) {
                return bad(format!("{what} {image:?} is not an image reference"));
            }
        }
        if self.system_namespace.is_empty() {
            return bad("system namespace must not be empty".into());
        }
        if self.log_level.trim().is_empty() {
            return bad("log level must not be empty".into());
        }
        let r = &self.proxy_resources;
        for (q, what) in [
            (&r.cpu_request, "proxy CPU request"),
            (&r.cpu_limit, "proxy CPU limit"),
            (&r.memory_request, "proxy memory request"),
            (&r.memory_limit, "proxy memory limit"),
        ] {
            if let Some(q) = q
                && let Err(why) = quantity::parse(q)
            {
                return bad(format!("{what} {q:?}: {why}"));
            }
        }
        for (req, lim, what) in [(&r.cpu_request, &r.cpu_limit, "CPU"), (&r.memory_request, &r.memory_limit, "memory")]
        {
            if let (Some(req), Some(lim)) = (req, lim)
                && quantity::exceeds(req, lim)
            {
                return bad(format!("proxy {what} request {req} exceeds its limit {lim}"));
            }
        }
        Ok(())
    }

    /// Every port the proxy owns in the pod's network namespace, with what it is.
    pub fn strait_ports(&self) -> [(u16, &'static str); 4] {
        [
            (self.admin_port, "admin"),
            (self.outbound_port, "outbound"),
            (self.inbound_port, "inbound"),
            (self.probe_port, "probe"),
        ]
    }
}

/// How the proxy is run in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always`: started before the app's init
    /// containers, stopped after the app containers.
    Native,
    /// The first regular container, holding the app back with a `postStart` hook.
    Classic,
}

impl SidecarMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Classic => "classic",
        }
    }
}

/// The outcome for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Do not mesh the pod; `reason` is meant for humans (logs, CLI output).
    Skip {
        reason: String,
        /// For a skip the pod's owner would not expect (a Windows pod in a meshed
        /// namespace), a patch that records `reason` in the `strait.io/status`
        /// annotation (`{"version": …, "skipped": reason}`), so the pod itself says why
        /// it runs without a proxy. `None` for skips the user asked for or that are
        /// obvious (opt-out, system namespaces, already injected, hostNetwork): the pod
        /// is left exactly as it is.
        record: Option<Patch>,
    },
    Inject(Injection),
}

/// What injecting a pod takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    /// RFC 6902 patch against the pod's JSON (as the API server sends it to webhooks).
    pub patch: Patch,
    /// Problems worth telling the user about (admission warnings); none blocks injection.
    pub warnings: Vec<String>,
    /// The value of the `strait.io/status` annotation, as JSON: `version`, `mode`,
    /// `proxyImage`, `initImage`, `inboundSkip`, `outboundSkip`, `outboundCidrSkip`, and
    /// `addedAnnotations` (the annotations other than this one that the injection added).
    pub summary: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("invalid injector configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot convert the pod or a container to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("the injection patch does not apply to the pod: {0}")]
    Patch(#[from] json_patch::PatchError),
    #[error("the patched pod is not a valid Pod: {0}")]
    Deserialize(#[source] serde_json::Error),
}

/// Why `pod` (created in `namespace`) must not be injected, or `None` when it may be.
///
/// `namespace` is passed explicitly because an admission request's pod often has no
/// `metadata.namespace` yet (it comes from the request path).
pub fn skip_reason(pod: &Pod, namespace: &str, cfg: &InjectConfig) -> Option<String> {
    skip(pod, namespace, cfg).map(|s| s.reason)
}

/// Why a pod is skipped, and whether the reason is recorded on the pod.
struct Skip {
    reason: String,
    record: bool,
}

impl Skip {
    fn quiet(reason: String) -> Option<Skip> {
        Some(Skip { reason, record: false })
    }
}

/// The node label (and `spec.os.name` value) that marks Windows.
const OS_LABEL: &str = "kubernetes.io/os";

/// Why the pod can only run on Windows nodes, if it can.
///
/// * `spec.os.name: windows` — the API server then forbids, on every container,
///   exactly what meshing needs: `runAsUser`/`runAsGroup`, capabilities, seccomp,
///   `readOnlyRootFilesystem`, `privileged`, `allowPrivilegeEscalation`; an injected
///   pod would be rejected outright.
/// * a `nodeSelector` of `kubernetes.io/os: windows`, or a required node affinity
///   every term of which admits only `kubernetes.io/os` In `[windows]` — the API
///   server would accept the injected pod, but it could only be scheduled on Windows
///   nodes, where the Linux `strait-init` (iptables) and `strait-proxy` images cannot
///   run: the pod would never start.
///
/// Either way the proxy cannot serve the pod, so it is skipped rather than broken.
fn windows_only(spec: &PodSpec) -> Option<String> {
    const WHY: &str = "the proxy and its iptables redirection run only on Linux";
    if spec.os.as_ref().is_some_and(|os| os.name.eq_ignore_ascii_case("windows")) {
        return Some(format!(
            "the pod runs on Windows (spec.os.name: windows): {WHY}, and the API server forbids the \
             injected containers' Linux security settings (runAsUser, capabilities, seccomp, \
             readOnlyRootFilesystem) in Windows pods"
        ));
    }
    if spec.node_selector.as_ref().and_then(|s| s.get(OS_LABEL)).is_some_and(|v| v.eq_ignore_ascii_case("windows")) {
        return Some(format!("the pod selects Windows nodes (nodeSelector {OS_LABEL}: windows): {WHY}"));
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    // Terms are ORed: the pod is Windows-only when every term pins the OS to Windows.
    let windows_term = |t: &k8s_openapi::api::core::v1::NodeSelectorTerm| {
        t.match_expressions.iter().flatten().any(|e| {
            e.key == OS_LABEL
                && e.operator == "In"
                && e.values
                    .as_ref()
                    .is_some_and(|v| !v.is_empty() && v.iter().all(|v| v.eq_ignore_ascii_case("windows")))
        })
    };
    if !terms.is_empty() && terms.iter().all(windows_term) {
        return Some(format!(
            "the pod's required node affinity admits only Windows nodes ({OS_LABEL} In [windows]): {WHY}"
        ));
    }
    None
}

fn skip(pod: &Pod, namespace: &str, cfg: &InjectConfig) -> Option<Skip> {
    if KUBERNETES_SYSTEM_NAMESPACES.contains(&namespace) {
        return Skip::quiet(format!("namespace {namespace} is a Kubernetes system namespace"));
    }
    if namespace == cfg.system_namespace {
        return Skip::quiet(format!("namespace {namespace} is Strait's own namespace"));
    }
    let meta = &pod.metadata;
    for (map, what) in [(&meta.labels, "label"), (&meta.annotations, "annotation")] {
        if map.as_ref().and_then(|m| m.get(INJECT_KEY)).map(String::as_str) == Some("disabled") {
            return Skip::quiet(format!("the pod opted out with {what} {INJECT_KEY}=disabled"));
        }
    }
    if let Some(status) = meta.annotations.as_ref().and_then(|a| a.get(STATUS_ANNOTATION)) {
        // A skip recorded earlier (e.g. by a reinvocation of the webhook) stays a skip.
        let recorded = serde_json::from_str::<Value>(status).ok();
        if let Some(why) = recorded.as_ref().and_then(|v| v.get("skipped")).and_then(Value::as_str) {
            return Skip::quiet(format!("already skipped: annotation {STATUS_ANNOTATION} records {why:?}"));
        }
        return Skip::quiet(format!("already injected: annotation {STATUS_ANNOTATION} is present"));
    }
    let Some(spec) = &pod.spec else {
        return Skip::quiet("the pod has no spec".into());
    };
    if let Some(reason) = windows_only(spec) {
        return Some(Skip { reason, record: true });
    }
    if spec.host_network == Some(true) {
        // Redirection rules would be installed in the node's network namespace and
        // capture every process on the node.
        return Skip::quiet("the pod uses hostNetwork: redirecting its traffic would capture the node's".into());
    }
    // Either name already present means a previous injection (or a hand-made copy of
    // one); adding another would give the pod duplicate container names.
    app_containers(spec)
        .find(|(c, _)| c.name == PROXY_CONTAINER || c.name == INIT_CONTAINER)
        .map(|(c, what)| Skip { reason: format!("already injected: the pod has {what} {}", c.name), record: false })
}

/// The pod's own containers, init containers first, with what each one is.
fn app_containers(spec: &PodSpec) -> impl Iterator<Item = (&Container, &'static str)> {
    let init = spec.init_containers.iter().flatten().map(|c| (c, "init container"));
    init.chain(spec.containers.iter().map(|c| (c, "container")))
}

/// Decides, and builds the patch when the pod is to be injected.
pub fn mutate(pod: &Pod, namespace: &str, cfg: &InjectConfig) -> Result<Decision, InjectError> {
    cfg.validate()?;
    if let Some(Skip { reason, record }) = skip(pod, namespace, cfg) {
        let record = if record {
            let status = serde_json::json!({"version": VERSION, "skipped": reason});
            let annotations = BTreeMap::from([(STATUS_ANNOTATION.to_string(), status.to_string())]);
            Some(Patch(annotation_ops(pod, annotations)?))
        } else {
            None
        };
        return Ok(Decision::Skip { reason, record });
    }
    let Some(spec) = &pod.spec else {
        // skip() already refused spec-less pods; this keeps the code unwrap-free.
        return Ok(Decision::Skip { reason: "the pod has no spec".into(), record: None });
    };
    let mut plan = overrides::resolve(pod, cfg);
    plan.warnings.extend(pod_warnings(pod, spec, cfg, &plan));

    let init = serde_json::to_value(containers::init_container(cfg, &plan)).map_err(InjectError::Serialize)?;
    let proxy = serde_json::to_value(containers::proxy_container(cfg, &plan)).map_err(InjectError::Serialize)?;
    let mut ops = Vec::new();

    let mut front = vec![init];
    if plan.mode == SidecarMode::Native {
        front.push(proxy.clone());
    }
    if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
        // No array to insert into (absent, null or empty): "add" sets the whole member,
        // replacing a null or empty one.
        ops.push(add(&["spec", "initContainers"], Value::Array(front)));
    } else {
        for (i, c) in front.into_iter().enumerate() {
            let index = i.to_string();
            ops.push(add(&["spec", "initContainers", &index], c));
        }
    }
    if plan.mode == SidecarMode::Classic {
        // First, so the kubelet starts it (and runs its postStart hook to completion)
        // before any app container: containers start in order.
        ops.push(add(&["spec", "containers", "0"], proxy));
    }

    let mut new_annotations = BTreeMap::new();
    let has_annotation = |k: &str| pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(k));
    if plan.mode == SidecarMode::Classic
        && !has_annotation(DEFAULT_CONTAINER_ANNOTATION)
        && let Some(first) = spec.containers.first()
    {
        new_annotations.insert(DEFAULT_CONTAINER_ANNOTATION.to_string(), first.name.clone());
    }
    // Recorded so `straitctl uninject` removes only what the injection added: a
    // default-container annotation the user had set must survive uninjection.
    let added: Vec<&String> = new_annotations.keys().collect();
    let mut summary = summary(cfg, &plan);
    summary["addedAnnotations"] = serde_json::json!(added);
    new_annotations.insert(STATUS_ANNOTATION.to_string(), summary.to_string());
    ops.extend(annotation_ops(pod, new_annotations)?);

    Ok(Decision::Inject(Injection { patch: Patch(ops), warnings: plan.warnings, summary }))
}

/// Patch operations that add `annotations` to the pod's.
fn annotation_ops(pod: &Pod, annotations: BTreeMap<String, String>) -> Result<Vec<PatchOperation>, InjectError> {
    if pod.metadata.annotations.is_none() {
        let all = serde_json::to_value(&annotations).map_err(InjectError::Serialize)?;
        return Ok(vec![add(&["metadata", "annotations"], all)]);
    }
    // The pointer escapes the "/" of "strait.io/status" as "~1".
    Ok(annotations.into_iter().map(|(k, v)| add(&["metadata", "annotations", &k], Value::String(v))).collect())
}

/// [`mutate`], then applies the patch to `pod`. On error `pod` is left unchanged.
/// Returns the decision (with the warnings) so callers can report skips too.
pub fn inject_into(pod: &mut Pod, namespace: &str, cfg: &InjectConfig) -> Result<Decision, InjectError> {
    let decision = mutate(pod, namespace, cfg)?;
    let patch = match &decision {
        Decision::Inject(injection) => Some(&injection.patch),
        Decision::Skip { record, .. } => record.as_ref(),
    };
    if let Some(patch) = patch {
        let mut doc = serde_json::to_value(&*pod).map_err(InjectError::Serialize)?;
        json_patch::patch(&mut doc, patch)?;
        *pod = serde_json::from_value(doc).map_err(InjectError::Deserialize)?;
    }
    Ok(decision)
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(path.iter().copied()), value })
}

fn summary(cfg: &InjectConfig, plan: &overrides::Plan) -> Value {
    serde_json::json!({
        "version": VERSION,
        "mode": plan.mode.as_str(),
        "proxyImage": plan.proxy_image,
        "initImage": cfg.init_image,
        "inboundSkip": plan.inbound_skip,
        "outboundSkip": plan.outbound_skip,
        "outboundCidrSkip": plan.outbound_cidrs,
    })
}

/// Warnings about the pod itself (the annotations' warnings come from `overrides`).
fn pod_warnings(pod: &Pod, spec: &PodSpec, cfg: &InjectConfig, plan: &overrides::Plan) -> Vec<String> {
    let mut w = Vec::new();
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    for (c, what) in app_containers(spec) {
        let own = c.security_context.as_ref().and_then(|s| s.run_as_user);
        if own.or(pod_uid) == Some(cfg.proxy_uid) {
            let source = if own.is_some() { "" } else { " (from the pod securityContext)" };
            w.push(format!(
                "{what} {} runs as UID {}{source}, the proxy's UID: its traffic would bypass the proxy",
                c.name, cfg.proxy_uid
            ));
        }
        for p in c.ports.iter().flatten() {
            let port = u16::try_from(p.container_port).ok();
            if let Some((port, role)) = cfg.strait_ports().into_iter().find(|(sp, _)| Some(*sp) == port) {
                w.push(format!(
                    "{what} {} declares port {port}, which the proxy uses ({role}): the two would clash",
                    c.name
                ));
            }
            if p.name.as_deref() == Some(PROBE_PORT_NAME) {
                w.push(format!(
                    "{what} {} declares a port named {PROBE_PORT_NAME}, the name of the proxy's probe port",
                    c.name
                ));
            }
        }
    }
    if plan.mode == SidecarMode::Classic {
        if let Some(first) = spec.init_containers.iter().flatten().next() {
            // In classic mode the proxy starts after every init container, but strait-init
            // has already redirected the traffic: app init containers reach nothing.
            w.push(format!(
                "classic sidecar mode: init container {} runs before the proxy starts, so its network \
                 traffic goes to a proxy that is not there yet (skip its ports/CIDRs, or use native sidecars)",
                first.name
            ));
        }
        if matches!(spec.restart_policy.as_deref(), Some("Never" | "OnFailure")) {
            w.push(
                "classic sidecar mode: the proxy does not exit when the app does, so a pod with \
                 restartPolicy Never/OnFailure (a Job) never completes; use native sidecars"
                    .into(),
            );
        }
    }
    if spec.automount_service_account_token == Some(false) {
        w.push(
            "automountServiceAccountToken is false: the proxy reads Services and GRPCRoutes with the \
             pod's ServiceAccount token and cannot become ready without it"
                .into(),
        );
    }
    let meta = &pod.metadata;
    for (map, what) in [(&meta.labels, "label"), (&meta.annotations, "annotation")] {
        if let Some(v) = map.as_ref().and_then(|m| m.get(INJECT_KEY))
            && v != "enabled"
            && v != "disabled"
        {
            w.push(format!(
                "{what} {INJECT_KEY}={v:?} is neither \"enabled\" nor \"disabled\"; it does not opt the pod out"
            ));
        }
    }
    w
}
