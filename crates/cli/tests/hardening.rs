//! What an attacker or an unlucky operator found, each proven fixed against the real parts:
//! a private cache, end-to-end verified bytes, cache entries rechecked while mounted, overlay
//! xattrs that never steer overlayfs, and a read that retries within its whole budget. Runs as
//! root (FUSE, overlayfs, `setpriv`).

mod support;

use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use clip_archive::{testing::decompose, write_archive, Archive};
use clip_testkit::{oracle_unpack_dir, Fault, FaultProxy, Image, Layer, ManifestFlavor, Registry};
use support::*;

fn u64_of(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("stats lack {k}: {v}"))
}

/// Every file below `dir` (not following symlinks).
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Drops the kernel's clean page cache, so that the next read of a mounted file reaches clip.
fn drop_page_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", "1").expect("dropping the page cache (root)");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci (scripts/test.sh runs it)"]
fn the_cache_is_private_to_its_user() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    // The scratch directory is open to everyone: only the cache's own modes protect it.
    std::fs::set_permissions(scratch.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Image::new()
        .layer(Layer::from_fixture(
            "/etc dir 0755 0 0\n/etc/shadow file 0640 0 42 content=\"root:$6$secret:19000::::::\\n\"",
        ))
        .push(&registry, "private:1", ManifestFlavor::Oci);
    let archive = scratch.path("private.clip");
    index(&registry, "private:1", &archive, &[]);
    let cache = scratch.path("cache");
    let mount = Mount::start(&archive, &scratch.path("mnt"), &cache, &[]);
    let shadow = std::fs::read(mount.dir.join("etc/shadow")).unwrap();
    assert!(shadow.starts_with(b"root:$6$secret"));
    mount.unmount();

    let entries = files_below(&cache);
    assert!(!entries.is_empty());
    for path in &entries {
        let mode = std::fs::metadata(path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let mut dir = entries[0].parent().unwrap().to_path_buf();
    while dir.starts_with(&cache) {
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        dir.pop();
    }
    // Regression: another local user read the image's /etc/shadow from a cache entry.
    for path in &entries {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "cat",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "nobody read {}", path.display());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("secret"));
    }

    // A cache directory other users may write to is refused, with what to do.
    let shared = scratch.path("shared-cache");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Mount::try_start(&archive, &scratch.path("mnt2"), &shared, &[])
        .err()
        .expect("refused");
    assert!(err.contains("writable by other users"), "{err}");
    assert!(err.contains("chmod 700"), "{err}");
}

