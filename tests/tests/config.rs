//! Live configuration: route changes under traffic and broken files.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_e2e::{Mesh, NS, Tally, authority, probe, services_yaml, wait_for};
use tonic::Code;

/// How long a configuration change may take to show up before a test gives up: a
/// deadline for a condition, far above the usual ~250 ms (config poll), so a machine
/// busy with other work does not fail the test.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);

fn live_route(backend: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: live-route
  namespace: app
spec:
  parentRefs:
    - {{group: "", kind: Service, name: live-service, port: 50051}}
  rules:
    - matches:
        - method: {{service: strait.test.v1.Echo}}
      backendRefs:
        - {{name: {backend}, port: 50051}}
"#
    )
}

/// What the traffic task saw: completion time and answering backend of each
/// successful call, plus every failure.
#[derive(Default)]
struct Observed {
    answers: Vec<(Instant, String)>,
    failures: Vec<String>,
}

/// Continuous unary calls while the route is rewritten 10 times, alternating
/// its backend: no call may fail, both backends must answer, and every switch
/// must take effect. Prints how long each switch took to show up in traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_under_traffic_loses_no_calls() -> Result<()> {
    const SWITCHES: usize = 10;
    // Traffic runs until every switch was seen; these only bound a test that hangs.
    const MAX_CALLS: usize = 50_000;
    const MAX_TRAFFIC: Duration = Duration::from_secs(600);
    const SWITCH_EVERY: Duration = Duration::from_millis(300);

    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["live-service", "live-a", "live-b"]))?;
    mesh.spawn(NS, "live-a", "live-a").await?;
    mesh.spawn(NS, "live-b", "live-b").await?;
    mesh.write_endpoints()?;
    mesh.write("route.yaml", &live_route("live-a"))?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let mut client = EchoClient::new(proxy.channel(&authority("live-service", NS)).await?);
    assert_eq!(client.unary(probe("warm-up")).await?.into_inner().backend, "live-a");

    let observed = Arc::new(Mutex::new(Observed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (observed, stop) = (observed.clone(), stop.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut calls = 0;
            while !stop.load(Ordering::Relaxed) && calls < MAX_CALLS && started.elapsed() < MAX_TRAFFIC {
                let result = client.unary(probe(&format!("live-{calls}"))).await;
                calls += 1;
                {
                    let mut o = observed.lock().expect("lock");
                    match result {
                        Ok(r) => o.answers.push((Instant::now(), r.into_inner().backend)),
                        Err(s) => o.failures.push(format!("call {calls}: {:?} {}", s.code(), s.message())),
                    }
                }
                // Paced: a steady stream of calls, not a flood.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            calls
        })
    };

    let mut latencies = Vec::new();
    for i in 0..SWITCHES {
        let target = if i % 2 == 0 { "live-b" } else { "live-a" };
        let written = Instant::now();
        mesh.write("route.yaml", &live_route(target))?;
        let seen = wait_for(&format!("switch {i} to {target}"), CHANGE_DEADLINE, || {
            let observed = observed.clone();
            let traffic_done = traffic.is_finished();
            async move {
                let o = observed.lock().expect("lock");
                let hit = o.answers.iter().find(|(t, b)| *t >= written && b == target).map(|(t, _)| *t);
                if hit.is_none() && traffic_done {
                    bail!("traffic task stopped (call or time cap) before the switch was observed");
                }
                Ok(hit)
            }
        })
        .await?;
        latencies.push(seen - written);
        let next = written + SWITCH_EVERY;
        tokio::time::sleep_until(next.into()).await;
    }
    stop.store(true, Ordering::Relaxed);
    let calls = traffic.await?;

    let o = observed.lock().expect("lock");
    let mut tally = Tally::default();
    for (_, b) in &o.answers {
        *tally.backends.entry(b.clone()).or_default() += 1;
    }
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let median = (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0;
    println!(
        "route change -> first call answered by the new backend ({} switches, config poll 250ms): \
         median {median:.1} ms, max {:.1} ms, min {:.1} ms; all: {:?}",
        ms.len(),
        ms[ms.len() - 1],
        ms[0],
        ms.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>()
    );
    println!("traffic: {calls} calls, {tally}, {} failed", o.failures.len());
    assert!(o.failures.is_empty(), "{} calls failed during route changes: {:?}", o.failures.len(), o.failures);
    assert!(tally.answered_by("live-a") > 0 && tally.answered_by("live-b") > 0, "{tally}");
    assert_eq!(o.answers.len(), calls);
    Ok(())
}

fn pinned_route(backend: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: pinned
  namespace: app
spec:
  parentRefs:
    - group: ""
      kind: Service
      name: front
      port: 50051
  rules:
    - backendRefs:
        - name: {backend}
          port: 50051
"#
    )
}

