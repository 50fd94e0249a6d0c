//! The two injected containers, as typed k8s-openapi values (so a misspelt field is a
//! compile error rather than a field the API server silently drops).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::overrides::Plan;
use crate::{INIT_CONTAINER, InjectConfig, PROBE_PORT_NAME, PROXY_CONTAINER, Resources, SidecarMode};

/// `strait-init` only runs iptables-restore once; it needs little and briefly.
fn init_resources() -> Resources {
    Resources {
        cpu_request: Some("10m".into()),
        cpu_limit: None,
        memory_request: Some("10Mi".into()),
        memory_limit: Some("50Mi".into()),
    }
}

pub(crate) fn init_container(cfg: &InjectConfig, plan: &Plan) -> Container {
    let mut args = vec![
        "--proxy-uid".to_string(),
        cfg.proxy_uid.to_string(),
        "--inbound-port".into(),
        cfg.inbound_port.to_string(),
        "--outbound-port".into(),
        cfg.outbound_port.to_string(),
    ];
    let lists = [
        ("--skip-inbound-ports", join(&plan.inbound_skip)),
        ("--skip-outbound-ports", join(&plan.outbound_skip)),
        ("--skip-outbound-cidrs", join(&plan.outbound_cidrs)),
    ];
    for (flag, list) in lists {
        // An empty list is omitted rather than passed as "" so strait-init never has to
        // tell "nothing skipped" from a malformed empty value.
        if !list.is_empty() {
            args.push(flag.into());
            args.push(list);
        }
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.init_image.clone()),
        command: Some(vec!["strait-init".into()]),
        args: Some(args),
        resources: Some(requirements(&init_resources())),
        // The only deviation from the restricted profile in the pod: iptables needs root
        // and NET_ADMIN (rules) + NET_RAW (iptables' raw sockets); everything else that
        // can be dropped is dropped, and runAsNonRoot is set explicitly to false so a
        // pod-level `runAsNonRoot: true` does not make the kubelet refuse to start it.
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn proxy_container(cfg: &InjectConfig, plan: &Plan) -> Container {
    let env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        field_env("STRAIT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        // Every listener on both families (strait-init redirects IPv6 too when the pod
        // has it; the proxy skips the IPv6 socket, with a warning, when it has not).
        // Outbound on loopback: iptables REDIRECT on OUTPUT rewrites the destination of
        // locally generated traffic to 127.0.0.1 (ip6tables: ::1), so nothing outside
        // the pod can reach it.
        value_env("STRAIT_OUTBOUND_ADDR", dual_stack("127.0.0.1", "[::1]", cfg.outbound_port)),
        // Inbound on all addresses: PREROUTING REDIRECT rewrites the destination to the
        // receiving interface's address (the pod IP), not to loopback.
        value_env("STRAIT_INBOUND_ADDR", dual_stack("0.0.0.0", "[::]", cfg.inbound_port)),
        value_env("STRAIT_ADMIN_ADDR", format!("127.0.0.1:{}", cfg.admin_port)),
        // The kubelet probes the pod IP (IPv6 in an IPv6-primary pod), so the probe
        // listener cannot be loopback-only.
        value_env("STRAIT_PROBE_ADDR", dual_stack("0.0.0.0", "[::]", cfg.probe_port)),
        value_env("STRAIT_LOG_LEVEL", plan.log_level.clone()),
        value_env("STRAIT_PROXY_UID", cfg.proxy_uid.to_string()),
        // strait-init redirects the pod's traffic; the proxy reads original destinations.
        value_env("STRAIT_TRANSPARENT", "true".to_owned()),
    ];
    let probe = |path: &str, period: i32, failure_threshold: Option<i32>| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(cfg.probe_port)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold,
        ..Default::default()
    };
    let (restart_policy, lifecycle) = match plan.mode {
        // A native sidecar's startupProbe already gates the next init container (and so
        // the app), and the kubelet stops it only after the app containers have exited:
        // neither a postStart gate nor a preStop delay is needed.
        SidecarMode::Native => (Some("Always".to_string()), None),
        // Classic: the kubelet starts containers in order and waits for each postStart
        // hook before starting the next, so blocking here until the proxy is ready holds
        // the app back (Istio's holdApplicationUntilProxyStarts). No preStop: on SIGTERM
        // the proxy itself drains in-flight calls (--drain-timeout, 10 s) within the pod's
        // terminationGracePeriodSeconds, and a preStop `sleep` would need a shell the
        // distroless image does not have.
        SidecarMode::Classic => (
            None,
            Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(
                            [
                                "strait-proxy",
                                "wait-ready",
                                "--admin-addr",
                                &format!("127.0.0.1:{}", cfg.admin_port),
                                "--timeout",
                                "60s",
                            ]
                            .map(String::from)
                            .to_vec(),
                        ),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(plan.proxy_image.clone()),
        args: Some(vec!["--log-level".into(), plan.log_level.clone()]),
        env: Some(env),
        // Only the probe port is declared: outbound/admin are loopback-only and inbound
        // is reached through redirection, never addressed directly.
        ports: Some(vec![ContainerPort {
            name: Some(PROBE_PORT_NAME.into()),
            container_port: i32::from(cfg.probe_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // 60 × 1 s: the proxy is ready only after its initial lists from the API server,
        // which can take a while on a busy cluster; the liveness probe waits for this.
        startup_probe: Some(probe("/ready", 1, Some(60))),
        readiness_probe: Some(probe("/ready", 2, None)),
        liveness_probe: Some(probe("/live", 10, None)),
        resources: Some(requirements(&plan.resources)),
        restart_policy,
        lifecycle,
        // Restricted Pod Security profile. The UID is also what strait-init exempts from
        // redirection, so the proxy's own upstream connections are not looped back to it.
        security_context: Some(SecurityContext {
            run_as_user: Some(cfg.proxy_uid),
            run_as_group: Some(cfg.proxy_uid),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { add: None, drop: Some(vec!["ALL".into()]) }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `v4:port,v6:port`: the proxy binds one socket per address.
fn dual_stack(v4: &str, v6: &str, port: u16) -> String {
    format!("{v4}:{port},{v6}:{port}")
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }
}

fn value_env(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value), value_from: None }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { api_version: Some("v1".into()), field_path: field_path.into() }),
            ..Default::default()
        }),
    }
}

fn requirements(r: &Resources) -> ResourceRequirements {
    let map = |cpu: &Option<String>, memory: &Option<String>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Quantity(v.clone()))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements {
        requests: map(&r.cpu_request, &r.memory_request),
        limits: map(&r.cpu_limit, &r.memory_limit),
        ..Default::default()
    }
}
