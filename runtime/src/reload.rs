//! Configuration reload (SIGHUP, `POST /reload`): the file is read and
//! checked; a good one is compiled once and handed to every worker, which
//! takes it between requests (requests in flight finish on theirs); a bad
//! one changes nothing and is counted.
//!
//! What a reload applies today: routes (matches, targets and split
//! weights, timeouts, retries, rate limits, names). Listeners, clusters,
//! `[runtime]` and `[admin]` are the workers' own and stay as they started;
//! a file that changes them is refused with a message naming the change, so
//! that upstream pools and balancer state are never disturbed by a reload.

use crate::admin::Mailbox;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use weft_core::Config;

/// A handle that reloads the running configuration; cheap to clone.
#[derive(Clone)]
pub struct Reload {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configuration in force, and the lock that puts reloads in a row.
    config: Mutex<Arc<Config>>,
    /// 1 at start, one more per reload applied.
    generation: AtomicU64,
    /// Reloads refused (a bad file, or a change a reload cannot apply).
    failures: AtomicU64,
    /// Per worker: where its new routes go.
    mailboxes: Vec<Arc<Mailbox>>,
    /// The file reloads read, when weft was started from one.
    source: Mutex<Option<PathBuf>>,
}

impl Reload {
    pub(crate) fn new(config: Arc<Config>, mailboxes: Vec<Arc<Mailbox>>) -> Self {
        Reload {
            inner: Arc::new(Inner {
                config: Mutex::new(config),
                generation: AtomicU64::new(1),
                failures: AtomicU64::new(0),
                mailboxes,
                source: Mutex::new(None),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.inner
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The generation in force: 1 at start, one more per reload applied.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Reloads refused so far.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::SeqCst)
    }

    /// Names the file [`Reload::from_source`] reads.
    pub fn set_source(&self, path: PathBuf) {
        *self.inner.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    /// Applies `new` when it changes routes only; its generation, or why
    /// not (the running configuration stays).
    pub fn apply(&self, new: Config) -> Result<u64, String> {
        let mut current = self.inner.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(what) = current.routes_only_change(&new) {
            return Err(self.refused(format!(
                "{what}: a reload applies route changes only (matches, splits, timeouts, retries, rate limits); restart weft to apply this one"
            )));
        }
        // The clusters as running (their endpoints as resolved at start).
        let mut new = new;
        new.clusters = current.clusters.clone();
        for w in new.warnings() {
            tracing::warn!("reload: {w}");
        }
        let new = Arc::new(new);
        *current = new.clone();
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        for m in &self.inner.mailboxes {
            m.reload(new.clone());
        }
        tracing::info!("configuration reloaded: generation {generation}");
        Ok(generation)
    }

    /// Reads and checks the file weft was started from, and applies it.
    pub fn from_source(&self) -> Result<u64, String> {
        let source = self
            .inner
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(path) = source else {
            return Err(self.refused(
                "weft was not started from a file (`weft --config FILE`): there is nothing to reload from"
                    .into(),
            ));
        };
        match crate::load::from_file(&path) {
            Ok(config) => self.apply(config),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Counts a refused reload and says why, in the log and to the caller.
    fn refused(&self, why: String) -> String {
        self.inner.failures.fetch_add(1, Ordering::SeqCst);
        let msg = format!(
            "reload refused, still running generation {}: {why}",
            self.generation()
        );
        tracing::warn!("{msg}");
        msg
    }
}
