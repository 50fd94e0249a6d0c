use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::*;

/// A pod as a user would write it: one app container, nothing else.
fn base() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app-1"},
        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]}
    })
}

/// `base()` with an RFC 7396 merge patch applied (objects merge, arrays replace).
fn pod_with(merge: Value) -> Pod {
    let mut v = base();
    json_patch::merge(&mut v, &merge);
    serde_json::from_value(v).expect("fixture is a valid Pod")
}

fn annotated(pairs: &[(&str, &str)]) -> Pod {
    let map: serde_json::Map<String, Value> =
        pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
    pod_with(json!({"metadata": {"annotations": map}}))
}

fn classic() -> InjectConfig {
    InjectConfig { native_sidecars: false, ..InjectConfig::default() }
}

fn injection(pod: &Pod, cfg: &InjectConfig) -> Injection {
    match mutate(pod, "app", cfg).expect("mutate") {
        Decision::Inject(i) => i,
        Decision::Skip { reason, .. } => panic!("unexpected skip: {reason}"),
    }
}

fn injected(pod: &Pod, cfg: &InjectConfig) -> (Pod, Vec<String>) {
    let mut p = pod.clone();
    match inject_into(&mut p, "app", cfg).expect("inject_into") {
        Decision::Inject(i) => (p, i.warnings),
        Decision::Skip { reason, .. } => panic!("unexpected skip: {reason}"),
    }
}

fn names(list: Option<&Vec<Container>>) -> Vec<&str> {
    list.into_iter().flatten().map(|c| c.name.as_str()).collect()
}

fn spec(pod: &Pod) -> &k8s_openapi::api::core::v1::PodSpec {
    pod.spec.as_ref().expect("spec")
}

fn proxy(pod: &Pod) -> &Container {
    let s = spec(pod);
    s.init_containers.iter().flatten().chain(&s.containers).find(|c| c.name == PROXY_CONTAINER).expect("proxy")
}

fn init(pod: &Pod) -> &Container {
    spec(pod).init_containers.iter().flatten().find(|c| c.name == INIT_CONTAINER).expect("init")
}

fn status(pod: &Pod) -> Value {
    let raw = pod.metadata.annotations.as_ref().and_then(|a| a.get(STATUS_ANNOTATION)).expect("status annotation");
    serde_json::from_str(raw).expect("status is JSON")
}

#[test]
fn skip_reasons() {
    let cases: &[(&str, Value, &str, &str)] = &[
        ("kube-system", json!({}), "kube-system", "Kubernetes system namespace"),
        ("kube-public", json!({}), "kube-public", "Kubernetes system namespace"),
        ("kube-node-lease", json!({}), "kube-node-lease", "Kubernetes system namespace"),
        ("strait-system", json!({}), "strait-system", "Strait's own namespace"),
        (
            "label disabled",
            json!({"metadata": {"labels": {"strait.io/inject": "disabled"}}}),
            "app",
            "opted out with label strait.io/inject=disabled",
        ),
        (
            "annotation disabled",
            json!({"metadata": {"annotations": {"strait.io/inject": "disabled"}}}),
            "app",
            "opted out with annotation strait.io/inject=disabled",
        ),
        ("hostNetwork", json!({"spec": {"hostNetwork": true}}), "app", "hostNetwork"),
        (
            "status annotation",
            json!({"metadata": {"annotations": {"strait.io/status": "{}"}}}),
            "app",
            "annotation strait.io/status is present",
        ),
        (
            "proxy container",
            json!({"spec": {"containers": [{"name": "app"}, {"name": "strait-proxy"}]}}),
            "app",
            "the pod has container strait-proxy",
        ),
        (
            "proxy init container",
            json!({"spec": {"initContainers": [{"name": "strait-proxy"}]}}),
            "app",
            "the pod has init container strait-proxy",
        ),
        (
            "init init container",
            json!({"spec": {"initContainers": [{"name": "strait-init"}]}}),
            "app",
            "the pod has init container strait-init",
        ),
        ("no spec", json!({"spec": null}), "app", "no spec"),
    ];
    for (case, merge, ns, want) in cases {
        let pod = pod_with(merge.clone());
        let reason = skip_reason(&pod, ns, &InjectConfig::default()).unwrap_or_else(|| panic!("{case}: not skipped"));
        assert!(reason.contains(want), "{case}: {reason:?} lacks {want:?}");
        for cfg in [InjectConfig::default(), classic()] {
            match mutate(&pod, ns, &cfg).expect("mutate") {
                Decision::Skip { reason: r, record } => {
                    assert_eq!(r, reason, "{case}");
                    assert_eq!(record, None, "{case}: a skip the user asked for leaves no trace");
                }
                Decision::Inject(_) => panic!("{case}: injected"),
            }
            let mut copy = pod.clone();
            inject_into(&mut copy, ns, &cfg).expect("inject_into");
            assert_eq!(copy, pod, "{case}: a skipped pod is left unchanged");
        }
    }
    // The system namespace comes from the config.
    let cfg = InjectConfig { system_namespace: "mesh".into(), ..InjectConfig::default() };
    assert!(skip_reason(&pod_with(json!({})), "mesh", &cfg).is_some());
    assert!(skip_reason(&pod_with(json!({})), "strait-system", &cfg).is_none());
}

