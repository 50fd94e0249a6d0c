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
        return Err(command_error(cmd, args, stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A failed command's error: names the capabilities when the kernel refused.
fn command_error(cmd: &str, args: &[&str], stderr: String) -> InitError {
    let lower = stderr.to_lowercase();
    let hint = if lower.contains("permission denied") || lower.contains("operation not permitted") {
        PERMISSION_HINT
    } else {
        ""
    };
    InitError::Command { cmd: format!("{cmd} {}", args.join(" ")).trim_end().to_owned(), stderr, hint }
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
    choose_mode(count(Mode::Legacy), count(Mode::Nft))
}

/// `Auto` given the rule counts of each backend's save (`None`: that backend's tools
/// are missing or failed).
fn choose_mode(legacy: Option<usize>, nft: Option<usize>) -> Mode {
    match (legacy, nft) {
        (Some(l), Some(n)) if l > 0 && n == 0 => Mode::Legacy,
        (Some(_), None) => Mode::Legacy,
        _ => Mode::Nft,
    }
}

/// True when the pod has a global IPv6 address (then ip6tables rules are needed too).
pub fn has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").map(|s| has_global_ipv6(&s)).unwrap_or(false)
}

/// Reads `/proc/net/if_inet6` (address, ifindex, prefix length, scope, flags, device):
/// true when some address has global scope (`00`; unique-local `fd..` addresses count,
/// link-local `fe80::` is scope `20`, loopback `::1` scope `10`). A tentative address
/// (still in duplicate address detection) counts: it is the pod's, just not usable yet.
pub fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 6 && f[3] == "00" && f[0] != "00000000000000000000000000000001"
    })
}

/// The families to mesh for `--ipv6 on|off|auto`; `auto` asks `has_ipv6` (IPv4 is
/// always meshed: even an IPv6-only pod has 127.0.0.1 and may dial IPv4 ClusterIPs).
pub fn families(ipv6: &str, has_ipv6: impl FnOnce() -> bool) -> Vec<Family> {
    let v6 = match ipv6 {
        "on" => true,
        "off" => false,
        _ => has_ipv6(),
    };
    if v6 { vec![Family::V4, Family::V6] } else { vec![Family::V4] }
}

/// After a restore: all four chains and both jumps must be in the save, or the kernel
/// (or another writer) did not take the batch.
fn verify(after: &Existing, save_cmd: String) -> Result<(), InitError> {
    if after.chains.len() != 4 || !after.jump_inbound || !after.jump_output {
        return Err(InitError::Verify(save_cmd));
    }
    Ok(())
}

pub fn existing(family: Family, mode: Mode) -> Result<Existing, InitError> {
    Ok(parse_save(&run(&binary(family, mode, "save"), &["-t", "nat"], None)?))
}

