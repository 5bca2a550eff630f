//! `clip run` end to end: a real registry, real FUSE, overlayfs and OCI runtimes (runc, crun,
//! runsc). Runs as root. Every test uses an image of its own (a label names the test), so
//! that tests running at once never share an image mount, and checks that a run leaves
//! nothing behind: no image mount, no overlay, no bundle, no runtime state.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use clip_testkit::{Image, ManifestFlavor, Registry};
use support::*;

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n\
    app:x:1000:1000:App:/home/app:/bin/sh\n\
    other:x:1001:1001::/home/other:/bin/sh\n";
const GROUP: &[u8] = b"root:x:0:\n\
    app:x:1000:\n\
    other:x:1001:\n\
    audio:x:29:app,other\n\
    video:x:44:app\n";

/// One test's registry, scratch space and index of a busybox image.
struct Setup {
    registry: Registry,
    scratch: Scratch,
    archive: PathBuf,
    /// The manifest digest's hex: the name of the image's shared-mount directory.
    key: String,
    /// The digests of the image's layer blobs.
    layers: Vec<String>,
    test: String,
}

impl Setup {
    fn new(test: &str) -> Setup {
        Setup::with(test, |_| {})
    }

    fn with(test: &str, config: impl FnOnce(&mut clip_testkit::ImageConfig)) -> Setup {
        let registry = Registry::start();
        let scratch = Scratch::new();
        let pushed = Image::new()
            .layer(busybox_layer_with(
                &[("etc/passwd", PASSWD), ("etc/group", GROUP)],
                false,
            ))
            .config(|c| {
                c.labels.insert("test".into(), test.into());
                c.cmd = Some(vec!["/bin/sh".into()]);
                config(c);
            })
            .push(&registry, "run:1", ManifestFlavor::Oci);
        let archive = scratch.path("run.clip");
        index(&registry, "run:1", &archive, &[]);
        let key = pushed
            .manifest_digest
            .strip_prefix("sha256:")
            .expect("sha256 digest")
            .to_string();
        Setup {
            registry,
            scratch,
            archive,
            key,
            layers: pushed.layers.iter().map(|l| l.digest.clone()).collect(),
            test: test.to_string(),
        }
    }

    /// A container name for this test.
    fn name(&self, n: u32) -> String {
        format!("clip-test-{}-{}-{n}", self.test, std::process::id())
    }

    /// `clip run --cache-dir ... --name NAME [args] ARCHIVE [command]`, not yet started.
    fn command(&self, name: &str, args: &[&str], command: &[&str]) -> Command {
        self.command_of(self.archive.as_os_str(), name, args, command)
    }

    /// `clip run --cache-dir ... --name NAME [args] IMAGE [command]`, not yet started.
    fn command_of(
        &self,
        image: &std::ffi::OsStr,
        name: &str,
        args: &[&str],
        command: &[&str],
    ) -> Command {
        let mut c = clip_command();
        c.arg("run")
            .arg("--cache-dir")
            .arg(self.scratch.path("cache"))
            .arg("--name")
            .arg(name)
            .args(args)
            .arg(image)
            .args(command)
            .stdin(Stdio::null());
        c
    }

