//! `clip snapshotter` end to end: a real containerd (1.6) with clip as its proxy snapshotter, a
//! real registry, `ctr` / `ctr-remote` as clients, runc for the containers. Runs as root.
//!
//! Every test starts its own registry, snapshotter and containerd (own root, state, sockets
//! and config under a temporary directory, namespace `clip-test`), and its [`Env`] tears all
//! of it down by pid and path: tasks killed and deleted, containerd and the snapshotter
//! stopped, every mount below the directory unmounted (clip mounts with `clip umount`, which
//! ends their daemons).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clip_testkit::{
    assert_same_tree, oracle_unpack, Image, Layer, ManifestFlavor, PushedImage, Registry,
    TreeSnapshot,
};
use support::*;

const NS: &str = "clip-test";
const READY: Duration = Duration::from_secs(60);
/// The CRI plugin off: the tests that use `ctr` do not need it.
const NO_CRI: &str = "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n";

/// Polls `f` until it returns `Some`, at most `READY`.
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + READY;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// A `clip snapshotter` process.
struct Snapshotter {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Snapshotter {
    fn start(dir: &Path, cache: &Path) -> Snapshotter {
        let socket = dir.join("snapshotter/clip.sock");
        let root = dir.join("snapshotter/root");
        let log = dir.join("snapshotter.log");
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("snapshotter log");
        let child = clip_command()
            .env("RUST_LOG", "clip_snapshotter=debug,clip=info")
            .args(["snapshotter", "--socket"])
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .arg("--cache-dir")
            .arg(cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting clip snapshotter");
        let mut s = Snapshotter { child, socket, log };
        poll("the snapshotter's socket", || {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("clip snapshotter exited ({status}):\n{}", s.log());
            }
            std::os::unix::net::UnixStream::connect(&s.socket)
                .ok()
                .map(|_| ())
        });
        s
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no cleanup at all.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), rustix::process::Signal::TERM);
        self.child.wait().expect("waiting for the snapshotter")
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), rustix::process::Signal::TERM);
            let _ = self.child.wait();
        }
    }
}

