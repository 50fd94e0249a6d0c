//! The iptables rules that mesh a pod, generated as text for `iptables-restore
//! --noflush` so they apply atomically (all or nothing, one kernel commit).
//!
//! Idempotence: the restore input declares Strait's chains (which flushes them) and
//! adds the jumps from the built-in chains only when `iptables-save` shows they are
//! missing. Running twice leaves one copy. Cleanup deletes exactly the jumps present
//! and then the chains.
//!
//! Chains (nat table):
//! - `STRAIT_INBOUND` (from PREROUTING): skipped ports return, everything else TCP goes
//!   to `STRAIT_IN_REDIRECT` → REDIRECT to the inbound port.
//! - `STRAIT_OUTPUT` (from OUTPUT): the proxy's own traffic (its UID) returns, so the
//!   proxy never loops; loopback, skipped ports and CIDRs return; everything else TCP
//!   goes to `STRAIT_OUT_REDIRECT` → REDIRECT to the outbound port.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::IpAddr;

pub const CHAIN_INBOUND: &str = "STRAIT_INBOUND";
pub const CHAIN_IN_REDIRECT: &str = "STRAIT_IN_REDIRECT";
pub const CHAIN_OUTPUT: &str = "STRAIT_OUTPUT";
pub const CHAIN_OUT_REDIRECT: &str = "STRAIT_OUT_REDIRECT";
const CHAINS: [&str; 4] = [CHAIN_INBOUND, CHAIN_IN_REDIRECT, CHAIN_OUTPUT, CHAIN_OUT_REDIRECT];

const JUMP_INBOUND: &str = "-A PREROUTING -p tcp -m comment --comment \"strait: inbound to sidecar\" -j STRAIT_INBOUND";
const JUMP_OUTPUT: &str = "-A OUTPUT -p tcp -m comment --comment \"strait: outbound to sidecar\" -j STRAIT_OUTPUT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A CIDR, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("invalid port {0:?} (1..65535)")]
    Port(String),
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    #[error("invalid UID {0:?}")]
    Uid(String),
    #[error("inbound and outbound ports must differ (both {0})")]
    SamePorts(u16),
}

impl std::str::FromStr for Cidr {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| RuleError::Cidr(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| RuleError::Cidr(s.to_owned()))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// Parses `80,443` (empty = none).
pub fn parse_ports(s: &str) -> Result<Vec<u16>, RuleError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u16>().ok().filter(|n| *n != 0).ok_or_else(|| RuleError::Port(p.to_owned())))
        .collect()
}

pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, RuleError> {
    s.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::parse).collect()
}

/// What to redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl Redirect {
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.inbound_port == self.outbound_port {
            return Err(RuleError::SamePorts(self.inbound_port));
        }
        for p in [self.inbound_port, self.outbound_port] {
            if p == 0 {
                return Err(RuleError::Port("0".into()));
            }
        }
        Ok(())
    }
}

/// Which of Strait's objects an `iptables-save -t nat` dump already holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: Vec<String>,
    pub jump_inbound: bool,
    pub jump_output: bool,
}

impl Existing {
    pub fn any(&self) -> bool {
        !self.chains.is_empty() || self.jump_inbound || self.jump_output
    }
}

/// Reads the nat table of an `iptables-save` dump.
pub fn parse_save(save: &str) -> Existing {
    let mut out = Existing::default();
    let mut in_nat = false;
    for line in save.lines() {
        let line = line.trim();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(chain) = line.strip_prefix(':') {
            let name = chain.split_whitespace().next().unwrap_or_default();
            if CHAINS.contains(&name) {
                out.chains.push(name.to_owned());
            }
        } else if line.starts_with("-A PREROUTING") && line.ends_with("-j STRAIT_INBOUND") {
            out.jump_inbound = true;
        } else if line.starts_with("-A OUTPUT") && line.ends_with("-j STRAIT_OUTPUT") {
            out.jump_output = true;
        }
    }
    out
}

fn comment(s: &str) -> String {
    format!("-m comment --comment \"strait: {s}\"")
}