/// An image of text files over several spans, indexed; the archive's path.
fn text_image(registry: &Registry, scratch: &Scratch, tag: &str, files: usize) -> PathBuf {
    let mut fixture = String::from("/d dir 0755 0 0\n");
    for i in 0..files {
        fixture.push_str(&format!(
            "/d/f{i:02} file 0644 0 0 size=200000 seed={i} text\n"
        ));
    }
    Image::new()
        .layer(Layer::from_fixture(&fixture))
        .push(registry, tag, ManifestFlavor::Oci);
    let archive = scratch.path(&format!("{}.clip", tag.replace(':', "_")));
    index(registry, tag, &archive, &["--span", "128k"]);
    archive
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci (scripts/test.sh runs it)"]
fn a_forged_seek_window_is_eio_never_wrong_bytes() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let archive = text_image(&registry, &scratch, "forged:1", 12);
    let expected = oracle_unpack_dir(&registry, "forged:1", None);

    // Every window of the index damaged, the file otherwise consistent (checksum and all):
    // what a buggy indexer or a forger with an xxh3 calculator produces.
    let bytes = std::fs::read(&archive).unwrap();
    let (meta, mut layers, tree) = decompose(&Archive::open(&bytes).unwrap()).unwrap();
    let mut forged = 0;
    for span in &mut layers[0].spans {
        let mut window = span.window.unpack().unwrap();
        for b in &mut window {
            *b ^= 0x55;
            forged += 1;
        }
        span.window = clip_archive::Window::new(&window).unwrap();
    }
    assert!(forged > 0, "the layer has windows");
    let forged_archive = scratch.path("forged.clip");
    std::fs::write(
        &forged_archive,
        write_archive(&meta, &layers, &tree).unwrap(),
    )
    .unwrap();

    let mount = Mount::start(
        &forged_archive,
        &scratch.path("mnt"),
        &scratch.path("cache"),
        &[],
    );
    let mut failed = 0;
    for i in 0..12 {
        let name = format!("d/f{i:02}");
        match std::fs::read(mount.dir.join(&name)) {
            Ok(got) => assert!(
                got == std::fs::read(expected.rootfs().join(&name)).unwrap(),
                "{name}: wrong bytes served from a forged window"
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
                failed += 1;
            }
        }
    }
    assert!(
        failed > 0,
        "text spans resumed from forged windows must fail"
    );
    let stats = mount.stats();
    assert!(u64_of(&stats, "verify_failures") >= 1, "{stats}");
    let log = mount.unmount();
    assert!(log.contains("content mismatch"), "{log}");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci (scripts/test.sh runs it)"]
fn a_cache_entry_changed_while_mounted_is_not_served() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let archive = text_image(&registry, &scratch, "flip:1", 4);
    let expected = oracle_unpack_dir(&registry, "flip:1", None);
    let want = std::fs::read(expected.rootfs().join("d/f01")).unwrap();
    let cache = scratch.path("cache");
    let flip_every_entry = || {
        let entries: Vec<PathBuf> = files_below(&cache)
            .into_iter()
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        assert!(!entries.is_empty());
        for path in entries {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, 64 + 100).unwrap();
            f.write_all_at(&[b[0] ^ 1], 64 + 100).unwrap();
        }
    };

    let mount = Mount::start(&archive, &scratch.path("mnt"), &cache, &[]);
    assert!(std::fs::read(mount.dir.join("d/f01")).unwrap() == want);
    // Regression: a byte flipped in place during a live mount was served on the next read.
    flip_every_entry();
    drop_page_cache();
    assert!(std::fs::read(mount.dir.join("d/f01")).unwrap() == want);
    let stats = mount.stats();
    assert!(u64_of(&stats, "cache_corrupt") >= 1, "{stats}");
    mount.unmount();

    // Regression: after a remount too (the header of a flipped entry still agrees with it).
    flip_every_entry();
    let mount = Mount::start(&archive, &scratch.path("mnt"), &cache, &[]);
    assert!(std::fs::read(mount.dir.join("d/f01")).unwrap() == want);
    let stats = mount.stats();
    assert!(u64_of(&stats, "cache_corrupt") >= 1, "{stats}");
    mount.unmount();
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[ignore = "privileged: needs root, FUSE, overlayfs, docker-registry (scripts/test.sh runs it)"]
fn overlay_xattrs_of_the_image_do_not_steer_overlayfs() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    Image::new()
        .layer(Layer::from_fixture(
            "/d dir 0755 0 0\n/d/mine file 0644 0 0 content=\"mine\\n\"\n/r dir 0755 0 0",
        ))
        .push(&registry, "steer:1", ManifestFlavor::Oci);
    let archive = scratch.path("steer.clip");
    index(&registry, "steer:1", &archive, &[]);
    // An index whose /d is opaque and /r redirected, as an image could ask for.
    let bytes = std::fs::read(&archive).unwrap();
    let parsed = Archive::open(&bytes).unwrap();
    let d = parsed.resolve("/d").unwrap().unwrap() as usize - 1;
    let r = parsed.resolve("/r").unwrap().unwrap() as usize - 1;
    let (meta, layers, mut tree) = decompose(&parsed).unwrap();
    tree.inodes[d].xattrs = vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())];
    tree.inodes[r].xattrs = vec![(b"trusted.overlay.redirect".to_vec(), b"/d".to_vec())];
    let steering = scratch.path("steering.clip");
    std::fs::write(&steering, write_archive(&meta, &layers, &tree).unwrap()).unwrap();

    let mount = Mount::start(&steering, &scratch.path("mnt"), &scratch.path("cache"), &[]);
    assert!(clip_testkit::oracle::xattrs(&mount.dir.join("d")).is_empty());
    assert!(clip_testkit::oracle::xattrs(&mount.dir.join("r")).is_empty());
    // The mount as the upper of two lower layers: an opaque /d would hide the lower /d/theirs.
    let below = scratch.path("below");
    std::fs::create_dir_all(below.join("d")).unwrap();
    std::fs::write(below.join("d/theirs"), b"theirs\n").unwrap();
    let (upper, work, merged) = (
        scratch.path("upper"),
        scratch.path("work"),
        scratch.path("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            mount.dir.display(),
            below.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success());
    let guard = Unmount(merged.clone());
    let mut names: Vec<String> = std::fs::read_dir(merged.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["mine", "theirs"],
        "the image's opaque xattr was obeyed"
    );
    assert!(std::fs::read_dir(merged.join("r"))
        .unwrap()
        .next()
        .is_none());
    drop(guard);
    mount.unmount();
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry (scripts/test.sh runs it)"]
fn a_read_keeps_trying_for_its_whole_budget() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let mut fixture = String::from("/d dir 0755 0 0\n");
    fixture.push_str("/d/f file 0644 0 0 size=300000 seed=7\n");
    Image::new().layer(Layer::from_fixture(&fixture)).push(
        &registry,
        "budget:1",
        ManifestFlavor::Oci,
    );
    let expected = oracle_unpack_dir(&registry, "budget:1", None);
    let want = std::fs::read(expected.rootfs().join("d/f")).unwrap();
    let proxy = FaultProxy::start(registry.addr());
    let archive = scratch.path("budget.clip");
    clip(&[
        "index",
        "--quiet",
        &format!("{}/budget:1", proxy.addr()),
        archive.to_str().unwrap(),
    ])
    .success();
    let mount = Mount::start(
        &archive,
        &scratch.path("mnt"),
        &scratch.path("cache"),
        &["--read-timeout", "600"],
    );
    // The registry resets every connection: a read waits, and retries, as long as its budget
    // allows — far beyond the client's six attempts (regression: it failed after 2.5–4.5 s).
    proxy.set(Fault::Reset);
    let before = proxy.faults_injected();
    let path = mount.dir.join("d/f");
    std::thread::scope(|s| {
        let reader = s.spawn(|| std::fs::read(&path));
        let waited = std::time::Instant::now();
        while proxy.faults_injected() < before + 8 {
            assert!(
                !reader.is_finished(),
                "the read gave up after {} failed attempts",
                proxy.faults_injected() - before
            );
            assert!(waited.elapsed().as_secs() < 300, "no retries seen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        proxy.set(Fault::None);
        let got = reader
            .join()
            .unwrap()
            .expect("the read succeeds once the registry is back");
        assert!(got == want, "wrong bytes");
    });
    mount.unmount();
}