/// A Windows pod cannot be meshed (Linux-only proxy and iptables; the API server
/// forbids the injected Linux security settings when `spec.os.name` is windows), so
/// it is admitted unmeshed, with the reason recorded in the status annotation.
#[test]
fn windows_pods_are_skipped_with_the_reason_recorded() {
    let cases: &[(&str, Value, &str)] = &[
        ("spec.os.name", json!({"spec": {"os": {"name": "windows"}}}), "spec.os.name: windows"),
        (
            "nodeSelector",
            json!({"spec": {"nodeSelector": {"kubernetes.io/os": "windows", "pool": "win"}}}),
            "nodeSelector kubernetes.io/os: windows",
        ),
        (
            "required node affinity",
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]},
                {"matchExpressions": [
                    {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]},
                    {"key": "zone", "operator": "In", "values": ["a"]},
                ]},
            ]}}}}}),
            "admits only Windows nodes",
        ),
        // With annotations already present the status is added as one more key.
        (
            "spec.os.name, annotated",
            json!({"metadata": {"annotations": {"team": "x"}}, "spec": {"os": {"name": "windows"}}}),
            "spec.os.name: windows",
        ),
    ];
    for (case, merge, want) in cases {
        let pod = pod_with(merge.clone());
        for cfg in [InjectConfig::default(), classic()] {
            let reason = skip_reason(&pod, "app", &cfg).unwrap_or_else(|| panic!("{case}: not skipped"));
            assert!(reason.contains(want) && reason.contains("Linux"), "{case}: {reason:?}");
            let mut out = pod.clone();
            let decision = inject_into(&mut out, "app", &cfg).expect("inject_into");
            assert!(
                matches!(&decision, Decision::Skip { reason: r, record: Some(_) } if *r == reason),
                "{case}: {decision:?}"
            );
            // Only the annotation was added: no container, no security setting.
            assert_eq!(out.spec, pod.spec, "{case}: the spec must be untouched");
            let status = status(&out);
            assert_eq!(status["skipped"], json!(reason), "{case}: {status}");
            assert_eq!(status["version"], json!(VERSION), "{case}: {status}");
            assert!(status.get("mode").is_none(), "{case}: a skipped pod has no proxy mode: {status}");
            let mut rest = out.metadata.annotations.clone().unwrap_or_default();
            rest.remove(STATUS_ANNOTATION);
            assert_eq!(rest, pod.metadata.annotations.clone().unwrap_or_default(), "{case}: other annotations kept");
            // A second pass (webhook reinvocation, `inject` on its own output) changes nothing.
            let again = skip_reason(&out, "app", &cfg).expect("still skipped");
            assert!(again.starts_with("already skipped"), "{case}: {again}");
            let mut twice = out.clone();
            inject_into(&mut twice, "app", &cfg).expect("inject_into");
            assert_eq!(twice, out, "{case}: idempotent");
        }
    }
    // An explicit opt-out wins and leaves the pod as it is.
    let opted_out = pod_with(
        json!({"metadata": {"labels": {"strait.io/inject": "disabled"}}, "spec": {"os": {"name": "windows"}}}),
    );
    assert!(matches!(mutate(&opted_out, "app", &InjectConfig::default()), Ok(Decision::Skip { record: None, .. })));
}

/// Pods that may run on Linux nodes are meshed as usual: Linux explicitly, or a
/// scheduling constraint that still admits a Linux node.
#[test]
fn pods_that_may_run_on_linux_are_injected() {
    let cases: &[(&str, Value)] = &[
        ("spec.os.name linux", json!({"spec": {"os": {"name": "linux"}}})),
        ("nodeSelector linux", json!({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}})),
        (
            "affinity: one term admits Linux",
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
            ]}}}}}),
        ),
        (
            "affinity: In [windows, linux]",
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows", "linux"]}]},
            ]}}}}}),
        ),
        (
            "preferred (not required) Windows affinity",
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}},
            ]}}}}),
        ),
    ];
    for (case, merge) in cases {
        let pod = pod_with(merge.clone());
        assert_eq!(skip_reason(&pod, "app", &InjectConfig::default()), None, "{case}");
        let (out, _) = injected(&pod, &InjectConfig::default());
        assert!(status(&out).get("mode").is_some(), "{case}");
    }
}

#[test]
fn not_skipped() {
    let cases: &[(&str, Value)] = &[
        ("plain", json!({})),
        ("label enabled", json!({"metadata": {"labels": {"strait.io/inject": "enabled"}}})),
        ("annotation enabled", json!({"metadata": {"annotations": {"strait.io/inject": "enabled"}}})),
        ("hostNetwork false", json!({"spec": {"hostNetwork": false}})),
        ("other label disabled", json!({"metadata": {"labels": {"other.io/inject": "disabled"}}})),
        ("app init container", json!({"spec": {"initContainers": [{"name": "migrate"}]}})),
    ];
    for (case, merge) in cases {
        let pod = pod_with(merge.clone());
        assert_eq!(skip_reason(&pod, "app", &InjectConfig::default()), None, "{case}");
        injection(&pod, &InjectConfig::default());
    }
}