/// The restore input that installs (or refreshes) the rules for one family.
pub fn install(r: &Redirect, family: Family, existing: &Existing) -> String {
    let loopback = match family {
        Family::V4 => "127.0.0.1/32",
        Family::V6 => "::1/128",
    };
    let mut s = String::from("*nat\n");
    // Declaring a chain creates it, or flushes it if it exists: a re-run replaces.
    for c in CHAINS {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let _ = writeln!(
        s,
        "-A {CHAIN_IN_REDIRECT} -p tcp {} -j REDIRECT --to-ports {}",
        comment("to inbound listener"),
        r.inbound_port
    );
    let _ = writeln!(
        s,
        "-A {CHAIN_OUT_REDIRECT} -p tcp {} -j REDIRECT --to-ports {}",
        comment("to outbound listener"),
        r.outbound_port
    );
    for p in &r.skip_inbound_ports {
        let _ = writeln!(s, "-A {CHAIN_INBOUND} -p tcp --dport {p} {} -j RETURN", comment("inbound port skipped"));
    }
    let _ = writeln!(s, "-A {CHAIN_INBOUND} -p tcp {} -j {CHAIN_IN_REDIRECT}", comment("inbound TCP"));
    let _ = writeln!(
        s,
        "-A {CHAIN_OUTPUT} -m owner --uid-owner {} {} -j RETURN",
        r.proxy_uid,
        comment("the proxy's own traffic")
    );
    let _ = writeln!(s, "-A {CHAIN_OUTPUT} -o lo -d {loopback} {} -j RETURN", comment("loopback"));
    for p in &r.skip_outbound_ports {
        let _ = writeln!(s, "-A {CHAIN_OUTPUT} -p tcp --dport {p} {} -j RETURN", comment("outbound port skipped"));
    }
    for c in r.skip_outbound_cidrs.iter().filter(|c| (family == Family::V4) == c.addr.is_ipv4()) {
        let _ = writeln!(s, "-A {CHAIN_OUTPUT} -d {c} {} -j RETURN", comment("outbound CIDR skipped"));
    }
    let _ = writeln!(s, "-A {CHAIN_OUTPUT} -p tcp {} -j {CHAIN_OUT_REDIRECT}", comment("outbound TCP"));
    if !existing.jump_inbound {
        let _ = writeln!(s, "{JUMP_INBOUND}");
    }
    if !existing.jump_output {
        let _ = writeln!(s, "{JUMP_OUTPUT}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The restore input that removes everything `install` added (`None`: nothing to do).
pub fn cleanup(existing: &Existing) -> Option<String> {
    if !existing.any() {
        return None;
    }
    let mut s = String::from("*nat\n");
    if existing.jump_inbound {
        let _ = writeln!(s, "{}", JUMP_INBOUND.replacen("-A", "-D", 1));
    }
    if existing.jump_output {
        let _ = writeln!(s, "{}", JUMP_OUTPUT.replacen("-A", "-D", 1));
    }
    // Flush all first: a chain still referenced by another cannot be deleted.
    for c in &existing.chains {
        let _ = writeln!(s, "-F {c}");
    }
    for c in &existing.chains {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> Redirect {
        Redirect {
            proxy_uid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            skip_inbound_ports: vec![15000, 15020],
            skip_outbound_ports: vec![5432],
            skip_outbound_cidrs: parse_cidrs("10.0.0.0/8, fd00::/8").expect("cidrs"),
        }
    }

    #[test]
    fn install_rules() {
        let text = install(&redirect(), Family::V4, &Existing::default());
        let want = [
            ":STRAIT_INBOUND - [0:0]",
            "-A STRAIT_IN_REDIRECT -p tcp -m comment --comment \"strait: to inbound listener\" -j REDIRECT --to-ports 15006",
            "-A STRAIT_INBOUND -p tcp --dport 15000 -m comment --comment \"strait: inbound port skipped\" -j RETURN",
            "-A STRAIT_INBOUND -p tcp --dport 15020 -m comment --comment \"strait: inbound port skipped\" -j RETURN",
            "-A STRAIT_OUTPUT -m owner --uid-owner 1337 -m comment --comment \"strait: the proxy's own traffic\" -j RETURN",
            "-A STRAIT_OUTPUT -o lo -d 127.0.0.1/32 -m comment --comment \"strait: loopback\" -j RETURN",
            "-A STRAIT_OUTPUT -p tcp --dport 5432 -m comment --comment \"strait: outbound port skipped\" -j RETURN",
            "-A STRAIT_OUTPUT -d 10.0.0.0/8 -m comment --comment \"strait: outbound CIDR skipped\" -j RETURN",
            "-A STRAIT_OUT_REDIRECT -p tcp -m comment --comment \"strait: to outbound listener\" -j REDIRECT --to-ports 15001",
            JUMP_INBOUND,
            JUMP_OUTPUT,
            "COMMIT",
        ];
        for w in want {
            assert!(text.lines().any(|l| l == w), "missing {w:?} in\n{text}");
        }
        assert!(!text.contains("fd00::/8"), "v6 CIDR only in the v6 batch");
        // The UID exemption comes before any redirect in STRAIT_OUTPUT.
        let uid = text.find("--uid-owner").expect("uid");
        let redirect_jump = text.find("-j STRAIT_OUT_REDIRECT").expect("jump");
        assert!(uid < redirect_jump);
        let v6 = install(&redirect(), Family::V6, &Existing::default());
        assert!(v6.contains("-d ::1/128") && v6.contains("-d fd00::/8") && !v6.contains("10.0.0.0/8"));
    }

    #[test]
    fn rerun_is_idempotent_and_cleanup_removes_all() {
        // What iptables-save prints after the first install.
        let save = format!(
            "# Generated\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:STRAIT_INBOUND - [0:0]\n:STRAIT_IN_REDIRECT - [0:0]\n:STRAIT_OUTPUT - [0:0]\n:STRAIT_OUT_REDIRECT - [0:0]\n{JUMP_INBOUND}\n{JUMP_OUTPUT}\nCOMMIT\n"
        );
        let existing = parse_save(&save);
        assert_eq!(existing.chains.len(), 4);
        assert!(existing.jump_inbound && existing.jump_output);
        let again = install(&redirect(), Family::V4, &existing);
        assert!(!again.contains("-A PREROUTING") && !again.contains("-A OUTPUT "), "jumps not duplicated");
        let clean = cleanup(&existing).expect("something to clean");
        assert!(clean.contains("-D PREROUTING") && clean.contains("-D OUTPUT") && clean.contains("-X STRAIT_OUTPUT"));
        assert_eq!(cleanup(&parse_save("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")), None);
        // A jump in the filter table is not ours.
        assert!(!parse_save("*filter\n-A OUTPUT -p tcp -j STRAIT_OUTPUT\nCOMMIT\n").jump_output);
    }

    #[test]
    fn parsing_inputs() {
        assert_eq!(parse_ports("80, 443,,"), Ok(vec![80, 443]));
        assert_eq!(parse_ports(""), Ok(vec![]));
        assert_eq!(parse_ports("0"), Err(RuleError::Port("0".into())));
        assert_eq!(parse_ports("70000"), Err(RuleError::Port("70000".into())));
        assert_eq!(parse_ports("http"), Err(RuleError::Port("http".into())));
        assert_eq!("10.1.2.3".parse::<Cidr>().map(|c| c.to_string()), Ok("10.1.2.3/32".into()));
        assert_eq!("::1/128".parse::<Cidr>().map(|c| c.prefix), Ok(128));
        for bad in ["10.0.0.0/33", "x/8", "::/129", "1.2.3/8", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let mut r = redirect();
        r.outbound_port = r.inbound_port;
        assert_eq!(r.validate(), Err(RuleError::SamePorts(15006)));
    }

    /// The rule lines of `chain` in a restore batch, in order.
    fn chain_rules<'a>(batch: &'a str, chain: &str) -> Vec<&'a str> {
        let prefix = format!("-A {chain} ");
        batch.lines().filter(|l| l.starts_with(&prefix)).collect()
    }

    /// Every `-d` argument of a batch.
    fn destinations(batch: &str) -> Vec<Cidr> {
        batch
            .lines()
            .filter_map(|l| l.split(" -d ").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap_or_default().parse().expect("a CIDR"))
            .collect()
    }

    #[test]
    fn each_family_gets_only_its_own_addresses() {
        // ip6tables-restore rejects the whole batch over one IPv4 address (and vice
        // versa), which would leave an IPv6 pod unmeshed: no address may cross over.
        let v4 = install(&redirect(), Family::V4, &Existing::default());
        let v6 = install(&redirect(), Family::V6, &Existing::default());
        let d4 = destinations(&v4);
        let d6 = destinations(&v6);
        assert_eq!(d4.iter().map(ToString::to_string).collect::<Vec<_>>(), ["127.0.0.1/32", "10.0.0.0/8"]);
        assert_eq!(d6.iter().map(ToString::to_string).collect::<Vec<_>>(), ["::1/128", "fd00::/8"]);
        // The same listeners and exemptions in both: REDIRECT maps IPv6 to ::1 (OUTPUT)
        // or the interface's address (PREROUTING), where the proxy's IPv6 sockets listen.
        for batch in [&v4, &v6] {
            assert!(batch.contains("-j REDIRECT --to-ports 15006") && batch.contains("-j REDIRECT --to-ports 15001"));
            assert!(batch.contains("--uid-owner 1337"));
            assert_eq!(chain_rules(batch, CHAIN_INBOUND).len(), 3, "{batch}");
        }
        // Only the address lines differ between the families.
        let strip = |b: &str| b.lines().filter(|l| !l.contains(" -d ")).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(strip(&v4), strip(&v6));
    }

    #[test]
    fn exemptions_come_before_the_redirect_in_each_chain() {
        let batch = install(&redirect(), Family::V6, &Existing::default());
        let inbound = chain_rules(&batch, CHAIN_INBOUND);
        assert!(inbound[..2].iter().all(|l| l.ends_with("-j RETURN")), "{inbound:?}");
        assert!(inbound[2].ends_with(&format!("-j {CHAIN_IN_REDIRECT}")), "{inbound:?}");
        let output = chain_rules(&batch, CHAIN_OUTPUT);
        let kinds: Vec<&str> = output
            .iter()
            .map(|l| {
                if l.contains("--uid-owner") {
                    "uid"
                } else if l.contains("-o lo") {
                    "loopback"
                } else if l.contains("--dport") {
                    "port"
                } else if l.contains(" -d ") {
                    "cidr"
                } else {
                    "redirect"
                }
            })
            .collect();
        assert_eq!(kinds, ["uid", "loopback", "port", "cidr", "redirect"], "{output:?}");
        // The redirect chains hold exactly one rule each; declaring a chain flushes it,
        // so a re-run cannot stack a second REDIRECT.
        assert_eq!(chain_rules(&batch, CHAIN_IN_REDIRECT).len(), 1);
        assert_eq!(chain_rules(&batch, CHAIN_OUT_REDIRECT).len(), 1);
        for c in CHAINS {
            assert!(batch.lines().any(|l| l == format!(":{c} - [0:0]")), "{c} not declared");
        }
    }

    #[test]
    fn nothing_skipped_means_only_the_mandatory_exemptions() {
        let r = Redirect {
            skip_inbound_ports: vec![],
            skip_outbound_ports: vec![],
            skip_outbound_cidrs: vec![],
            ..redirect()
        };
        let batch = install(&r, Family::V4, &Existing::default());
        assert_eq!(chain_rules(&batch, CHAIN_INBOUND).len(), 1, "every inbound TCP port is redirected");
        let output = chain_rules(&batch, CHAIN_OUTPUT);
        assert_eq!(output.len(), 3, "UID, loopback, redirect: {output:?}");
        // Skip lists of the other family only: nothing to add in this one.
        let r6 = Redirect { skip_outbound_cidrs: parse_cidrs("fd00::/8").expect("cidr"), ..r };
        assert_eq!(install(&r6, Family::V4, &Existing::default()), batch);
    }

    #[test]
    fn a_half_present_install_is_completed_and_a_half_present_one_cleaned() {
        // A jump survived (e.g. a cleanup interrupted by hand): only the other is added.
        let only_inbound = Existing { jump_inbound: true, ..Existing::default() };
        let batch = install(&redirect(), Family::V4, &only_inbound);
        assert!(!batch.contains(JUMP_INBOUND) && batch.contains(JUMP_OUTPUT), "{batch}");
        // Chains without jumps: flushed, then deleted, and no -D for absent jumps
        // (iptables-restore would fail on deleting a rule that does not exist).
        let chains_only = parse_save("*nat\n:STRAIT_OUTPUT - [0:0]\n:STRAIT_OUT_REDIRECT - [0:0]\nCOMMIT\n");
        assert!(chains_only.any());
        let clean = cleanup(&chains_only).expect("chains to remove");
        assert!(!clean.contains("-D "), "{clean}");
        let lines: Vec<&str> = clean.lines().collect();
        let last_flush = lines.iter().rposition(|l| l.starts_with("-F ")).expect("flush");
        let first_delete = lines.iter().position(|l| l.starts_with("-X ")).expect("delete");
        assert!(last_flush < first_delete, "a chain still referenced cannot be deleted: {clean}");
        assert_eq!(lines.iter().filter(|l| l.starts_with("-X ")).count(), 2);
        // Chains of others that merely start with our prefix are not ours.
        assert!(!parse_save("*nat\n:STRAIT_INBOUND_X - [0:0]\nCOMMIT\n").any());
    }

    #[test]
    fn invalid_input_is_named_in_the_error() {
        assert_eq!(parse_ports("80,x8").expect_err("bad").to_string(), "invalid port \"x8\" (1..65535)");
        assert_eq!(parse_cidrs("10.0.0.0/8, ::/200").expect_err("bad").to_string(), "invalid CIDR \"::/200\"");
        assert_eq!(RuleError::SamePorts(15006).to_string(), "inbound and outbound ports must differ (both 15006)");
        let r = Redirect { inbound_port: 0, ..redirect() };
        assert_eq!(r.validate(), Err(RuleError::Port("0".into())));
        // IPv6 CIDRs keep their family (a bare address is one host).
        assert_eq!(parse_cidrs("fd52:5452::7").map(|c| c[0].to_string()), Ok("fd52:5452::7/128".into()));
    }
}
