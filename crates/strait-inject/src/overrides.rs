//! Per-pod settings: the cluster defaults with the pod's `strait.io/*` annotations
//! applied. Every invalid annotation becomes one warning and leaves its default in place.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use crate::{InjectConfig, Resources, SidecarMode, annotation, quantity};

/// Levels the annotation accepts. Narrower than the proxy's `--log-level` (any tracing
/// filter) on purpose: a pod author picks a verbosity, the operator owns filter syntax.
const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Everything the containers and the summary are built from.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub mode: SidecarMode,
    pub proxy_image: String,
    pub log_level: String,
    pub resources: Resources,
    /// Admin and probe ports first, then the annotation's, without duplicates.
    pub inbound_skip: Vec<u16>,
    pub outbound_skip: Vec<u16>,
    pub outbound_cidrs: Vec<String>,
    pub warnings: Vec<String>,
}

pub(crate) fn resolve(pod: &Pod, cfg: &InjectConfig) -> Plan {
    let annotations = pod.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let mut warnings = Vec::new();
    let mut invalid = |key: &str, value: &str, why: &str, default: &str| {
        warnings.push(format!("ignoring annotation {key}={value:?}: {why}; using the default ({default})"));
    };

    let mut mode = if cfg.native_sidecars { SidecarMode::Native } else { SidecarMode::Classic };
    if let Some(v) = get(annotation::NATIVE_SIDECAR) {
        match v {
            "true" if cfg.native_sidecars => mode = SidecarMode::Native,
            // The flag states a fact about the cluster: an API server without native
            // sidecars drops restartPolicy, and the proxy would become an init container
            // that never exits — the pod would never start.
            "true" => invalid(
                annotation::NATIVE_SIDECAR,
                v,
                "the injector is configured for a cluster without native sidecars",
                "classic",
            ),
            "false" => mode = SidecarMode::Classic,
            _ => invalid(annotation::NATIVE_SIDECAR, v, "expected true or false", mode.as_str()),
        }
    }

    let mut proxy_image = cfg.proxy_image.clone();
    if let Some(v) = get(annotation::PROXY_IMAGE) {
        if valid_image(v) {
            proxy_image = v.to_string();
        } else {
            invalid(annotation::PROXY_IMAGE, v, "not an image reference", &cfg.proxy_image);
        }
    }

    let mut log_level = cfg.log_level.clone();
    if let Some(v) = get(annotation::LOG_LEVEL) {
        if LOG_LEVELS.contains(&v) {
            log_level = v.to_string();
        } else {
            invalid(annotation::LOG_LEVEL, v, "expected one of trace, debug, info, warn, error", &cfg.log_level);
        }
    }

    let mut resources = cfg.proxy_resources.clone();
    for (key, slot) in [
        (annotation::PROXY_CPU_REQUEST, &mut resources.cpu_request),
        (annotation::PROXY_MEMORY_REQUEST, &mut resources.memory_request),
        (annotation::PROXY_MEMORY_LIMIT, &mut resources.memory_limit),
    ] {
        if let Some(v) = get(key) {
            match quantity::parse(v) {
                Ok(_) => *slot = Some(v.to_string()),
                Err(why) => invalid(key, v, why, slot.as_deref().unwrap_or("unset")),
            }
        }
    }
    // The API server rejects a container whose request exceeds its limit; raising the
    // limit to the request honours what the pod author asked for explicitly (a request)
    // and keeps the pod admissible.
    for (req, lim, what) in [
        (&resources.cpu_request, &mut resources.cpu_limit, "CPU"),
        (&resources.memory_request, &mut resources.memory_limit, "memory"),
    ] {
        if let (Some(r), Some(l)) = (req, lim.as_ref())
            && quantity::exceeds(r, l)
        {
            warnings.push(format!("proxy {what} request {r} exceeds its limit {l}; the limit is raised to {r}"));
            *lim = Some(r.clone());
        }
    }

    let mut inbound_skip = Vec::new();
    push_unique(&mut inbound_skip, [cfg.admin_port, cfg.probe_port]);
    let mut outbound_skip = Vec::new();
    let mut outbound_cidrs = Vec::new();
    let mut warn_list = |key: &str, value: &str, why: String| {
        warnings.push(format!("ignoring annotation {key}={value:?}: {why}; no extra ports or CIDRs are skipped"));
    };
    if let Some(v) = get(annotation::SKIP_INBOUND_PORTS) {
        match parse_ports(v) {
            Ok(ports) => push_unique(&mut inbound_skip, ports),
            Err(why) => warn_list(annotation::SKIP_INBOUND_PORTS, v, why),
        }
    }
    if let Some(v) = get(annotation::SKIP_OUTBOUND_PORTS) {
        match parse_ports(v) {
            Ok(ports) => push_unique(&mut outbound_skip, ports),
            Err(why) => warn_list(annotation::SKIP_OUTBOUND_PORTS, v, why),
        }
    }
    if let Some(v) = get(annotation::SKIP_OUTBOUND_CIDRS) {
        match parse_cidrs(v) {
            Ok(cidrs) => push_unique(&mut outbound_cidrs, cidrs),
            Err(why) => warn_list(annotation::SKIP_OUTBOUND_CIDRS, v, why),
        }
    }

    Plan { mode, proxy_image, log_level, resources, inbound_skip, outbound_skip, outbound_cidrs, warnings }
}

/// A deliberately loose check: the kubelet is the authority on references; this only
/// catches what can never be one (empty, whitespace, control characters), since such a
/// value would fail only later, as an ImagePullBackOff.
pub(crate) fn valid_image(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn push_unique<T: PartialEq>(into: &mut Vec<T>, items: impl IntoIterator<Item = T>) {
    for item in items {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// Splits a comma-separated list; an empty (or all-blank) value is an empty list, but an
/// empty entry inside a list ("80,,90") is an error, as it is likely a typo.
fn entries(v: &str) -> Vec<&str> {
    if v.trim().is_empty() { Vec::new() } else { v.split(',').map(str::trim).collect() }
}

/// All or nothing: a partly applied list would be harder to notice than a warning.
pub(crate) fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
    entries(v)
        .into_iter()
        .map(|e| match e.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(format!("{e:?} is not a port in 1..65535")),
        })
        .collect()
}

/// Each entry is `address/prefix` (IPv4 prefix ≤ 32, IPv6 ≤ 128) or a bare address (one
/// host). Entries are kept as written; `strait-init` hands them to iptables/ip6tables.
pub(crate) fn parse_cidrs(v: &str) -> Result<Vec<String>, String> {
    entries(v)
        .into_iter()
        .map(|e| {
            let (addr, prefix) = match e.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (e, None),
            };
            let bad = || format!("{e:?} is not an IPv4 or IPv6 CIDR");
            let ip: IpAddr = addr.parse().map_err(|_| bad())?;
            if let Some(p) = prefix {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                // `u8::from_str` accepts a leading '+', which is no CIDR syntax.
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                match p.parse::<u8>() {
                    Ok(n) if n <= max => {}
                    _ => return Err(bad()),
                }
            }
            Ok(e.to_string())
        })
        .collect()
}
