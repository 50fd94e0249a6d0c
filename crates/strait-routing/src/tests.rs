//! Table-driven tests of the routing model, from manifests as users write them,
//! including the cases of the Gateway API conformance manifests for GRPCRoute.
use crate::*;
use http::HeaderMap;
use std::collections::BTreeMap;
use strait_api::parse_manifests;

/// Services `name:port[/portname]` in `ns`, each with one ready endpoint 10.0.<i>.1:<8000+i>.
fn services(ns: &str, specs: &[&str]) -> String {
    let mut out = String::new();
    for (i, spec) in specs.iter().enumerate() {
        let (name, port) = spec.split_once(':').expect("name:port");
        let (port, pname) = port.split_once('/').unwrap_or((port, "grpc"));
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: 10.96.{i}.{n}\n  ports: [{{name: {pname}, port: {port}, targetPort: {pname}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-x, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.0.{i}.{n}], conditions: {{ready: true}}}}]\nports: [{{name: {pname}, port: {tp}}}]\n",
            n = ns.len(),
            tp = 8000 + i
        ));
    }
    out
}

fn state_of(yaml: &str) -> RoutingState {
    state_with(yaml, &CompileOptions::default())
}

fn state_with(yaml: &str, opts: &CompileOptions) -> RoutingState {
    let res = parse_manifests(yaml, "default").expect("test manifests parse");
    compile(&Snapshot::from_resources(&res), opts)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
    }
    h
}

/// Routes a request; returns the backend Service names with nonzero weight of the
/// matched rule, or "UNIMPLEMENTED".
fn backends_for(state: &RoutingState, dest: &str, client_ns: &str, path: &str, hdrs: &[(&str, &str)]) -> String {
    let d = parse_authority(dest, client_ns, "cluster.local").expect("authority");
    let port = state.lookup(&d).expect("service port");
    let h = headers(hdrs);
    match port.table_for(client_ns).route(&RequestView { path, headers: &h }) {
        None => "UNIMPLEMENTED".into(),
        Some(e) => e
            .rule
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| b.service.name.clone())
            .collect::<Vec<_>>()
            .join("+"),
    }
}

fn status<'a>(state: &'a RoutingState, ns: &str, name: &str) -> &'a RouteStatus {
    state
        .route_statuses
        .iter()
        .find(|s| s.route.namespace == ns && s.route.name == name)
        .unwrap_or_else(|| panic!("no status for {ns}/{name}"))
}

const CONFORMANCE_NS: &str = "gateway-conformance-infra";

fn conformance_services() -> String {
    services(
        CONFORMANCE_NS,
        &["echo:50051", "grpc-infra-backend-v1:8080", "grpc-infra-backend-v2:8080", "grpc-infra-backend-v3:8080"],
    )
}

#[test]
fn conformance_exact_method_matching() {
    let yaml = conformance_services()
        + r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: exact-matching, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 50051}]
  rules:
  - matches:
    - method: {service: gateway_api_conformance.echo_basic.grpcecho.GrpcEcho, method: Echo}
    backendRefs: [{name: grpc-infra-backend-v1, port: 8080}]
  - matches:
    - method: {service: gateway_api_conformance.echo_basic.grpcecho.GrpcEcho, method: EchoTwo}
    backendRefs: [{name: grpc-infra-backend-v2, port: 8080}]
"#;
    let s = state_of(&yaml);
    let svc = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
    let cases = [
        (format!("/{svc}/Echo"), "grpc-infra-backend-v1"),
        (format!("/{svc}/EchoTwo"), "grpc-infra-backend-v2"),
        (format!("/{svc}/EchoThree"), "UNIMPLEMENTED"),
        ("/other.Service/Echo".to_string(), "UNIMPLEMENTED"),
    ];
    for (path, want) in cases {
        assert_eq!(backends_for(&s, "echo:50051", CONFORMANCE_NS, &path, &[]), want, "{path}");
    }
    let st = status(&s, CONFORMANCE_NS, "exact-matching");
    assert!(st.accepted());
    assert!(st.parents[0].resolved_refs.status);
}

