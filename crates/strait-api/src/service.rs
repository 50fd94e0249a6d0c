//! The parts of a Service the mesh reads, kept instead of the whole object.
//!
//! A sidecar holds every Service of the cluster (any of them may be called). A
//! k8s-openapi `Service` is ~1.5 KiB even when stripped (ObjectMeta and ServiceSpec are
//! wide structs of options); at 10,000 Services those objects alone were a third of the
//! sidecar's memory. This is what routing needs: identity, ClusterIPs, port numbers and
//! names.
use k8s_openapi::api::core::v1::Service;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshService {
    pub namespace: String,
    pub name: String,
    /// Parsed ClusterIPs (`clusterIPs`, else `clusterIP`); empty for headless Services
    /// (`None`) and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<MeshServicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshServicePort {
    /// `None` when the port is unnamed (a Service with one port may leave it unnamed).
    pub name: Option<String>,
    pub port: u16,
}

impl MeshService {
    /// Reads a Service; `None` without a name (the API server never sends one).
    pub fn from_service(svc: &Service) -> Option<MeshService> {
        let name = svc.metadata.name.clone().filter(|n| !n.is_empty())?;
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let spec = svc.spec.as_ref();
        let mut raw: Vec<&String> = spec.and_then(|s| s.cluster_ips.as_ref()).into_iter().flatten().collect();
        if raw.is_empty() {
            raw.extend(spec.and_then(|s| s.cluster_ip.as_ref()));
        }
        // Collected filters start at capacity 4; every Service is kept, so shrink.
        let mut cluster_ips: Vec<IpAddr> = raw.iter().filter_map(|s| s.parse().ok()).collect();
        cluster_ips.shrink_to_fit();
        let mut ports: Vec<MeshServicePort> = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(MeshServicePort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    // Out-of-range numbers cannot come from a valid object; such a port is
                    // not routable rather than an error for the whole Service.
                    port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                })
            })
            .collect();
        ports.shrink_to_fit();
        Some(MeshService { namespace, name, cluster_ips, ports })
    }

    /// [`MeshService::from_service`] in the `fn(Service) -> Option<_>` shape the watch
    /// ingest (`strait_kube::run_watch`) takes as its converter.
    pub fn from_owned(svc: Service) -> Option<MeshService> {
        MeshService::from_service(&svc)
    }

    pub fn port(&self, port: u16) -> Option<&MeshServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    #[test]
    fn keeps_identity_ips_and_ports() {
        let s = MeshService::from_service(&service(serde_json::json!({
            "metadata": {"name": "a", "namespace": "n", "annotations": {"big": "x"}},
            "spec": {"ports": [{"name": "grpc", "port": 80, "targetPort": "grpc"}, {"name": "", "port": 81}],
                     "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"], "selector": {"app": "a"}},
        })))
        .expect("kept");
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("n", "a"));
        assert_eq!(s.cluster_ips, vec!["10.96.0.1".parse::<IpAddr>().unwrap(), "fd00::1".parse().unwrap()]);
        assert_eq!(
            s.ports,
            vec![MeshServicePort { name: Some("grpc".into()), port: 80 }, MeshServicePort { name: None, port: 81 }]
        );
        assert_eq!(s.port(81).map(|p| p.name.is_none()), Some(true));
    }

    #[test]
    fn headless_single_ip_and_bad_ports() {
        let headless = MeshService::from_service(&service(serde_json::json!({
            "metadata": {"name": "h", "namespace": "n"}, "spec": {"clusterIP": "None", "ports": [{"port": 70000}]},
        })))
        .expect("kept");
        assert!(headless.cluster_ips.is_empty() && headless.ports.is_empty());
        let single = MeshService::from_service(&service(serde_json::json!({
            "metadata": {"name": "s"}, "spec": {"clusterIP": "10.0.0.9"},
        })))
        .expect("kept");
        assert_eq!(single.cluster_ips.len(), 1);
        assert_eq!(single.namespace, "");
        assert!(MeshService::from_service(&service(serde_json::json!({"metadata": {}}))).is_none());
    }
}
