//! `clip mount` end to end: real registry, real FUSE, real overlayfs and runc. Runs as root.

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clip_testkit::{
    oracle_unpack_dir, Compression, Fault, FaultProxy, Image, Layer, LayerOptions, ManifestFlavor,
    Registry, TreeSnapshot,
};
use support::*;

/// One test's registry, scratch space, index and cache.
struct Setup {
    registry: Registry,
    scratch: Scratch,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            registry: Registry::start(),
            scratch: Scratch::new(),
        }
    }
    fn archive(&self, repo_tag: &str, extra: &[&str]) -> PathBuf {
        let out = self
            .scratch
            .path(&format!("{}.clip", repo_tag.replace([':', '/'], "_")));
        index(&self.registry, repo_tag, &out, extra);
        out
    }
    fn dir(&self, name: &str) -> PathBuf {
        self.scratch.path(name)
    }
}

fn u64_of(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("stats lack {k}: {v}"))
}

fn exact_case(compression: Compression, tag: &str) {
    let fixture = format!(
        "{}\n/usr/lib/big.txt file 0644 0 0 size=2500000 seed=5 text\n/usr/lib/rand.bin file 0644 0 0 size=700000 seed=6\n",
        include_str!("fixtures/base.txt")
    );
    let options = LayerOptions::default().compression(compression);
    let s = Setup::new();
    Image::new()
        .layer(Layer::from_fixture_with(&fixture, &options))
        .layer(Layer::from_fixture_with(
            include_str!("fixtures/top.txt"),
            &options,
        ))
        .push(&s.registry, tag, ManifestFlavor::Oci);
    let archive = s.archive(tag, &["--span", "256k"]);
    let mut expected = oracle_unpack_dir(&s.registry, tag, None).into_snapshot();
    for runtime in ["/proc", "/sys", "/dev"] {
        expected.remove_subtree(runtime);
    }
    if let Some(root) = expected.0.get_mut("/") {
        root.nlink -= 3;
    }
    let mount = Mount::start(&archive, &s.dir("mnt"), &s.dir("cache"), &[]);
    let actual = TreeSnapshot::capture(&mount.dir);
    clip_testkit::assert_same_tree(&expected, &actual);
    mount.unmount();
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn a_exact_gzip() {
    exact_case(Compression::Gzip, "exact:gzip");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn a_exact_zstd_multi_frame() {
    exact_case(Compression::ZstdMultiFrame(300_000), "exact:zstdmf");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn a_exact_zstd_single_frame() {
    exact_case(Compression::Zstd, "exact:zstd");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn a_exact_uncompressed() {
    exact_case(Compression::None, "exact:none");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn a_exact_multi_member_gzip() {
    exact_case(Compression::GzipMultiMember(4), "exact:members");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn b_lazy_reads_fetch_only_what_is_read() {
    let s = Setup::new();
    // A gzip layer of more than 100 MB compressed: incompressible files and some text.
    let mut fixture = String::from("/data dir 0755 0 0\n/etc dir 0755 0 0\n/etc/small.conf file 0644 0 0 content=\"small\\n\"\n");
    for i in 0..90 {
        fixture.push_str(&format!(
            "/data/blob{i:03} file 0644 0 0 size=1000000 seed={i}\n"
        ));
    }
    fixture.push_str(&clip_testkit::big_text_layer(40_000_000, 3));
    let options = LayerOptions::default();
    let pushed = Image::new()
        .layer(Layer::from_fixture_with(&fixture, &options))
        .push(&s.registry, "lazy:1", ManifestFlavor::Oci);
    assert!(
        pushed.layers[0].size >= 100_000_000,
        "layer is {} bytes",
        pushed.layers[0].size
    );
    let archive = s.archive("lazy:1", &[]);
    let info = inspect_json(&archive);
    let layer = &info["layers"][0];
    let largest_span =
        2 * layer["compressed_size"].as_u64().unwrap() / layer["spans"].as_u64().unwrap();

    let mount = Mount::start(&archive, &s.dir("mnt"), &s.dir("cache"), &[]);
    let mark = s.registry.log_mark();
    // Mounting made one reachability check; everything below is counted from here.
    let at_mount = u64_of(&mount.stats(), "bytes_fetched");

    // Metadata never touches the network.
    let listing = std::process::Command::new("ls")
        .arg("-lRa")
        .arg(&mount.dir)
        .output()
        .unwrap();
    assert!(listing.status.success());
    assert!(String::from_utf8_lossy(&listing.stdout).contains("blob089"));
    assert!(
        s.registry.requests_since(mark).is_empty(),
        "ls -lR made registry requests"
    );
    assert_eq!(u64_of(&mount.stats(), "bytes_fetched"), at_mount);

    // One small file: at most about two spans, in ranged requests, never the whole blob.
    assert_eq!(
        std::fs::read(mount.dir.join("etc/small.conf")).unwrap(),
        b"small\n"
    );
    let fetched = u64_of(&mount.stats(), "bytes_fetched") - at_mount;
    assert!(
        fetched > 0 && fetched <= 2 * largest_span,
        "fetched {fetched} bytes (span ≈ {largest_span})"
    );
    let requests = s.registry.requests_since(mark);
    let ranged = requests.iter().filter(|r| r.is_partial()).count();
    assert!((1..=2).contains(&ranged), "{ranged} ranged requests");
    let whole = requests
        .iter()
        .filter(|r| r.status == 200 && r.path().contains("/blobs/"))
        .count();
    assert_eq!(whole, 0, "no whole-blob download");

    // A 1 MB file in the middle of the layer: its own spans and little more.
    let data = std::fs::read(mount.dir.join("data/blob042")).unwrap();
    assert_eq!(data.len(), 1_000_000);
    let total = u64_of(&mount.stats(), "bytes_fetched") - at_mount;
    assert!(
        total - fetched <= 1_000_000 + 2 * largest_span,
        "fetched {} for a 1 MB file",
        total - fetched
    );
    assert!(
        total * 20 < pushed.layers[0].size,
        "fetched {total} of {}",
        pushed.layers[0].size
    );
    let log = mount.unmount();
    assert!(
        log.contains("registry requests"),
        "counters printed at unmount:\n{log}"
    );
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn c_corrupt_blob_gives_eio_never_wrong_bytes() {
    let s = Setup::new();
    let mut fixture = String::from("/d dir 0755 0 0\n");
    for i in 0..16 {
        fixture.push_str(&format!("/d/f{i:02} file 0644 0 0 size=200000 seed={i}\n"));
    }
    let pushed = Image::new().layer(Layer::from_fixture(&fixture)).push(
        &s.registry,
        "corrupt:1",
        ManifestFlavor::Oci,
    );
    let expected = oracle_unpack_dir(&s.registry, "corrupt:1", None);
    let archive = s.archive("corrupt:1", &["--span", "256k"]);

    // Same size, one byte flipped, in the registry's own storage.
    let path = s.registry.blob_path(&pushed.layers[0].digest);
    let mut blob = std::fs::read(&path).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x40;
    std::fs::write(&path, &blob).unwrap();

    let mount = Mount::start(&archive, &s.dir("mnt"), &s.dir("cache"), &[]);
    let (mut good, mut bad) = (0, 0);
    for i in 0..16 {
        let name = format!("d/f{i:02}");
        match std::fs::read(mount.dir.join(&name)) {
            Ok(bytes) => {
                assert!(
                    bytes == std::fs::read(expected.rootfs().join(&name)).unwrap(),
                    "{name}: wrong bytes served"
                );
                good += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
                bad += 1;
                // Not cached: a second read fails the same way.
                let again = std::fs::read(mount.dir.join(&name)).unwrap_err();
                assert_eq!(again.raw_os_error(), Some(libc::EIO));
            }
        }
    }
    assert!(bad >= 1 && good >= 10, "{bad} failed, {good} read");
    assert!(u64_of(&mount.stats(), "verify_failures") >= 1);
    let log = mount.unmount();
    assert!(
        log.contains(&pushed.layers[0].digest),
        "the log names the layer:\n{log}"
    );
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn d_warm_cache_needs_no_registry() {
    let s = Setup::new();
    let fixture = format!(
        "{}\n/usr/lib/big.txt file 0644 0 0 size=3000000 seed=5 text\n",
        include_str!("fixtures/base.txt")
    );
    Image::new()
        .layer(Layer::from_fixture(&fixture))
        .layer(Layer::from_fixture(include_str!("fixtures/top.txt")))
        .push(&s.registry, "warm:1", ManifestFlavor::Oci);
    let archive = s.archive("warm:1", &["--span", "256k"]);
    let cache = s.dir("cache");

    let mount = Mount::start(&archive, &s.dir("mnt"), &cache, &[]);
    let cold = TreeSnapshot::capture(&mount.dir);
    assert!(u64_of(&mount.stats(), "spans_fetched") > 0);
    mount.unmount();

    let mount = Mount::start(&archive, &s.dir("mnt"), &cache, &[]);
    let mark = s.registry.log_mark();
    let warm = TreeSnapshot::capture(&mount.dir);
    assert_eq!(cold, warm);
    let stats = mount.stats();
    assert_eq!(u64_of(&stats, "spans_fetched"), 0, "{stats}");
    // The reachability check made while mounting is not the fetcher's: no request at all.
    assert_eq!(u64_of(&stats, "registry_requests"), 0, "{stats}");
    assert!(u64_of(&stats, "cache_hits") > 0, "{stats}");
    assert!(
        s.registry.requests_since(mark).is_empty(),
        "warm reads reached the registry"
    );
    mount.unmount();
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn e_concurrent_readers_get_the_right_bytes_and_each_span_once() {
    let s = Setup::new();
    let mut fixture = String::from("/c dir 0755 0 0\n");
    for i in 0..24 {
        let kind = if i % 2 == 0 { " text" } else { "" };
        fixture.push_str(&format!(
            "/c/f{i:02} file 0644 0 0 size={} seed={i}{kind}\n",
            150_000 + 37_000 * i
        ));
    }
    Image::new()
        .layer(Layer::from_fixture(&fixture))
        .layer(Layer::from_fixture_with(
            &fixture.replace("/c/", "/z/").replace("/c ", "/z "),
            &LayerOptions::default().compression(Compression::ZstdMultiFrame(200_000)),
        ))
        .push(&s.registry, "conc:1", ManifestFlavor::Oci);
    let expected = oracle_unpack_dir(&s.registry, "conc:1", None);
    let archive = s.archive("conc:1", &["--span", "128k"]);
    let total_spans: u64 = inspect_json(&archive)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["spans"].as_u64().unwrap())
        .sum();
    let mount = Mount::start(&archive, &s.dir("mnt"), &s.dir("cache"), &[]);

    let files: Vec<String> = (0..24)
        .flat_map(|i| [format!("c/f{i:02}"), format!("z/f{i:02}")])
        .collect();
    let files = Arc::new(files);
    let (mnt, want) = (Arc::new(mount.dir.clone()), Arc::new(expected.rootfs()));
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let (files, mnt, want) = (files.clone(), mnt.clone(), want.clone());
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
                for _ in 0..40 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let name = &files[(x % files.len() as u64) as usize];
                    let expected = std::fs::read(want.join(name)).unwrap();
                    let offset = (x >> 8) % expected.len() as u64;
                    let len = ((x >> 32) % 300_000) as usize;
                    let end = (offset as usize + len).min(expected.len());
                    let mut buf = vec![0u8; end - offset as usize];
                    let f = std::fs::File::open(mnt.join(name)).unwrap();
                    f.read_exact_at(&mut buf, offset).unwrap();
                    assert!(
                        buf == expected[offset as usize..end],
                        "{name} at {offset}+{len}: wrong bytes"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
    // Read everything: every span has now been needed, and each was fetched exactly once.
    let all = TreeSnapshot::capture(&mount.dir);
    assert_eq!(all.len(), expected.snapshot().len());
    let stats = mount.stats();
    assert_eq!(u64_of(&stats, "spans_fetched"), total_spans, "{stats}");
    mount.unmount();
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn f_faults_give_eio_or_right_bytes_and_the_mount_recovers() {
    let s = Setup::new();
    let mut fixture = String::from("/f dir 0755 0 0\n");
    for i in 0..40 {
        fixture.push_str(&format!("/f/x{i:02} file 0644 0 0 size=300000 seed={i}\n"));
    }
    Image::new().layer(Layer::from_fixture(&fixture)).push(
        &s.registry,
        "faults:1",
        ManifestFlavor::Oci,
    );
    let expected = oracle_unpack_dir(&s.registry, "faults:1", None);
    let proxy = FaultProxy::start(s.registry.addr());
    let archive = s.scratch.path("faults.clip");
    clip(&[
        "index",
        "--quiet",
        "--span",
        "256k",
        &format!("{}/faults:1", proxy.addr()),
        archive.to_str().unwrap(),
    ])
    .success();
    let read = |dir: &Path, i: usize| -> Result<(), i32> {
        let name = format!("f/x{i:02}");
        match std::fs::read(dir.join(&name)) {
            Ok(bytes) => {
                assert!(
                    bytes == std::fs::read(expected.rootfs().join(&name)).unwrap(),
                    "{name}: wrong bytes"
                );
                Ok(())
            }
            Err(e) => Err(e.raw_os_error().unwrap_or(0)),
        }
    };
    // Each fault gets a fresh cache, so that its reads must reach the registry.
    for (round, fault) in [Fault::Reset, Fault::Truncate, Fault::Corrupt, Fault::Stall]
        .into_iter()
        .enumerate()
    {
        let mount = Mount::start(
            &archive,
            &s.dir("mnt"),
            &s.dir(&format!("cache{round}")),
            &["--read-timeout", "3"],
        );
        proxy.set(fault);
        let before = proxy.faults_injected();
        let file = 10 * round;
        if let Err(errno) = read(&mount.dir, file) {
            assert_eq!(errno, libc::EIO, "{fault:?}: a failed read is EIO");
        }
        assert!(
            proxy.faults_injected() > before,
            "{fault:?} was never injected"
        );
        proxy.set(Fault::None);
        // The registry is back: the same file now reads correctly, and so do others.
        for i in [file, file + 5] {
            read(&mount.dir, i).unwrap_or_else(|errno| {
                panic!("after {fault:?}: file {i} failed with errno {errno}")
            });
        }
        mount.unmount();
    }
}

/// Runs a command, panicking with its output unless it succeeds.
fn sh(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct OverlayGuard(PathBuf);
impl Drop for OverlayGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

struct Container(String);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runc")
            .args(["delete", "--force", &self.0])
            .output();
    }
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn g_runc_boots_from_the_mount_through_overlayfs() {
    let s = Setup::new();
    let layer = busybox_layer();
    let blob_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(busybox_blob()))
    };
    Image::new()
        .layer(layer)
        .push(&s.registry, "busybox:1", ManifestFlavor::Oci);
    let archive = s.archive("busybox:1", &[]);
    let mount = Mount::start(&archive, &s.dir("mnt"), &s.dir("cache"), &["--allow-other"]);

    let bundle = s.dir("bundle");
    let (upper, work, rootfs) = (s.dir("upper"), s.dir("work"), bundle.join("rootfs"));
    for d in [&bundle, &upper, &work, &rootfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    sh(std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            mount.dir.display(),
            upper.display(),
            work.display()
        ))
        .arg(&rootfs));
    let _overlay = OverlayGuard(rootfs.clone());

    sh(std::process::Command::new("runc")
        .arg("spec")
        .current_dir(&bundle));
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!([
        "/bin/sh", "-c",
        "cat /etc/os-release; sha256sum /data/blob; /usr/bin/sha256sum /data/blob; echo written > /tmp/out; cat /tmp/out; id -u; exit 7"
    ]);
    config["root"]["readonly"] = false.into();
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let id = format!("clip-test-{}", std::process::id());
    let _container = Container(id.clone());
    let out = std::process::Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!("ID=clip-test\n{blob_sha}  /data/blob\n{blob_sha}  /data/blob\nwritten\n0\n")
    );
    // The write went to the overlay's upper layer, never to the image.
    assert!(upper.join("tmp/out").exists());
    drop(_container);
    drop(_overlay);
    mount.unmount();
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn h_stale_mount_is_cleared_by_umount() {
    let s = Setup::new();
    Image::new()
        .layer(Layer::from_fixture(
            "/hello file 0644 0 0 content=\"hi\\n\"",
        ))
        .push(&s.registry, "stale:1", ManifestFlavor::Oci);
    let archive = s.archive("stale:1", &[]);
    let dir = s.dir("mnt");
    let mount = Mount::start(&archive, &dir, &s.dir("cache"), &[]);
    mount.kill();
    let err = std::fs::metadata(dir.join("hello")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    clip(&["umount", dir.to_str().unwrap()]).success();
    let mount = Mount::start(&archive, &dir, &s.dir("cache"), &[]);
    assert_eq!(std::fs::read(dir.join("hello")).unwrap(), b"hi\n");
    mount.unmount();
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn sigterm_and_sigint_unmount_cleanly() {
    let s = Setup::new();
    Image::new()
        .layer(Layer::from_fixture(
            "/hello file 0644 0 0 content=\"hi\\n\"",
        ))
        .push(&s.registry, "sig:1", ManifestFlavor::Oci);
    let archive = s.archive("sig:1", &[]);
    for signal in ["TERM", "INT"] {
        let dir = s.dir(&format!("mnt-{signal}"));
        let mount = Mount::start(&archive, &dir, &s.dir("cache"), &[]);
        assert_eq!(std::fs::read(dir.join("hello")).unwrap(), b"hi\n");
        let (status, log) = mount.signal_and_wait(signal);
        assert!(status.success(), "SIG{signal}: {status}\n{log}");
        assert!(!is_mounted(&dir), "SIG{signal} left the mount");
        assert!(
            log.contains("registry requests"),
            "counters printed:\n{log}"
        );
        // Regression: every unmount logged "Failed to umount filesystem: Invalid argument".
        assert!(!log.contains("Failed to umount"), "{log}");
        assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
    }
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn mount_errors_leave_no_mount_behind() {
    let s = Setup::new();
    Image::new()
        .layer(Layer::from_fixture(
            "/hello file 0644 0 0 content=\"hi\\n\"",
        ))
        .push(&s.registry, "errs:1", ManifestFlavor::Oci);
    let archive = s.archive("errs:1", &[]);
    let cache = s.dir("cache");

    // A damaged index.
    let bad = s.scratch.path("bad.clip");
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(&bad, &bytes).unwrap();
    let err = Mount::try_start(&bad, &s.dir("m1"), &cache, &[])
        .err()
        .expect("must fail");
    assert!(err.contains("checksum"), "{err}");
    assert!(!is_mounted(&s.dir("m1")));

    // A busy mountpoint.
    let first = Mount::start(&archive, &s.dir("m2"), &cache, &[]);
    let err = Mount::try_start(&archive, &s.dir("m2"), &cache, &[])
        .err()
        .expect("must fail");
    assert!(err.contains("already a mount point"), "{err}");
    first.unmount();

    // A registry that answers but does not have the image any more: refused before
    // mounting, with the registry's answer.
    let layer = inspect_json(&archive)["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string();
    s.registry.client().delete_blob("errs", &layer).unwrap();
    let err = Mount::try_start(&archive, &s.dir("m3"), &cache, &[])
        .err()
        .expect("must fail");
    assert!(err.contains("checking the registry"), "{err}");
    assert!(err.contains(&layer), "names the blob: {err}");
    assert!(!is_mounted(&s.dir("m3")));
    // (A registry that cannot be reached is no reason not to mount: tests/offline.rs.)
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci, runc (scripts/test.sh runs it)"]
fn daemon_mode_stats_and_umount() {
    let s = Setup::new();
    Image::new()
        .layer(Layer::from_fixture(
            "/hello file 0644 0 0 content=\"hi\\n\"",
        ))
        .push(&s.registry, "daemon:1", ManifestFlavor::Oci);
    let archive = s.archive("daemon:1", &[]);
    let dir = s.dir("not/yet/there");
    let log = s.dir("daemon.log");
    let run = clip(&[
        "mount",
        "--daemon",
        "--log-file",
        log.to_str().unwrap(),
        "--cache-dir",
        s.dir("cache").to_str().unwrap(),
        archive.to_str().unwrap(),
        dir.to_str().unwrap(),
    ])
    .success();
    let pid: u32 = run
        .stderr()
        .split("pid ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", run.stderr()));
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = clip(&["umount", self.0.to_str().unwrap_or("")]);
        }
    }
    let guard = Umount(dir.clone());
    assert_eq!(std::fs::read(dir.join("hello")).unwrap(), b"hi\n");
    let stats = clip(&["stats", "--json", dir.to_str().unwrap()])
        .success()
        .stdout();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["spans_fetched"], 1, "{stats}");
    let text = clip(&["stats", dir.to_str().unwrap()]).success().stdout();
    assert!(text.contains("registry requests"), "{text}");
    // The daemon's log and its runtime directory (the stats socket's) are private.
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata("/run/clip").unwrap().mode() & 0o7777,
        0o700
    );
    clip(&["umount", dir.to_str().unwrap()]).success();
    drop(guard);
    assert!(!is_mounted(&dir));
    // The daemon ends with its session; wait for it (bounded).
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..400 {
        if !proc_dir.exists()
            || std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| s.contains(") Z "))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(
        !proc_dir.exists()
            || std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| s.contains(") Z ")),
        "daemon {pid} still running"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("registry requests"));
}

fn is_mounted(dir: &Path) -> bool {
    let Ok(canonical) = std::fs::canonicalize(dir) else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(canonical.to_str().unwrap_or("")))
}
