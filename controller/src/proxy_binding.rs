//! Keeps the subjects of the sidecars' ClusterRoleBinding (`strait-proxy` in
//! `deploy/`) equal to the ServiceAccount groups of the namespaces labelled
//! `strait.io/inject=enabled`, so labelling a namespace is the only step for its
//! sidecars to read what they need — and unlabelling it takes that away again.
//!
//! Every replica watches Namespaces; only the Lease holder writes. The decision is
//! [`desired_subjects`] (pure); the loop reads the binding, compares, and patches.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Subject};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use strait_kube::{Cache, run_watch};
use tokio::sync::{Notify, watch};

/// The namespace label that opts every pod of a namespace into injection.
pub const INJECT_LABEL: &str = "strait.io/inject";
/// Namespaces the webhook never injects (its namespaceSelector excludes them by
/// name), so their ServiceAccounts never get the sidecars' permissions either.
pub const EXCLUDED_NAMESPACES: [&str; 4] = ["kube-system", "kube-public", "kube-node-lease", "strait-system"];

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// What the decision needs of a Namespace: its name and the value of [`INJECT_LABEL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInject {
    pub name: String,
    pub inject: Option<String>,
}

/// Keeps only the name and the inject label of a watched Namespace.
pub fn convert_namespace(ns: Namespace) -> Option<NamespaceInject> {
    let name = ns.metadata.name?;
    let inject = ns.metadata.labels.and_then(|mut l| l.remove(INJECT_LABEL));
    Some(NamespaceInject { name, inject })
}

/// The subjects the binding should have: group `system:serviceaccounts:<ns>` for each
/// namespace labelled `strait.io/inject=enabled` (exactly that value, as the webhook's
/// namespaceSelector), except the [`EXCLUDED_NAMESPACES`]; sorted by name, no
/// duplicates. Nothing else: no per-user or per-ServiceAccount subjects.
pub fn desired_subjects<'a>(namespaces: impl IntoIterator<Item = &'a NamespaceInject>) -> Vec<Subject> {
    let names: BTreeSet<&str> = namespaces
        .into_iter()
        .filter(|ns| ns.inject.as_deref() == Some("enabled"))
        .map(|ns| ns.name.as_str())
        .filter(|name| !EXCLUDED_NAMESPACES.contains(name))
        .collect();
    names
        .into_iter()
        .map(|name| Subject {
            api_group: Some(RBAC_GROUP.to_owned()),
            kind: "Group".to_owned(),
            name: format!("system:serviceaccounts:{name}"),
            namespace: None,
        })
        .collect()
}

/// Whether `current` already grants exactly `desired` (order-insensitive; an absent
/// apiGroup on a Group subject means the RBAC group, as the API server defaults it).
pub fn subjects_match(current: &[Subject], desired: &[Subject]) -> bool {
    let key = |s: &Subject| {
        (s.kind.clone(), s.name.clone(), s.namespace.clone(), s.api_group.clone().filter(|g| !g.is_empty()))
    };
    let normalise = |s: &Subject| {
        let (kind, name, ns, group) = key(s);
        let group =
            if kind == "Group" || kind == "User" { group.or_else(|| Some(RBAC_GROUP.to_owned())) } else { group };
        (kind, name, ns, group)
    };
    let a: BTreeSet<_> = current.iter().map(normalise).collect();
    let b: BTreeSet<_> = desired.iter().map(normalise).collect();
    a == b && current.len() == a.len()
}

#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("reading ClusterRoleBinding {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("patching the subjects of ClusterRoleBinding {name}: {source}")]
    Patch { name: String, source: kube::Error },
}

/// Watches Namespaces and keeps ClusterRoleBinding `binding` in step with them.
pub struct ProxyBindingKeeper {
    client: Client,
    binding: String,
    namespaces: Arc<Cache<NamespaceInject>>,
    changed: Arc<Notify>,
}

impl ProxyBindingKeeper {
    pub fn new(client: Client, binding: String) -> Arc<Self> {
        Arc::new(ProxyBindingKeeper { client, binding, namespaces: Cache::new(), changed: Arc::new(Notify::new()) })
    }

    /// The Namespace watch has listed (readiness).
    pub fn synced(&self) -> bool {
        self.namespaces.is_synced()
    }