#[test]
fn conformance_header_matching_with_precedence() {
    let yaml = conformance_services()
        + r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-header-matching, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{headers: [{name: version, value: one}]}]
    backendRefs: [{name: grpc-infra-backend-v1, port: 8080}]
  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: grpc-infra-backend-v2, port: 8080}]
  - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]
    backendRefs: [{name: grpc-infra-backend-v1, port: 8080}]
  - matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]
    backendRefs: [{name: grpc-infra-backend-v1, port: 8080}]
  - matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]
    backendRefs: [{name: grpc-infra-backend-v2, port: 8080}]
"#;
    let s = state_of(&yaml);
    let p = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo";
    let v1 = "grpc-infra-backend-v1";
    let v2 = "grpc-infra-backend-v2";
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("version", "one")], v1),
        (&[("version", "two")], v2),
        (&[("version", "two"), ("color", "orange")], v1),
        (&[("Version", "two"), ("COLOR", "orange")], v1),
        (&[("color", "blue")], v1),
        (&[("color", "green")], v1),
        (&[("color", "red")], v2),
        (&[("color", "yellow")], v2),
        // Equal precedence: the earlier rule wins.
        (&[("version", "one"), ("color", "red")], v1),
        (&[("color", "purple")], "UNIMPLEMENTED"),
        (&[("version", "ONE")], "UNIMPLEMENTED"),
        (&[], "UNIMPLEMENTED"),
    ];
    for (hdrs, want) in cases {
        assert_eq!(backends_for(&s, "echo:50051", CONFORMANCE_NS, p, hdrs), *want, "{hdrs:?}");
    }
}

#[test]
fn conformance_weights_70_30_0() {
    let yaml = conformance_services()
        + r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: weighted-backends, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - backendRefs:
    - {name: grpc-infra-backend-v1, port: 8080, weight: 70}
    - {name: grpc-infra-backend-v2, port: 8080, weight: 30}
    - {name: grpc-infra-backend-v3, port: 8080, weight: 0}
"#;
    let s = state_of(&yaml);
    let port = s.lookup(&parse_authority("echo:50051", CONFORMANCE_NS, "cluster.local").expect("a")).expect("p");
    let h = HeaderMap::new();
    let e = port.table_for(CONFORMANCE_NS).route(&RequestView { path: "/x.Y/Z", headers: &h }).expect("matches all");
    assert_eq!(e.rule.shares(), vec![0.7, 0.3, 0.0]);
    // Sweep the random input uniformly: exact shares, and weight 0 never chosen.
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for r in 0..1000u64 {
        let b = e.rule.pick_backend(r).expect("has weight");
        *counts.entry(b.service.name.to_string()).or_default() += 1;
    }
    assert_eq!(counts.get("grpc-infra-backend-v1"), Some(&700));
    assert_eq!(counts.get("grpc-infra-backend-v2"), Some(&300));
    assert_eq!(counts.get("grpc-infra-backend-v3"), None);
}

const APP: &str = "app";

fn app_services() -> String {
    services(APP, &["user-service:50051", "reader:50051", "writer:50051", "payment:50051", "multi:9000/a"])
}

fn route(ns: &str, name: &str, parents: &str, rules: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: {parents}\n  rules:\n{rules}\n"
    )
}

