//! Child processes (pinned with `taskset`) and their CPU time and memory from /proc.
use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` (pinned to `cpus` with taskset when given), stderr+stdout to `log`.
    pub fn spawn(name: &str, cpus: Option<&str>, program: &Path, args: &[String], log: &Path) -> Result<Proc> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let child = cmd.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Proc { name: name.to_owned(), child, log: log.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This process and all its descendants (nginx workers).
    pub fn pids(&self) -> Vec<u32> {
        let mut out = vec![self.pid()];
        let mut i = 0;
        while i < out.len() && i < 64 {
            out.extend(children_of(out[i]));
            i += 1;
        }
        out
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then waits up to `timeout` for the exit: an error unless the process
    /// exited by itself with status 0 (a killed process writes no PGO profile, for one).
    pub fn stop(mut self, timeout: Duration) -> Result<()> {
        match self.terminate(timeout)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("{} exited with {status} after SIGTERM; log tail:\n{}", self.name, self.log_tail(20)),
            None => bail!("{} still running {timeout:?} after SIGTERM; log tail:\n{}", self.name, self.log_tail(20)),
        }
    }

    /// Sends SIGTERM unless the process has exited already, then polls for its exit
    /// for up to `timeout`: its status, or `None` if it is still running.
    fn terminate(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(Some(status));
        }
        // kill(1) by our own child's id (no unsafe libc call).
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).stderr(Stdio::null()).status().context("running kill")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); log tail:\n{}", self.name, self.log_tail(20));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.terminate(Duration::from_secs(1)) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|s| s.parse().ok()).collect()
}

/// Real-time priority of the servers' core during the FIFO tail points: above the
/// kernel threads that run as SCHED_OTHER (kdamond, kworkers, kcompactd: the ~4 ms holds
/// that set the low-rate p99 here) and RCU's boost threads (priority 1), below threaded
/// interrupt handlers (50), which keep pre-empting the servers as before.
pub const FIFO_PRIORITY: u32 = 10;

/// Puts every thread of each of `pids` under SCHED_FIFO at `priority`, or back under
/// SCHED_OTHER with `None`, with chrt(1) from util-linux (no unsafe
/// `sched_setscheduler` call; nix does not wrap it).
pub fn set_sched(pids: &[u32], priority: Option<u32>) -> Result<()> {
    let policy = priority.map_or("SCHED_OTHER".to_owned(), |p| format!("SCHED_FIFO {p}"));
    // Every pid is tried, so a reset after a failure still reaches the others.
    let mut failed = Vec::new();
    for pid in pids {
        let mut cmd = Command::new("chrt");
        cmd.arg("--all-tasks");
        match priority {
            Some(p) => cmd.args(["--fifo", "--pid", &p.to_string()]),
            None => cmd.args(["--other", "--pid", "0"]),
        };
        let out = cmd.arg(pid.to_string()).stdin(Stdio::null()).output().context("running chrt (util-linux)")?;
        if !out.status.success() {
            failed.push(format!("pid {pid}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    if !failed.is_empty() {
        bail!("chrt to {policy} failed: {}", failed.join("; "));
    }
    Ok(())
}

/// The scheduling policy of `pid`'s main thread as /proc reports it (field 41 of
/// `stat`: 0 SCHED_OTHER, 1 SCHED_FIFO), `None` if the process is gone.
pub fn sched_policy(pid: u32) -> Option<u32> {
    stat_field(&read_stat(pid)?, 41)?.parse().ok()
}

/// Field `n` (numbered as in proc(5); `n` ≥ 3) of a `/proc/<pid>/stat` line. The comm
/// (field 2) may hold spaces and parentheses, so fields are counted from the last `)`.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.get(stat.rfind(')')? + 2..)?.split_whitespace().nth(n.checked_sub(3)?)
}

fn read_stat(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// CPU time of process `pid` (every thread, exited ones included) in seconds.
///
/// Read from the process's CPU-time clock, which counts nanoseconds. `/proc/<pid>/stat`
/// counts clock ticks (10 ms here): at 500 calls/s a 1.2 s turn of ~600 calls spent
/// 0.1 s of proxy CPU, so a tick either way moved the figure by 10%. The ticks remain
/// the fallback where the clock cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    // The clock id encodes the pid shifted left by 3: a pid above the kernel's pid_max
    // (at most 2^22) would wrap into another clock (pid 0 is the calling process).
    if pid == 0 || pid > 1 << 22 {
        return cpu_seconds_from_ticks(pid);
    }
    let pid_ = nix::unistd::Pid::from_raw(pid as i32);
    match nix::time::clock_getcpuclockid(pid_).and_then(nix::time::clock_gettime) {
        Ok(ts) => ts.tv_sec() as f64 + ts.tv_nsec() as f64 * 1e-9,
        Err(_) => cpu_seconds_from_ticks(pid),
    }
}

/// utime + stime of `pid` in seconds, from `/proc/<pid>/stat` (clock-tick resolution).
fn cpu_seconds_from_ticks(pid: u32) -> f64 {
    let Some(stat) = read_stat(pid) else { return 0.0 };
    // utime is field 14, stime 15.
    let ticks = |n: usize| stat_field(&stat, n).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static T: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn cpu_seconds_all(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// VmRSS of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn rss_all(pids: &[u32]) -> u64 {
    pids.iter().map(|p| rss_bytes(*p)).sum()
}

/// Samples the summed RSS of pid groups every 100 ms on a thread; keeps the peak per group.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(groups: Vec<Vec<u32>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(vec![0u64; groups.len()]));
        let (s, p) = (stop.clone(), peaks.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 24 h of samples.
            for _ in 0..864_000u32 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut peaks) = p.lock() {
                    for (i, g) in groups.iter().enumerate() {
                        peaks[i] = peaks[i].max(rss_all(g));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { stop, peaks, thread: Some(thread) }
    }

    pub fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peaks.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_port(addr: SocketAddr, proc_: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        proc_.check_alive()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} not listening on {addr} after {timeout:?}; log tail:\n{}", proc_.name, proc_.log_tail(20))
}

/// Minimal HTTP/1.1 GET (for the proxy's admin endpoint): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    // Chunked bodies (axum) keep their chunk-size lines; callers only search the text.
    Ok((status, body))
}

/// `n` distinct free loopback ports (held until all are chosen).
pub fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let ls =
        (0..n).map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<std::io::Result<Vec<_>>>()?;
    ls.iter().map(|l| l.local_addr().context("local_addr")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy child's CPU time: read in ns from its CPU-time clock, it grows with the
    /// child's work, never faster than the wall clock (one thread), and agrees with the
    /// kernel's tick count.
    #[test]
    fn cpu_seconds_reads_another_process_precisely() {
        // Bounded: a counter, and a `Proc`, killed when dropped, so a failed assertion
        // leaves nothing spinning.
        let log = std::env::temp_dir().join(format!("strait-bench-busy-{}.log", std::process::id()));
        let busy = Proc::spawn(
            "busy",
            None,
            Path::new("sh"),
            &["-c".into(), "i=0; while [ $i -lt 50000000 ]; do i=$((i+1)); done".into()],
            &log,
        )
        .expect("spawn a busy shell");
        let pid = busy.pid();
        let (c0, t0) = (cpu_seconds(pid), Instant::now());
        std::thread::sleep(Duration::from_millis(400));
        let (c1, wall) = (cpu_seconds(pid), t0.elapsed().as_secs_f64());
        let ticks = cpu_seconds_from_ticks(pid);
        drop(busy);
        let _ = std::fs::remove_file(&log);
        let used = c1 - c0;
        assert!(used > 0.02, "a busy loop used {used} s of CPU in {wall} s");
        assert!(used <= wall * 1.02, "one thread used {used} s of CPU in {wall} s of wall time");
        // The clock is not a multiple of the 10 ms tick, but it agrees with the ticks.
        assert!((c1 - ticks).abs() < 0.05, "clock {c1} s vs ticks {ticks} s");
    }

    #[test]
    fn cpu_seconds_of_a_missing_process_is_zero() {
        // A child that has exited and been reaped: its pid names no process.
        let mut gone = Command::new("true").spawn().expect("spawn true");
        let pid = gone.id();
        gone.wait().expect("wait for true");
        assert_eq!(cpu_seconds(pid), 0.0);
        // Beyond the kernel's pid_max: not some other process's clock either.
        assert_eq!(cpu_seconds(u32::MAX / 2), 0.0);
    }

    /// The FIFO tail points move a running process's threads to SCHED_FIFO and back;
    /// a pid that names no process is an error that says which, not a silent no-op.
    #[test]
    fn set_sched_moves_a_process_to_fifo_and_back() {
        let log = std::env::temp_dir().join(format!("strait-bench-sched-{}.log", std::process::id()));
        let sleeper = Proc::spawn("sleeper", None, Path::new("sleep"), &["30".into()], &log).expect("spawn sleep");
        let pid = sleeper.pid();
        assert_eq!(sched_policy(pid), Some(0), "a child starts under SCHED_OTHER");
        match set_sched(&[pid], Some(FIFO_PRIORITY)) {
            Ok(()) => {
                assert_eq!(sched_policy(pid), Some(1), "SCHED_FIFO after set_sched");
                set_sched(&[pid], None).expect("back to SCHED_OTHER");
                assert_eq!(sched_policy(pid), Some(0), "SCHED_OTHER again");
            }
            // Without CAP_SYS_NICE (or with no real-time budget in this cgroup) the
            // benchmark skips its FIFO tail points; the error must say so.
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains("SCHED_FIFO") && msg.contains(&pid.to_string()), "{msg}");
                eprintln!("real-time scheduling not permitted here: {msg}");
            }
        }
        drop(sleeper);
        let _ = std::fs::remove_file(&log);
        let mut gone = Command::new("true").spawn().expect("spawn true");
        let gone_pid = gone.id();
        gone.wait().expect("wait for true");
        let err = set_sched(&[gone_pid], None).expect_err("no such process");
        assert!(format!("{err:#}").contains(&gone_pid.to_string()), "{err:#}");
        assert_eq!(sched_policy(gone_pid), None);
    }
}
