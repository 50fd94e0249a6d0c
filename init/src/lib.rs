//! strait-init: applies (or removes) the pod's redirection rules with
//! `iptables-restore`, one atomic batch per address family.
//!
//! The design names the `iptables` crate; it runs one `iptables` process per rule,
//! so a failure midway leaves a pod half-meshed and a re-run appends duplicates.
//! `iptables-restore --noflush` commits a whole batch or nothing, which is what a pod
//! that must never start half-meshed needs, so strait-init drives it directly.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use strait_iptables::{Existing, Family, Redirect, cleanup, install, parse_save};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} not found in PATH: the init image must ship iptables (legacy or nft)")]
    MissingBinary(String),
    #[error("{cmd} failed: {stderr}{hint}")]
    Command { cmd: String, stderr: String, hint: &'static str },
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("rules were applied but {0} does not show them")]
    Verify(String),
}

/// Which iptables backend to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Rules already present decide; nft when there are none.
    Auto,
    Legacy,
    Nft,
}

fn binary(family: Family, mode: Mode, tool: &str) -> String {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    match mode {
        Mode::Legacy => format!("{base}-legacy-{tool}"),
        Mode::Nft | Mode::Auto => format!("{base}-nft-{tool}"),
    }
}

pub fn in_path(cmd: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file())).unwrap_or(false)
}

const PERMISSION_HINT: &str = " (strait-init needs the NET_ADMIN and NET_RAW capabilities)";

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    if !in_path(cmd) {
        return Err(InitError::MissingBinary(cmd.to_owned()));
    }
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn { cmd: cmd.to_owned(), source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(|source| InitError::Spawn { cmd: cmd.to_owned(), source })?;
    }
    let out = child.wait_with_output().map_err(|source| InitError::Spawn { cmd: cmd.to_owned(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let lower = stderr.to_lowercase();
        let hint = if lower.contains("permission denied") || lower.contains("operation not permitted") {
            PERMISSION_HINT
        } else {
            ""
        };
        return Err(InitError::Command { cmd: format!("{cmd} {}", args.join(" ")), stderr, hint });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Counts rules in a full save; used to tell which backend a host already uses.
fn rule_count(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Resolves `Auto`: the backend that already holds rules wins (mixing backends makes
/// rules invisible to each other); nft otherwise.
pub fn resolve_mode(mode: Mode) -> Mode {
    if mode != Mode::Auto {
        return mode;
    }
    let count = |m: Mode| {
        let save = binary(Family::V4, m, "save");
        if !in_path(&save) {
            return None;
        }
        run(&save, &[], None).ok().map(|s| rule_count(&s))
    };
    match (count(Mode::Legacy), count(Mode::Nft)) {
        (Some(l), Some(n)) if l > 0 && n == 0 => Mode::Legacy,
        (Some(_), None) => Mode::Legacy,
        _ => Mode::Nft,
    }
}

/// True when the pod has a global IPv6 address (then ip6tables rules are needed too).
pub fn has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|s| {
            s.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // Scope 00 = global; the loopback ::1 has scope 10.
                f.len() >= 6 && f[3] == "00" && f[0] != "00000000000000000000000000000001"
            })
        })
        .unwrap_or(false)
}

pub fn existing(family: Family, mode: Mode) -> Result<Existing, InitError> {
    Ok(parse_save(&run(&binary(family, mode, "save"), &["-t", "nat"], None)?))
}

/// Installs the rules for `family`; verifies they are there afterwards.
pub fn apply(r: &Redirect, family: Family, mode: Mode) -> Result<String, InitError> {
    let before = existing(family, mode)?;
    let rules = install(r, family, &before);
    run(&binary(family, mode, "restore"), &["--noflush"], Some(&rules))?;
    let after = existing(family, mode)?;
    if after.chains.len() != 4 || !after.jump_inbound || !after.jump_output {
        return Err(InitError::Verify(binary(family, mode, "save")));
    }
    Ok(rules)
}

/// Removes Strait's rules for `family`; true when something was removed.
pub fn remove(family: Family, mode: Mode) -> Result<bool, InitError> {
    let before = existing(family, mode)?;
    match cleanup(&before) {
        None => Ok(false),
        Some(text) => {
            run(&binary(family, mode, "restore"), &["--noflush"], Some(&text))?;
            Ok(true)
        }
    }
}
