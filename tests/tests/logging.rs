//! Log output of the real binaries when standard error is not a terminal — as in a
//! pod, where the container runtime writes it to a file that `kubectl logs` and log
//! collectors read: no ANSI colour escape sequences (`ESC[2m…ESC[0m`) in any line.
//!
//! Each binary runs with standard error piped to the test, `NO_COLOR` unset (so only
//! the terminal check can keep the colour out), until it has logged a line this test
//! knows it logs at start-up; then it is killed and its output searched for the ESC
//! byte (0x1b).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use strait_e2e::injector::{injector_serve_command, self_signed_pair};
use strait_e2e::{free_addrs, proxy_bin, target_bin};

const ESC: u8 = 0x1b;
/// Generous: a debug build on a busy machine.
const STARTUP: Duration = Duration::from_secs(30);

/// Runs `cmd` with stderr piped until its stderr contains `marker` (or it exits, or
/// `STARTUP` passes), kills it and returns everything it wrote to stderr.
fn stderr_until(mut cmd: Command, marker: &str) -> Result<String> {
    cmd.env_remove("NO_COLOR").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut pipe = child.stderr.take().context("stderr pipe")?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends at EOF, i.e. when the child exits (or is killed).
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                if let Ok(mut s) = seen.lock() {
                    s.extend_from_slice(&buf[..n]);
                }
            }
        })
    };
    let deadline = Instant::now() + STARTUP;
    let found = loop {
        let text = seen.lock().map(|s| String::from_utf8_lossy(&s).into_owned()).unwrap_or_default();
        if text.contains(marker) {
            break true;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    child.wait()?;
    reader.join().map_err(|_| anyhow::anyhow!("stderr reader panicked"))?;
    let bytes = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if !found {
        bail!("{cmd:?} never logged {marker:?}; stderr:\n{text}");
    }
    Ok(text)
}

/// Every line holding the escape byte, for the failure message.
fn lines_with_escapes(text: &str) -> Vec<String> {
    text.lines().filter(|l| l.as_bytes().contains(&ESC)).map(|l| l.escape_debug().to_string()).collect()
}

fn assert_plain(binary: &str, text: &str) {
    let bad = lines_with_escapes(text);
    assert!(bad.is_empty(), "{binary}: {} log line(s) with ANSI escapes on a pipe:\n{}", bad.len(), bad.join("\n"));
    // Plain lines still carry the level and the message.
    assert!(text.lines().any(|l| l.contains(" INFO ")), "{binary}: no INFO line in:\n{text}");
}

#[test]
fn proxy_logs_no_colour_codes_to_a_pipe() -> Result<()> {
    let config = tempfile::tempdir()?;
    let addrs = free_addrs(3)?;
    let mut cmd = Command::new(proxy_bin()?);
    cmd.arg("--config-dir")
        .arg(config.path())
        .args(["--outbound-addr", &addrs[0].to_string()])
        .args(["--inbound-addr", &addrs[1].to_string()])
        .args(["--admin-addr", &addrs[2].to_string()])
        .args(["--log-level", "info"])
        .env_remove("KUBECONFIG")
        .env_remove("STRAIT_LOG_FORMAT")
        .env_remove("STRAIT_PROBE_ADDR");
    let text = stderr_until(cmd, "initial configuration published")?;
    assert_plain("strait-proxy", &text);
    Ok(())
}

#[test]
fn injector_logs_no_colour_codes_to_a_pipe() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed_pair(dir.path())?;
    let cmd = injector_serve_command(free_addrs(1)?[0], &cert, &key, &["--log-level", "info"])?;
    let text = stderr_until(cmd, "strait-injector serving")?;
    assert_plain("strait-injector", &text);
    Ok(())
}

#[test]
fn controller_logs_no_colour_codes_to_a_pipe() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A cluster that is not there: the controller starts (and logs) all the same, and
    // then logs its failed attempts to reach it.
    let dead = free_addrs(1)?[0];
    let kubeconfig = write_kubeconfig(dir.path(), &format!("https://{dead}"))?;
    let mut cmd = Command::new(target_bin("strait-controller", "STRAIT_CONTROLLER_BIN")?);
    cmd.args(["--health-addr", &free_addrs(1)?[0].to_string()])
        .args(["--namespace", "strait-system", "--identity", "logging-test", "--log-level", "info"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
    let text = stderr_until(cmd, "strait-controller starting")?;
    assert_plain("strait-controller", &text);
    Ok(())
}

fn write_kubeconfig(dir: &Path, server: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("kubeconfig");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\n\
         users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
    );
    std::fs::write(&path, yaml).context("writing the kubeconfig")?;
    Ok(path)
}
