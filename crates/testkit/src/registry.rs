//! A real CNCF Distribution registry (`docker-registry serve`) on a free loopback port.
//!
//! Everything lives in one `TempDir`: `config.yml`, `storage/`, `htpasswd`, `registry.log`.
//! The registry's stdout (the access log, Apache combined format) goes straight into
//! `registry.log`; its stderr (the application log, logrus `time=… level=… msg=…`) is copied
//! there line by line by a thread that also watches for the `listening on` line: that line is
//! the readiness event [`Registry::start`] waits for.
//!
//! The access log shows, per request: client address, time, method, URI with query string,
//! protocol, status, response body bytes, referer and user agent. Its user column comes from URL
//! user info, so it is always `-` (the application log's `auth.user.name=` names a basic-auth
//! user). It does **not** show request headers: a `Range` request is recognised by its `206`
//! status (the registry answers every satisfiable single range with 206, and `bytes` is then the
//! length served).
//!
//! Counts taken right after a request returns include it: the registry writes a request's
//! access-log line just before it finishes the response, and [`Registry::access_log`] first
//! makes a marker request of its own (`GET /v2/?clip-testkit-sync=…`, left out of the results)
//! and reads the log up to the marker's line, which covers responses whose last byte left early.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tempfile::TempDir;

use crate::client::RegistryClient;

/// How long a registry may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The query parameter of marker requests (their lines are left out of [`Registry::requests`]).
const SYNC_MARK: &str = "clip-testkit-sync";

/// A running registry; dropping it kills the process (by pid) and removes its storage.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    stderr_copier: Option<JoinHandle<()>>,
    addr: String,
    credentials: Option<(String, String)>,
    syncs: AtomicU64,
    // Declared last: dropped after the process is gone.
    dir: TempDir,
}

/// One access-log line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// `GET`, `HEAD`, `PUT`, …
    pub method: String,
    /// Request URI as sent: path and query.
    pub uri: String,
    /// Response status.
    pub status: u16,
    /// Response body bytes written.
    pub bytes: u64,
    /// The client's `User-Agent`.
    pub user_agent: String,
    /// The raw line.
    pub line: String,
}

impl AccessLogEntry {
    /// Parses a combined-format line: `HOST - USER [TIME] "METHOD URI PROTO" STATUS BYTES "REF" "UA"`
    /// (USER is the URL's user info, so always `-` here: see the module doc).
    pub fn parse(line: &str) -> Option<AccessLogEntry> {
        let mut quoted = line.split('"');
        let head = quoted.next()?;
        let request = quoted.next()?;
        let numbers = quoted.next()?;
        let _referer = quoted.next()?;
        let _ = quoted.next()?;
        let user_agent = quoted.next()?.to_string();
        if !head.contains('[') {
            return None;
        }
        let mut request = request.split(' ');
        let (method, uri) = (request.next()?.to_string(), request.next()?.to_string());
        let mut numbers = numbers.split_whitespace();
        let status = numbers.next()?.parse().ok()?;
        let bytes = numbers.next()?.parse().unwrap_or(0);
        Some(AccessLogEntry {
            method,
            uri,
            status,
            bytes,
            user_agent,
            line: line.into(),
        })
    }

    /// The URI without its query string.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// Whether this was a ranged read (the registry answered 206 Partial Content).
    pub fn is_partial(&self) -> bool {
        self.status == 206
    }
}

/// A position in the access log, to look at the requests made after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMark(usize);

impl Registry {
    /// Starts an anonymous registry. Panics (with the registry's log) if it does not come up.
    pub fn start() -> Registry {
        Self::start_inner(None, "")
    }

