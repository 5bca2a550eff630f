//! Processes recognised across a crash: a pid together with its start time (field 22 of
//! `/proc/PID/stat`), so that a dead process — or another one that got its pid — is told
//! apart from the one that was recorded.

/// A process as recorded: `"PID STARTTIME"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Its start time, in clock ticks since boot.
    pub start: u64,
}

impl ProcessId {
    /// This process.
    pub fn current() -> Option<ProcessId> {
        ProcessId::of(std::process::id())
    }

    /// This process, or an error naming `/proc/self/stat` (unreadable only without `/proc`).
    pub fn current_or_error() -> Result<ProcessId, crate::Error> {
        ProcessId::current().ok_or_else(|| {
            crate::Error::io(
                "read",
                "/proc/self/stat",
                std::io::ErrorKind::NotFound.into(),
            )
        })
    }

    /// Process `pid`, if it runs.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start) = parse_stat(&stat)?;
        // A zombie has finished: what it held is released.
        (state != 'Z' && state != 'X').then_some(ProcessId { pid, start })
    }

    /// Waits until the recorded process has exited, at most `timeout`; returns whether it has.
    /// Watches a pidfd (no polling); a pid that now names another process counts as exited.
    pub fn wait_exit(&self, timeout: std::time::Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return true;
        };
        let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        else {
            return !self.is_alive();
        };
        // Opened after the pid was reused? Then ours is gone.
        if !self.is_alive() {
            return true;
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let left = Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&left)) {
                Ok(0) => return false,
                Ok(_) => return true,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return !self.is_alive(),
            }
        }
    }

    /// Whether the recorded process still runs (same pid, same start time).
    pub fn is_alive(&self) -> bool {
        ProcessId::of(self.pid).is_some_and(|p| p.start == self.start)
    }

    /// Reads `"PID STARTTIME"`.
    pub fn parse(text: &str) -> Option<ProcessId> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        Some(ProcessId { pid, start })
    }
}

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.pid, self.start)
    }
}

/// The state and start time from the text of `/proc/PID/stat` (the command name, field 2,
/// may hold spaces and parentheses: fields are counted after its last `)`).
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_round_trips() {
        let me = ProcessId::current().unwrap();
        assert!(me.is_alive());
        assert_eq!(ProcessId::parse(&me.to_string()), Some(me));
        let recycled = ProcessId {
            start: me.start + 1,
            ..me
        };
        assert!(!recycled.is_alive());
        assert_eq!(ProcessId::parse("12"), None);
        assert_eq!(ProcessId::parse("x 1"), None);
    }

    #[test]
    fn command_names_with_parentheses() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
    }

    #[test]
    fn a_finished_child_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id());
        child.wait().unwrap();
        assert!(id.is_none_or(|id| !id.is_alive()));
    }

    #[test]
    fn waiting_for_an_exit() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        assert!(!id.wait_exit(std::time::Duration::ZERO), "still reading");
        drop(child.stdin.take());
        assert!(id.wait_exit(std::time::Duration::from_secs(60)));
        child.wait().unwrap();
        assert!(id.wait_exit(std::time::Duration::ZERO), "reaped: gone");
    }
}
