//! The runner: threads for [`Rounds`] collectors, tasks for [`Tasks`] ones, the timing of every
//! round ([`execute`], [`TaskRounds`], [`Timed`]), waking ([`Waker`], [`Feed`]) and stopping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{CollectError, Event, Name, Rounds, Statuses, Tasks};

/// Time `round` and record its result for `name`: the one place that sets
/// `collector_success` and `collector_duration_seconds`.
pub fn execute(
    statuses: &Statuses,
    name: Name,
    round: impl FnOnce() -> Result<(), CollectError>,
) -> bool {
    let started = Instant::now();
    // A panicking round must not end the collector's thread (its series would freeze while
    // the process looks healthy): it counts as a failed round and the next one runs as usual.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(round)).unwrap_or_else(|_| {
            error!(
                collector = name.as_str(),
                "collector round panicked; counted as failed, the next round runs as usual"
            );
            Err(CollectError::new("the round panicked"))
        });
    if let Err(e) = &result {
        debug!(collector = name.as_str(), error = %e, "collector round failed");
    }
    statuses.set(name, result.is_ok(), started.elapsed());
    result.is_ok()
}

/// Starts a [`Rounds`] collector's round at once. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Waker(Sender<()>);

impl Waker {
    pub fn wake(&self) {
        // The collector's thread is gone only while stopping.
        let _ = self.0.send(());
    }
}

/// A value one collector publishes for another, which is woken when it changes (the jobs
/// sampler tells discovery which jobs run).
#[derive(Clone, Debug)]
pub struct Feed<T> {
    value: Arc<Mutex<T>>,
    waker: Waker,
}

impl<T: Clone + PartialEq + Default> Feed<T> {
    pub fn new(waker: Waker) -> Self {
        Feed {
            value: Arc::new(Mutex::new(T::default())),
            waker,
        }
    }

    /// Store `v`; wake the reader when it differs from what it had.
    pub fn publish(&self, v: T) {
        let changed = {
            let mut cur = self.value.lock();
            let changed = *cur != v;
            *cur = v;
            changed
        };
        if changed {
            self.waker.wake();
        }
    }

    pub fn get(&self) -> T {
        self.value.lock().clone()
    }
}

/// Round bookkeeping of a [`Tasks`] collector. A round begins when a member starts work with
/// no round open and is complete once every member of that moment has finished work it began
/// inside the round; its duration is from that first start to that last finish, and it
/// succeeds when every one of them did. Members joining meanwhile count from the next round.
#[derive(Clone, Debug)]
pub struct TaskRounds<K: Ord> {
    statuses: Statuses,
    label: &'static str,
    inner: Arc<Mutex<RoundsInner<K>>>,
}

#[derive(Debug)]
struct RoundsInner<K: Ord> {
    /// Members, with when their current work began.
    members: BTreeMap<K, Option<Instant>>,
    open: Option<OpenRound<K>>,
}

#[derive(Debug)]
struct OpenRound<K: Ord> {
    began: Instant,
    pending: BTreeSet<K>,
    ok: bool,
}

impl<K: Ord + Clone> TaskRounds<K> {
    pub fn new(statuses: Statuses, name: Name) -> Self {
        Self::labelled(statuses, name.as_str())
    }

    /// Rounds reported under `label` (`collector="<label>"`).
    pub fn labelled(statuses: Statuses, label: &'static str) -> Self {
        TaskRounds {
            statuses,
            label,
            inner: Arc::new(Mutex::new(RoundsInner {
                members: BTreeMap::new(),
                open: None,
            })),
        }
    }

