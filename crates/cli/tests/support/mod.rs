//! Helpers shared by the integration tests: run the real `clip` binary, read its JSON, and turn
//! an archive listing into a [`TreeSnapshot`] comparable with the `umoci unpack` oracle.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clip_testkit::{EntrySnapshot, Registry, TreeSnapshot};
use serde_json::Value;

/// The outcome of one `clip` invocation.
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.output.status.success()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Panics with the command's stderr unless it succeeded.
    pub fn success(self) -> Run {
        assert!(
            self.ok(),
            "clip failed ({}):\n{}",
            self.output.status,
            self.stderr()
        );
        self
    }
    /// Panics unless it failed; returns stderr.
    pub fn failure(self) -> String {
        assert!(
            !self.ok(),
            "clip unexpectedly succeeded:\n{}",
            self.stdout()
        );
        let err = self.stderr();
        assert!(!err.contains("panicked"), "clip panicked:\n{err}");
        err
    }
}

pub fn clip_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clip"));
    // Tests never read the developer's credentials, nor use the machine's cache (the index
    // store of `clip index` included): theirs is under the target directory, unless a test
    // passes a `--cache-dir` of its own.
    c.env_remove("REGISTRY_AUTH_FILE")
        .env_remove("CLIP_CREDS")
        .env("DOCKER_CONFIG", "/nonexistent")
        .env("HOME", "/nonexistent")
        .env(
            "CLIP_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("clip-test-cache"),
        )
        .env_remove("XDG_RUNTIME_DIR")
        // Nor the machine's mirror configuration.
        .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
        .env("CLIP_REGISTRY_HOSTS_DIR", "/nonexistent");
    c
}

pub fn clip(args: &[&str]) -> Run {
    Run {
        output: clip_command().args(args).output().expect("running clip"),
    }
}

/// A scratch directory for one test.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn image_ref(registry: &Registry, repo_tag: &str) -> String {
    format!("{}/{}", registry.addr(), repo_tag)
}

/// The JSON a successful run printed.
pub fn json_of(run: Run) -> Value {
    serde_json::from_str(&run.success().stdout()).expect("JSON")
}

/// `clip pull --json --cache-dir CACHE IMAGE`: where the index came from.
pub fn pull_json(cache: &Path, image: &str) -> Value {
    json_of(clip(&[
        "pull",
        "--json",
        "--cache-dir",
        cache.to_str().expect("utf-8 path"),
        image,
    ]))
}