#[test]
fn placement() {
    struct Case {
        name: &'static str,
        native_cfg: bool,
        annotation: Option<&'static str>,
        app_init: &'static [&'static str],
        want_init: &'static [&'static str],
        want_containers: &'static [&'static str],
        want_mode: &'static str,
    }
    let cases = [
        Case {
            name: "native, no init containers",
            native_cfg: true,
            annotation: None,
            app_init: &[],
            want_init: &["strait-init", "strait-proxy"],
            want_containers: &["app"],
            want_mode: "native",
        },
        Case {
            name: "native, existing init containers",
            native_cfg: true,
            annotation: None,
            app_init: &["migrate", "seed"],
            want_init: &["strait-init", "strait-proxy", "migrate", "seed"],
            want_containers: &["app"],
            want_mode: "native",
        },
        Case {
            name: "classic, no init containers",
            native_cfg: false,
            annotation: None,
            app_init: &[],
            want_init: &["strait-init"],
            want_containers: &["strait-proxy", "app"],
            want_mode: "classic",
        },
        Case {
            name: "classic, existing init containers",
            native_cfg: false,
            annotation: None,
            app_init: &["migrate"],
            want_init: &["strait-init", "migrate"],
            want_containers: &["strait-proxy", "app"],
            want_mode: "classic",
        },
        Case {
            name: "annotation false overrides native cluster",
            native_cfg: true,
            annotation: Some("false"),
            app_init: &["migrate"],
            want_init: &["strait-init", "migrate"],
            want_containers: &["strait-proxy", "app"],
            want_mode: "classic",
        },
        Case {
            name: "annotation true on native cluster",
            native_cfg: true,
            annotation: Some("true"),
            app_init: &[],
            want_init: &["strait-init", "strait-proxy"],
            want_containers: &["app"],
            want_mode: "native",
        },
        Case {
            name: "annotation true on classic cluster stays classic",
            native_cfg: false,
            annotation: Some("true"),
            app_init: &[],
            want_init: &["strait-init"],
            want_containers: &["strait-proxy", "app"],
            want_mode: "classic",
        },
    ];
    for c in cases {
        let init: Vec<Value> = c.app_init.iter().map(|n| json!({"name": n, "image": "tool:1"})).collect();
        let mut merge = json!({"spec": {"initContainers": init}});
        if let Some(a) = c.annotation {
            merge["metadata"] = json!({"annotations": {"strait.io/native-sidecar": a}});
        }
        let cfg = InjectConfig { native_sidecars: c.native_cfg, ..InjectConfig::default() };
        let (pod, _) = injected(&pod_with(merge), &cfg);
        let s = spec(&pod);
        assert_eq!(names(s.init_containers.as_ref()), c.want_init, "{}", c.name);
        assert_eq!(names(Some(&s.containers)), c.want_containers, "{}", c.name);
        assert_eq!(status(&pod)["mode"], c.want_mode, "{}", c.name);
        let p = proxy(&pod);
        if c.want_mode == "native" {
            assert_eq!(p.restart_policy.as_deref(), Some("Always"), "{}", c.name);
            assert!(p.lifecycle.is_none(), "{}", c.name);
        } else {
            assert_eq!(p.restart_policy, None, "{}", c.name);
            let post_start = p.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()).expect("postStart");
            assert_eq!(
                post_start.exec.as_ref().and_then(|e| e.command.as_deref()),
                Some(
                    &["strait-proxy", "wait-ready", "--admin-addr", "127.0.0.1:15000", "--timeout", "60s"]
                        .map(String::from)[..]
                ),
                "{}",
                c.name
            );
        }
    }
}

/// The patch is applied by the API server to the JSON it received, which may differ from
/// what k8s-openapi would serialize (absent vs null vs empty members).
#[test]
fn patch_applies_to_raw_json_shapes() {
    let shapes: &[(&str, Value, &[&str])] = &[
        ("no initContainers member", json!({"containers": [{"name": "app"}]}), &["strait-init", "strait-proxy"]),
        (
            "initContainers null",
            json!({"containers": [{"name": "app"}], "initContainers": null}),
            &["strait-init", "strait-proxy"],
        ),
        (
            "initContainers empty",
            json!({"containers": [{"name": "app"}], "initContainers": []}),
            &["strait-init", "strait-proxy"],
        ),
        (
            "existing initContainers",
            json!({"containers": [{"name": "app"}], "initContainers": [{"name": "a"}, {"name": "b"}]}),
            &["strait-init", "strait-proxy", "a", "b"],
        ),
    ];
    let metas: &[(&str, Value)] = &[
        ("no annotations member", json!({"name": "p"})),
        ("annotations null", json!({"name": "p", "annotations": null})),
        ("annotations empty", json!({"name": "p", "annotations": {}})),
        ("existing annotations", json!({"name": "p", "annotations": {"team": "payments", "a/b": "c"}})),
    ];
    for (shape, spec_json, want_init) in shapes {
        for (meta_case, meta) in metas {
            let raw = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec_json});
            let typed: Pod = serde_json::from_value(raw.clone()).expect("fixture");
            let inj = injection(&typed, &InjectConfig::default());
            let mut doc = raw.clone();
            json_patch::patch(&mut doc, &inj.patch).unwrap_or_else(|e| panic!("{shape}/{meta_case}: {e}"));
            let patched: Pod = serde_json::from_value(doc).expect("patched pod deserializes");
            assert_eq!(names(spec(&patched).init_containers.as_ref()), *want_init, "{shape}/{meta_case}");
            assert_eq!(status(&patched), inj.summary, "{shape}/{meta_case}");
            let annotations = patched.metadata.annotations.as_ref().expect("annotations");
            if meta_case == &"existing annotations" {
                assert_eq!(annotations.get("team").map(String::as_str), Some("payments"));
                assert_eq!(annotations.get("a/b").map(String::as_str), Some("c"));
            }
        }
    }
    // Keys with '/' are escaped in pointers; existing arrays get index inserts.
    let pod =
        pod_with(json!({"metadata": {"annotations": {"team": "x"}}, "spec": {"initContainers": [{"name": "m"}]}}));
    let paths = |inj: &Injection| inj.patch.iter().map(|op| op.path().to_string()).collect::<Vec<_>>();
    assert_eq!(
        paths(&injection(&pod, &InjectConfig::default())),
        ["/spec/initContainers/0", "/spec/initContainers/1", "/metadata/annotations/strait.io~1status"]
    );
    assert_eq!(
        paths(&injection(&pod, &classic())),
        [
            "/spec/initContainers/0",
            "/spec/containers/0",
            "/metadata/annotations/kubectl.kubernetes.io~1default-container",
            "/metadata/annotations/strait.io~1status",
        ]
    );
    // The plain pod (no init containers, no annotations): whole members are added.
    let inj = injection(&pod_with(json!({})), &classic());
    assert_eq!(paths(&inj), ["/spec/initContainers", "/spec/containers/0", "/metadata/annotations"]);
}

