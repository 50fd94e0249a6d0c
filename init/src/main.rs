//! `strait-init`: mesh the pod's network namespace (or `--cleanup` it). Exits
//! non-zero with the reason when anything is missing: a pod must never start
//! half-meshed.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use strait_init::{Mode, apply, families, has_ipv6, remove, resolve_mode};
use strait_iptables::{Family, Redirect, parse_cidrs, parse_ports};

#[derive(Parser)]
#[command(name = "strait-init", version, about = "Redirect a pod's TCP traffic to the Strait sidecar (iptables nat)")]
struct Args {
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Comma-separated ports whose inbound traffic is not redirected.
    #[arg(long, default_value = "")]
    skip_inbound_ports: String,
    #[arg(long, default_value = "")]
    skip_outbound_ports: String,
    /// Comma-separated CIDRs (IPv4 or IPv6) whose outbound traffic is not redirected.
    #[arg(long, default_value = "")]
    skip_outbound_cidrs: String,
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    iptables_mode: Mode,
    /// ip6tables too: auto = when the pod has a global IPv6 address.
    #[arg(long, value_parser = ["auto", "on", "off"], default_value = "auto")]
    ipv6: String,
    /// Remove everything strait-init added.
    #[arg(long)]
    cleanup: bool,
    /// Print the rules instead of applying them.
    #[arg(long)]
    dry_run: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("strait-init: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let redirect = Redirect {
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        skip_inbound_ports: parse_ports(&args.skip_inbound_ports).context("--skip-inbound-ports")?,
        skip_outbound_ports: parse_ports(&args.skip_outbound_ports).context("--skip-outbound-ports")?,
        skip_outbound_cidrs: parse_cidrs(&args.skip_outbound_cidrs).context("--skip-outbound-cidrs")?,
    };
    redirect.validate()?;
    let families: Vec<Family> = families(&args.ipv6, has_ipv6);
    if args.dry_run {
        for f in &families {
            print!("{}", strait_iptables::install(&redirect, *f, &strait_iptables::Existing::default()));
        }
        return Ok(());
    }
    let mode = resolve_mode(args.iptables_mode);
    if args.cleanup {
        for f in &families {
            let removed = remove(*f, mode)?;
            eprintln!("strait-init: {f:?} {}", if removed { "rules removed" } else { "nothing to remove" });
        }
        return Ok(());
    }
    let mut done = Vec::new();
    for f in &families {
        match apply(&redirect, *f, mode) {
            Ok(rules) => {
                eprintln!("strait-init: {f:?} rules applied ({mode:?}):\n{rules}");
                done.push(*f);
            }
            Err(e) => {
                // Undo the families already meshed: all or nothing.
                for d in done {
                    let _ = remove(d, mode);
                }
                return Err(e).with_context(|| format!("applying {f:?} rules"));
            }
        }
    }
    Ok(())
}