#[test]
fn method_match_forms_and_precedence() {
    let rules = r#"
  - matches: [{method: {service: user.v1.UserService}}]
    backendRefs: [{name: reader, port: 50051}]
  - matches: [{method: {service: user.v1.UserService, method: CreateUser}}]
    backendRefs: [{name: writer, port: 50051}]
  - matches: [{method: {method: Health}}]
    backendRefs: [{name: payment, port: 50051}]
  - matches: [{method: {type: RegularExpression, service: "admin\\..*", method: "(Get|List).*"}}]
    backendRefs: [{name: writer, port: 50051}]
"#;
    let yaml = app_services() + &route(APP, "r", r#"[{group: "", kind: Service, name: user-service}]"#, rules);
    let s = state_of(&yaml);
    let cases = [
        ("/user.v1.UserService/GetUser", "reader"),
        // Service + method (more characters) beats service only, though listed later.
        ("/user.v1.UserService/CreateUser", "writer"),
        ("/any.Other/Health", "payment"),
        // Service characters come first: service-only beats method-only.
        ("/user.v1.UserService/Health", "reader"),
        ("/admin.v1.Admin/ListThings", "writer"),
        ("/admin.v1.Admin/DeleteThings", "UNIMPLEMENTED"),
        ("/adminx/ListThings", "UNIMPLEMENTED"),
        ("/not-a-grpc-path", "UNIMPLEMENTED"),
    ];
    for (path, want) in cases {
        assert_eq!(backends_for(&s, "user-service:50051", APP, path, &[]), want, "{path}");
    }
}

#[test]
fn precedence_across_routes_oldest_then_alphabetical() {
    let rule = |backend: &str| {
        format!(
            "  - matches: [{{method: {{service: user.v1.UserService}}}}]\n    backendRefs: [{{name: {backend}, port: 50051}}]\n"
        )
    };
    let parent = r#"[{group: "", kind: Service, name: user-service}]"#;
    // No timestamps: alphabetical namespace/name decides.
    let yaml = app_services()
        + &route(APP, "b-route", parent, &rule("writer"))
        + &route(APP, "a-route", parent, &rule("reader"));
    assert_eq!(backends_for(&state_of(&yaml), "user-service:50051", APP, "/user.v1.UserService/X", &[]), "reader");
    // The older route wins over the alphabetically first one.
    let stamped = |name: &str, ts: &str, backend: &str| {
        route(APP, name, parent, &rule(backend))
            .replace(&format!("namespace: {APP}}}"), &format!("namespace: {APP}, creationTimestamp: \"{ts}\"}}"))
    };
    let yaml = app_services()
        + &stamped("a-route", "2024-05-01T00:00:00Z", "reader")
        + &stamped("b-route", "2024-01-01T00:00:00.5Z", "writer");
    assert_eq!(backends_for(&state_of(&yaml), "user-service:50051", APP, "/user.v1.UserService/X", &[]), "writer");
    // A more specific match beats age.
    let yaml = app_services()
        + &stamped("old", "2020-01-01T00:00:00Z", "reader")
        + &route(
            APP,
            "new",
            parent,
            "  - matches: [{method: {service: user.v1.UserService, method: X}}]\n    backendRefs: [{name: writer, port: 50051}]\n",
        );
    assert_eq!(backends_for(&state_of(&yaml), "user-service:50051", APP, "/user.v1.UserService/X", &[]), "writer");
}

#[test]
fn parent_refs_bind_only_services_with_port_and_section() {
    let rules = "  - backendRefs: [{name: reader, port: 50051}]\n";
    let yaml = app_services()
        + &route(APP, "gateway-parent", "[{name: some-gateway}]", rules)
        + &route(APP, "wrong-port", r#"[{group: "", kind: Service, name: user-service, port: 1234}]"#, rules)
        + &route(APP, "missing", r#"[{group: "", kind: Service, name: nope}]"#, rules)
        + &route(APP, "section", r#"[{group: "", kind: Service, name: multi, sectionName: a}]"#, rules)
        + &route(APP, "bad-section", r#"[{group: "", kind: Service, name: multi, sectionName: b}]"#, rules);
    let s = state_of(&yaml);
    assert!(!s.route_statuses.iter().any(|r| r.route.name == "gateway-parent"), "Gateway parents are not ours");
    let reason = |name: &str| status(&s, APP, name).parents[0].accepted.reason.clone();
    assert_eq!(reason("wrong-port"), "NoMatchingParent");
    assert_eq!(reason("missing"), "NoMatchingParent");
    assert_eq!(reason("section"), "Accepted");
    assert_eq!(reason("bad-section"), "NoMatchingParent");
    // Unbound port keeps the Service default.
    let port = s.lookup(&parse_authority("user-service:50051", APP, "cluster.local").expect("a")).expect("p");
    assert_eq!(port.producer().origin, TableOrigin::ServiceDefault);
    let multi = s.lookup(&parse_authority("multi:9000", APP, "cluster.local").expect("a")).expect("p");
    assert_eq!(multi.producer().origin, TableOrigin::Producer);
    // The parentRef is echoed as written, with the Service it resolved to.
    let ps = &status(&s, APP, "section").parents[0];
    assert_eq!(
        (ps.parent_ref.group.as_deref(), ps.parent_ref.namespace.as_deref(), ps.parent_ref.section_name.as_deref()),
        (Some(""), None, Some("a"))
    );
    assert_eq!(ps.service, ServiceKey::new(APP, "multi"));
}

#[test]
fn producer_and_consumer_routes() {
    let producer = route(
        APP,
        "producer",
        r#"[{group: "", kind: Service, name: user-service}]"#,
        "  - backendRefs: [{name: reader, port: 50051}]\n",
    );
    let consumer = route(
        "client-ns",
        "consumer",
        r#"[{group: "", kind: Service, name: user-service, namespace: app}]"#,
        "  - matches: [{method: {method: CreateUser}}]\n    backendRefs: [{name: writer, namespace: app, port: 50051}]\n",
    );
    let s = state_of(&(app_services() + &producer + &consumer));
    let dest = "user-service.app.svc.cluster.local:50051";
    // Everyone else gets the producer route.
    assert_eq!(backends_for(&s, dest, APP, "/u/CreateUser", &[]), "reader");
    assert_eq!(backends_for(&s, dest, "third", "/u/CreateUser", &[]), "reader");
    // The consumer namespace gets its own routes instead (no fallback to producer rules).
    assert_eq!(backends_for(&s, dest, "client-ns", "/u/CreateUser", &[]), "writer");
    assert_eq!(backends_for(&s, dest, "client-ns", "/u/GetUser", &[]), "UNIMPLEMENTED");
    assert!(status(&s, "client-ns", "consumer").accepted());
    // Cross-namespace backendRef needs no ReferenceGrant by default (GEP-1294)...
    assert!(status(&s, "client-ns", "consumer").parents[0].resolved_refs.status);
    // ...but does in ReferenceGrant mode.
    let strict = CompileOptions { require_reference_grants: true };
    let s2 = state_with(&(app_services() + &producer + &consumer), &strict);
    let rr = &status(&s2, "client-ns", "consumer").parents[0].resolved_refs;
    assert_eq!((rr.status, rr.reason.as_str()), (false, "RefNotPermitted"));
    let grant = "\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: app}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: client-ns}]\n  to: [{group: \"\", kind: Service, name: writer}]\n";
    let s3 = state_with(&(app_services() + &producer + &consumer + grant), &strict);
    assert!(status(&s3, "client-ns", "consumer").parents[0].resolved_refs.status);
}

#[test]
fn invalid_routes_are_not_accepted_and_others_keep_working() {
    let parent = r#"[{group: "", kind: Service, name: user-service}]"#;
    let good = route(
        APP,
        "good",
        parent,
        "  - matches: [{method: {service: user.v1.UserService}}]\n    backendRefs: [{name: reader, port: 50051}]\n",
    );
    let bads = [
        (
            "unsupported-filter",
            "  - filters: [{type: URLRewrite}]\n    backendRefs: [{name: writer, port: 50051}]\n",
            "not supported",
        ),
        (
            "extension-ref",
            "  - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]\n    backendRefs: [{name: writer, port: 50051}]\n",
            "not supported",
        ),
        (
            "bad-regex",
            "  - matches: [{method: {type: RegularExpression, service: \"(unclosed\"}}]\n    backendRefs: [{name: writer, port: 50051}]\n",
            "invalid regular expression",
        ),
        (
            "bad-header-regex",
            "  - matches: [{headers: [{type: RegularExpression, name: x, value: \"[\"}]}]\n    backendRefs: [{name: writer, port: 50051}]\n",
            "invalid regular expression",
        ),
        (
            "bad-match-type",
            "  - matches: [{method: {type: Prefix, service: a}}]\n    backendRefs: [{name: writer, port: 50051}]\n",
            "not supported",
        ),
        (
            "empty-method",
            "  - matches: [{method: {type: Exact}}]\n    backendRefs: [{name: writer, port: 50051}]\n",
            "needs a service or a method",
        ),
        (
            "bad-header-name",
            "  - matches: [{headers: [{name: \"bad name\", value: x}]}]\n    backendRefs: [{name: writer, port: 50051}]\n",
            "invalid header name",
        ),
        ("bad-weight", "  - backendRefs: [{name: writer, port: 50051, weight: -1}]\n", "weight"),
        (
            "bad-mirror",
            "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: writer, port: 50051}, percent: 101}}]\n    backendRefs: [{name: writer, port: 50051}]\n",
            "percent",
        ),
    ];
    for (name, rules, want) in bads {
        let s = state_of(&(app_services() + &good + &route(APP, name, parent, rules)));
        let st = status(&s, APP, name);
        let c = &st.parents[0].accepted;
        assert_eq!((c.status, c.reason.as_str()), (false, "UnsupportedValue"), "{name}");
        assert!(c.message.contains(want), "{name}: {:?} should mention {want:?}", c.message);
        assert!(status(&s, APP, "good").accepted());
        // Only the good route is in the table.
        assert_eq!(backends_for(&s, "user-service:50051", APP, "/user.v1.UserService/X", &[]), "reader", "{name}");
        assert_eq!(backends_for(&s, "user-service:50051", APP, "/other.S/X", &[]), "UNIMPLEMENTED", "{name}");
    }
}

#[test]
fn missing_and_invalid_backends() {
    let parent = r#"[{group: "", kind: Service, name: user-service}]"#;
    let cases = [
        (
            "  - backendRefs: [{name: reader, port: 50051, weight: 1}, {name: ghost, port: 50051, weight: 1}]\n",
            "BackendNotFound",
            vec![true, false],
        ),
        (
            "  - backendRefs: [{name: reader, port: 50051}, {name: ghost, port: 50051, weight: 0}]\n",
            "BackendNotFound",
            vec![true, false],
        ),
        ("  - backendRefs: [{name: reader, port: 1}]\n", "BackendNotFound", vec![false]),
        ("  - backendRefs: [{name: reader}]\n", "BackendNotFound", vec![false]),
        (
            "  - backendRefs: [{group: example.com, kind: Thing, name: reader, port: 50051}]\n",
            "InvalidKind",
            vec![false],
        ),
    ];
    for (rules, reason, resolvable) in cases.clone() {
        let s = state_of(&(app_services() + &route(APP, "r", parent, rules)));
        let st = status(&s, APP, "r");
        assert!(st.accepted(), "a broken backend does not un-accept the route");
        assert_eq!(st.parents[0].resolved_refs.reason, reason, "{rules}");
        let port = s.lookup(&parse_authority("user-service:50051", APP, "cluster.local").expect("a")).expect("p");
        let h = HeaderMap::new();
        let e = port.producer().route(&RequestView { path: "/a/b", headers: &h }).expect("rule");
        let got: Vec<bool> = e.rule.backends.iter().map(|b| b.endpoints().is_some()).collect();
        assert_eq!(got, resolvable, "{rules}");
    }
    // A dangling weight-0 backend never receives traffic.
    let s = state_of(&(app_services() + &route(APP, "r", parent, cases[1].0)));
    let port = s.lookup(&parse_authority("user-service:50051", APP, "cluster.local").expect("a")).expect("p");
    let h = HeaderMap::new();
    let rule = &port.producer().route(&RequestView { path: "/a/b", headers: &h }).expect("rule").rule;
    assert!((0..100).all(|r| rule.pick_backend(r).is_some_and(|b| &*b.service.name == "reader")));
}

#[test]
fn all_zero_weights_pick_nothing() {
    let parent = r#"[{group: "", kind: Service, name: user-service}]"#;
    let s = state_of(
        &(app_services() + &route(APP, "r", parent, "  - backendRefs: [{name: reader, port: 50051, weight: 0}]\n")),
    );
    let port = s.lookup(&parse_authority("user-service:50051", APP, "cluster.local").expect("a")).expect("p");
    let h = HeaderMap::new();
    let rule = &port.producer().route(&RequestView { path: "/a/b", headers: &h }).expect("rule").rule;
    assert!(rule.pick_backend(7).is_none());
}

#[test]
fn crd_defaults_are_applied() {
    // No weight, no match type, no backendRef group/kind: defaults 1, Exact, ""/Service.
    let parent = r#"[{group: "", kind: Service, name: user-service}]"#;
    let rules = "  - matches: [{method: {service: s.S, method: M}, headers: [{name: h, value: v}]}]\n    backendRefs: [{name: reader, port: 50051}, {name: writer, port: 50051}]\n";
    let s = state_of(&(app_services() + &route(APP, "r", parent, rules)));
    let port = s.lookup(&parse_authority("user-service:50051", APP, "cluster.local").expect("a")).expect("p");
    let e = &port.producer().entries[0];
    assert!(matches!(e.matcher.method, MethodMatcher::Exact { .. }));
    assert!(matches!(e.matcher.headers[0], HeaderMatcher::Exact { .. }));
    assert_eq!(e.rule.shares(), vec![0.5, 0.5]);
    assert!(e.rule.backends.iter().all(|b| b.endpoints().is_some()));
}

#[test]
fn filters_compile_at_rule_and_backend_level() {
    let parent = r#"[{group: "", kind: Service, name: user-service}]"#;
    let rules = r#"
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-priority, value: high}], set: [{name: x-set, value: "1"}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-served-by, value: strait}]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: payment, port: 50051}, fraction: {numerator: 1, denominator: 4}}
    backendRefs:
    - name: reader
      port: 50051
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-backend, value: reader}]}
"#;
    let s = state_of(&(app_services() + &route(APP, "r", parent, rules)));
    assert!(status(&s, APP, "r").accepted());
    let port = s.lookup(&parse_authority("user-service:50051", APP, "cluster.local").expect("a")).expect("p");
    let rule = &port.producer().entries[0].rule;
    let mut h = headers(&[("x-priority", "low"), ("x-drop", "1")]);
    rule.request_header_modifier.as_ref().expect("req filter").apply(&mut h);
    assert_eq!(h.get("x-priority").and_then(|v| v.to_str().ok()), Some("low,high"));
    assert_eq!(h.get("x-set").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(h.get("x-drop").is_none());
    assert!(rule.response_header_modifier.is_some());
    assert_eq!(rule.mirrors.len(), 1);
    assert_eq!(rule.mirrors[0].parts_per_million, 250_000);
    assert_eq!(&*rule.mirrors[0].backend.service.name, "payment");
    assert!(rule.backends[0].request_header_modifier.is_some());
    // Mirror to a missing Service reports ResolvedRefs=False.
    let broken = rules.replace("name: payment", "name: nothing");
    let s = state_of(&(app_services() + &route(APP, "r", parent, &broken)));
    assert_eq!(status(&s, APP, "r").parents[0].resolved_refs.reason, "BackendNotFound");
}

