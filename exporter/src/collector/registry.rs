//! Registration in the collector's own file (node_exporter's `registerCollector(name, default,
//! factory)`): each collector module exports a [`Registration`] whose factory builds it from the
//! shared [`Deps`] and hands it to the [`Runner`]; the daemon loops over the list of them.
//!
//! Collectors do not hold each other's handles: what one publishes for others (a view, a feed)
//! it puts into [`Deps`] under its own type, and a collector started later that wants it takes
//! it from there. One absent (its collector disabled) is simply not there.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use super::{Name, Runner};
use crate::libvirt::JobSource;
use crate::settings::Settings;
use crate::state::SharedState;

/// Why a collector could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {collector} collector: {source}")]
pub struct StartError {
    pub collector: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// What every factory may use: the settings, the job source, the shared state, and whatever
/// the daemon and the collectors started before put in ([`Deps::put`]).
pub struct Deps {
    pub settings: Settings,
    pub source: Arc<dyn JobSource>,
    pub state: SharedState,
    parts: HashMap<TypeId, Box<dyn Any + Send>>,
}

impl Deps {
    pub fn new(settings: Settings, source: Arc<dyn JobSource>, state: SharedState) -> Self {
        Deps {
            settings,
            source,
            state,
            parts: HashMap::new(),
        }
    }

    /// Publish `v` for the collectors started after (one value per type).
    pub fn put<T: Send + 'static>(&mut self, v: T) {
        self.parts.insert(TypeId::of::<T>(), Box::new(v));
    }

    /// A copy of what was published under `T`, if anything was.
    pub fn get<T: Clone + 'static>(&self) -> Option<T> {
        self.parts.get(&TypeId::of::<T>())?.downcast_ref().cloned()
    }

    /// Take what was published under `T` (a value only one collector may own).
    pub fn take<T: 'static>(&mut self) -> Option<T> {
        let v = self.parts.remove(&TypeId::of::<T>())?;
        v.downcast().ok().map(|b| *b)
    }
}

/// Builds a collector from the dependencies and starts it on the runner.
pub type Factory = fn(&mut Deps, &mut Runner) -> std::io::Result<()>;

/// One collector: its name and its factory.
#[derive(Clone, Copy)]
pub struct Registration {
    pub name: Name,
    pub start: Factory,
}

/// Start every enabled collector of `registrations`, in order (a collector that reads what
/// another publishes comes after it).
pub fn start_all(
    registrations: &[Registration],
    deps: &mut Deps,
    runner: &mut Runner,
) -> Result<(), StartError> {
    for r in registrations {
        if runner.enabled(r.name) {
            (r.start)(deps, runner).map_err(|source| StartError {
                collector: r.name.as_str(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deps_give_what_was_put_by_type_and_take_removes_it() {
        let mut d = Deps::new(
            crate::settings::parse(["vm-migration-exporter"]).expect("defaults"),
            Arc::new(crate::jobs::trace::ReplaySource::new(Vec::new())),
            crate::state::shared(),
        );
        d.put(7u32);
        d.put(String::from("view"));
        assert_eq!(d.get::<u32>(), Some(7));
        assert_eq!(d.get::<String>().as_deref(), Some("view"));
        assert_eq!(d.get::<u64>(), None, "nothing published under u64");
        assert_eq!(d.take::<String>().as_deref(), Some("view"));
        assert_eq!(d.get::<String>(), None, "taken");
    }
}