#[test]
fn idempotent() {
    let fixtures = [
        pod_with(json!({})),
        pod_with(json!({"spec": {"initContainers": [{"name": "migrate"}]}})),
        annotated(&[("team", "x")]),
    ];
    for cfg in [InjectConfig::default(), classic()] {
        for pod in &fixtures {
            let (once, _) = injected(pod, &cfg);
            let reason = skip_reason(&once, "app", &cfg).expect("skipped after injection");
            assert!(reason.starts_with("already injected"), "{reason}");
            let mut twice = once.clone();
            match inject_into(&mut twice, "app", &cfg).expect("inject_into") {
                Decision::Skip { .. } => {}
                Decision::Inject(_) => panic!("injected twice"),
            }
            assert_eq!(twice, once);
            // Even without the status annotation (stripped by someone), the containers
            // are recognised.
            let mut stripped = once.clone();
            stripped.metadata.annotations = None;
            assert!(skip_reason(&stripped, "app", &cfg).is_some_and(|r| r.contains("container strait-")));
        }
    }
}

#[test]
fn round_trips_through_k8s_openapi() {
    for cfg in [InjectConfig::default(), classic()] {
        let (pod, _) = injected(&annotated(&[("strait.io/skip-outbound-cidrs", "10.0.0.0/8")]), &cfg);
        let json = serde_json::to_value(&pod).expect("serialize");
        let back: Pod = serde_json::from_value(json.clone()).expect("deserialize");
        assert_eq!(back, pod);
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "Pod");
        // Field names as the API server expects them.
        let containers =
            if cfg.native_sidecars { &json["spec"]["initContainers"] } else { &json["spec"]["containers"] };
        let proxy = containers.as_array().and_then(|a| a.iter().find(|c| c["name"] == "strait-proxy")).expect("proxy");
        assert_eq!(proxy["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 15020);
    }
}

#[test]
fn proxy_container_as_specified() {
    let (pod, warnings) = injected(&pod_with(json!({})), &InjectConfig::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    let p = proxy(&pod);
    assert_eq!(p.image.as_deref(), Some(InjectConfig::default().proxy_image.as_str()));
    assert_eq!(p.args.as_deref(), Some(&["--log-level".to_string(), "info".to_string()][..]));
    let env: Vec<(String, Option<String>, Option<String>)> = p
        .env
        .iter()
        .flatten()
        .map(|e| {
            let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.clone());
            (e.name.clone(), e.value.clone(), field)
        })
        .collect();
    let want = [
        ("POD_NAME", None, Some("metadata.name")),
        ("POD_NAMESPACE", None, Some("metadata.namespace")),
        ("POD_IP", None, Some("status.podIP")),
        ("STRAIT_SERVICE_ACCOUNT", None, Some("spec.serviceAccountName")),
        // Both families: ip6tables redirects IPv6 to [::1]:15001 / [::]:15006, and the
        // kubelet probes an IPv6-primary pod at [podIP]:15020.
        ("STRAIT_OUTBOUND_ADDR", Some("127.0.0.1:15001,[::1]:15001"), None),
        ("STRAIT_INBOUND_ADDR", Some("0.0.0.0:15006,[::]:15006"), None),
        ("STRAIT_ADMIN_ADDR", Some("127.0.0.1:15000"), None),
        ("STRAIT_PROBE_ADDR", Some("0.0.0.0:15020,[::]:15020"), None),
        ("STRAIT_LOG_LEVEL", Some("info"), None),
        ("STRAIT_PROXY_UID", Some("1337"), None),
        ("STRAIT_TRANSPARENT", Some("true"), None),
    ]
    .map(|(n, v, f)| (n.to_string(), v.map(String::from), f.map(String::from)));
    assert_eq!(env, want);

    let ports = p.ports.as_deref().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].name.as_deref(), ports[0].container_port), (Some("strait-probe"), 15020));

    for (probe, path, period, failure) in [
        (&p.startup_probe, "/ready", 1, Some(60)),
        (&p.readiness_probe, "/ready", 2, None),
        (&p.liveness_probe, "/live", 10, None),
    ] {
        let probe = probe.as_ref().expect("probe");
        let get = probe.http_get.as_ref().expect("httpGet");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020));
        assert_eq!(probe.period_seconds, Some(period));
        assert_eq!(probe.failure_threshold, failure);
    }

    // Restricted Pod Security profile.
    let sc = p.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.run_as_group, Some(1337));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, None);
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!((caps.add.as_deref(), caps.drop.as_deref()), (None, Some(&["ALL".to_string()][..])));
    assert_eq!(sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));

    let res = p.resources.as_ref().expect("resources");
    let q =
        |m: &Option<std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
    assert_eq!(q(&res.requests, "cpu").as_deref(), Some("10m"));
    assert_eq!(q(&res.requests, "memory").as_deref(), Some("20Mi"));
    assert_eq!(q(&res.limits, "memory").as_deref(), Some("128Mi"));
    assert_eq!(q(&res.limits, "cpu"), None, "no CPU limit");
}

