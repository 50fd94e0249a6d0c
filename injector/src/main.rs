//! `strait-injector serve` (the webhook) and `strait-injector inject` (manual injection).
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strait_inject::InjectConfig;
use strait_injector::{bootstrap, cli, tls, webhook};

#[derive(Parser)]
#[command(
    name = "strait-injector",
    version,
    about = "Strait's sidecar injector: admission webhook and manual injection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[arg(long, env = "STRAIT_LOG_LEVEL", default_value = "info", global = true)]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mutating admission webhook over HTTPS.
    Serve(ServeArgs),
    /// Inject manifests from a file (or - for stdin) and print them.
    Inject(InjectArgs),
}

#[derive(Args)]
struct Injection {
    #[arg(long, env = "STRAIT_PROXY_IMAGE")]
    proxy_image: Option<String>,
    #[arg(long, env = "STRAIT_INIT_IMAGE")]
    init_image: Option<String>,
    /// Inject the proxy as a native sidecar (init container, restartPolicy Always;
    /// Kubernetes 1.29+). Pods can override with the strait.io/native-sidecar annotation.
    #[arg(long, env = "STRAIT_NATIVE_SIDECARS")]
    native_sidecars: Option<bool>,
    /// Strait's own namespace, never injected.
    #[arg(long, env = "POD_NAMESPACE", default_value = "strait-system")]
    system_namespace: String,
}

impl Injection {
    /// The injection settings, validated: a bad value would otherwise surface only when
    /// a pod is mutated, for every pod (denied by the webhook), instead of once at start.
    fn config(&self) -> anyhow::Result<InjectConfig> {
        let cfg = self.unvalidated_config();
        cfg.validate().context("refusing to start")?;
        Ok(cfg)
    }

    fn unvalidated_config(&self) -> InjectConfig {
        let mut cfg = InjectConfig { system_namespace: self.system_namespace.clone(), ..InjectConfig::default() };
        if let Some(i) = &self.proxy_image {
            cfg.proxy_image = i.clone();
        }
        if let Some(i) = &self.init_image {
            cfg.init_image = i.clone();
        }
        if let Some(n) = self.native_sidecars {
            cfg.native_sidecars = n;
        }
        cfg
    }
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "STRAIT_LISTEN_ADDR", default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    #[arg(long, env = "STRAIT_TLS_CERT", default_value = "/etc/strait/tls/tls.crt")]
    cert_file: PathBuf,
    #[arg(long, env = "STRAIT_TLS_KEY", default_value = "/etc/strait/tls/tls.key")]
    key_file: PathBuf,
    /// Generate a CA and serving certificate (kept in --secret-name), write them to
    /// --cert-file/--key-file and patch the caBundle of --webhook-config. Without it,
    /// certificates come from files (cert-manager).
    #[arg(long, env = "STRAIT_BOOTSTRAP_CERTS", default_value_t = false)]
    bootstrap_certs: bool,
    #[arg(long, env = "STRAIT_SERVICE_NAME", default_value = "strait-injector")]
    service_name: String,
    #[arg(long, env = "STRAIT_TLS_SECRET", default_value = "strait-injector-tls")]
    secret_name: String,
    #[arg(long, env = "STRAIT_WEBHOOK_CONFIG", default_value = "strait-injector")]
    webhook_config: String,
    #[command(flatten)]
    injection: Injection,
}

#[derive(Args)]
struct InjectArgs {
    /// Manifest file, or - for standard input.
    #[arg(short = 'f', long = "filename")]
    file: String,
    /// Namespace for objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    injection: Injection,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", cli.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(strait_log::stderr_colour())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Inject(args) => inject(args),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(args)),
    }
}

fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let cfg = args.injection.config()?;
    let mut input = String::new();
    if args.file == "-" {
        std::io::stdin().read_to_string(&mut input).context("reading standard input")?;
    } else {
        input = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file))?;
    }
    let (output, warnings) = cli::inject_manifests(&input, &args.namespace, &cfg)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    print!("{output}");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before touching the cluster or binding the port: an injector that cannot inject
    // must not start serving (it would deny every pod it is asked about).
    let cfg = args.injection.config()?;
    if args.bootstrap_certs {
        let client = kube::Client::try_default().await.context("--bootstrap-certs needs Kubernetes access")?;
        let names = bootstrap::service_dns_names(&args.service_name, &args.injection.system_namespace);
        let certs =
            bootstrap::ensure_secret(client.clone(), &args.injection.system_namespace, &args.secret_name, &names)
                .await
                .context("bootstrap certificates")?;
        for (path, pem) in [(&args.cert_file, &certs.cert_pem), (&args.key_file, &certs.key_pem)] {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        let n = bootstrap::patch_ca_bundle(client, &args.webhook_config, &certs.ca_pem)
            .await
            .with_context(|| format!("patching caBundle of MutatingWebhookConfiguration {}", args.webhook_config))?;
        tracing::info!(webhooks = n, config = %args.webhook_config, "caBundle set");
    }
    let key = tls::load_pair(&args.cert_file, &args.key_file).context("serving certificate")?;
    let resolver = tls::ReloadingCert::new(key);
    tokio::spawn(tls::watch_files(
        resolver.clone(),
        args.cert_file.clone(),
        args.key_file.clone(),
        Duration::from_secs(2),
    ));
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, proxy_image = %cfg.proxy_image, native_sidecars = cfg.native_sidecars, "strait-injector serving");
    let router = webhook::router(Arc::new(webhook::Webhook { config: cfg }));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(webhook::serve_tls(listener, tls::server_config(resolver), router, stop_rx));
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("signal handler")?,
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}