    /// Reads the binding and, if its subjects differ from [`desired_subjects`], replaces
    /// them (a merge patch carrying the resourceVersion read, so a concurrent change
    /// conflicts instead of being overwritten blindly). Returns whether it wrote.
    pub async fn reconcile_once(&self) -> Result<bool, BindingError> {
        let api: Api<ClusterRoleBinding> = Api::all(self.client.clone());
        let current =
            api.get(&self.binding).await.map_err(|source| BindingError::Read { name: self.binding.clone(), source })?;
        let namespaces = self.namespaces.values();
        let desired = desired_subjects(namespaces.iter().map(|n| n.as_ref()));
        if subjects_match(current.subjects.as_deref().unwrap_or_default(), &desired) {
            return Ok(false);
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "subjects": desired,
        });
        api.patch(&self.binding, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| BindingError::Patch { name: self.binding.clone(), source })?;
        let groups: Vec<&str> = desired.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(binding = %self.binding, subjects = ?groups, "sidecar binding subjects updated");
        Ok(true)
    }

    /// Watches Namespaces; while `leader` is true, reconciles on every change, every
    /// `resync` (which also undoes a hand edit or a re-apply), and 1 s after a failure.
    pub async fn run(self: Arc<Self>, mut leader: watch::Receiver<bool>, resync: Duration) {
        tokio::spawn(run_watch(
            "namespaces",
            Api::<Namespace>::all(self.client.clone()),
            watcher::Config::default(),
            convert_namespace,
            self.namespaces.clone(),
            self.changed.clone(),
        ));
        let mut tick = tokio::time::interval(resync);
        loop {
            tokio::select! {
                _ = self.changed.notified() => {
                    // Coalesce a burst of namespace events into one pass.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tick.tick() => {}
                _ = leader.changed() => {}
            }
            if !*leader.borrow() || !self.synced() {
                continue;
            }
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "keeping the sidecar binding in step failed; will retry");
                let changed = self.changed.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    changed.notify_one();
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, inject: Option<&str>) -> NamespaceInject {
        NamespaceInject { name: name.to_owned(), inject: inject.map(str::to_owned) }
    }

    fn group(name: &str) -> Subject {
        Subject {
            api_group: Some(RBAC_GROUP.to_owned()),
            kind: "Group".to_owned(),
            name: name.to_owned(),
            namespace: None,
        }
    }

    fn names(subjects: &[Subject]) -> Vec<&str> {
        subjects.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn only_namespaces_labelled_enabled_are_bound_sorted() {
        let all = [
            ns("zeta", Some("enabled")),
            ns("alpha", Some("enabled")),
            ns("off", Some("disabled")),
            ns("typo", Some("Enabled")),
            ns("unlabelled", None),
        ];
        let subjects = desired_subjects(&all);
        assert_eq!(names(&subjects), ["system:serviceaccounts:alpha", "system:serviceaccounts:zeta"]);
        assert!(subjects.iter().all(|s| s.kind == "Group" && s.api_group.as_deref() == Some(RBAC_GROUP)));
        assert!(subjects.iter().all(|s| s.namespace.is_none()));
    }

    #[test]
    fn system_namespaces_are_never_bound_even_when_labelled() {
        let all: Vec<NamespaceInject> = EXCLUDED_NAMESPACES.iter().map(|n| ns(n, Some("enabled"))).collect();
        assert!(desired_subjects(&all).is_empty());
    }

    #[test]
    fn no_labelled_namespace_means_no_subjects() {
        assert!(desired_subjects(&[ns("a", None), ns("b", Some("disabled"))]).is_empty());
        assert!(desired_subjects(&[]).is_empty());
    }

    #[test]
    fn convert_keeps_the_name_and_the_inject_label_only() {
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "team", "labels": {"strait.io/inject": "enabled", "other": "x"}},
        }))
        .expect("a Namespace");
        assert_eq!(convert_namespace(namespace), Some(ns("team", Some("enabled"))));
        let nameless: Namespace = serde_json::from_value(serde_json::json!({"metadata": {}})).expect("a Namespace");
        assert_eq!(convert_namespace(nameless), None);
    }

    #[test]
    fn subjects_match_ignores_order_and_the_defaulted_api_group() {
        let desired = vec![group("system:serviceaccounts:a"), group("system:serviceaccounts:b")];
        let reversed = vec![group("system:serviceaccounts:b"), group("system:serviceaccounts:a")];
        assert!(subjects_match(&reversed, &desired));
        let mut no_group = group("system:serviceaccounts:a");
        no_group.api_group = None;
        assert!(subjects_match(&[no_group, group("system:serviceaccounts:b")], &desired));
    }

    #[test]
    fn subjects_match_sees_extra_missing_and_duplicate_subjects() {
        let desired = vec![group("system:serviceaccounts:a")];
        assert!(!subjects_match(&[], &desired));
        assert!(!subjects_match(&[group("system:serviceaccounts:a"), group("system:serviceaccounts:app")], &desired));
        assert!(!subjects_match(&[group("system:serviceaccounts:a"), group("system:serviceaccounts:a")], &desired));
        let sa = Subject {
            api_group: None,
            kind: "ServiceAccount".to_owned(),
            name: "default".to_owned(),
            namespace: Some("a".to_owned()),
        };
        assert!(!subjects_match(&[sa], &desired));
        assert!(subjects_match(&[], &[]));
    }
}
