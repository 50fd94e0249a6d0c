//! Request matching: arbitrary paths, header names and values against arbitrary
//! method/header patterns (regexes included) never panic.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    match_type: bool,
    service: Option<String>,
    method: Option<String>,
    header_matches: Vec<(String, String, bool)>,
}

fuzz_target!(|input: Input| {
    let mut route = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "r", "namespace": "n"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "s"}],
                 "rules": [{"matches": [{"headers": input.header_matches.iter().map(|(n, v, re)| serde_json::json!({
                     "name": n, "value": v, "type": if *re { "RegularExpression" } else { "Exact" }})).collect::<Vec<_>>()}],
                   "backendRefs": [{"name": "s", "port": 80}]}]}
    });
    if input.service.is_some() || input.method.is_some() {
        route["spec"]["rules"][0]["matches"][0]["method"] = serde_json::json!({
            "type": if input.match_type { "RegularExpression" } else { "Exact" },
            "service": input.service, "method": input.method,
        });
    }
    let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
        "spec": {"ports": [{"port": 80}]}});
    let Ok(text) = serde_json::to_string(&route) else { return };
    let Ok(svc_text) = serde_json::to_string(&svc) else { return };
    let Ok(res) = strait_api::parse_manifests(&format!("{svc_text}\n---\n{text}"), "n") else { return };
    let state = strait_routing::compile(&strait_routing::Snapshot::from_resources(&res), &Default::default());
    let mut headers = http::HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let dest = strait_routing::Destination { namespace: "n".into(), name: "s".into(), port: Some(80) };
    if let Ok(port) = state.lookup(&dest) {
        let _ = port.table_for("n").route(&strait_routing::RequestView { path: &input.path, headers: &headers });
    }
    let _ = strait_routing::parse_authority(&input.path, "n", "cluster.local");
});
