//! The crate's few synchronisation primitives, written once: a lock that survives poisoning,
//! a wait on a condition variable bounded by a deadline, and [`SingleFlight`], "one thread does
//! the work, the others wait for its result within their own deadline".
//!
//! # What it owns, what it must not touch
//!
//! Only generic mechanisms: nothing here knows of spans, caches or registries. Used by the
//! fetches in flight (one fetch per span), by the cache (one verification per entry), by the
//! scheduler and by the evictor.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Locks `m`, also when a thread panicked while holding it: every structure the crate guards
/// stays consistent at every step (a panic leaves no half-done update behind that matters).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `cv` while `waiting(&mut state)` holds, until `deadline` (`None`: no deadline).
/// Returns the guard and whether the wait ended because the condition no longer holds (false:
/// the deadline passed first).
pub(crate) fn wait_while<'a, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
    mut waiting: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    while waiting(&mut guard) {
        let left = match deadline {
            None => Duration::from_secs(3600),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => return (guard, false),
            },
        };
        guard = cv
            .wait_timeout(guard, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    (guard, true)
}

/// The work in flight, by key: at most one [`Claim`] per key at a time.
#[derive(Debug)]
pub(crate) struct SingleFlight<K, V> {
    map: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// One piece of work in flight: its result, once there is one.
#[derive(Debug)]
pub(crate) struct Flight<V> {
    result: Mutex<Option<V>>,
    done: Condvar,
}

impl<V: Clone> Flight<V> {
    /// Waits for the result until `deadline`; `None` when the deadline passed first.
    pub(crate) fn wait(&self, deadline: Instant) -> Option<V> {
        let (result, _) = wait_while(&self.done, lock(&self.result), Some(deadline), |r| {
            r.is_none()
        });
        result.clone()
    }
}

/// The outcome of [`SingleFlight::join`].
pub(crate) enum Joined<K: Eq + Hash + Copy, V> {
    /// Nobody was doing the work: the caller must, and complete the claim.
    Owner(Claim<K, V>),
    /// Someone else is doing it: wait on this.
    Waiter(Arc<Flight<V>>),
}

/// What a claim dropped uncompleted hands its waiters; told whether its thread is unwinding
/// from a panic.
pub(crate) type Abandoned<V> = Box<dyn FnOnce(bool) -> V + Send>;

impl<K: Eq + Hash + Copy, V> SingleFlight<K, V> {
    /// Claims `key`, or joins the flight under way. `abandoned` makes the result the waiters
    /// get if the claim is dropped without being completed.
    pub(crate) fn join(
        self: &Arc<Self>,
        key: K,
        abandoned: impl FnOnce(bool) -> V + Send + 'static,
    ) -> Joined<K, V> {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(&key) {
            return Joined::Waiter(flight.clone());
        }
        let flight = Arc::new(Flight {
            result: Mutex::new(None),
            done: Condvar::new(),
        });
        map.insert(key, flight.clone());
        Joined::Owner(Claim {
            flights: self.clone(),
            key,
            flight,
            abandoned: Some(Box::new(abandoned)),
        })
    }

    /// Claims `key` only if nobody is working on it.
    pub(crate) fn try_claim(
        self: &Arc<Self>,
        key: K,
        abandoned: impl FnOnce(bool) -> V + Send + 'static,
    ) -> Option<Claim<K, V>> {
        match self.join(key, abandoned) {
            Joined::Owner(claim) => Some(claim),
            Joined::Waiter(_) => None,
        }
    }

    /// Keys in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// The duty to do the work of one key. Completing it wakes the waiters; dropping it
/// uncompleted (a dropped job, a panic) wakes them with what `abandoned` makes.
pub(crate) struct Claim<K: Eq + Hash + Copy, V> {
    flights: Arc<SingleFlight<K, V>>,
    key: K,
    flight: Arc<Flight<V>>,
    /// `None` once completed.
    abandoned: Option<Abandoned<V>>,
}

impl<K: Eq + Hash + Copy + std::fmt::Debug, V> std::fmt::Debug for Claim<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("key", &self.key).finish()
    }
}