async fn answered_by(client: &mut EchoClient<tonic::transport::Channel>) -> Result<String> {
    Ok(client.unary(probe("x")).await?.into_inner().backend)
}

/// A file that stops parsing keeps its last good resources in effect and is
/// named in `/routes` `sourceErrors`; fixing it clears the error and applies
/// the new content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_keeps_last_good_state() -> Result<()> {
    let mut mesh = Mesh::new()?;
    mesh.write("services.yaml", &services_yaml(NS, &["front", "back-a", "back-b"]))?;
    mesh.spawn(NS, "back-a", "back-a").await?;
    mesh.spawn(NS, "back-b", "back-b").await?;
    mesh.write_endpoints()?;
    mesh.write("route.yaml", &pinned_route("back-a"))?;
    let proxy = mesh.start_proxy(NS, &[]).await?;
    let mut client = EchoClient::new(proxy.channel(&authority("front", NS)).await?);
    assert_eq!(answered_by(&mut client).await?, "back-a");
    let v0 = proxy.admin_json("/routes").await?["version"].as_u64().unwrap_or(0);

    // Broken YAML that, had it parsed, would have pointed the route at back-b.
    let broken = pinned_route("back-b").replace("  rules:\n", "  rules:\n  - [unclosed\n");
    mesh.write("route.yaml", &broken)?;
    let error = wait_for("sourceErrors to name route.yaml", CHANGE_DEADLINE, || async {
        let routes = proxy.admin_json("/routes").await?;
        let errors = routes["sourceErrors"].as_object().cloned().unwrap_or_default();
        Ok(errors.iter().find(|(file, _)| file.ends_with("route.yaml")).map(|(f, e)| format!("{f}: {e}")))
    })
    .await?;
    println!("reported: {error}");
    let routes = proxy.admin_json("/routes").await?;
    assert!(routes["version"].as_u64().unwrap_or(0) > v0, "a new generation carries the error");
    assert!(
        routes["routing"]["routeStatuses"].as_array().is_some_and(|a| a.iter().any(|s| s["route"]["name"] == "pinned")),
        "the last good route stays: {routes}"
    );
    for _ in 0..20 {
        assert_eq!(answered_by(&mut client).await?, "back-a", "last good state must stay in effect");
    }

    // Fix it, now pointing at back-b.
    mesh.write("route.yaml", &pinned_route("back-b"))?;
    wait_for("sourceErrors to clear", CHANGE_DEADLINE, || async {
        let routes = proxy.admin_json("/routes").await?;
        Ok(routes["sourceErrors"].as_object().is_some_and(|e| e.is_empty()).then_some(()))
    })
    .await?;
    wait_for("traffic to reach back-b", CHANGE_DEADLINE, || {
        let mut client = client.clone();
        async move { Ok((answered_by(&mut client).await? == "back-b").then_some(())) }
    })
    .await?;
    for _ in 0..20 {
        assert_eq!(answered_by(&mut client).await?, "back-b");
    }

    // Deleting the route file removes the route: the Service's default rule
    // sends traffic to front's own endpoints, of which there are none.
    mesh.remove("route.yaml")?;
    wait_for("removed route to take effect", CHANGE_DEADLINE, || {
        let mut client = client.clone();
        async move {
            match client.unary(probe("x")).await {
                Err(s) if s.code() == Code::Unavailable => Ok(Some(())),
                _ => Ok(None),
            }
        }
    })
    .await?;
    Ok(())
}