#[test]
fn init_container_as_specified() {
    for cfg in [InjectConfig::default(), classic()] {
        let (pod, _) = injected(&pod_with(json!({"spec": {"initContainers": [{"name": "migrate"}]}})), &cfg);
        assert_eq!(
            spec(&pod).init_containers.as_ref().and_then(|i| i.first()).map(|c| c.name.as_str()),
            Some("strait-init")
        );
        let c = init(&pod);
        assert_eq!(c.image.as_deref(), Some(cfg.init_image.as_str()));
        assert_eq!(c.command.as_deref(), Some(&["strait-init".to_string()][..]));
        assert_eq!(c.restart_policy, None);
        let sc = c.security_context.as_ref().expect("securityContext");
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..]));
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.run_as_non_root, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
        let res = c.resources.as_ref().expect("resources");
        assert!(res.requests.as_ref().is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    }
}

#[test]
fn init_args_reflect_skips() {
    let head = ["--proxy-uid", "1337", "--inbound-port", "15006", "--outbound-port", "15001"];
    // (case, annotations, expected args after the fixed head)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        ("defaults", &[], &["--skip-inbound-ports", "15000,15020"]),
        (
            "inbound ports, deduplicated",
            &[("strait.io/skip-inbound-ports", "8081, 15020,9090,8081")],
            &["--skip-inbound-ports", "15000,15020,8081,9090"],
        ),
        (
            "outbound ports",
            &[("strait.io/skip-outbound-ports", "5432,6379")],
            &["--skip-inbound-ports", "15000,15020", "--skip-outbound-ports", "5432,6379"],
        ),
        (
            "outbound cidrs",
            &[("strait.io/skip-outbound-cidrs", "10.0.0.0/8, fd00::/8,169.254.169.254")],
            &["--skip-inbound-ports", "15000,15020", "--skip-outbound-cidrs", "10.0.0.0/8,fd00::/8,169.254.169.254"],
        ),
        (
            "all, empty values omitted",
            &[
                ("strait.io/skip-inbound-ports", ""),
                ("strait.io/skip-outbound-ports", "53"),
                ("strait.io/skip-outbound-cidrs", " "),
            ],
            &["--skip-inbound-ports", "15000,15020", "--skip-outbound-ports", "53"],
        ),
        (
            "invalid list ignored",
            &[("strait.io/skip-outbound-ports", "53,0")],
            &["--skip-inbound-ports", "15000,15020"],
        ),
    ];
    for (case, annotations, tail) in cases {
        let (pod, _) = injected(&annotated(annotations), &InjectConfig::default());
        let want: Vec<String> = head.iter().chain(tail.iter()).map(|s| s.to_string()).collect();
        assert_eq!(init(&pod).args.as_ref(), Some(&want), "{case}");
    }
    // Non-default ports flow into the args and the proxy's addresses.
    let cfg = InjectConfig {
        proxy_uid: 2000,
        outbound_port: 16001,
        inbound_port: 16006,
        admin_port: 16000,
        probe_port: 16020,
        ..InjectConfig::default()
    };
    let (pod, _) = injected(&pod_with(json!({})), &cfg);
    let want: Vec<String> = [
        "--proxy-uid",
        "2000",
        "--inbound-port",
        "16006",
        "--outbound-port",
        "16001",
        "--skip-inbound-ports",
        "16000,16020",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(init(&pod).args.as_ref(), Some(&want));
    let env = proxy(&pod).env.as_ref().expect("env");
    // The proxy listens where strait-init redirects, on both families.
    for (name, value) in [
        ("STRAIT_OUTBOUND_ADDR", "127.0.0.1:16001,[::1]:16001"),
        ("STRAIT_INBOUND_ADDR", "0.0.0.0:16006,[::]:16006"),
        ("STRAIT_PROBE_ADDR", "0.0.0.0:16020,[::]:16020"),
    ] {
        assert!(env.iter().any(|e| e.name == name && e.value.as_deref() == Some(value)), "{name}: {env:?}");
    }
    assert_eq!(proxy(&pod).ports.as_ref().map(|p| p[0].container_port), Some(16020));
}

#[test]
fn summary_is_the_status_annotation() {
    let pod = annotated(&[
        ("strait.io/skip-inbound-ports", "9090"),
        ("strait.io/skip-outbound-ports", "5432"),
        ("strait.io/skip-outbound-cidrs", "10.0.0.0/8"),
        ("strait.io/proxy-image", "registry.local/proxy:dev"),
    ]);
    let inj = injection(&pod, &InjectConfig::default());
    let want = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "mode": "native",
        "proxyImage": "registry.local/proxy:dev",
        "initImage": InjectConfig::default().init_image,
        "inboundSkip": [15000, 15020, 9090],
        "outboundSkip": [5432],
        "outboundCidrSkip": ["10.0.0.0/8"],
        "addedAnnotations": [],
    });
    assert_eq!(inj.summary, want);
    let (patched, _) = injected(&pod, &InjectConfig::default());
    assert_eq!(status(&patched), want);
    // Compact: no whitespace in the annotation value.
    let raw = &patched.metadata.annotations.as_ref().expect("annotations")[STATUS_ANNOTATION];
    assert!(!raw.contains(' ') && !raw.contains('\n'), "{raw}");
}