impl<K: Eq + Hash + Copy, V> Claim<K, V> {
    /// The key claimed.
    pub(crate) fn key(&self) -> K {
        self.key
    }

    /// The flight waiters wait on.
    pub(crate) fn flight(&self) -> Arc<Flight<V>> {
        self.flight.clone()
    }

    /// Hands the result to the waiters and forgets the flight (the next join starts afresh).
    pub(crate) fn complete(mut self, result: V) {
        self.finish(result);
    }

    fn finish(&mut self, result: V) {
        self.abandoned = None;
        // Forget the flight before anyone hears of the result: a waiter woken by a failure
        // that tries again must start new work, not find this finished flight.
        {
            let mut map = lock(&self.flights.map);
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
        *lock(&self.flight.result) = Some(result);
        self.flight.done.notify_all();
    }
}

impl<K: Eq + Hash + Copy, V> Drop for Claim<K, V> {
    fn drop(&mut self) {
        if let Some(abandoned) = self.abandoned.take() {
            self.finish(abandoned(std::thread::panicking()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancelled(_: bool) -> Result<&'static str, &'static str> {
        Err("cancelled")
    }

    #[test]
    fn one_owner_many_waiters_and_results_are_forgotten() {
        let flights = Arc::new(SingleFlight::default());
        let Joined::Owner(claim) = flights.join((0, 1), cancelled) else {
            panic!("first join owns");
        };
        let Joined::Waiter(flight) = flights.join((0, 1), cancelled) else {
            panic!("second join waits");
        };
        assert!(flights.try_claim((0, 1), cancelled).is_none());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let flight = flight.clone();
                std::thread::spawn(move || flight.wait(Instant::now() + Duration::from_secs(60)))
            })
            .collect();
        claim.complete(Ok("abc"));
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), Some(Ok("abc")));
        }
        assert_eq!(flights.len(), 0);

        // A dropped claim gives its waiters what `abandoned` makes, and the key is free.
        let claim = flights.try_claim((0, 1), cancelled).expect("free again");
        let flight = claim.flight();
        drop(claim);
        assert_eq!(flight.wait(Instant::now()), Some(Err("cancelled")));
        assert!(flights.try_claim((0, 1), cancelled).is_some());
    }

    #[test]
    fn a_claim_dropped_by_a_panic_says_so() {
        let flights: Arc<SingleFlight<u8, bool>> = Arc::new(SingleFlight::default());
        let claim = flights.try_claim(7, |panicking| panicking).unwrap();
        let flight = claim.flight();
        let _ = std::thread::spawn(move || {
            let _claim = claim;
            panic!("test: the owner panics");
        })
        .join();
        assert_eq!(flight.wait(Instant::now()), Some(true));
    }

    #[test]
    fn waiting_past_the_deadline_gives_none() {
        let flights: Arc<SingleFlight<u8, ()>> = Arc::new(SingleFlight::default());
        let _claim = flights.try_claim(0, |_| ()).unwrap();
        let Joined::Waiter(flight) = flights.join(0, |_| ()) else {
            panic!("waits");
        };
        assert!(flight.wait(Instant::now()).is_none());
    }

    #[test]
    fn wait_while_stops_at_the_condition_or_the_deadline() {
        let m = Mutex::new(0);
        let cv = Condvar::new();
        let met = wait_while(&cv, lock(&m), Some(Instant::now()), |n| *n == 0).1;
        assert!(!met, "the deadline passed");
        let met = wait_while(&cv, lock(&m), None, |n| *n != 0).1;
        assert!(met, "the condition does not hold");
        std::thread::scope(|s| {
            s.spawn(|| {
                *lock(&m) = 1;
                cv.notify_all();
            });
            let (n, met) = wait_while(&cv, lock(&m), None, |n| *n == 0);
            assert!(met);
            assert_eq!(*n, 1);
        });
    }
}
