//! The routing state shared by every request, swapped atomically on each change.
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use strait_routing::RoutingState;

/// One compiled generation of configuration.
#[derive(Debug, Default)]
pub struct Generation {
    pub routing: RoutingState,
    /// Increases with every swap.
    pub version: u64,
    /// Per source (file) errors; the source's last good state stays in effect.
    pub source_errors: BTreeMap<String, String>,
    pub updated_at: Option<SystemTime>,
}

/// What the data plane reads: lock-free loads, atomic swaps.
pub struct SharedState {
    current: ArcSwap<Generation>,
    ready: AtomicBool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceErrors<'a> {
    pub version: u64,
    pub errors: &'a BTreeMap<String, String>,
}

impl SharedState {
    pub fn new() -> Arc<Self> {
        Arc::new(SharedState { current: ArcSwap::from_pointee(Generation::default()), ready: AtomicBool::new(false) })
    }

    pub fn load(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Installs a new generation; requests already routed keep the rules they hold.
    pub fn publish(&self, routing: RoutingState, source_errors: BTreeMap<String, String>) -> u64 {
        let version = self.current.load().version + 1;
        self.current.store(Arc::new(Generation {
            routing,
            version,
            source_errors,
            updated_at: Some(SystemTime::now()),
        }));
        // The previous state is freed now (unless a request still holds it).
        crate::heap::release_free_memory();
        version
    }

    /// Ready once the first complete configuration has been published.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