#[test]
fn service_without_routes_goes_to_its_own_endpoints() {
    let s = state_of(&app_services());
    let port = s.lookup(&parse_authority("reader.app:50051", "x", "cluster.local").expect("a")).expect("p");
    assert_eq!(port.producer().origin, TableOrigin::ServiceDefault);
    let h = HeaderMap::new();
    let e = port.table_for("x").route(&RequestView { path: "/any/Thing", headers: &h }).expect("catch-all");
    let eps = e.rule.backends[0].endpoints().expect("endpoints");
    assert_eq!(eps.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(), vec!["10.0.1.3:8001"]);
    // ClusterIP lookup for transparent mode.
    let ip: std::net::IpAddr = "10.96.1.3".parse().expect("ip");
    assert!(s.service_by_cluster_ip(ip).is_some());
    assert!(matches!(
        s.lookup(&parse_authority("ghost.app:1", "x", "cluster.local").expect("a")),
        Err(LookupError::UnknownService(_))
    ));
    assert!(matches!(
        s.lookup(&parse_authority("reader.app:1", "x", "cluster.local").expect("a")),
        Err(LookupError::UnknownPort { .. })
    ));
    assert!(
        s.lookup(&parse_authority("reader.app", "x", "cluster.local").expect("a")).is_ok(),
        "single port needs no port"
    );
}