/// A containerd process of the test's own.
struct Containerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// With `extra` at the top level of the config (plugin settings).
    fn start_with(dir: &Path, snapshotter_socket: &Path, extra: &str) -> Containerd {
        let socket = dir.join("containerd/containerd.sock");
        let config = dir.join("containerd.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
{extra}
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  level = "debug"
[proxy_plugins.clip]
  type = "snapshot"
  address = "{snap}"
"#,
                root = dir.join("containerd/root").display(),
                state = dir.join("containerd/state").display(),
                socket = socket.display(),
                snap = snapshotter_socket.display(),
            ),
        )
        .expect("containerd config");
        let log = dir.join("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("containerd log"))
            .spawn()
            .expect("starting containerd (Debian package containerd)");
        let mut c = Containerd { child, socket, log };
        poll("containerd", || {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!(
                    "containerd exited ({status}):\n{}",
                    fs::read_to_string(&c.log).unwrap_or_default()
                );
            }
            c.ctr(&["version"]).status.success().then_some(())
        });
        c
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        self.command_in(NS, program, args)
    }

    fn command_in(&self, namespace: &str, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace]);
        c.args(args);
        c
    }

    /// The last lines of containerd's log that are warnings or errors.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=warning"))
            .collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.command("ctr", args).output().expect("running ctr")
    }

    /// `ctr ARGS`, which must succeed: its stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ctr_remote_ok(&self, args: &[&str]) -> String {
        let out = self
            .command("ctr-remote", args)
            .output()
            .expect("running ctr-remote (Debian package stargz-snapshotter)");
        assert!(out.status.success(), "ctr-remote {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A lazy pull of `image` through the clip snapshotter (`ctr-remote image rpull`).
    fn rpull(&self, image: &str) -> String {
        self.ctr_remote_ok(&[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "clip",
            image,
        ])
    }

    /// Kills and deletes every task and container of the test's namespace and of the CRI
    /// plugin's (`k8s.io`).
    fn clear(&self) {
        for ns in [NS, "k8s.io"] {
            let ctr = |args: &[&str]| {
                self.command_in(ns, "ctr", args)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            let tasks = ctr(&["task", "ls", "-q"]);
            for task in tasks.lines().filter(|t| !t.trim().is_empty()) {
                ctr(&["task", "kill", "-s", "SIGKILL", task]);
                ctr(&["task", "delete", "--force", task]);
            }
            let containers = ctr(&["container", "ls", "-q"]);
            for c in containers.lines().filter(|t| !t.trim().is_empty()) {
                ctr(&["container", "delete", c]);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.clear();
            signal(self.child.id(), rustix::process::Signal::TERM);
            let _ = self.child.wait();
        }
    }
}

/// One test's world: registry, scratch directory, snapshotter, containerd.
struct Env {
    // Dropped in this order: containerd first, the registry last.
    containerd: Option<Containerd>,
    snapshotter: Option<Snapshotter>,
    registry: Registry,
    scratch: Scratch,
}

impl Env {
    fn start() -> Env {
        Env::start_with(|_, _| NO_CRI.to_string())
    }

    /// With containerd's config extended by `extra(registry, scratch)`.
    fn start_with(extra: impl FnOnce(&Registry, &Scratch) -> String) -> Env {
        let registry = Registry::start();
        let scratch = Scratch::new();
        let snapshotter = Snapshotter::start(scratch.dir.path(), &scratch.path("cache"));
        let containerd = Containerd::start_with(
            scratch.dir.path(),
            &snapshotter.socket,
            &extra(&registry, &scratch),
        );
        Env {
            containerd: Some(containerd),
            snapshotter: Some(snapshotter),
            registry,
            scratch,
        }
    }

    fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd runs")
    }

    fn snapshotter(&self) -> &Snapshotter {
        self.snapshotter.as_ref().expect("the snapshotter runs")
    }

    fn image_ref(&self, repo_tag: &str) -> String {
        image_ref(&self.registry, repo_tag)
    }

    /// `clip index --push` from a CI machine of its own (its own cache).
    fn push_index(&self, repo_tag: &str) {
        json_of(clip(&[
            "index",
            "--push",
            "--quiet",
            "--json",
            "--cache-dir",
            self.scratch.path("ci-cache").to_str().expect("utf-8"),
            &self.image_ref(repo_tag),
        ]));
    }

    /// `ctr run --rm --snapshotter clip IMAGE NAME COMMAND...`: its stdout.
    fn run(&self, image: &str, name: &str, command: &[&str]) -> String {
        let mut args = vec!["run", "--rm", "--snapshotter", "clip", image, name];
        args.extend_from_slice(command);
        self.containerd().ctr_ok(&args)
    }

    /// The clip image mounts below the snapshotter's root.
    fn clip_mounts(&self) -> Vec<PathBuf> {
        mounts_below(&self.scratch.path("snapshotter/root/images"))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.containerd.take();
        let root = self.scratch.path("snapshotter/root");
        self.snapshotter.take();
        // Deepest first: containers' overlays, then the clip mounts (whose daemons end).
        let mut mounts = mounts_below(self.scratch.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            if m.starts_with(root.join("images")) {
                let _ = clip(&["umount", m.to_str().unwrap_or("")]);
            } else {
                let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// Mount points strictly below `dir`, from `/proc/self/mountinfo`.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m != dir && m.starts_with(dir))
        .collect()
}

/// A two-layer busybox image: the top layer adds a file, replaces one and deletes one.
fn busybox_image(registry: &Registry, repo_tag: &str, test: &str) -> PushedImage {
    Image::new()
        .layer(busybox_layer_with(
            &[
                ("etc/message", b"from the base layer\n"),
                ("etc/gone", b"deleted above\n"),
            ],
            false,
        ))
        .layer(Layer::from_fixture(&format!(
            "/etc/message file 0644 0 0 content=\"hello from {test}\\n\"\n\
             /etc/.wh.gone whiteout\n\
             /etc/cold file 0644 0 0 content=\"read late\\n\"\n"
        )))
        .config(|c| {
            c.labels.insert("test".into(), test.into());
            c.cmd = Some(vec!["/bin/sh".into()]);
        })
        .push(registry, repo_tag, ManifestFlavor::Oci)
}

/// The chain ID of an image's top layer: the name of its top snapshot.
fn top_chain_id(pushed: &PushedImage) -> String {
    let diff_ids: Vec<&str> = pushed.layers.iter().map(|l| l.diff_id.as_str()).collect();
    clip_snapshotter::chain_id(&diff_ids)
}

/// Layer blob GETs since `mark`: (all of them, the ones that were not Range reads).
fn layer_reads(
    registry: &Registry,
    mark: clip_testkit::LogMark,
    pushed: &PushedImage,
) -> (usize, Vec<String>) {
    let requests = registry.requests_since(mark);
    let gets: Vec<_> = requests
        .iter()
        .filter(|r| {
            r.method == "GET"
                && pushed
                    .layers
                    .iter()
                    .any(|l| r.uri.contains(l.digest.as_str()))
        })
        .collect();
    let whole = gets
        .iter()
        .filter(|r| !r.is_partial())
        .map(|r| format!("{r:?}"))
        .collect();
    (gets.len(), whole)
}

#[test]
#[ignore = "privileged: needs root, containerd, runc, docker-registry (scripts/test.sh runs it)"]
fn an_image_without_index_takes_the_normal_path() {
    let env = Env::start();
    let pushed = busybox_image(&env.registry, "plain:1", "normal");
    let image = env.image_ref("plain:1");
    let c = env.containerd();
    c.ctr_ok(&[
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        "clip",
        &image,
    ]);
    let out = env.run(
        &image,
        "normal",
        &[
            "sh",
            "-c",
            "cat /etc/message; test -e /etc/gone || echo gone",
        ],
    );
    assert_eq!(out, "hello from normal\ngone\n");
    // Every layer unpacked into the snapshotter's own directories: no clip mount.
    let listed = c.ctr_ok(&["snapshot", "--snapshotter", "clip", "ls"]);
    assert!(listed.contains(&top_chain_id(&pushed)), "{listed}");
    assert!(env.clip_mounts().is_empty());
    // containerd's label filter, as its metadata store sends it, against the real thing.
    let info = c.ctr_ok(&[
        "snapshot",
        "--snapshotter",
        "clip",
        "info",
        &top_chain_id(&pushed),
    ]);
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    // The image goes, its snapshots with it (containerd's GC calls Remove, children first).
    c.ctr_ok(&["image", "rm", "--sync", &image]);
    let listed = c.ctr_ok(&["snapshot", "--snapshotter", "clip", "ls"]);
    assert_eq!(listed.lines().count(), 1, "only the header left: {listed}");
}

#[test]
#[ignore = "privileged: needs root, containerd, ctr-remote, FUSE, runc, docker-registry (scripts/test.sh runs it)"]
fn a_lazy_pull_reads_layers_by_range_only() {
    let env = Env::start();
    let pushed = busybox_image(&env.registry, "lazy:1", "lazy");
    env.push_index("lazy:1");
    let image = env.image_ref("lazy:1");
    let c = env.containerd();
    let mark = env.registry.log_mark();
    c.rpull(&image);
    let (gets, whole) = layer_reads(&env.registry, mark, &pushed);
    assert_eq!(gets, 0, "the pull reads no layer blob");
    assert!(whole.is_empty());
    let out = env.run(
        &image,
        "lazy",
        &[
            "sh",
            "-c",
            "cat /etc/message; test -e /etc/gone || echo gone",
        ],
    );
    assert_eq!(out, "hello from lazy\ngone\n");
    let (gets, whole) = layer_reads(&env.registry, mark, &pushed);
    assert!(gets > 0, "the container's reads went to the registry");
    assert!(
        whole.is_empty(),
        "a whole layer blob was pulled: {whole:#?}"
    );
    // One clip mount, shared by the image's containers.
    assert_eq!(env.clip_mounts().len(), 1);
    let out = env.run(&image, "lazy2", &["cat", "/etc/message"]);
    assert_eq!(out, "hello from lazy\n");
    assert_eq!(env.clip_mounts().len(), 1);
    // Its counters, through the mount daemon's stats socket.
    let mnt = env.clip_mounts().remove(0);
    let stats = json_of(clip(&["stats", "--json", mnt.to_str().expect("utf-8")]));
    assert!(
        stats["registry_requests"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    // The image removed: its snapshots go, and its mount with the top one.
    c.ctr_ok(&["image", "rm", "--sync", &image]);
    assert!(env.clip_mounts().is_empty(), "{}", env.snapshotter().log());
}

#[test]
#[ignore = "privileged: needs root, containerd, ctr-remote, FUSE, umoci, skopeo, docker-registry (scripts/test.sh runs it)"]
fn a_container_rootfs_equals_umoci_unpack() {
    let env = Env::start();
    let pushed = Image::new()
        .layer(Layer::from_fixture(include_str!("fixtures/base.txt")))
        .layer(Layer::from_fixture(include_str!("fixtures/top.txt")))
        .push(&env.registry, "exact:1", ManifestFlavor::Oci);
    env.push_index("exact:1");
    let image = env.image_ref("exact:1");
    let c = env.containerd();
    c.rpull(&image);
    // The snapshot a container gets (an overlay: a fresh upper over the clip mount), mounted
    // as containerd mounts it.
    c.ctr_ok(&[
        "snapshot",
        "--snapshotter",
        "clip",
        "prepare",
        "rootfs-check",
        &top_chain_id(&pushed),
    ]);
    let target = env.scratch.path("rootfs");
    fs::create_dir(&target).expect("mkdir");
    let command = c.ctr_ok(&[
        "snapshot",
        "--snapshotter",
        "clip",
        "mounts",
        target.to_str().expect("utf-8"),
        "rootfs-check",
    ]);
    assert!(command.starts_with("mount -t overlay"), "{command}");
    assert!(
        !command.contains("snapshots/1/"),
        "empty lower layers are not stacked: {command}"
    );
    let out = Command::new("sh")
        .args(["-c", command.trim()])
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", text(&out));
    let mut actual = TreeSnapshot::capture(&target);
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty()).expect("umount");
    let mut expected = oracle_unpack(&env.registry, "exact:1");
    for runtime in ["/proc", "/sys", "/dev"] {
        expected.remove_subtree(runtime);
    }
    // The root directory is the overlay's upper directory (as with containerd's overlayfs
    // snapshotter): its attributes are not the image's.
    expected.0.remove("/");
    actual.0.remove("/");
    assert_same_tree(&expected, &actual);
    c.ctr_ok(&["snapshot", "--snapshotter", "clip", "rm", "rootfs-check"]);
}

#[test]
#[ignore = "privileged: needs root, containerd, ctr-remote, FUSE, runc, docker-registry (scripts/test.sh runs it)"]
fn a_snapshotter_killed_and_restarted_keeps_containers_running() {
    let mut env = Env::start();
    busybox_image(&env.registry, "restart:1", "restart");
    env.push_index("restart:1");
    let image = env.image_ref("restart:1");
    env.containerd().ctr_remote_ok(&[
        "image",
        "rpull",
        "--plain-http",
        "--snapshotter",
        "clip",
        &image,
    ]);
    env.containerd().ctr_ok(&[
        "run",
        "-d",
        "--snapshotter",
        "clip",
        &image,
        "long",
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ]);
    let mounts = env.clip_mounts();
    assert_eq!(mounts.len(), 1);

    // kill -9: the container keeps reading, also files it never read before.
    env.snapshotter.take().expect("running").kill9();
    let read = env.containerd().ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "read1",
        "long",
        "cat",
        "/etc/cold",
    ]);
    assert_eq!(read, "read late\n");

    // Restarted: the mount is adopted (not mounted again), new containers start.
    let snapshotter = Snapshotter::start(env.scratch.dir.path(), &env.scratch.path("cache"));
    assert!(
        snapshotter
            .log()
            .contains("clip mount still served: adopted"),
        "{}",
        snapshotter.log()
    );
    env.snapshotter = Some(snapshotter);
    assert_eq!(env.clip_mounts(), mounts);
    // containerd reconnects to a proxy plugin with a backoff of at most 3 s.
    let out = poll("a container started after the restart", || {
        let out = env.containerd().ctr(&[
            "run",
            "--rm",
            "--snapshotter",
            "clip",
            &image,
            "after",
            "cat",
            "/etc/message",
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(out, "hello from restart\n");
    let read = env.containerd().ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "read2",
        "long",
        "cat",
        "/etc/message",
    ]);
    assert_eq!(read, "hello from restart\n");

    // SIGTERM: the socket goes, the mount stays for the running container.
    let socket = env.snapshotter().socket.clone();
    let status = env.snapshotter.take().expect("running").stop();
    assert!(status.success(), "{status}");
    assert!(!socket.exists());
    assert_eq!(env.clip_mounts(), mounts);
    let read = env.containerd().ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "read3",
        "long",
        "cat",
        "/etc/message",
    ]);
    assert_eq!(read, "hello from restart\n");
}

/// The CRI plugin's configuration for a test: clip as its snapshotter with the snapshot
/// annotations on, a local pause-like image, the test registry over plain HTTP, CNI from
/// Debian's plugins (unused: the sandbox shares the host's network).
fn cri_config(registry: &Registry, scratch: &Scratch) -> String {
    let cni = scratch.path("cni");
    fs::create_dir_all(&cni).expect("cni dir");
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{addr}/pause:1"
  # The sandbox asks for oom_score_adj -998; without CAP_SYS_RESOURCE (some VMs and
  # containers) runc fails with "nsexec: failed to update /proc/self/oom_score_adj:
  # Permission denied": clamp it to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "clip"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{addr}"]
    endpoint = ["http://{addr}"]
"#,
        addr = registry.addr(),
        cni = cni.display(),
    )
}

/// The lines a container wrote to its CRI log (`TIME STREAM P|F TEXT` per line).
fn cri_log_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect()
}

#[test]
#[ignore = "privileged: needs root, containerd (CRI), FUSE, runc, docker-registry (scripts/test.sh runs it)"]
fn the_cri_path_starts_a_pod_without_pulling_layers() {
    use k8s_cri::v1 as cri;
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

    let env = Env::start_with(cri_config);
    // The sandbox's image: no index, so the normal path, through the same snapshotter.
    Image::new()
        .layer(busybox_layer_with(&[], false))
        .config(|c| {
            c.cmd = Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM; while true; do sleep 1; done".into(),
            ]);
        })
        .push(&env.registry, "pause:1", ManifestFlavor::Oci);
    let pushed = busybox_image(&env.registry, "cri:1", "cri");
    env.push_index("cri:1");
    let image = env.image_ref("cri:1");
    let socket = env.containerd().socket.clone();
    let logs = env.scratch.path("pod-logs");
    fs::create_dir_all(&logs).expect("log dir");

    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(async {
        let channel = tonic::transport::Endpoint::try_from("http://[::]")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                tokio::net::UnixStream::connect(socket.clone())
            }))
            .await
            .expect("connecting to containerd's CRI socket");
        let mut images = ImageServiceClient::new(channel.clone());
        let mut runtime = RuntimeServiceClient::new(channel);

        // PullImage: lazy.
        let mark = env.registry.log_mark();
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("PullImage");
        let (gets, _) = layer_reads(&env.registry, mark, &pushed);
        assert_eq!(gets, 0, "PullImage read no layer blob");

        // RunPodSandbox (host network: no CNI), CreateContainer, StartContainer.
        let sandbox_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "clip-pod".into(),
                uid: "clip-pod-uid".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // A pod on the host's network has the host's UTS namespace: no hostname.
            log_directory: logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RunPodSandbox: {e}\ncontainerd's log:\n{}",
                    env.containerd().log_tail()
                )
            })
            .into_inner()
            .pod_sandbox_id;
        let container = runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        "cat /etc/message; test -e /etc/gone || echo gone".into(),
                    ],
                    log_path: "app.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        runtime
            .start_container(cri::StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .expect("StartContainer");
        let deadline = Instant::now() + READY;
        loop {
            let status = runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: container.clone(),
                    verbose: false,
                })
                .await
                .expect("ContainerStatus")
                .into_inner()
                .status
                .expect("a status");
            if status.state == cri::ContainerState::ContainerExited as i32 {
                assert_eq!(status.exit_code, 0, "{status:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not exit: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            cri_log_lines(&logs.join("app.log")),
            ["hello from cri", "gone"]
        );
        let (gets, whole) = layer_reads(&env.registry, mark, &pushed);
        assert!(gets > 0, "the container's reads went to the registry");
        assert!(
            whole.is_empty(),
            "a whole layer blob was pulled: {whole:#?}"
        );

        // Teardown, as the kubelet does it.
        runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: container,
            })
            .await
            .expect("RemoveContainer");
        runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("StopPodSandbox");
        runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .expect("RemovePodSandbox");
    });
}

