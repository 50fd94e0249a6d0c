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
    APP_NS, BareNetns, CLIENT_NS, ClientLine, MeshCluster, MeshPod, client_pod, container_argv, normalize_save,
    rule_packets, server_container, server_pod, tally,
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
        tokio::time::sleep(Duration::from_millis(800)).await;
        // What a pod deletion sets off at once: the EndpointSlice controller marks the
        // endpoint terminating, the kubelet sends SIGTERM.
        mesh.begin_termination(a).await?;
        a.sigterm("strait-proxy")?;
        let sent = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fresh = calls(client, &target, &["--call", "echo/Unary", "--count", "20"]).await?;
        anyhow::Ok((sent, fresh))
    };
    let (streams, terminated) = tokio::join!(streams, terminate);
    let (sigterm_at, fresh) = terminated?;
    let streams: Vec<ClientLine> = streams.into_iter().map(|r| r.map(|mut l| l.remove(0))).collect::<Result<_>>()?;
    let outcome: BTreeMap<String, usize> = tally(&streams);
    eprintln!("in-flight streams: {outcome:?}; new calls: {:?}", tally(&fresh));
    assert!(streams.iter().all(|l| l.ok), "in-flight streams did not all finish OK: {outcome:?}");
    assert!(
        outcome.contains_key("stream-a"),
        "no stream was on the terminated replica, so draining was not exercised: {outcome:?}"
    );
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