    /// Runs to the end; checks that it cleaned up after itself.
    fn run(&self, args: &[&str], command: &[&str]) -> Output {
        let name = self.name(0);
        let out = self
            .command(&name, args, command)
            .output()
            .expect("running clip run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "clip run panicked:\n{err}");
        self.assert_clean(&name);
        out
    }

    /// Runs to the end and returns stdout; panics unless the exit code is `code`.
    fn run_code(&self, code: i32, args: &[&str], command: &[&str]) -> String {
        let out = self.run(args, command);
        assert_eq!(
            out.status.code(),
            Some(code),
            "clip run {args:?} {command:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn mountpoint(&self) -> PathBuf {
        PathBuf::from("/run/clip/images")
            .join(&self.key)
            .join("mnt")
    }

    /// How many mounts sit at the image's shared mountpoint.
    fn image_mounts(&self) -> usize {
        let mnt = self.mountpoint();
        mountinfo()
            .iter()
            .filter(|(point, fstype)| Path::new(point) == mnt && fstype == "fuse.clip")
            .count()
    }

    /// Nothing of a run named `name` is left: no image mount, no image directory, no
    /// overlay or bundle, no runtime state.
    fn assert_clean(&self, name: &str) {
        assert_eq!(self.image_mounts(), 0, "the image mount is left");
        let image_dir = PathBuf::from("/run/clip/images").join(&self.key);
        assert!(!image_dir.exists(), "{} is left", image_dir.display());
        let bundle = PathBuf::from("/run/clip/runs").join(name);
        let below: Vec<_> = mountinfo()
            .into_iter()
            .filter(|(p, _)| Path::new(p).starts_with(&bundle))
            .collect();
        assert!(below.is_empty(), "mounts left in the bundle: {below:?}");
        assert!(!bundle.exists(), "{} is left", bundle.display());
        for runtime in ["runc", "crun", "runsc"] {
            if let Ok(out) = Command::new(runtime).arg("list").output() {
                let list = String::from_utf8_lossy(&out.stdout);
                assert!(
                    !list
                        .lines()
                        .any(|l| l.split_whitespace().next() == Some(name)),
                    "{runtime} still knows {name}:\n{list}"
                );
            }
        }
    }
}

/// `(mount point, type)` of every mount (mount points here have no escapes).
fn mountinfo() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some((f.get(4)?.to_string(), f.get(sep + 1)?.to_string()))
        })
        .collect()
}

/// A `clip run` in the background whose stdout the test reads line by line.
struct Background {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
}