/// `clip index --quiet REGISTRY/REPO:TAG OUT` with extra flags; panics on failure.
pub fn index(registry: &Registry, repo_tag: &str, out: &Path, extra: &[&str]) -> Run {
    let image = image_ref(registry, repo_tag);
    let mut args = vec![
        "index",
        "--quiet",
        image.as_str(),
        out.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    clip(&args).success()
}

pub fn inspect_json(archive: &Path) -> Value {
    let run = clip(&["inspect", "--json", archive.to_str().expect("utf-8")]).success();
    serde_json::from_str(&run.stdout()).expect("inspect --json is JSON")
}

/// Every entry of an archive (`inspect --ls / -R --json`), by path.
pub fn listing(archive: &Path) -> BTreeMap<String, Value> {
    let run = clip(&[
        "inspect",
        "--ls",
        "/",
        "-R",
        "--json",
        archive.to_str().expect("utf-8"),
    ])
    .success();
    let entries: Vec<Value> = serde_json::from_str(&run.stdout()).expect("listing is JSON");
    entries
        .into_iter()
        .map(|e| (e["path"].as_str().expect("path").to_string(), e))
        .collect()
}

/// The archive's tree in the oracle's terms (no content hashes: the index holds no content).
pub fn snapshot_of_archive(archive: &Path) -> TreeSnapshot {
    let mut tree = BTreeMap::new();
    for (path, e) in listing(archive) {
        let kind: &'static str = match e["type"].as_str().expect("type") {
            "dir" => "dir",
            "file" => "file",
            "symlink" => "symlink",
            "char" => "char",
            "block" => "block",
            "fifo" => "fifo",
            other => panic!("unknown type {other}"),
        };
        let u = |k: &str| {
            e[k].as_u64()
                .unwrap_or_else(|| panic!("{path}: {k} missing"))
        };
        let xattrs = e["xattrs"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            hex::decode(v.as_str().expect("hex")).expect("hex"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        tree.insert(
            path.clone(),
            EntrySnapshot {
                kind,
                mode: u("mode") as u32,
                uid: u("uid") as u32,
                gid: u("gid") as u32,
                size: if kind == "file" { u("size") } else { 0 },
                mtime_sec: e["mtime"].as_i64().expect("mtime"),
                mtime_nsec: u("mtime_nsec") as i64,
                link_target: e["link_target"].as_str().map(str::to_string),
                rdev: e["rdev_major"]
                    .as_u64()
                    .map(|major| (major as u32, u("rdev_minor") as u32)),
                xattrs,
                ino: u("ino"),
                nlink: u("nlink"),
                sha256: None,
            },
        );
    }
    TreeSnapshot(tree)
}

/// The oracle without what an index cannot know (content hashes).
pub fn without_content(mut tree: TreeSnapshot) -> TreeSnapshot {
    for e in tree.0.values_mut() {
        e.sha256 = None;
    }
    tree
}

/// A `clip mount` process in the foreground, owned by the test: started with the hidden
/// `--ready-on-stdout` flag so that readiness is an event, unmounted and reaped on drop.
pub struct Mount {
    pub dir: PathBuf,
    child: Option<std::process::Child>,
    stderr: PathBuf,
}

impl Mount {
    /// Mounts `archive` at `dir` with the cache in `cache`; panics with the mount's stderr if
    /// it does not become ready.
    pub fn start(archive: &Path, dir: &Path, cache: &Path, extra: &[&str]) -> Mount {
        Mount::try_start(archive, dir, cache, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Mount::start`], returning the mount's error output when it fails.
    pub fn try_start(
        archive: &Path,
        dir: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> Result<Mount, String> {
        Mount::try_start_env(archive, dir, cache, extra, &[])
    }

    /// Like [`Mount::try_start`], with more environment for the mount process.
    pub fn try_start_env(
        archive: &Path,
        dir: &Path,
        cache: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Mount, String> {
        use std::io::BufRead;
        let stderr = dir.with_extension("mount.log");
        let log = std::fs::File::create(&stderr).expect("mount log");
        let mut child = clip_command()
            .arg("mount")
            .arg(archive)
            .arg(dir)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--ready-on-stdout")
            .args(extra)
            .env("RUST_LOG", "clip=info,clip_fetch=info,warn")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning clip mount");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        if line.trim() == "ready" {
            return Ok(Mount {
                dir: dir.to_path_buf(),
                child: Some(child),
                stderr,
            });
        }
        let status = child.wait().expect("reaping clip mount");
        let err = std::fs::read_to_string(&stderr).unwrap_or_default();
        assert!(!err.contains("panicked"), "clip mount panicked:\n{err}");
        Err(format!(
            "clip mount did not become ready ({status}): {line}\n{err}"
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// `clip stats DIR --json`.
    pub fn stats(&self) -> Value {
        let run = clip(&["stats", "--json", self.dir.to_str().expect("utf-8")]).success();
        serde_json::from_str(&run.stdout()).expect("stats JSON")
    }

    /// `clip stats DIR --json --wait`: once nothing is fetched in the background.
    pub fn stats_when_idle(&self) -> Value {
        let run = clip(&[
            "stats",
            "--json",
            "--wait",
            "600",
            self.dir.to_str().expect("utf-8"),
        ])
        .success();
        serde_json::from_str(&run.stdout()).expect("stats JSON")
    }

    /// Unmounts with `clip umount`, waits for the process and returns what it logged.
    pub fn unmount(mut self) -> String {
        let run = clip(&["umount", self.dir.to_str().expect("utf-8")]);
        assert!(run.ok(), "clip umount: {}", run.stderr());
        if let Some(mut child) = self.child.take() {
            let status = child.wait().expect("reaping clip mount");
            assert!(status.success(), "mount process ended with {status}");
        }
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM") to the mount process and returns its exit status and log
    /// once it has ended.
    pub fn signal_and_wait(mut self, signal: &str) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{signal}");
        let status = child.wait().expect("reaping clip mount");
        (
            status,
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }

    /// Kills the mount process with SIGKILL (leaving a stale mount) and reaps it.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaping");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = clip(&["umount", self.dir.to_str().unwrap_or("")]);
        // The unmount ends the session and the process; if it could not, end it by pid.
        for _ in 0..200 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = clip(&["umount", self.dir.to_str().unwrap_or("")]);
    }
}

/// The tools of the busybox userland in the test images (symlinks to `/bin/busybox`).
pub const BUSYBOX_TOOLS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "sha256sum",
    "ls",
    "id",
    "sleep",
    "tty",
    "test",
    "env",
    "pwd",
    "hostname",
    "touch",
    "kill",
    "wc",
    "true",
    "false",
    "mkdir",
];

/// A gzip layer with a busybox-static userland (`/bin/busybox` and [`BUSYBOX_TOOLS`]), a root-only
/// `/etc/passwd` and `/etc/group`, and `files` (`(path, content)`, replacing the defaults of
/// the same path). With `dynamic`, also a dynamically linked program with its real shared
/// libraries and a 3 MB `/data/blob` (see [`busybox_blob`]).
pub fn busybox_layer_with(files: &[(&str, &[u8])], dynamic: bool) -> clip_testkit::Layer {
    use clip_testkit::{Compression, Layer, LayerOptions};
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .expect("busybox-static (scripts/setup-debian.sh installs it)");
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    for d in ["bin", "etc", "tmp", "root", "data", "proc", "sys", "dev"] {
        add(
            d,
            tar::EntryType::Directory,
            if d == "tmp" { 0o1777 } else { 0o755 },
            b"",
            None,
        );
    }
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    );
    for tool in BUSYBOX_TOOLS {
        add(
            &format!("bin/{tool}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        );
    }
    if dynamic {
        // A dynamically linked program with its real shared libraries, as `ldd` finds them:
        // the loader maps them from the mount (through the overlay) at run time.
        let program = "/usr/bin/sha256sum";
        let ldd = std::process::Command::new("ldd")
            .arg(program)
            .output()
            .expect("ldd");
        let mut libs = vec![program.to_string()];
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = line
                .split("=>")
                .last()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            if path.starts_with('/') {
                libs.push(path.to_string());
            }
        }
        let mut dirs = std::collections::BTreeSet::new();
        for f in &libs {
            let mut p = Path::new(f.trim_start_matches('/')).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(d.to_path_buf());
                p = d.parent();
            }
        }
        for d in dirs.iter().filter(|d| *d != Path::new("bin")) {
            add(
                d.to_str().unwrap(),
                tar::EntryType::Directory,
                0o755,
                b"",
                None,
            );
        }
        for f in &libs {
            // Follow the host's symlinks (the loader is one): the image holds the real bytes.
            let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}"));
            add(
                f.trim_start_matches('/'),
                tar::EntryType::Regular,
                0o755,
                &bytes,
                None,
            );
        }
        add(
            "data/blob",
            tar::EntryType::Regular,
            0o644,
            &busybox_blob(),
            None,
        );
    }
    let defaults: [(&str, &[u8]); 3] = [
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", b"root:x:0:\n"),
        ("etc/os-release", b"ID=clip-test\n"),
    ];
    for (path, content) in defaults {
        if !files.iter().any(|(p, _)| *p == path) {
            add(path, tar::EntryType::Regular, 0o644, content, None);
        }
    }
    for (path, content) in files {
        add(path, tar::EntryType::Regular, 0o644, content, None);
    }
    Layer::from_tar(
        b.into_inner().unwrap(),
        Compression::Gzip,
        &LayerOptions::default(),
    )
}

/// The busybox image of the runc test: the userland, a dynamic program and a 3 MB blob.
pub fn busybox_layer() -> clip_testkit::Layer {
    busybox_layer_with(&[], true)
}

/// The content of `/data/blob` in [`busybox_layer`].
pub fn busybox_blob() -> Vec<u8> {
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}
