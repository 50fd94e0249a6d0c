//! Meshed pods end to end (issue 5): pods created through the real API server and the
//! real injection webhook, run by the minimal kubelet of `strait_e2e::pods` in network
//! namespaces on a test bridge — `strait-init` programs iptables exactly as the injected
//! spec says, the injected `strait-proxy` runs as a native sidecar in transparent mode
//! with its ServiceAccount's token, and unmodified apps (`strait-demo-server`,
//! `strait-demo-client`) dial Service ClusterIPs.
//!
//! No kube-proxy runs and ClusterIPs are routed nowhere: a call to a ClusterIP that is
//! answered at all went through the pod's sidecar.
//!
//! Needs root (network namespaces, veths, a bridge, iptables); otherwise every test
//! prints a loud `SKIPPED:` and returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use strait_e2e::kube_mode::skip_unless_root_because;
use strait_e2e::pods::{
    APP_NS, BareNetns, CLIENT_NS, ClientLine, MeshCluster, MeshPod, PodNetwork, binary_for_image, client_pod,
    container_argv, netns_exec, normalize_save, rule_packets, server_container, server_pod, tally,
};

/// Runs the test as root, skips it otherwise (fails it with `STRAIT_REQUIRE_ROOT=1`).
fn skip_unless_root(test: &str) -> bool {
    skip_unless_root_because(test, "network namespaces, veths, a bridge and\niptables inside pod namespaces")
}

/// Extra Services for non-gRPC traffic, selecting `app: toolbox` pods.
const TOOLBOX_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: toolbox, namespace: app}
spec:
  selector: {app: toolbox}
  ports:
    - {name: grpc, port: 50051, targetPort: grpc}
    - {name: http, port: 80, targetPort: http}
    - {name: tcp-echo, port: 7000, targetPort: tcp-echo}
    - {name: greeting, port: 7001, targetPort: greeting}
    # 5432 is on the proxy's default opaque list: never inspected.
    - {name: postgres, port: 5432, targetPort: pg}
"#;

const STREAMER_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: streamer, namespace: app}
spec:
  selector: {app: streamer}
  ports:
    - {name: grpc, port: 50051, targetPort: grpc}
"#;

/// A consumer route: callers in client-ns send every UserService call to the writer.
const CONSUMER_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: users-to-writer, namespace: client-ns}
spec:
  parentRefs:
    - {group: "", kind: Service, name: user-service, namespace: app, port: 50051}
  rules:
    - matches:
        - method: {service: user.v1.UserService}
      backendRefs:
        - {name: user-service-writer, namespace: app, port: 50051}
"#;

async fn start_all(mesh: &MeshCluster, manifests: Vec<Value>) -> Result<Vec<MeshPod>> {
    futures::future::try_join_all(manifests.into_iter().map(|m| mesh.start_pod(m))).await
}

/// Calls through the client pod, failing with the tally unless every call is OK.
async fn calls(client: &MeshPod, target: &str, args: &[&str]) -> Result<Vec<ClientLine>> {
    let mut all = vec!["--target", target];
    all.extend_from_slice(args);
    let lines = client.run_client(&all).await?;
    ensure!(!lines.is_empty(), "client printed nothing for {args:?}");
    ensure!(lines.iter().all(|l| l.ok), "{target} {args:?}: not every call succeeded: {:?}", tally(&lines));
    Ok(lines)
}

fn only_backend(lines: &[ClientLine], want: &str, what: &str) {
    let t = tally(lines);
    assert_eq!(t.keys().collect::<Vec<_>>(), [want], "{what}: answered by {t:?}");
}

