//! `strait-testenv` (`make cluster`): starts the real test control plane (etcd +
//! kube-apiserver + Gateway API CRDs), prints how to reach it, and runs until Ctrl-C or
//! SIGTERM, then tears it down. Arguments are passed to kube-apiserver as extra flags.

use std::process::ExitCode;
use std::time::Instant;

use strait_testenv::{TestEnv, TestEnvOptions};

#[tokio::main]
async fn main() -> ExitCode {
    let opts = TestEnvOptions { extra_apiserver_args: std::env::args().skip(1).collect(), ..Default::default() };
    let started = Instant::now();
    eprintln!("strait-testenv: starting etcd + kube-apiserver...");
    let env = match TestEnv::start(opts).await {
        Ok(env) => env,
        Err(e) => {
            eprintln!("strait-testenv: {e}");
            return ExitCode::FAILURE;
        }
    };
    let kubeconfig = env.kubeconfig_path().display().to_string();
    eprintln!("strait-testenv: ready in {:.1?}", started.elapsed());
    println!("server:     {}", env.server_url());
    println!("kubeconfig: {kubeconfig}");
    println!("logs:       {}/{{kube-apiserver,etcd}}.log", env.dir().display());
    println!("export KUBECONFIG={kubeconfig}");
    println!("(Ctrl-C to stop; STRAIT_TESTENV_KEEP=1 keeps the directory)");

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("strait-testenv: installing the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("strait-testenv: stopping");
    drop(env);
    ExitCode::SUCCESS
}