#[test]
fn valid_annotations_apply() {
    type Check = fn(&Pod);
    let cases: &[(&str, &str, Check)] = &[
        ("strait.io/proxy-image", "registry.local/strait-proxy@sha256:abc", |p| {
            assert_eq!(proxy(p).image.as_deref(), Some("registry.local/strait-proxy@sha256:abc"));
        }),
        ("strait.io/proxy-cpu-request", "250m", |p| {
            let r = proxy(p).resources.as_ref().and_then(|r| r.requests.as_ref()).expect("requests");
            assert_eq!(r["cpu"].0, "250m");
        }),
        ("strait.io/proxy-memory-request", "64Mi", |p| {
            let r = proxy(p).resources.as_ref().and_then(|r| r.requests.as_ref()).expect("requests");
            assert_eq!(r["memory"].0, "64Mi");
        }),
        ("strait.io/proxy-memory-limit", "1Gi", |p| {
            let r = proxy(p).resources.as_ref().and_then(|r| r.limits.as_ref()).expect("limits");
            assert_eq!(r["memory"].0, "1Gi");
        }),
        ("strait.io/log-level", "debug", |p| {
            assert_eq!(proxy(p).args.as_ref().map(|a| a[1].as_str()), Some("debug"));
            let env = proxy(p).env.as_ref().expect("env");
            assert!(env.iter().any(|e| e.name == "STRAIT_LOG_LEVEL" && e.value.as_deref() == Some("debug")));
        }),
        ("strait.io/skip-inbound-ports", "8443", |p| {
            assert_eq!(status(p)["inboundSkip"], json!([15000, 15020, 8443]));
        }),
        ("strait.io/skip-outbound-ports", "443,8443", |p| {
            assert_eq!(status(p)["outboundSkip"], json!([443, 8443]));
        }),
        ("strait.io/skip-outbound-cidrs", "192.168.0.0/16,2001:db8::/32", |p| {
            assert_eq!(status(p)["outboundCidrSkip"], json!(["192.168.0.0/16", "2001:db8::/32"]));
        }),
        ("strait.io/native-sidecar", "false", |p| {
            assert_eq!(status(p)["mode"], "classic");
        }),
        ("strait.io/native-sidecar", "true", |p| {
            assert_eq!(status(p)["mode"], "native");
        }),
    ];
    for (key, value, check) in cases {
        let (pod, warnings) = injected(&annotated(&[(key, value)]), &InjectConfig::default());
        assert!(warnings.is_empty(), "{key}={value}: {warnings:?}");
        check(&pod);
    }
}

#[test]
fn invalid_annotations_warn_and_use_defaults() {
    let cases: &[(&str, &str)] = &[
        ("strait.io/proxy-image", ""),
        ("strait.io/proxy-image", "my image"),
        ("strait.io/proxy-cpu-request", "lots"),
        ("strait.io/proxy-cpu-request", "-100m"),
        ("strait.io/proxy-cpu-request", "1.2.3"),
        ("strait.io/proxy-memory-request", "64MB"),
        ("strait.io/proxy-memory-request", " 64Mi"),
        ("strait.io/proxy-memory-limit", "Mi"),
        ("strait.io/proxy-memory-limit", "1e"),
        ("strait.io/log-level", "verbose"),
        ("strait.io/log-level", "INFO"),
        ("strait.io/log-level", "info,hyper=debug"),
        ("strait.io/skip-inbound-ports", "http"),
        ("strait.io/skip-inbound-ports", "0"),
        ("strait.io/skip-inbound-ports", "65536"),
        ("strait.io/skip-inbound-ports", "80,,90"),
        ("strait.io/skip-outbound-ports", "80-90"),
        ("strait.io/skip-outbound-ports", "-1"),
        ("strait.io/skip-outbound-cidrs", "10.0.0.0/33"),
        ("strait.io/skip-outbound-cidrs", "fd00::/129"),
        ("strait.io/skip-outbound-cidrs", "10.0.0/8"),
        ("strait.io/skip-outbound-cidrs", "10.0.0.0/"),
        ("strait.io/skip-outbound-cidrs", "10.0.0.0/+8"),
        ("strait.io/skip-outbound-cidrs", "10.0.0.0/8,example.com"),
        ("strait.io/native-sidecar", "yes"),
        ("strait.io/native-sidecar", "True"),
    ];
    // The baseline carries an unrelated annotation so both patches add the status key
    // the same way.
    let baseline = injection(&annotated(&[("team", "x")]), &InjectConfig::default());
    for (key, value) in cases {
        let inj = injection(&annotated(&[("team", "x"), (key, value)]), &InjectConfig::default());
        assert_eq!(inj.warnings.len(), 1, "{key}={value:?}: {:?}", inj.warnings);
        let w = &inj.warnings[0];
        assert!(w.contains(key) && w.contains(&format!("{value:?}")), "{key}={value:?}: {w}");
        assert_eq!(inj.patch, baseline.patch, "{key}={value:?}: defaults are used");
    }
    // On a classic-only cluster, asking for native sidecars warns and stays classic.
    let inj = injection(&annotated(&[("strait.io/native-sidecar", "true")]), &classic());
    assert_eq!(inj.summary["mode"], "classic");
    assert!(
        inj.warnings.iter().any(|w| w.contains("strait.io/native-sidecar") && w.contains("without native sidecars"))
    );
}