// ---------------------------------------------------------------------------
// Seed scenarios
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_routes_between_meshed_pods() -> Result<()> {
    if !skip_unless_root("seed_routes_between_meshed_pods") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    let backends: &[(&str, &[(&str, &str)])] = &[
        ("user-reader-0", &[("app", "user-service"), ("role", "reader")]),
        ("user-writer-0", &[("app", "user-service"), ("role", "writer")]),
        ("reco-v1-0", &[("app", "recommendation"), ("version", "v1")]),
        ("reco-v2-0", &[("app", "recommendation"), ("version", "v2")]),
        ("order-stable-0", &[("app", "order-service"), ("track", "stable")]),
        ("order-canary-0", &[("app", "order-service"), ("track", "canary")]),
        ("payment-0", &[("app", "payment-service")]),
    ];
    let mut manifests: Vec<Value> = backends.iter().map(|(n, l)| server_pod(APP_NS, n, l)).collect();
    manifests.push(client_pod(APP_NS, "client"));
    let pods = start_all(&mesh, manifests).await?;
    let client = pods.last().context("client pod")?;

    // What the webhook injected is what ran.
    let inits: Vec<&str> = client.spec["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(inits, ["strait-init", "strait-proxy"], "injected init containers");
    let proxy = client.init_container("strait-proxy")?;
    assert!(
        proxy["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == "STRAIT_TRANSPARENT" && e["value"] == "true"),
        "sidecar env without STRAIT_TRANSPARENT=true: {}",
        proxy["env"]
    );

    let ip = |svc: &'static str| {
        let mesh = &mesh;
        async move { anyhow::Ok(format!("{}:50051", mesh.cluster_ip(APP_NS, svc).await?)) }
    };
    let users = ip("user-service").await?;
    let recommendations = ip("recommendation-service").await?;
    let orders = ip("order-service").await?;
    let payments = ip("payment-service").await?;

    // Method split.
    let get = calls(client, &users, &["--call", "user/GetUser", "--count", "20"]).await?;
    only_backend(&get, "user-reader-0", "GetUser");
    let create = calls(client, &users, &["--call", "user/CreateUser", "--count", "20"]).await?;
    only_backend(&create, "user-writer-0", "CreateUser");

    // Header A/B.
    let treated = calls(
        client,
        &recommendations,
        &["--call", "recommendation/Recommend", "--count", "20", "--header", "x-experiment-group=treatment-a"],
    )
    .await?;
    only_backend(&treated, "reco-v2-0", "Recommend with x-experiment-group=treatment-a");
    let control = calls(client, &recommendations, &["--call", "recommendation/Recommend", "--count", "20"]).await?;
    only_backend(&control, "reco-v1-0", "Recommend without the header");

    // 90/10 canary: canary ~ Binomial(400, 0.1): mean 40, sd 6. Accepting 40 ± 27
    // (4.5 sd) fails a correct proxy with probability < 1e-5 and catches 50/50,
    // 100/0 or 0/100 splits.
    const N: usize = 400;
    let canary_calls = calls(client, &orders, &["--call", "order/GetOrder", "--count", &N.to_string()]).await?;
    let t = tally(&canary_calls);
    let stable = t.get("order-stable-0").copied().unwrap_or(0);
    let canary = t.get("order-canary-0").copied().unwrap_or(0);
    assert_eq!(stable + canary, N, "GetOrder answered by {t:?}");
    assert!((13..=67).contains(&canary), "canary got {canary} of {N} (expected 40 ± 27): {t:?}");
    eprintln!("canary split: stable {stable}, canary {canary} of {N}");

    // Header modifier: the backend saw the header the route adds ...
    let paid = calls(client, &payments, &["--call", "payment/ProcessPayment", "--count", "5"]).await?;
    only_backend(&paid, "payment-0", "ProcessPayment");
    for l in &paid {
        assert_eq!(l.headers["x-request-priority"], json!("high"), "headers the backend saw: {}", l.headers);
    }
    // ... which a call to the pod IP (passthrough: no Service, no route) does not get.
    let payment_pod = &pods[6];
    let direct =
        calls(client, &format!("{}:8080", payment_pod.ip), &["--call", "payment/ProcessPayment", "--count", "3"])
            .await?;
    only_backend(&direct, "payment-0", "ProcessPayment to the pod IP");
    for l in &direct {
        assert!(l.headers.get("x-request-priority").is_none(), "passthrough call was modified: {}", l.headers);
    }
    eprintln!("seed_routes_between_meshed_pods: {:.1?}", started.elapsed());
    drop(pods);
    Ok(())
}

// ---------------------------------------------------------------------------
// Consumer route
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_route_applies_to_its_namespace_only() -> Result<()> {
    if !skip_unless_root("consumer_route_applies_to_its_namespace_only") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    let pods = start_all(
        &mesh,
        vec![
            server_pod(APP_NS, "user-reader-0", &[("app", "user-service"), ("role", "reader")]),
            server_pod(APP_NS, "user-writer-0", &[("app", "user-service"), ("role", "writer")]),
            client_pod(APP_NS, "client"),
            client_pod(CLIENT_NS, "consumer"),
        ],
    )
    .await?;
    let (app_client, consumer) = (&pods[2], &pods[3]);
    let users = format!("{}:50051", mesh.cluster_ip(APP_NS, "user-service").await?);
    let get = ["--call", "user/GetUser", "--count", "20"];

    // Before: both namespaces get the producer route.
    only_backend(&calls(consumer, &users, &get).await?, "user-reader-0", "client-ns before the consumer route");

    mesh.apply(CONSUMER_ROUTE)?;
    // The sidecar picks the route up from its watch: a deadline, generous for a busy
    // machine, that the loop leaves as soon as the route applies.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = calls(consumer, &users, &["--call", "user/GetUser", "--count", "1"]).await?;
        if lines[0].backend == "user-writer-0" {
            break;
        }
        assert!(Instant::now() < deadline, "client-ns still routed by the producer route after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    only_backend(&calls(consumer, &users, &get).await?, "user-writer-0", "client-ns with its consumer route");
    only_backend(&calls(app_client, &users, &get).await?, "user-reader-0", "app keeps the producer route");
    // The consumer route covers every UserService method.
    let create = calls(consumer, &users, &["--call", "user/CreateUser", "--count", "5"]).await?;
    only_backend(&create, "user-writer-0", "client-ns CreateUser");
    eprintln!("consumer_route_applies_to_its_namespace_only: {:.1?}", started.elapsed());
    drop(pods);
    Ok(())
}

// ---------------------------------------------------------------------------
// Non-gRPC traffic
// ---------------------------------------------------------------------------

fn toolbox_pod() -> Value {
    let mut pod = server_pod(APP_NS, "toolbox-0", &[("app", "toolbox")]);
    // A second app container: a server-first protocol on the opaque port 5432.
    let db = server_container("db", "toolbox-db", &[("--tcp-greeting", "0.0.0.0:5432", "pg", 5432)]);
    pod["spec"]["containers"].as_array_mut().expect("containers").push(db);
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_and_tcp_through_the_mesh() -> Result<()> {
    if !skip_unless_root("http1_and_tcp_through_the_mesh") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    mesh.apply(TOOLBOX_SERVICE)?;
    let pods = start_all(&mesh, vec![toolbox_pod(), client_pod(APP_NS, "client")]).await?;
    let client = &pods[1];
    let ip = mesh.cluster_ip(APP_NS, "toolbox").await?;

    let http = calls(client, &format!("{ip}:80"), &["--protocol", "http1", "--count", "3"]).await?;
    for l in &http {
        assert!(l.message.starts_with("HTTP/1.1 200"), "HTTP/1.1 response: {:?}", l.message);
        assert!(l.message.contains("hello from toolbox-0"), "HTTP/1.1 body: {:?}", l.message);
    }

    let echo = calls(client, &format!("{ip}:7000"), &["--protocol", "tcp-echo", "--count", "3"]).await?;
    for (i, l) in echo.iter().enumerate() {
        assert_eq!(l.message, format!("ping-{i}\n"), "TCP echo");
    }

    // Server-first on a port not listed as opaque: the client says nothing, so each
    // sidecar (outbound, then inbound) waits out its detection timeout (1 s) and
    // then splices TCP.
    let t = Instant::now();
    let greet = calls(client, &format!("{ip}:7001"), &["--protocol", "tcp-greeting", "--count", "1"]).await?;
    let detected_after = t.elapsed();
    assert_eq!(greet[0].message, "HELLO toolbox-0\nping-0\n", "server-first TCP via detection timeout");

    // Server-first on an opaque port: no detection wait on either side.
    let t = Instant::now();
    let pg = calls(client, &format!("{ip}:5432"), &["--protocol", "tcp-greeting", "--count", "1"]).await?;
    let opaque_after = t.elapsed();
    assert_eq!(pg[0].message, "HELLO toolbox-db\nping-0\n", "server-first TCP on an opaque port");
    // Relative, not absolute: a busy machine slows both calls alike, but only the
    // call on port 7001 includes the two detection waits (1 s in each sidecar).
    assert!(detected_after >= Duration::from_secs(1), "server-first on 7001 took only {detected_after:?}");
    assert!(
        opaque_after < detected_after,
        "the opaque port took {opaque_after:?}, as long as the call that waited out protocol detection \
         ({detected_after:?}) or longer"
    );
    eprintln!(
        "server-first: {detected_after:.1?} on 7001 (detection timeout), {opaque_after:.1?} on 5432 (opaque); \
         http1_and_tcp_through_the_mesh: {:.1?}",
        started.elapsed()
    );
    drop(pods);
    Ok(())
}

// ---------------------------------------------------------------------------
// No redirect loop; strait-init is idempotent
// ---------------------------------------------------------------------------

const OUT_REDIRECT: &str = "-A STRAIT_OUT_REDIRECT";
const PROXY_RETURN: &str = "--uid-owner 1337";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_redirect_loop_and_init_is_idempotent() -> Result<()> {
    if !skip_unless_root("no_redirect_loop_and_init_is_idempotent") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    mesh.apply(TOOLBOX_SERVICE)?;
    let pods =
        start_all(&mesh, vec![server_pod(APP_NS, "toolbox-0", &[("app", "toolbox")]), client_pod(APP_NS, "client")])
            .await?;
    let client = &pods[1];
    let ip = mesh.cluster_ip(APP_NS, "toolbox").await?;

    let before = client.nat_table(true)?;
    let (redirected0, proxy0) = (rule_packets(&before, OUT_REDIRECT)?, rule_packets(&before, PROXY_RETURN)?);
    // App connections: 1 (one gRPC channel, 20 calls) + 3 (TCP echo) + 2 (HTTP/1.1,
    // Connection: close) = 6. The nat table sees the first packet of each connection.
    calls(client, &format!("{ip}:50051"), &["--call", "echo/Unary", "--count", "20"]).await?;
    calls(client, &format!("{ip}:7000"), &["--protocol", "tcp-echo", "--count", "3"]).await?;
    calls(client, &format!("{ip}:80"), &["--protocol", "http1", "--count", "2"]).await?;
    let after = client.nat_table(true)?;
    let redirected = rule_packets(&after, OUT_REDIRECT)? - redirected0;
    let exempted = rule_packets(&after, PROXY_RETURN)? - proxy0;
    eprintln!("client pod: {redirected} connections redirected, {exempted} of the proxy's own exempted");
    assert_eq!(
        redirected, 6,
        "STRAIT_OUT_REDIRECT saw {redirected} new connections for 6 app connections: the proxy's own \
         connections must not be redirected\n{after}"
    );
    assert!(exempted >= 1, "the proxy made no upstream connection of its own?\n{after}");

    // Re-running strait-init exactly as injected changes nothing.
    for pod in &pods {
        let before = normalize_save(&pod.nat_table(false)?);
        let (status, log) = pod.rerun_init_container("strait-init").await?;
        assert!(status.success(), "second strait-init run in {} failed ({status}):\n{log}", pod.name);
        let after = normalize_save(&pod.nat_table(false)?);
        assert_eq!(before, after, "nat table of {} changed by a second strait-init run", pod.name);
        for jump in ["-j STRAIT_INBOUND", "-j STRAIT_OUTPUT"] {
            let n = after.lines().filter(|l| l.ends_with(jump)).count();
            assert_eq!(n, 1, "{} copies of the jump {jump:?} in {}:\n{after}", n, pod.name);
        }
    }
    // And the pods still work.
    calls(client, &format!("{ip}:50051"), &["--call", "echo/Unary", "--count", "5"]).await?;
    eprintln!("no_redirect_loop_and_init_is_idempotent: {:.1?}", started.elapsed());
    drop(pods);
    Ok(())
}

// ---------------------------------------------------------------------------
// SIGTERM to a server pod's sidecar during streaming calls
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_streams() -> Result<()> {
    if !skip_unless_root("sigterm_drains_in_flight_streams") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    mesh.apply(STREAMER_SERVICE)?;
    let mut pods = start_all(
        &mesh,
        vec![
            server_pod(APP_NS, "stream-a", &[("app", "streamer")]),
            server_pod(APP_NS, "stream-b", &[("app", "streamer")]),
            client_pod(APP_NS, "client"),
        ],
    )
    .await?;
    let target = format!("{}:50051", mesh.cluster_ip(APP_NS, "streamer").await?);
    let (client, a) = (&pods[2], &pods[0]);
    // Both replicas must serve the client's sidecar before the streams open: a replica
    // whose endpoint the sidecar does not know yet gets no stream, and then nothing is
    // left to drain (in one CI run all six landed on stream-b).
    strait_e2e::wait_for("unary calls answered by both replicas", Duration::from_secs(30), || async {
        let t = tally(&calls(client, &target, &["--call", "echo/Unary", "--count", "20"]).await?);
        Ok((t.contains_key("stream-a") && t.contains_key("stream-b")).then_some(()))
    })
    .await?;

    // 6 server streams of 20 messages, 100 ms apart (~2 s each), from 6 client
    // processes (6 connections to the client's sidecar, balanced over both replicas).
    const STREAMS: usize = 6;
    let stream_args =
        ["--call", "echo/ServerStream", "--stream-count", "20", "--delay-ms", "100", "--timeout-ms", "20000"];
    let stream_args: Vec<&str> = [&["--target", target.as_str()][..], &stream_args[..]].concat();
    let streams = futures::future::join_all((0..STREAMS).map(|_| client.run_client(&stream_args)));
    let terminate = async {
        // Terminate once every stream is in flight: both replicas' sidecars together
        // have started all of them (a stream lasts ~2 s, so they are still open).
        strait_e2e::wait_for(
            &format!("{STREAMS} streams started at the replicas"),
            Duration::from_secs(30),
            || async {
                let mut started = 0.0;
                for replica in [&pods[0], &pods[1]] {
                    let metrics = admin_get(replica, "/metrics").await?;
                    started += metric_sum(&metrics, "grpc_server_started_total", &[r#"grpc_method="ServerStream""#]);
                }
                Ok((started >= STREAMS as f64).then_some(()))
            },
        )
        .await?;
        let at_a = admin_get(a, "/metrics").await?;
        let stream = [r#"grpc_method="ServerStream""#];
        let in_flight_at_a = metric_sum(&at_a, "grpc_server_started_total", &stream)
            - metric_sum(&at_a, "grpc_server_handled_total", &stream);
        // What a pod deletion sets off at once: the EndpointSlice controller marks the
        // endpoint terminating, the kubelet sends SIGTERM.
        mesh.begin_termination(a).await?;
        a.sigterm("strait-proxy")?;
        let sent = Instant::now();
        // New calls once the client's sidecar no longer counts stream-a as ready.
        let (a_addr, b_addr) = (at(a.ip, 8080), at(pods[1].ip, 8080));
        strait_e2e::wait_for(
            "the client's sidecar to take stream-a out of rotation",
            Duration::from_secs(30),
            || async {
                let routes: Value = serde_json::from_str(&admin_get(client, "/routes").await?)?;
                let ready = ready_endpoints(&routes);
                Ok((!ready.contains(&a_addr) && ready.contains(&b_addr)).then_some(()))
            },
        )
        .await?;
        let fresh = calls(client, &target, &["--call", "echo/Unary", "--count", "20"]).await?;
        anyhow::Ok((sent, fresh, in_flight_at_a))
    };
    let (streams, terminated) = tokio::join!(streams, terminate);
    let (sigterm_at, fresh, in_flight_at_a) = terminated?;
    let streams: Vec<ClientLine> = streams.into_iter().map(|r| r.map(|mut l| l.remove(0))).collect::<Result<_>>()?;
    let outcome: BTreeMap<String, usize> = tally(&streams);
    eprintln!(
        "in-flight streams: {outcome:?} ({in_flight_at_a} open at stream-a at SIGTERM); new calls: {:?}",
        tally(&fresh)
    );
    assert!(streams.iter().all(|l| l.ok), "in-flight streams did not all finish OK: {outcome:?}");
    assert!(
        outcome.contains_key("stream-a"),
        "no stream was on the terminated replica, so draining was not exercised: {outcome:?}"
    );
    assert!(in_flight_at_a >= 1.0, "no stream was open at stream-a's sidecar when it got SIGTERM: {outcome:?}");
    only_backend(&fresh, "stream-b", "calls started after the termination");

    // The sidecar exits by itself once its connections are drained (well within
    // --drain-timeout, 10 s).
    let a = &mut pods[0];
    let status = a.wait_exit("strait-proxy", Duration::from_secs(15)).await?;
    assert!(status.success(), "terminated sidecar exited with {status}:\n{}", a.logs("strait-proxy"));
    eprintln!(
        "terminated sidecar exited {:.1?} after SIGTERM; sigterm_drains_in_flight_streams: {:.1?}",
        sigterm_at.elapsed(),
        started.elapsed()
    );
    let a = pods.remove(0);
    mesh.remove_pod(a).await?;
    drop(pods);
    Ok(())
}

/// The `addr` of every endpoint marked ready anywhere in a `/routes` dump.
fn ready_endpoints(routes: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![routes];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                if let (Some(Value::String(addr)), Some(Value::Bool(true))) = (o.get("addr"), o.get("ready")) {
                    found.push(addr.clone());
                }
                stack.extend(o.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    found
}

// ---------------------------------------------------------------------------
// strait-init fails loudly
// ---------------------------------------------------------------------------

/// The injected `strait-init` container of a pod, from the real `strait-injector
/// inject` CLI (no API server needed).
fn injected_init_container() -> Result<Value> {
    let bin = strait_e2e::injector::injector_bin()?;
    let pod = client_pod(APP_NS, "init-check");
    let mut child = std::process::Command::new(bin)
        .args(["inject", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, pod.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "strait-injector inject: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| anyhow::anyhow!("inject output is not YAML: {e}"))?;
    docs.iter()
        .flat_map(|d| d["spec"]["initContainers"].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == "strait-init")
        .context("no strait-init init container injected")
}

fn run_init(netns: &str, wrapper: &[&str], path: &str, init: &Value) -> Result<(bool, String)> {
    let (bin, args) = container_argv(init)?;
    // `env -i` so that only the container's PATH reaches strait-init (and `ip`, `env`
    // and the wrapper are still found through the test's own PATH).
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "env", "-i", &format!("PATH={path}")])
        .args(wrapper)
        .arg(&bin)
        .args(&args)
        .output()?;
    Ok((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}

#[test]
fn strait_init_fails_loudly() -> Result<()> {
    if !skip_unless_root("strait_init_fails_loudly") {
        return Ok(());
    }
    let init = injected_init_container()?;
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    // Not root: no capabilities at all.
    let ns = BareNetns::create()?;
    let (ok, out) =
        run_init(&ns.name, &["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--"], path, &init)?;
    assert!(!ok, "strait-init as nobody succeeded:\n{out}");
    assert!(out.contains("NET_ADMIN"), "the error does not name the missing capability:\n{out}");

    // Root, but NET_ADMIN not granted (the spec's capabilities minus NET_ADMIN).
    let (ok, out) =
        run_init(&ns.name, &["setpriv", "--inh-caps", "-all", "--bounding-set", "-all,+net_raw", "--"], path, &init)?;
    assert!(!ok, "strait-init without NET_ADMIN succeeded:\n{out}");
    assert!(out.contains("NET_ADMIN"), "the error does not name the missing capability:\n{out}");

    // No iptables in PATH.
    let (ok, out) = run_init(&ns.name, &[], "/nonexistent", &init)?;
    assert!(!ok, "strait-init without iptables in PATH succeeded:\n{out}");
    assert!(
        out.contains("iptables") && out.contains("not found in PATH"),
        "the error does not name the missing binary:\n{out}"
    );

    // Control: exactly the spec's capabilities (NET_ADMIN, NET_RAW) suffice.
    let (ok, out) = run_init(
        &ns.name,
        &["setpriv", "--inh-caps", "-all", "--bounding-set", "-all,+net_admin,+net_raw", "--"],
        path,
        &init,
    )?;
    assert!(ok, "strait-init with NET_ADMIN and NET_RAW failed:\n{out}");
    Ok(())
}

// ---------------------------------------------------------------------------
// IPv6: dual-stack and IPv6-only pods
// ---------------------------------------------------------------------------

const IN_REDIRECT: &str = "-A STRAIT_IN_REDIRECT";

/// A `strait-demo-server` pod listening on both families (`[::]` takes IPv4 too:
/// bindv6only is 0 in the pod).
fn any_family_server_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": APP_NS, "labels": {"app": name}},
        "spec": {"containers": [server_container("app", name, &[
            ("--grpc", "[::]:8080", "grpc", 8080),
            ("--http1", "[::]:8081", "http", 8081),
            ("--tcp-echo", "[::]:7000", "tcp-echo", 7000),
        ])]},
    })
}

fn at(ip: impl Into<std::net::IpAddr>, port: u16) -> String {
    std::net::SocketAddr::new(ip.into(), port).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_stack_pods_mesh_ipv6_in_and_out() -> Result<()> {
    if !skip_unless_root("dual_stack_pods_mesh_ipv6_in_and_out") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    let (server, client) = tokio::try_join!(
        mesh.start_pod_on(any_family_server_pod("dual-server-0"), PodNetwork::DualStack),
        mesh.start_pod_on(client_pod(APP_NS, "dual-client"), PodNetwork::DualStack),
    )?;
    let (v4, v6) = (server.ipv4.context("server IPv4")?, server.ipv6.context("server IPv6")?);
    // strait-init (--ipv6 auto) saw the global IPv6 address and meshed IPv6 too.
    let (client6, server6) = (client.ip6_nat_table(true)?, server.ip6_nat_table(true)?);
    let (out0, in0) = (rule_packets(&client6, OUT_REDIRECT)?, rule_packets(&server6, IN_REDIRECT)?);

    // Out over IPv6 (ip6tables → [::1]:15001, IP6T_SO_ORIGINAL_DST names the server)
    // and in over IPv6 (ip6tables → [::]:15006 → the app at the original port).
    let grpc = calls(&client, &at(v6, 8080), &["--call", "echo/Unary", "--count", "5"]).await?;
    only_backend(&grpc, "dual-server-0", "gRPC to the IPv6 pod IP");
    let echo = calls(&client, &at(v6, 7000), &["--protocol", "tcp-echo", "--count", "2"]).await?;
    for (i, l) in echo.iter().enumerate() {
        assert_eq!(l.message, format!("ping-{i}\n"), "TCP echo over IPv6");
    }
    let http = calls(&client, &at(v6, 8081), &["--protocol", "http1", "--count", "1"]).await?;
    assert!(
        http[0].message.starts_with("HTTP/1.1 200") && http[0].message.contains("hello from dual-server-0"),
        "HTTP/1.1 over IPv6: {:?}",
        http[0].message
    );
    let (client6, server6) = (client.ip6_nat_table(true)?, server.ip6_nat_table(true)?);
    let redirected_out = rule_packets(&client6, OUT_REDIRECT)? - out0;
    let redirected_in = rule_packets(&server6, IN_REDIRECT)? - in0;
    eprintln!("IPv6: {redirected_out} connections redirected out of the client, {redirected_in} into the server");
    // 1 gRPC channel + 2 TCP echo + 1 HTTP/1.1 (Connection: close): every app
    // connection went through the client's sidecar, none around it.
    assert_eq!(redirected_out, 4, "client's ip6tables redirects:\n{client6}");
    // The client's sidecar opens at least one upstream connection per protocol.
    assert!(redirected_in >= 3, "server's ip6tables saw {redirected_in} inbound connections:\n{server6}");

    // The kubelet's probe of the IPv6 pod IP (the IPv4 one passed before start_pod_on
    // returned).
    for path in ["/ready", "/live"] {
        let (code, body) = strait_e2e::http1_get(std::net::SocketAddr::new(v6.into(), 15020), path).await?;
        assert_eq!(code, 200, "GET [{v6}]:15020{path}: {body}");
    }
    // Re-running strait-init as injected leaves one copy of the IPv6 rules too.
    let before = normalize_save(&client.ip6_nat_table(false)?);
    let (status, log) = client.rerun_init_container("strait-init").await?;
    assert!(status.success(), "second strait-init run failed ({status}):\n{log}");
    let after = normalize_save(&client.ip6_nat_table(false)?);
    assert_eq!(before, after, "ip6tables nat table changed by a second strait-init run");
    for jump in ["-j STRAIT_INBOUND", "-j STRAIT_OUTPUT"] {
        assert_eq!(after.lines().filter(|l| l.ends_with(jump)).count(), 1, "{jump} in\n{after}");
    }
    // IPv4 still works alongside.
    let grpc4 = calls(&client, &at(v4, 8080), &["--call", "echo/Unary", "--count", "2"]).await?;
    only_backend(&grpc4, "dual-server-0", "gRPC to the IPv4 pod IP");
    eprintln!("dual_stack_pods_mesh_ipv6_in_and_out: {:.1?}", started.elapsed());
    drop((server, client));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ipv6_only_pods_start_and_call_each_other() -> Result<()> {
    if !skip_unless_root("ipv6_only_pods_start_and_call_each_other") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    // start_pod_on returns only after the kubelet's startup probe of [podIP]:15020
    // passed: with an IPv4-only probe listener an IPv6-only pod never starts.
    let (server, client) = tokio::try_join!(
        mesh.start_pod_on(any_family_server_pod("v6-server-0"), PodNetwork::Ipv6Only),
        mesh.start_pod_on(client_pod(APP_NS, "v6-client"), PodNetwork::Ipv6Only),
    )?;
    ensure!(server.ip.is_ipv6() && server.ipv4.is_none(), "server pod has IPv4: {:?}", server.ip);
    let v6 = server.ipv6.context("server IPv6")?;
    let client6 = client.ip6_nat_table(true)?;
    let out0 = rule_packets(&client6, OUT_REDIRECT)?;

    let grpc = calls(&client, &at(v6, 8080), &["--call", "echo/Unary", "--count", "5"]).await?;
    only_backend(&grpc, "v6-server-0", "gRPC between IPv6-only pods");
    let echo = calls(&client, &at(v6, 7000), &["--protocol", "tcp-echo", "--count", "1"]).await?;
    assert_eq!(echo[0].message, "ping-0\n", "TCP echo between IPv6-only pods");
    let redirected = rule_packets(&client.ip6_nat_table(true)?, OUT_REDIRECT)? - out0;
    assert_eq!(redirected, 2, "the calls did not all go through the client's sidecar");
    let (code, body) = strait_e2e::http1_get(std::net::SocketAddr::new(v6.into(), 15020), "/live").await?;
    assert_eq!(code, 200, "liveness probe over IPv6: {body}");
    eprintln!("ipv6_only_pods_start_and_call_each_other: {:.1?}", started.elapsed());
    drop((server, client));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_without_ipv6_listens_on_ipv4_and_says_why() -> Result<()> {
    if !skip_unless_root("proxy_without_ipv6_listens_on_ipv4_and_says_why") {
        return Ok(());
    }
    // A pod with IPv6 disabled: lo loses ::1, so [::1]:15001 cannot be bound.
    let ns = BareNetns::create()?;
    for key in ["all", "default", "lo"] {
        let out = netns_exec(&ns.name, &["sysctl", "-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")])?;
        ensure!(out.status.success(), "sysctl: {}", String::from_utf8_lossy(&out.stderr));
    }
    let config = tempfile::tempdir()?;
    let log_path = config.path().join("proxy.log");
    let mut proxy = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(binary_for_image("strait-proxy")?)
        .arg("--config-dir")
        .arg(config.path())
        // The injector's lists.
        .args(["--probe-addr", "0.0.0.0:15020,[::]:15020"])
        .env_remove("STRAIT_OUTBOUND_ADDR")
        .env_remove("STRAIT_INBOUND_ADDR")
        .env_remove("STRAIT_PROBE_ADDR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .kill_on_drop(true)
        .spawn()?;
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    let listening = loop {
        if let Some(status) = proxy.try_wait()? {
            anyhow::bail!("strait-proxy exited ({status}) in a pod without IPv6:\n{}", log());
        }
        let out = netns_exec(&ns.name, &["ss", "-Hltn"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let has = |a: &str| text.lines().any(|l| l.split_whitespace().nth(3) == Some(a));
        if has("127.0.0.1:15001") && has("0.0.0.0:15006") && has("0.0.0.0:15020") {
            break text;
        }
        ensure!(Instant::now() < deadline, "IPv4 listeners not up after 15 s:\n{text}\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!listening.contains("[::1]:15001"), "::1 bound without IPv6?\n{listening}");
    let text = log();
    assert!(
        text.contains("IPv6 unavailable") && text.contains("[::1]:15001"),
        "the skipped IPv6 listener is not logged:\n{text}"
    );
    proxy.kill().await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Inbound reaches only the original destination (issue 21, item 3)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbound_port_reaches_only_the_original_destination() -> Result<()> {
    if !skip_unless_root("inbound_port_reaches_only_the_original_destination") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    // The app's gRPC server is loopback-only (an admin or debug server) and sits on
    // 127.0.0.1:8080, the proxy's default --inbound-app-addr; HTTP/1.1 is public.
    let server = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "private-0", "namespace": APP_NS, "labels": {"app": "private"}},
        "spec": {"containers": [server_container("app", "private-0", &[
            ("--grpc", "127.0.0.1:8080", "grpc", 8080),
            ("--http1", "[::]:8081", "http", 8081),
        ])]},
    });
    let (server, client) = tokio::try_join!(
        mesh.start_pod_on(server, PodNetwork::DualStack),
        mesh.start_pod_on(client_pod(APP_NS, "prober"), PodNetwork::DualStack),
    )?;
    let (v4, v6) = (server.ipv4.context("IPv4")?, server.ipv6.context("IPv6")?);
    let unary = ["--call", "echo/Unary", "--count", "1", "--timeout-ms", "5000"];

    // The public port works through both sidecars (control).
    let http = calls(&client, &at(v4, 8081), &["--protocol", "http1", "--count", "1"]).await?;
    assert!(http[0].message.contains("hello from private-0"), "{:?}", http[0].message);

    // podIP:15006 is redirected to the inbound listener itself; it must not be served
    // as "explicit-mode inbound" to 127.0.0.1:8080. From a meshed pod, over both
    // families, and from outside any mesh (the root namespace, no sidecar of its own).
    for target in [at(v4, 15006), at(v6, 15006)] {
        let lines = client.run_client(&[&["--target", target.as_str()][..], &unary[..]].concat()).await?;
        assert!(!lines.is_empty() && lines.iter().all(|l| !l.ok), "{target} reached the loopback server: {lines:?}");
    }
    let out = tokio::process::Command::new(binary_for_image("strait-demo-client")?)
        .args(["--target", &at(v4, 15006)])
        .args(unary)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.is_empty() && !stdout.contains("\"ok\":true"),
        "an unmeshed peer reached the loopback server through {v4}:15006: {stdout}"
    );
    // Naming the loopback-only port itself reaches nothing either: the sidecar
    // forwards to the original destination (the pod IP), where nothing listens.
    let lines = client.run_client(&[&["--target", at(v4, 8080).as_str()][..], &unary[..]].concat()).await?;
    assert!(lines.iter().all(|l| !l.ok), "the pod IP's port 8080 reached the loopback server: {lines:?}");
    eprintln!("inbound_port_reaches_only_the_original_destination: {:.1?}", started.elapsed());
    drop((server, client));
    Ok(())
}

// ---------------------------------------------------------------------------
// Cluster-wide configuration changes keep the sidecar's connection to its app
// ---------------------------------------------------------------------------

/// GET `path` on the sidecar's admin endpoint (127.0.0.1:15000, loopback only) from
/// inside the pod's network namespace (without blocking the runtime: tests poll this
/// while client processes run in the same task).
async fn admin_get(pod: &MeshPod, path: &str) -> Result<String> {
    let url = format!("http://127.0.0.1:15000{path}");
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns, "curl", "-sS", "--fail", "--max-time", "5", &url])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("ip netns exec {} curl {url}", pod.netns))?;
    ensure!(out.status.success(), "curl {url} in {}: {}", pod.netns, String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sum of the samples of metric `name` whose labels contain every one of `labels`
/// (e.g. `grpc_method="ServerStream"`), from a Prometheus text exposition.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The configuration generation the pod's sidecar has applied.
async fn config_generation(pod: &MeshPod) -> Result<u64> {
    let text = admin_get(pod, "/metrics").await?;
    ensure!(text.contains("strait_config_generation"), "no strait_config_generation in /metrics:\n{text}");
    Ok(metric_sum(&text, "strait_config_generation", &[]) as u64)
}

/// The comment of the counting rule [`count_app_accepts`] installs.
const APP_ACCEPTS: &str = "strait-e2e: connections accepted by the app";

/// Installs, in `pod`'s namespace, a rule with no target that counts the SYNs reaching
/// `port` in INPUT: the connections the app's listener accepts. Inbound connections
/// from other pods are redirected to the sidecar's port 15006 before INPUT, so only
/// the sidecar's own connections to the app are counted.
fn count_app_accepts(pod: &MeshPod, port: u16) -> Result<()> {
    let port = port.to_string();
    let argv = ["iptables", "-I", "INPUT", "-p", "tcp", "--syn", "--dport", &port, "-m", "comment", "--comment"];
    let out = netns_exec(&pod.netns, &[&argv[..], &[APP_ACCEPTS]].concat())?;
    ensure!(out.status.success(), "iptables in {}: {}", pod.netns, String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The connections counted so far by [`count_app_accepts`].
fn app_accepts(pod: &MeshPod) -> Result<u64> {
    let out = netns_exec(&pod.netns, &["iptables-save", "-c", "-t", "filter"])?;
    ensure!(out.status.success(), "iptables-save in {}: {}", pod.netns, String::from_utf8_lossy(&out.stderr).trim());
    rule_packets(&String::from_utf8_lossy(&out.stdout), APP_ACCEPTS)
}

/// Step `i` of a cycle of unrelated Service changes: create, update (a new port, so the
/// compiled configuration changes), delete.
fn unrelated_service_change(mesh: &MeshCluster, i: usize) -> Result<()> {
    let name = format!("unrelated-{}", i / 3);
    let service = |port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {APP_NS}}}\n\
             spec:\n  selector: {{app: nobody}}\n  ports:\n    - {{name: grpc, port: {port}}}\n"
        )
    };
    match i % 3 {
        0 => mesh.apply(&service(9000)),
        1 => mesh.apply(&service(9100)),
        _ => {
            strait_e2e::injector::kubectl_ok(mesh.env(), &["delete", "service", "-n", APP_NS, &name], None)?;
            Ok(())
        }
    }
}

/// Issue 21, item 8: in Kubernetes mode every Service or route event anywhere in the
/// cluster publishes a new configuration, and each publish pruned the connection pool
/// to the routed endpoints — which leaves out the transparent inbound destination
/// (podIP:appPort), so every change closed the sidecar's connection to its own app.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unrelated_service_changes_keep_the_connection_to_the_app() -> Result<()> {
    if !skip_unless_root("unrelated_service_changes_keep_the_connection_to_the_app") {
        return Ok(());
    }
    let started = Instant::now();
    let mesh = MeshCluster::start().await?;
    mesh.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: pooled, namespace: app}\n\
         spec:\n  selector: {app: pooled}\n  ports:\n    - {name: grpc, port: 50051, targetPort: grpc}\n",
    )?;
    let pods =
        start_all(&mesh, vec![server_pod(APP_NS, "pooled-0", &[("app", "pooled")]), client_pod(APP_NS, "client")])
            .await?;
    let (server, client) = (&pods[0], &pods[1]);
    let target = format!("{}:50051", mesh.cluster_ip(APP_NS, "pooled").await?);
    count_app_accepts(server, 8080)?;

    let warmup = calls(client, &target, &["--call", "echo/Unary", "--count", "5"]).await?;
    only_backend(&warmup, "pooled-0", "warm-up calls");
    let before = app_accepts(server)?;
    assert!(before >= 1, "the counting rule saw no connection from the sidecar to the app on port 8080");

    // 21 changes (7 Services created, updated, deleted), each under load: a batch of
    // calls runs while the change is made and the server's sidecar applies it, so the
    // calls of every batch but the first come after at least one more publish.
    const CHANGES: usize = 21;
    const CALLS_PER_CHANGE: usize = 10;
    let per_change = CALLS_PER_CHANGE.to_string();
    let load_args = ["--call", "echo/Unary", "--count", &per_change, "--interval-ms", "20"];
    let mut answered = 0;
    for i in 0..CHANGES {
        let generation = config_generation(server).await?;
        let load = calls(client, &target, &load_args);
        let change = async {
            unrelated_service_change(&mesh, i)?;
            strait_e2e::wait_for(
                &format!("change {i} applied by the server's sidecar (generation > {generation})"),
                Duration::from_secs(30),
                || async { Ok((config_generation(server).await? > generation).then_some(())) },
            )
            .await
        };
        let (lines, applied) = tokio::join!(load, change);
        applied?;
        let lines = lines.with_context(|| format!("calls during change {i}"))?;
        only_backend(&lines, "pooled-0", "calls during the Service changes");
        answered += lines.len();
    }
    // And calls after the last publish.
    answered += calls(client, &target, &["--call", "echo/Unary", "--count", "5"]).await?.len();
    let after = app_accepts(server)?;
    eprintln!(
        "{answered} calls answered across {CHANGES} Service changes; the app accepted {before} connection(s) \
         before and {after} after; unrelated_service_changes_keep_the_connection_to_the_app: {:.1?}",
        started.elapsed()
    );
    assert_eq!(answered, CHANGES * CALLS_PER_CHANGE + 5);
    assert_eq!(
        after,
        before,
        "the server's sidecar opened {} new connection(s) to its app during {CHANGES} unrelated Service changes",
        after - before
    );
    drop(pods);
    Ok(())
}
