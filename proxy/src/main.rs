//! `strait-proxy`: parse and validate flags, set up logging, run.
#![forbid(unsafe_code)]

use clap::Parser;
use strait_proxy::config::Args;

fn main() -> anyhow::Result<()> {
    strait_proxy::heap::limit_arenas();
    // One TLS crypto provider for the process (kube's client uses rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::args().nth(1).as_deref() == Some("wait-ready") {
        let wait = strait_proxy::wait_ready::WaitReadyArgs::parse_from(std::env::args().skip(1));
        return match strait_proxy::wait_ready::wait(&wait) {
            Ok(took) => {
                eprintln!("strait-proxy ready after {took:?}");
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(e)),
        };
    }
    let args = Args::parse();
    args.validate()?;
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", args.log_level))?;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(strait_log::stderr_colour())
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    // One usable CPU (a sidecar's usual CPU limit, or a taskset): a current-thread
    // runtime. The multi-thread scheduler with one worker still pays for work-stealing
    // queues, cross-thread wake-ups and a separate thread driving `block_on`.
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(strait_proxy::run(args))
}
