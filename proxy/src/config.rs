//! Command-line flags (each with a `STRAIT_*` environment equivalent), validated
//! before any port is bound.
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "strait-proxy",
    version,
    about = "Strait sidecar proxy: GAMMA GRPCRoute routing for a pod's gRPC traffic"
)]
pub struct Args {
    /// File mode: a directory of Kubernetes YAML (Services, EndpointSlices, GRPCRoutes,
    /// ReferenceGrants). Without it the proxy watches the Kubernetes API (in-cluster
    /// service account, or KUBECONFIG).
    #[arg(long, env = "STRAIT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Kubernetes mode: drop a Service's EndpointSlice watch after this long without
    /// traffic to it.
    #[arg(long, env = "STRAIT_ENDPOINT_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub endpoint_idle_timeout: Duration,

    /// Where the pod's outbound traffic arrives (h2c; the destination is `:authority`):
    /// comma-separated addresses, one socket each. The IPv6 loopback is where ip6tables
    /// redirects IPv6 connections; in a pod without IPv6 it is skipped with a warning.
    #[arg(long, env = "STRAIT_OUTBOUND_ADDR", value_delimiter = ',', default_value = "127.0.0.1:15001,[::1]:15001")]
    pub outbound_addr: Vec<SocketAddr>,

    /// Where the pod's inbound traffic arrives: comma-separated addresses, one socket
    /// each (`[::]` only takes IPv6; skipped with a warning in a pod without IPv6).
    #[arg(long, env = "STRAIT_INBOUND_ADDR", value_delimiter = ',', default_value = "0.0.0.0:15006,[::]:15006")]
    pub inbound_addr: Vec<SocketAddr>,

    /// The application inbound traffic is forwarded to.
    #[arg(long, env = "STRAIT_INBOUND_APP_ADDR", default_value = "127.0.0.1:8080")]
    pub inbound_app_addr: SocketAddr,

    /// Admin endpoint: routes, query, metrics, readiness. Loopback by default because it
    /// dumps configuration.
    #[arg(long, env = "STRAIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Optional listener serving only /ready, /live and /metrics, e.g. on the pod IP for
    /// kubelet probes and Prometheus: comma-separated addresses, e.g.
    /// `0.0.0.0:15020,[::]:15020` (the kubelet probes the pod's primary IP, which is IPv6
    /// in an IPv6-primary pod).
    #[arg(long, env = "STRAIT_PROBE_ADDR", value_delimiter = ',')]
    pub probe_addr: Vec<SocketAddr>,

    /// The pod's namespace: relative authorities resolve here and consumer routes of this
    /// namespace apply.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    #[arg(long, env = "STRAIT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Require a ReferenceGrant for cross-namespace backendRefs (off by default, GEP-1294).
    #[arg(long, env = "STRAIT_REQUIRE_REFERENCE_GRANTS", default_value_t = false)]
    pub require_reference_grants: bool,

    /// Log filter, e.g. `info` or `strait_proxy=debug,info`.
    #[arg(long, env = "STRAIT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: `plain` or `json`.
    #[arg(long, env = "STRAIT_LOG_FORMAT", default_value = "plain")]
    pub log_format: String,

    /// How often the config directory is checked for changes.
    #[arg(long, env = "STRAIT_CONFIG_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub config_poll: Duration,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "STRAIT_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Upstream TCP connect timeout.
    #[arg(long, env = "STRAIT_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Transparent mode: connections arrive redirected by strait-init's iptables rules;
    /// the original destination names the Service (outbound) or the app port (inbound).
    /// Connections made straight to the ports are still served as in explicit mode.
    #[arg(long, env = "STRAIT_TRANSPARENT", default_value_t = false)]
    pub transparent: bool,

    /// Ports whose traffic is never inspected (server-first protocols: SMTP, MySQL, ...).
    #[arg(
        long,
        env = "STRAIT_OPAQUE_PORTS",
        value_delimiter = ',',
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    pub opaque_ports: Vec<u16>,

    /// How long to wait for a client's first bytes before treating the connection as
    /// opaque TCP (a server-first protocol on a port not listed as opaque).
    #[arg(long, env = "STRAIT_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// Retries of requests whose connection attempt failed (never reached a backend)
    /// may add at most this share of recent requests...
    #[arg(long, env = "STRAIT_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,
    /// ...plus this many per second.
    #[arg(long, env = "STRAIT_RETRY_BUDGET_MIN_PER_SECOND", default_value_t = 10)]
    pub retry_budget_min_per_second: u64,

