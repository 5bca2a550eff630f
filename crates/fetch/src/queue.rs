//! The scheduler: background jobs queued by priority, and the worker threads that run them.
//!
//! **Priorities.** [`Priority`] lists the kinds of work from the most to the least urgent: a
//! free worker takes the first job of the most urgent non-empty queue it may run: demand
//! (fetches a reader waits for), prefetch (a startup profile replayed), readahead (ahead of a
//! sequential reader), fill (the rest of the image, `--prefetch all`). Within a priority, jobs
//! run in the order they were queued.
//!
//! **Background never starves demand.** Every priority but [`Priority::Demand`] is
//! *background*: background jobs run on at most `workers - 1` workers together, so one worker
//! is always free for demand, however slow or stalled the registry is for background fetches.
//! (Demand may wait for other demand: that is what the worker count bounds.) With a single
//! worker there is no background work at all.
//!
//! **Panics.** A job that panics is logged and the worker goes on with the next job; what the
//! job held is dropped while unwinding (a fetch job's claims then fail their waiters).
//!
//! # What it owns, what it must not touch
//!
//! Queues, counts of running jobs, the worker threads and their lifecycle. It is generic over
//! the job: it knows nothing of spans, claims or the network, and never runs a job under its
//! lock.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::sync::{lock, wait_while};

/// How urgent a job is, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Priority {
    /// A reader waits for it.
    Demand,
    /// Spans a startup profile says the container will read.
    Prefetch,
    /// Spans fetched ahead of a sequential reader.
    Readahead,
    /// The rest of the image, so that the node no longer needs the registry.
    Fill,
}

impl Priority {
    /// Every priority, most urgent first.
    pub(crate) const ALL: [Priority; 4] = [
        Priority::Demand,
        Priority::Prefetch,
        Priority::Readahead,
        Priority::Fill,
    ];

    fn slot(self) -> usize {
        self as usize
    }

    /// Whether jobs of this priority are background work (never on the last free worker).
    pub(crate) fn is_background(self) -> bool {
        self != Priority::Demand
    }
}

const PRIORITIES: usize = Priority::ALL.len();

/// The jobs waiting for a worker, and what the workers are doing.
#[derive(Debug)]
pub(crate) struct Queue<J> {
    queued: [VecDeque<J>; PRIORITIES],
    running: [usize; PRIORITIES],
    workers: usize,
    shutdown: bool,
}

impl<J> Queue<J> {
    pub(crate) fn new(workers: usize) -> Queue<J> {
        Queue {
            queued: std::array::from_fn(|_| VecDeque::new()),
            running: [0; PRIORITIES],
            workers,
            shutdown: false,
        }
    }

    /// Queues a job; gives it back when the queue is shut down or already holds `max_queued`
    /// jobs of that priority.
    pub(crate) fn push(&mut self, priority: Priority, job: J, max_queued: usize) -> Result<(), J> {
        let queue = &mut self.queued[priority.slot()];
        if self.shutdown || queue.len() >= max_queued {
            return Err(job);
        }
        queue.push_back(job);
        Ok(())
    }

    fn running_background(&self) -> usize {
        Priority::ALL
            .iter()
            .filter(|p| p.is_background())
            .map(|p| self.running[p.slot()])
            .sum()
    }

    fn may_start(&self, priority: Priority) -> bool {
        !priority.is_background() || self.running_background() + 1 < self.workers
    }

    /// The job a free worker takes next, counted as running: the most urgent one that may
    /// start.
    pub(crate) fn next(&mut self) -> Option<(J, Priority)> {
        for priority in Priority::ALL {
            if !self.may_start(priority) {
                continue;
            }
            if let Some(job) = self.queued[priority.slot()].pop_front() {
                self.running[priority.slot()] += 1;
                return Some((job, priority));
            }
        }
        None
    }

    /// A job taken by [`Queue::next`] is over.
    pub(crate) fn done(&mut self, priority: Priority) {
        let running = &mut self.running[priority.slot()];
        *running = running.saturating_sub(1);
    }

    /// Whether background work is queued.
    fn background_queued(&self) -> bool {
        Priority::ALL
            .iter()
            .any(|p| p.is_background() && !self.queued[p.slot()].is_empty())
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.queued.iter().all(VecDeque::is_empty) && self.running.iter().all(|&n| n == 0)
    }

