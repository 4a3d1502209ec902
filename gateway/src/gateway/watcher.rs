//! Watches every file the policy was built from and reloads when one
//! changes.
//!
//! Editors and orchestrators change files in many ways: written in place
//! (and seen half-written), written to a temporary file and renamed over,
//! deleted and recreated, swap files next to them, or — Kubernetes
//! ConfigMaps — a `..data` symlink swapped atomically. Watching the files
//! themselves misses most of these (a rename replaces the inode being
//! watched), so moat watches their *directories* and treats any change in
//! them as "maybe". After a quiet period the files are compiled; a policy
//! whose content hash equals the one in force is not a change, so swap files
//! and touches cost a compile and nothing else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Reloader, Trigger};

/// Quiet time after the last event before the files are read.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Files must look the same (size, mtime) this long apart before compiling,
/// so a writer that is still writing is waited for.
const SETTLE: Duration = Duration::from_millis(100);

pub fn spawn(reloader: Arc<Reloader>, stop: CancellationToken) -> Option<JoinHandle<()>> {
    let wake = Arc::new(Notify::new());
    let notify_wake = wake.clone();
    let interesting = Arc::new(RwLock::new(BTreeSet::new()));
    let filter = interesting.clone();
    let watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if is_relevant(&event.kind) && touches_policy(&event.paths, &filter) => {
                notify_wake.notify_one()
            }
            Ok(_) => {}
            Err(e) => crate::warn_limited!(error = %e, "file watcher error"),
        });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch config files; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let mut watched = BTreeSet::new();
        update_watches(&mut watcher, &mut watched, &reloader, &interesting);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = wake.notified() => {}
            }
            debounce(&wake, &reloader).await;
            reloader.reload(Trigger::FileChange).await;
            // The new policy may name files in other directories.
            update_watches(&mut watcher, &mut watched, &reloader, &interesting);
        }
    }))
}

/// Only names that can change the policy count: the files themselves (by
/// name, since renames replace them) and Kubernetes' `..data`-style links.
/// A busy neighbour, such as an audit log in the same folder, must not keep
/// postponing reloads.
fn touches_policy(paths: &[PathBuf], names: &RwLock<BTreeSet<PathBuf>>) -> bool {
    let names = names.read().expect("watch set poisoned");
    paths.iter().any(|p| {
        names.contains(p)
            || p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".."))
    })
}

/// Our own reads of the files show up as access events; only changes count.
fn is_relevant(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    }
}

async fn debounce(wake: &Notify, reloader: &Reloader) {
    loop {
        // Wait for a quiet period.
        while tokio::time::timeout(DEBOUNCE, wake.notified())
            .await
            .is_ok()
        {}
        let before = stat_all(reloader);
        tokio::time::sleep(SETTLE).await;
        if stat_all(reloader) == before {
            return;
        }
    }
}

fn stat_all(reloader: &Reloader) -> Vec<Option<(u64, SystemTime)>> {
    reloader
        .current()
        .sources
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        })
        .collect()
}

fn directories(reloader: &Reloader) -> BTreeSet<PathBuf> {
    let mut dirs: BTreeSet<PathBuf> = reloader
        .current()
        .sources
        .iter()
        .map(|p| parent(p))
        .collect();
    dirs.insert(parent(reloader.config_path()));
    dirs
}

/// Absolute without resolving symlinks (a ConfigMap's links must stay
/// links); notify reports paths under the absolute directory watched.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn parent(p: &Path) -> PathBuf {
    let p = &absolute(p);
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn update_watches(
    watcher: &mut impl Watcher,
    watched: &mut BTreeSet<PathBuf>,
    reloader: &Reloader,
    interesting: &RwLock<BTreeSet<PathBuf>>,
) {
    {
        let mut names = interesting.write().expect("watch set poisoned");
        names.clear();
        names.extend(reloader.current().sources.iter().map(|p| absolute(p)));
        names.insert(absolute(reloader.config_path()));
    }
    let wanted = directories(reloader);
    for gone in watched.difference(&wanted).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&gone);
        watched.remove(&gone);
    }
    for dir in wanted.difference(watched).cloned().collect::<Vec<_>>() {
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "watching");
                watched.insert(dir);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
}
