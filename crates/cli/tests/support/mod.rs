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
    // Tests never read the developer's credentials.
    c.env_remove("REGISTRY_AUTH_FILE")
        .env_remove("CLIP_CREDS")
        .env("DOCKER_CONFIG", "/nonexistent")
        .env("HOME", "/nonexistent")
        .env_remove("XDG_RUNTIME_DIR");
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