    /// Stops taking jobs; returns the queued ones (to be dropped outside the lock).
    fn shut_down(&mut self) -> Vec<J> {
        self.shutdown = true;
        self.queued.iter_mut().flat_map(|q| q.drain(..)).collect()
    }
}

/// A [`Queue`] shared by worker threads.
pub(crate) struct Scheduler<J> {
    queue: Mutex<Queue<J>>,
    /// A job was queued, or a background slot freed.
    ready: Condvar,
    /// The queue became idle (or shut down).
    idle: Condvar,
    /// Shut down (for jobs pausing in [`Scheduler::pause_until`]).
    stopped: Condvar,
}

impl<J: Send + 'static> Scheduler<J> {
    pub(crate) fn new(workers: usize) -> Scheduler<J> {
        Scheduler {
            queue: Mutex::new(Queue::new(workers.max(1))),
            ready: Condvar::new(),
            idle: Condvar::new(),
            stopped: Condvar::new(),
        }
    }

    /// Pauses a job until `deadline` (a bandwidth bound); false, at once, when the scheduler
    /// shuts down meanwhile.
    pub(crate) fn pause_until(&self, deadline: Instant) -> bool {
        let (q, _) = wait_while(&self.stopped, lock(&self.queue), Some(deadline), |q| {
            !q.shutdown
        });
        !q.shutdown
    }

    /// Queues a job for a worker. When the scheduler is shut down, or already holds
    /// `max_queued` jobs of that priority, the job is dropped (outside the lock) and this
    /// returns false.
    pub(crate) fn submit(&self, priority: Priority, job: J, max_queued: usize) -> bool {
        let pushed = lock(&self.queue).push(priority, job, max_queued);
        match pushed {
            Ok(()) => {
                self.ready.notify_one();
                true
            }
            Err(job) => {
                drop(job);
                false
            }
        }
    }

    /// Runs jobs with `run` until [`Scheduler::shutdown`]: a worker thread's life.
    pub(crate) fn work(&self, run: impl Fn(J, Priority)) {
        loop {
            let (job, priority) = {
                let (mut q, _) = wait_while(&self.ready, lock(&self.queue), None, |q| {
                    !q.shutdown && !q.is_startable()
                });
                if q.shutdown {
                    return;
                }
                match q.next() {
                    Some(next) => next,
                    None => continue,
                }
            };
            // Counted as running until it is over, even if it unwinds.
            let _running = Running {
                scheduler: self,
                priority,
            };
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(job, priority))) {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(not a string)".to_string());
                tracing::error!(panic = %message, ?priority,
                    "a fetch job panicked; its spans failed, the worker goes on");
            }
        }
    }

    /// Stops the workers after their current job; queued jobs are dropped.
    pub(crate) fn shutdown(&self) {
        let dropped = lock(&self.queue).shut_down();
        self.ready.notify_all();
        self.idle.notify_all();
        self.stopped.notify_all();
        drop(dropped);
    }

    pub(crate) fn is_shutdown(&self) -> bool {
        lock(&self.queue).shutdown
    }

    /// Waits until no job is queued or running (true), or shut down, or `deadline` passed.
    pub(crate) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        let (q, _) = wait_while(&self.idle, lock(&self.queue), deadline, |q| {
            !q.is_idle() && !q.shutdown
        });
        q.is_idle()
    }
}

impl<J> Queue<J> {
    /// Whether [`Queue::next`] would give a job now.
    fn is_startable(&self) -> bool {
        Priority::ALL
            .iter()
            .any(|&p| !self.queued[p.slot()].is_empty() && self.may_start(p))
    }
}

/// Marks a worker's job as over when dropped.
struct Running<'a, J> {
    scheduler: &'a Scheduler<J>,
    priority: Priority,
}

