//! Single flight: a span is fetched at most once however many readers want it at the same
//! moment. The first reader *claims* the span (and has it fetched); the others wait on the same
//! [`Flight`] with their own deadline. A failure is handed to every waiter and then forgotten:
//! the next read tries again.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::cache::Key;
use crate::FetchError;

/// Where a fetched span's bytes are.
#[derive(Clone, Debug)]
pub(crate) enum Ready {
    /// In a published cache entry (content at [`crate::cache::HEADER_LEN`]).
    File(Arc<File>),
    /// In memory, because the cache could not take it (disk full, read-only...).
    Memory(Arc<[u8]>),
}

/// One fetch in progress.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    result: Mutex<Option<Result<Ready, FetchError>>>,
    done: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Flight {
    /// Waits for the result until `deadline`; `None` when the deadline passed first.
    pub(crate) fn wait(&self, deadline: Instant) -> Option<Result<Ready, FetchError>> {
        let mut result = lock(&self.result);
        loop {
            if let Some(r) = &*result {
                return Some(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            result = self
                .done
                .wait_timeout(result, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The spans being fetched, by (layer, span).
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Key, Arc<Flight>>>,
}

/// The outcome of [`Flights::claim`].
pub(crate) enum Claimed {
    /// This caller must have the span fetched and complete the claim.
    Owner(Claim),
    /// Someone else is fetching it: wait on this.
    Waiter(Arc<Flight>),
}

impl Flights {
    /// Claims `key`, or joins the flight already under way.
    pub(crate) fn claim(self: &Arc<Self>, key: Key, layer_digest: &Arc<str>) -> Claimed {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(&key) {
            return Claimed::Waiter(flight.clone());
        }
        let flight = Arc::new(Flight::default());
        map.insert(key, flight.clone());
        Claimed::Owner(Claim {
            flights: self.clone(),
            key,
            flight,
            layer_digest: layer_digest.clone(),
            done: false,
        })
    }

    /// Claims `key` only if nobody is fetching it.
    pub(crate) fn try_claim(self: &Arc<Self>, key: Key, layer_digest: &Arc<str>) -> Option<Claim> {
        match self.claim(key, layer_digest) {
            Claimed::Owner(claim) => Some(claim),
            Claimed::Waiter(_) => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// The duty to fetch one span. Completing it wakes the waiters; dropping it uncompleted wakes
/// them with [`FetchError::Cancelled`] (a dropped job) or [`FetchError::Panicked`] (dropped
/// while its thread unwinds from a panic).
#[derive(Debug)]
pub(crate) struct Claim {
    flights: Arc<Flights>,
    key: Key,
    flight: Arc<Flight>,
    layer_digest: Arc<str>,
    done: bool,
}

impl Claim {
    /// The span index claimed.
    pub(crate) fn span(&self) -> usize {
        self.key.1
    }

    /// The flight readers wait on.
    pub(crate) fn flight(&self) -> Arc<Flight> {
        self.flight.clone()
    }

    /// Hands the result to the waiters and forgets the flight (a later read starts afresh).
    pub(crate) fn complete(mut self, result: Result<Ready, FetchError>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<Ready, FetchError>) {
        if self.done {
            return;
        }
        self.done = true;
        // Forget the flight before anyone hears of the result: a reader woken by a failure
        // that reads again must start a new fetch, not find this finished flight. (A success
        // is in the cache already, where a later reader finds it.)
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

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            let layer_digest = self.layer_digest.to_string();
            let span = self.key.1;
            let error = if std::thread::panicking() {
                FetchError::Panicked { layer_digest, span }
            } else {
                FetchError::Cancelled { layer_digest, span }
            };
            self.finish(Err(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_owner_many_waiters_and_failures_are_forgotten() {
        let flights = Arc::new(Flights::default());
        let digest: Arc<str> = Arc::from("sha256:00");
        let Claimed::Owner(claim) = flights.claim((0, 1), &digest) else {
            panic!("first claim owns");
        };
        let Claimed::Waiter(flight) = flights.claim((0, 1), &digest) else {
            panic!("second claim waits");
        };
        assert!(flights.try_claim((0, 1), &digest).is_none());
        let waiter =
            std::thread::spawn(move || flight.wait(Instant::now() + Duration::from_secs(60)));
        claim.complete(Ok(Ready::Memory(Arc::from(&b"abc"[..]))));
        let Some(Ok(Ready::Memory(bytes))) = waiter.join().unwrap() else {
            panic!("waiter got the bytes");
        };
        assert_eq!(&bytes[..], b"abc");
        assert_eq!(flights.len(), 0);

        // A dropped claim cancels, and the span can be claimed again.
        let Some(claim) = flights.try_claim((0, 1), &digest) else {
            panic!("free again");
        };
        let flight = claim.flight();
        drop(claim);
        assert!(matches!(
            flight.wait(Instant::now()),
            Some(Err(FetchError::Cancelled { span: 1, .. }))
        ));
        assert!(flights.try_claim((0, 1), &digest).is_some());
    }

    #[test]
    fn waiting_past_the_deadline_gives_none() {
        let flights = Arc::new(Flights::default());
        let digest: Arc<str> = Arc::from("sha256:00");
        let _claim = flights.try_claim((0, 0), &digest).unwrap();
        let Claimed::Waiter(flight) = flights.claim((0, 0), &digest) else {
            panic!("waits");
        };
        assert!(flight.wait(Instant::now()).is_none());
    }
}