    /// Longest gRPC request message (bytes, as its 5-byte length prefix claims) the
    /// proxy forwards; a longer one is answered RESOURCE_EXHAUSTED by the proxy and never
    /// reaches the destination. gRPC libraries accept 4 MiB by default and services
    /// raise that to tens of MiB; 64 MiB leaves them room, while a prefix claiming up
    /// to 4 GiB is refused at once. 4294967295 turns the limit off.
    #[arg(long, env = "STRAIT_MAX_GRPC_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_grpc_message_bytes: u32,

    #[command(flatten)]
    pub h2: H2Limits,
}

/// The largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
pub const MAX_H2_WINDOW: u32 = (1 << 31) - 1;

/// HTTP/2 limits, set explicitly rather than left to library defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct H2Limits {
    /// Concurrent streams a peer may open on one connection.
    #[arg(long, env = "STRAIT_H2_MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub max_concurrent_streams: u32,
    /// Largest header list accepted (bytes, HPACK-decoded).
    #[arg(long, env = "STRAIT_H2_MAX_HEADER_LIST_SIZE", default_value_t = 32 * 1024)]
    pub max_header_list_size: u32,
    /// Streams reset by the peer before we accept them (rapid-reset defence).
    #[arg(long, env = "STRAIT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS", default_value_t = 20)]
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset because of peer errors before the connection is closed.
    #[arg(long, env = "STRAIT_H2_MAX_LOCAL_ERROR_RESET_STREAMS", default_value_t = 256)]
    pub max_local_error_reset_streams: usize,
    /// Per-stream send buffer (bytes).
    #[arg(long, env = "STRAIT_H2_MAX_SEND_BUF_SIZE", default_value_t = 256 * 1024)]
    pub max_send_buf_size: usize,
    #[arg(long, env = "STRAIT_H2_STREAM_WINDOW", default_value_t = 1024 * 1024)]
    pub initial_stream_window_size: u32,
    #[arg(long, env = "STRAIT_H2_CONNECTION_WINDOW", default_value_t = 4 * 1024 * 1024)]
    pub initial_connection_window_size: u32,
    /// Per-stream receive window on connections to upstreams (endpoints, the local app).
    /// Their connection window is the protocol maximum, so this is what bounds the
    /// response bytes one unread stream can leave in the proxy: an upstream connection
    /// is shared by every caller, and with a connection window that a few unread
    /// streams could fill, one caller that stops reading would stall all the others.
    #[arg(long, env = "STRAIT_H2_UPSTREAM_STREAM_WINDOW", default_value_t = 256 * 1024)]
    pub upstream_stream_window_size: u32,
    /// HTTP/2 PING interval on idle-looking connections.
    #[arg(long, env = "STRAIT_H2_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub keep_alive_interval: Duration,
    #[arg(long, env = "STRAIT_H2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub keep_alive_timeout: Duration,
    /// Close (GOAWAY; streams in flight finish) HTTP/2 connections on which no request
    /// has started for this long, including connections that never send one. Keep-alive
    /// alone keeps any peer that answers PINGs forever. `0` disables.
    #[arg(long, env = "STRAIT_H2_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// PINGs or SETTINGS a peer may send per second before GOAWAY ENHANCE_YOUR_CALM
    /// (PINGs count only while the proxy sends it no HEADERS or DATA).
    #[arg(long, env = "STRAIT_H2_MAX_CONTROL_FRAMES_PER_SECOND", default_value_t = 1000)]
    pub max_control_frames_per_second: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--config-dir {0}: not a readable directory")]
    ConfigDir(String),
    #[error("--{flag} and --{other} must differ (both {addr})")]
    SameAddr { flag: &'static str, other: &'static str, addr: SocketAddr },
    #[error("--{0} needs at least one address")]
    NoAddr(&'static str),
    #[error("--namespace {0:?} is not a valid Kubernetes namespace name")]
    Namespace(String),
    #[error("--log-format must be plain or json, not {0:?}")]
    LogFormat(String),
    #[error("--retry-budget-ratio {0} must be within 0..=10")]
    RetryRatio(String),
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    #[error("--{flag} {value} is outside the HTTP/2 window range 1..=2147483647")]
    Window { flag: &'static str, value: u32 },
}

impl Args {
    /// Checks everything that can be checked before binding a port.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.config_dir
            && (!dir.is_dir() || std::fs::read_dir(dir).is_err())
        {
            return Err(ConfigError::ConfigDir(dir.display().to_string()));
        }
        if self.outbound_addr.is_empty() {
            return Err(ConfigError::NoAddr("outbound-addr"));
        }
        if self.inbound_addr.is_empty() {
            return Err(ConfigError::NoAddr("inbound-addr"));
        }
        let addrs: Vec<(&'static str, SocketAddr)> = (self.outbound_addr.iter().map(|a| ("outbound-addr", *a)))
            .chain(self.inbound_addr.iter().map(|a| ("inbound-addr", *a)))
            .chain([("admin-addr", self.admin_addr)])
            .collect();
        for (i, (flag, addr)) in addrs.iter().enumerate() {
            for (other, addr2) in &addrs[i + 1..] {
                if addr == addr2 && addr.port() != 0 {
                    return Err(ConfigError::SameAddr { flag, other, addr: *addr });
                }
            }
        }
        let ns_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 63
            && self.namespace.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.namespace.starts_with('-')
            && !self.namespace.ends_with('-');
        if !ns_ok {
            return Err(ConfigError::Namespace(self.namespace.clone()));
        }
        if !matches!(self.log_format.as_str(), "plain" | "json") {
            return Err(ConfigError::LogFormat(self.log_format.clone()));
        }
        if self.h2.max_concurrent_streams == 0 {
            return Err(ConfigError::Zero("max-concurrent-streams"));
        }
        if self.h2.max_control_frames_per_second == 0 {
            return Err(ConfigError::Zero("max-control-frames-per-second"));
        }
        // Zero would refuse every non-empty gRPC message.
        if self.max_grpc_message_bytes == 0 {
            return Err(ConfigError::Zero("max-grpc-message-bytes"));
        }
        let windows = [
            ("initial-stream-window-size", self.h2.initial_stream_window_size),
            ("initial-connection-window-size", self.h2.initial_connection_window_size),
            ("upstream-stream-window-size", self.h2.upstream_stream_window_size),
        ];
        for (flag, value) in windows {
            // h2 asserts on larger values; zero would stall every stream.
            if value == 0 || value > MAX_H2_WINDOW {
                return Err(ConfigError::Window { flag, value });
            }
        }
        if !(0.0..=10.0).contains(&self.retry_budget_ratio) {
            return Err(ConfigError::RetryRatio(self.retry_budget_ratio.to_string()));
        }
        if self.config_poll.is_zero() {
            return Err(ConfigError::Zero("config-poll"));
        }
        Ok(())
    }
}

/// `250ms`, `10s`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?} (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let dir = std::env::temp_dir();
        let mut v = vec!["strait-proxy", "--config-dir", dir.to_str().unwrap_or("/tmp")];
        v.extend_from_slice(extra);
        Args::try_parse_from(v)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn listeners_default_to_both_families() {
        let a = args(&[]).expect("parses");
        let addrs = |v: &[&str]| v.iter().map(|s| s.parse::<SocketAddr>().expect("addr")).collect::<Vec<_>>();
        assert_eq!(a.outbound_addr, addrs(&["127.0.0.1:15001", "[::1]:15001"]));
        assert_eq!(a.inbound_addr, addrs(&["0.0.0.0:15006", "[::]:15006"]));
        assert!(a.probe_addr.is_empty(), "no probe listener unless asked for");
        // The injector's form: one comma-separated value.
        let a =
            args(&["--probe-addr", "0.0.0.0:15020,[::]:15020", "--inbound-addr", "10.0.0.5:15006"]).expect("parses");
        assert_eq!(a.probe_addr, addrs(&["0.0.0.0:15020", "[::]:15020"]));
        assert_eq!(a.inbound_addr, addrs(&["10.0.0.5:15006"]), "an explicit list replaces the default");
        assert!(args(&["--inbound-addr", "0.0.0.0:15006,[::]"]).is_err(), "every element must be an address");
    }

    #[test]
    fn validation() {
        assert_eq!(args(&["--namespace", "app"]).map(|a| a.validate()).ok(), Some(Ok(())));
        let bad = [
            (vec!["--namespace", "Bad_NS"], "namespace"),
            (vec!["--outbound-addr", "127.0.0.1:15000"], "must differ"),
            (vec!["--outbound-addr", "127.0.0.1:15001,[::]:15006"], "must differ"),
            (vec!["--log-format", "xml"], "log-format"),
            (vec!["--max-concurrent-streams", "0"], "greater than zero"),
            (vec!["--max-grpc-message-bytes", "0"], "max-grpc-message-bytes"),
            (vec!["--upstream-stream-window-size", "0"], "window range"),
            (vec!["--initial-connection-window-size", "2147483648"], "window range"),
        ];
        for (flags, want) in bad {
            let err = args(&flags).expect("parses").validate().expect_err("invalid").to_string();
            assert!(err.contains(want), "{flags:?}: {err}");
        }
        let missing = Args::try_parse_from(["strait-proxy", "--config-dir", "/nonexistent/dir"]).expect("parses");
        assert!(matches!(missing.validate(), Err(ConfigError::ConfigDir(_))));
        assert!(args(&["--outbound-addr", "not-an-addr"]).is_err());
    }
}