/// Installs the rules for `family`; verifies they are there afterwards.
pub fn apply(r: &Redirect, family: Family, mode: Mode) -> Result<String, InitError> {
    let before = existing(family, mode)?;
    let rules = install(r, family, &before);
    run(&binary(family, mode, "restore"), &["--noflush"], Some(&rules))?;
    verify(&existing(family, mode)?, binary(family, mode, "save"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    // /proc/net/if_inet6 lines as the kernel prints them.
    const LOOPBACK: &str = "00000000000000000000000000000001 01 80 10 80       lo";
    const LINK_LOCAL: &str = "fe80000000000000b8a0fffe1c2d3e4f 02 40 20 80     eth0";
    const ULA_TENTATIVE: &str = "fd525452000700000000000000000003 02 40 00 c0     eth0";
    const GLOBAL: &str = "20010db8000000000000000000000005 02 40 00 80     eth0";

    #[test]
    fn ipv6_is_meshed_only_with_a_global_address() {
        assert!(!has_global_ipv6(""), "no IPv6 at all (ipv6.disable=1: the file is missing or empty)");
        assert!(!has_global_ipv6(LOOPBACK), "loopback alone is not IPv6 connectivity");
        assert!(!has_global_ipv6(&format!("{LOOPBACK}\n{LINK_LOCAL}")), "link-local only: IPv4-only pod");
        assert!(has_global_ipv6(&format!("{LOOPBACK}\n{LINK_LOCAL}\n{GLOBAL}")));
        // A unique-local pod address still in DAD (flags c0 = tentative|permanent) is
        // the pod's: its connections must be redirected once it is usable.
        assert!(has_global_ipv6(ULA_TENTATIVE));
        assert!(!has_global_ipv6("garbage 00"), "short lines are ignored, not misread");
    }

    #[test]
    fn ipv6_flag_decides_the_families() {
        let never = || -> bool { panic!("auto only consults the pod's addresses") };
        assert_eq!(families("on", never), [Family::V4, Family::V6]);
        assert_eq!(families("off", never), [Family::V4]);
        assert_eq!(families("auto", || true), [Family::V4, Family::V6]);
        assert_eq!(families("auto", || false), [Family::V4]);
    }

    #[test]
    fn auto_mode_follows_the_backend_that_holds_rules() {
        // A host on legacy iptables (rules there, none in nft): adding nft rules would
        // be invisible to it, so legacy.
        assert_eq!(choose_mode(Some(12), Some(0)), Mode::Legacy);
        // Only the legacy tools exist.
        assert_eq!(choose_mode(Some(0), None), Mode::Legacy);
        // Rules in nft, or in both, or nowhere: nft.
        assert_eq!(choose_mode(Some(0), Some(3)), Mode::Nft);
        assert_eq!(choose_mode(Some(4), Some(3)), Mode::Nft);
        assert_eq!(choose_mode(Some(0), Some(0)), Mode::Nft);
        assert_eq!(choose_mode(None, None), Mode::Nft);
        assert_eq!(resolve_mode(Mode::Legacy), Mode::Legacy, "an explicit mode is never probed");
        assert_eq!(rule_count("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j X\n-A PREROUTING -j Y\nCOMMIT\n"), 2);
    }

    #[test]
    fn binaries_per_family_and_backend() {
        assert_eq!(binary(Family::V4, Mode::Nft, "restore"), "iptables-nft-restore");
        assert_eq!(binary(Family::V6, Mode::Nft, "save"), "ip6tables-nft-save");
        assert_eq!(binary(Family::V6, Mode::Legacy, "restore"), "ip6tables-legacy-restore");
        assert_eq!(binary(Family::V4, Mode::Auto, "save"), "iptables-nft-save", "unresolved auto is nft");
    }

    #[test]
    fn errors_name_the_cause() {
        let denied = command_error(
            "ip6tables-nft-restore",
            &["--noflush"],
            "ip6tables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied".into(),
        )
        .to_string();
        assert!(denied.starts_with("ip6tables-nft-restore --noflush failed: "), "{denied}");
        assert!(denied.ends_with("(strait-init needs the NET_ADMIN and NET_RAW capabilities)"), "{denied}");
        let eperm = command_error("iptables-legacy-save", &[], "Operation not permitted".into()).to_string();
        assert!(eperm.contains("NET_ADMIN") && eperm.starts_with("iptables-legacy-save failed"), "{eperm}");
        let syntax = command_error("iptables-nft-restore", &["--noflush"], "line 3 failed".into()).to_string();
        assert!(!syntax.contains("NET_ADMIN"), "no capability hint for other failures: {syntax}");
        assert_eq!(
            InitError::MissingBinary("ip6tables-nft-restore".into()).to_string(),
            "ip6tables-nft-restore not found in PATH: the init image must ship iptables (legacy or nft)"
        );
        let missing = run("strait-init-test-no-such-binary", &[], None).expect_err("not in PATH");
        assert!(matches!(missing, InitError::MissingBinary(ref b) if b == "strait-init-test-no-such-binary"));
    }

    #[test]
    fn verification_wants_every_chain_and_both_jumps() {
        let full = parse_save(
            "*nat\n:STRAIT_INBOUND - [0:0]\n:STRAIT_IN_REDIRECT - [0:0]\n:STRAIT_OUTPUT - [0:0]\n\
             :STRAIT_OUT_REDIRECT - [0:0]\n-A PREROUTING -p tcp -j STRAIT_INBOUND\n-A OUTPUT -p tcp -j STRAIT_OUTPUT\nCOMMIT\n",
        );
        assert!(verify(&full, "ip6tables-nft-save".into()).is_ok());
        let mut no_jump = full.clone();
        no_jump.jump_output = false;
        let err = verify(&no_jump, "ip6tables-nft-save".into()).expect_err("missing jump");
        assert_eq!(err.to_string(), "rules were applied but ip6tables-nft-save does not show them");
        let mut missing_chain = full;
        missing_chain.chains.pop();
        assert!(verify(&missing_chain, "iptables-nft-save".into()).is_err());
    }
}