#[test]
fn endpoint_slice_semantics() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: shop}
spec:
  ports: [{name: grpc, port: 80, targetPort: grpc}, {name: metrics, port: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: shop, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: true}}
- {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], conditions: {ready: false}}
- {addresses: [10.0.0.4]}
ports: [{name: grpc, port: 8080}, {name: metrics, port: 9100}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-2, namespace: shop, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: true}}
- {addresses: [10.0.0.5], conditions: {ready: true}}
ports: [{name: grpc, port: 8081}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-dup, namespace: shop, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: true}}
ports: [{name: grpc, port: 8080}]
"#;
    let s = state_of(yaml);
    let addrs = |port: u16| -> Vec<String> {
        let p = s.lookup(&Destination { namespace: "shop".into(), name: "s".into(), port: Some(port) }).expect("port");
        let set = p.producer().entries[0].rule.backends[0].endpoints().expect("set").clone();
        set.endpoints.iter().map(|e| e.addr.to_string()).collect()
    };
    // Ready (and unknown = ready) only; named target ports per slice; duplicates merged.
    assert_eq!(addrs(80), vec!["10.0.0.1:8080", "10.0.0.1:8081", "10.0.0.4:8080", "10.0.0.5:8081"]);
    assert_eq!(addrs(9090), vec!["10.0.0.1:9100", "10.0.0.4:9100"]);

    // Nothing ready: serving terminating endpoints still take traffic.
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: shop, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints:
- {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], conditions: {ready: false, serving: false, terminating: true}}
ports: [{port: 8080}]
"#;
    let s = state_of(yaml);
    let p = s.lookup(&Destination { namespace: "shop".into(), name: "s".into(), port: Some(80) }).expect("port");
    let set = p.producer().entries[0].rule.backends[0].endpoints().expect("set").clone();
    assert_eq!(set.endpoints.len(), 1);
    assert!(set.endpoints[0].terminating && set.endpoints[0].serving);
}

