//! Pure rendering of the sidecar's admin answers (`GET /routes`, `GET /routes/query`,
//! shapes in proxy/src/admin.rs) as text tables. Reads the JSON leniently: a field a
//! newer proxy adds is ignored, one it drops shows as `?`, never a panic.
use serde_json::Value;

/// `GET /routes` as one row per (Service port, table, match entry).
pub fn render_routes(dump: &Value) -> String {
    let mut out = String::new();
    let namespace = dump.get("namespace").and_then(Value::as_str).unwrap_or("?");
    let version = dump.get("version").map_or_else(|| "?".to_owned(), scalar);
    out.push_str(&format!("proxy namespace: {namespace}   configuration version: {version}\n"));
    if let Some(errors) = dump.get("sourceErrors").and_then(Value::as_object).filter(|e| !e.is_empty()) {
        out.push_str("source errors:\n");
        for (source, err) in errors {
            out.push_str(&format!("  {source}: {}\n", scalar(err)));
        }
    }
    let mut rows = vec![header(&["SERVICE", "PORT", "TABLE", "MATCH", "ROUTE#RULE", "BACKENDS", "FILTERS"])];
    let services = dump.pointer("/routing/services").and_then(Value::as_object);
    for (service, routes) in services.into_iter().flatten() {
        for port in routes.get("ports").and_then(Value::as_array).into_iter().flatten() {
            let port_label = match (port.get("port").map(scalar), port.get("name").and_then(Value::as_str)) {
                (Some(p), Some(name)) => format!("{p}/{name}"),
                (Some(p), None) => p,
                (None, _) => "?".into(),
            };
            let mut tables: Vec<&Value> = port.get("producer").into_iter().collect();
            tables.extend(port.get("consumers").and_then(Value::as_object).into_iter().flat_map(|c| c.values()));
            for table in tables {
                let origin = origin_label(table.get("origin"));
                for entry in table.get("entries").and_then(Value::as_array).into_iter().flatten() {
                    let rule = entry.get("rule").unwrap_or(&Value::Null);
                    let backends: Vec<String> = array(rule.get("backends")).map(backend_label).collect();
                    rows.push(vec![
                        service.clone(),
                        port_label.clone(),
                        origin.clone(),
                        match_label(entry.get("match")),
                        rule_label(rule),
                        if backends.is_empty() { "-".into() } else { backends.join(", ") },
                        filters_label(rule),
                    ]);
                }
            }
        }
    }
    out.push_str(&table(&rows));
    let problems: Vec<String> = array(dump.pointer("/routing/routeStatuses")).flat_map(route_problems).collect();
    if !problems.is_empty() {
        out.push_str("route problems:\n");
        for p in problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}

/// `GET /routes/query`: which table, rule and backends a request would get.
pub fn render_query(answer: &Value) -> String {
    let mut out = String::new();
    if let Some(err) = answer.get("error") {
        return format!("error: {}\n", scalar(err));
    }
    let dest = answer.get("destination");
    let dest_label = match dest {
        Some(d) => format!(
            "{}/{}:{}",
            d.get("namespace").map_or_else(|| "?".into(), scalar),
            d.get("name").map_or_else(|| "?".into(), scalar),
            d.get("port").map_or_else(|| "?".into(), scalar)
        ),
        None => "?".into(),
    };
    out.push_str(&format!("destination:  {dest_label}\n"));
    if let Some(ns) = answer.get("clientNamespace") {
        out.push_str(&format!("client ns:    {}\n", scalar(ns)));
    }
    if answer.get("table").is_some() {
        out.push_str(&format!("table:        {}\n", origin_label(answer.get("table"))));
    }
    // An unknown Service answers with result/reason at the top level.
    let decision = answer.get("decision").unwrap_or(answer);
    let result = decision.get("result").map_or_else(|| "?".into(), scalar);
    out.push_str(&format!("result:       {result}\n"));
    if let Some(reason) = decision.get("reason") {
        out.push_str(&format!("reason:       {}\n", scalar(reason)));
    }
    if let Some(rule) = decision.get("rule") {
        let index = decision.get("matchIndex").filter(|i| !i.is_null()).map(|i| format!(" (match #{})", scalar(i)));
        out.push_str(&format!("rule:         {}{}\n", scalar(rule), index.unwrap_or_default()));
        out.push_str(&format!("match:        {}\n", match_label(decision.get("match"))));
        let filters = filters_label(decision);
        if filters != "-" {
            out.push_str(&format!("filters:      {filters}\n"));
        }
        let mut rows = vec![header(&["BACKEND", "WEIGHT", "SHARE", "ENDPOINTS"])];
        for b in array(decision.get("backends")) {
            let share =
                b.get("share").and_then(Value::as_f64).map_or_else(|| "?".into(), |s| format!("{:.1}%", s * 100.0));
            rows.push(vec![
                format!(
                    "{}:{}",
                    b.get("service").map_or_else(|| "?".into(), scalar),
                    b.get("port").map_or_else(|| "?".into(), scalar)
                ),
                b.get("weight").map_or_else(|| "?".into(), scalar),
                share,
                target_label(b.get("target")),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

/// A JSON scalar without string quotes.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn origin_label(origin: Option<&Value>) -> String {
    match origin.and_then(|o| o.get("kind")).and_then(Value::as_str) {
        Some("producer") => "producer".into(),
        Some("serviceDefault") => "default".into(),
        Some("consumer") => {
            format!("consumer {}", origin.and_then(|o| o.get("namespace")).map_or_else(|| "?".into(), scalar))
        }
        Some(other) => other.into(),
        None => "?".into(),
    }
}

/// `service/method` (`*` for an absent part, `~` before a regular expression) and
/// header conditions (`name=value`, `name~regex`).
fn match_label(m: Option<&Value>) -> String {
    let Some(m) = m else { return "?".into() };
    let method = m.get("method");
    let part = |key: &str, prefix: &str| {
        method
            .and_then(|x| x.get(key))
            .filter(|v| !v.is_null())
            .map_or_else(|| "*".into(), |v| format!("{prefix}{}", scalar(v)))
    };
    let mut parts = Vec::new();
    match method.and_then(|x| x.get("type")).and_then(Value::as_str) {
        Some("Any") | None => {}
        Some("RegularExpression") => parts.push(format!("{}/{}", part("service", "~"), part("method", "~"))),
        Some(_) => parts.push(format!("{}/{}", part("service", ""), part("method", ""))),
    }
    for h in array(m.get("headers")) {
        let name = h.get("name").map_or_else(|| "?".into(), scalar);
        let value = h.get("value").map_or_else(|| "?".into(), scalar);
        let op = if h.get("type").and_then(Value::as_str) == Some("RegularExpression") { "~" } else { "=" };
        parts.push(format!("{name}{op}{value}"));
    }
    if parts.is_empty() { "*".into() } else { parts.join(" ") }
}

fn rule_label(rule: &Value) -> String {
    let Some(route) = rule.get("route").filter(|r| !r.is_null()) else { return "default".into() };
    let name = format!(
        "{}/{}",
        route.get("namespace").map_or_else(|| "?".into(), scalar),
        route.get("name").map_or_else(|| "?".into(), scalar)
    );
    match rule.get("ruleName").filter(|n| !n.is_null()) {
        Some(n) => format!("{name}#{}", scalar(n)),
        None => format!("{name}#{}", rule.get("ruleIndex").map_or_else(|| "?".into(), scalar)),
    }
}

fn backend_label(b: &Value) -> String {
    format!(
        "{}:{} w={} ({})",
        b.get("service").map_or_else(|| "?".into(), scalar),
        b.get("port").map_or_else(|| "?".into(), scalar),
        b.get("weight").map_or_else(|| "?".into(), scalar),
        target_label(b.get("target"))
    )
}

/// `3 ep`, `2 ep, 1 not ready`, `0 ep`, or `UNAVAILABLE: reason`.
fn target_label(target: Option<&Value>) -> String {
    match target.and_then(|t| t.get("kind")).and_then(Value::as_str) {
        Some("endpoints") => {
            let endpoints: Vec<&Value> = array(target.and_then(|t| t.get("endpoints"))).collect();
            let not_ready = endpoints.iter().filter(|e| e.get("ready") == Some(&Value::Bool(false))).count();
            if not_ready > 0 {
                format!("{} ep, {not_ready} not ready", endpoints.len())
            } else {
                format!("{} ep", endpoints.len())
            }
        }
        Some("unavailable") => {
            format!("UNAVAILABLE: {}", target.and_then(|t| t.get("reason")).map_or_else(|| "?".into(), scalar))
        }
        _ => "?".into(),
    }
}

fn filters_label(rule: &Value) -> String {
    let mut f = Vec::new();
    if rule.get("requestHeaderModifier").is_some_and(|v| !v.is_null()) {
        f.push("request headers".to_owned());
    }
    if rule.get("responseHeaderModifier").is_some_and(|v| !v.is_null()) {
        f.push("response headers".to_owned());
    }
    for m in array(rule.get("mirrors")) {
        let backend = m.get("backend").and_then(|b| b.get("service")).map_or_else(|| "?".into(), scalar);
        f.push(format!("mirror to {backend}"));
    }
    if f.is_empty() { "-".into() } else { f.join(", ") }
}

/// Parent refs of a route whose Accepted or ResolvedRefs condition is not true.
fn route_problems(status: &Value) -> Vec<String> {
    let route = status.get("route").map_or_else(
        || "?".into(),
        |r| {
            format!(
                "{}/{}",
                r.get("namespace").map_or_else(|| "?".into(), scalar),
                r.get("name").map_or_else(|| "?".into(), scalar)
            )
        },
    );
    let mut out = Vec::new();
    for parent in array(status.get("parents")) {
        for cond in ["accepted", "resolvedRefs"] {
            let Some(c) = parent.get(cond) else { continue };
            if c.get("status") != Some(&Value::Bool(true)) {
                out.push(format!(
                    "GRPCRoute {route} parent {}: {cond} false ({}: {})",
                    parent
                        .get("service")
                        .or_else(|| parent.pointer("/parentRef/name"))
                        .map_or_else(|| "?".into(), scalar),
                    c.get("reason").map_or_else(|| "?".into(), scalar),
                    c.get("message").map_or_else(|| "?".into(), scalar),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real answers of strait-proxy in file mode on deploy/examples
    /// (tests/fixtures/regenerate.sh).
    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture readable")).expect("fixture is JSON")
    }

    fn row<'a>(text: &'a str, starts: &str, contains: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(starts) && l.contains(contains))
            .unwrap_or_else(|| panic!("no row starting {starts:?} with {contains:?} in:\n{text}"))
    }

    #[test]
    fn route_dump_shows_each_rule_with_weights_and_endpoint_counts() {
        let text = render_routes(&fixture("routes-examples.json"));
        assert!(text.starts_with("proxy namespace: app   configuration version: 1\n"), "{text}");
        let canary = row(&text, "app/order-service ", "canary");
        for want in [
            "50051/grpc",
            "producer",
            "order.v1.OrderService/*",
            "app/canary-route#0",
            "app/order-service-stable:50051 w=90 (3 ep), app/order-service-canary:50051 w=10 (1 ep)",
        ] {
            assert!(canary.contains(want), "{want:?} missing in {canary:?}");
        }
        // Header match first (more specific), then the plain service match.
        let ab = row(&text, "app/recommendation-service ", "x-experiment-group=treatment-a");
        assert!(ab.contains("app/ab-test-route#0") && ab.contains("app/recommendation-v2:50051 w=1 (2 ep)"), "{ab}");
        let ab_pos = text.find(ab).expect("row");
        let plain = row(&text, "app/recommendation-service ", "app/ab-test-route#1");
        assert!(text.find(plain).expect("row") > ab_pos, "precedence order kept");
        let pay = row(&text, "app/payment-service ", "ProcessPayment");
        assert!(pay.contains("payment.v1.PaymentService/ProcessPayment") && pay.ends_with("request headers"), "{pay}");
        // A Service no route binds shows its default table to its own endpoints.
        let backend = row(&text, "app/order-service-canary ", "");
        assert!(
            backend.contains("default") && backend.contains("app/order-service-canary:50051 w=1 (1 ep)"),
            "{backend}"
        );
        assert!(!text.contains("route problems"), "all example routes are accepted:\n{text}");
        // Columns line up: every row's ROUTE#RULE starts at the same offset.
        let head = text.lines().nth(1).expect("header");
        let col = head.find("ROUTE#RULE").expect("column");
        assert_eq!(&canary[col..col + 18], "app/canary-route#0");
    }

    #[test]
    fn consumer_tables_unavailable_backends_and_route_problems_are_shown() {
        let mut dump = fixture("routes-examples.json");
        let port = dump.pointer_mut("/routing/services/app~1order-service/ports/0").expect("order-service port");
        let mut consumer = port["producer"].clone();
        consumer["origin"] = serde_json::json!({"kind": "consumer", "namespace": "web"});
        consumer["entries"][0]["rule"]["backends"][1]["target"] =
            serde_json::json!({"kind": "unavailable", "reason": "service app/gone not found"});
        consumer["entries"][0]["rule"]["backends"][0]["target"]["endpoints"][0]["ready"] = false.into();
        port["consumers"] = serde_json::json!({"web": consumer});
        dump["routing"]["routeStatuses"][0]["parents"][0]["resolvedRefs"] =
            serde_json::json!({"status": false, "reason": "BackendNotFound", "message": "app/gone"});
        dump["sourceErrors"] = serde_json::json!({"grpcroutes": "list failed"});
        let text = render_routes(&dump);
        let row = row(&text, "app/order-service ", "consumer web");
        assert!(
            row.contains("w=90 (3 ep, 1 not ready)") && row.contains("UNAVAILABLE: service app/gone not found"),
            "{row}"
        );
        assert!(text.contains("source errors:\n  grpcroutes: list failed\n"), "{text}");
        assert!(
            text.contains("GRPCRoute app/ab-test-route parent app/recommendation-service: resolvedRefs false (BackendNotFound: app/gone)"),
            "{text}"
        );
    }

    #[test]
    fn query_shows_rule_and_backend_shares() {
        let text = render_query(&fixture("query-order.json"));
        assert!(text.contains("destination:  app/order-service:50051\n"), "{text}");
        assert!(
            text.contains("result:       ROUTED\n") && text.contains("rule:         app/canary-route#0 (match #0)\n"),
            "{text}"
        );
        let stable = row(&text, "app/order-service-stable:50051", "");
        assert!(stable.contains("90") && stable.contains("90.0%") && stable.ends_with("3 ep"), "{stable}");
        assert!(row(&text, "app/order-service-canary:50051", "").contains("10.0%"), "{text}");

        let text = render_query(&fixture("query-recommendation.json"));
        assert!(
            text.contains("match:        recommendation.v1.RecommendationService/* x-experiment-group=treatment-a"),
            "{text}"
        );
        assert!(row(&text, "app/recommendation-v2:50051", "").contains("100.0%"), "{text}");

        let text = render_query(&fixture("query-unavailable.json"));
        assert!(text.contains("result:       UNAVAILABLE\nreason:       service app/nothing not found\n"), "{text}");
        assert_eq!(
            render_query(&serde_json::json!({"error": "authority is required"})),
            "error: authority is required\n"
        );
    }

    #[test]
    fn unexpected_shapes_do_not_panic() {
        for v in [
            Value::Null,
            serde_json::json!([1, 2]),
            serde_json::json!({"routing": {"services": {"a/b": {"ports": [{}]}}}}),
        ] {
            let _ = render_routes(&v);
            let _ = render_query(&v);
        }
    }
}
