//! Child processes (etcd, kube-apiserver) supervised by one thread each.
//!
//! Every child is spawned by its own supervisor thread with `PR_SET_PDEATHSIG=SIGKILL`,
//! so the child dies with that thread: when the test process exits for any reason
//! (even SIGKILL), no etcd or kube-apiserver is left behind. (The death signal is tied
//! to the spawning *thread*, which is why a dedicated thread that lives exactly as
//! long as the child does the spawning, not a tokio worker.)

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub(crate) struct Proc {
    pub(crate) name: &'static str,
    pub(crate) log: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    exited: Arc<Mutex<Option<ExitStatus>>>,
}

impl Proc {
    /// Spawns `program args..`, stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &'static str, program: &Path, args: &[String], log: &Path) -> io::Result<Proc> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        set_parent_death_signal(&mut cmd);

        let exited = Arc::new(Mutex::new(None));
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (spawned_tx, spawned_rx) = mpsc::channel::<io::Result<()>>();
        let exited_in_thread = exited.clone();
        let thread = std::thread::Builder::new().name(format!("strait-testenv-{name}")).spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(child) => {
                    let _ = spawned_tx.send(Ok(()));
                    child
                }
                Err(e) => {
                    let _ = spawned_tx.send(Err(e));
                    return;
                }
            };
            loop {
                match stop_rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = child.kill();
                        let status = child.wait().ok();
                        *exited_in_thread.lock().unwrap() = status;
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                if let Ok(Some(status)) = child.try_wait() {
                    *exited_in_thread.lock().unwrap() = Some(status);
                    return;
                }
            }
        })?;
        match spawned_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(io::Error::new(e.kind(), format!("spawning {}: {e}", program.display())));
            }
            Err(_) => return Err(io::Error::other(format!("supervisor thread for {name} died"))),
        }
        Ok(Proc { name, log: log.to_path_buf(), stop: Some(stop_tx), thread: Some(thread), exited })
    }

    /// The exit status if the process has exited on its own.
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        *self.exited.lock().unwrap()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub(crate) fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// The last `lines` lines of the process's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read(path) else { return String::new() };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn append_marker(path: &Path, marker: &str) {
    use std::io::Write;
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "==== strait-testenv: {marker} ====");
    }
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}
