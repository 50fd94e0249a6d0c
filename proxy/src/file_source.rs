//! File mode: routing state from a directory of ordinary Kubernetes YAML.
//!
//! The directory is polled (default every 250 ms) rather than watched with inotify:
//! polling sees ConfigMap volume updates (an atomic symlink swap) and edits on any
//! filesystem the same way, and one `stat` per file per poll costs nothing. A file that
//! fails to parse keeps its last good contents in effect and its error is published on
//! the admin endpoint.
use crate::state::SharedState;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use strait_api::{Resources, parse_manifests};
use strait_routing::{CompileOptions, Snapshot, compile};

/// Files larger than this are refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

struct FileState {
    fingerprint: Fingerprint,
    last_good: Option<Resources>,
    error: Option<String>,
}

pub struct FileSource {
    dir: PathBuf,
    default_namespace: String,
    options: CompileOptions,
    files: BTreeMap<PathBuf, FileState>,
    dir_error: Option<String>,
}

impl FileSource {
    pub fn new(dir: PathBuf, default_namespace: String, options: CompileOptions) -> Self {
        FileSource { dir, default_namespace, options, files: BTreeMap::new(), dir_error: None }
    }

    /// Rescans the directory; returns true when anything changed.
    pub fn rescan(&mut self) -> bool {
        self.apply(self.list())
    }

    /// The directory's listing: one `stat` per file, nothing read.
    fn list(&self) -> std::io::Result<Listing> {
        list_manifests(&self.dir)
    }

    /// Whether `listing` is what is loaded: no file added, removed or changed, and the
    /// directory was and is readable. When not, `apply` it.
    fn is_current(&self, listing: &std::io::Result<Listing>) -> bool {
        match listing {
            Ok(l) => {
                self.dir_error.is_none()
                    && l.len() == self.files.len()
                    && l.iter().all(|(path, fp)| self.file_is_current(path, *fp))
            }
            // `apply` sorts out whether the error is new.
            Err(_) => false,
        }
    }

    fn file_is_current(&self, path: &Path, fp: Fingerprint) -> bool {
        self.files.get(path).is_some_and(|f| f.fingerprint == fp)
    }

    /// Brings the loaded files in line with `listing` (re-reading new and changed ones);
    /// returns true when anything changed.
    fn apply(&mut self, listing: std::io::Result<Listing>) -> bool {
        let listing = match listing {
            Ok(l) => {
                let changed = self.dir_error.take().is_some();
                if changed {
                    tracing::info!(dir = %self.dir.display(), "config directory readable again");
                }
                l
            }
            Err(e) => {
                // Keep everything we had: an unreadable directory is a transient fault.
                let msg = format!("cannot list {}: {e}", self.dir.display());
                let changed = self.dir_error.as_deref() != Some(msg.as_str());
                if changed {
                    tracing::warn!(error = %msg, "config directory unreadable; keeping last state");
                }
                self.dir_error = Some(msg);
                return changed;
            }
        };
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| listing.contains_key(p));
        if self.files.len() != before {
            changed = true;
        }
        for (path, fp) in listing {
            if self.file_is_current(&path, fp) {
                continue;
            }
            changed = true;
            let result = read_file(&path, fp)
                .and_then(|text| parse_manifests(&text, &self.default_namespace).map_err(|e| e.to_string()));
            let entry =
                self.files.entry(path.clone()).or_insert(FileState { fingerprint: fp, last_good: None, error: None });
            entry.fingerprint = fp;
            match result {
                Ok(res) => {
                    tracing::info!(file = %path.display(), services = res.services.len(), routes = res.grpc_routes.len(), endpoint_slices = res.endpoint_slices.len(), "loaded config file");
                    entry.last_good = Some(res);
                    entry.error = None;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "config file invalid; keeping its last good state");
                    entry.error = Some(e);
                }
            }
        }
        changed
    }

    pub fn errors(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> =
            self.files.iter().filter_map(|(p, f)| f.error.clone().map(|e| (p.display().to_string(), e))).collect();
        if let Some(e) = &self.dir_error {
            out.insert(self.dir.display().to_string(), e.clone());
        }
        out
    }

    /// Compiles the union of every file's last good resources and publishes it.
    pub fn publish(&self, shared: &SharedState) -> u64 {
        let mut all = Resources::default();
        for f in self.files.values() {
            if let Some(r) = &f.last_good {
                all.extend(r.clone());
            }
        }
        let state = compile(&Snapshot::from_resources(&all), &self.options);
        for st in &state.route_statuses {
            for p in &st.parents {
                if !p.accepted.status || !p.resolved_refs.status {
                    tracing::warn!(route = %st.route, parent = %p.parent_ref.name, accepted = %p.accepted.reason, resolved_refs = %p.resolved_refs.reason, message = %format!("{}{}", p.accepted.message, p.resolved_refs.message), "route problem");
                }
            }
        }
        shared.publish(state, self.errors())
    }
}

/// The manifests of a directory and their fingerprints.
type Listing = HashMap<PathBuf, Fingerprint>;