    /// The `collector` label its rounds report under.
    pub fn label(&self) -> &'static str {
        self.label
    }

    pub fn join(&self, k: K) {
        self.inner.lock().members.insert(k, None);
    }

    /// `k` no longer runs; the open round does not wait for it.
    pub fn leave(&self, k: &K) {
        let mut g = self.inner.lock();
        g.members.remove(k);
        if let Some(open) = g.open.as_mut() {
            open.pending.remove(k);
        }
        self.close_if_done(&mut g);
    }

    /// `k` starts one piece of work.
    pub fn begin(&self, k: &K) {
        let mut g = self.inner.lock();
        // Read the clock under the lock: a time taken before it could precede a round another
        // member opened meanwhile, and this work would wrongly count for the round before.
        let now = Instant::now();
        let Some(began) = g.members.get_mut(k) else {
            return;
        };
        *began = Some(now);
        if g.open.is_none() {
            let pending = g.members.keys().cloned().collect();
            g.open = Some(OpenRound {
                began: now,
                pending,
                ok: true,
            });
        }
    }

    /// `k` finished the work it began; `ok` is false when it could not run at all.
    pub fn end(&self, k: &K, ok: bool) {
        let mut g = self.inner.lock();
        let began = g.members.get(k).copied().flatten();
        if let (Some(open), Some(began)) = (g.open.as_mut(), began) {
            // Work begun before the round opened belongs to the previous one.
            if began >= open.began && open.pending.remove(k) {
                open.ok &= ok;
            }
        }
        self.close_if_done(&mut g);
    }

    fn close_if_done(&self, g: &mut RoundsInner<K>) {
        if g.open.as_ref().is_some_and(|o| o.pending.is_empty()) {
            if let Some(open) = g.open.take() {
                self.statuses
                    .set_label(self.label, open.ok, open.began.elapsed());
            }
        }
    }
}

/// A self-metrics encoder (the process's, the record file's, the reload status) timed like a
/// collector's round: its encoding at scrape time is the round, reported under `label`.
#[derive(Debug)]
pub struct Timed {
    pub label: &'static str,
    pub statuses: Statuses,
    pub inner: Box<dyn prometheus_client::collector::Collector>,
}

impl prometheus_client::collector::Collector for Timed {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let started = Instant::now();
        let result = self.inner.encode(encoder);
        self.statuses
            .set_label(self.label, result.is_ok(), started.elapsed());
        result
    }
}

struct Wake {
    tx: Sender<()>,
    rx: Option<Receiver<()>>,
}

/// Owns the collectors' threads and tasks and stops them; see the module doc.
pub struct Runner {
    statuses: Statuses,
    registry: Registry,
    enabled: BTreeSet<Name>,
    cancel: CancellationToken,
    wakes: BTreeMap<Name, Wake>,
    threads: Vec<JoinHandle<()>>,
}

impl Runner {
    pub fn new(statuses: Statuses, registry: Registry, enabled: BTreeSet<Name>) -> Self {
        Runner {
            statuses,
            registry,
            enabled,
            cancel: CancellationToken::new(),
            wakes: BTreeMap::new(),
            threads: Vec::new(),
        }
    }

    pub fn enabled(&self, name: Name) -> bool {
        self.enabled.contains(&name)
    }

    /// Cancelled when the runner stops: [`Tasks`] collectors end their tasks on it.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The waker of the [`Rounds`] collector `name` (added now or later).
    pub fn waker(&mut self, name: Name) -> Waker {
        Waker(self.wake(name).tx.clone())
    }

    /// Round bookkeeping for the [`Tasks`] collector `name`.
    pub fn task_rounds<K: Ord + Clone>(&self, name: Name) -> TaskRounds<K> {
        TaskRounds::new(self.statuses.clone(), name)
    }

    /// Round bookkeeping for tasks that report under a label of their own.
    pub fn task_rounds_labelled<K: Ord + Clone>(&self, label: &'static str) -> TaskRounds<K> {
        TaskRounds::labelled(self.statuses.clone(), label)
    }

    fn wake(&mut self, name: Name) -> &mut Wake {
        self.wakes.entry(name).or_insert_with(|| {
            let (tx, rx) = mpsc::channel();
            Wake { tx, rx: Some(rx) }
        })
    }