/// The pid of the `clip mount` daemon serving `mnt`, from `/proc`.
fn mount_daemon_of(mnt: &Path) -> Option<u32> {
    let mnt = mnt.to_str()?;
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.get(1) == Some(&b"mount".as_slice()) && args.contains(&mnt.as_bytes())).then_some(pid)
    })
}

#[test]
#[ignore = "privileged: needs root, containerd, ctr-remote, FUSE, runc, docker-registry (scripts/test.sh runs it)"]
fn a_mount_whose_daemon_died_is_restored_at_start() {
    let mut env = Env::start();
    busybox_image(&env.registry, "remount:1", "remount");
    env.push_index("remount:1");
    let image = env.image_ref("remount:1");
    let c = env.containerd();
    c.rpull(&image);
    // A container prepared (its snapshot over the image's mount), not started yet.
    c.ctr_ok(&[
        "container",
        "create",
        "--snapshotter",
        "clip",
        &image,
        "later",
        "cat",
        "/etc/message",
    ]);
    let mnt = env.clip_mounts().pop().expect("the image's mount");
    let daemon = mount_daemon_of(&mnt).expect("the mount's daemon");

    // Both die.
    env.snapshotter.take().expect("running").kill9();
    signal(daemon, rustix::process::Signal::KILL);
    // A dead FUSE daemon's mount answers ENOTCONN (to statfs: stat may hit the cache).
    poll("the daemon's end", || {
        rustix::fs::statfs(&mnt).is_err().then_some(())
    });

    let snapshotter = Snapshotter::start(env.scratch.dir.path(), &env.scratch.path("cache"));
    assert!(
        snapshotter.log().contains("clip mount restored"),
        "{}",
        snapshotter.log()
    );
    env.snapshotter = Some(snapshotter);
    assert!(
        fs::metadata(mnt.join("etc/message")).is_ok(),
        "served again"
    );
    let out = poll("the container's start", || {
        let out = env.containerd().ctr(&["task", "start", "later"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(out, "hello from remount\n");
}