impl Background {
    fn start(mut cmd: Command) -> Background {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting clip run");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Background {
            child: Some(child),
            stdout,
        }
    }

    /// Blocks until the container prints `line` (panics if its output ends first).
    fn wait_for(&mut self, line: &str) {
        let mut got = String::new();
        loop {
            let mut l = String::new();
            let n = self.stdout.read_line(&mut l).expect("reading clip run");
            if n == 0 {
                let err = self.finish().stderr;
                panic!(
                    "clip run ended before printing {line:?}; stdout: {got}\nstderr: {}",
                    String::from_utf8_lossy(&err)
                );
            }
            if l.trim_end() == line {
                return;
            }
            got.push_str(&l);
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    fn write_stdin(&mut self, text: &str) {
        let child = self.child.as_mut().expect("running");
        let stdin = child.stdin.as_mut().expect("stdin piped");
        stdin.write_all(text.as_bytes()).expect("writing stdin");
    }

    /// Waits for a successful end (panics with stderr otherwise); the rest of stdout.
    fn finish_ok(&mut self) -> String {
        let out = self.finish();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits for the end; the rest of stdout, all of stderr and the status.
    fn finish(&mut self) -> Output {
        let mut child = self.child.take().expect("running");
        drop(child.stdin.take());
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut self.stdout, &mut rest).expect("stdout");
        let mut out = child.wait_with_output().expect("waiting for clip run");
        out.stdout = rest;
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A failed test: end our own clip run (it cleans up on SIGTERM's third time).
            for _ in 0..3 {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
            }
            let _ = child.wait();
        }
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn exit_codes_and_cleanup() {
    let s = Setup::new("exit");
    assert_eq!(s.run_code(0, &[], &["true"]), "");
    s.run_code(7, &[], &["sh", "-c", "exit 7"]);
    // The image's Cmd (/bin/sh) with stdin at /dev/null: it reads EOF and exits 0.
    s.run_code(0, &[], &[]);

    // The container's root is an overlay whose upper layer lives and dies with the run: never
    // synced (`volatile`), so the end of a run does not write back what the mount cached.
    let root = s.run_code(0, &[], &["sh", "-c", "grep ' / / ' /proc/self/mountinfo"]);
    assert!(
        root.contains(" overlay ") && root.contains("volatile"),
        "{root}"
    );

    // Killed by SIGKILL: 128 + 9.
    let name = s.name(1);
    let mut bg = Background::start(s.command(
        &name,
        &[],
        &["sh", "-c", "echo ready; while :; do sleep 1; done"],
    ));
    bg.wait_for("ready");
    let killed = Command::new("runc")
        .args(["kill", &name, "KILL"])
        .status()
        .expect("runc kill");
    assert!(killed.success());
    assert_eq!(bg.finish().status.code(), Some(137));
    s.assert_clean(&name);

    // The runtime fails (no such command): 125, with the runtime's reason, nothing left.
    let out = s.run(&[], &["/no/such/command"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/command"), "{err}");
    assert!(err.contains("failed to start the container"), "{err}");

    // clip run's own errors: 125 too, before anything is set up.
    let out = s.run(&["-u", "nobody"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unable to find user \"nobody\""), "{err}");
    let out = s.run(&["-v", "relative:/x"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute host path"));
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn environment_workdir_user_hostname() {
    let s = Setup::with("env", |c| {
        c.env = vec!["FROM_IMAGE=image".into(), "OVERRIDDEN=image".into()];
        c.working_dir = Some("/srv/app".into());
    });
    let env_file = s.scratch.path("vars.env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=file\nOVERRIDDEN=file\n").unwrap();
    // `-e KEY` takes clip's own value of KEY.
    let out = {
        let name = s.name(0);
        let out = s
            .command(
                &name,
                &[
                    "--env-file",
                    env_file.to_str().unwrap(),
                    "-e",
                    "OVERRIDDEN=flag",
                    "-e",
                    "FROM_CLIP",
                    "--hostname",
                    "box1",
                ],
                &[
                    "sh",
                    "-c",
                    "echo $PATH; echo $FROM_IMAGE $FROM_FILE $OVERRIDDEN $FROM_CLIP; pwd; \
                     echo $HOME; echo $HOSTNAME; hostname",
                ],
            )
            .env("FROM_CLIP", "clip")
            .output()
            .unwrap();
        s.assert_clean(&name);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        lines(&out),
        [
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "image file flag clip",
            // The image's WorkingDir, created (it is not in the image).
            "/srv/app",
            "/root",
            "box1",
            "box1"
        ]
    );

    // -w, created in the upper layer; users by name and by number.
    let out = s.run_code(
        0,
        &["-w", "/new/dir", "-u", "app"],
        &["sh", "-c", "pwd; id; echo $HOME"],
    );
    assert_eq!(
        lines(&out),
        [
            "/new/dir",
            "uid=1000(app) gid=1000(app) groups=29(audio),44(video)",
            "/home/app"
        ]
    );
    // Numeric with a group: no supplementary groups (docker's rule), home from passwd.
    let out = s.run_code(0, &["-u", "1000:1000"], &["sh", "-c", "id; echo $HOME"]);
    assert_eq!(lines(&out), ["uid=1000(app) gid=1000(app)", "/home/app"]);
    // Ids the image does not list.
    let out = s.run_code(
        0,
        &["-u", "4242:4343"],
        &["sh", "-c", "id -u; id -g; echo $HOME"],
    );
    assert_eq!(lines(&out), ["4242", "4343", "/"]);
    // A user whose group is given by name.
    let out = s.run_code(0, &["-u", "other:audio"], &["id"]);
    assert_eq!(lines(&out), ["uid=1001(other) gid=29(audio)"]);
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn entrypoint_and_cmd() {
    let s = Setup::with("entry", |c| {
        c.entrypoint = Some(vec!["/bin/echo".into(), "ep".into()]);
        c.cmd = Some(vec!["cmd".into()]);
    });
    assert_eq!(s.run_code(0, &[], &[]), "ep cmd\n");
    assert_eq!(s.run_code(0, &[], &["x", "-y"]), "ep x -y\n");
    // --entrypoint replaces it and drops the image's Cmd...
    assert_eq!(s.run_code(0, &["--entrypoint", "/bin/echo"], &[]), "\n");
    // ...unless a command is given.
    assert_eq!(
        s.run_code(0, &["--entrypoint", "/bin/sh"], &["-c", "echo via sh"]),
        "via sh\n"
    );
    // --entrypoint "" clears it.
    assert_eq!(
        s.run_code(0, &["--entrypoint", ""], &["echo", "alone"]),
        "alone\n"
    );
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn volumes_read_only_and_network() {
    let s = Setup::new("vol");
    let host = s.scratch.path("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in"), "from the host\n").unwrap();
    let rw = format!("{}:/mnt/rw", host.display());
    let ro = format!("{}:/mnt/ro:ro", host.display());
    let out = s.run_code(
        0,
        &["-v", &rw, "-v", &ro],
        &[
            "sh",
            "-c",
            "cat /mnt/rw/in; echo written > /mnt/rw/out; \
             echo nope > /mnt/ro/out2 || echo refused",
        ],
    );
    assert_eq!(lines(&out), ["from the host", "refused"]);
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "written\n"
    );
    assert!(!host.join("out2").exists());

    // --read-only: the root refuses writes; /dev/shm stays writable.
    let out = s.run_code(
        0,
        &["--read-only"],
        &[
            "sh",
            "-c",
            "echo x > /tmp/f || echo refused; echo y > /dev/shm/f && echo shm ok",
        ],
    );
    assert_eq!(lines(&out), ["refused", "shm ok"]);
    // Without it, writes land in the run's own upper layer and go with it.
    assert_eq!(
        s.run_code(0, &[], &["sh", "-c", "echo x > /etc/new; cat /etc/new"]),
        "x\n"
    );
    assert_eq!(
        s.run_code(0, &[], &["sh", "-c", "test -e /etc/new || echo fresh"]),
        "fresh\n"
    );

    // Networks: loopback only by default; the host's with --network host.
    let count = |args: &[&str]| -> usize {
        s.run_code(0, args, &["cat", "/proc/net/dev"])
            .lines()
            .filter(|l| l.contains(':'))
            .count()
    };
    assert_eq!(count(&[]), 1, "only lo");
    let host_count = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .filter(|l| l.contains(':'))
        .count();
    assert_eq!(count(&["--network", "host"]), host_count);
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn a_terminal_with_t() {
    let s = Setup::new("tty");
    let name = s.name(0);
    let clip = env!("CARGO_BIN_EXE_clip");
    let cmd = format!(
        "{clip} run --cache-dir {} --name {name} -t {} sh -c 'test -t 0 && tty; exit 4'",
        s.scratch.path("cache").display(),
        s.archive.display()
    );
    // util-linux `script` gives clip a terminal; -e passes the exit code on.
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("CLIP_CREDS")
        .env_remove("REGISTRY_AUTH_FILE")
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    s.assert_clean(&name);

    // Without a terminal, -t is refused up front.
    let out = s.run(&["-t"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-t needs a terminal"));
}

/// A container that traps `trap` and says so, exiting `code`.
fn trapping(trap: &str, code: u32) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "trap 'echo got {trap}; exit {code}' {trap}; echo ready; while :; do sleep 0.1; done"
        ),
    ]
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn signals_are_forwarded() {
    let s = Setup::new("sig");
    for (sent, trap, code) in [("TERM", "TERM", 3), ("INT", "INT", 4), ("HUP", "HUP", 5)] {
        let name = s.name(code);
        let args = trapping(trap, code);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut bg = Background::start(s.command(&name, &[], &args));
        bg.wait_for("ready");
        bg.signal(sent);
        let out = bg.finish();
        assert_eq!(
            out.status.code(),
            Some(code as i32),
            "SIG{sent}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("got {trap}\n")
        );
        s.assert_clean(&name);
    }
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn sigterm_becomes_the_images_stop_signal() {
    let s = Setup::with("stopsig", |c| c.stop_signal = Some("SIGUSR1".into()));
    let name = s.name(0);
    let args = trapping("USR1", 6);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut bg = Background::start(s.command(&name, &[], &args));
    bg.wait_for("ready");
    bg.signal("TERM");
    let out = bg.finish();
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got USR1\n");
    s.assert_clean(&name);
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn concurrent_runs_share_one_mount() {
    let s = Setup::new("share");
    let (a, b) = (s.name(1), s.name(2));
    let start = |name: &str| {
        let mut c = s.command(
            name,
            &["-i"],
            &[
                "sh",
                "-c",
                "echo ready; read line; echo got $line; cat /etc/os-release",
            ],
        );
        c.stdin(Stdio::piped());
        Background::start(c)
    };
    // Both started at once: they race for the mount.
    let (mut first, mut second) = (start(&a), start(&b));
    first.wait_for("ready");
    second.wait_for("ready");
    assert_eq!(s.image_mounts(), 1, "one mount for both runs");
    let runs = PathBuf::from("/run/clip/images").join(&s.key).join("runs");
    assert_eq!(
        std::fs::read_dir(&runs).unwrap().count(),
        2,
        "two registrations"
    );

    first.write_stdin("one\n");
    assert_eq!(first.finish_ok(), "got one\nID=clip-test\n");
    // The second run still has its mount.
    assert_eq!(s.image_mounts(), 1);
    second.write_stdin("two\n");
    assert_eq!(second.finish_ok(), "got two\nID=clip-test\n");
    s.assert_clean(&a);
    s.assert_clean(&b);
}

/// Waits (on a pidfd, no polling) until process `pid` has exited.
fn wait_exit(pid: u32) {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else {
        return; // already gone
    };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut fds, None).expect("poll pidfd");
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn a_stale_mount_is_cleared_and_mounted_again() {
    let s = Setup::new("stale");
    let a = s.name(1);
    // A run that touches nothing of the image after it started (shell builtins only).
    let mut c = s.command(
        &a,
        &["-i"],
        &["sh", "-c", "echo ready; read line; echo bye"],
    );
    c.stdin(Stdio::piped());
    let mut first = Background::start(c);
    first.wait_for("ready");
    // The mount's daemon dies: the mount is stale.
    let daemon = std::fs::read_to_string(
        PathBuf::from("/run/clip/images")
            .join(&s.key)
            .join("daemon"),
    )
    .expect("the daemon's registration");
    let pid: u32 = daemon
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid");
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_exit(pid);
    let err = std::fs::metadata(s.mountpoint()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    // The next run clears it and mounts again.
    let name = s.name(2);
    let out = s
        .command(&name, &[], &["cat", "/etc/os-release"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ID=clip-test\n");
    assert!(err.contains("stale mount"), "{err}");
    // The first run still holds the new mount.
    assert_eq!(s.image_mounts(), 1);
    assert!(std::fs::metadata(s.mountpoint()).is_ok());

    first.write_stdin("x\n");
    assert_eq!(first.finish_ok(), "bye\n");
    s.assert_clean(&a);
    s.assert_clean(&name);
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn what_a_crashed_run_left_is_cleared_by_the_next() {
    let s = Setup::new("crash");
    let a = s.name(1);
    let mut c = s.command(&a, &["-i"], &["sh", "-c", "echo ready; read line"]);
    c.stdin(Stdio::piped());
    let mut first = Background::start(c);
    first.wait_for("ready");
    // clip run itself dies without cleaning up (SIGKILL). Its container then reads the end
    // of its stdin and exits, and the runtime with it (the runtime is a child of clip run:
    // the runc process is the one whose command line says so).
    let mut child = first.child.take().unwrap();
    let runtime: Vec<u32> = children(child.id())
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"runc\0run\0"))
        })
        .collect();
    assert_eq!(runtime.len(), 1, "one runc run under clip run");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_exit(runtime[0]);
    let bundle = PathBuf::from("/run/clip/runs").join(&a);
    assert!(
        bundle.join("rootfs").exists(),
        "the crashed run left its bundle"
    );
    assert_eq!(s.image_mounts(), 1, "and the image mount");

    // The next run of the image removes the crashed run's bundle and overlay, prunes its
    // registration, shares the mount while it runs and, last out, unmounts it.
    let name = s.name(2);
    let out = s.command(&name, &[], &["true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("a run that crashed"), "{err}");
    s.assert_clean(&name);
    s.assert_clean(&a);
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn an_image_runs_by_reference_on_a_node_that_never_saw_it() {
    let s = Setup::new("reference");
    let image = image_ref(&s.registry, "run:1");
    let name = s.name(1);
    let run = |args: &[&str], command: &[&str]| {
        let out = s
            .command_of(image.as_ref(), &name, args, command)
            .output()
            .expect("running clip run");
        s.assert_clean(&name);
        out
    };

    // Nothing in the registry yet and --no-index: refused before anything is set up.
    let out = run(&["--no-index"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no clip index for"), "{err}");

    // CI pushes the index; the node (its cache is empty) finds it from the reference, and
    // reads the layers with Range requests only.
    let pushed = json_of(clip(&[
        "index",
        "--push",
        "--quiet",
        "--json",
        "--cache-dir",
        s.scratch.path("ci-cache").to_str().unwrap(),
        &image,
    ]));
    let artifact = pushed["pushed"]["artifact"]
        .as_str()
        .expect("the artifact's digest")
        .to_string();
    let mark = s.registry.log_mark();
    let out = run(
        &["--no-index", "-u", "app"],
        &["sh", "-c", "id -un; cat /etc/os-release"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines(&String::from_utf8_lossy(&out.stdout)),
        ["app", "ID=clip-test"]
    );
    let requests = s.registry.requests_since(mark);
    let artifact_gets = requests
        .iter()
        .filter(|r| r.method == "GET" && r.uri.contains(&format!("/manifests/{artifact}")))
        .count();
    assert_eq!(artifact_gets, 1, "the index artifact once: {requests:#?}");
    let layer_gets: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "GET" && s.layers.iter().any(|l| r.uri.contains(l.as_str())))
        .collect();
    assert!(!layer_gets.is_empty(), "{requests:#?}");
    assert!(
        layer_gets.iter().all(|r| r.is_partial()),
        "a whole layer was pulled: {layer_gets:#?}"
    );
    let pulled = pull_json(&s.scratch.path("cache"), &image);
    assert_eq!(
        pulled["source"], "store",
        "the run kept the index: {pulled}"
    );
}

fn runtime_case(runtime: &str) {
    let s = Setup::new(runtime);
    let out = s.run_code(
        6,
        &["--runtime", runtime, "-u", "app", "-e", "X=y"],
        &["sh", "-c", "id -u; echo $X; cat /etc/os-release; exit 6"],
    );
    assert_eq!(lines(&out), ["1000", "y", "ID=clip-test"]);
    // Signals reach the container through this runtime too.
    let name = s.name(1);
    let args = trapping("TERM", 3);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut bg = Background::start(s.command(&name, &["--runtime", runtime], &args));
    bg.wait_for("ready");
    bg.signal("TERM");
    let out = bg.finish();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.assert_clean(&name);
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, crun, docker-registry (scripts/test.sh runs it)"]
fn runtime_crun() {
    runtime_case("crun");
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runsc, docker-registry (scripts/test.sh runs it)"]
fn runtime_runsc() {
    runtime_case("runsc");
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, runc, docker-registry (scripts/test.sh runs it)"]
fn a_recorded_profile_travels_with_the_image() {
    let s = Setup::new("profile");
    let image = image_ref(&s.registry, "run:1");
    let ci = s.scratch.path("ci-cache");
    clip(&[
        "index",
        "--push",
        "--quiet",
        "--cache-dir",
        ci.to_str().unwrap(),
        &image,
    ])
    .success();
    let node = s.scratch.path("cache");
    let profile_of = |cache: &Path| -> serde_json::Value {
        json_of(clip(&[
            "inspect",
            "--profile",
            "--json",
            "--cache-dir",
            cache.to_str().unwrap(),
            &image,
        ]))
    };
    let files = |p: &serde_json::Value| -> Vec<String> {
        p["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect()
    };

    // Recorded while the container starts, kept in the node's store and pushed.
    let name = s.name(1);
    let out = s
        .command_of(
            image.as_ref(),
            &name,
            &["--record", "--push"],
            &["cat", "/etc/os-release"],
        )
        .output()
        .unwrap();
    s.assert_clean(&name);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ID=clip-test\n");
    assert!(
        err.contains("recorded") && err.contains("pushed the profile"),
        "{err}"
    );
    let first = profile_of(&node);
    let recorded = files(&first);
    assert!(recorded.contains(&"/etc/os-release".to_string()), "{first}");
    assert!(recorded.contains(&"/bin/busybox".to_string()), "{first}");
    let spans = first["spans"].as_array().unwrap();
    assert!(!spans.is_empty(), "{first}");
    let times: Vec<u64> = spans.iter().map(|s| s["at_ms"].as_u64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "first-access order: {times:?}"
    );
    // The recording mount was the run's own, and it is gone with what it recorded.
    let left: Vec<_> = std::fs::read_dir("/run/clip/images")
        .unwrap()
        .chain(std::fs::read_dir("/run/clip/profiles").unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&s.key))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let shown = json_of(clip(&[
        "inspect",
        "--json",
        "--cache-dir",
        node.to_str().unwrap(),
        &image,
    ]));
    assert_eq!(shown["profile"]["spans"], spans.len(), "{shown}");

    // A second node finds the profile beside the index, with its startup pack.
    let other = s.scratch.path("other-cache");
    pull_json(&other, &image);
    assert_eq!(
        profile_of(&other),
        first,
        "the same profile on the second node"
    );
    let summary = |cache: &Path| {
        json_of(clip(&[
            "inspect",
            "--json",
            "--cache-dir",
            cache.to_str().unwrap(),
            &image,
        ]))
    };
    let pack_bytes = summary(&other)["profile"]["pack_bytes"].as_u64();
    assert!(pack_bytes.is_some_and(|n| n > 0), "{}", summary(&other));
    assert_eq!(pack_bytes, summary(&node)["profile"]["pack_bytes"].as_u64());

    // Its mount replays the profile from the pack: every span of it, not one request for them.
    let mount = Mount::start(Path::new(&image), &s.scratch.path("mnt"), &other, &[]);
    let stats = mount.stats_when_idle();
    assert_eq!(
        std::fs::read(mount.dir.join("etc/os-release")).unwrap(),
        b"ID=clip-test\n"
    );
    let after = mount.stats_when_idle();
    mount.unmount();
    assert_eq!(stats["prefetch_spans"], spans.len(), "{stats}");
    assert!(stats["pack_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["registry_requests"], 0, "{stats}");
    assert_eq!(
        after["registry_requests"], 0,
        "read from the cache: {after}"
    );
    assert!(after["prefetch_hits"].as_u64().unwrap() >= 1, "{after}");

    // Recording again merges; --replace starts over.
    let out = s
        .command_of(image.as_ref(), &name, &["--record"], &["cat", "/etc/group"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = files(&profile_of(&node));
    assert!(
        merged.contains(&"/etc/os-release".to_string())
            && merged.contains(&"/etc/group".to_string()),
        "{merged:?}"
    );
    let out = s
        .command_of(
            image.as_ref(),
            &name,
            &["--record", "--replace"],
            &["cat", "/etc/passwd"],
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replaced = files(&profile_of(&node));
    assert!(
        replaced.contains(&"/etc/passwd".to_string()),
        "{replaced:?}"
    );
    assert!(
        !replaced.contains(&"/etc/os-release".to_string()),
        "{replaced:?}"
    );
    s.assert_clean(&name);

    // Pushed from the node that indexed the image (its index complete, windows and all): the
    // pack holds the windows too, read from its own copy of the index blob, and a node that
    // downloads the index without them replays the profile without a request.
    let name = s.name(2);
    let out = clip_command()
        .arg("run")
        .arg("--cache-dir")
        .arg(&ci)
        .arg("--name")
        .arg(&name)
        .args(["--record", "--push", &image, "cat", "/etc/group"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    s.assert_clean(&name);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("startup pack"),
        "{err}"
    );
    let third = s.scratch.path("third-cache");
    pull_json(&third, &image);
    let mount = Mount::start(Path::new(&image), &s.scratch.path("mnt3"), &third, &[]);
    let stats = mount.stats_when_idle();
    let group = std::fs::read(mount.dir.join("etc/group")).unwrap();
    assert_eq!(group, GROUP);
    let after = mount.stats();
    assert_eq!(
        after["registry_requests"], 0,
        "read from the cache: {after}"
    );
    mount.unmount();
    assert!(stats["pack_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(
        (&stats["registry_requests"], &stats["window_bytes_fetched"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "{stats}"
    );
}
