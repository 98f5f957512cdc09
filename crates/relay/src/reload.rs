//! Reloading the configuration file while the relay runs (SIGHUP, `POST /v1/reload`): peers
//! and routes — with their limits, certificates, pins and credentials — are replaced for every
//! later session and transaction; sessions and transactions under way finish with what they
//! started with. A file that does not validate, or whose files do not load, changes nothing.
//! Keys that shape the running process (listeners, store, API, cluster, queue and client
//! settings, our own identity) are reported as needing a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::{Config, ConfigError, Problem};
use crate::directory::Directory;
use crate::live::Live;

/// What a reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub peers: usize,
    pub routes: usize,
    /// Sections that changed but apply only after a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Re-reads one configuration file into the live directory.
pub struct Reloader {
    path: PathBuf,
    running: Mutex<Config>,
    dir: Arc<Live<Directory>>,
    /// Called after each applied reload (e.g. to close connections made under old settings).
    after: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Reloader {
    pub fn new(path: PathBuf, running: Config, dir: Arc<Live<Directory>>) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(running),
            dir,
            after: None,
        }
    }

    /// The configuration in force: the one started with, or the last one applied.
    pub fn running(&self) -> Config {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `hook` after every applied reload.
    pub fn after_each(mut self, hook: impl Fn() + Send + Sync + 'static) -> Reloader {
        self.after = Some(Box::new(hook));
        self
    }

    /// Reads, validates and applies the file; every problem with its key path otherwise.
    pub fn reload(&self) -> Result<Reloaded, Vec<Problem>> {
        let new = Config::load(&self.path).map_err(|e| match e {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { path, reason } => vec![Problem {
                path: path.display().to_string(),
                message: reason,
            }],
        })?;
        let directory = Directory::load(&new)?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let restart_needed = restart_needed(&running, &new);
        self.dir.set(directory);
        let done = Reloaded {
            peers: new.peers.len(),
            routes: new.routes.len(),
            restart_needed,
        };
        *running = new;
        drop(running);
        if let Some(hook) = &self.after {
            hook();
        }
        Ok(done)
    }
}

/// The sections that differ, other than what a reload applies (peers, routes, and the
/// subscribers' prefixes and default peer, which live in the directory).
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mmse = |c: &Config| {
        let mut m = c.mmse.clone();
        m.local_prefixes.clear();
        m.default_peer = None;
        format!("{m:?}")
    };
    let mut out = Vec::new();
    let sections: [(&'static str, String, String); 8] = [
        ("mmse", mmse(old), mmse(new)),
        ("smtp", format!("{:?}", old.smtp), format!("{:?}", new.smtp)),
        ("api", format!("{:?}", old.api), format!("{:?}", new.api)),
        (
            "store",
            format!("{:?}", old.store),
            format!("{:?}", new.store),
        ),
        ("dns", format!("{:?}", old.dns), format!("{:?}", new.dns)),
        (
            "queue",
            format!("{:?}", old.queue),
            format!("{:?}", new.queue),
        ),
        (
            "cluster",
            format!("{:?}", old.cluster),
            format!("{:?}", new.cluster),
        ),
        (
            "client",
            format!("{:?}", old.client),
            format!("{:?}", new.client),
        ),
    ];
    for (name, a, b) in sections {
        if a != b {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_reload_cannot_apply_is_reported() {
        let old = Config::from_toml("[mmse]\nlocal_prefixes = [\"+1555\"]").unwrap();
        let new = Config::from_toml(
            "[mmse]\nlocal_prefixes = [\"+1556\"]\n[[peer]]\nname = \"b\"\ndomains = [\"b.example\"]\n",
        )
        .unwrap();
        assert!(restart_needed(&old, &new).is_empty());
        let new = Config::from_toml("[mmse]\nlocal_prefixes = [\"+1555\"]\n[smtp]\nlisten = [\"127.0.0.1:2600\"]\n[queue]\nack_resends = 1").unwrap();
        assert_eq!(restart_needed(&old, &new), ["smtp", "queue"]);
    }
}