fn list_manifests(dir: &Path) -> std::io::Result<Listing> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // ConfigMap mounts keep their data behind `..data`; editors leave dotfiles.
        if name.starts_with('.') {
            continue;
        }
        if !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")) {
            continue;
        }
        let path = entry.path();
        // Follow symlinks (ConfigMap files are symlinks into `..data`).
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !meta.is_file() {
            continue;
        }
        out.insert(path, Fingerprint { len: meta.len(), modified: meta.modified().ok() });
    }
    Ok(out)
}

fn read_file(path: &Path, fp: Fingerprint) -> Result<String, String> {
    if fp.len > MAX_FILE_BYTES {
        return Err(format!("file is {} bytes, more than the {MAX_FILE_BYTES} allowed", fp.len));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

/// Loads the directory once, marks the proxy ready, then polls for changes.
pub async fn run(
    mut source: FileSource,
    shared: Arc<SharedState>,
    poll: Duration,
    on_publish: impl Fn() + Send + 'static,
) {
    source.rescan();
    let version = source.publish(&shared);
    on_publish();
    shared.set_ready();
    tracing::info!(version, "initial configuration published");
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The listing check runs here, on the serving thread: a `read_dir` and one
        // `stat` per file take microseconds. Handing every poll to a blocking thread
        // and back cost more than the check: 6 context switches per poll, 14 ms of
        // CPU per 10 s idle on the benchmark's VM, and a call arriving meanwhile
        // waited on a one-CPU sidecar. Reading and parsing changed files stays off
        // this thread.
        let listing = source.list();
        if source.is_current(&listing) {
            continue;
        }
        let (s, changed) = match tokio::task::spawn_blocking(move || {
            let changed = source.apply(listing);
            (source, changed)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "config rescan task failed; file mode stops updating");
                return;
            }
        };
        source = s;
        if changed {
            let version = source.publish(&shared);
            on_publish();
            tracing::info!(version, "configuration updated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{name: grpc, port: 80}]}\n";

    #[test]
    fn broken_file_keeps_last_good_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("svc.yaml");
        std::fs::write(&file, SVC).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let shared = SharedState::new();
        let mut src = FileSource::new(dir.path().into(), "app".into(), CompileOptions::default());
        assert!(src.rescan());
        src.publish(&shared);
        assert!(shared.load().routing.services.keys().any(|k| &*k.name == "a"));
        assert!(!src.rescan(), "no change, no rescan result");

        // Break the file: the Service stays, the error is published.
        std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: x}]}\n  bad")
            .expect("write");
        assert!(src.rescan());
        src.publish(&shared);
        let g = shared.load();
        assert!(g.routing.services.keys().any(|k| &*k.name == "a"), "last good state kept");
        assert_eq!(g.source_errors.len(), 1);

        // Fix it: error cleared, new content applied.
        std::fs::write(&file, SVC.replace("name: a", "name: b")).expect("write");
        assert!(src.rescan());
        src.publish(&shared);
        let g = shared.load();
        assert!(g.routing.services.keys().any(|k| &*k.name == "b"));
        assert!(!g.routing.services.keys().any(|k| &*k.name == "a"));
        assert!(g.source_errors.is_empty());

        // Remove it: its resources go away.
        std::fs::remove_file(&file).expect("rm");
        assert!(src.rescan());
        src.publish(&shared);
        assert!(shared.load().routing.services.is_empty());
    }

    /// The poll's cheap check agrees with a full rescan: nothing to do after one, and
    /// a new, changed or removed file, or an unreadable directory, each asks for one.
    #[test]
    fn needs_rescan_sees_what_rescan_would() {
        let needs_rescan = |src: &FileSource| !src.is_current(&src.list());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("svc.yaml");
        std::fs::write(&file, SVC).expect("write");
        let mut src = FileSource::new(dir.path().into(), "app".into(), CompileOptions::default());
        assert!(needs_rescan(&src), "nothing loaded yet");
        assert!(src.rescan());
        assert!(!needs_rescan(&src), "just rescanned");

        // Ignored names do not count.
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), SVC).expect("write");
        assert!(!needs_rescan(&src));

        let other = dir.path().join("more.yaml");
        std::fs::write(&other, SVC.replace("name: a", "name: c")).expect("write");
        assert!(needs_rescan(&src), "a new file");
        assert!(src.rescan());
        assert!(!needs_rescan(&src));

        std::fs::write(&file, SVC.replace("name: a", "name: longer")).expect("write");
        assert!(needs_rescan(&src), "a changed file");
        assert!(src.rescan());
        assert!(!needs_rescan(&src));

        std::fs::remove_file(&other).expect("rm");
        assert!(needs_rescan(&src), "a removed file");
        assert!(src.rescan());
        assert!(!needs_rescan(&src));

        // An unreadable directory asks every time; rescan keeps the state and says
        // whether the error changed.
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(needs_rescan(&src), "directory gone");
        assert!(src.rescan(), "the error is new");
        assert!(needs_rescan(&src));
        assert!(!src.rescan(), "the same error again");
        assert!(!path.exists());
    }
}