#[test]
fn request_above_limit_raises_the_limit() {
    let (pod, warnings) =
        injected(&annotated(&[("strait.io/proxy-memory-request", "256Mi")]), &InjectConfig::default());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("memory request 256Mi exceeds its limit 128Mi"), "{}", warnings[0]);
    let r = proxy(&pod).resources.as_ref().expect("resources");
    assert_eq!(r.limits.as_ref().map(|l| l["memory"].0.as_str()), Some("256Mi"));
    // Equal, or a lower request in other units, is fine.
    for (req, lim) in [("128Mi", "128Mi"), ("100M", "128Mi"), ("0.1Gi", "128Mi")] {
        let (_, warnings) = injected(
            &annotated(&[("strait.io/proxy-memory-request", req), ("strait.io/proxy-memory-limit", lim)]),
            &InjectConfig::default(),
        );
        assert!(warnings.is_empty(), "{req} <= {lim}: {warnings:?}");
    }
}

#[test]
fn uid_clash_warnings() {
    let cases: &[(&str, Value, Option<&str>)] = &[
        (
            "container runs as proxy UID",
            json!({"spec": {"containers": [{"name": "app", "securityContext": {"runAsUser": 1337}}]}}),
            Some("container app runs as UID 1337,"),
        ),
        (
            "pod securityContext",
            json!({"spec": {"securityContext": {"runAsUser": 1337}}}),
            Some("container app runs as UID 1337 (from the pod securityContext)"),
        ),
        (
            "container overrides the pod UID",
            json!({"spec": {"securityContext": {"runAsUser": 1337}, "containers": [{"name": "app", "securityContext": {"runAsUser": 1000}}]}}),
            None,
        ),
        (
            "init container",
            json!({"spec": {"initContainers": [{"name": "setup", "securityContext": {"runAsUser": 1337}}]}}),
            Some("init container setup runs as UID 1337"),
        ),
        ("other UID", json!({"spec": {"securityContext": {"runAsUser": 1000}}}), None),
    ];
    for (case, merge, want) in cases {
        let inj = injection(&pod_with(merge.clone()), &InjectConfig::default());
        let uid: Vec<&String> = inj.warnings.iter().filter(|w| w.contains("bypass the proxy")).collect();
        match want {
            Some(want) => {
                assert_eq!(uid.len(), 1, "{case}: {:?}", inj.warnings);
                assert!(uid[0].contains(want), "{case}: {}", uid[0]);
            }
            None => assert!(uid.is_empty(), "{case}: {uid:?}"),
        }
    }
    // The injected containers do not inherit a clashing pod UID: they set their own.
    let (pod, _) =
        injected(&pod_with(json!({"spec": {"securityContext": {"runAsUser": 1337}}})), &InjectConfig::default());
    assert_eq!(init(&pod).security_context.as_ref().and_then(|s| s.run_as_user), Some(0));
}

#[test]
fn port_clash_warnings() {
    let cases: &[(&str, Value, &[&str])] = &[
        ("no clash", json!({}), &[]),
        (
            "admin",
            json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 15000}]}]}}),
            &["port 15000", "(admin)"],
        ),
        (
            "outbound",
            json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 15001}]}]}}),
            &["port 15001", "(outbound)"],
        ),
        (
            "inbound",
            json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 15006}]}]}}),
            &["port 15006", "(inbound)"],
        ),
        (
            "probe",
            json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 15020}]}]}}),
            &["port 15020", "(probe)"],
        ),
        (
            "port name",
            json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 9000, "name": "strait-probe"}]}]}}),
            &["named strait-probe"],
        ),
        (
            "init container",
            json!({"spec": {"initContainers": [{"name": "setup", "ports": [{"containerPort": 15006}]}]}}),
            &["init container setup declares port 15006"],
        ),
    ];
    for (case, merge, want) in cases {
        let inj = injection(&pod_with(merge.clone()), &InjectConfig::default());
        let clash: Vec<&String> = inj.warnings.iter().filter(|w| w.contains("declares")).collect();
        if want.is_empty() {
            assert!(clash.is_empty(), "{case}: {clash:?}");
        } else {
            assert_eq!(clash.len(), 1, "{case}: {:?}", inj.warnings);
            for w in *want {
                assert!(clash[0].contains(w), "{case}: {} lacks {w}", clash[0]);
            }
        }
    }
}