    /// Register and start a [`Rounds`] collector, unless it is disabled.
    pub fn add_rounds(&mut self, mut c: impl Rounds) -> std::io::Result<()> {
        let name = c.name();
        if !self.enabled(name) {
            return Ok(());
        }
        c.register(&mut self.registry);
        let wake_tx = self.waker(name);
        let wake_rx = match self.wake(name).rx.take() {
            Some(rx) => rx,
            // Added twice: a second thread would have nothing to wait on.
            None => return Ok(()),
        };
        if let Some(mut events) = c.events() {
            let (cancel, statuses) = (self.cancel.clone(), self.statuses.clone());
            let h = std::thread::Builder::new()
                .name(format!("{}-events", name.as_str()))
                .spawn(move || {
                    // Short waits, so a stop is seen soon.
                    while !cancel.is_cancelled() {
                        match events.next(Duration::from_millis(500)) {
                            Event::Idle | Event::Handled { round_now: false } => {}
                            Event::Handled { round_now: true } => wake_tx.wake(),
                            Event::Failed => statuses.set(name, false, Duration::ZERO),
                            Event::Closed => break,
                        }
                    }
                })?;
            self.threads.push(h);
        }
        let (cancel, statuses) = (self.cancel.clone(), self.statuses.clone());
        let h = std::thread::Builder::new()
            .name(name.as_str().into())
            .spawn(move || {
                while !cancel.is_cancelled() {
                    execute(&statuses, name, || c.round());
                    match wake_rx.recv_timeout(c.period()) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    // Several wakes during a round need one more round, not several.
                    while wake_rx.try_recv().is_ok() {}
                }
            })?;
        self.threads.push(h);
        Ok(())
    }

    /// Register and start a [`Tasks`] collector, unless it is disabled.
    pub fn add_tasks(&mut self, c: impl Tasks) {
        if !self.enabled(c.name()) {
            return;
        }
        c.register(&mut self.registry);
        Box::new(c).start();
    }

    /// The registry with every collector's families, and the handle that stops them.
    pub fn into_parts(self) -> (Registry, Running) {
        let wakes = self.wakes.into_values().map(|w| Waker(w.tx)).collect();
        (
            self.registry,
            Running {
                cancel: self.cancel,
                wakes,
                threads: self.threads,
            },
        )
    }
}