    /// Starts a registry that requires HTTP basic auth with these credentials (htpasswd file
    /// made with `htpasswd -Bbn`; unauthenticated requests get `401` and a `Basic` challenge).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user.to_string(), password.to_string())), "")
    }

    /// Starts a pull-through cache of `upstream` (Distribution's proxy mode): a mirror, as a
    /// fleet puts in front of its registry. It fetches from `upstream` what it does not have.
    pub fn start_mirror_of(upstream: &Registry) -> Registry {
        Self::start_inner(
            None,
            &format!("proxy:\n  remoteurl: http://{}\n", upstream.addr()),
        )
    }

    fn start_inner(credentials: Option<(String, String)>, extra: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("clip-registry-")
            .tempdir()
            .expect("tempdir");
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).expect("create storage dir");
        let mut auth = String::new();
        if let Some((user, password)) = &credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd (Debian package apache2-utils)");
            assert!(
                out.status.success(),
                "htpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = dir.path().join("htpasswd");
            fs::write(&path, &out.stdout).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: clip-test\n    path: {}\n",
                path.display()
            );
        }
        auth.push_str(extra);
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            match spawn(dir.path(), &addr, &auth) {
                Ok((child, copier)) => {
                    return Registry {
                        child,
                        stderr_copier: Some(copier),
                        addr,
                        credentials,
                        syncs: AtomicU64::new(0),
                        dir,
                    }
                }
                // Another process took the port between our probe and the registry's bind.
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => {
                    last_log = log;
                    break;
                }
            }
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    fn stop(&mut self) {
        stop(&mut self.child, self.stderr_copier.take());
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The credentials given to [`Registry::start_with_auth`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The pid of the registry process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The storage root (`storage.filesystem.rootdirectory`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes: `…/docker/registry/v2/blobs/sha256/ab/abcd…/data`.
    /// Overwrite it to corrupt the blob in place (the registry serves it without re-checking).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256:… digest");
        self.storage_dir().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

    /// The log file (access log and application log interleaved).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The whole log file.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).expect("read registry log")
    }

    /// A client with this registry's credentials (if any).
    pub fn client(&self) -> RegistryClient {
        let client = RegistryClient::new(&self.addr);
        match self.credentials() {
            Some((user, password)) => client.with_basic_auth(user, password),
            None => client,
        }
    }

    /// A client without credentials.
    pub fn anonymous_client(&self) -> RegistryClient {
        RegistryClient::new(&self.addr)
    }

    /// Makes two marker requests, one after the other, and returns the access-log lines up to
    /// the second's (markers left out), so that every request answered before this call is
    /// included. Distribution writes a request's line once its handler returns, which may be
    /// just after the client has read the whole answer: a line can come after the first
    /// marker's, never after the second's, which the registry only answers after the first's
    /// round trip (lines after the first marker can only be such late ones: callers take logs
    /// when the requests they count are done).
    pub fn access_log(&self) -> Vec<String> {
        let n = self.syncs.fetch_add(1, Ordering::Relaxed);
        let markers = [0, 1].map(|k| format!("/v2/?{SYNC_MARK}={}-{n}-{k}", self.child.id()));
        // The answer (200, or 401 with auth) does not matter: only that the line was written.
        for marker in &markers {
            self.anonymous_client()
                .get_status(marker)
                .expect("marker request to the registry");
        }
        let last = &markers[1];
        let log = self.log();
        let mut lines = Vec::new();
        for line in log.lines().filter(|l| AccessLogEntry::parse(l).is_some()) {
            if line.contains(last.as_str()) {
                return lines;
            }
            if !line.contains(SYNC_MARK) {
                lines.push(line.to_string());
            }
        }
        panic!("marker request {last} missing from the access log:\n{log}");
    }

    /// Every request so far, parsed (marker requests left out).
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        self.access_log()
            .iter()
            .filter_map(|l| AccessLogEntry::parse(l))
            .collect()
    }

    /// A mark for [`Registry::requests_since`].
    pub fn log_mark(&self) -> LogMark {
        LogMark(self.access_log().len())
    }

    /// The requests made after `mark` was taken.
    pub fn requests_since(&self, mark: LogMark) -> Vec<AccessLogEntry> {
        self.requests().split_off(mark.0)
    }

    /// How many requests had this method and a path containing `path_substring`.
    pub fn requests_matching(&self, method: &str, path_substring: &str) -> usize {
        let matches = |r: &AccessLogEntry| r.method == method && r.path().contains(path_substring);
        self.requests().iter().filter(|r| matches(r)).count()
    }

    /// How many `GET`s of a path containing `path_substring` were answered with 206 (a `Range`).
    pub fn range_requests_matching(&self, path_substring: &str) -> usize {
        let matches = |r: &AccessLogEntry| {
            r.method == "GET" && r.is_partial() && r.path().contains(path_substring)
        };
        self.requests().iter().filter(|r| matches(r)).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `docker-registry serve` in `dir` on `addr` and waits for its `listening on` line.
/// On failure the process is stopped and the log returned.
fn spawn(dir: &Path, addr: &str, auth: &str) -> Result<(Child, JoinHandle<()>), String> {
    let config = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n{auth}",
        dir.join("storage").display()
    );
    let config_path = dir.join("config.yml");
    fs::write(&config_path, config).expect("write registry config");
    let log_path = dir.join("registry.log");
    File::create(&log_path).expect("create registry log");
    let append = || {
        OpenOptions::new()
            .append(true)
            .open(&log_path)
            .expect("open registry log")
    };
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(append())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start docker-registry (Debian package docker-registry)");
    let stderr = child.stderr.take().expect("piped stderr");
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut log = append();
    let copier = std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        let mut stderr = BufReader::new(stderr);
        let mut line = Vec::new();
        // Until EOF, i.e. until the registry exits.
        while stderr.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            // One write per line, so that access-log lines (stdout) never land inside it.
            let _ = log.write_all(&line);
            if line.windows(15).any(|w| w == b"msg=\"listening ") {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
            }
            line.clear();
        }
        // Dropping an unused sender wakes the waiter: the registry exited before listening.
    });
    match ready_rx.recv_timeout(START_TIMEOUT) {
        Ok(()) => Ok((child, copier)),
        Err(_) => {
            stop(&mut child, Some(copier));
            Err(fs::read_to_string(&log_path).unwrap_or_default())
        }
    }
}

/// Kills our child by pid (it may have exited already), reaps it, and joins the log copier.
fn stop(child: &mut Child, copier: Option<JoinHandle<()>>) {
    let _ = child.kill();
    let _ = child.wait();
    if let Some(copier) = copier {
        let _ = copier.join();
    }
}

/// A port that was free a moment ago (bind port 0, read it, release it).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_log_lines() {
        let line = r#"127.0.0.1 - alice [29/Nov/2026:23:07:48 +0000] "GET /v2/foo/blobs/sha256:00?x=1 HTTP/1.1" 206 157 "" "clip/0.1""#;
        let e = AccessLogEntry::parse(line).unwrap();
        assert_eq!(
            (e.method.as_str(), e.path(), e.status, e.bytes),
            ("GET", "/v2/foo/blobs/sha256:00", 206, 157)
        );
        assert_eq!(e.user_agent, "clip/0.1");
        assert!(e.is_partial());
        assert!(
            AccessLogEntry::parse(r#"time="x" level=info msg="listening on 127.0.0.1:1""#)
                .is_none()
        );
    }
}