#[test]
fn other_warnings() {
    let cases: &[(&str, Value, bool, Option<&str>)] = &[
        (
            "classic with app init containers",
            json!({"spec": {"initContainers": [{"name": "migrate"}]}}),
            false,
            Some("init container migrate runs before the proxy"),
        ),
        ("native with app init containers", json!({"spec": {"initContainers": [{"name": "migrate"}]}}), true, None),
        ("classic Job pod", json!({"spec": {"restartPolicy": "Never"}}), false, Some("never completes")),
        ("classic OnFailure pod", json!({"spec": {"restartPolicy": "OnFailure"}}), false, Some("never completes")),
        ("native Job pod", json!({"spec": {"restartPolicy": "Never"}}), true, None),
        (
            "no token",
            json!({"spec": {"automountServiceAccountToken": false}}),
            true,
            Some("automountServiceAccountToken"),
        ),
        (
            "unknown inject label",
            json!({"metadata": {"labels": {"strait.io/inject": "false"}}}),
            true,
            Some("label strait.io/inject=\"false\""),
        ),
        (
            "unknown inject annotation",
            json!({"metadata": {"annotations": {"strait.io/inject": "off"}}}),
            true,
            Some("annotation strait.io/inject=\"off\""),
        ),
    ];
    for (case, merge, native, want) in cases {
        let cfg = InjectConfig { native_sidecars: *native, ..InjectConfig::default() };
        let inj = injection(&pod_with(merge.clone()), &cfg);
        match want {
            Some(want) => {
                assert_eq!(inj.warnings.len(), 1, "{case}: {:?}", inj.warnings);
                assert!(inj.warnings[0].contains(want), "{case}: {}", inj.warnings[0]);
            }
            None => assert!(inj.warnings.is_empty(), "{case}: {:?}", inj.warnings),
        }
    }
}

#[test]
fn default_container_annotation_in_classic_mode() {
    let get = |p: &Pod| p.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION)).cloned();
    let (pod, _) = injected(&pod_with(json!({})), &classic());
    assert_eq!(get(&pod).as_deref(), Some("app"));
    let (pod, _) = injected(&annotated(&[(DEFAULT_CONTAINER_ANNOTATION, "sidecar-b")]), &classic());
    assert_eq!(get(&pod).as_deref(), Some("sidecar-b"), "an existing choice is kept");
    let (pod, _) = injected(&pod_with(json!({})), &InjectConfig::default());
    assert_eq!(get(&pod), None, "native: the app stays the first container");
}

#[test]
fn config_validation() {
    let d = InjectConfig::default;
    let cases: Vec<(&str, InjectConfig, Option<&str>)> = vec![
        ("default", d(), None),
        ("root proxy", InjectConfig { proxy_uid: 0, ..d() }, Some("non-root")),
        ("zero port", InjectConfig { probe_port: 0, ..d() }, Some("probe port must not be 0")),
        (
            "shared port",
            InjectConfig { inbound_port: 15001, ..d() },
            Some("inbound port 15001 is also the outbound port"),
        ),
        ("empty image", InjectConfig { init_image: String::new(), ..d() }, Some("init image")),
        ("empty namespace", InjectConfig { system_namespace: String::new(), ..d() }, Some("system namespace")),
        ("empty log level", InjectConfig { log_level: " ".into(), ..d() }, Some("log level")),
        (
            "bad quantity",
            InjectConfig {
                proxy_resources: Resources { cpu_limit: Some("1 core".into()), ..Resources::default() },
                ..d()
            },
            Some("proxy CPU limit"),
        ),
        (
            "request above limit",
            InjectConfig {
                proxy_resources: Resources { memory_limit: Some("10Mi".into()), ..Resources::default() },
                ..d()
            },
            Some("memory request 20Mi exceeds its limit 10Mi"),
        ),
        ("tracing filter log level", InjectConfig { log_level: "info,h2=warn".into(), ..d() }, None),
    ];
    for (case, cfg, want) in cases {
        let got = cfg.validate();
        match want {
            None => assert!(got.is_ok(), "{case}: {got:?}"),
            Some(want) => {
                let err = got.expect_err(case).to_string();
                assert!(err.contains(want), "{case}: {err}");
                let mut pod = pod_with(json!({}));
                assert!(matches!(inject_into(&mut pod, "app", &cfg), Err(InjectError::InvalidConfig(_))), "{case}");
                assert_eq!(pod, pod_with(json!({})), "{case}: pod unchanged on error");
            }
        }
    }
}

#[test]
fn quantities() {
    let cases: &[(&str, Option<f64>)] = &[
        ("1", Some(1.0)),
        ("0", Some(0.0)),
        ("100m", Some(0.1)),
        ("1.5", Some(1.5)),
        (".5", Some(0.5)),
        ("5.", Some(5.0)),
        ("+2", Some(2.0)),
        ("64Mi", Some(64.0 * 1024.0 * 1024.0)),
        ("1Ki", Some(1024.0)),
        ("1Ei", Some(1024f64.powi(6))),
        ("2k", Some(2000.0)),
        ("1M", Some(1e6)),
        ("1E", Some(1e18)),
        ("1e3", Some(1000.0)),
        ("1E3", Some(1000.0)),
        ("1e-3", Some(0.001)),
        ("5n", Some(5e-9)),
        ("5u", Some(5e-6)),
        ("", None),
        ("m", None),
        (".", None),
        ("1.2.3", None),
        ("-1", None),
        ("1MB", None),
        ("1mi", None),
        ("1 Mi", None),
        ("1e", None),
        ("1e+", None),
        ("1e1.5", None),
        ("1K", None),
        ("Infinity", None),
        ("NaN", None),
    ];
    for (s, want) in cases {
        let got = quantity::parse(s).ok();
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() <= w.abs() * 1e-12, "{s}: {g} != {w}"),
            (None, None) => {}
            _ => panic!("{s}: got {got:?}, want {want:?}"),
        }
    }
    assert!(quantity::exceeds("1Gi", "1G"));
    assert!(!quantity::exceeds("1G", "1Gi"));
    assert!(!quantity::exceeds("bad", "1"));
}