/// The started collectors.
pub struct Running {
    cancel: CancellationToken,
    wakes: Vec<Waker>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop every collector: cancel tasks, wake waiting rounds, join threads. A round stuck in
    /// a libvirt call ends when the call returns (keepalive bounds it).
    pub fn stop(self) {
        self.cancel.cancel();
        for w in &self.wakes {
            w.wake();
        }
        for t in self.threads {
            if t.join().is_err() {
                warn!("a collector thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::{Collect, CollectorStatus};

    fn status(statuses: &Statuses) -> Option<CollectorStatus> {
        statuses.get(Name::Probe)
    }

    #[test]
    fn a_task_round_closes_when_every_member_reported_and_lasts_from_first_start() {
        let state = Statuses::default();
        let r = TaskRounds::new(state.clone(), Name::Probe);
        r.join("a");
        r.join("b");
        r.begin(&"a");
        std::thread::sleep(Duration::from_millis(30));
        r.begin(&"b");
        r.end(&"b", true);
        assert_eq!(status(&state), None, "a has not reported yet");
        r.end(&"a", true);
        let s = status(&state).expect("round closed");
        assert!(s.success);
        assert!(s.duration_seconds >= 0.03, "{s:?}: from a's start");
    }

    #[test]
    fn one_failed_member_fails_the_round_and_leaving_closes_it() {
        let state = Statuses::default();
        let r = TaskRounds::new(state.clone(), Name::Probe);
        r.join(1);
        r.join(2);
        r.begin(&1);
        r.end(&1, false);
        assert_eq!(status(&state), None);
        r.leave(&2);
        assert!(!status(&state).expect("closed by leave").success);
    }

    #[test]
    fn work_begun_before_a_round_opened_does_not_close_it() {
        let state = Statuses::default();
        let r = TaskRounds::new(state.clone(), Name::Probe);
        r.join("slow");
        r.join("fast");
        r.begin(&"slow");
        r.begin(&"fast");
        r.end(&"fast", true);
        r.end(&"slow", true);
        assert!(status(&state).expect("first round").success);
        state.0.lock().clear();
        // A new round opens with fast; slow's next work is still in flight from before.
        r.begin(&"fast");
        r.end(&"fast", true);
        assert_eq!(status(&state), None, "slow has not reported in this round");
        r.begin(&"slow");
        r.end(&"slow", true);
        assert!(status(&state).is_some());
    }

    struct Counting {
        rounds: Arc<Mutex<u32>>,
        fail: bool,
    }
    impl Collect for Counting {
        fn name(&self) -> Name {
            Name::Netdev
        }
    }
    impl Rounds for Counting {
        fn round(&mut self) -> Result<(), CollectError> {
            *self.rounds.lock() += 1;
            if self.fail {
                return Err(CollectError::new("no /proc"));
            }
            Ok(())
        }
        fn period(&self) -> Duration {
            Duration::from_secs(3600)
        }
    }

    struct Panicking {
        rounds: Arc<Mutex<u32>>,
    }
    impl Collect for Panicking {
        fn name(&self) -> Name {
            Name::Netdev
        }
    }
    impl Rounds for Panicking {
        fn round(&mut self) -> Result<(), CollectError> {
            *self.rounds.lock() += 1;
            if *self.rounds.lock() == 1 {
                panic!("a bug in the first round");
            }
            Ok(())
        }
        fn period(&self) -> Duration {
            Duration::from_secs(3600)
        }
    }

    /// A panic in a collector's round must not end its thread (the process would go on serving
    /// frozen series): the round counts as failed and the next one runs.
    #[test]
    fn a_panicking_round_fails_and_the_collector_goes_on() {
        let state = Statuses::default();
        let mut runner = Runner::new(
            state.clone(),
            Registry::default(),
            Name::ALL.into_iter().collect(),
        );
        let rounds = Arc::new(Mutex::new(0));
        let waker = runner.waker(Name::Netdev);
        runner
            .add_rounds(Panicking {
                rounds: rounds.clone(),
            })
            .expect("thread");
        let (_, running) = runner.into_parts();
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.get(Name::Netdev).is_none() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(state.get(Name::Netdev).map(|s| s.success), Some(false));
        waker.wake();
        while *rounds.lock() < 2 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(
            *rounds.lock(),
            2,
            "the thread survived and ran the next round"
        );
        running.stop();
        assert_eq!(state.get(Name::Netdev).map(|s| s.success), Some(true));
    }

    #[test]
    fn runner_times_rounds_wakes_them_and_stops() {
        let state = Statuses::default();
        let mut runner = Runner::new(
            state.clone(),
            Registry::default(),
            Name::ALL.into_iter().collect(),
        );
        let rounds = Arc::new(Mutex::new(0));
        let waker = runner.waker(Name::Netdev);
        runner
            .add_rounds(Counting {
                rounds: rounds.clone(),
                fail: true,
            })
            .expect("thread");
        let (_, running) = runner.into_parts();
        let deadline = Instant::now() + Duration::from_secs(10);
        while *rounds.lock() < 1 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        waker.wake();
        while *rounds.lock() < 2 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(*rounds.lock(), 2, "the first round, then one on wake");
        let started = Instant::now();
        running.stop();
        assert!(started.elapsed() < Duration::from_secs(5), "stop wakes it");
        let s = state.get(Name::Netdev).expect("status");
        assert!(!s.success);
    }

    #[test]
    fn disabled_collectors_do_not_run() {
        let state = Statuses::default();
        let mut runner = Runner::new(state.clone(), Registry::default(), BTreeSet::new());
        let rounds = Arc::new(Mutex::new(0));
        runner
            .add_rounds(Counting {
                rounds: rounds.clone(),
                fail: false,
            })
            .expect("nothing to start");
        runner.into_parts().1.stop();
        assert_eq!(*rounds.lock(), 0);
        assert!(state.all().is_empty());
    }
}