#[test]
fn routes_dump_as_json() {
    let parent = r#"[{group: "", kind: Service, name: user-service}]"#;
    let s = state_of(
        &(app_services()
            + &route(
                APP,
                "r",
                parent,
                "  - matches: [{method: {type: RegularExpression, service: \"a.*\"}}]\n    backendRefs: [{name: reader, port: 50051, weight: 3}]\n",
            )),
    );
    let v = serde_json::to_value(&s).expect("serializes");
    let entry = &v["services"]["app/user-service"]["ports"][0]["producer"]["entries"][0];
    assert_eq!(entry["match"]["method"]["type"], "RegularExpression");
    assert_eq!(entry["match"]["method"]["service"], "a.*");
    assert_eq!(entry["rule"]["route"]["name"], "r");
    assert_eq!(entry["rule"]["backends"][0]["weight"], 3);
    assert_eq!(v["routeStatuses"][0]["parents"][0]["accepted"]["reason"], "Accepted");
}

#[test]
fn service_default_table_is_built_on_first_use_and_shown_in_dumps() {
    let s = state_of(&services(APP, &["plain:50051"]));
    let port = s.lookup(&parse_authority("plain:50051", APP, "cluster.local").expect("a")).expect("port");
    // Nothing built until a request (or a dump) needs it; pool upkeep sees no route table.
    assert!(port.default_table.get().is_none());
    assert_eq!(port.route_tables().count(), 0);
    let dump = serde_json::to_value(port).expect("dump");
    assert_eq!(dump["producer"]["origin"]["kind"], "serviceDefault");
    assert!(port.default_table.get().is_none(), "a dump does not keep the default built");
    let table = port.table_for("any-namespace");
    assert_eq!(table.origin, TableOrigin::ServiceDefault);
    let backend = &table.entries[0].rule.backends[0];
    assert_eq!((backend.service.to_string(), backend.port), (format!("{APP}/plain"), 50051));
    assert!(std::sync::Arc::ptr_eq(table, port.producer()), "built once per state");
    // Services without endpoint slices share one empty set.
    let bare = |name: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {APP}}}\nspec: {{ports: [{{port: 80}}]}}\n"
        )
    };
    let two = state_of(&(bare("a") + &bare("b")));
    let ep = |name: &str| two.service(&ServiceKey::new(APP, name)).expect("svc").ports[0].endpoints.clone();
    assert!(std::sync::Arc::ptr_eq(&ep("a"), &ep("b")) && ep("a").endpoints.is_empty());
}

#[test]
fn services_are_found_by_borrowed_parts_in_key_order() {
    // Names chosen so (namespace, name) order differs from "namespace/name" string order.
    let mut map = std::collections::BTreeMap::new();
    let keys = [("a", "z"), ("a-b", "c"), ("a", "a-b"), ("ab", ""), ("", "x"), ("b", "a")];
    for (i, (ns, name)) in keys.iter().enumerate() {
        map.insert(ServiceKey::new(ns, name), i);
    }
    for (i, (ns, name)) in keys.iter().enumerate() {
        let parts: &dyn ServiceKeyParts = &(*ns, *name);
        assert_eq!(map.get(parts), Some(&i), "{ns}/{name}");
    }
    let missing: &dyn ServiceKeyParts = &("a", "b");
    assert_eq!(map.get(missing), None);
    let s = state_of(&services(APP, &["svc:80"]));
    assert!(s.lookup_parts(APP, "svc", Some(80)).is_ok());
    assert_eq!(
        s.lookup_parts(APP, "svc", Some(81)).err(),
        Some(LookupError::UnknownPort { service: ServiceKey::new(APP, "svc"), port: 81 })
    );
}
