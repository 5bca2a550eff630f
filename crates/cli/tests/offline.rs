//! A machine that holds an image's index and spans keeps starting it while the registry is
//! away: `clip mount IMAGE` resolves the reference as it was last resolved here, mounts without
//! the registry, serves the cache exactly, fails uncached reads with `EIO` after
//! `--read-timeout`, and serves them once the registry is back. The registry "goes away"
//! behind a proxy that resets every connection.

mod support;

use std::path::Path;

use clip_testkit::{
    assert_same_tree, oracle_unpack_dir, Fault, FaultProxy, Image, Layer, ManifestFlavor, Registry,
    TreeSnapshot,
};
use support::*;

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci (scripts/test.sh runs it)"]
fn a_warm_cache_mounts_and_serves_with_the_registry_gone() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let fixture = "/etc dir 0755 0 0\n\
        /etc/os-release file 0644 0 0 content=\"ID=offline\\n\"\n\
        /data dir 0755 0 0\n\
        /data/big file 0644 0 0 size=2500000 seed=11 text\n\
        /data/bin file 0755 0 0 size=700000 seed=12\n\
        /data/link symlink target=big\n";
    Image::new()
        .layer(Layer::from_fixture(fixture))
        .layer(Layer::from_fixture(
            "/app dir 0755 0 0\n/app/run file 0755 0 0 content=\"#!/bin/sh\\n\"",
        ))
        .push(&registry, "offline:1", ManifestFlavor::Oci);
    let expected = oracle_unpack_dir(&registry, "offline:1", None);
    let proxy = FaultProxy::start(registry.addr());
    let image = format!("{}/offline:1", proxy.addr());
    let cache = scratch.path("cache");
    let cache_s = cache.to_str().unwrap();
    clip(&[
        "index",
        "--quiet",
        "--span",
        "256k",
        "--cache-dir",
        cache_s,
        &image,
    ])
    .success();

    // Online: every byte read once, into the cache.
    let mount = Mount::start(Path::new(&image), &scratch.path("mnt"), &cache, &[]);
    assert_same_tree(expected.snapshot(), &TreeSnapshot::capture(&mount.dir));
    mount.unmount();

    // The registry is gone. The image is still found (as resolved before), mounted, and
    // served exactly from the cache, without a single fetch.
    proxy.set(Fault::Reset);
    let shown = json_of(clip(&["inspect", "--json", "--cache-dir", cache_s, &image]));
    assert_eq!(shown["index"]["source"], "store", "{shown}");
    assert_eq!(shown["index"]["offline"], true, "{shown}");
    let mount = Mount::start(Path::new(&image), &scratch.path("mnt"), &cache, &[]);
    assert_same_tree(expected.snapshot(), &TreeSnapshot::capture(&mount.dir));
    let stats = mount.stats();
    assert_eq!(stats["spans_fetched"], 0, "{stats}");
    assert_eq!(stats["fetch_errors"], 0, "{stats}");
    let log = mount.unmount();
    assert!(log.contains("cannot be reached"), "says why: {log}");
    assert_eq!(
        log.matches("reads of data not in the cache fail").count(),
        1,
        "{log}"
    );

    // Nothing cached: a read fails with EIO once its budget is spent, the mount stays up, and
    // the same read succeeds when the registry is back.
    std::fs::remove_dir_all(cache.join("v2")).unwrap();
    let mount = Mount::start(
        Path::new(&image),
        &scratch.path("mnt"),
        &cache,
        &["--read-timeout", "2"],
    );
    let big = mount.dir.join("data/big");
    let err = std::fs::read(&big).expect_err("nothing cached, no registry");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = std::fs::read(mount.dir.join("data/bin")).expect_err("nor this");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        mount.dir.join("etc/os-release").exists(),
        "metadata needs no registry"
    );
    proxy.set(Fault::None);
    let want = std::fs::read(expected.rootfs().join("data/big")).unwrap();
    assert!(std::fs::read(&big).unwrap() == want, "wrong bytes");
    let log = mount.unmount();
    // One outage, one line (at warning level), however many reads it failed; and its end.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("reads of data not in the cache fail"),
        "{log}"
    );
    assert!(log.contains("reachable again"), "{log}");

    // A machine that never resolved the image cannot guess it: a clear error.
    proxy.set(Fault::Reset);
    let other = scratch.path("other-cache");
    let err = clip(&["pull", "--cache-dir", other.to_str().unwrap(), &image]).failure();
    assert!(err.contains("has not resolved it before"), "{err}");
}

#[test]
#[ignore = "privileged: needs root, FUSE, docker-registry, umoci (scripts/test.sh runs it)"]
fn prefetch_all_makes_a_node_independent_of_the_registry() {
    let registry = Registry::start();
    let scratch = Scratch::new();
    let fixture = "/d dir 0755 0 0\n\
        /d/a file 0644 0 0 size=900000 seed=21 text\n\
        /d/b file 0644 0 0 size=600000 seed=22\n\
        /d/c file 0600 0 0 content=\"small\\n\"\n";
    Image::new()
        .layer(Layer::from_fixture(fixture))
        .push(&registry, "fill:1", ManifestFlavor::Oci);
    let expected = oracle_unpack_dir(&registry, "fill:1", None);
    let proxy = FaultProxy::start(registry.addr());
    let image = format!("{}/fill:1", proxy.addr());
    let cache = scratch.path("cache");
    let cache_s = cache.to_str().unwrap();
    clip(&[
        "index",
        "--quiet",
        "--span",
        "128k",
        "--cache-dir",
        cache_s,
        &image,
    ])
    .success();

    // Nothing is read; the mount fetches the whole image in the background, bounded.
    let mount = Mount::start(
        Path::new(&image),
        &scratch.path("mnt"),
        &cache,
        &["--prefetch", "all", "--prefetch-rate", "100M"],
    );
    let idle = mount.stats_when_idle();
    assert!(idle["fill_total"].as_u64().unwrap() > 4, "{idle}");
    assert_eq!(idle["fill_done"], idle["fill_total"], "{idle}");
    assert_eq!(idle["cache_misses"], 0, "nothing was read: {idle}");
    // The registry goes away: every byte is still there, exactly.
    proxy.set(Fault::Reset);
    assert_same_tree(expected.snapshot(), &TreeSnapshot::capture(&mount.dir));
    let after = mount.stats();
    assert_eq!(after["fetch_errors"], 0, "{after}");
    assert_eq!(after["spans_fetched"], idle["spans_fetched"], "{after}");
    mount.unmount();
}