impl<J> Drop for Running<'_, J> {
    fn drop(&mut self) {
        let mut q = lock(&self.scheduler.queue);
        q.done(self.priority);
        if q.is_idle() {
            self.scheduler.idle.notify_all();
        }
        if self.priority.is_background() && q.background_queued() {
            // A background slot is free: an idle worker may take the next background job.
            self.scheduler.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const ANY: usize = usize::MAX;

    #[test]
    fn background_always_leaves_a_worker_for_demand() {
        let mut q = Queue::new(2);
        q.push(Priority::Readahead, "ra0", ANY).unwrap();
        q.push(Priority::Readahead, "ra4", ANY).unwrap();
        assert_eq!(q.next(), Some(("ra0", Priority::Readahead)));
        // One readahead job runs (stalled, say): the other worker is kept for demand.
        assert_eq!(q.next(), None);
        q.push(Priority::Demand, "d1", ANY).unwrap();
        q.push(Priority::Demand, "d2", ANY).unwrap();
        assert_eq!(q.next(), Some(("d1", Priority::Demand)));
        // Demand is bounded by nothing but the workers themselves.
        assert_eq!(q.next(), Some(("d2", Priority::Demand)));
        q.done(Priority::Demand);
        q.done(Priority::Demand);
        assert_eq!(q.next(), None, "the first readahead job still runs");
        q.done(Priority::Readahead);
        assert_eq!(q.next(), Some(("ra4", Priority::Readahead)));
        q.done(Priority::Readahead);
        assert!(q.is_idle());

        // Four workers: three background jobs at once, never four.
        let mut q = Queue::new(4);
        for i in 0..5 {
            q.push(Priority::Readahead, i, ANY).unwrap();
        }
        for _ in 0..3 {
            assert!(matches!(q.next(), Some((_, Priority::Readahead))));
        }
        assert_eq!(q.next(), None);
        q.push(Priority::Demand, 9, ANY).unwrap();
        assert_eq!(q.next(), Some((9, Priority::Demand)));

        // One worker: it is the demand worker; background work never runs.
        let mut q = Queue::new(1);
        q.push(Priority::Readahead, 0, ANY).unwrap();
        assert_eq!(q.next(), None);
    }

    #[test]
    fn priorities_in_order_and_fifo_within_one() {
        let mut q = Queue::new(8);
        q.push(Priority::Fill, "f1", ANY).unwrap();
        q.push(Priority::Readahead, "r1", ANY).unwrap();
        q.push(Priority::Prefetch, "p1", ANY).unwrap();
        q.push(Priority::Prefetch, "p2", ANY).unwrap();
        q.push(Priority::Demand, "d1", ANY).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| q.next().map(|(j, _)| j)).collect();
        assert_eq!(order, ["d1", "p1", "p2", "r1", "f1"]);
    }

    #[test]
    fn a_pause_ends_at_its_deadline_or_at_shutdown() {
        let scheduler = Arc::new(Scheduler::<u32>::new(1));
        assert!(scheduler.pause_until(Instant::now()));
        let paused = {
            let scheduler = scheduler.clone();
            std::thread::spawn(move || {
                scheduler.pause_until(Instant::now() + std::time::Duration::from_secs(3600))
            })
        };
        scheduler.shutdown();
        assert!(!paused.join().unwrap(), "shutdown ends the pause");
    }

    #[test]
    fn demand_goes_first_and_queues_are_bounded() {
        let mut q = Queue::new(4);
        q.push(Priority::Readahead, "ra", ANY).unwrap();
        q.push(Priority::Demand, "d", ANY).unwrap();
        assert_eq!(q.next(), Some(("d", Priority::Demand)));
        assert_eq!(q.next(), Some(("ra", Priority::Readahead)));

        assert_eq!(q.push(Priority::Readahead, "a", 1), Ok(()));
        assert_eq!(q.push(Priority::Readahead, "b", 1), Err("b"));
        assert_eq!(q.shut_down(), vec!["a"]);
        assert_eq!(q.push(Priority::Demand, "c", ANY), Err("c"));
    }

    #[test]
    fn a_panicking_job_does_not_take_its_worker() {
        let scheduler = Arc::new(Scheduler::<u32>::new(1));
        let done = Arc::new(Mutex::new(Vec::new()));
        let worker = {
            let (scheduler, done) = (scheduler.clone(), done.clone());
            std::thread::spawn(move || {
                scheduler.work(|job, _| {
                    assert_ne!(job, 1, "test: job 1 panics");
                    lock(&done).push(job);
                })
            })
        };
        for job in [1, 2] {
            assert!(scheduler.submit(Priority::Demand, job, ANY));
        }
        assert!(scheduler.wait_idle(None));
        assert_eq!(*lock(&done), [2]);
        scheduler.shutdown();
        worker.join().unwrap();
        assert!(!scheduler.submit(Priority::Demand, 3, ANY), "shut down");
    }
}
