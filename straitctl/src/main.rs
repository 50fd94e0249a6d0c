//! straitctl: route dumps from a pod's sidecar, manual inject/uninject, versions.
#![forbid(unsafe_code)]

use std::io::Read;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use strait_inject::InjectConfig;
use straitctl::cluster::{self, Target};
use straitctl::{routes_view, uninject};

#[derive(Parser)]
#[command(name = "straitctl", version, about = "The Strait service mesh's command line")]
struct Cli {
    /// kubeconfig context to use (default: the current context of $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a pod's routing table, as its Strait sidecar sees it (through a port-forward).
    Routes(RoutesArgs),
    /// Inject the Strait sidecar into manifests (what the webhook does) and print them.
    Inject(InjectArgs),
    /// Remove what injection added from manifests and print them.
    Uninject(FileArg),
    /// Check the cluster: Gateway API CRDs, the injector's webhook and CA bundle, unmeshed
    /// pods in meshed namespaces. Exits 1 when something needs fixing.
    Check,
    /// Print straitctl's version and, when the cluster answers, the control plane's images.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Args)]
struct RoutesArgs {
    /// POD, pod/NAME or deploy/NAME (a running pod of the Deployment).
    target: Target,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// Ask which rule and backends a request would get instead of dumping all routes:
    /// authority=HOST:PORT[,path=/pkg.Service/Method][,header=name:value…][,namespace=NS].
    #[arg(long)]
    query: Option<String>,
}

#[derive(Args)]
struct FileArg {
    /// Manifest file, or - for standard input.
    #[arg(short = 'f', long = "filename")]
    file: String,
}

#[derive(Args)]
struct InjectArgs {
    #[command(flatten)]
    input: FileArg,
    /// Namespace for objects that name none (namespaces decide opt-outs).
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[arg(long)]
    proxy_image: Option<String>,
    #[arg(long)]
    init_image: Option<String>,
    /// Inject the proxy as a native sidecar (Kubernetes 1.29+); the
    /// strait.io/native-sidecar annotation still overrides it per pod.
    #[arg(long)]
    native_sidecars: Option<bool>,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Inject(args) => inject(args),
        Command::Uninject(args) => {
            let (out, notes) = uninject::uninject_manifests(&read_input(&args.file)?)?;
            for n in notes {
                eprintln!("note: {n}");
            }
            print!("{out}");
            Ok(())
        }
        Command::Routes(args) => runtime()?.block_on(routes(cli.context, args)),
        Command::Version => runtime()?.block_on(version(cli.context)),
        Command::Check => {
            let problems = runtime()?.block_on(check(cli.context))?;
            if problems > 0 {
                eprintln!("{problems} problem(s) found");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn read_input(file: &str) -> anyhow::Result<String> {
    let mut input = String::new();
    if file == "-" {
        std::io::stdin().read_to_string(&mut input).context("reading standard input")?;
    } else {
        input = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    }
    Ok(input)
}

fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let mut cfg = InjectConfig::default();
    if let Some(i) = args.proxy_image {
        cfg.proxy_image = i;
    }
    if let Some(i) = args.init_image {
        cfg.init_image = i;
    }
    if let Some(n) = args.native_sidecars {
        cfg.native_sidecars = n;
    }
    cfg.validate()?;
    let input = read_input(&args.input.file)?;
    let (out, warnings) = strait_injector::cli::inject_manifests(&input, &args.namespace, &cfg)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    print!("{out}");
    Ok(())
}

/// A client from the kubeconfig (or in-cluster), like kubectl, and its default namespace.
async fn client(context: Option<String>) -> anyhow::Result<kube::Client> {
    let options = kube::config::KubeConfigOptions { context, ..Default::default() };
    let config = match kube::Config::from_kubeconfig(&options).await {
        Ok(c) => c,
        Err(kubeconfig_err) if options.context.is_none() => kube::Config::incluster()
            .map_err(|_| kubeconfig_err)
            .context("no Kubernetes configuration (set KUBECONFIG or ~/.kube/config)")?,
        Err(e) => return Err(e).context("reading the kubeconfig"),
    };
    Ok(kube::Client::try_from(config)?)
}

async fn routes(context: Option<String>, args: RoutesArgs) -> anyhow::Result<()> {
    let client = client(context).await?;
    let namespace = args.namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let path = match &args.query {
        Some(q) => cluster::query_path(q).map_err(|e| anyhow::anyhow!("--query: {e}"))?,
        None => "/routes".to_owned(),
    };
    let pod = cluster::resolve_pod(&client, &namespace, &args.target).await?;
    let body = cluster::admin_get(&client, &namespace, &pod, &path)
        .await
        .with_context(|| format!("GET {path} from pod {namespace}/{pod}"))?;
    let answer: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("pod {namespace}/{pod} answered non-JSON"))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
        Output::Table => {
            println!("pod: {namespace}/{pod}");
            let text = if args.query.is_some() {
                routes_view::render_query(&answer)
            } else {
                routes_view::render_routes(&answer)
            };
            print!("{text}");
        }
    }
    Ok(())
}

async fn version(context: Option<String>) -> anyhow::Result<()> {
    println!("straitctl: {}", env!("CARGO_PKG_VERSION"));
    match client(context).await {
        Err(e) => println!("cluster: not reachable ({e:#})"),
        Ok(client) => {
            for (name, image) in cluster::control_plane_versions(&client, Duration::from_secs(10)).await {
                println!("{name}: {image}");
            }
        }
    }
    Ok(())
}

/// Prints every finding; returns the number of problems.
async fn check(context: Option<String>) -> anyhow::Result<usize> {
    let client = client(context).await?;
    let findings = straitctl::check::check(&client).await;
    for f in &findings {
        match &f.fix {
            None => println!("ok       {}", f.text),
            Some(fix) => println!(
                "PROBLEM  {}
         fix: {fix}",
                f.text
            ),
        }
    }
    Ok(findings.iter().filter(|f| f.is_problem()).count())
}
